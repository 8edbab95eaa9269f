"""HiNet: hierarchical information extraction network (Zhou et al., ICDE 2023), single task.

HiNet ("HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical Information Extraction")
extracts information at two levels: a scenario extraction layer, then a task extraction layer (CGC). The
scenario extraction layer builds, for a sample of scenario i, three representations from the
input x (all embeddings and dense values):

- the **scenario-shared expert** ``G = Σ_k g_k(x) E^sh_k(x)``: shared sub-experts under a softmax gate;
- the **scenario-specific expert** ``S_i = Σ_k g^i_k(x) E^i_k(x)``: scenario i's own sub-experts and gate;
- the **scenario-aware attentive network** (SAN) ``A_i = Σ_{j≠i} w_ij S_j(x)``: the *other* scenarios'
  specific experts, weighted by attention computed from scenario i's embedding,
  ``w_i = softmax_{j≠i}(MLP(e_i))``, so that related scenarios lend their knowledge and unrelated ones
  are ignored (HiNet's answer to negative transfer).

The scenario representation ``C_i = A_i ⊕ S_i ⊕ G`` feeds the task extraction layer; with a single task it
is one tower (an MLP to the logit).

Cost. SAN needs, for every row, the specific expert outputs ``S_j(x)`` of *every* scenario j (each
scenario's sub-experts under its own gate): the method is O(D) per row by definition. polyrec computes them
as one batched matmul per layer over the stacked bank of all D·K specific sub-experts
(:class:`~polyrec.layers.bank.MLPBank`) and all D gates at once
(:meth:`~polyrec.layers.experts.DomainGate.forward_all`), then takes the attention-weighted sum of those
outputs; the row's own ``S_i`` is read from the same tensor and depends only on scenario i's sub-experts and
gate. Without SAN (``san=False``) a row runs through its own scenario's sub-experts and gate only, on the
domain-sorted batch, and absent scenarios cost nothing.

Readings and simplifications made here:

- The attention MLP reads the model's own domain embedding and outputs one score per scenario; the
  softmax runs over the other scenarios only (the authors' code takes the softmax over all scenarios and
  then zeroes the own one). With a single domain there is no other scenario and A is zero.
- Gates are plain linear + softmax (the authors' code adds a ReLU before the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank
from ...layers.domain import DomainSegments
from ...layers.experts import DomainGate, mix_experts
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class HiNetConfig(ModelConfig):
    """Config of :class:`HiNetModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        shared_experts: scenario-shared sub-experts, >= 1 (default 4).
        specific_experts: sub-experts per scenario, >= 1 (default 2).
        expert_units: layer sizes of every sub-expert, each >= 1 and at least one (default (64, 32)).
        san: use the scenario-aware attentive network (default True).
        san_hidden: hidden sizes of the SAN's attention MLP on the domain embedding, each >= 1 (default
            (32,); empty: a linear map).
        tower_units: hidden sizes of the tower on the scenario representation, each >= 1 (default (64, 32);
            empty: the output layer alone).
        activation: activation of experts, attention MLP and tower.
        dropout: dropout in the experts and the tower.
    """

    shared_experts: int = param(4, ge=1)
    specific_experts: int = param(2, ge=1)
    expert_units: tuple[int, ...] = layer_sizes((64, 32), required=True)
    san: bool = True
    san_hidden: tuple[int, ...] = layer_sizes((32,))
    tower_units: tuple[int, ...] = layer_sizes((64, 32))


@register_model("hinet", tags=("multidomain",))
class HiNetModel(Model):
    """HiNet (ICDE 2023): shared + scenario-specific sub-experts and attention over the other scenarios' experts.

    Zhou et al., "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical Information
    Extraction", ICDE 2023. Single task; see the module docstring for SAN and the readings made.

    Shape:
        forward(batch) -> logits ``[B]``. With SAN every scenario's specific experts run on every row (one
        batched matmul over the stacked bank, O(D) per row, as SAN defines); without it only the row's own.

    Example:
        >>> model = create_model("hinet", schema, specific_experts=2)   # doctest: +SKIP
        >>> model(batch).logits.shape                                   # doctest: +SKIP
        torch.Size([B])
    """

    Config = HiNetConfig

    def __init__(self, schema, config: HiNetConfig) -> None:
        super().__init__(schema, config)
        D, E, Ksp = schema.num_domains, config.embedding_dim, config.specific_experts
        in_dim = self._build_embeddings()
        act, drop = config.activation, config.dropout
        # order="rows": the numbers (initial values, dropout masks, rounding) this model always had.
        self.shared = MLPBank(in_dim, config.expert_units, config.shared_experts, act, drop, order="rows")
        self.shared_gate = nn.Linear(in_dim, config.shared_experts)
        # Scenario d's K sub-experts are bank members d*K .. d*K + K - 1; one softmax gate per scenario.
        self.specific = MLPBank(in_dim, config.expert_units, D * Ksp, act, drop)
        self.specific_gate = DomainGate(in_dim, Ksp, D)
        self.domain_embedding = nn.Embedding(D, E) if config.san else None
        self.san = MLP(E, config.san_hidden, act, output_dim=D) if config.san else None
        d = config.expert_units[-1]
        self.tower = MLP((3 if config.san else 2) * d, config.tower_units, act, drop, output_dim=1)
        self._build_aux()

    def own_scenario_expert(self, xs: Tensor, seg: DomainSegments) -> Tensor:
        """``S_i(x)`` of each row's own scenario i only, on domain-sorted rows ``xs`` ``[B, in]`` -> ``[B, d]``."""
        experts = self.specific.route_experts(xs, seg, self.config.specific_experts)  # [K, B, d]
        return mix_experts(self.specific_gate(xs, seg), experts)

    def scenario_experts(self, x: Tensor) -> Tensor:
        """``S_j(x)`` of every scenario j on every row: ``[B, in]`` -> ``[D, B, d]`` (one batched matmul a layer)."""
        D, K = self.num_domains, self.config.specific_experts
        experts = self.specific(x)  # [D*K, B, d], scenario-major
        experts = experts.view(D, K, *experts.shape[1:])
        return torch.einsum("dbk,dkbh->dbh", self.specific_gate.forward_all(x), experts)

    def attention(self, domains: Tensor) -> Tensor:
        """SAN weights ``[S, D]`` of ``domains`` ``[S]`` over the other scenarios (zero on the own one)."""
        scores = self.san(self.domain_embedding(domains))
        own = F.one_hot(domains, self.num_domains).bool()
        return torch.softmax(scores.masked_fill(own, float("-inf")), dim=-1)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.flat_inputs(batch)
        gate = torch.softmax(self.shared_gate(x), dim=-1)  # [B, K]
        shared = (gate.T.unsqueeze(-1) * self.shared(x)).sum(0)  # G = Σ_k g_k(x) E^sh_k(x)
        if self.san is None:
            seg = DomainSegments.from_domain(batch.domain)
            parts = [seg.unsort(self.own_scenario_expert(seg.sort(x), seg)), shared]
        else:
            every = self.scenario_experts(x)  # [D, B, d]
            index = batch.domain.view(1, -1, 1).expand(1, *every.shape[1:])
            own = every.gather(0, index).squeeze(0)
            if self.num_domains > 1:
                # A_i = Σ_{j≠i} w_ij S_j(x): row b's weights over all scenarios, zero on its own.
                weights = self.attention(torch.arange(self.num_domains, device=x.device)).index_select(0, batch.domain)
                transfer = torch.einsum("bd,dbh->bh", weights, every)
            else:
                transfer = torch.zeros_like(own)
            parts = [transfer, own, shared]
        logits = self.tower(torch.cat(parts, dim=1)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
