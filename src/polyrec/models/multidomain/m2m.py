"""M2M: multi-scenario multi-task meta learning (Zhang et al., WSDM 2022), single task.

M2M ("Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach for Advertiser Modeling")
turns the scenario into *weights*: a meta unit generates a layer's weight matrix and bias from the
scenario knowledge representation S, ``W = reshape(G_W · S)``, ``b = G_b · S``. Two modules use it:

- **Meta attention** over K shared experts ``E_1..E_K``: ``a_k = vᵀ φ(W_att [E_k ⊕ T] + b_att)``,
  ``α = softmax(a)``, ``R = Σ_k α_k E_k``, with ``W_att, b_att`` generated from S and T the task
  representation.
- **Meta tower**: L meta layers with residual connections, ``h ← φ(W_l h + b_l) + h`` (``W_l, b_l``
  generated from S), then an output MLP to the logit.

Here S = MLP(domain embedding) is the model's own ``nn.Embedding(D, E)`` through one layer, so every
generated weight depends on the domain only. The weights are generated once per batch for the domains
present (``[S, ...]``) and applied to a domain-sorted batch, one matmul per domain: a row uses only its own
domain's generated weights, and absent domains cost nothing.

Readings made here:

- Single task: T is one learned vector (M2M derives it from a task indicator).
- M2M's Transformer encodes advertisers' behaviour sequences, which the protocols do not have; the experts
  read ``embeddings ⊕ dense`` directly. (The Scenario-Wise-Rec port runs ``nn.Transformer`` on a 2-D
  ``[B, F·E]`` tensor, which attends *across the rows of the batch*, so its predictions depend on the
  batch; that is not copied.)
- Generated weight matrices are scaled by ``1/√fan_in`` so that, whatever the scenario representation's
  scale, a meta layer starts with the variance of a default-initialised linear layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank
from ...layers.domain import segment_einsum, segment_linear
from ...layers.mlp import MLP
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class M2MConfig(ModelConfig):
    """Config of :class:`M2MModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        num_experts: K >= 1 shared experts (default 4, the P2 benchmark's).
        expert_units: layer sizes of each expert, each >= 1 and at least one; the last one, d, is the
            representation size of the meta modules (default (64, 32)).
        scenario_dim: size >= 1 of the scenario knowledge representation S (default 32).
        meta_tower_layers: number of residual meta layers in the tower, >= 0 (default 2; 0: no meta tower,
            the scenario then acts through the meta attention only).
        tower_units: hidden sizes of the output MLP after the meta tower, each >= 1 (default (32,); empty:
            its output layer alone).
        activation: activation everywhere.
        dropout: dropout in the experts and output MLP.
    """

    num_experts: int = param(4, ge=1)
    expert_units: tuple[int, ...] = layer_sizes((64, 32), required=True)
    scenario_dim: int = param(32, ge=1)
    meta_tower_layers: int = param(2, ge=0)
    tower_units: tuple[int, ...] = layer_sizes((32,))


class MetaLinear(nn.Module):
    """A meta unit's generator: a linear layer's weight and bias produced from a scenario representation.

    Args:
        cond_dim: size of the scenario representation S.
        in_dim: D_in of the generated layer.
        out_dim: D_out of the generated layer.

    Shape:
        forward(S ``[S, cond_dim]``) -> weight ``[S, D_in, D_out]``, bias ``[S, D_out]``.
    """

    def __init__(self, cond_dim: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight_gen = nn.Linear(cond_dim, in_dim * out_dim)
        self.bias_gen = nn.Linear(cond_dim, out_dim)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight_gen(cond).view(-1, self.in_dim, self.out_dim) / math.sqrt(self.in_dim)
        return w, self.bias_gen(cond)


@register_model("m2m", tags=("multidomain",))
class M2MModel(Model):
    """M2M (WSDM 2022): meta attention over shared experts and a meta tower, with weights generated per scenario.

    Zhang et al., "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach for Advertiser
    Modeling", WSDM 2022. Single task; see the module docstring for the readings made.

    Shape:
        forward(batch) -> logits ``[B]``; each row through the weights generated for its own domain.
    """

    Config = M2MConfig

    def __init__(self, schema, config: M2MConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        in_dim = self._build_embeddings()
        # N(0, 1) (nn.Embedding's default): every generated weight derives from it, so domains start apart.
        self.domain_embedding = nn.Embedding(schema.num_domains, E)
        self.act = make_activation(config.activation)
        self.scenario = MLP(E, (config.scenario_dim,), config.activation)
        # order="rows": the numbers (initial values, dropout masks, rounding) this model always had.
        self.experts = MLPBank(
            in_dim, config.expert_units, config.num_experts, config.activation, config.dropout, order="rows"
        )
        d = config.expert_units[-1]
        self.task = nn.Parameter(torch.randn(d) * 0.1)  # single task: one learned task representation T
        self.attention = MetaLinear(config.scenario_dim, 2 * d, 2 * d)
        self.attention_v = nn.Linear(2 * d, 1, bias=False)
        self.tower_layers = nn.ModuleList(
            MetaLinear(config.scenario_dim, d, d) for _ in range(config.meta_tower_layers)
        )
        self.output = MLP(d, config.tower_units, config.activation, config.dropout, output_dim=1)
        self._build_aux()

    def meta_weights(self, domains: Tensor) -> dict[str, Tensor]:
        """The weights M2M generates for ``domains`` ``[S]``: attention and tower layers, each ``[S, ...]``."""
        s = self.scenario(self.domain_embedding(domains))
        out = {}
        out["attention_weight"], out["attention_bias"] = self.attention(s)
        for i, layer in enumerate(self.tower_layers):
            out[f"tower{i}_weight"], out[f"tower{i}_bias"] = layer(s)
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        xs, seg = self.sorted_inputs(batch)
        meta = self.meta_weights(seg.domains)  # generated for the domains present only
        experts = self.experts(xs).transpose(0, 1)  # [B, K, d]: rows first, as segment_einsum reads them
        B, K, d = experts.shape
        # Meta attention: a_k = vᵀ φ(W_att [E_k ⊕ T] + b_att).
        att_in = torch.cat([experts, self.task.expand(B, K, d)], dim=2)
        hidden = segment_einsum("nki,io->nko", att_in, seg, meta["attention_weight"])
        hidden = self.act(hidden + meta["attention_bias"].index_select(0, seg.local).unsqueeze(1))
        alpha = torch.softmax(self.attention_v(hidden).squeeze(-1), dim=1)  # [B, K]
        h = (alpha.unsqueeze(-1) * experts).sum(1)
        # Meta tower: h ← φ(W_l h + b_l) + h.
        for i in range(len(self.tower_layers)):
            h = self.act(segment_linear(h, seg, meta[f"tower{i}_weight"], meta[f"tower{i}_bias"])) + h
        logits = seg.unsort(self.output(h).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
