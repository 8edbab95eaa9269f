"""ADI: Adaptive Domain Interest network (Jiang et al., Alibaba), a multi-domain two-tower retrieval model.

Each tower, read bottom to top (§4, Figure 1):

1. **Domain interest adaptation layer** (§4.2.2, :class:`~polyrec.retrieval.layers.DomainInterestAdaptation`):
   the embedded fields re-weighted for the row's domain, by a linear transformation (eq. 22, ADI-LT), a
   vanilla attention (eq. 23-24, ADI-VA) or an SE block (eq. 25-26, ADI-SE, the default). Placement
   (Table 8): ``domain`` keeps D blocks and a row uses its domain's (3-SE, default), ``global`` one block
   for all rows (1-SE), ``network`` one block in front of each shared and domain-specific network (4-SE).
2. **Shared and domain-specific networks** (§4.1.2): K shared networks on every row, mixed by the domain
   gate of eq. 8, ``α_k = (W^k f_domain + b^k) / Σ_n (W^n f_domain + b^n)`` — a linear normalisation, not a
   softmax, exactly as written (W starts at 0 and b at 1, so α starts at 1/K; with K = 1, α = 1); and D
   domain-specific networks, a row through its own domain's only (eq. 10).
3. **Fusion** (§4.1.3): ``concat`` (eq. 11-13, default): ``[β1 E_spec | β1 E_spec ⊙ β2 E_shared | β2
   E_shared]`` with ``β1 = σ(W_spec^(d) f_domain)``, ``β2 = σ(W_shared^(d) f_domain)`` (per-domain weights,
   no bias, as eq. 11-12 write them; β is a vector over the network's width); ``sum`` (eq. 14-15): ``α
   E_spec + (1 − α) E_shared`` with the scalar gate ``α = σ(W_gate^(d) f_domain + b_gate)`` (the gate of a
   two-expert MMoE is one number); ``network_mul`` (eq. 16-17): the shared and specific networks replaced by
   STAR's star-topology FCN ``(W_shared ⊙ W_spec^(d)) x + b_shared + b_spec^(d)`` (one shared network, as
   the paper notes), each layer followed by the batch norm.
4. **Domain-specific forward network** (eq. 18): ``E = FC_forward^(d)(E_fusion)``, one linear layer per domain.

**Domain-specific batch normalisation** (§4.2.1, eq. 20, ``dsbn``): the shared networks' batch norms (and the
star FCN's) keep per-domain statistics and affine parameters; ``dsbn=False`` gives them batch-wide ones
(the "w/o DSBN" row of Table 7). A domain-specific network's batch norm sees only its own domain, so it is
domain-specific either way.

**Self-training** (§4.3, Algorithm 1) is a training strategy, not part of the model:
:mod:`polyrec.retrieval.trainer`.

Variants (§5.1.2, Table 2): ``adi`` / ``adi_se`` (SE block, 3-SE), ``adi_lt`` (linear transformation),
``adi_va`` (vanilla attention), ``adi_se_max`` (ADI-SE with K = 3 shared networks: "more than one shared
network"; the paper does not say how many, Figure 3 varies K from 1 to 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ...config import ConfigError, param
from ...layers.bank import LinearBank, linear_init_
from ...layers.domain import DomainSegments, StarLinear, segment_einsum
from ...layers.mlp import activation as make_activation
from ...layers.norm import PartitionedNorm
from ...retrieval.layers import DomainInterestAdaptation, NormedBank, norm_groups
from .._registry import register_model
from .base import RetrievalModel, RetrievalModelConfig, RetrievalSchema, Tower


@dataclass(frozen=True)
class ADIConfig(RetrievalModelConfig):
    """Config of :class:`ADI` (shared fields: :class:`~polyrec.models.retrieval.base.RetrievalModelConfig`).

    Args:
        num_shared: K shared networks (>= 1).
        fusion: ``concat`` (eq. 11-13), ``sum`` (eq. 14-15) or ``network_mul`` (eq. 16-17).
        dsbn: domain-specific batch normalisation in the shared networks (eq. 20).
        adaptation: the domain interest adaptation layer: ``se`` (eq. 25-26), ``attention`` (eq. 23-24),
            ``linear`` (eq. 22) or ``none``.
        adaptation_placement: ``domain`` (one block per domain: 3-SE), ``global`` (one block: 1-SE) or
            ``network`` (one block per shared and specific network: 4-SE; not with ``network_mul``).
        se_reduction: the SE block's hidden width is ``max(1, N // se_reduction)`` for N fields.
        se_gate: ``sigmoid`` (SE-Net's excitation, default) or ``none`` (the literal ``(FC, ReLU, FC)``).
    """

    num_shared: int = param(1, ge=1)
    fusion: Literal["concat", "sum", "network_mul"] = "concat"
    dsbn: bool = True
    adaptation: Literal["se", "attention", "linear", "none"] = "se"
    adaptation_placement: Literal["domain", "global", "network"] = "domain"
    se_reduction: int = param(2, ge=1)
    se_gate: Literal["sigmoid", "none"] = "sigmoid"

    def __post_init__(self) -> None:
        if self.fusion == "network_mul" and self.adaptation_placement == "network" and self.adaptation != "none":
            raise ConfigError(
                "model.adaptation_placement: 'network' is not allowed with model.fusion 'network_mul' (the star "
                "FCN is one network); use adaptation_placement 'domain' or 'global', or fusion 'concat' or 'sum'"
            )


class ADITower(Tower):
    """One ADI tower (see the module docstring)."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: ADIConfig) -> None:
        super().__init__(num_fields, schema, config)
        D, K, E = schema.num_domains, config.num_shared, config.embedding_dim
        self.config = config
        self.dial = None
        if config.adaptation != "none":
            blocks = {"domain": D, "global": 1, "network": K + D}[config.adaptation_placement]
            self.dial = DomainInterestAdaptation(
                config.adaptation, num_fields, E, blocks, config.se_reduction, config.se_gate
            )
        if config.fusion == "network_mul":
            sizes = [self.in_dim, *config.hidden_units]
            self.star = nn.ModuleList(StarLinear(a, b, D) for a, b in zip(sizes[:-1], sizes[1:]))
            groups = D if config.dsbn else 1
            self.star_norms = nn.ModuleList(PartitionedNorm(h, groups, shared_affine=False) for h in sizes[1:])
            self.act = make_activation(config.activation)
            self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
            fused = sizes[-1]
        else:
            kw = dict(activation=config.activation, dropout=config.dropout)
            self.shared = NormedBank(self.in_dim, config.hidden_units, K, D, domain_norm=config.dsbn, **kw)
            self.specific = NormedBank(self.in_dim, config.hidden_units, D, D, routed=True, **kw)
            H = self.shared.output_dim
            self.gate_weight = nn.Parameter(torch.zeros(E, K))  # eq. 8: W^k_shared, one column per network
            self.gate_bias = nn.Parameter(torch.ones(K))
            if config.fusion == "concat":
                self.beta_spec = nn.Parameter(linear_init_(torch.empty(D, E, H), E))  # eq. 11
                self.beta_shared = nn.Parameter(linear_init_(torch.empty(D, E, H), E))  # eq. 12
                fused = 3 * H
            else:
                self.sum_weight = nn.Parameter(linear_init_(torch.empty(D, E, 1), E))  # eq. 14: W_gate^(d)
                self.sum_bias = nn.Parameter(torch.zeros(1))  # b_gate
                fused = H
        self.forward_net = LinearBank(fused, config.output_dim, D)  # eq. 18

    def shared_gate(self, f_domain: Tensor) -> Tensor:
        """Eq. 8: the shared networks' weights ``[B, K]``, linearly normalised to sum to one."""
        a = torch.addmm(self.gate_bias, f_domain, self.gate_weight)
        return a / a.sum(-1, keepdim=True)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        cfg = self.config
        domain = seg.sorted_domain
        K = cfg.num_shared
        if self.dial is not None and cfg.adaptation_placement != "network":
            block = domain if cfg.adaptation_placement == "domain" else torch.zeros_like(domain)
            fields = self.dial(fields, block)
        if cfg.fusion == "network_mul":
            h = fields.flatten(1)
            for layer, norm in zip(self.star, self.star_norms):
                h = self.drop(self.act(norm(layer(h, seg), *norm_groups(domain, cfg.dsbn))))
            return self.forward_net.route_member(h, seg)
        if self.dial is not None and cfg.adaptation_placement == "network":
            shared_in = torch.stack(
                [self.dial(fields, torch.full_like(domain, k)).flatten(1) for k in range(K)], 0
            )  # [K, B, N*E]
            spec_in = self.dial(fields, domain + K).flatten(1)
        else:
            shared_in = spec_in = fields.flatten(1)
        shared = self.shared.dense(shared_in, domain)  # [K, B, H]
        e_shared = torch.einsum("bk,kbh->bh", self.shared_gate(f_domain), shared)  # eq. 9
        e_spec = self.specific.routed(spec_in, seg)  # eq. 10
        if cfg.fusion == "concat":
            b1 = torch.sigmoid(segment_einsum("ne,eh->nh", f_domain, seg, self.beta_spec.index_select(0, seg.domains)))
            b2 = torch.sigmoid(
                segment_einsum("ne,eh->nh", f_domain, seg, self.beta_shared.index_select(0, seg.domains))
            )
            s, c = b1 * e_spec, b2 * e_shared
            fused = torch.cat([s, s * c, c], 1)  # eq. 13
        else:
            w = self.sum_weight.index_select(0, seg.domains)
            alpha = torch.sigmoid(segment_einsum("ne,eo->no", f_domain, seg, w) + self.sum_bias)  # eq. 14
            fused = alpha * e_spec + (1 - alpha) * e_shared  # eq. 15
        return self.forward_net.route_member(fused, seg)


@register_model("adi", tags=("retrieval",))
class ADI(RetrievalModel):
    """ADI (Jiang et al.): shared + domain-specific networks, CONCAT fusion, DSBN, SE domain adaptation."""

    Config = ADIConfig
    TowerClass = ADITower


@dataclass(frozen=True)
class ADISEConfig(ADIConfig):
    """ADI-SE: the SE-block domain adaptation layer, one block per domain (Table 2, Table 8's 3-SE)."""


@register_model("adi_se", tags=("retrieval",))
class ADISE(ADI):
    """ADI-SE (Table 2): ADI with the SE-block adaptation layer, one block per domain."""

    Config = ADISEConfig


@dataclass(frozen=True)
class ADILTConfig(ADIConfig):
    """ADI-LT: the linear domain transformation (eq. 22) as the adaptation layer."""

    adaptation: Literal["se", "attention", "linear", "none"] = "linear"


@register_model("adi_lt", tags=("retrieval",))
class ADILT(ADI):
    """ADI-LT (Table 2): ADI with the linear domain transformation (eq. 22)."""

    Config = ADILTConfig


@dataclass(frozen=True)
class ADIVAConfig(ADIConfig):
    """ADI-VA: the vanilla domain attention (eq. 23-24) as the adaptation layer."""

    adaptation: Literal["se", "attention", "linear", "none"] = "attention"


@register_model("adi_va", tags=("retrieval",))
class ADIVA(ADI):
    """ADI-VA (Table 2): ADI with the vanilla domain attention (eq. 23-24)."""

    Config = ADIVAConfig


@dataclass(frozen=True)
class ADISEMaxConfig(ADIConfig):
    """ADI-SE (MAX): ADI-SE with three shared networks."""

    num_shared: int = param(3, ge=1)


@register_model("adi_se_max", tags=("retrieval",))
class ADISEMax(ADI):
    """ADI-SE (MAX) (Table 2): ADI-SE with K = 3 shared networks."""

    Config = ADISEMaxConfig
