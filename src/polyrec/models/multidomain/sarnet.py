"""SAR-Net: Scenario-Aware Ranking Network (Shen et al., CIKM 2021).

SAR-Net transfers a user's interests across (hundreds of) travel scenarios: scenario-conditioned attention
over the user's cross-scenario behaviour sequences, a scenario-specific transformation of the
representation, and a mixture of "debias" experts (shared and scenario-specific) combined by a scenario
gate, then a ranking tower.

This module implements SAR-Net as the Scenario-Wise-Rec benchmark's port does (the P2 protocol's SAR-Net):

1. Scenario-specific transformation (the paper's scenario-aware feature transfer): the input
   ``x = embeddings ⊕ dense`` is scaled and shifted element-wise by the row's scenario,
   ``x̃ = x ⊙ w_d + b_d``. ``w`` and ``b`` are the model's own domain embeddings (``nn.Embedding(D, |x|)``,
   gathered per row), initialised to 1 and 0 so training starts from the identity.
2. Experts: ``shared_experts`` experts shared by all scenarios and ``specific_experts`` experts per scenario
   (a bank; each row goes through its own scenario's experts only), all reading ``x̃``.
3. Scenario gate: a per-scenario linear gate on ``x̃``, softmax over the shared + the row's specific experts;
   the gated sum of expert outputs feeds the tower (an MLP to one logit).

Readings made here:

- The cross-scenario attention over behaviour sequences needs behaviour sequences, which polyrec's data
  sets (and the P2 protocol) do not have; as in the benchmark port, the scenario-specific transformation and
  the scenario-gated experts carry the cross-scenario transfer.
- An expert is one Linear layer followed by the activation (the port's "debias expert" is BatchNorm +
  Linear without activation; batch statistics are not used here, so that a row's prediction never depends
  on the other rows of its batch).
- The gate is per scenario (the port shares one gate over the transformed input); the paper's debias
  tower (position bias) has no counterpart in the protocols and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import field_error, param
from ...data.batch import Batch
from ...layers.bank import LinearBank, MLPBank, mark_domain_bank
from ...layers.domain import DomainSegments
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class SarNetConfig(ModelConfig):
    """Config of :class:`SarNetModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Defaults: the P2 benchmark's SAR-Net sizes.

    Args:
        shared_experts: experts shared by all scenarios, >= 0 (default 8; 0: scenario experts only).
        specific_experts: experts per scenario, >= 0 (default 2; 0: shared experts only); the two counts
            must not both be 0.
        expert_dim: output size >= 1 of every expert (default 16).
        tower_units: hidden sizes of the tower on the gated expert mixture, each >= 1 (default (32, 32);
            empty: the output layer alone).
        activation: activation of experts and tower.
    """

    shared_experts: int = param(8, ge=0)
    specific_experts: int = param(2, ge=0)
    expert_dim: int = param(16, ge=1)
    tower_units: tuple[int, ...] = layer_sizes((32, 32))

    def __post_init__(self) -> None:
        if self.shared_experts == 0 and self.specific_experts == 0:
            raise field_error(
                "specific_experts",
                0,
                "SAR-Net needs at least one expert; set shared_experts or specific_experts to 1 or more",
            )


@register_model("sarnet", tags=("multidomain",))
class SarNetModel(Model):
    """SAR-Net (CIKM 2021): scenario-specific feature transform, shared + scenario experts under a scenario gate.

    Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair Recommendation in Hundreds
    of Travel Scenarios", CIKM 2021; as ported by the Scenario-Wise-Rec benchmark (see the module docstring).

    Shape:
        forward(batch) -> logits ``[B]``; each row through its own scenario's experts and gate only.
    """

    Config = SarNetConfig

    def __init__(self, schema, config: SarNetConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        # Scenario-specific transformation x ⊙ w_d + b_d: the domain indicator embeddings of this model.
        self.domain_scale = nn.Embedding(D, in_dim)
        self.domain_shift = nn.Embedding(D, in_dim)
        nn.init.ones_(self.domain_scale.weight)
        nn.init.zeros_(self.domain_shift.weight)
        # order="rows": the numbers (initial values, dropout masks, rounding) this model always had.
        act, drop, K = config.activation, config.dropout, config.specific_experts
        self.shared = (
            MLPBank(in_dim, (config.expert_dim,), config.shared_experts, act, drop, order="rows")
            if config.shared_experts
            else None
        )
        # Scenario d's K experts are members d*K .. d*K + K - 1.
        self.specific = MLPBank(in_dim, (config.expert_dim,), D * K, act, drop, order="rows") if K else None
        self.gate = LinearBank(in_dim, config.shared_experts + config.specific_experts, D)
        mark_domain_bank(self.gate)  # routed, as the scenario experts
        if self.specific is not None:
            mark_domain_bank(self.specific, per_domain=K)
        self.tower = MLP(config.expert_dim, config.tower_units, config.activation, config.dropout, output_dim=1)
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.flat_inputs(batch)
        x = x * self.domain_scale(batch.domain) + self.domain_shift(batch.domain)
        seg = DomainSegments.from_domain(batch.domain)
        xs = seg.sort(x)
        experts = []
        if self.shared is not None:
            experts.append(self.shared(xs))
        if self.specific is not None:
            experts.append(self.specific.route_experts(xs, seg, self.config.specific_experts))
        experts = torch.cat(experts, dim=0)  # [K_shared + K_specific, B, expert_dim]
        gate = torch.softmax(self.gate(xs, seg), dim=-1)  # [B, K_shared + K_specific]
        mixed = (gate.T.unsqueeze(-1) * experts).sum(0)
        logits = seg.unsort(self.tower(mixed).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
