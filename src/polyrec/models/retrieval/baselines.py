"""The baselines of ADI's Table 2 as two-tower models (ADI §5.1.2), each tower built the same way.

Every network below is a :class:`~polyrec.retrieval.layers.NormedBank` member of the same size
(``hidden_units``; §5.1.4: "each network share exactly the same model size", all methods with BN), and
every multi-domain method ends in a domain-specific output layer ``FC^(d)`` (the per-task top of the
multi-task models, ADI's eq. 18), so the methods differ only in how their networks are shared:

- ``dnn``: YouTube-DNN trained on every domain's rows mixed, one network, the domain a feature.
- ``dnn_single``: one whole model per domain (its own embedding tables and network), each domain's rows
  training only its own; evaluated per domain like the rest.
- ``shared_bottom_tt``: one shared network, then the per-domain output layer.
- ``cross_stitch_tt``: D networks side by side with a cross-stitch unit after every hidden layer (Misra et
  al.: ``h̃_d = Σ_k α_dk h_k``, α starting at 0.9 on the diagonal and 0.1 / (D − 1) elsewhere); a row takes
  its domain's column.
- ``mmoe_tt``: D + 1 shared experts (§5.1.4: "4 expert networks for MMoE" with 3 domains), a softmax gate
  per domain on the input.
- ``ple_tt``: one extraction layer (CGC) with D domain-specific experts and 1 shared expert; domain d's
  gate mixes its own expert and the shared one.

The names of the four that are also ranking models end in ``_tt`` (two-tower); a retrieval preset reads
the plain names (``mmoe``) as these.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...layers.bank import LinearBank
from ...layers.domain import DomainSegments
from ...retrieval.layers import NormedBank
from .._registry import register_model
from .base import RetrievalModel, RetrievalModelConfig, RetrievalSchema, Tower


def _bank(tower: Tower, config: RetrievalModelConfig, num: int, **kw) -> NormedBank:
    return NormedBank(
        tower.in_dim,
        config.hidden_units,
        num,
        tower.num_domains,
        activation=config.activation,
        dropout=config.dropout,
        **kw,
    )


class DNNTower(Tower):
    """One network on every row, then one output layer."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        self.net = _bank(self, config, 1)
        self.out = nn.Linear(self.net.output_dim, config.output_dim)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        return self.out(self.net.dense(fields.flatten(1), seg.sorted_domain)[0])


class SingleTower(Tower):
    """Domain d's own network and output layer on domain d's rows (DNN-Single's per-domain model)."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        self.net = _bank(self, config, schema.num_domains, routed=True)
        self.out = LinearBank(self.net.output_dim, config.output_dim, schema.num_domains)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        return self.out.route_member(self.net.routed(fields.flatten(1), seg), seg)


class SharedBottomTower(Tower):
    """A shared network, then the domain's output layer."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        self.net = _bank(self, config, 1)
        self.out = LinearBank(self.net.output_dim, config.output_dim, schema.num_domains)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        return self.out.route_member(self.net.dense(fields.flatten(1), seg.sorted_domain)[0], seg)


class CrossStitchTower(Tower):
    """D columns mixed by a cross-stitch unit after every hidden layer; a row reads its domain's column."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        D = schema.num_domains
        self.net = _bank(self, config, D)
        off = 0.1 / (D - 1) if D > 1 else 0.0
        init = torch.full((D, D), off) + torch.eye(D) * ((0.9 if D > 1 else 1.0) - off)
        self.stitch = nn.Parameter(init.repeat(len(config.hidden_units), 1, 1))  # [L, D, D]
        self.out = LinearBank(self.net.output_dim, config.output_dim, D)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        h: Tensor = fields.flatten(1)
        domain = seg.sorted_domain
        for i in range(len(self.net.layers)):
            h = torch.einsum("dk,kbh->dbh", self.stitch[i], self.net.dense_layer(i, h, domain))
        own = h[domain, torch.arange(h.shape[1], device=h.device)]  # [B, H]: each row's own column
        return self.out.route_member(own, seg)


class MMoETower(Tower):
    """D + 1 shared experts; domain d's softmax gate on the input mixes them."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        D = schema.num_domains
        self.experts = _bank(self, config, D + 1)
        self.gate = LinearBank(self.in_dim, D + 1, D)
        self.out = LinearBank(self.experts.output_dim, config.output_dim, D)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        x = fields.flatten(1)
        experts = self.experts.dense(x, seg.sorted_domain)  # [K, B, H]
        w = torch.softmax(self.gate.route_member(x, seg), -1)  # [B, K]
        return self.out.route_member(torch.einsum("bk,kbh->bh", w, experts), seg)


class PLETower(Tower):
    """One CGC layer: domain d's expert and a shared expert, mixed by domain d's softmax gate."""

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__(num_fields, schema, config)
        D = schema.num_domains
        self.shared = _bank(self, config, 1)
        self.specific = _bank(self, config, D, routed=True)
        self.gate = LinearBank(self.in_dim, 2, D)
        self.out = LinearBank(self.shared.output_dim, config.output_dim, D)

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        x = fields.flatten(1)
        both = torch.stack([self.specific.routed(x, seg), self.shared.dense(x, seg.sorted_domain)[0]], 1)
        w = torch.softmax(self.gate.route_member(x, seg), -1)  # [B, 2]
        return self.out.route_member((w.unsqueeze(-1) * both).sum(1), seg)


@register_model("dnn", tags=("retrieval",))
class DNN(RetrievalModel):
    """YouTube-DNN two towers trained on all domains mixed (ADI Table 2 "DNN")."""

    TowerClass = DNNTower


@register_model("dnn_single", tags=("retrieval",))
class DNNSingle(RetrievalModel):
    """One YouTube-DNN per domain, embeddings included (ADI Table 2 "DNN-Single")."""

    TowerClass = SingleTower
    per_domain_embeddings = True


@register_model("shared_bottom_tt", tags=("retrieval",))
class SharedBottomTT(RetrievalModel):
    """Shared-Bottom two towers: a shared network, per-domain output layers."""

    TowerClass = SharedBottomTower


@register_model("cross_stitch_tt", tags=("retrieval",))
class CrossStitchTT(RetrievalModel):
    """Cross-Stitch two towers: D networks linked by cross-stitch units."""

    TowerClass = CrossStitchTower


@register_model("mmoe_tt", tags=("retrieval",))
class MMoETT(RetrievalModel):
    """MMoE two towers: D + 1 experts, a gate per domain."""

    TowerClass = MMoETower


@register_model("ple_tt", tags=("retrieval",))
class PLETT(RetrievalModel):
    """PLE two towers: D specific experts and 1 shared expert, a gate per domain."""

    TowerClass = PLETower
