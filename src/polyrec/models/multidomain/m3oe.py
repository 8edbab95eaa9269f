"""M3oE: multi-domain multi-task mixture of experts (Zhang et al., SIGIR 2024), single task.

M3oE ("M3oE: Multi-Domain Multi-Task Mixture-of Experts Recommendation Framework") extracts three aspects
of the input x (embeddings and dense values) with three groups of experts and fuses them with weights
learned AutoML-style:

- **shared experts** ``E^sh_1..K``, mixed by a per-domain softmax gate: ``G_d = Σ_k g^d_k(x) E^sh_k(x)``;
- **domain experts**, one per domain, with a *domain balance* between the row's own domain expert and the
  other domains': ``B_d = α f_d(x) + (1 − α) · mean_{j≠d} f_j(x)``;
- **task experts**, one per task, balanced likewise across tasks;

``z = G_d + w_D · B_d + w_T · T``, then a per-domain tower to the logit. α, w_D and w_T are learnable
scalars passed through a sigmoid (the authors' "Weights" module, sigmoid form) and trained jointly with the
network, as in the authors' code (the paper presents them as an AutoML search over the fusion).

Readings and simplifications made here:

- Single task: one task expert, and the task balance is the identity.
- Domain balance on expert outputs, as the method defines it: ``B_d`` needs the output of every domain's
  expert on every row, so the cost is O(D) per row. polyrec runs all D domain experts as one batched matmul
  per layer over their stacked bank (:class:`~polyrec.layers.bank.MLPBank`, ``[D, B, H]``) and takes
  the balance-weighted sum of the outputs; the row's own ``f_d`` is read from the same tensor. With a single
  domain there is no other expert and ``B_d = f_d`` (run on the row's own domain only).
- No STAR bottom layer: the authors' code puts a STAR-style layer under the experts as an implementation
  detail; here every expert reads x directly (polyrec's ``star`` model is the place for STAR).
- Per-domain gates and towers are banks applied to a domain-sorted batch: a row uses its own domain's only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import LinearBank, MLPBank, mark_domain_bank
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, finite_number, layer_sizes


@dataclass(frozen=True)
class M3oEConfig(ModelConfig):
    """Config of :class:`M3oEModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        shared_experts: K >= 1 shared experts (default 4, the P2 benchmark's).
        expert_units: layer sizes of every expert, each >= 1 and at least one (default (64, 32)).
        tower_units: hidden sizes of each domain's tower, each >= 1 (default (32,); empty: the output layer
            alone).
        domain_weight: initial pre-sigmoid value of w_D, the domain aspect's fusion weight (default 1, the
            P2 benchmark's ``exp_d``). Any finite number: it is a logit, σ maps it into (0, 1).
        task_weight: initial pre-sigmoid value of w_T (default 1, ``exp_t``), any finite number.
        balance: initial pre-sigmoid value of α, the own domain's share in the domain balance (default 1,
            ``bal_d``), any finite number.
        activation: activation of experts and towers.
    """

    shared_experts: int = param(4, ge=1)
    expert_units: tuple[int, ...] = layer_sizes((64, 32), required=True)
    tower_units: tuple[int, ...] = layer_sizes((32,))
    domain_weight: float = finite_number(1.0)
    task_weight: float = finite_number(1.0)
    balance: float = finite_number(1.0)


@register_model("m3oe", tags=("multidomain",))
class M3oEModel(Model):
    """M3oE (SIGIR 2024): shared, domain and task expert groups fused by learnable (AutoML-style) weights.

    Zhang et al., "M3oE: Multi-Domain Multi-Task Mixture-of Experts Recommendation Framework", SIGIR 2024.
    Single task; see the module docstring for the fusion and the readings made.

    Shape:
        forward(batch) -> logits ``[B]``. Every domain's expert runs on every row (one batched matmul over
        the stacked bank, O(D) per row, as the domain balance defines); gates and towers are the row's own.

    Example:
        >>> model = create_model("m3oe", schema, shared_experts=4)   # doctest: +SKIP
        >>> model(batch).logits.shape                                # doctest: +SKIP
        torch.Size([B])
    """

    Config = M3oEConfig

    def __init__(self, schema, config: M3oEConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        act, drop = config.activation, config.dropout
        in_dim = self._build_embeddings()
        # order="rows": the numbers (initial values, dropout masks, rounding) this model always had.
        self.shared = MLPBank(in_dim, config.expert_units, config.shared_experts, act, drop, order="rows")
        self.gates = LinearBank(in_dim, config.shared_experts, D)
        self.domain_experts = MLPBank(in_dim, config.expert_units, D, act, drop)  # f_1..f_D, one per domain
        self.task_expert = MLP(in_dim, config.expert_units, act, drop)
        self.domain_weight = nn.Parameter(torch.tensor(float(config.domain_weight)))
        self.task_weight = nn.Parameter(torch.tensor(float(config.task_weight)))
        self.balance = nn.Parameter(torch.tensor(float(config.balance))) if D > 1 else None
        self.towers = MLPBank(config.expert_units[-1], config.tower_units, D, act, drop, output_dim=1)
        # Routed (the domain experts are not: the domain balance runs every one on every row).
        mark_domain_bank(self.gates)
        mark_domain_bank(self.towers)
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        xs, seg = self.sorted_inputs(batch)
        gate = torch.softmax(self.gates(xs, seg), dim=-1)  # [B, K], each row's own domain's gate
        shared = (gate.T.unsqueeze(-1) * self.shared(xs)).sum(0)  # G_d = Σ_k g^d_k(x) E^sh_k(x)
        if self.balance is None:
            domain = self.domain_experts(xs, seg)
        else:
            # B_d = α f_d(x) + (1 − α) mean_{j≠d} f_j(x), from every domain's expert output on every row.
            every = self.domain_experts(xs)  # [D, B, H]
            own = F.one_hot(seg.sorted_domain, self.num_domains).to(xs.dtype)  # [B, D]
            alpha = torch.sigmoid(self.balance)
            weights = alpha * own + (1.0 - alpha) * (1.0 - own) / (self.num_domains - 1)
            domain = torch.einsum("bd,dbh->bh", weights, every)
        fused = (
            shared + torch.sigmoid(self.domain_weight) * domain + torch.sigmoid(self.task_weight) * self.task_expert(xs)
        )
        logits = seg.unsort(self.towers(fused, seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
