"""Per-domain low-rank adapters (MLoRA, Yang et al., 2024): banks of LoRA matrices, one row per domain.

MLoRA (paper eq. 8-9) splits every adapted layer into a shared part and a per-domain low-rank part::

    h_d = W x + b + B_d A_d x

``W, b`` are the wrapped layer's own parameters (shared by all domains); ``A_d`` (``D_in × r``, Gaussian,
§3.2) and ``B_d`` (``r × D_out``, zeros) belong to domain d only. With ``B = 0`` an adapted layer computes
exactly what the wrapped layer computes, so a model starts from (or, in two-phase training, keeps) its
backbone's function.

Two options go beyond the paper and are off by default: ``domain_bias`` adds a per-domain bias ``b_d``
(zeros at the start; eq. 9 has none, and polyrec 0.2 always had it), and ``a_init="uniform"`` draws ``A``
as ``nn.Linear`` draws a weight, uniform in ±1/√D_in (polyrec 0.2's draw). The Gaussian draw has standard
deviation 1/√D_in, so ``x A_d`` keeps the scale of ``x``. The rank of each layer follows
paper eq. 10, ``r = max(d_out // α, 1)``, optionally reduced until the per-domain adapter fits a parameter
cap (:func:`lora_rank`).

The matrices are stored as banks ``A [D, D_in, r]``, ``B [D, r, D_out]``, ``b [D, D_out]`` and routed per
row, never run per domain:

- few domains in a batch (at most ``loop_max``): rows are grouped by domain (:class:`DomainSegments`)
  and each present domain's rows take two small matmuls; a single-domain batch (the ``alternate`` and
  ``domain_batched`` samplers) needs no reordering at all;
- many domains in a batch: every row gathers its own ``A_d``, ``B_d`` and two batched matmuls
  (``torch.bmm``) do the rest.

Either way the forward and backward cost depends on the batch (rows, domains present), never on the
number of domains D; a domain's matrices get gradient only from its own rows (zeros for absent domains,
as every gather-based bank in :mod:`polyrec.layers.domain`).

How a row's domain reaches a wrapped layer: the layer holds an :class:`AdapterState`, shared with the
model wrapper (:class:`polyrec.models.adapters.MLoRAModel`), whose ``forward`` puts the batch's
:class:`AdapterRouting` there before calling the backbone and removes it afterwards. The wrapped layers
keep the parameter names of the layer they replace (``weight``, ``bias``, ...), so a backbone's
``state_dict`` keys stay valid inside the adapted model and the adapter adds ``<layer>.lora.A/B/bias``.

Serving: :class:`FoldedLoRALinear` and :class:`FoldedLoRAStarLinear` hold every domain's merged layer,
``W + (A_d B_d)ᵀ`` and ``b + b_d`` (STAR: ``W ⊙ W_p + A_d B_d``), so a domain's rows take one matmul per
layer instead of three (:func:`polyrec.models.adapters.fold_mlora` swaps them into a copy of a model).

Example:
    >>> state = AdapterState()
    >>> layer = LoRALinear(nn.Linear(16, 8), num_domains=3, rank=2, state=state)
    >>> state.routing = AdapterRouting(torch.tensor([0, 2, 2, 1]))
    >>> layer(torch.randn(4, 16)).shape
    torch.Size([4, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .domain import (
    DomainSegments,
    StarLinear,
    gather_rows,
    mark_domain_bank,
    segment_linear,
    unmark_domain_bank,
)

#: Up to this many domains present in a batch, adapters run one matmul pair per present domain; beyond it,
#: every row gathers its own matrices (batched matmul).
LOOP_MAX = 16
#: How ``A`` is drawn: ``gaussian`` (MLoRA §3.2) or ``uniform`` (``nn.Linear``'s draw).
A_INITS = ("gaussian", "uniform")


def lora_rank(in_dim: int, out_dim: int, alpha: int, max_params: int | None = None, domain_bias: bool = False) -> int:
    """Rank of one adapted layer: ``max(out_dim // alpha, 1)`` (MLoRA eq. 10), reduced to fit a cap.

    Args:
        in_dim: D_in of the adapted layer.
        out_dim: D_out of the adapted layer.
        alpha: the temperature coefficient α (MLoRA eq. 10); larger α, smaller adapters.
        max_params: optional cap on one domain's adapter parameters for this layer,
            ``D_in·r + r·D_out (+ D_out for the per-domain bias)``; the rank is reduced until it fits.
        domain_bias: whether the adapter has the per-domain bias (counted against the cap).

    Raises:
        ValueError: ``alpha`` < 1, or a cap that even rank 1 does not fit (the message names the minimum).

    Example:
        >>> lora_rank(24, 256, alpha=16), lora_rank(256, 128, alpha=16), lora_rank(64, 1, alpha=16)
        (16, 8, 1)
        >>> lora_rank(256, 128, alpha=16, max_params=2000)   # 256·r + 128·r <= 2000
        5
        >>> lora_rank(256, 128, alpha=16, max_params=2000, domain_bias=True)   # 256·r + 128·r + 128 <= 2000
        4
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"MLoRA alpha must be an integer >= 1, got {alpha!r}")
    rank = max(out_dim // alpha, 1)
    if max_params is None:
        return rank
    bias = out_dim if domain_bias else 0
    fit = (max_params - bias) // (in_dim + out_dim)
    if fit < 1:
        smallest = in_dim + out_dim + bias
        raise ValueError(
            f"max_adapter_params={max_params} is below the smallest adapter of a {in_dim}->{out_dim} layer "
            f"(rank 1: {smallest} parameters per domain); raise the cap to at least {smallest}"
        )
    return min(rank, fit)


@dataclass
class AdapterRouting:
    """The domain of every row of the current batch, and its domain segments (computed once, on demand).

    Args:
        domain: the adapter domain of each row (``[B]``, original batch order).
        remapped: True when the backbone sees other domain indices than the adapters (domains added after
            training are routed through an existing domain of the backbone); layers that receive
            backbone-sorted inputs (STAR) must then regroup rows by their adapter domain.
    """

    domain: Tensor
    remapped: bool = False
    _segments: DomainSegments | None = field(default=None, repr=False)

    @property
    def segments(self) -> DomainSegments:
        if self._segments is None:
            self._segments = DomainSegments.from_domain(self.domain)
        return self._segments


class AdapterState:
    """State shared by the wrapped layers of one adapted model.

    Attributes:
        routing: the routing of the batch being computed (set by the model wrapper's ``forward``).
        enabled: when False the wrapped layers compute only their shared part (what the backbone computes
            when every ``B`` is zero), which skips the adapters' cost (two-phase training's first phase).

    One model instance computes one batch at a time: the state is not meant for concurrent forwards of the
    same model from several threads.
    """

    def __init__(self) -> None:
        self.routing: AdapterRouting | None = None
        self.enabled: bool = True

    def require_routing(self, layer: str) -> AdapterRouting:
        if self.routing is None:
            raise RuntimeError(
                f"{layer} has per-domain adapters but was called without the batch's domains; call the adapted "
                "model (MLoRAModel.forward(batch)), not its backbone or the layer directly"
            )
        return self.routing


class LoRABank(nn.Module):
    """The per-domain low-rank matrices of one adapted layer: ``delta_d(x) = (x A_d) B_d + b_d``.

    Args:
        in_dim: D_in.
        out_dim: D_out.
        rank: r.
        num_domains: D.
        domain_bias: include the per-domain bias ``b_d`` (not in MLoRA's eq. 9).
        a_init: ``gaussian`` (MLoRA §3.2: normal, std 1/√D_in) or ``uniform`` (±1/√D_in, as ``nn.Linear``).

    ``A`` is drawn per domain by ``a_init``, ``B`` and ``b_d`` start at zero, so ``delta = 0`` until
    training moves ``B`` (MLoRA §3.2, as in LoRA).

    New domains (:meth:`extend`) append rows. :meth:`stage` splits the rows from ``first`` on into separate
    trainable parameters (``A_new`` ...) and freezes the others, so an optimiser can train a new domain's
    adapter while every other domain's rows are not even among its parameters; :meth:`merge` joins them
    again.

    Shape:
        ``A [D, D_in, r]``, ``B [D, r, D_out]``, ``bias [D, D_out]``;
        :meth:`forward_rows`: x ``[B, N, D_in]``, domain ``[B]`` -> ``[B, N, D_out]``;
        :meth:`forward_segments`: domain-sorted x ``[B, N, D_in]``, segments -> ``[B, N, D_out]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        num_domains: int,
        domain_bias: bool = False,
        a_init: str = "gaussian",
    ) -> None:
        super().__init__()
        if rank < 1 or num_domains < 1:
            raise ValueError(
                f"LoRABank needs rank >= 1 and num_domains >= 1, got rank={rank}, num_domains={num_domains}"
            )
        if a_init not in A_INITS:
            raise ValueError(f"LoRABank a_init {a_init!r} is not allowed; must be one of {', '.join(A_INITS)}")
        self.in_dim, self.out_dim, self.rank, self.a_init = in_dim, out_dim, rank, a_init
        self.A = nn.Parameter(self._init_a(num_domains))
        self.B = nn.Parameter(torch.zeros(num_domains, rank, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_domains, out_dim)) if domain_bias else None
        self.A_new: nn.Parameter | None = None
        self.B_new: nn.Parameter | None = None
        self.bias_new: nn.Parameter | None = None
        mark_domain_bank(self, *self._banks())

    def _banks(self, suffix: str = "") -> tuple[str, ...]:
        return tuple(n + suffix for n in ("A", "B", "bias") if getattr(self, n) is not None)

    def _init_a(self, n: int, like: Tensor | None = None) -> Tensor:
        scale = 1.0 / math.sqrt(self.in_dim)
        kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
        a = torch.empty(n, self.in_dim, self.rank, **kw)
        return a.normal_(0.0, scale) if self.a_init == "gaussian" else a.uniform_(-scale, scale)

    @property
    def num_domains(self) -> int:
        return self.A.shape[0] + (0 if self.A_new is None else self.A_new.shape[0])

    def params_per_domain(self) -> int:
        """``D_in·r + r·D_out (+ D_out)``: one domain's adapter parameters for this layer."""
        return self.rank * (self.in_dim + self.out_dim) + (self.out_dim if self.bias is not None else 0)

    # ---------------------------------------------------------------------------------------- rows
    def _select(self, name: str, idx: Tensor) -> Tensor:
        """Rows ``idx`` of bank ``name``, reading staged rows from ``<name>_new``."""
        full: Tensor = getattr(self, name)
        new: Tensor | None = getattr(self, f"{name}_new")
        if new is None:
            return gather_rows(full, idx)
        n0 = full.shape[0]
        old = gather_rows(full, idx.clamp(max=n0 - 1))
        fresh = gather_rows(new, (idx - n0).clamp(min=0))
        return torch.where((idx >= n0).view(-1, *[1] * (full.dim() - 1)), fresh, old)

    def forward_rows(self, x: Tensor, domain: Tensor) -> Tensor:
        """Gather path: each row with its own domain's matrices (cost independent of the domains present)."""
        a, b = self._select("A", domain), self._select("B", domain)
        h = torch.bmm(torch.bmm(x, a), b)
        if self.bias is not None:
            h = h + self._select("bias", domain).unsqueeze(1)
        return h

    def forward_segments(self, x: Tensor, seg: DomainSegments) -> Tensor:
        """Segment path: rows sorted by domain, one matmul pair per present domain."""
        a, b = self._select("A", seg.domains), self._select("B", seg.domains)
        bias = self._select("bias", seg.domains) if self.bias is not None else None
        if seg.num_segments == 1:
            h = (x @ a[0]) @ b[0]
            return h + bias[0] if bias is not None else h
        parts = torch.split(x, seg.counts)
        out = []
        for i, p in enumerate(parts):
            h = (p @ a[i]) @ b[i]
            out.append(h + bias[i] if bias is not None else h)
        return torch.cat(out, dim=0)

    def delta(self, x: Tensor, routing: AdapterRouting, loop_max: int | None = None) -> Tensor:
        """The adapter output for ``x`` in original batch order (any leading shape ``[B, ..., D_in]``).

        Up to ``loop_max`` (default :data:`LOOP_MAX`) domains present: the segment path; beyond: the gather path.
        """
        shape = x.shape
        if shape[0] != routing.domain.shape[0]:
            raise ValueError(
                f"adapter input has {shape[0]} rows but the batch has {routing.domain.shape[0]} domain labels; "
                "per-domain adapters need the batch dimension first"
            )
        x3 = x.reshape(shape[0], -1, shape[-1])
        seg = routing.segments
        if seg.num_segments <= (LOOP_MAX if loop_max is None else loop_max):
            h = seg.unsort(self.forward_segments(seg.sort(x3), seg))
        else:
            h = self.forward_rows(x3, routing.domain)
        return h.reshape(*shape[:-1], self.out_dim)

    # ------------------------------------------------------------------------------- new domains
    @torch.no_grad()
    def extend(self, n: int = 1) -> None:
        """Append ``n`` domains: ``A`` random, ``B`` and ``b_d`` zero (the new domains start at the backbone)."""
        if self.A_new is not None:
            raise RuntimeError("merge() staged rows before extending the bank")
        self.A = nn.Parameter(torch.cat([self.A.detach(), self._init_a(n, like=self.A)]), self.A.requires_grad)
        self.B = nn.Parameter(
            torch.cat([self.B.detach(), self.B.new_zeros(n, self.rank, self.out_dim)]), self.B.requires_grad
        )
        if self.bias is not None:
            self.bias = nn.Parameter(
                torch.cat([self.bias.detach(), self.bias.new_zeros(n, self.out_dim)]), self.bias.requires_grad
            )

    @torch.no_grad()
    def stage(self, first: int) -> list[nn.Parameter]:
        """Move rows ``first..D-1`` into trainable ``*_new`` parameters, freeze rows ``0..first-1``.

        Returns the staged parameters. Outputs are unchanged (the same values are read from either place).
        """
        if self.A_new is not None:
            raise RuntimeError("rows are already staged; merge() first")
        if not 0 < first < self.A.shape[0]:
            raise ValueError(f"stage(first={first}) needs 0 < first < {self.A.shape[0]} (the number of domains)")
        staged = []
        for name in ("A", "B", "bias"):
            full = getattr(self, name)
            if full is None:
                continue
            setattr(self, name, nn.Parameter(full[:first].clone(), requires_grad=False))
            new = nn.Parameter(full[first:].clone())
            setattr(self, f"{name}_new", new)
            staged.append(new)
        mark_domain_bank(self, *self._banks("_new"), first=first)
        return staged

    @torch.no_grad()
    def merge(self) -> None:
        """Join staged rows back into single banks (all rows trainable again)."""
        if self.A_new is None:
            return
        unmark_domain_bank(self, *self._banks("_new"))
        for name in ("A", "B", "bias"):
            full, new = getattr(self, name), getattr(self, f"{name}_new")
            if full is None:
                continue
            setattr(self, f"{name}_new", None)
            setattr(self, name, nn.Parameter(torch.cat([full.detach(), new.detach()])))

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, num_domains={self.num_domains}, "
            f"domain_bias={self.bias is not None}"
        )


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus per-domain adapters: ``h = W x + b + (x A_d) B_d + b_d`` (MLoRA eq. 9).

    Holds the wrapped layer's own ``weight`` and ``bias`` (same names, same tensors: wrapping shares them)
    and a :class:`LoRABank` as ``lora``. The shared part is ``F.linear`` exactly as in ``nn.Linear``, so
    with ``B = 0`` the output is bit-for-bit the wrapped layer's.

    Args:
        base: the linear layer to adapt.
        num_domains: D.
        rank: r (see :func:`lora_rank`).
        state: the model's :class:`AdapterState` (gives the batch's domains).
        domain_bias: include the per-domain bias (not in MLoRA's eq. 9).
        a_init: how ``A`` is drawn (see :class:`LoRABank`).

    Shape:
        ``[B, ..., D_in]`` -> ``[B, ..., D_out]``, batch dimension first.
    """

    def __init__(
        self,
        base: nn.Linear,
        num_domains: int,
        rank: int,
        state: AdapterState,
        domain_bias: bool = False,
        a_init: str = "gaussian",
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora = LoRABank(base.in_features, base.out_features, rank, num_domains, domain_bias, a_init)
        self.lora.to(device=base.weight.device, dtype=base.weight.dtype)
        self.state = state

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.state.enabled:
            return out
        return out + self.lora.delta(x, self.state.require_routing("LoRALinear"))

    @torch.no_grad()
    def fold(self) -> FoldedLoRALinear:
        """An inference-only copy with each domain's ``W + (A_d B_d)ᵀ`` and bias precomputed."""
        return FoldedLoRALinear(self)

    def unwrap(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's ``weight`` and ``bias`` (the adapters dropped)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LoRAStarLinear(StarLinear):
    """STAR's star-topology layer plus per-domain adapters (STAR + MLoRA).

    ``h = (W ⊙ W_p) x + b + b_p + (x A_d) B_d + b_d``: the star layer as it is (:class:`StarLinear`, whose
    parameters this layer takes over under the same names) plus a :class:`LoRABank`. Its input is sorted
    by domain (STAR's :class:`DomainSegments`); the adapters reuse those segments, so they cost one more
    matmul pair per present domain.

    Args:
        base: the star layer to adapt.
        num_domains: D (of the adapters; at least the star layer's).
        rank: r.
        state: the model's :class:`AdapterState`.
        domain_bias: include the per-domain bias (not in MLoRA's eq. 9).
        a_init: how ``A`` is drawn (see :class:`LoRABank`).

    Shape:
        forward(x ``[B, D_in]`` sorted by domain, seg) -> ``[B, D_out]``.
    """

    def __init__(
        self,
        base: StarLinear,
        num_domains: int,
        rank: int,
        state: AdapterState,
        domain_bias: bool = False,
        a_init: str = "gaussian",
    ) -> None:
        nn.Module.__init__(self)
        self.in_dim, self.out_dim, self.num_domains = base.in_dim, base.out_dim, base.num_domains
        self.weight, self.bias = base.weight, base.bias
        self.domain_weight, self.domain_bias = base.domain_weight, base.domain_bias
        mark_domain_bank(self, "domain_weight", "domain_bias")
        self.lora = LoRABank(base.in_dim, base.out_dim, rank, num_domains, domain_bias, a_init)
        self.lora.to(device=base.weight.device, dtype=base.weight.dtype)
        self.state = state

    def forward(self, x: Tensor, seg: DomainSegments) -> Tensor:
        out = super().forward(x, seg)
        if not self.state.enabled:
            return out
        routing = self.state.require_routing("LoRAStarLinear")
        if routing.remapped:
            # The backbone grouped rows by its own domains (an added domain rides on an existing one): put
            # the rows back in batch order and route them by their adapter domain.
            return out + seg.sort(self.lora.delta(seg.unsort(x), routing))
        if seg.num_segments <= LOOP_MAX:
            return out + self.lora.forward_segments(x.unsqueeze(1), seg).squeeze(1)
        return out + self.lora.forward_rows(x.unsqueeze(1), seg.sorted_domain).squeeze(1)

    @torch.no_grad()
    def fold(self, backbone_domain: Tensor | None = None) -> FoldedLoRAStarLinear:
        """An inference-only copy with each domain's ``W ⊙ W_p + A_d B_d`` and bias precomputed.

        ``backbone_domain``: ``[D]``, the star layer's domain each adapter domain is computed with (the
        model's :attr:`~polyrec.models.adapters.MLoRAModel.backbone_domain`; default the identity).
        """
        return FoldedLoRAStarLinear(self, backbone_domain)

    def unwrap(self) -> StarLinear:
        """A plain :class:`StarLinear` sharing this layer's star parameters (the adapters dropped)."""
        star = StarLinear.__new__(StarLinear)
        nn.Module.__init__(star)
        star.in_dim, star.out_dim, star.num_domains = self.in_dim, self.out_dim, self.num_domains
        star.weight, star.bias = self.weight, self.bias
        star.domain_weight, star.domain_bias = self.domain_weight, self.domain_bias
        return star


# ----------------------------------------------------------------------------------------------- folded layers


def _bank_rows(bank: LoRABank, name: str) -> Tensor | None:
    """Every domain's rows of bank ``name`` (staged rows after the others), or None for an absent bias."""
    full, new = getattr(bank, name), getattr(bank, f"{name}_new")
    if full is None:
        return None
    return full.detach() if new is None else torch.cat([full.detach(), new.detach()])


class FoldedLoRALinear(nn.Module):
    """A :class:`LoRALinear` for inference: each domain's ``W_d = W + (A_d B_d)ᵀ`` and ``b_d' = b + b_d`` stored.

    Buffers ``weight [D, D_out, D_in]`` and ``bias [D, D_out]``; the shared ``W, b`` are kept (shared with
    the layer folded from) for a state with adapters disabled. The rows of a batch of one domain take one
    ``F.linear`` with their domain's merged weight; a mixed batch takes one per present domain. Equal to
    the layer it was folded from to float rounding (the order of the sums differs). A snapshot: fold again
    after further training.

    Shape:
        ``[B, ..., D_in]`` -> ``[B, ..., D_out]``, batch dimension first.
    """

    def __init__(self, layer: LoRALinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.shared_weight, self.shared_bias = layer.weight, layer.bias
        self.state = layer.state
        bank = layer.lora
        with torch.no_grad():
            a, b, db = _bank_rows(bank, "A"), _bank_rows(bank, "B"), _bank_rows(bank, "bias")
            weight = layer.weight.detach().unsqueeze(0) + torch.bmm(a, b).transpose(1, 2)
            bias = a.new_zeros(a.shape[0], self.out_features)
            if layer.bias is not None:
                bias = bias + layer.bias.detach()
            if db is not None:
                bias = bias + db
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.state.enabled:
            return F.linear(x, self.shared_weight, self.shared_bias)
        routing = self.state.require_routing("FoldedLoRALinear")
        seg = routing.segments
        w, b = self.weight.index_select(0, seg.domains), self.bias.index_select(0, seg.domains)
        if seg.num_segments == 1:
            return F.linear(x, w[0], b[0])
        shape = x.shape
        x3 = seg.sort(x.reshape(shape[0], -1, shape[-1]))
        parts = torch.split(x3, seg.counts)
        h = torch.cat([F.linear(p, w[i], b[i]) for i, p in enumerate(parts)], dim=0)
        return seg.unsort(h).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, domains={self.weight.shape[0]}"


class FoldedLoRAStarLinear(nn.Module):
    """A :class:`LoRAStarLinear` for inference: each domain's ``W ⊙ W_p + A_d B_d`` and ``b + b_p + b_d`` stored.

    Adapter domain d is computed with the star layer's domain ``p = backbone_domain[d]`` (the identity but
    for domains added after training, :func:`polyrec.models.adapters.add_domain`). Buffers ``weight [D,
    D_in, D_out]``, ``bias [D, D_out]``. Its input is sorted by the backbone's domains, as the layer's; with
    added domains in a batch of several domains, rows sorted by the backbone's domain are not grouped by
    adapter domain, and the layer refuses the batch (serve it one domain per call). Equal to the layer it
    was folded from to float rounding. A snapshot: fold again after further training.

    Shape:
        forward(x ``[B, D_in]`` sorted by domain, seg) -> ``[B, D_out]``.
    """

    def __init__(self, layer: LoRAStarLinear, backbone_domain: Tensor | None = None) -> None:
        super().__init__()
        self.in_dim, self.out_dim = layer.in_dim, layer.out_dim
        self.state = layer.state
        self.star = layer.unwrap()  # the star part alone, for a state with adapters disabled
        bank = layer.lora
        with torch.no_grad():
            a, b, db = _bank_rows(bank, "A"), _bank_rows(bank, "B"), _bank_rows(bank, "bias")
            if backbone_domain is None:
                backbone_domain = torch.arange(a.shape[0], device=a.device)
            w_star, b_star = layer.combined(backbone_domain.to(a.device))
            weight = w_star.detach() + torch.bmm(a, b)
            bias = b_star.detach() + (db if db is not None else 0.0)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor, seg: DomainSegments) -> Tensor:
        if not self.state.enabled:
            return self.star(x, seg)
        routing = self.state.require_routing("FoldedLoRAStarLinear")
        domains = seg.domains
        if routing.remapped:
            adapter = routing.segments
            if adapter.num_segments != 1 or seg.num_segments != 1:
                raise ValueError(
                    "a folded STAR + MLoRA layer with added domains serves one domain per call; the batch "
                    f"holds {adapter.num_segments} domains: split it by domain "
                    "(polyrec.serving.inference.predict_mixed)"
                )
            domains = adapter.domains
        return segment_linear(x, seg, self.weight.index_select(0, domains), self.bias.index_select(0, domains))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, domains={self.weight.shape[0]}"
