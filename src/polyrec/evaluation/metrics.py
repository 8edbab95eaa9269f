"""Exact ranking and calibration metrics for (multi-domain) CTR models.

Everything here is plain numpy. Inputs may be numpy arrays, torch tensors (on
any device, with or without grad) or Python sequences; they are flattened to
1-D before use.

Public API:

- :func:`auc` - exact ROC AUC with ties counted 1/2 (equals sklearn).
- :class:`StreamingAUC` - the same number computed over batches, mergeable
  across ranks, without storing every prediction.
- :func:`logloss` - mean binary cross-entropy from logits or probabilities.
- :func:`gauc` - user-weighted AUC (STAR, Sheng et al. 2021, eq. 9).
- :class:`MultiDomainEvaluator` - per-domain AUC / logloss / PCOC, overall AUC,
  mean AUC, WAUC and optionally GAUC, accumulated over batches; its result is a
  :class:`MultiDomainMetrics`, whose field names are the metric names (also
  module constants: ``WAUC``, ``AUC_PER_DOMAIN``, ...).
- :func:`summarize_runs` and :func:`paired_ttest` - statistics across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DomainCount",
    "MultiDomainEvaluator",
    "MultiDomainMetrics",
    "StreamingAUC",
    "auc",
    "gauc",
    "logloss",
    "paired_ttest",
    "summarize_runs",
]

# Probabilities are clipped to [_PROB_EPS, 1 - _PROB_EPS] before taking logs so
# a single confidently wrong prediction gives a large but finite loss.
_PROB_EPS = 1e-7

# A StreamingAUC folds its pending batches into the sorted state only once they
# hold at least this many unique scores (or as many as the state itself).
# Folding on every batch would re-sort the whole state each time, which is
# quadratic in the number of batches.
_MIN_COMPACT = 1 << 16


# --------------------------------------------------------------------------- #
# input helpers
# --------------------------------------------------------------------------- #
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a flat numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        # numpy has no bfloat16; float16 is upcast too so sums do not overflow.
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(
            f"{name} has dtype object; expected a numeric array or tensor. "
            f"Convert it with np.asarray(..., dtype=float) first."
        )
    return arr.reshape(-1)


def _scores_array(x: Any, name: str, allow_inf: bool = True) -> np.ndarray:
    arr = _to_numpy(x, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64, copy=False)
    bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        kind = "NaN" if allow_inf else "non-finite"
        raise ValueError(
            f"{name} contains {int(bad.sum())} {kind} value(s), first at position {idx} "
            f"(value {arr[idx].item()}); expected finite numbers. Check the model output for "
            f"overflow or divergence before evaluating."
        )
    return arr


def _labels_array(x: Any, name: str = "labels") -> np.ndarray:
    """Validate binary labels and return them as a bool array (True = positive)."""
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric or bool, got dtype {arr.dtype}.")
    bad = (arr != 0) & (arr != 1)  # NaN is caught here too
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must contain only 0 and 1, but position {idx} holds {arr[idx].item()!r} "
            f"({int(bad.sum())} bad value(s) in total). Binarise the labels "
            f"(e.g. labels > 0) before evaluating."
        )
    return arr == 1


def _check_same_size(**arrays: np.ndarray) -> int:
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in sizes.items())
        raise ValueError(
            f"inputs must have the same number of elements, but {desc}. Pass one value per example (shape [B])."
        )
    return next(iter(sizes.values()))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows, so both branches are safe for any finite x.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _bce_from_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # -log sigmoid(x) * y - log(1 - sigmoid(x)) * (1 - y) == softplus(x) - x*y,
    # with softplus written so that exp never overflows.
    return np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))


# --------------------------------------------------------------------------- #
# AUC
# --------------------------------------------------------------------------- #
def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-unique-score positive/negative counts sorted by ascending score.

    Each positive beats every negative with a strictly lower score and ties
    with the negatives at its own score (worth 1/2), so
    ``AUC = sum_v pos_v * (neg_below_v + neg_v / 2) / (P * N)``.
    """
    n_pos = int(pos.sum())
    n_neg = int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    if n_pos * n_neg < 2**61:
        # Twice the numerator is an integer; int64 keeps it exact.
        num2 = 2 * int(np.dot(pos, neg_below)) + int(np.dot(pos, neg))
    else:  # would overflow int64: fall back to float64 (relative error ~1e-16)
        p = pos.astype(np.float64)
        num2 = 2.0 * float(np.dot(p, neg_below)) + float(np.dot(p, neg))
    return float(num2) / (2.0 * n_pos * n_neg)


def _compress(scores: np.ndarray, is_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique scores with positive and negative counts per score."""
    uniq, inv = np.unique(scores, return_inverse=True)
    inv = inv.reshape(-1)
    pos = np.bincount(inv[is_pos], minlength=uniq.size).astype(np.int64)
    total = np.bincount(inv, minlength=uniq.size).astype(np.int64)
    return uniq, pos, total - pos


def auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC with ties counted as 1/2 (same value as sklearn's roc_auc_score).

    Args:
        labels: binary labels in {0, 1} (or bool).
        scores: real-valued scores; any monotone transform (logits or
            probabilities) gives the same AUC. NaN is rejected, +-inf is allowed.

    Shape:
        labels, scores: any shape with the same number of elements; flattened.

    Returns:
        The AUC as a float, or ``nan`` when only one class is present.

    Raises:
        ValueError: labels outside {0, 1}, NaN scores, or mismatched sizes.

    Example:
        >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    y = _labels_array(labels)
    s = _scores_array(scores, "scores")
    _check_same_size(labels=y, scores=s)
    if y.size == 0:
        return float("nan")
    _, pos, neg = _compress(s, y)
    return _auc_from_counts(pos, neg)


class StreamingAUC:
    """Exact AUC accumulated over batches without keeping every prediction.

    The state is the sorted set of unique scores seen so far with the number
    of positives and negatives at each score, so memory is O(#unique scores)
    and the result is exactly :func:`auc` on the concatenated stream. Scores
    drawn from a few values (or rounded) make the state tiny; continuous
    float scores make it as large as the stream, which is the price of
    exactness. Batches are compressed with ``np.unique`` on ``update`` and
    folded into the sorted state lazily (amortised O(n log n) overall).

    Example:
        >>> m = StreamingAUC()
        >>> m.update([0, 1], [0.1, 0.35])
        >>> m.update([0, 1], [0.4, 0.8])
        >>> m.compute()
        0.75
        >>> other = StreamingAUC.from_state(m.state_dict())  # e.g. after a gather
        >>> m.merge(other).n_pos
        4
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._scores = np.empty(0, dtype=np.float64)
        self._pos = np.empty(0, dtype=np.int64)
        self._neg = np.empty(0, dtype=np.int64)
        # Compressed batches not yet folded into the sorted state. Arrays are
        # never modified in place, so they can be shared with merged objects.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self._n_pos = 0
        self._n_neg = 0

    @property
    def n_pos(self) -> int:
        """Number of positive examples seen."""
        return self._n_pos

    @property
    def n_neg(self) -> int:
        """Number of negative examples seen."""
        return self._n_neg

    def update(self, labels: Any, scores: Any) -> None:
        """Add a batch.

        Args:
            labels: binary labels in {0, 1} (or bool).
            scores: real-valued scores (NaN rejected).

        Shape:
            labels, scores: ``[B]`` (any shape with B elements is flattened).
        """
        y = _labels_array(labels)
        s = _scores_array(scores, "scores")
        _check_same_size(labels=y, scores=s)
        if y.size == 0:
            return
        self._add_chunk(*_compress(s, y))

    def _add_chunk(self, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        if scores.size == 0:
            return
        self._pending.append((scores, pos, neg))
        self._pending_size += scores.size
        self._n_pos += int(pos.sum())
        self._n_neg += int(neg.sum())
        if self._pending_size >= max(self._scores.size, _MIN_COMPACT):
            self._compact()

    def _compact(self) -> None:
        """Fold pending batches into the sorted unique-score state."""
        if not self._pending:
            return
        chunks = [(self._scores, self._pos, self._neg)] if self._scores.size else []
        chunks += self._pending
        self._pending = []
        self._pending_size = 0
        if len(chunks) == 1:
            # A single compressed chunk is already sorted and unique.
            self._scores, self._pos, self._neg = chunks[0]
            return
        scores = np.concatenate([c[0] for c in chunks])
        uniq, inv = np.unique(scores, return_inverse=True)
        inv = inv.reshape(-1)
        # float64 bincount is exact for counts below 2**53.
        pos = np.bincount(inv, weights=np.concatenate([c[1] for c in chunks]), minlength=uniq.size)
        neg = np.bincount(inv, weights=np.concatenate([c[2] for c in chunks]), minlength=uniq.size)
        self._scores = uniq
        self._pos = pos.astype(np.int64)
        self._neg = neg.astype(np.int64)

    def compute(self) -> float:
        """Return the exact AUC of everything seen, or ``nan`` if one class is missing."""
        self._compact()
        return _auc_from_counts(self._pos, self._neg)

    def merge(self, other: StreamingAUC) -> StreamingAUC:
        """Add another accumulator's data to this one (exact); returns ``self``.

        ``other`` is left unchanged, so the result equals one accumulator fed
        both streams, e.g. when combining per-rank metrics.
        """
        if not isinstance(other, StreamingAUC):
            raise TypeError(
                f"can only merge another StreamingAUC, got {type(other).__name__}. "
                f"Use StreamingAUC.from_state(state) to rebuild one from a state_dict."
            )
        for chunk in [(other._scores, other._pos, other._neg)] + list(other._pending):
            self._add_chunk(*chunk)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return the state as plain numpy arrays (for ``all_gather_object`` / saving).

        Returns:
            ``{"scores": float64 [U], "pos": int64 [U], "neg": int64 [U]}`` with
            ``scores`` sorted and unique.
        """
        self._compact()
        return {"scores": self._scores.copy(), "pos": self._pos.copy(), "neg": self._neg.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StreamingAUC:
        """Rebuild an accumulator from :meth:`state_dict` output."""
        missing = {"scores", "pos", "neg"} - set(state)
        if missing:
            raise KeyError(
                f"state is missing key(s) {sorted(missing)}; expected the dict returned by "
                f"StreamingAUC.state_dict() with keys 'scores', 'pos', 'neg'."
            )
        scores = _scores_array(state["scores"], "state['scores']")
        pos = _to_numpy(state["pos"], "state['pos']").astype(np.int64)
        neg = _to_numpy(state["neg"], "state['neg']").astype(np.int64)
        _check_same_size(scores=scores, pos=pos, neg=neg)
        if (pos < 0).any() or (neg < 0).any():
            raise ValueError("state counts must be non-negative; the state is corrupted.")
        obj = cls()
        if scores.size and (np.diff(scores) <= 0).any():
            # Not sorted/unique (e.g. a hand-built state): re-compress it.
            uniq, inv = np.unique(scores, return_inverse=True)
            inv = inv.reshape(-1)
            pos = np.bincount(inv, weights=pos, minlength=uniq.size).astype(np.int64)
            neg = np.bincount(inv, weights=neg, minlength=uniq.size).astype(np.int64)
            scores = uniq
        obj._scores, obj._pos, obj._neg = scores.copy(), pos.copy(), neg.copy()
        obj._n_pos = int(pos.sum())
        obj._n_neg = int(neg.sum())
        return obj

    def __repr__(self) -> str:
        return f"StreamingAUC(n_pos={self._n_pos}, n_neg={self._n_neg})"


# --------------------------------------------------------------------------- #
# logloss, GAUC
# --------------------------------------------------------------------------- #
def logloss(labels: Any, probs_or_logits: Any, from_logits: bool = True) -> float:
    """Mean binary cross-entropy.

    Args:
        labels: binary labels in {0, 1} (or bool).
        probs_or_logits: logits (default) or probabilities in [0, 1].
        from_logits: if True, use the log-sigmoid form, which is exact for any
            finite logit; if False, probabilities are clipped to [1e-7, 1 - 1e-7].

    Shape:
        labels, probs_or_logits: same number of elements; flattened.

    Returns:
        The mean loss, or ``nan`` for empty input.

    Example:
        >>> round(logloss([1, 0], [0.0, 0.0]), 6)  # two logits of 0 -> log 2
        0.693147
    """
    y = _labels_array(labels)
    x = _scores_array(probs_or_logits, "probs_or_logits", allow_inf=False)
    _check_same_size(labels=y, probs_or_logits=x)
    if y.size == 0:
        return float("nan")
    yf = y.astype(np.float64)
    if from_logits:
        return float(np.mean(_bce_from_logits(x, yf)))
    out = (x < 0) | (x > 1)
    if out.any():
        idx = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"probabilities must lie in [0, 1], but position {idx} holds {x[idx].item()}. "
            f"If these are logits, call logloss(..., from_logits=True)."
        )
    p = np.clip(x, _PROB_EPS, 1.0 - _PROB_EPS)
    return float(-np.mean(yf * np.log(p) + (1.0 - yf) * np.log1p(-p)))


def _per_user_auc(users: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (auc2_numerator, n_pos, n_neg), vectorised with one sort.

    Rows are sorted by (user, score); runs of equal (user, score) are
    collapsed into positive/negative counts, and each run's "negatives below"
    is a cumulative sum restarted at every user boundary.
    """
    # One lexsort on (user, score) gives both the user grouping and the
    # within-user score order; users never need to be re-coded separately.
    order = np.lexsort((s, users))
    us, ss, yy = users[order], s[order], y[order]
    c = np.empty(us.size, dtype=np.int64)  # compact user code, 0..n_users-1
    c[0] = 0
    np.cumsum(us[1:] != us[:-1], out=c[1:])
    n_users = int(c[-1]) + 1
    new_run = np.empty(c.size, dtype=bool)
    new_run[0] = True
    new_run[1:] = (c[1:] != c[:-1]) | (ss[1:] != ss[:-1])
    run_id = np.cumsum(new_run) - 1
    n_runs = int(run_id[-1]) + 1
    run_pos = np.bincount(run_id[yy], minlength=n_runs).astype(np.float64)
    run_neg = np.bincount(run_id, minlength=n_runs) - run_pos
    run_user = c[new_run]

    cum_neg = np.cumsum(run_neg) - run_neg  # negatives in all earlier runs
    user_first_run = np.flatnonzero(np.r_[True, run_user[1:] != run_user[:-1]])
    # Subtract the negatives belonging to earlier users.
    offset = np.repeat(cum_neg[user_first_run], np.diff(np.r_[user_first_run, n_runs]))
    neg_below = cum_neg - offset

    num2 = np.bincount(run_user, weights=run_pos * (2.0 * neg_below + run_neg), minlength=n_users)
    pos_u = np.bincount(run_user, weights=run_pos, minlength=n_users)
    neg_u = np.bincount(run_user, weights=run_neg, minlength=n_users)
    return num2, pos_u, neg_u


def gauc(users: Any, labels: Any, scores: Any) -> float:
    """User-weighted AUC (STAR, Sheng et al. 2021, eq. 9).

    ``GAUC = sum_u n_u * AUC_u / sum_u n_u`` where ``n_u`` is the number of
    impressions of user ``u``. Users whose rows are all positive or all
    negative have no AUC and are skipped (they count in neither sum).

    Args:
        users: user ids (any sortable dtype: ints or strings).
        labels: binary labels in {0, 1} (or bool).
        scores: real-valued scores (NaN rejected).

    Shape:
        users, labels, scores: ``[N]`` each (flattened).

    Returns:
        GAUC as a float, or ``nan`` if no user has both classes.

    Example:
        >>> # user 1: AUC 0.5 over 3 rows; user 2: AUC 1.0 over 2 rows
        >>> gauc([1, 1, 1, 2, 2], [0, 1, 1, 0, 1], [0.2, 0.9, 0.1, 0.3, 0.4])
        0.7
    """
    u = _to_numpy(users, "users")
    y = _labels_array(labels)
    s = _scores_array(scores, "scores")
    _check_same_size(users=u, labels=y, scores=s)
    if y.size == 0:
        return float("nan")
    num2, pos_u, neg_u = _per_user_auc(u, y, s)
    valid = (pos_u > 0) & (neg_u > 0)
    if not valid.any():
        return float("nan")
    n_u = pos_u[valid] + neg_u[valid]
    auc_u = num2[valid] / (2.0 * pos_u[valid] * neg_u[valid])
    return float(np.sum(n_u * auc_u) / np.sum(n_u))


# --------------------------------------------------------------------------- #
# the multi-domain result
# --------------------------------------------------------------------------- #
# Metric names: the fields of MultiDomainMetrics and the keys of its JSON form (run records, reports,
# train.monitor, a preset's primary_metric). Code outside this module names a metric by these constants.
AUC_PER_DOMAIN = "auc_per_domain"
LOGLOSS_PER_DOMAIN = "logloss_per_domain"
PCOC_PER_DOMAIN = "pcoc_per_domain"
COUNT_PER_DOMAIN = "count_per_domain"
AUC_OVERALL = "auc_overall"
LOGLOSS_OVERALL = "logloss_overall"
AUC_MEAN = "auc_mean"
WAUC = "wauc"
N = "n"
GAUC = "gauc"
GAUC_PER_DOMAIN = "gauc_per_domain"

#: Every key of :meth:`MultiDomainMetrics.to_dict`, in its order (``gauc`` and ``gauc_per_domain`` only when
#: users were given).
METRIC_KEYS = (
    AUC_PER_DOMAIN,
    LOGLOSS_PER_DOMAIN,
    PCOC_PER_DOMAIN,
    COUNT_PER_DOMAIN,
    AUC_OVERALL,
    LOGLOSS_OVERALL,
    AUC_MEAN,
    WAUC,
    N,
    GAUC,
    GAUC_PER_DOMAIN,
)
#: The metrics a run record keeps (``result.json``'s ``metrics`` and ``val_metrics``, benchmark records), in
#: this order: :meth:`MultiDomainMetrics.to_record`.
RECORD_KEYS = (
    WAUC,
    AUC_OVERALL,
    AUC_MEAN,
    LOGLOSS_OVERALL,
    GAUC,
    AUC_PER_DOMAIN,
    LOGLOSS_PER_DOMAIN,
    PCOC_PER_DOMAIN,
    COUNT_PER_DOMAIN,
)
_OPTIONAL = (GAUC, GAUC_PER_DOMAIN)


@dataclass(frozen=True)
class DomainCount:
    """Rows of one domain: ``n`` in all, ``pos`` positive, ``neg`` negative."""

    n: int
    pos: int
    neg: int

    def to_dict(self) -> dict[str, int]:
        return {"n": self.n, "pos": self.pos, "neg": self.neg}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DomainCount:
        if not isinstance(d, Mapping) or set(d) != {"n", "pos", "neg"}:
            raise ValueError(f"a domain count is {{'n': ..., 'pos': ..., 'neg': ...}}, got {d!r}")
        return cls(n=int(d["n"]), pos=int(d["pos"]), neg=int(d["neg"]))


@dataclass(frozen=True)
class MultiDomainMetrics(Mapping):
    """Per-domain and overall metrics of a model on some rows: what :meth:`MultiDomainEvaluator.compute`
    returns.

    Per-domain values are ``{domain name: value}`` in the evaluator's domain order. Undefined values (no
    rows, one class) are ``nan``; ``gauc`` and ``gauc_per_domain`` are None when no user ids were given.
    :meth:`to_dict` is the JSON form (``polyrec evaluate --json``), :meth:`to_record` the subset a run
    record keeps, :meth:`from_dict` reads either back. For code written against the plain dict it used
    to be, the result also reads like that dict (``m["wauc"]``, ``"gauc" in m``, ``dict(m)``).

    Attributes:
        auc_per_domain, logloss_per_domain, pcoc_per_domain: one float per domain (PCOC: mean predicted
            probability / positive rate).
        count_per_domain: a :class:`DomainCount` per domain.
        auc_overall, logloss_overall: over all rows, domains pooled.
        auc_mean: unweighted mean of the finite per-domain AUCs.
        wauc: ``sum n_d AUC_d / sum n_d`` over the domains with a finite AUC.
        gauc, gauc_per_domain: user-weighted AUC (:func:`gauc`), overall and per domain.
        n: (a property) rows in all, the sum of the domain counts.

    Example:
        >>> m = MultiDomainMetrics.from_dict({"wauc": 0.5, "auc_overall": 0.5, "auc_mean": 0.5,
        ...     "logloss_overall": 0.69, "auc_per_domain": {"a": 0.5}, "logloss_per_domain": {"a": 0.69},
        ...     "pcoc_per_domain": {"a": 1.0}, "count_per_domain": {"a": {"n": 4, "pos": 2, "neg": 2}}})
        >>> m.wauc, m.n, m.count_per_domain["a"].pos, m.gauc
        (0.5, 4, 2, None)
        >>> list(m.to_record()) == [k for k in RECORD_KEYS if k != GAUC]
        True
    """

    auc_per_domain: dict[str, float]
    logloss_per_domain: dict[str, float]
    pcoc_per_domain: dict[str, float]
    count_per_domain: dict[str, DomainCount]
    auc_overall: float
    logloss_overall: float
    auc_mean: float
    wauc: float
    gauc: float | None = None
    gauc_per_domain: dict[str, float] | None = None

    @property
    def n(self) -> int:
        return sum(c.n for c in self.count_per_domain.values())

    def _keys(self) -> list[str]:
        return [k for k in METRIC_KEYS if k not in _OPTIONAL or getattr(self, k) is not None]

    def _plain(self, key: str) -> Any:
        value = getattr(self, key)
        if key == COUNT_PER_DOMAIN:
            return {d: c.to_dict() for d, c in value.items()}
        return dict(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: keys in :data:`METRIC_KEYS` order (the optional ones only when set), plain values."""
        return {k: self._plain(k) for k in self._keys()}

    def to_record(self) -> dict[str, Any]:
        """The metrics a run record keeps, in :data:`RECORD_KEYS` order."""
        keys = self._keys()
        return {k: self._plain(k) for k in RECORD_KEYS if k in keys}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiDomainMetrics:
        """Read :meth:`to_dict` or :meth:`to_record` output back (``n``, when present, must equal the sum of
        the domain counts)."""
        unknown = sorted(set(d) - set(METRIC_KEYS))
        missing = [k for k in METRIC_KEYS if k not in d and k not in _OPTIONAL and k != N]
        if unknown or missing:
            raise ValueError(
                f"not a metrics dict: {'unknown keys ' + str(unknown) if unknown else ''}"
                f"{'; ' if unknown and missing else ''}{'missing keys ' + str(missing) if missing else ''}; "
                f"valid keys: {', '.join(METRIC_KEYS)}"
            )
        counts = {name: DomainCount.from_dict(c) for name, c in d[COUNT_PER_DOMAIN].items()}
        out = cls(
            auc_per_domain=dict(d[AUC_PER_DOMAIN]),
            logloss_per_domain=dict(d[LOGLOSS_PER_DOMAIN]),
            pcoc_per_domain=dict(d[PCOC_PER_DOMAIN]),
            count_per_domain=counts,
            auc_overall=d[AUC_OVERALL],
            logloss_overall=d[LOGLOSS_OVERALL],
            auc_mean=d[AUC_MEAN],
            wauc=d[WAUC],
            gauc=d.get(GAUC),
            gauc_per_domain=None if d.get(GAUC_PER_DOMAIN) is None else dict(d[GAUC_PER_DOMAIN]),
        )
        if N in d and d[N] != out.n:
            raise ValueError(f"metrics dict says n={d[N]!r}, but its domain counts sum to {out.n}")
        return out

    # The read-only dict view (Mapping): the keys and values of to_dict().
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(f"{key!r} is not a metric of this result; its metrics: {', '.join(self._keys())}")
        return self._plain(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


# --------------------------------------------------------------------------- #
# multi-domain evaluator
# --------------------------------------------------------------------------- #
class MultiDomainEvaluator:
    """Accumulate per-domain and overall CTR metrics over batches.

    Per domain it keeps an exact :class:`StreamingAUC`, the summed logloss and
    predicted probability (for PCOC) and positive/negative counts. The overall
    AUC is obtained at :meth:`compute` time by merging the per-domain
    accumulators, which is exact and avoids a second copy of the scores.
    When ``users`` are passed, (user, logit, label, domain) rows are kept so
    GAUC can be computed; this is the only part that grows with every row.

    Args:
        domain_names: one name per domain; index ``d`` in ``domains`` refers
            to ``domain_names[d]``.

    Shape:
        update: logits ``[B]`` (float), labels ``[B]`` (0/1), domains ``[B]``
        (integer), users ``[B]`` (optional).

    Example:
        >>> ev = MultiDomainEvaluator(["a", "b"])
        >>> ev.update(torch.tensor([0.3, -1.0, 2.0, 0.1]),
        ...           torch.tensor([1.0, 0.0, 1.0, 0.0]),
        ...           torch.tensor([0, 0, 1, 1]))
        >>> ev.compute().auc_per_domain
        {'a': 1.0, 'b': 1.0}

    For distributed evaluation, gather the evaluators (they pickle cleanly,
    e.g. with ``torch.distributed.all_gather_object``) and fold them into one
    with :meth:`merge`.
    """

    def __init__(self, domain_names: Sequence[str]) -> None:
        names = list(domain_names)
        if not names:
            raise ValueError("domain_names is empty; pass one name per domain, e.g. ['search', 'feed'].")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain_names must be unique, but {dupes} appear more than once: {names}.")
        self.domain_names: list[str] = names
        self.reset()

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def reset(self) -> None:
        """Forget everything seen so far."""
        d = self.num_domains
        self._auc = [StreamingAUC() for _ in range(d)]
        self._loss_sum = np.zeros(d, dtype=np.float64)
        self._prob_sum = np.zeros(d, dtype=np.float64)
        self._pos = np.zeros(d, dtype=np.int64)
        self._neg = np.zeros(d, dtype=np.int64)
        # None until the first non-empty batch decides whether users are tracked.
        self._with_users: bool | None = None
        self._user_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def _set_user_mode(self, with_users: bool) -> None:
        if self._with_users is None:
            self._with_users = with_users
        elif self._with_users != with_users:
            before = "with" if self._with_users else "without"
            now = "with" if with_users else "without"
            raise ValueError(
                f"earlier rows were added {before} users but this batch comes {now} users; "
                f"GAUC needs a user id for every row. Pass users on every update() or on none "
                f"(call reset() to start over)."
            )

    def update(self, logits: Any, labels: Any, domains: Any, users: Any = None) -> None:
        """Add a batch of predictions.

        Args:
            logits: model logits (not probabilities), finite.
            labels: binary labels in {0, 1}.
            domains: integer domain indices in ``[0, len(domain_names))``.
            users: optional user ids; needed for GAUC. Pass them on every call
                or on none.

        Shape:
            all inputs ``[B]`` (flattened if they carry extra unit dimensions).
        """
        x = _scores_array(logits, "logits", allow_inf=False)
        y = _labels_array(labels)
        dom = _to_numpy(domains, "domains")
        arrays = {"logits": x, "labels": y, "domains": dom}
        u = None
        if users is not None:
            u = _to_numpy(users, "users")
            arrays["users"] = u
        n = _check_same_size(**arrays)
        if n == 0:
            return
        if not np.issubdtype(dom.dtype, np.integer):
            raise TypeError(
                f"domains must be an integer array/LongTensor of domain indices, got dtype "
                f"{dom.dtype}. Convert with domains.long()."
            )
        bad = (dom < 0) | (dom >= self.num_domains)
        if bad.any():
            idx = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"domain index {int(dom[idx])} at position {idx} is out of range; valid indices "
                f"are 0..{self.num_domains - 1} for domain_names {self.domain_names}. Check the "
                f"domain vocabulary used when building the dataset."
            )
        self._set_user_mode(u is not None)
        dom = dom.astype(np.int64, copy=False)
        d = self.num_domains

        yf = y.astype(np.float64)
        self._loss_sum += np.bincount(dom, weights=_bce_from_logits(x, yf), minlength=d)
        self._prob_sum += np.bincount(dom, weights=_sigmoid(x), minlength=d)
        counts = np.bincount(dom, minlength=d)
        pos = np.bincount(dom[y], minlength=d)
        self._pos += pos
        self._neg += counts - pos

        # AUC is rank based, so raw logits are used: sigmoid in float can
        # collapse distinct large logits into the same probability (fake ties).
        order = np.argsort(dom, kind="stable")
        bounds = np.r_[0, np.cumsum(counts)]
        for k in np.flatnonzero(counts):
            idx = order[bounds[k] : bounds[k + 1]]
            self._auc[k]._add_chunk(*_compress(x[idx], y[idx]))

        if u is not None:
            self._user_rows.append((u.copy(), x.copy(), y.copy(), dom.copy()))

    def merge(self, other: MultiDomainEvaluator) -> MultiDomainEvaluator:
        """Add another evaluator's data (e.g. from another rank); returns ``self``."""
        if not isinstance(other, MultiDomainEvaluator):
            raise TypeError(f"can only merge another MultiDomainEvaluator, got {type(other).__name__}.")
        if other.domain_names != self.domain_names:
            raise ValueError(
                f"cannot merge evaluators with different domains: {self.domain_names} vs "
                f"{other.domain_names}. Build every rank's evaluator with the same domain_names."
            )
        if other._with_users is not None:
            self._set_user_mode(other._with_users)
        for mine, theirs in zip(self._auc, other._auc):
            mine.merge(theirs)
        self._loss_sum += other._loss_sum
        self._prob_sum += other._prob_sum
        self._pos += other._pos
        self._neg += other._neg
        self._user_rows.extend(other._user_rows)
        return self

    def compute(self) -> MultiDomainMetrics:
        """Return all metrics accumulated so far (see :class:`MultiDomainMetrics`); ``gauc`` and
        ``gauc_per_domain`` are set when users were given."""
        names = self.domain_names
        n_d = self._pos + self._neg
        auc_d = np.array([m.compute() for m in self._auc], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            loss_d = np.where(n_d > 0, self._loss_sum / np.maximum(n_d, 1), np.nan)
            pcoc_d = np.where(self._pos > 0, self._prob_sum / np.maximum(self._pos, 1), np.nan)

        overall = StreamingAUC()
        for m in self._auc:
            overall.merge(m)
        n = int(n_d.sum())

        finite = np.isfinite(auc_d)
        gauc_all, gauc_d = None, None
        if self._with_users:
            u = np.concatenate([r[0] for r in self._user_rows])
            x = np.concatenate([r[1] for r in self._user_rows])
            y = np.concatenate([r[2] for r in self._user_rows])
            dom = np.concatenate([r[3] for r in self._user_rows])
            gauc_all = gauc(u, y, x)
            gauc_d = {
                k: (gauc(u[dom == i], y[dom == i], x[dom == i]) if n_d[i] else float("nan"))
                for i, k in enumerate(names)
            }
        return MultiDomainMetrics(
            auc_per_domain={k: float(v) for k, v in zip(names, auc_d)},
            logloss_per_domain={k: float(v) for k, v in zip(names, loss_d)},
            pcoc_per_domain={k: float(v) for k, v in zip(names, pcoc_d)},
            count_per_domain={
                k: DomainCount(n=int(n_d[i]), pos=int(self._pos[i]), neg=int(self._neg[i])) for i, k in enumerate(names)
            },
            auc_overall=overall.compute(),
            logloss_overall=float(self._loss_sum.sum() / n) if n else float("nan"),
            auc_mean=float(auc_d[finite].mean()) if finite.any() else float("nan"),
            wauc=(float(np.sum(n_d[finite] * auc_d[finite]) / np.sum(n_d[finite])) if finite.any() else float("nan")),
            gauc=gauc_all,
            gauc_per_domain=gauc_d,
        )

    def __repr__(self) -> str:
        return f"MultiDomainEvaluator(domains={self.domain_names}, n={int((self._pos + self._neg).sum())})"


# --------------------------------------------------------------------------- #
# statistics across runs
# --------------------------------------------------------------------------- #
def summarize_runs(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of per-seed results.

    Args:
        values: one number per run. NaN values propagate to the result.

    Returns:
        ``(mean, std)``; std is 0.0 for a single run and both are ``nan`` for
        no runs.

    Example:
        >>> summarize_runs([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    arr = _to_numpy(values, "values").astype(np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, 0.0 if math.isfinite(mean) else float("nan")
    return mean, float(arr.std(ddof=1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise RuntimeError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}.")


def _betainc(a: float, b: float, x: float, one_minus_x: float) -> float:
    """Regularized incomplete beta I_x(a, b); ``one_minus_x`` is passed to avoid cancellation."""
    if x <= 0.0:
        return 0.0
    if one_minus_x <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(one_minus_x)
    # The fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, one_minus_x) / b


def _student_t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    t2 = t * t
    # P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2)
    return _betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired Student t-test p-value (no scipy needed).

    Tests whether the mean of ``a - b`` is zero, e.g. per-seed AUCs of two
    models trained on the same splits. Matches ``scipy.stats.ttest_rel``:
    ``nan`` if all differences are zero, 0.0 if they are identical but non-zero.

    Args:
        a, b: paired measurements, same length >= 2, finite.

    Returns:
        The p-value in [0, 1].

    Example:
        >>> round(paired_ttest([3, 4, 5], [2, 2, 2]), 4)  # t = 2*sqrt(3), df = 2
        0.0742
    """
    x = _scores_array(a, "a", allow_inf=False)
    y = _scores_array(b, "b", allow_inf=False)
    n = _check_same_size(a=x, b=y)
    if n < 2:
        raise ValueError(f"paired_ttest needs at least 2 pairs, got {n}. Run more seeds.")
    d = x - y
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return float("nan") if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return min(1.0, max(0.0, _student_t_two_sided_p(t, n - 1.0)))
