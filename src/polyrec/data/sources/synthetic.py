"""Synthetic multi-domain click logs with a known generative model.

Useful for tests (every property is controllable and the data is tiny), for
scaling benchmarks (a million rows take well under two seconds), and for
checking that domain-aware models use the domain: the options below make
domains agree, conflict, or be exactly alike.

Generative model, per row ``n`` in domain ``d`` with user ``u`` (in group
``g(u)``) and item ``i`` (in category ``c(i)``)::

    logit = shared_strength   * <U[u], V[i]>
          + specific_strength * <U[u], M[d] @ V[i]>
          + cross_strength[d] * C[g(u), c(i)]
          + <w_dense[d], x_n> + tag_effect[i] + bias[d]
    label ~ Bernoulli(sigmoid(logit))

``U`` and ``V`` are latent vectors scattered around the centre of the user's
group / item's category, so ``user_group`` and ``item_cat`` carry signal.
``M[d]`` is a random matrix per domain, which makes part of the preference
domain-specific. ``bias[d]`` is calibrated so that the expected positive rate
of domain ``d`` equals ``ctr[d]``. Users and items are drawn with a
long-tailed popularity, from the same distribution in every domain.

Options that make domains conflict (each off by default; with all of them at
their defaults the frame is bit for bit the one earlier versions produced,
which cache keys, split hashes and committed benchmark numbers rely on):

- ``specific_signs``: ``M[d] = s_d * M[0]``, one interaction whose sign (or
  scale) is set per domain. With ``s_d = +-1`` half the domains like what the
  other half dislikes, so a model that pools domains learns nothing of it.
- ``cross_strength``: a per-domain weight on ``C``, a fixed random
  ``user_group x item_cat`` table with unit-variance cells (0 by default: no
  such term). Opposite signs across domains make the same group/category
  pair attractive in one domain and repellent in another.
- ``dense_weights``: the weights of the dense features, shared (``n_dense``
  values) or per domain (``D x n_dense``): which dense feature matters, and
  in which direction, can differ by domain. Unset: random shared weights.
- ``ctr``: a base rate per domain (calibrated through ``bias[d]``).
- sizes: ``n_samples`` per domain; :func:`zipf_sizes` gives sizes from
  balanced (exponent 0) to long-tailed.
- ``identical_domains``: no domain-specific signal at all, the null case
  where the domain is pure noise: the ``M[d]`` term is dropped, one bias is
  calibrated over all rows (a single ``ctr``), and every per-domain option
  must be the same for all domains. The domain column is then independent of
  the label given the other features.

New randomness (the table ``C``) comes from a stream of its own, derived from
``seed``, so the draws of the default model are never disturbed.

Example:
    >>> from polyrec.data.sources.synthetic import make_synthetic, zipf_sizes
    >>> df = make_synthetic(n_domains=2, n_samples=[1000, 500], ctr=[0.1, 0.3], seed=7)
    >>> df.groupby("domain").size().tolist()
    [1000, 500]
    >>> conflict = make_synthetic(n_domains=2, n_samples=zipf_sizes(3000, 2), specific_signs=[1, -1],
    ...                           cross_strength=[2.0, -2.0], seed=7)
    >>> conflict.groupby("domain").size().tolist()
    [2000, 1000]
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["make_synthetic", "zipf_sizes"]

_LATENT_DIM = 8
_MAX_USER_GROUPS = 8
_MAX_ITEM_CATS = 16
_TAG_VOCAB = 32
_CALIBRATION_ROWS = 1 << 16
# Entropy word that separates the stream of the conflict options from the default model's draws.
_EXTRA_STREAM = 0x636F6E66


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
    if isinstance(value, (str, bytes)) or (not isinstance(value, Sequence) and not isinstance(value, np.ndarray)):
        return [value] * n_domains
    values = list(value)
    if len(values) != n_domains:
        raise ValueError(
            f"make_synthetic: {field} has {len(values)} entries but n_domains={n_domains}; give one value per "
            f"domain or a single value for all."
        )
    return values


def zipf_sizes(total: int, n_domains: int, exponent: float = 1.0, min_size: int = 1) -> list[int]:
    """Per-domain sizes that sum to ``total`` and fall off like ``rank ** -exponent``.

    ``exponent=0`` gives balanced domains; 1 is Zipf's law (domain 0 is twice
    the size of domain 1, three times domain 2, ...); larger values give a
    longer tail. Sizes are rounded with the largest-remainder rule, so they
    sum to ``total`` exactly, and none is below ``min_size``.

    Args:
        total: rows over all domains (>= ``n_domains * min_size``).
        n_domains: number of domains ``D`` (>= 1).
        exponent: tail exponent (>= 0).
        min_size: the smallest size any domain gets (>= 1).

    Returns:
        ``D`` non-increasing ints, largest first.

    Example:
        >>> zipf_sizes(1000, 4)
        [479, 240, 160, 121]
        >>> zipf_sizes(1000, 4, exponent=0)
        [250, 250, 250, 250]
    """
    n_domains = _check_count("n_domains", n_domains, 1)
    min_size = _check_count("min_size", min_size, 1)
    total = _check_count("total", total, n_domains * min_size)
    exponent = _check_real("exponent", exponent)
    if exponent < 0:
        raise ValueError(f"zipf_sizes: exponent must be >= 0 (0: balanced, 1: Zipf), got {exponent!r}.")
    weights = np.arange(1, n_domains + 1, dtype=np.float64) ** -exponent
    # Every domain first gets min_size; the rest is shared in proportion to the weights.
    share = weights / weights.sum() * (total - n_domains * min_size)
    sizes = np.floor(share).astype(np.int64)
    remainder = int(total - n_domains * min_size - sizes.sum())
    # Largest remainders first; ties go to the larger domain, which keeps the sizes non-increasing.
    order = np.lexsort((np.arange(n_domains), -(share - sizes)))
    sizes[order[:remainder]] += 1
    return [int(v) + min_size for v in sizes]


_SIZE_LAW_KEYS = ("total", "exponent", "min_size")


def _size_law(law: Mapping[str, Any], n_domains: int) -> list[int]:
    """``n_samples`` given as ``{"total", "exponent", "min_size"}``: the sizes of :func:`zipf_sizes`."""
    unknown = sorted(set(law) - set(_SIZE_LAW_KEYS))
    if unknown or "total" not in law:
        raise ValueError(
            f"make_synthetic: n_samples as a mapping takes the keys {', '.join(_SIZE_LAW_KEYS)} (total "
            f"required), got {sorted(law)!r}; e.g. {{'total': 100000, 'exponent': 1.1, 'min_size': 10}}."
        )
    try:
        return zipf_sizes(law["total"], n_domains, law.get("exponent", 1.0), law.get("min_size", 1))
    except ValueError as err:
        raise ValueError(f"make_synthetic: n_samples {dict(law)!r}: {err}") from None


def _dense_weights(value: object, n_domains: int, n_dense: int) -> list[list[float]] | None:
    """``dense_weights`` as ``D`` rows of ``n_dense`` finite floats (a shared row repeated), or None."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=object)
    if arr.ndim == 1 and arr.shape[0] == n_dense:
        rows = [list(arr)] * n_domains
    elif arr.ndim == 2 and arr.shape == (n_domains, n_dense):
        rows = [list(r) for r in arr]
    else:
        raise ValueError(
            f"make_synthetic: dense_weights has shape {arr.shape} but n_domains={n_domains}, n_dense={n_dense}; "
            f"give {n_dense} weights for all domains or {n_domains} rows of {n_dense} (one per domain)."
        )
    return [[_check_real(f"dense_weights[{d}][{j}]", v) for j, v in enumerate(row)] for d, row in enumerate(rows)]


def _check_same(field: str, values: list, allowed: str) -> None:
    if any(v != values[0] for v in values):
        raise ValueError(
            f"make_synthetic: {field} is {values!r} but identical_domains=True needs {allowed} for "
            f"every domain; make the values equal, or set identical_domains=False."
        )


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
    n_samples: int | Sequence[int] | Mapping[str, Any] = 10_000,
    n_users: int = 500,
    n_items: int = 300,
    ctr: float | Sequence[float] = 0.2,
    shared_strength: float = 1.0,
    specific_strength: float = 1.0,
    n_dense: int = 2,
    seed: int = 0,
    multi_valued: bool = True,
    specific_signs: Sequence[float] | None = None,
    cross_strength: float | Sequence[float] = 0.0,
    dense_weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
    identical_domains: bool = False,
    with_probability: bool = False,
) -> pd.DataFrame:
    """Generate a synthetic multi-domain click log.

    Args:
        n_domains: Number of domains ``D`` (>= 1).
        n_samples: Rows per domain: one int for all domains, a list of
            ``D`` ints (each >= 1), or a long-tailed law
            ``{"total": N, "exponent": s, "min_size": m}`` that
            :func:`zipf_sizes` turns into ``D`` sizes (``exponent`` 1 and
            ``min_size`` 1 unless given), for presets with thousands of
            domains whose sizes would otherwise be listed one by one.
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
        specific_signs: ``D`` finite multipliers ``s_d``: domain ``d``'s
            specific matrix becomes ``s_d * M[0]`` (``[1, -1, ...]``: the same
            interaction with opposite signs). Unset: an independent random
            matrix per domain.
        cross_strength: Weight of the ``user_group x item_cat`` effect table
            ``C``, one value or ``D`` values (opposite signs make the domains
            conflict). 0 (the default) adds no such term.
        dense_weights: Weights of the dense features: ``n_dense`` values for
            all domains, or ``D`` rows of ``n_dense`` (per-domain importance).
            Unset: random weights shared by all domains.
        identical_domains: Make the domains indistinguishable: no per-domain
            ``M[d]`` term and one bias for all rows; ``ctr`` and every
            per-domain option must then hold the same value for all domains.
        with_probability: Add ``p_true`` (float64), each row's true click
            probability ``sigmoid(logit)``: the Bayes-optimal score, for the
            best AUC any model could reach on these rows.

    Returns:
        Frame with ``user_id``, ``item_id``, ``domain``, ``user_group``,
        ``item_cat`` (int64), ``tags`` (str, if ``multi_valued``),
        ``dense_*`` (float32), ``label`` (int64 0/1) and ``p_true`` (if
        ``with_probability``), rows of all domains shuffled together.

    Raises:
        ValueError: for a non-positive size, a ctr outside (0, 1), a
            per-domain list of the wrong length, a non-finite strength, sign
            or weight, a ``dense_weights`` of the wrong shape, or per-domain
            values that differ under ``identical_domains``.

    Example:
        >>> df = make_synthetic(n_domains=3, n_samples=2000, ctr=0.25, seed=1)
        >>> sorted(df["domain"].unique().tolist())
        [0, 1, 2]
    """
    n_domains = _check_count("n_domains", n_domains, 1)
    if isinstance(n_samples, Mapping):
        n_samples = _size_law(n_samples, n_domains)
    sizes = [
        _check_count(f"n_samples[{d}]", s, 1) for d, s in enumerate(_per_domain("n_samples", n_samples, n_domains))
    ]
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
    signs = None
    if specific_signs is not None:
        if isinstance(specific_signs, numbers.Real) and not isinstance(specific_signs, bool):
            raise ValueError(
                f"make_synthetic: specific_signs must list one multiplier per domain ({n_domains}), "
                f"e.g. [1, -1, ...], got the single value {specific_signs!r}."
            )
        signs = [
            _check_real(f"specific_signs[{d}]", v)
            for d, v in enumerate(_per_domain("specific_signs", specific_signs, n_domains))
        ]
    crosses = [
        _check_real(f"cross_strength[{d}]", v)
        for d, v in enumerate(_per_domain("cross_strength", cross_strength, n_domains))
    ]
    w_fixed = _dense_weights(dense_weights, n_domains, n_dense)
    for flag, value in (("identical_domains", identical_domains), ("with_probability", with_probability)):
        if value is not True and value is not False:
            raise ValueError(f"make_synthetic: {flag} must be True or False, got {value!r}.")
    if identical_domains:
        _check_same("ctr", [float(r) for r in rates], "a single ctr")
        _check_same("cross_strength", crosses, "a single value")
        if w_fixed is not None:
            _check_same("dense_weights", [tuple(row) for row in w_fixed], "one row of n_dense weights")
        if signs is not None:
            raise ValueError(
                "make_synthetic: specific_signs is not allowed with identical_domains=True (identical "
                "domains have no domain-specific term); drop one of them."
            )

    rng = np.random.default_rng(int(seed))
    k = _LATENT_DIM
    # Entries scaled by k**-0.25 so that <u, v> has unit variance.
    scale = k**-0.25 / np.sqrt(2.0)
    n_groups = min(_MAX_USER_GROUPS, n_users)
    n_cats = min(_MAX_ITEM_CATS, n_items)
    user_group = rng.integers(0, n_groups, n_users)
    item_cat = rng.integers(0, n_cats, n_items)
    U = (rng.standard_normal((n_groups, k))[user_group] + rng.standard_normal((n_users, k))) * scale
    V = (rng.standard_normal((n_cats, k))[item_cat] + rng.standard_normal((n_items, k))) * scale
    M = rng.standard_normal((n_domains, k, k)) / np.sqrt(k)
    if signs is not None:
        # One interaction, scaled per domain; M[0] is drawn as before, so the rest of the frame is unchanged.
        M = np.asarray(signs)[:, None, None] * M[0][None]
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

    if w_fixed is not None:
        # The effect of fixed (possibly per-domain) weights replaces the random shared one; the draws above
        # happened all the same, which keeps users, items and dense values those of the default model.
        w_rows = np.asarray(w_fixed, dtype=np.float32)
        dense_effect[order] = np.einsum("nj,nj->n", dense, w_rows[domain[order]])

    u_vec = U[users]
    v_vec = V[items]
    logit = shared_strength * np.einsum("nk,nk->n", u_vec, v_vec)
    logit += dense_effect + tag_effect[items]
    if any(crosses):
        extra = np.random.default_rng([int(seed), _EXTRA_STREAM])
        cross_table = extra.standard_normal((n_groups, n_cats))
        logit += np.repeat(np.asarray(crosses), sizes_arr) * cross_table[user_group[users], item_cat[items]]
    for d in range(n_domains):
        # Before the shuffle each domain is one contiguous slice: one matrix
        # product per domain.
        s = slice(starts[d], starts[d + 1])
        if not identical_domains:
            logit[s] += specific_strength * np.einsum("nk,nk->n", u_vec[s], v_vec[s] @ M[d].T)
            logit[s] += _calibrate_bias(logit[s], float(rates[d]))
    if identical_domains:
        # One bias over all rows: the first _CALIBRATION_ROWS of a random sample of them (rows are grouped
        # by domain here, so a plain prefix would calibrate on the first domain only).
        sample = rng.permutation(n_rows)[:_CALIBRATION_ROWS]
        logit += _calibrate_bias(logit[sample], float(rates[0]))
    probability = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n_rows) < probability).astype(np.int64)

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
    if with_probability:
        columns["p_true"] = probability[order]
    return pd.DataFrame(columns)
