"""Domain routing: sorting a batch by domain and applying per-domain parameters without running absent domains.

Per-domain parameters are stacked tensors ``[D, ...]``. Large ones (STAR's per-domain weight matrices, the
per-domain towers and experts of :mod:`polyrec.layers.bank`) are applied by sorting the batch by domain
once (:class:`DomainSegments`) and running one matmul per domain present (:func:`segment_linear`, or
:func:`segment_einsum` for experts and generated weights); small ones (biases, norm scales) are gathered
per row. Either way the cost of a step depends on the domains present in the batch, never on the total
number of domains D, and a domain's parameters receive gradient only from its own rows.

Serving and export (:mod:`polyrec.serving.inference`): building segments needs data-dependent operations
(``unique_consecutive``, the number of domains present, ``tolist``), which an exported graph cannot hold.
Within :func:`assume_single_domain` the caller guarantees that every row of a batch has the first row's
domain, and :meth:`DomainSegments.from_domain` builds the one segment without looking at the data
(:meth:`DomainSegments.single`: the first row's domain, all rows, no reordering). Outside that block
nothing changes: the normal path is the same code as before, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .mlp import MLP

#: True within :func:`assume_single_domain` (a context variable: each thread and task has its own value).
_SINGLE_DOMAIN: ContextVar[bool] = ContextVar("polyrec_single_domain", default=False)


@contextmanager
def assume_single_domain() -> Iterator[None]:
    """Within the block, every batch is taken to hold one domain, the first row's.

    :meth:`DomainSegments.from_domain` then returns :meth:`DomainSegments.single`, which uses no
    data-dependent operation, so the models' forward passes can be traced by ``torch.export`` with a
    dynamic batch size. The caller keeps the promise: a row of another domain would be computed with the
    first row's per-domain parameters (:class:`polyrec.serving.inference.InferenceModule` marks such rows
    NaN and :func:`polyrec.serving.inference.predict_mixed` splits a mixed batch by domain first).
    """
    token = _SINGLE_DOMAIN.set(True)
    try:
        yield
    finally:
        _SINGLE_DOMAIN.reset(token)


def single_domain_assumed() -> bool:
    """Whether the calling code runs within :func:`assume_single_domain`."""
    return _SINGLE_DOMAIN.get()


@dataclass
class DomainSegments:
    """A batch's rows grouped by domain.

    Args:
        perm: permutation that sorts rows by domain (``None`` when one domain is present: no reordering).
        inverse: inverse of ``perm``.
        domains: the S domains present, ascending.
        counts: rows of each present domain (Python ints, used to split tensors).
        local: segment index (0..S-1) of every sorted row.

    Shape:
        perm, inverse, local ``[B]``; domains ``[S]``.
    """

    perm: Tensor | None
    inverse: Tensor | None
    domains: Tensor
    counts: list[int]
    local: Tensor
    _bins: _Bins | None = field(default=None, repr=False, compare=False)

    def bins(self) -> _Bins:
        """The segments grouped by size for the many-segment path (built once per batch, shared by layers)."""
        if self._bins is None:
            self._bins = _Bins.of(self.counts, self.domains.device)
        return self._bins

    @classmethod
    def from_domain(cls, domain: Tensor) -> DomainSegments:
        """The segments of a batch whose rows have domains ``domain`` ``[B]`` (within
        :func:`assume_single_domain`: :meth:`single`)."""
        if _SINGLE_DOMAIN.get():
            return cls.single(domain)
        perm = torch.argsort(domain, stable=True)
        d_sorted = domain.index_select(0, perm)
        domains, counts = torch.unique_consecutive(d_sorted, return_counts=True)
        if len(domains) == 1:
            perm = inverse = None
        else:
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(len(perm), device=perm.device)
        local = torch.repeat_interleave(torch.arange(len(domains), device=domain.device), counts)
        return cls(perm, inverse, domains, counts.tolist(), local)

    @classmethod
    def single(cls, domain: Tensor) -> DomainSegments:
        """One segment of every row, with the first row's domain, built without data-dependent operations.

        For a batch the caller knows to hold one domain: no reordering (``perm`` and ``inverse`` None), the
        domain ``domain[:1]``, the count the batch size (a symbolic size while ``torch.export`` traces), every
        row's segment 0. On such a batch it equals :meth:`from_domain`'s result.

        Example:
            >>> seg = DomainSegments.single(torch.tensor([2, 2, 2]))
            >>> seg.domains.tolist(), seg.counts, seg.local.tolist(), seg.perm
            ([2], [3], [0, 0, 0], None)
        """
        return cls(None, None, domain[:1], [domain.shape[0]], torch.zeros_like(domain))

    @property
    def num_segments(self) -> int:
        return len(self.counts)

    @property
    def sorted_domain(self) -> Tensor:
        return self.domains.index_select(0, self.local)

    def sort(self, x: Tensor) -> Tensor:
        return x if self.perm is None else x.index_select(0, self.perm)

    def unsort(self, x: Tensor) -> Tensor:
        return x if self.inverse is None else x.index_select(0, self.inverse)

    def split_rows(self) -> list[Tensor]:
        """Row indices (into the unsorted batch) of each present domain, in :attr:`domains` order."""
        if self.perm is None:
            return [torch.arange(self.counts[0], device=self.domains.device)]
        return list(torch.split(self.perm, self.counts))


@dataclass
class _Bins:
    """Segments grouped by size: bin k holds the segments of ``2^(k-1) <= count < 2^k`` rows.

    Each bin runs as one batched matmul over its segments padded to the bin's longest, so padding is under
    half of any bin's work and there are at most log2(B) + 1 matmuls, however skewed the segment sizes (one
    padded batch of every segment costs S x the largest segment, which a Zipf-distributed batch makes
    hundreds of times the rows it holds).

    Attributes:
        index: per bin, the sorted-batch row of each padded slot ``[n_b, L_b]`` (``B`` on padding: a zero row).
        valid: per bin, the real slots ``[n_b, L_b]``.
        inverse: the row of the concatenated bins' valid slots that holds each sorted row ``[B]``.
        order: the segments in bin order ``[S]`` (a permutation of 0..S-1).
        sizes: the number of segments in each bin.
    """

    index: list[Tensor]
    valid: list[Tensor]
    inverse: Tensor
    order: Tensor
    sizes: list[int]

    @classmethod
    def of(cls, counts: list[int], device: torch.device) -> _Bins:
        starts, total = [], 0
        for c in counts:
            starts.append(total)
            total += c
        by_bin: dict[int, list[int]] = {}
        for s, c in enumerate(counts):
            by_bin.setdefault(c.bit_length(), []).append(s)
        index, valid, rows = [], [], []
        for k in sorted(by_bin):
            members = by_bin[k]
            seg_counts = torch.tensor([counts[s] for s in members], dtype=torch.long, device=device)
            seg_starts = torch.tensor([starts[s] for s in members], dtype=torch.long, device=device)
            pos = torch.arange(int(seg_counts.max()), device=device)
            ok = pos.unsqueeze(0) < seg_counts.unsqueeze(1)
            idx = torch.where(ok, seg_starts.unsqueeze(1) + pos, total)
            index.append(idx)
            valid.append(ok)
            rows.append(idx[ok])
        flat = torch.cat(rows)
        inverse = torch.empty_like(flat)
        inverse[flat] = torch.arange(len(flat), device=device)
        bins = [by_bin[k] for k in sorted(by_bin)]
        order = torch.tensor([s for members in bins for s in members], dtype=torch.long, device=device)
        return cls(index, valid, inverse, order, [len(members) for members in bins])

    def run(self, x: Tensor, per_segment: tuple[Tensor, ...], fn) -> Tensor:
        """``fn(padded [n_b, L_b, ...], *slices) -> [n_b, L_b, ...]`` over every bin, back in row order.

        ``per_segment``: tensors ``[S, ...]`` (one slice per present segment, such as the per-domain weights);
        each bin receives its segments' slices. They are put in bin order by one permutation
        (:class:`_PermuteRows`, whose backward writes every row once, without zero-filling a bank-sized
        gradient per bin) and split into views. Where the slices are computed from the segments' domains
        (gathered bank rows), :meth:`run_bins` builds each bin's own instead, without the permutation.
        """
        slices = [_PermuteRows.apply(t, self.order).split(self.sizes) for t in per_segment]
        return self.run_bins(x, [tuple(s[b] for s in slices) for b in range(len(self.sizes))], fn)

    def segments(self) -> list[Tensor]:
        """The segments (indices into the present domains, ascending) of each bin."""
        return list(self.order.split(self.sizes))

    def run_bins(self, x: Tensor, per_bin: list[tuple[Tensor, ...]], fn) -> Tensor:
        """:meth:`run` with each bin's slices given: ``per_bin[b]`` holds, for the segments of bin ``b``
        (:meth:`segments`), tensors ``[n_b, ...]``."""
        x_ext = torch.cat([x, x.new_zeros(1, *x.shape[1:])])
        parts = [fn(x_ext[idx], *slices)[ok] for idx, ok, slices in zip(self.index, self.valid, per_bin, strict=True)]
        return torch.cat(parts).index_select(0, self.inverse)


class _PermuteRows(torch.autograd.Function):
    """``t.index_select(0, perm)`` for a permutation ``perm`` of ``t``'s rows: the backward writes each row of the
    gradient once (no zero fill, no accumulation)."""

    @staticmethod
    def forward(ctx, t: Tensor, perm: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(perm)
        return t.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (perm,) = ctx.saved_tensors
        out = grad.new_empty(grad.shape)
        out.index_copy_(0, perm, grad)
        return out, None


def segment_linear(x: Tensor, seg: DomainSegments, weight: Tensor, bias: Tensor, loop_max: int = 16) -> Tensor:
    """Apply a different linear map to each domain's rows of a domain-sorted batch.

    Args:
        x: rows sorted by domain.
        seg: the segments of ``x``.
        weight: per present domain weights ``[S, D_in, D_out]``.
        bias: per present domain biases ``[S, D_out]``.
        loop_max: up to this many segments, one matmul per segment; beyond it, one batched matmul per bin of
            segments of similar size (:class:`_Bins`: many small segments are faster as a few ``bmm`` than
            as a Python loop, and binning keeps the padding under half of the work).

    Shape:
        x ``[B, D_in]`` -> ``[B, D_out]``.
    """
    if seg.num_segments == 1:
        return torch.addmm(bias[0], x, weight[0])
    if seg.num_segments <= loop_max:
        parts = torch.split(x, seg.counts)
        return torch.cat([torch.addmm(bias[i], p, weight[i]) for i, p in enumerate(parts)], dim=0)
    return seg.bins().run(x, (weight, bias), lambda padded, w, b: torch.baddbmm(b.unsqueeze(1), padded, w))


def segment_einsum(equation: str, x: Tensor, seg: DomainSegments, weight: Tensor, loop_max: int = 16) -> Tensor:
    """Combine each domain's rows of a domain-sorted batch with that domain's slice of ``weight``.

    ``equation`` is written for one segment: its first operand is the rows (their first index is the row
    index, which must also lead the output), its second one ``weight[s]``; for example ``"ni,io->no"`` (a
    linear map) or ``"nki,kio->nko"`` (K experts). Up to ``loop_max`` segments run one einsum each;
    beyond, the segments run as one batched einsum per bin of similar sizes (:class:`_Bins`). This generalises
    :func:`segment_linear` to experts and generated weights.

    Args:
        equation: einsum equation for a single segment (must not use the letter ``s``).
        x: rows sorted by domain.
        seg: the segments of ``x``.
        weight: one slice per present domain, ``[S, ...]``.
        loop_max: the largest number of segments run as a Python loop.

    Shape:
        x ``[B, ...]``, weight ``[S, ...]`` -> ``[B, ...]`` as the equation says.

    Example:
        >>> seg = DomainSegments.from_domain(torch.tensor([0, 1, 0]))
        >>> segment_einsum("ni,kio->nko", torch.randn(3, 4), seg, torch.randn(2, 5, 4, 2)).shape
        torch.Size([3, 5, 2])
    """
    if "s" in equation:
        raise ValueError(f"segment_einsum: the equation {equation!r} must not use the letter 's'")
    if seg.num_segments == 1:
        return torch.einsum(equation, x, weight[0])
    if seg.num_segments <= loop_max:
        parts = torch.split(x, seg.counts)
        return torch.cat([torch.einsum(equation, p, weight[i]) for i, p in enumerate(parts)], dim=0)
    inputs, out = equation.replace(" ", "").split("->")
    a, b = inputs.split(",")
    batched = f"s{a},s{b}->s{out}"
    return seg.bins().run(x, (weight,), lambda padded, w: torch.einsum(batched, padded, w))


class StarLinear(nn.Module):
    """Star-topology fully-connected layer (STAR, Sheng et al., CIKM 2021, eq. 5-6).

    Domain p uses the weight ``W ⊙ W_p`` and the bias ``b + b_p``: the shared ``W, b`` learn from every
    row, ``W_p, b_p`` only from rows of domain p. ``W_p`` starts at ones and ``b_p`` at zeros, so an
    untrained STAR layer is the shared layer.

    Args:
        in_dim: D_in.
        out_dim: D_out.
        num_domains: D.

    Shape:
        forward(x, seg): x ``[B, D_in]`` sorted by domain -> ``[B, D_out]``.

    Example:
        >>> layer = StarLinear(8, 4, num_domains=3)             # doctest: +SKIP
        >>> seg = DomainSegments.from_domain(domain)             # doctest: +SKIP
        >>> y = seg.unsort(layer(seg.sort(x), seg))              # doctest: +SKIP
    """

    def __init__(self, in_dim: int, out_dim: int, num_domains: int) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.in_dim, self.out_dim, self.num_domains = in_dim, out_dim, num_domains
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.domain_weight = nn.Parameter(torch.ones(num_domains, in_dim, out_dim))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, out_dim))
        mark_domain_bank(self, "domain_weight", "domain_bias")
        nn.init.kaiming_uniform_(self.weight.T, a=math.sqrt(5))  # nn.Linear's default, on [out, in]

    def combined(self, domains: Tensor | None = None, distinct: bool = False) -> tuple[Tensor, Tensor]:
        """Per-domain ``(W ⊙ W_p, b + b_p)`` for ``domains`` (all domains by default): ``[S, D_in, D_out]``, ``[S, D_out]``
        (``distinct``: ``domains`` ascending without repeats, see :func:`gather_rows`)."""
        if domains is None:
            return self.domain_weight * self.weight, self.domain_bias + self.bias
        return (
            gather_rows(self.domain_weight, domains, distinct) * self.weight,
            gather_rows(self.domain_bias, domains, distinct) + self.bias,
        )

    def forward(self, x: Tensor, seg: DomainSegments, loop_max: int = 16) -> Tensor:
        if seg.num_segments <= loop_max:
            w, b = self.combined(seg.domains, distinct=True)
            return segment_linear(x, seg, w, b, loop_max)
        # Many segments: each bin of segments gathers its own domains' rows (ascending within a bin), so no
        # tensor of every present domain's weights is permuted into bin order and split, forward or back.
        bins = seg.bins()
        per_bin = [self.combined(seg.domains.index_select(0, s), distinct=True) for s in bins.segments()]
        return bins.run_bins(x, per_bin, lambda padded, w, b: torch.baddbmm(b.unsqueeze(1), padded, w))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, num_domains={self.num_domains}"


class AuxiliaryDomainNetwork(nn.Module):
    """STAR's auxiliary network (STAR §3.5, eq. 7): a small MLP on the domain indicator.

    The domain indicator gets its own embedding; it is concatenated with optional other features that
    describe the domain and fed to a two-layer MLP whose one-dimensional output is added to the main
    network's logit, so the domain directly shifts the prediction.

    Args:
        num_domains: D.
        embedding_dim: size of the domain indicator embedding.
        hidden_units: hidden sizes of the MLP (the paper: one hidden layer, then the output layer).
        extra_dim: width of the extra domain-feature input (0 for none).
        activation: hidden activation.

    Shape:
        forward(domain ``[B]``, extra ``[B, extra_dim]`` or None) -> ``[B]`` logit contribution.
    """

    def __init__(
        self,
        num_domains: int,
        embedding_dim: int,
        hidden_units: tuple[int, ...] = (32,),
        extra_dim: int = 0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.extra_dim = extra_dim
        self.embedding = nn.Embedding(num_domains, embedding_dim)
        nn.init.normal_(self.embedding.weight, std=1e-2)
        self.mlp = MLP(embedding_dim + extra_dim, hidden_units, activation=activation, output_dim=1)

    def forward(self, domain: Tensor, extra: Tensor | None = None) -> Tensor:
        h = self.embedding(domain)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.mlp(h).squeeze(-1)


# ---------------------------------------------------------------------------------------- domain banks
#: The ids of the banks whose gathers give sparse gradients, within :func:`bank_row_gradients` (a context
#: variable: each thread and task has its own value).
_ROW_GRADIENTS: ContextVar[frozenset[int]] = ContextVar("polyrec_bank_row_gradients", default=frozenset())


@contextmanager
def bank_row_gradients(banks: Iterable[Tensor] = ()) -> Iterator[None]:
    """Within the block, :func:`gather_rows` on one of ``banks`` gives it a sparse gradient.

    Such a bank's gradient is then a sparse COO tensor holding the gathered rows only, instead of a dense
    tensor the size of the whole bank that is zero outside them: back-propagation writes (and the row-wise
    update, :mod:`polyrec.training.rowwise`, reads) the rows of the domains present, whatever the number of
    domains. The trainer passes the model's marked banks (:func:`domain_banks`) with
    ``train.bank_update: rowwise``; a dense optimiser step needs dense gradients, so nothing is sparse
    outside the block, nor for a parameter that is not listed (an unmarked bank stays dense).
    """
    token = _ROW_GRADIENTS.set(frozenset(id(b) for b in banks))
    try:
        yield
    finally:
        _ROW_GRADIENTS.reset(token)


class _GatherRows(torch.autograd.Function):
    """``bank.index_select(0, rows)`` whose backward is a sparse gradient of the gathered rows."""

    @staticmethod
    def forward(ctx, bank: Tensor, rows: Tensor, distinct: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        ctx.bank_shape, ctx.distinct = bank.shape, distinct
        return bank.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        coalesced = True if ctx.distinct else None  # None: torch checks nothing, coalesce() sorts and sums
        sparse = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad, ctx.bank_shape, check_invariants=False, is_coalesced=coalesced
        )
        return sparse, None, None


def gather_rows(bank: Tensor, rows: Tensor, distinct: bool = False) -> Tensor:
    """Rows ``rows`` of a domain bank (``bank.index_select(0, rows)``, the same values).

    ``distinct``: the caller guarantees ``rows`` ascending without repeats (a batch's present domains,
    :attr:`DomainSegments.domains`), so the sparse gradient is built coalesced (no sort, no copy).

    For a bank listed by :func:`bank_row_gradients` that is a leaf needing a gradient (a parameter), the
    gradient reaching ``bank`` is sparse: only the gathered rows (repeated rows are summed when it is
    coalesced). Otherwise this is ``index_select``, dense gradient and all.
    """
    if id(bank) in _ROW_GRADIENTS.get() and bank.is_leaf and bank.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(bank, rows, distinct)
    return bank.index_select(0, rows)


def member_rows(domains: Tensor, per_domain: int, members: int | None = None) -> Tensor:
    """Rows of a bank of ``per_domain`` rows per domain: member ``members`` of each domain (an int), or all
    ``per_domain`` of them in order (``None``: ``[S * per_domain]``, domain-major)."""
    if members is not None:
        return domains * per_domain + members
    return (domains.unsqueeze(1) * per_domain + torch.arange(per_domain, device=domains.device)).reshape(-1)


@dataclass(frozen=True)
class DomainBank:
    """How a parameter's first dimension maps to domains: rows ``(d - first) * per_domain ..`` and the next
    ``per_domain - 1`` belong to domain d (``first``: the domain of row 0, for a bank holding only domains
    ``first..``, such as a LoRA bank's staged rows)."""

    per_domain: int = 1
    first: int = 0

    def rows(self, domains: Tensor, num_rows: int) -> Tensor:
        """The row indices of ``domains`` (distinct domain indices; those outside the bank are dropped)."""
        local = domains.to(torch.long) - self.first
        local = local[(local >= 0) & (local < num_rows // self.per_domain)]
        k = self.per_domain
        if k == 1:
            return local
        return (local.unsqueeze(1) * k + torch.arange(k, device=local.device)).reshape(-1)


def mark_domain_bank(module: nn.Module, *names: str, per_domain: int = 1, first: int = 0) -> nn.Module:
    """Declare parameters ``names`` of ``module`` domain banks: their first dimension is the domain (or D·k
    rows, k = ``per_domain`` per domain) and a row of domain d gets gradient only from rows of domain d.

    The mark is a note on the module, by attribute name (it survives a parameter replaced under the same
    name, copies and state-dict loads); parameters, their values and state-dict keys are unchanged. Without
    ``names``, a :class:`~polyrec.layers.bank.LinearBank` marks its weight and bias, an :class:`~polyrec.layers.bank.MLPBank` every layer's. The
    trainer's ``train.bank_update: rowwise`` updates only the present domains' rows of marked banks (see
    :mod:`polyrec.training.rowwise`). Only banks used routed (each row through its own domain's members)
    qualify: a bank run dense, every member on every row, gives absent members gradient. Returns ``module``.
    """
    if per_domain < 1 or first < 0:
        raise ValueError(f"mark_domain_bank: per_domain must be >= 1 and first >= 0, got {per_domain}, {first}")
    if not names:
        from .bank import LinearBank, MLPBank  # bank.py imports this module

        if isinstance(module, MLPBank):
            for layer, _ in module._layers():
                mark_domain_bank(layer, per_domain=per_domain, first=first)
            return module
        if isinstance(module, LinearBank):
            names = ("weight", "bias")
        else:
            raise ValueError(f"mark_domain_bank: name the parameters of a {type(module).__name__}")
    marks = module.__dict__.setdefault("_domain_banks", {})
    for name in names:
        if not isinstance(getattr(module, name, None), nn.Parameter):
            raise ValueError(f"mark_domain_bank: {type(module).__name__} has no parameter {name!r}")
        marks[name] = DomainBank(per_domain, first)
    return module


def unmark_domain_bank(module: nn.Module, *names: str) -> None:
    """Drop the domain-bank marks of ``names`` (all of them without names)."""
    marks = module.__dict__.get("_domain_banks", {})
    for name in names or tuple(marks):
        marks.pop(name, None)


def domain_banks(model: nn.Module) -> dict[nn.Parameter, DomainBank]:
    """Every marked domain bank of ``model`` (see :func:`mark_domain_bank`), parameter -> :class:`DomainBank`."""
    out: dict[nn.Parameter, DomainBank] = {}
    for module in model.modules():
        for name, bank in module.__dict__.get("_domain_banks", {}).items():
            p = getattr(module, name, None)
            if isinstance(p, nn.Parameter):
                out[p] = bank
    return out
