"""Synthetic multi-domain click logs with a known generative model.

Useful for tests (every property is controllable and the data is tiny) and
for scaling benchmarks (a million rows take well under two seconds).

Generative model, per row ``n`` in domain ``d`` with user ``u`` and item ``i``::

    logit = shared_strength   * <U[u], V[i]>
          + specific_strength * <U[u], M[d] @ V[i]>
          + <w_dense, x_n> + tag_effect[i] + bias[d]
    label ~ Bernoulli(sigmoid(logit))

``U`` and ``V`` are latent vectors scattered around the centre of the user's
group / item's category, so ``user_group`` and ``item_cat`` carry signal.
``M[d]`` is a random matrix per domain, which makes part of the preference
domain-specific. ``bias[d]`` is calibrated so that the expected positive rate
of domain ``d`` equals ``ctr[d]``. Users and items are drawn with a
long-tailed popularity.

Example:
    >>> from polyrec.data.sources import make_synthetic
    >>> df = make_synthetic(n_domains=2, n_samples=[1000, 500], ctr=[0.1, 0.3], seed=7)
    >>> df.groupby("domain").size().tolist()
    [1000, 500]
"""

from __future__ import annotations

import numbers
from typing import Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["make_synthetic"]

_LATENT_DIM = 8
_MAX_USER_GROUPS = 8
_MAX_ITEM_CATS = 16
_TAG_VOCAB = 32
_CALIBRATION_ROWS = 1 << 16


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a size is almost surely a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_count(field: str, value: object, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"make_synthetic: {field} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_real(field: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
        raise ValueError(f"make_synthetic: {field} must be a finite number, got {value!r}.")
    return float(value)


def _per_domain(field: str, value: object, n_domains: int) -> list:
    """Broadcast a scalar to every domain, or check a per-domain list's length."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        return [value] * n_domains
    values = list(value)
    if len(values) != n_domains:
        raise ValueError(
            f"make_synthetic: {field} has {len(values)} entries but n_domains={n_domains}; give one value per "
            f"domain or a single value for all."
        )
    return values


def _popularity(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like sampling weights over ``n`` ids in random order."""
    rank = rng.permutation(n)
    weights = (rank + 1.0) ** -exponent
    return weights / weights.sum()


def _calibrate_bias(z: np.ndarray, ctr: float) -> float:
    """Bias ``b`` with ``mean(sigmoid(z + b)) == ctr``, found by bisection.

    The mean is monotone in ``b``, so bisection always converges; starting
    from the quantile ``-q(1 - ctr)`` narrows the bracket to a few units.
    """
    z = z[:_CALIBRATION_ROWS]
    start = -float(np.quantile(z, 1.0 - ctr))
    lo, hi = start - 20.0, start + 20.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _three_distinct(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Draw 3 distinct token ids in ``[0, vocab)`` for each of ``n`` rows."""
    t0 = rng.integers(0, vocab, n)
    t1 = (t0 + 1 + rng.integers(0, vocab - 1, n)) % vocab
    # Uniform over the vocab minus {t0, t1}: draw from vocab-2 slots and step
    # over the taken ids in ascending order.
    lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
    t2 = rng.integers(0, vocab - 2, n)
    t2 = t2 + (t2 >= lo)
    t2 = t2 + (t2 >= hi)
    return np.stack([t0, t1, t2], axis=1)


def make_synthetic(
    n_domains: int = 3,
    n_samples: Union[int, Sequence[int]] = 10_000,
    n_users: int = 500,
    n_items: int = 300,
    ctr: Union[float, Sequence[float]] = 0.2,
    shared_strength: float = 1.0,
    specific_strength: float = 1.0,
    n_dense: int = 2,
    seed: int = 0,
    multi_valued: bool = True,
) -> pd.DataFrame:
    """Generate a synthetic multi-domain click log.

    Args:
        n_domains: Number of domains ``D`` (>= 1).
        n_samples: Rows per domain: one int for all domains or a list of
            ``D`` ints (each >= 1).
        n_users: Number of distinct users (>= 1).
        n_items: Number of distinct items (>= 1).
        ctr: Target positive rate per domain, in (0, 1): one value or a list
            of ``D`` values.
        shared_strength: Weight of the preference shared by all domains.
        specific_strength: Weight of the per-domain preference.
        n_dense: Number of dense features ``dense_0 .. dense_{n-1}`` (>= 0).
        seed: Seed; the same arguments and seed give an identical frame.
        multi_valued: Add the ``tags`` column (1-3 ``|``-joined item tags).
            The labels do not depend on this flag.

    Returns:
        Frame with ``user_id``, ``item_id``, ``domain``, ``user_group``,
        ``item_cat`` (int64), ``tags`` (str, if ``multi_valued``),
        ``dense_*`` (float32) and ``label`` (int64 0/1), rows of all domains
        shuffled together.

    Raises:
        ValueError: for a non-positive size, a ctr outside (0, 1), a
            per-domain list of the wrong length or a non-finite strength.

    Example:
        >>> df = make_synthetic(n_domains=3, n_samples=2000, ctr=0.25, seed=1)
        >>> sorted(df["domain"].unique().tolist())
        [0, 1, 2]
    """
    n_domains = _check_count("n_domains", n_domains, 1)
    sizes = [_check_count(f"n_samples[{d}]", s, 1) for d, s in enumerate(_per_domain("n_samples", n_samples, n_domains))]
    rates = _per_domain("ctr", ctr, n_domains)
    for d, rate in enumerate(rates):
        _check_real(f"ctr[{d}]", rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"make_synthetic: ctr[{d}] must lie strictly between 0 and 1, got {rate!r}.")
    n_users = _check_count("n_users", n_users, 1)
    n_items = _check_count("n_items", n_items, 1)
    n_dense = _check_count("n_dense", n_dense, 0)
    shared_strength = _check_real("shared_strength", shared_strength)
    specific_strength = _check_real("specific_strength", specific_strength)
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"make_synthetic: seed must be a non-negative integer, got {seed!r}.")

    rng = np.random.default_rng(int(seed))
    k = _LATENT_DIM
    # Entries scaled by k**-0.25 so that <u, v> has unit variance.
    scale = k ** -0.25 / np.sqrt(2.0)
    n_groups = min(_MAX_USER_GROUPS, n_users)
    n_cats = min(_MAX_ITEM_CATS, n_items)
    user_group = rng.integers(0, n_groups, n_users)
    item_cat = rng.integers(0, n_cats, n_items)
    U = (rng.standard_normal((n_groups, k))[user_group] + rng.standard_normal((n_users, k))) * scale
    V = (rng.standard_normal((n_cats, k))[item_cat] + rng.standard_normal((n_items, k))) * scale
    M = rng.standard_normal((n_domains, k, k)) / np.sqrt(k)
    w_dense = rng.standard_normal(n_dense) * 0.5
    tag_ids = _three_distinct(rng, n_items, _TAG_VOCAB)
    n_tags = rng.integers(1, 4, n_items)
    w_tag = rng.standard_normal(_TAG_VOCAB) * 0.3
    used = np.arange(3)[None, :] < n_tags[:, None]
    tag_effect = (w_tag[tag_ids] * used).sum(axis=1) / n_tags
    p_user = _popularity(rng, n_users, 0.6)
    p_item = _popularity(rng, n_items, 0.9)

    sizes_arr = np.asarray(sizes, dtype=np.int64)
    n_rows = int(sizes_arr.sum())
    starts = np.concatenate([[0], np.cumsum(sizes_arr)])
    domain = np.repeat(np.arange(n_domains, dtype=np.int64), sizes_arr)
    users = rng.choice(n_users, size=n_rows, p=p_user)
    items = rng.choice(n_items, size=n_rows, p=p_item)
    # Rows are generated grouped by domain and shuffled at the end. Dense
    # features are drawn directly in the final order (they are i.i.d.), and
    # only their 1-D effect is scattered back, which avoids permuting a
    # (rows x n_dense) matrix.
    order = rng.permutation(n_rows)
    dense = rng.standard_normal((n_rows, n_dense), dtype=np.float32)
    dense_effect = np.empty(n_rows)
    # Same-dtype operands keep the product on the BLAS fast path.
    dense_effect[order] = dense @ w_dense.astype(np.float32)

    u_vec = U[users]
    v_vec = V[items]
    logit = shared_strength * np.einsum("nk,nk->n", u_vec, v_vec)
    logit += dense_effect + tag_effect[items]
    for d in range(n_domains):
        # Before the shuffle each domain is one contiguous slice: one matrix
        # product per domain.
        s = slice(starts[d], starts[d + 1])
        logit[s] += specific_strength * np.einsum("nk,nk->n", u_vec[s], v_vec[s] @ M[d].T)
        logit[s] += _calibrate_bias(logit[s], float(rates[d]))
    label = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    users, items = users[order].astype(np.int64), items[order].astype(np.int64)
    columns = {
        "user_id": users,
        "item_id": items,
        "domain": domain[order],
        "user_group": user_group[users].astype(np.int64),
        "item_cat": item_cat[items].astype(np.int64),
    }
    if multi_valued:
        vocab = np.array([f"t{j}" for j in range(_TAG_VOCAB)], dtype=object)
        tags = vocab[tag_ids[:, 0]]
        tags = np.where(n_tags >= 2, tags + "|" + vocab[tag_ids[:, 1]], tags)
        tags = np.where(n_tags >= 3, tags + "|" + vocab[tag_ids[:, 2]], tags)
        columns["tags"] = pd.Series(tags[items]).astype(str)
    for j in range(n_dense):
        columns[f"dense_{j}"] = dense[:, j]
    columns["label"] = label[order]
    return pd.DataFrame(columns)
