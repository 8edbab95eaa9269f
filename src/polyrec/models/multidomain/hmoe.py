"""HMoE: Hybrid of implicit and explicit Mixture-of-Experts (Li et al., "Improving Multi-Scenario Learning to
Rank in E-commerce by Exploiting Task Relationships in the Label Space", CIKM 2020).

Implicit part (feature space): MMoE. E shared experts, one softmax gate and one tower per domain, giving
every domain's score ``s_j(x) = t_j(Σ_e g_j(x)_e f_e(x))``. Explicit part (label space): the prediction for a
row of domain p is a gated combination of *all* domains' scores, ``ŷ_p(x) = Σ_j w_p(x)_j s_j(x)`` with
``w_p = softmax(V_p x)`` a per-domain gate over the D scores. The paper's task-constrained back-propagation
lets a row of domain p update only domain p's score network: ``s_j`` for ``j != p`` enters ``ŷ_p`` with its
gradient stopped, so domain j's tower and gate learn only from domain j's rows while ``w_p`` still learns
how much to trust the other domains' scores.

Readings chosen, and cost:

- Scores are mixed as logits (the unnormalised ranking scores of the paper's learning-to-rank setting), so
  the output stays a logit.
- Every domain's score is needed for every row, by the method's definition: all D gated mixtures come from
  :meth:`~polyrec.layers.experts.DomainGate.forward_all` and all D towers run as one batched matmul over
  the stacked tower bank (``[D, B, ·]``), so the cost is O(D) per row. The label-space gate ``w_p`` is the
  row's own domain's only and runs on the domain-sorted batch.
- The label-space gate is linear in the input, like the experts' gates.

Defaults: 4 experts of ``[128, 64]``, towers ``[32]`` (the method is not in the Scenario-Wise-Rec
benchmark; these are polyrec's default bottom/tower sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank
from ...layers.experts import DomainGate
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class HMoEConfig(ModelConfig):
    """Config of :class:`HMoEModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        num_experts: shared experts, >= 1.
        expert_units: hidden sizes of every expert, each >= 1 and at least one.
        tower_units: hidden sizes of each domain's tower, each >= 1 (a ``Linear(·, 1)`` score layer
            follows; empty: that layer alone).
        stop_gradient: stop the gradient of other domains' scores in the label-space mixture (the paper's
            task-constrained back-propagation); False gives the plain end-to-end stacked model.
    """

    num_experts: int = param(4, ge=1)
    expert_units: tuple[int, ...] = layer_sizes((128, 64), required=True)
    tower_units: tuple[int, ...] = layer_sizes((32,))
    stop_gradient: bool = True


@register_model("hmoe", tags=("multidomain",))
class HMoEModel(Model):
    """HMoE: MMoE scores for every domain, mixed per row by its domain's label-space gate.

    Shape:
        forward(batch) -> logits ``[B]``; all D towers run on every row (one batched matmul), as the method
        defines.

    Example:
        >>> model = create_model("hmoe", schema, num_experts=4)   # doctest: +SKIP
        >>> model(batch).logits.shape                            # doctest: +SKIP
        torch.Size([B])
    """

    Config = HMoEConfig

    def __init__(self, schema, config: HMoEConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        self.experts = MLPBank(in_dim, config.expert_units, config.num_experts, config.activation, config.dropout)
        self.gates = DomainGate(in_dim, config.num_experts, D)
        # One tower per domain, as a bank of D networks: tower j reads domain j's gated mixture.
        self.towers = MLPBank(
            config.expert_units[-1], config.tower_units, D, config.activation, config.dropout, output_dim=1
        )
        self.label_gates = DomainGate(in_dim, D, D)
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        z, seg = self.sorted_inputs(batch)
        experts = self.experts(z)  # [E, B, H]
        mixtures = torch.einsum("dbe,ebh->dbh", self.gates.forward_all(z), experts)  # every domain's, [D, B, H]
        scores = self.towers(mixtures).squeeze(-1)  # [D, B]
        if self.config.stop_gradient:
            own = F.one_hot(seg.sorted_domain, self.num_domains).T.bool()  # [D, B]
            scores = torch.where(own, scores, scores.detach())
        weights = self.label_gates(z, seg)  # [B, D], each row's own domain's gate
        logits = seg.unsort((weights * scores.T).sum(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
