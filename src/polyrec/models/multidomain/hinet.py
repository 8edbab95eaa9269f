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

Readings and simplifications made here:

- SAN in parameter space. The attention weights depend on the scenario pair only, never on the sample, so
  for the rows of scenario i the transfer is computed by one expert module whose parameters are the
  attention-weighted mixture ``θ̄_i = Σ_{j≠i} w_ij θ_j`` of the other scenarios' specific experts (sub-experts
  and gate). This is exact for the linear parts of the experts and approximates the mixture of their
  outputs through the nonlinearities; it is what keeps the cost of a row independent of the number of
  scenarios (the authors' code runs every scenario's experts on every row). The mixture is formed once per
  batch for the scenarios present (``S·D·|θ|``), and every scenario's experts receive gradient from the
  scenarios that attend to them, which is the transfer SAN is for.
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

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork, DomainSegments
from ...layers.embedding import EmbeddingCollection
from ...layers.gates import DomainExpertBank, ParallelMLP, bank_select, segment_einsum
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class HiNetConfig:
    """Config of :class:`HiNetModel`.

    Args:
        embedding_dim: E for every sparse feature and the domain embedding (default 16).
        shared_experts: scenario-shared sub-experts (default 4).
        specific_experts: sub-experts per scenario (default 2).
        expert_units: layer sizes of every sub-expert (default (64, 32)).
        san: use the scenario-aware attentive network (default True).
        san_hidden: hidden sizes of the SAN's attention MLP on the domain embedding (default (32,)).
        tower_units: hidden sizes of the tower on the scenario representation (default (64, 32)).
        activation: activation of experts, attention MLP and tower.
        dropout: dropout in the experts and the tower.
        aux_network: add STAR's auxiliary domain network's logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    shared_experts: int = 4
    specific_experts: int = 2
    expert_units: tuple[int, ...] = (64, 32)
    san: bool = True
    san_hidden: tuple[int, ...] = (32,)
    tower_units: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    dropout: float = 0.0
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("hinet")
class HiNetModel(Model):
    """HiNet (ICDE 2023): shared + scenario-specific sub-experts and attention over the other scenarios' experts.

    Zhou et al., "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical Information
    Extraction", ICDE 2023. Single task; see the module docstring for SAN and the readings made.

    Shape:
        forward(batch) -> logits ``[B]``; per-row cost independent of the number of scenarios.
    """

    Config = HiNetConfig

    def __init__(self, schema, config: HiNetConfig) -> None:
        super().__init__(schema, config)
        if config.shared_experts < 1 or config.specific_experts < 1 or not config.expert_units:
            raise ValueError("hinet: needs shared_experts >= 1, specific_experts >= 1 and expert_units")
        D, E, Ksp = schema.num_domains, config.embedding_dim, config.specific_experts
        self.embeddings = EmbeddingCollection(schema, E)
        in_dim = self.embeddings.output_dim + len(schema.dense)
        act, drop = config.activation, config.dropout
        self.shared = ParallelMLP(in_dim, config.expert_units, config.shared_experts, act, drop)
        self.shared_gate = nn.Linear(in_dim, config.shared_experts)
        self.specific = DomainExpertBank(in_dim, config.expert_units, D, Ksp, act, drop)
        bound = 1.0 / in_dim**0.5
        self.specific_gate_weight = nn.Parameter(torch.empty(D, in_dim, Ksp).uniform_(-bound, bound))
        self.specific_gate_bias = nn.Parameter(torch.empty(D, Ksp).uniform_(-bound, bound))
        self.domain_embedding = nn.Embedding(D, E) if config.san else None
        self.san = MLP(E, config.san_hidden, act, output_dim=D) if config.san else None
        d = config.expert_units[-1]
        self.tower = MLP((3 if config.san else 2) * d, config.tower_units, act, drop, output_dim=1)
        self.aux = AuxiliaryDomainNetwork(D, E, config.aux_hidden, activation=act) if config.aux_network else None

    def scenario_expert(self, xs: Tensor, seg: DomainSegments, mix: Tensor | None = None) -> Tensor:
        """``S(x)``: the scenario's sub-experts under its gate (or, with ``mix``, the mixed scenarios')."""
        experts = self.specific(xs, seg, mix)  # [B, K, d]
        w = bank_select(self.specific_gate_weight, seg, mix)
        b = bank_select(self.specific_gate_bias, seg, mix)
        gate = torch.softmax(segment_einsum("ni,io->no", xs, seg, w) + b.index_select(0, seg.local), dim=-1)
        return (gate.unsqueeze(-1) * experts).sum(1)

    def attention(self, domains: Tensor) -> Tensor:
        """SAN weights ``[S, D]`` of ``domains`` ``[S]`` over the other scenarios (zero on the own one)."""
        scores = self.san(self.domain_embedding(domains))
        own = F.one_hot(domains, self.num_domains).bool()
        return torch.softmax(scores.masked_fill(own, float("-inf")), dim=-1)

    def forward(self, batch: Batch) -> ModelOutput:
        x = torch.cat([self.embeddings(batch).flatten(1), batch.dense], dim=1)
        seg = DomainSegments.from_domain(batch.domain)
        xs = seg.sort(x)
        gate = torch.softmax(self.shared_gate(xs), dim=-1).unsqueeze(-1)
        parts = [self.scenario_expert(xs, seg), (gate * self.shared(xs)).sum(1)]
        if self.san is not None:
            if self.num_domains > 1:
                parts.insert(0, self.scenario_expert(xs, seg, mix=self.attention(seg.domains)))
            else:
                parts.insert(0, torch.zeros_like(parts[0]))
        logits = seg.unsort(self.tower(torch.cat(parts, dim=1)).squeeze(-1))
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
