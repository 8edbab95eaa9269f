"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018), with each domain as a task.

E shared experts read the input; each domain has a softmax gate over the experts (eq. 5,
``g_d(x) = softmax(W_d x)``) and a tower on the gated mixture (eq. 4-6,
``y_d = h_d(Σ_e g_d(x)_e f_e(x))``). As a multi-domain model (STAR §4.1, DFEI §4.4) a row is scored by its
own domain's gate and tower only: the batch is sorted by domain once, the experts (shared by definition) run
on every row as one batched matmul over the stacked expert bank, the gates
(:class:`~polyrec.layers.experts.DomainGate`) and towers (:class:`~polyrec.layers.bank.MLPBank`, routed)
once per present domain on that domain's rows.

``num_experts`` defaults to 4. The STAR paper and the Scenario-Wise-Rec benchmark set it to the number of
domains (3 on ``ml1m-age3``: pass ``num_experts=3`` to reproduce them). Expert ``[16]`` and tower ``[8]``
sizes follow Scenario-Wise-Rec's MovieLens run (its MLPs also carry BatchNorm, left out here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank, mark_domain_bank
from ...layers.experts import DomainGate, mix_experts
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class MMoEConfig(ModelConfig):
    """Config of :class:`MMoEModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        num_experts: shared experts, >= 1 (STAR and Scenario-Wise-Rec use one per domain).
        expert_units: hidden sizes of every expert, each >= 1 and at least one.
        tower_units: hidden sizes of each domain's tower, each >= 1 (a ``Linear(·, 1)`` output layer
            follows; empty: that layer alone).
    """

    num_experts: int = param(4, ge=1)
    expert_units: tuple[int, ...] = layer_sizes((16,), required=True)
    tower_units: tuple[int, ...] = layer_sizes((8,))


@register_model("mmoe", tags=("multidomain",))
class MMoEModel(Model):
    """MMoE: shared experts, one softmax gate and one tower per domain, each row through its own domain's.

    Shape:
        forward(batch) -> logits ``[B]``. :meth:`gate_weights` -> ``[B, num_experts]``.

    Example:
        >>> model = create_model("mmoe", schema, num_experts=3)   # doctest: +SKIP
        >>> model(batch).logits.shape                            # doctest: +SKIP
        torch.Size([B])
    """

    Config = MMoEConfig

    def __init__(self, schema, config: MMoEConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        self.experts = MLPBank(in_dim, config.expert_units, config.num_experts, config.activation, config.dropout)
        self.gates = DomainGate(in_dim, config.num_experts, D)
        self.towers = MLPBank(
            config.expert_units[-1], config.tower_units, D, config.activation, config.dropout, output_dim=1
        )
        mark_domain_bank(self.towers)  # routed, as the gates
        mark_domain_bank(self.gates.linear)
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        z, seg = self.sorted_inputs(batch)
        mixed = mix_experts(self.gates(z, seg), self.experts(z))  # [B, H], rows sorted by domain
        logits = seg.unsort(self.towers(mixed, seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))

    def gate_weights(self, batch: Batch) -> Tensor:
        """Each row's own-domain gate over the experts, in the batch's row order: ``[B, num_experts]``."""
        z, seg = self.sorted_inputs(batch)
        return seg.unsort(self.gates(z, seg))
