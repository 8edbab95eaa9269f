"""AdaSparse: adaptively sparse structures for multi-domain CTR prediction (Yang et al., CIKM 2022).

A fully-connected backbone whose every layer is pruned *per domain* at neuron level. For layer l a
domain-aware pruner reads the domain embedding e_d and the layer's neurons h^l and outputs one weighting
factor per neuron, ``v^l = W^l (e_d ⊕ h^l)``, ``h^l ← π(v^l) ⊙ h^l``. Three forms of π:

- ``binarization``: ``π = 1[σ(α v) > ε]`` (0/1: pruned or kept); the forward value is the hard mask, the
  gradient is that of the soft ``σ(α v)`` (straight-through). α grows during training (``α += Δα`` per
  training step) so that σ(α v) approaches the step function.
- ``scaling``: ``π = β σ(v)``, a soft factor in (0, β) (no pruning).
- ``fusion``: ``π = β σ(α v) · 1[σ(α v) > ε]``: scaling, with neurons under the threshold pruned.

Flexible sparsity regularisation: the fraction of pruned neurons of layer l, in its differentiable
form ``r^l = mean(1 − σ(α v^l))``, is kept inside a target interval ``[r_min, r_max]``:
``L_s = λ Σ_l (relu(r_min − r^l) + relu(r^l − r_max))``, returned as ``aux_losses["sparsity"]``.

Readings made here:

- Pruners act on the DNN input (the embeddings and dense values; the domain embedding is concatenated
  unpruned, as in the paper's "domain-aware ⊕ domain-agnostic" input) and on every hidden layer.
- α is a buffer (saved with the model) advanced only by training-mode forwards, so evaluation is
  deterministic. The Scenario-Wise-Rec port advances α on every call, evaluation included, and uses
  ``sign(·)`` ∈ {−1, +1} as the mask (negating rather than pruning neurons, with zero gradient for the
  binarization form); neither is copied.
- The flexible regularisation's target interval and weight are our defaults (the paper tunes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ...config import Check, field_error, param
from ...data.batch import Batch
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class AdaSparseConfig(ModelConfig):
    """Config of :class:`AdaSparseModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: backbone hidden sizes, each >= 1 (default (128, 64, 32); the P2 benchmark's port uses
            (32, 32) with dropout 0.2). Empty: the pruned input feeds the output layer directly.
        form: weighting factor form, ``binarization``, ``scaling`` or ``fusion`` (default, as the port).
        epsilon: ε, the pruning threshold on σ(α v), in (0, 1) (default 1e-2): σ is in (0, 1), so a
            threshold outside would prune nothing or everything.
        beta: β > 0, the scale of the scaling and fusion forms, whose factors lie in (0, β) (default 2).
        alpha: initial α > 0, the slope of σ(α v) (default 1); it only grows from there.
        alpha_step: Δα >= 0 added to α at every training-mode forward (default 1e-4; 0: α stays fixed).
        sparsity_weight: λ >= 0 of the sparsity regularisation (0 disables it; default 1e-2).
        sparsity_range: the target interval ``(r_min, r_max)`` of each layer's pruned fraction, with
            0 <= r_min <= r_max <= 1 (default (0.1, 0.5)).
    """

    hidden_units: tuple[int, ...] = layer_sizes((128, 64, 32))
    form: Literal["binarization", "scaling", "fusion"] = "fusion"
    epsilon: float = param(1e-2, gt=0, lt=1)
    beta: float = param(2.0, gt=0)
    alpha: float = param(1.0, gt=0)
    alpha_step: float = param(1e-4, ge=0)
    sparsity_weight: float = param(1e-2, ge=0)
    sparsity_range: tuple[float, float] = param((0.1, 0.5), items=Check(ge=0, le=1))

    def __post_init__(self) -> None:
        lo, hi = self.sparsity_range
        if lo > hi:
            raise field_error(
                "sparsity_range",
                list(self.sparsity_range),
                "r_min must not exceed r_max; give the interval as [r_min, r_max]",
            )


@register_model("adasparse", tags=("multidomain",))
class AdaSparseModel(Model):
    """AdaSparse (CIKM 2022): domain-aware neuron-level pruning of every layer, with a sparsity regulariser.

    Yang et al., "AdaSparse: Learning Adaptively Sparse Structures for Multi-Domain Click-Through Rate
    Prediction", CIKM 2022. See the module docstring for π's forms, the regulariser and the readings made.

    Shape:
        forward(batch) -> logits ``[B]``, ``aux_losses["sparsity"]`` a scalar (when ``sparsity_weight`` > 0).
    """

    Config = AdaSparseConfig

    def __init__(self, schema, config: AdaSparseConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        in_dim = self._build_embeddings()
        self.domain_embedding = nn.Embedding(schema.num_domains, E)
        nn.init.normal_(self.domain_embedding.weight, std=1e-2)
        pruned = [in_dim, *config.hidden_units]  # the neurons each pruner weighs
        self.pruners = nn.ModuleList(nn.Linear(E + n, n, bias=False) for n in pruned)
        sizes = [in_dim + E, *config.hidden_units]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], 1)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.register_buffer("alpha", torch.tensor(float(config.alpha)))
        self._build_aux()

    def weighting_factors(self, i: int, dom: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """π of pruner ``i`` for neurons ``h`` and domain embeddings ``dom``, and the soft kept-probability σ(α v)."""
        cfg = self.config
        v = self.pruners[i](torch.cat([dom, h], dim=1))
        if cfg.form == "scaling":
            soft = torch.sigmoid(v)
            return cfg.beta * soft, soft
        soft = torch.sigmoid(self.alpha * v)
        keep = (soft > cfg.epsilon).to(soft.dtype)
        if cfg.form == "binarization":
            return keep + (soft - soft.detach()), soft  # exactly the 0/1 mask forward, σ(α v)'s gradient backward
        return cfg.beta * soft * keep, soft  # fusion

    def forward(self, batch: Batch) -> ModelOutput:
        if self.training and self.config.form != "scaling":
            with torch.no_grad():
                self.alpha += self.config.alpha_step
        dom = self.domain_embedding(batch.domain)
        h = self.flat_inputs(batch)
        pi, soft = self.weighting_factors(0, dom, h)
        kept = [soft]
        h = torch.cat([dom, pi * h], dim=1)
        for i, layer in enumerate(self.hidden, start=1):
            h = self.act(layer(h))
            pi, soft = self.weighting_factors(i, dom, h)
            kept.append(soft)
            h = self.dropout(pi * h)
        logits = self.out(h).squeeze(-1)
        logits = self.add_aux_logit(logits, batch)
        aux_losses = {}
        if self.config.sparsity_weight > 0:
            lo, hi = self.config.sparsity_range
            penalty = logits.new_zeros(())
            for p in kept:
                r = 1.0 - p.mean()  # differentiable fraction of pruned neurons of this layer
                penalty = penalty + torch.relu(lo - r) + torch.relu(r - hi)
            aux_losses["sparsity"] = self.config.sparsity_weight * penalty
        return ModelOutput(logits, aux_losses)
