"""HAMUR: Hyper Adapter for Multi-Domain Recommendation (Li et al., CIKM 2023).

Each domain has its own backbone DNN, and after each hidden layer a domain-specific *adapter cell*
refines its output; the adapters' weights are not free parameters but are produced per sample by a
hypernetwork shared by all domains, which is how knowledge flows between domains. An adapter cell on a
hidden vector h ∈ R^m of domain d:

1. down-projection ``a = σ(h W₁ + b₁)`` to ``adapter_dim``, with ``W₁ = U₁ H(x) V₁``;
2. up-projection ``t = a W₂ + b₂`` back to m, with ``W₂ = U₂ H(x) V₂``;
3. domain norm ``t̂ = γ_d ⊙ norm(t) + β_d``;
4. shortcut ``h ← h + t̂``.

``H(x) ∈ R^{k×k}`` is the "instance representation matrix", the shared hypernetwork's output on the
sample: here ``H(x) = I + reshape(MLP(x ⊕ e_d))`` with x the sample's embeddings and dense values and e_d
the model's own domain embedding. ``U, V`` are the adapter's domain-specific factors (banks over domains),
so ``W = U H(x) V`` is never materialised: ``h W₁ = ((h U₁) H(x)) V₁``, a rank-k product per row.

Readings and simplifications made here:

- Per-domain parameters (backbone layers, U, V, b, γ, β) are banks applied to a domain-sorted batch, one
  matmul per domain present; only the hypernetwork and the embeddings are shared. ("Hierarchical"
  adapters: one cell after every hidden layer.)
- Domain norm normalises each row over its features (layer-norm statistics) with the domain's affine.
  The Scenario-Wise-Rec port normalises with whole-batch statistics, so its predictions depend on the
  batch (and mix domains); that is not copied.
- ``H(x)`` starts at the identity (the hypernetwork's last layer is zero-initialised), and U, V start
  random, so the adapter starts as a plain low-rank adapter; the port initialises U and V to ones, which
  makes every adapter weight equal at the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import LinearBank, mark_domain_bank
from ...layers.domain import DomainSegments, gather_rows, segment_einsum
from ...layers.mlp import MLP
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class HamurConfig(ModelConfig):
    """Config of :class:`HamurModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: hidden sizes of each domain's backbone, each >= 1 and at least one (default (256, 128),
            the P2 benchmark's HAMUR-small); an adapter cell follows every hidden layer, a per-domain output
            layer the last.
        adapter_dim: width >= 1 of the adapters' bottleneck (default 32).
        hyper_rank: k >= 1, the size of the instance representation matrix H(x) (default 16).
        hyper_units: hidden sizes of the shared hypernetwork, each >= 1 (default (64,); empty: a linear
            hypernetwork).
        activation: hidden activation of backbone and hypernetwork.
        dropout: dropout after each backbone hidden layer.
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128), required=True)
    adapter_dim: int = param(32, ge=1)
    hyper_rank: int = param(16, ge=1)
    hyper_units: tuple[int, ...] = layer_sizes((64,))


class HyperAdapterBank(nn.Module):
    """Domain-specific adapter cells whose weights ``U H(x) V`` are modulated per sample (HAMUR).

    Args:
        dim: m, the size of the hidden vector adapted.
        adapter_dim: bottleneck width.
        rank: k, the size of H(x).
        num_domains: D.

    Shape:
        forward(h ``[B, m]`` sorted by domain, H ``[B, k, k]``, seg) -> ``[B, m]``.
    """

    def __init__(self, dim: int, adapter_dim: int, rank: int, num_domains: int) -> None:
        super().__init__()
        D = num_domains

        def factor(a: int, b: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(D, a, b) / a**0.5)

        self.u1, self.v1 = factor(dim, rank), factor(rank, adapter_dim)
        self.u2, self.v2 = factor(adapter_dim, rank), factor(rank, dim)
        self.b1 = nn.Parameter(torch.zeros(D, adapter_dim))
        self.b2 = nn.Parameter(torch.zeros(D, dim))
        self.norm_scale = nn.Parameter(torch.ones(D, dim))
        self.norm_shift = nn.Parameter(torch.zeros(D, dim))
        mark_domain_bank(self, "u1", "v1", "u2", "v2", "b1", "b2", "norm_scale", "norm_shift")

    def _project(self, x: Tensor, u: Tensor, v: Tensor, hyper: Tensor, seg: DomainSegments) -> Tensor:
        # x W = ((x U_d) H(x)) V_d, without forming the per-row [m, m'] matrix.
        t = segment_einsum("ni,ik->nk", x, seg, gather_rows(u, seg.domains))
        t = torch.bmm(t.unsqueeze(1), hyper).squeeze(1)
        return segment_einsum("nk,ko->no", t, seg, gather_rows(v, seg.domains))

    def forward(self, h: Tensor, hyper: Tensor, seg: DomainSegments) -> Tensor:
        d = seg.sorted_domain  # per-row gathers of the small per-domain vectors
        a = torch.sigmoid(self._project(h, self.u1, self.v1, hyper, seg) + gather_rows(self.b1, d))
        t = self._project(a, self.u2, self.v2, hyper, seg) + gather_rows(self.b2, d)
        t = F.layer_norm(t, t.shape[-1:])
        return h + t * gather_rows(self.norm_scale, d) + gather_rows(self.norm_shift, d)


@register_model("hamur", tags=("multidomain",))
class HamurModel(Model):
    """HAMUR (CIKM 2023): per-domain backbones with domain adapters whose weights a shared hypernetwork modulates.

    Li et al., "HAMUR: Hyper Adapter for Multi-Domain Recommendation", CIKM 2023. See the module docstring
    for the adapter cell and the simplifications made.

    Shape:
        forward(batch) -> logits ``[B]``; each row through its own domain's backbone and adapters only.
    """

    Config = HamurConfig

    def __init__(self, schema, config: HamurConfig) -> None:
        super().__init__(schema, config)
        D, E, k = schema.num_domains, config.embedding_dim, config.hyper_rank
        in_dim = self._build_embeddings()
        self.domain_embedding = nn.Embedding(D, E)
        nn.init.normal_(self.domain_embedding.weight, std=1e-2)
        self.hyper = MLP(in_dim + E, config.hyper_units, config.activation, output_dim=k * k)
        last = self.hyper.net[-1]
        nn.init.zeros_(last.weight)  # H(x) = I at the start
        nn.init.zeros_(last.bias)
        self.register_buffer("eye", torch.eye(k), persistent=False)
        sizes = [in_dim, *config.hidden_units]
        self.layers = nn.ModuleList(LinearBank(a, b, D) for a, b in zip(sizes[:-1], sizes[1:]))
        self.adapters = nn.ModuleList(HyperAdapterBank(m, config.adapter_dim, k, D) for m in config.hidden_units)
        self.out = LinearBank(sizes[-1], 1, D)
        for bank in (*self.layers, self.out):  # routed: a row through its own domain's layers
            mark_domain_bank(bank)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.flat_inputs(batch)
        k = self.config.hyper_rank
        hyper = self.eye + self.hyper(torch.cat([x, self.domain_embedding(batch.domain)], dim=1)).view(-1, k, k)
        seg = DomainSegments.from_domain(batch.domain)
        h, hyper = seg.sort(x), seg.sort(hyper)
        for layer, adapter in zip(self.layers, self.adapters):
            h = self.dropout(self.act(layer(h, seg)))
            h = adapter(h, hyper, seg)
        logits = seg.unsort(self.out(h, seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
