"""Full-corpus Recall@N and NDCG@N for multi-domain retrieval, per domain and overall.

Every query (a user in a domain) has exactly one target item, and is ranked against the whole corpus of
its domain by the inner product of the user embedding with every corpus item's embedding: no sampled
candidates, no approximate index. Choices made:

- Ranks are 0-based and pessimistic on ties: a query's rank is the number of corpus items other than the
  target, not excluded, whose score is ``>=`` the target's. A model that scores everything equally is
  therefore ranked last, never first.
- Exclusions are (query, corpus position) pairs removed from a query's ranking: the user's training
  positives, and at test time its validation positives too. Excluding a query's own target is an error.
- With one target per query the ideal DCG is 1, so ``NDCG@N = 1 / log2(rank + 2)`` when ``rank < N`` and
  0 otherwise; ``Recall@N`` is ``1`` when ``rank < N``. Both are means over the queries.
- :class:`RetrievalEvaluator` reports each domain, all queries pooled (``overall``: every query weighs 1)
  and the unweighted mean over the domains (``mean``: every domain weighs 1). A domain without queries is
  reported with 0 queries and NaN metrics, and is left out of the mean.

Public API:

- :data:`RETRIEVAL_CUTOFFS` - the N of Recall@N / NDCG@N reported by default.
- :func:`target_ranks` - ranks from user and corpus embeddings (exact, in chunks of queries).
- :func:`ranks_from_scores` - the same from a precomputed score matrix.
- :func:`recall_ndcg` - Recall@N and NDCG@N of a set of ranks.
- :func:`popularity_scores`, :func:`popularity_ranks` - the popularity baseline.
- :class:`RetrievalEvaluator` accumulates ranks per domain; its result is a :class:`RetrievalMetrics`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RETRIEVAL_CUTOFFS",
    "RetrievalEvaluator",
    "RetrievalMetrics",
    "popularity_ranks",
    "popularity_scores",
    "ranks_from_scores",
    "recall_ndcg",
    "target_ranks",
]

RETRIEVAL_CUTOFFS: tuple[int, ...] = (10, 50, 100, 500)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_index(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}. Convert it with .long().")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}.")
    return x.long()


def _check_target(target: object, q: int, c: int) -> Tensor:
    t = _check_index(target, "target")
    if t.numel() != q:
        raise ValueError(f"target must have one corpus position per query ({q}), got {t.numel()}.")
    bad = (t < 0) | (t >= c)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"target of query {first} is {int(t[first])}, outside the corpus positions 0..{c - 1}; target holds "
            f"positions in the corpus, not item ids."
        )
    return t


def _check_exclude(exclude: object, target: Tensor, q: int, c: int) -> tuple[Tensor, Tensor] | None:
    """Validate ``exclude`` and return it as (query, position) sorted by query, or None when empty."""
    if exclude is None:
        return None
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2:
        raise TypeError(
            f"exclude must be a pair (query_idx, corpus_pos) of index tensors, got {type(exclude).__name__}"
            f"{' of length ' + str(len(exclude)) if isinstance(exclude, (tuple, list)) else ''}."
        )
    qi = _check_index(exclude[0], "exclude[0] (query_idx)")
    ci = _check_index(exclude[1], "exclude[1] (corpus_pos)")
    if qi.numel() != ci.numel():
        raise ValueError(
            f"exclude's query_idx and corpus_pos must have the same length, got {qi.numel()} and {ci.numel()}."
        )
    if qi.numel() == 0:
        return None
    qi = qi.to(target.device)
    ci = ci.to(target.device)
    for x, n, what in ((qi, q, "query_idx"), (ci, c, "corpus_pos")):
        bad = (x < 0) | (x >= n)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"exclude {what}[{first}] = {int(x[first])} is outside 0..{n - 1}.")
    own = ci == target[qi]
    if bool(own.any()):
        first = int(torch.nonzero(own)[0, 0])
        raise ValueError(
            f"exclude removes the target of query {int(qi[first])} (corpus position {int(ci[first])}) from its own "
            f"ranking; a query's target must stay in the corpus. Drop that pair from exclude (is a training "
            f"positive also the evaluation target?)."
        )
    order = torch.argsort(qi, stable=True)
    return qi[order], ci[order]


def _rank_block(
    scores: Tensor, target: Tensor, q0: int, exclude: tuple[Tensor, Tensor] | None, bounds: Tensor | None
) -> Tensor:
    """Pessimistic 0-based ranks of the queries ``q0 .. q0 + len(scores) - 1`` from their score rows."""
    n = scores.shape[0]
    rows = torch.arange(n, device=scores.device)
    if bool(torch.isnan(scores).any()):
        first = int(torch.nonzero(torch.isnan(scores).any(dim=1))[0, 0])
        raise ValueError(f"the scores of query {q0 + first} contain NaN; check the model output.")
    t = target[q0 : q0 + n]
    ahead = scores >= scores[rows, t].unsqueeze(1)
    ahead[rows, t] = False
    if exclude is not None and bounds is not None:
        lo, hi = int(bounds[q0]), int(bounds[q0 + n])
        if hi > lo:
            ahead[exclude[0][lo:hi] - q0, exclude[1][lo:hi]] = False
    return ahead.sum(dim=1)


def _chunked_ranks(
    score_fn: Callable[[int, int], Tensor], q: int, target: Tensor, exclude: tuple[Tensor, Tensor] | None, chunk: int
) -> Tensor:
    """Ranks of all ``q`` queries, ``score_fn(q0, q1)`` giving the score rows of queries ``q0 .. q1-1``."""
    bounds = None
    if exclude is not None:
        # bounds[k]: the first exclusion pair of query >= k (exclude is sorted by query).
        bounds = torch.searchsorted(exclude[0], torch.arange(q + 1, device=exclude[0].device))
    out = [_rank_block(score_fn(q0, min(q0 + chunk, q)), target, q0, exclude, bounds) for q0 in range(0, q, chunk)]
    if not out:
        return torch.zeros(0, dtype=torch.long, device=target.device)
    return torch.cat(out).long()


def _check_chunk(chunk: object) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1 (queries scored at a time), got {chunk!r}.")
    return chunk


# --------------------------------------------------------------------------- #
# ranks
# --------------------------------------------------------------------------- #
def target_ranks(
    user: Tensor,
    corpus: Tensor,
    target: Tensor,
    exclude: tuple[Tensor, Tensor] | None = None,
    *,
    chunk: int = 4096,
) -> Tensor:
    """The rank of each query's target among the corpus, scored by ``user @ corpus.T``.

    The scores are exact (one matrix product per chunk of ``chunk`` queries, so memory is
    ``O(chunk * C)``). The rank is 0-based and pessimistic on ties: the number of corpus items other than
    the target, not excluded for that query, whose score is ``>=`` the target's.

    Args:
        user: query (user) embeddings.
        corpus: embeddings of the corpus items, in corpus-position order.
        target: corpus position (``0 .. C-1``, not the item id) of each query's target.
        exclude: ``(query_idx, corpus_pos)`` pairs removed from the ranking of query ``query_idx`` (its
            training positives, and validation positives at test time); duplicates are harmless. None: no
            exclusions.
        chunk: queries scored per matrix product.

    Shape:
        user ``[Q, E]``; corpus ``[C, E]``; target ``[Q]`` long; exclude two ``[M]`` long tensors; returns
        ``[Q]`` long on the device of ``user``.

    Raises:
        ValueError: a target outside the corpus, an exclusion of a query's own target, out-of-range
            exclusions, NaN scores, or mismatched shapes.

    Example:
        >>> user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> corpus = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
        >>> target_ranks(user, corpus, torch.tensor([1, 2]))
        tensor([1, 0])
    """
    for x, name in ((user, "user"), (corpus, "corpus")):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
            got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 2-D floating-point tensor of embeddings, got {got}.")
    q, e = user.shape
    c = corpus.shape[0]
    if corpus.shape[1] != e:
        raise ValueError(f"corpus must have the embedding size of user ({e}), got shape {tuple(corpus.shape)}.")
    if c == 0:
        raise ValueError("corpus is empty; rank against at least one item.")
    chunk = _check_chunk(chunk)
    t = _check_target(target, q, c).to(user.device)
    ex = _check_exclude(exclude, t, q, c)
    corpus_t = corpus.to(user.device, user.dtype).T
    return _chunked_ranks(lambda q0, q1: user[q0:q1] @ corpus_t, q, t, ex, chunk)


def ranks_from_scores(
    scores: Tensor, target: Tensor, exclude: tuple[Tensor, Tensor] | None = None, *, chunk: int = 4096
) -> Tensor:
    """:func:`target_ranks` from a precomputed score matrix (row ``q``: query ``q``'s score of each item).

    Args:
        scores: score of every corpus item for every query (an expanded view is fine).
        target, exclude: as in :func:`target_ranks`.
        chunk: queries ranked at a time (bounds the temporary boolean matrix).

    Shape:
        scores ``[Q, C]``; target ``[Q]``; returns ``[Q]`` long.

    Example:
        >>> ranks_from_scores(torch.tensor([[3.0, 1.0, 3.0]]), torch.tensor([0]))  # a tie counts as ahead
        tensor([1])
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.dtype == torch.bool or scores.is_complex():
        got = (
            f"shape {tuple(scores.shape)}, dtype {scores.dtype}"
            if isinstance(scores, Tensor)
            else type(scores).__name__
        )
        raise ValueError(f"scores must be a 2-D real-valued tensor [Q, C], got {got}.")
    q, c = scores.shape
    if c == 0:
        raise ValueError("scores has no columns (empty corpus); rank against at least one item.")
    chunk = _check_chunk(chunk)
    t = _check_target(target, q, c).to(scores.device)
    ex = _check_exclude(exclude, t, q, c)
    return _chunked_ranks(lambda q0, q1: scores[q0:q1], q, t, ex, chunk)


# --------------------------------------------------------------------------- #
# popularity baseline
# --------------------------------------------------------------------------- #
def popularity_scores(counts: Tensor) -> Tensor:
    """The popularity baseline's score of each corpus item: its training frequency in the domain.

    Args:
        counts: how often each corpus item is a training positive in the domain.

    Shape:
        counts ``[C]``; returns ``[C]`` float64 (exact for any count below 2**53).
    """
    if not isinstance(counts, Tensor) or counts.dim() != 1 or counts.dtype == torch.bool or counts.is_complex():
        got = (
            f"shape {tuple(counts.shape)}, dtype {counts.dtype}"
            if isinstance(counts, Tensor)
            else type(counts).__name__
        )
        raise ValueError(f"counts must be a 1-D real-valued tensor (one count per corpus item), got {got}.")
    s = counts.double()
    bad = ~torch.isfinite(s) | (s < 0)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"counts must be finite and non-negative, but position {first} holds {s[first].item()}.")
    return s


def popularity_ranks(counts: Tensor, target: Tensor, exclude: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Ranks of the popularity baseline: every query of a domain scored by the domain's item counts.

    Equal to ``ranks_from_scores(popularity_scores(counts).expand(Q, C), target, exclude)`` but without any
    ``Q x C`` matrix: since all queries share one score vector, the items at or above the target's score
    are counted once from the sorted scores, and each query's exclusions (deduplicated) are subtracted.
    Time ``O(C log C + Q log C + M log M)``.

    Args:
        counts: training frequency of each corpus item in the domain.
        target, exclude: as in :func:`target_ranks`.

    Shape:
        counts ``[C]``; target ``[Q]``; returns ``[Q]`` long.

    Example:
        >>> popularity_ranks(torch.tensor([5, 2, 2, 9]), torch.tensor([1, 3]))  # items 0, 3 score higher, 2 ties
        tensor([3, 0])
    """
    s = popularity_scores(counts)
    c = s.numel()
    if c == 0:
        raise ValueError("counts is empty (empty corpus); rank against at least one item.")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    q = target.numel() if target.dim() == 1 else -1
    t = _check_target(target, q, c).to(s.device)
    ex = _check_exclude(exclude, t, q, c)
    st = s[t]
    # Items with score >= the target's, the target itself included.
    ranks = c - torch.searchsorted(torch.sort(s).values, st, side="left") - 1
    if ex is not None:
        key = torch.unique(ex[0] * c + ex[1])
        qi, ci = key // c, key % c
        ahead = (s[ci] >= st[qi]).long()
        ranks = ranks - torch.zeros(q, dtype=torch.long, device=s.device).scatter_add_(0, qi, ahead)
    return ranks.long()


# --------------------------------------------------------------------------- #
# Recall@N, NDCG@N
# --------------------------------------------------------------------------- #
def _check_cutoffs(cutoffs: object) -> tuple[int, ...]:
    if not isinstance(cutoffs, Sequence) or isinstance(cutoffs, str) or len(cutoffs) == 0:
        raise ValueError(f"cutoffs must be a non-empty sequence of integers >= 1, got {cutoffs!r}.")
    out = []
    for n in cutoffs:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"cutoffs must be integers >= 1, got {n!r} in {tuple(cutoffs)}.")
        out.append(int(n))
    if len(set(out)) != len(out):
        raise ValueError(f"cutoffs must not repeat, got {tuple(out)}.")
    return tuple(sorted(out))


def _metric_names(cutoffs: tuple[int, ...]) -> list[str]:
    return [f"recall@{n}" for n in cutoffs] + [f"ndcg@{n}" for n in cutoffs]


def recall_ndcg(ranks: Tensor, cutoffs: Sequence[int] = RETRIEVAL_CUTOFFS) -> dict[str, float]:
    """Recall@N and NDCG@N of queries with one target each, from the targets' 0-based ranks.

    ``recall@N`` is the share of queries with ``rank < N``; ``ndcg@N`` the mean of ``1 / log2(rank + 2)``
    over the queries, counting 0 for ``rank >= N`` (the ideal DCG of a single target is 1).

    Args:
        ranks: 0-based rank of each query's target (:func:`target_ranks`).
        cutoffs: the values of N (integers >= 1, no repeats); reported in ascending order.

    Shape:
        ranks ``[Q]`` long.

    Returns:
        ``{"recall@N": ..., ...}`` for every cutoff, then ``{"ndcg@N": ...}``, as Python floats.

    Raises:
        ValueError: empty or negative ranks, or bad cutoffs.

    Example:
        >>> m = recall_ndcg(torch.tensor([0, 1, 20]), cutoffs=(10,))
        >>> m["recall@10"], round(m["ndcg@10"], 4)  # (1 + 1/log2(3)) / 3
        (0.6666666666666666, 0.5436)
    """
    r = _check_index(ranks, "ranks")
    cuts = _check_cutoffs(cutoffs)
    if r.numel() == 0:
        raise ValueError("ranks is empty; Recall@N and NDCG@N need at least one query.")
    if bool((r < 0).any()):
        first = int(torch.nonzero(r < 0)[0, 0])
        raise ValueError(f"ranks must be >= 0 (0-based), but position {first} holds {int(r[first])}.")
    r = r.cpu()
    gain = 1.0 / torch.log2(r.double() + 2.0)
    out: dict[str, float] = {}
    for n in cuts:
        out[f"recall@{n}"] = float((r < n).double().mean())
    for n in cuts:
        out[f"ndcg@{n}"] = float(torch.where(r < n, gain, torch.zeros_like(gain)).mean())
    return out


# --------------------------------------------------------------------------- #
# per-domain results
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall@N / NDCG@N of a retrieval model per domain, pooled and averaged over domains.

    Attributes:
        per_domain: domain name -> metric name (``"recall@50"``, ``"ndcg@10"``, ...) -> value; NaN for a
            domain without queries.
        overall: every query pooled (each query weighs 1).
        mean: unweighted mean over the domains that have queries (each domain weighs 1).
        queries: domain name -> number of queries.
        cutoffs: the values of N, ascending.

    :meth:`to_dict` is the JSON form (NaN stays a float, written as JSON's ``NaN``), :meth:`from_dict`
    reads it back, :meth:`value` looks one number up by a flat name.

    Example:
        >>> ev = RetrievalEvaluator(["a", "b"], cutoffs=(1,))
        >>> ev.update(0, torch.tensor([0, 3]))
        >>> ev.update(1, torch.tensor([0]))
        >>> m = ev.compute()
        >>> m.value("recall@1/a"), m.value("recall@1_mean"), round(m.value("recall@1_overall"), 4)
        (0.5, 0.75, 0.6667)
    """

    per_domain: dict[str, dict[str, float]]
    overall: dict[str, float]
    mean: dict[str, float]
    queries: dict[str, int]
    cutoffs: tuple[int, ...]

    @property
    def metric_names(self) -> list[str]:
        """``recall@N`` for every cutoff, then ``ndcg@N``."""
        return _metric_names(self.cutoffs)

    def names(self) -> list[str]:
        """Every name :meth:`value` accepts."""
        out = []
        for m in self.metric_names:
            out += [f"{m}_mean", f"{m}_overall"] + [f"{m}/{d}" for d in self.per_domain]
        return out

    def value(self, name: str) -> float:
        """One number by name: ``"recall@50_mean"``, ``"recall@50_overall"`` or ``"recall@50/<domain>"``."""
        if isinstance(name, str):
            if "/" in name:
                metric, domain = name.split("/", 1)
                if metric in self.metric_names and domain in self.per_domain:
                    return self.per_domain[domain][metric]
            else:
                for suffix, table in (("_mean", self.mean), ("_overall", self.overall)):
                    if name.endswith(suffix) and name[: -len(suffix)] in table:
                        return table[name[: -len(suffix)]]
        raise KeyError(f"{name!r} is not a retrieval metric of this result; valid names: {', '.join(self.names())}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: plain dicts, lists, ints and floats."""
        return {
            "cutoffs": list(self.cutoffs),
            "queries": dict(self.queries),
            "overall": dict(self.overall),
            "mean": dict(self.mean),
            "per_domain": {d: dict(v) for d, v in self.per_domain.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrievalMetrics:
        """Read :meth:`to_dict` output back (checked: every table holds exactly the metrics of the cutoffs)."""
        keys = {"cutoffs", "queries", "overall", "mean", "per_domain"}
        if not isinstance(d, Mapping) or set(d) != keys:
            got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"not a retrieval metrics dict: expected keys {sorted(keys)}, got {got}.")
        cutoffs = _check_cutoffs(list(d["cutoffs"]))
        names = set(_metric_names(cutoffs))

        def table(x: Any, where: str) -> dict[str, float]:
            if not isinstance(x, Mapping) or set(x) != names:
                raise ValueError(
                    f"{where} must hold exactly the metrics {sorted(names)} of cutoffs {cutoffs}, got "
                    f"{sorted(x) if isinstance(x, Mapping) else x!r}."
                )
            return {k: float(x[k]) for k in _metric_names(cutoffs)}

        per_domain = {str(k): table(v, f"per_domain[{k!r}]") for k, v in d["per_domain"].items()}
        queries = {str(k): int(v) for k, v in d["queries"].items()}
        if set(queries) != set(per_domain):
            raise ValueError(
                f"queries and per_domain must name the same domains, got {sorted(queries)} and {sorted(per_domain)}."
            )
        return cls(
            per_domain=per_domain,
            overall=table(d["overall"], "overall"),
            mean=table(d["mean"], "mean"),
            queries={k: queries[k] for k in per_domain},
            cutoffs=cutoffs,
        )


class RetrievalEvaluator:
    """Accumulate the target ranks of each domain's queries and report :class:`RetrievalMetrics`.

    Args:
        domain_names: one name per domain; index ``d`` in :meth:`update` refers to ``domain_names[d]``.
        cutoffs: the values of N of Recall@N / NDCG@N.

    Example:
        >>> ev = RetrievalEvaluator(["a", "b"], cutoffs=(10,))
        >>> ev.update(0, torch.tensor([0, 50]))
        >>> m = ev.compute()
        >>> m.queries, m.per_domain["a"]["recall@10"], m.mean["recall@10"]  # "b" has no queries: not in mean
        ({'a': 2, 'b': 0}, 0.5, 0.5)
    """

    def __init__(self, domain_names: Sequence[str], cutoffs: Sequence[int] = RETRIEVAL_CUTOFFS) -> None:
        names = list(domain_names)
        if not names:
            raise ValueError("domain_names is empty; pass one name per domain, e.g. ['search', 'feed'].")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain_names must be unique, but {dupes} appear more than once: {names}.")
        self.domain_names: list[str] = names
        self.cutoffs = _check_cutoffs(cutoffs)
        self.reset()

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def reset(self) -> None:
        """Forget every rank seen so far."""
        self._ranks: list[list[Tensor]] = [[] for _ in self.domain_names]

    def update(self, domain: int, ranks: Tensor) -> None:
        """Add the target ranks of some queries of one domain.

        Args:
            domain: the domain index, ``0 .. len(domain_names) - 1``.
            ranks: 0-based ranks (:func:`target_ranks`); may be empty.

        Shape:
            ranks ``[Q]`` long.
        """
        try:
            d = operator.index(domain)
        except TypeError:
            raise TypeError(f"domain must be an integer domain index, got {type(domain).__name__}.") from None
        if isinstance(domain, bool) or not 0 <= d < self.num_domains:
            raise ValueError(
                f"domain index {domain!r} is out of range; valid indices are 0..{self.num_domains - 1} for "
                f"domain_names {self.domain_names}."
            )
        r = _check_index(ranks, "ranks")
        if bool((r < 0).any()):
            first = int(torch.nonzero(r < 0)[0, 0])
            raise ValueError(f"ranks must be >= 0 (0-based), but position {first} holds {int(r[first])}.")
        if r.numel():
            self._ranks[d].append(r.detach().cpu())

    def compute(self) -> RetrievalMetrics:
        """Per-domain, pooled and domain-averaged metrics of everything added so far."""
        names = _metric_names(self.cutoffs)
        nan = dict.fromkeys(names, math.nan)
        per_domain: dict[str, dict[str, float]] = {}
        queries: dict[str, int] = {}
        for name, parts in zip(self.domain_names, self._ranks):
            queries[name] = sum(int(p.numel()) for p in parts)
            per_domain[name] = recall_ndcg(torch.cat(parts), self.cutoffs) if parts else dict(nan)
        every = [p for parts in self._ranks for p in parts]
        overall = recall_ndcg(torch.cat(every), self.cutoffs) if every else dict(nan)
        present = [per_domain[n] for n in self.domain_names if queries[n] > 0]
        mean = {k: sum(m[k] for m in present) / len(present) for k in names} if present else dict(nan)
        return RetrievalMetrics(
            per_domain=per_domain, overall=overall, mean=mean, queries=queries, cutoffs=self.cutoffs
        )

    def __repr__(self) -> str:
        n = sum(int(p.numel()) for parts in self._ranks for p in parts)
        return f"RetrievalEvaluator(domains={self.domain_names}, queries={n})"
