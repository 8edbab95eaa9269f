"""PLE: Progressive Layered Extraction (Tang et al., "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020), with each domain as a task.

``num_levels`` stacked extraction levels (CGC, §4.2; PLE, §4.3). At every level each domain d has
``num_specific_experts`` experts of its own and a gate mixing them with the ``num_shared_experts`` shared
experts (eq. 2-4); every level but the last also has a shared gate that mixes *all* experts into the next
level's shared input (§4.3). Domain d's specific experts at level j read domain d's output of level j-1; the
shared experts read the shared output. Domain towers on the last level's output give the logit (eq. 6).

Cost, and what runs on which rows:

- ``num_levels=1`` (CGC, the Scenario-Wise-Rec configuration) and the last level of any PLE: each row runs
  only its own domain's specific experts, gate and tower (on the domain-sorted batch) plus the shared
  experts, so absent domains cost nothing.
- An intermediate level's shared gate needs, by PLE's definition, every domain's specific experts on every
  row; they run as one batched matmul over the stacked expert bank (cost O(D) in that level's specific
  experts). With three or more levels, the levels before the second-to-last also produce every domain's
  gated output for every row (the next level's specific experts read them).

Defaults: 2 levels, 1 shared and 2 specific experts per domain, experts ``[16]`` and towers ``[8]``
(Scenario-Wise-Rec's MovieLens run uses the same expert counts and sizes with ``num_levels=1``, and BatchNorm
in its MLPs, left out here). ``num_levels=1, num_specific_experts=0`` is MMoE with ``num_shared_experts``
experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...config import field_error, param
from ...data.batch import Batch
from ...layers.bank import MLPBank, mark_domain_bank
from ...layers.experts import ExtractionLayer
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class PLEConfig(ModelConfig):
    """Config of :class:`PLEModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        num_levels: extraction levels, >= 1 (1 = CGC).
        num_shared_experts: shared experts per level, >= 0 (0: none, domain experts only).
        num_specific_experts: experts per domain per level, >= 0 (0: none, shared experts only, an MMoE
            with per-level gates); the two counts must not both be 0.
        expert_units: hidden sizes of every expert, each >= 1 and at least one (every level's experts
            output ``expert_units[-1]``).
        tower_units: hidden sizes of each domain's tower, each >= 1 (a ``Linear(·, 1)`` output layer
            follows; empty: that layer alone).
    """

    num_levels: int = param(2, ge=1)
    num_shared_experts: int = param(1, ge=0)
    num_specific_experts: int = param(2, ge=0)
    expert_units: tuple[int, ...] = layer_sizes((16,), required=True)
    tower_units: tuple[int, ...] = layer_sizes((8,))

    def __post_init__(self) -> None:
        if self.num_shared_experts == 0 and self.num_specific_experts == 0:
            raise field_error(
                "num_specific_experts",
                0,
                "PLE needs at least one expert per level; set num_shared_experts or num_specific_experts to 1 or more",
            )


@register_model("ple", tags=("multidomain",))
class PLEModel(Model):
    """PLE: stacked CGC levels of shared and per-domain experts with per-domain gates, then domain towers.

    Shape:
        forward(batch) -> logits ``[B]``.

    Example:
        >>> model = create_model("ple", schema, num_levels=1)   # CGC  # doctest: +SKIP
        >>> model(batch).logits.shape                          # doctest: +SKIP
        torch.Size([B])
    """

    Config = PLEConfig

    def __init__(self, schema, config: PLEConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        L = config.num_levels
        self.levels = nn.ModuleList(
            ExtractionLayer(
                in_dim if i == 0 else config.expert_units[-1],
                config.expert_units,
                D,
                config.num_shared_experts,
                config.num_specific_experts,
                shared_gate=i < L - 1,
                activation=config.activation,
                dropout=config.dropout,
            )
            for i in range(L)
        )
        self.towers = MLPBank(
            config.expert_units[-1], config.tower_units, D, config.activation, config.dropout, output_dim=1
        )
        mark_domain_bank(self.towers)  # routed: a row through its own domain's tower
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        shared, seg = self.sorted_inputs(batch)
        domain = None  # every domain reads the shared input (level 1)
        L = len(self.levels)
        for i, level in enumerate(self.levels):
            # Every domain's output is needed only when the next level is itself an intermediate level.
            domain, shared = level(shared, domain, seg, all_outputs=i + 2 < L)
        logits = seg.unsort(self.towers(domain, seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
