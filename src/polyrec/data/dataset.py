"""Encoded data sets: columnar tensors, seeded splits, and the on-disk cache.

:func:`build_dataset` turns a :class:`~polyrec.data.config.DataConfig` into an :class:`EncodedDataset`:
load the raw rows, derive label and domain, split (with the split's own seed), fit processing on the
training rows only, encode everything vectorised, and cache the result on disk under a content hash of
the config and the source files. A second build of the same config loads the cached arrays, after
checking every file of the entry against the sha256 sums of its ``manifest.json``.

:func:`data_fingerprint` says which data a run saw (source files and their sha256, split hash, rows per
split and domain), in plain JSON for the run directory.

Example:
    >>> ds = build_dataset(preset("ml1m-gender").data)            # doctest: +SKIP
    >>> ds.batch(ds.splits["train"][:1024])                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import to_dict
from . import sources
from .batch import Batch
from .cache import cache_dir, remove_abandoned, sha256_file, temp_prefix
from .config import DataConfig, SampleConfig, SourceConfig, SplitConfig
from .processing import FittedProcessing, _as_str, _dense_values, encode_multi, fit_processing
from .schema import FIRST_INDEX, DatasetSchema, DomainSpec, FeatureSpec, display_order

# 2: ``user`` holds the raw user identity (factorised), not the vocabulary index; domain rule keys are
#    order-sensitive.
# 3: every entry has a manifest.json with the sha256 of each file (entries without one are rebuilt); the
#    report holds the source files' sha256, duplicate counts and rows dropped for untrained domains; id
#    columns of csv/parquet sources are read exactly (never through float64).
FORMAT_VERSION = 3
SPLITS = ("train", "val", "test")
#: The file of a cache entry that lists every other file with its size and sha256.
MANIFEST = "manifest.json"


@dataclass
class EncodedDataset:
    """All rows of a data set as columnar tensors, plus its splits.

    Args:
        schema: the encoded features and domains.
        sparse, dense, multi, label, domain, user: column tensors, see :class:`~polyrec.data.batch.Batch`.
        splits: ``train`` / ``val`` / ``test`` -> row indices (int64, sorted).
        processing: fitted vocabularies and scalers (to encode new rows the same way).
        report: facts about the encoding (OOV counts per split and feature, sizes, cache key, timings).

    Shape:
        sparse ``[N, Fs]``, dense ``[N, Fd]``, label ``[N]``, domain ``[N]``.
    """

    schema: DatasetSchema
    sparse: Tensor
    dense: Tensor
    label: Tensor
    domain: Tensor
    splits: dict[str, Tensor]
    multi: dict[str, Tensor] = field(default_factory=dict)
    user: Tensor | None = None
    processing: FittedProcessing | None = None
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def batch(self, index: Tensor) -> Batch:
        """Gather rows ``index`` into a :class:`Batch` (one index_select per column tensor)."""
        return Batch(
            sparse=self.sparse.index_select(0, index),
            dense=self.dense.index_select(0, index),
            label=self.label.index_select(0, index),
            domain=self.domain.index_select(0, index),
            multi={k: v.index_select(0, index) for k, v in self.multi.items()},
            user=None if self.user is None else self.user.index_select(0, index),
        )

    @property
    def split_hash(self) -> str:
        return split_hash(self.splits)

    def domain_counts(self, split: str) -> dict[str, int]:
        counts = torch.bincount(self.domain[self.splits[split]], minlength=self.schema.num_domains)
        return dict(zip(self.schema.domain.values, counts.tolist()))

    def summary(self) -> str:
        """Rows, positive rate and rows per domain of every split (domains listed in
        :func:`~polyrec.data.schema.display_order`: integer codes numerically)."""
        lines = [f"{len(self):,} rows, {self.schema.num_domains} domains, split {self.split_hash}"]
        for s in SPLITS:
            idx = self.splits[s]
            counts = self.domain_counts(s)
            lines.append(
                f"  {s:5s} {len(idx):>9,} rows, positive rate {float(self.label[idx].mean()):.3f}, "
                f"per domain { ({d: counts[d] for d in display_order(counts)}) }"
            )
        oov = self.report.get("oov", {})
        if oov:
            lines.append(f"  OOV rows (val/test ids unseen in train): {oov}")
        return "\n".join(lines)

    def oov_table(self) -> str:
        """Rows per feature and split whose id maps to the OOV bucket, as a compact text table.

        One line per feature with an OOV row in some split (in schema order), one column per split: the
        row count and its share of the split. Ids unseen in training (or rarer than ``min_count``) all
        share one embedding, so a large share in val/test is worth knowing before reading the metrics.

        Returns:
            The table, or ``""`` when no row of any split is OOV (nothing to print).

        Example::

            OOV rows  train         val         test
            user_id       0    2 (0.4%)    4 (0.8%)
            item_id       0    4 (0.8%)   11 (2.2%)
        """
        oov = self.report.get("oov") or {}
        seen = {k for s in SPLITS for k, n in (oov.get(s) or {}).items() if n}
        if not seen:
            return ""
        order = [f.name for f in self.schema.features]
        features = [f for f in order if f in seen] + sorted(seen - set(order))

        def cell(n: int, size: int) -> str:
            return f"{n:,}" if n == 0 or size == 0 else f"{n:,} ({100.0 * n / size:.1f}%)"

        rows = [["OOV rows", *SPLITS]]
        for f in features:
            rows.append([f, *(cell(int((oov.get(s) or {}).get(f, 0)), len(self.splits[s])) for s in SPLITS)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for r in rows:
            lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
        return "\n".join(line.rstrip() for line in lines)


def split_hash(splits: dict[str, Tensor | np.ndarray]) -> str:
    """Identity of a split: a hash of its index arrays (recorded with every result)."""
    h = hashlib.sha256()
    for name in SPLITS:
        arr = np.ascontiguousarray(np.asarray(splits[name], dtype=np.int64))
        h.update(name.encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- splits


def _cut(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    n_train = round(n * ratios[0])
    n_val = round(n * ratios[1])
    return n_train, min(n_train + n_val, n)


def make_splits(
    method: str,
    ratios: tuple[float, float, float],
    seed: int,
    label: np.ndarray,
    domain: np.ndarray,
    users: np.ndarray | None = None,
    times: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices.

    Args:
        method: ``stratified_domain``, ``random``, ``user`` or ``time`` (see :class:`SplitConfig`).
        ratios: three fractions summing to 1.
        seed: the split seed (never the model seed).
        label, domain: per-row label and domain index (``stratified_domain`` stratifies on both).
        users: per-row user identity (any hashable dtype) for ``user``.
        times: per-row timestamps for ``time``.

    Returns:
        ``train`` / ``val`` / ``test`` -> sorted int64 row indices; disjoint, covering every row.
    """
    ratios = tuple(ratios)
    # Written as "ok" so that NaN ratios fail too (every comparison with NaN is False). A tiny negative
    # from float arithmetic (1 - 0.8 - 0.2 = -5.6e-17) counts as 0.
    ok = len(ratios) == 3 and all(np.isfinite(r) and r >= -1e-9 for r in ratios) and abs(sum(ratios) - 1.0) <= 1e-6
    if not ok:
        raise ValueError(
            f"split.ratios {list(ratios)} must be three non-negative fractions summing to 1 "
            "(train, val, test), for example [0.8, 0.1, 0.1]"
        )
    ratios = tuple(max(float(r), 0.0) for r in ratios)
    if ratios[0] <= 0:
        raise ValueError(f"split.ratios {list(ratios)}: the training fraction must be > 0 (processing is fitted on it)")
    n = len(label)
    if len(domain) != n:
        raise ValueError(f"make_splits: label has {n} rows but domain has {len(domain)}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}

    def assign(rows: np.ndarray) -> None:
        a, b = _cut(len(rows), ratios)
        parts["train"].append(rows[:a])
        parts["val"].append(rows[a:b])
        parts["test"].append(rows[b:])

    if method == "stratified_domain":
        key = domain.astype(np.int64) * 2 + label.astype(np.int64)
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for group in np.split(order, bounds):
            assign(group[rng.permutation(len(group))])
    elif method == "random":
        assign(rng.permutation(n))
    elif method == "user":
        if users is None:
            raise ValueError("split.method 'user' needs data.user_feature to name the user id feature")
        if len(users) != n:
            raise ValueError(f"make_splits: label has {n} rows but users has {len(users)}")
        uniq, inv = np.unique(np.asarray(users), return_inverse=True)
        a, b = _cut(len(uniq), ratios)
        which = np.empty(len(uniq), dtype=np.int64)
        perm = rng.permutation(len(uniq))
        which[perm[:a]], which[perm[a:b]], which[perm[b:]] = 0, 1, 2
        row_part = which[inv]
        for i, s in enumerate(SPLITS):
            parts[s].append(np.flatnonzero(row_part == i))
    elif method == "time":
        if times is None:
            raise ValueError("split.method 'time' needs split.time_column to name a timestamp column")
        if len(times) != n:
            raise ValueError(f"make_splits: label has {n} rows but times has {len(times)}")
        assign(np.argsort(np.asarray(times), kind="stable"))
    else:
        raise ValueError(f"split.method {method!r} is not one of stratified_domain, random, user, time")
    return {s: np.sort(np.concatenate(parts[s])) if parts[s] else np.zeros(0, np.int64) for s in SPLITS}


# ----------------------------------------------------------------------------------------- raw -> rows


def id_columns(cfg: DataConfig) -> tuple[str, ...]:
    """The raw columns that hold identifiers: sparse and multi-valued features (the user feature is one),
    and the domain column. :func:`load_source` reads them exactly, never through float64."""
    cols = [f.source_column for f in cfg.features if f.kind in ("sparse", "multi")]
    cols.append(cfg.domain.column)
    return tuple(dict.fromkeys(cols))


def load_source(cfg: SourceConfig, id_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Load the raw interaction rows of a source as one DataFrame.

    Args:
        cfg: the source.
        id_columns: identifier columns of a ``csv`` / ``parquet`` source (see :func:`id_columns`): read as
            exact integers or text, so that ids above 2**53 stay distinct even in a column with empty
            cells. The other kinds read ids as text already.
    """
    if cfg.kind == "movielens":
        return sources.load_movielens(cfg.name, path=cfg.path)
    if cfg.kind in ("csv", "parquet"):
        if not cfg.path:
            raise ValueError(f"data.source.path is required for kind {cfg.kind!r}")
        return sources.load_table(cfg.path, format=cfg.kind, sep=cfg.sep, id_columns=tuple(id_columns))
    if cfg.kind == "atomic":
        if not cfg.path:
            raise ValueError("data.source.path (the folder of atomic files) is required for kind 'atomic'")
        return sources.load_atomic(cfg.path, cfg.name)
    if cfg.kind == "synthetic":
        return sources.make_synthetic(**cfg.options)
    raise ValueError(f"data.source.kind {cfg.kind!r} is not one of movielens, csv, parquet, atomic, synthetic")


def load_rows(cfg: DataConfig) -> pd.DataFrame:
    """The raw rows of ``cfg.source``, with the identifier columns of ``cfg`` read exactly, subsampled by
    ``cfg.sample`` (a seeded draw without replacement; the rows keep their source order)."""
    return sample_rows(load_source(cfg.source, id_columns(cfg)), cfg.sample)


def sample_rows(frame: pd.DataFrame, sample: SampleConfig) -> pd.DataFrame:
    """The rows of ``frame`` that ``sample`` keeps, in their order (all of them at fraction 1)."""
    if sample.fraction >= 1.0:
        return frame
    n = max(1, round(sample.fraction * len(frame)))
    keep = np.sort(np.random.default_rng(sample.seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def source_files(cfg: SourceConfig) -> dict[str, str]:
    """The sha256 of every file the source reads, hashed now: ``{name: sha256}``.

    A single file is named by its file name, the files of a folder by their path relative to it (every
    file of the folder, sorted). The MovieLens wheel is its file name with the pinned digest (the download
    is verified against it). A synthetic source reads no file: its entry ``options.json`` is the sha256 of
    its generator options as sorted JSON. Comparing this with a run's recorded
    :func:`data_fingerprint` tells whether the source changed since.
    """
    if cfg.kind == "synthetic":
        return {"options.json": _sha256_text(json.dumps(cfg.options, sort_keys=True, default=str))}
    if cfg.kind == "movielens" and cfg.path is None:
        # fetch_movielens_wheel verifies the file against the pinned digest; no need to hash it twice.
        sources.fetch_movielens_wheel()
        return {sources.MOVIELENS_WHEEL["filename"]: sources.MOVIELENS_WHEEL["sha256"]}
    if cfg.path is None:
        raise ValueError(f"data.source.path is required for kind {cfg.kind!r}")
    path = Path(cfg.path).expanduser()
    if not path.exists() and cfg.kind == "atomic":
        # A prefix such as data/ml-1m/ml-1m: the atomic files it names.
        folder, name = sources.tabular._atomic_paths(path, cfg.name)
        files = [folder / f"{name}.{ext}" for ext in ("inter", "user", "item")]
        return {f.name: sha256_file(f) for f in files if f.is_file()}
    if not path.exists():
        raise FileNotFoundError(f"data.source.path {str(path)!r} does not exist")
    if path.is_dir():
        return {
            f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(p for p in path.rglob("*") if p.is_file())
        }
    return {path.name: sha256_file(path)}


def _fingerprint_of(cfg: SourceConfig, files: dict[str, str]) -> str:
    """One hash for the files of a source: a file's own sha256, or a hash over a folder's names and sums."""
    path = Path(cfg.path).expanduser() if cfg.path else None
    if len(files) == 1 and not (path is not None and path.is_dir()):
        return next(iter(files.values()))
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(files[name].encode())
    return h.hexdigest()


def source_fingerprint(cfg: SourceConfig) -> str:
    """Content hash of the source files, one hex digest (the synthetic generator: of its options)."""
    return _fingerprint_of(cfg, source_files(cfg))


def derive_label(frame: pd.DataFrame, rule) -> np.ndarray:
    if rule.column not in frame.columns:
        raise KeyError(f"data.label.column {rule.column!r} is not a column; columns: {list(frame.columns)}")
    col = frame[rule.column]
    if col.isna().any():
        raise ValueError(f"label column {rule.column!r} has {int(col.isna().sum())} missing value(s)")
    ops = {"eq": np.equal, "gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}
    if rule.op != "identity" and rule.op not in ops:
        raise ValueError(f"data.label.op {rule.op!r} is not one of identity, {', '.join(ops)}")
    if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        raise ValueError(
            f"label column {rule.column!r} has dtype {col.dtype}, not numeric (e.g. {col.iloc[:3].tolist()}); "
            "convert it to numbers before encoding"
        )
    v = col.to_numpy(dtype=np.float64)
    if rule.op == "identity":
        bad = ~np.isin(v, [0.0, 1.0])
        if bad.any():
            seen = np.unique(v[bad])
            raise ValueError(
                f"label column {rule.column!r} has {int(bad.sum())} value(s) outside {{0, 1}} "
                f"(values seen: {seen[:5].tolist()}); set data.label.op/threshold to binarise it "
                "(for example op: gt, threshold: 3)"
            )
        return v.astype(np.float32)
    return ops[rule.op](v, rule.threshold).astype(np.float32)


def derive_domain(frame: pd.DataFrame, rule) -> tuple[np.ndarray, tuple[str, ...]]:
    if rule.column not in frame.columns:
        raise KeyError(f"data.domain.column {rule.column!r} is not a column; columns: {list(frame.columns)}")
    raw = frame[rule.column]
    if raw.isna().any():
        raise ValueError(
            f"domain column {rule.column!r} has {int(raw.isna().sum())} missing value(s); every row needs a "
            "domain: fill them (for example with an 'unknown' value) or drop those rows before encoding"
        )
    # The same string form as sparse ids, so 1, 1.0 and "1" name the same domain.
    keys = _as_str(raw)
    if rule.groups is None:
        if pd.api.types.is_numeric_dtype(raw):
            # Numeric domain values sort as numbers (2 before 10), then are named by their string form.
            names = tuple(_as_str(pd.Series(np.sort(raw.unique()))).tolist())
        else:
            names = tuple(sorted(keys.unique().tolist()))
        codes = pd.Index(list(names), dtype=str).get_indexer(keys).astype(np.int64)
        return codes, names
    names = tuple(rule.groups)
    if not names:
        raise ValueError("data.domain.groups is empty; name at least one domain, or leave groups unset")
    mapping: dict[str, int] = {}
    for i, (name, values) in enumerate(rule.groups.items()):
        # Inferred dtype, so [1, 18] and [1.0, 18.0] give the same keys as an int or float column.
        for key in _as_str(pd.Series(list(values))).tolist():
            if key in mapping:
                raise ValueError(
                    f"data.domain.groups: raw value {key!r} is in two domains "
                    f"({names[mapping[key]]!r} and {name!r}); each value belongs to one domain"
                )
            mapping[key] = i
    codes = keys.map(mapping)
    if codes.isna().any():
        unknown = sorted(keys[codes.isna()].unique().tolist())[:5]
        raise ValueError(
            f"domain column {rule.column!r} has {int(codes.isna().sum())} row(s) with values in no group: "
            f"{unknown}; add them to data.domain.groups (groups: {dict(rule.groups)})"
        )
    codes = codes.to_numpy(np.int64)
    counts = np.bincount(codes, minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        raise ValueError(
            f"domain(s) {empty} of data.domain.groups have no rows (no value of column {rule.column!r} "
            f"matches {[rule.groups[n] for n in empty]}); remove them from data.domain.groups or fix their values"
        )
    return codes, names


def encode_rows(
    frame: pd.DataFrame,
    cfg: DataConfig,
    fitted: FittedProcessing,
    truncated: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Encode ``frame`` with fitted processing.

    Args:
        truncated: if given, filled with a per-row flag of the multi-valued features' truncated rows.

    Returns:
        (arrays, per-row OOV flags per feature).
    """
    sparse_cols, dense_cols, multi = [], [], {}
    oov_rows: dict[str, np.ndarray] = {}
    for fc in cfg.features:
        if fc.source_column not in frame.columns:
            raise KeyError(
                f"feature {fc.name!r}: column {fc.source_column!r} is not in the data; columns: {list(frame.columns)}"
            )
        col = frame[fc.source_column]
        if fc.kind == "sparse":
            codes, _ = fitted.vocabularies[fc.name].encode(col)
            sparse_cols.append(codes)
            oov_rows[fc.name] = codes == 1
        elif fc.kind == "multi":
            arr, _, cut = encode_multi(
                fitted.vocabularies[fc.name], col, fc.sep, fitted.max_lens[fc.name], return_truncated=True
            )
            multi[fc.name] = arr
            oov_rows[fc.name] = (arr == 1).any(axis=1)
            if truncated is not None:
                truncated[fc.name] = cut
        else:
            dense_cols.append(fitted.scalers[fc.name].transform_values(_dense_values(col)))
    n = len(frame)
    arrays = {
        "sparse": np.stack(sparse_cols, axis=1) if sparse_cols else np.zeros((n, 0), np.int64),
        "dense": np.stack(dense_cols, axis=1).astype(np.float32) if dense_cols else np.zeros((n, 0), np.float32),
    }
    arrays.update({f"multi.{k}": v for k, v in multi.items()})
    return arrays, oov_rows


def schema_from(cfg: DataConfig, fitted: FittedProcessing, domain_names: tuple[str, ...]) -> DatasetSchema:
    feats = []
    for fc in cfg.features:
        if fc.kind == "sparse":
            feats.append(FeatureSpec(fc.name, "sparse", vocab_size=fitted.vocabularies[fc.name].size))
    if cfg.domain.as_feature:
        feats.append(FeatureSpec("domain", "sparse", vocab_size=len(domain_names) + FIRST_INDEX))
    for fc in cfg.features:
        if fc.kind == "multi":
            feats.append(
                FeatureSpec(
                    fc.name, "multi", vocab_size=fitted.vocabularies[fc.name].size, max_len=fitted.max_lens[fc.name]
                )
            )
    for fc in cfg.features:
        if fc.kind == "dense":
            feats.append(FeatureSpec(fc.name, "dense"))
    return DatasetSchema(
        features=tuple(feats),
        domain=DomainSpec(cfg.domain.column, domain_names),
        label=cfg.label.column,
        user_feature=cfg.user_feature,
        domain_feature="domain" if cfg.domain.as_feature else None,
        domain_features=tuple(cfg.domain.describing),
    )


def _validate(cfg: DataConfig) -> None:
    names = [f.name for f in cfg.features]
    if not names:
        raise ValueError("data.features is empty: name at least one input feature")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"data.features has duplicate names {dup}")
    if cfg.domain.as_feature and "domain" in names:
        raise ValueError("data.domain.as_feature adds a feature named 'domain'; rename the feature called 'domain'")
    if cfg.user_feature is not None and cfg.user_feature not in [f.name for f in cfg.features if f.kind == "sparse"]:
        raise ValueError(f"data.user_feature {cfg.user_feature!r} must name a sparse feature in data.features")


def duplicate_columns(cfg: DataConfig) -> tuple[str, ...]:
    """The raw columns two rows must agree on to be exact duplicates: every feature's column, the label
    and domain columns, and the time column of a ``time`` split (everything the encoded row is made of)."""
    cols = [f.source_column for f in cfg.features] + [cfg.label.column, cfg.domain.column]
    if cfg.split.method == "time":
        cols.append(cfg.split.time_column)
    return tuple(dict.fromkeys(cols))


def row_groups(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Per-row id of its group of exact duplicates over ``columns`` (0..G-1, in order of first appearance).

    Each column is factorised (missing cells are one value of their own), and the codes are combined as
    one mixed-radix integer per row, compressed again whenever it would overflow: exact, vectorised.
    """
    n = len(frame)
    key = np.zeros(n, dtype=np.int64)
    size = 1
    for c in columns:
        codes, uniques = pd.factorize(frame[c], use_na_sentinel=False)
        card = max(len(uniques), 1)
        if size * card >= 2**62:
            key, uniq = pd.factorize(key)
            size = max(len(uniq), 1)
        key = key * card + codes.astype(np.int64)
        size *= card
    return pd.factorize(key)[0].astype(np.int64)


def _duplicate_report(groups: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, int]:
    counts = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    in_train = np.zeros(len(counts), dtype=bool)
    in_train[groups[splits["train"]]] = True
    return {
        # Validation / test rows that have an exact copy among the training rows: their metrics partly
        # measure memorisation.
        "val_in_train": int(in_train[groups[splits["val"]]].sum()),
        "test_in_train": int(in_train[groups[splits["test"]]].sum()),
        # Rows of the data set (any split) with at least one exact copy.
        "rows_with_copies": int((counts[groups] > 1).sum()),
    }


def _warn_duplicates(report: dict) -> None:
    dup = report.get("duplicates") or {}
    val, test = int(dup.get("val_in_train", 0)), int(dup.get("test_in_train", 0))
    if val or test:
        warnings.warn(
            f"{val} validation and {test} test row(s) have an exact duplicate in the training split "
            f"(identical in columns {dup.get('columns')}); their metrics partly measure memorisation. Set "
            "data.split.dedupe: true to remove exact duplicates before splitting",
            stacklevel=3,
        )


def _untrained_domains(
    domain: np.ndarray, splits: dict[str, np.ndarray], names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """Domains with validation or test rows but no training row: name -> rows per split."""
    counts = {s: np.bincount(domain[splits[s]], minlength=len(names)) for s in SPLITS}
    return {
        names[d]: {"val": int(counts["val"][d]), "test": int(counts["test"][d])}
        for d in range(len(names))
        if counts["train"][d] == 0 and counts["val"][d] + counts["test"][d] > 0
    }


def _check_nonempty_splits(splits: dict[str, np.ndarray], n: int, split: SplitConfig, note: str = "") -> None:
    for s in SPLITS:
        if len(splits[s]) == 0 and split.ratios[SPLITS.index(s)] > 0:
            raise ValueError(f"split {s!r} is empty ({n} rows, ratios {list(split.ratios)}){note}")


def encode_frame(frame: pd.DataFrame, cfg: DataConfig) -> EncodedDataset:
    """Split, fit on the training rows, and encode ``frame`` (no cache).

    ``EncodedDataset.user`` (for GAUC and the user split) is the raw user identity, factorised to
    0..U-1 in order of first appearance: it is *not* the embedding index, which maps every user unseen
    in training (or rarer than ``min_count``) to the one OOV bucket and would merge them into one "user".

    Besides the split, two data-trust rules apply here (not in :func:`make_splits`, which also splits the
    rows of a domain a trained model has never seen):

    - exact duplicate rows (:func:`duplicate_columns`) with a copy in train and another in val or test
      are counted in ``report["duplicates"]`` and warned about; ``split.dedupe`` removes exact
      duplicates before splitting (keeping the first occurrence);
    - a domain with no training row is an error, or with ``split.untrained_domains: drop`` its val/test
      rows are removed (``report["dropped_untrained"]``); the domain stays in the schema.

    Raises:
        ValueError: a domain has no training rows (naming it and its val/test rows), an empty split, or
            any error of the label, domain and feature rules.
    """
    _validate(cfg)
    t0 = time.perf_counter()
    if len(frame) == 0:
        raise ValueError("the source has no rows; check data.source")
    for fc in cfg.features:
        if fc.source_column not in frame.columns:
            raise KeyError(
                f"feature {fc.name!r}: column {fc.source_column!r} is not in the data; columns: {list(frame.columns)}"
            )
    label = derive_label(frame, cfg.label)
    domain, names = derive_domain(frame, cfg.domain)
    if cfg.split.method == "time" and cfg.split.time_column not in frame.columns:
        raise KeyError(f"split.time_column {cfg.split.time_column!r} is not a column; columns: {list(frame.columns)}")
    dup_cols = duplicate_columns(cfg)
    groups = row_groups(frame, dup_cols)
    removed = 0
    if cfg.split.dedupe:
        keep = np.zeros(len(frame), dtype=bool)
        keep[np.unique(groups, return_index=True)[1]] = True  # the first row of each group
        removed = int(len(frame) - keep.sum())
        if removed:
            frame = frame.iloc[np.flatnonzero(keep)].reset_index(drop=True)
            label, domain, groups = label[keep], domain[keep], groups[keep]
    users = None
    if cfg.user_feature is not None:
        fc = next(f for f in cfg.features if f.name == cfg.user_feature)
        users = pd.factorize(_as_str(frame[fc.source_column]), use_na_sentinel=False)[0].astype(np.int64)
    times = frame[cfg.split.time_column].to_numpy() if cfg.split.method == "time" else None
    splits = make_splits(cfg.split.method, cfg.split.ratios, cfg.split.seed, label, domain, users, times)
    _check_nonempty_splits(splits, len(frame), cfg.split)
    untrained = _untrained_domains(domain, splits, names)
    if untrained and cfg.split.untrained_domains == "error":
        listed = ", ".join(f"{k!r} ({v['val']} validation, {v['test']} test rows)" for k, v in untrained.items())
        raise ValueError(
            f"domain(s) {listed} have no training rows under split.method {cfg.split.method!r} with ratios "
            f"{list(cfg.split.ratios)}: their test metrics would come from untrained parameters. Fix: give them "
            "training rows (another split method or seed, a larger training fraction), leave them out of "
            "data.domain.groups, or set data.split.untrained_domains: drop to remove their validation and "
            "test rows"
        )
    if untrained:
        drop = np.isin(domain, [names.index(k) for k in untrained])
        keep = ~drop
        new_pos = np.cumsum(keep) - 1
        splits = {s: new_pos[idx[keep[idx]]] for s, idx in splits.items()}
        rows = np.flatnonzero(keep)
        frame = frame.iloc[rows].reset_index(drop=True)
        label, domain, groups = label[keep], domain[keep], groups[keep]
        if users is not None:
            users = pd.factorize(users[keep])[0].astype(np.int64)
        _check_nonempty_splits(
            splits, len(frame), cfg.split, f" after dropping the untrained domain(s) {list(untrained)}"
        )
    fitted = fit_processing(frame, cfg.features, splits["train"])
    truncated: dict[str, np.ndarray] = {}
    arrays, oov_rows = encode_rows(frame, cfg, fitted, truncated)
    if cfg.domain.as_feature:
        arrays["sparse"] = np.concatenate([arrays["sparse"], (domain + FIRST_INDEX)[:, None]], axis=1)
    arrays["label"] = label
    arrays["domain"] = domain
    schema = schema_from(cfg, fitted, names)
    if users is not None:
        arrays["user"] = users
    oov = {s: {k: int(v[splits[s]].sum()) for k, v in oov_rows.items()} for s in SPLITS}
    cut = {s: {k: int(v[splits[s]].sum()) for k, v in truncated.items()} for s in SPLITS}
    duplicates = _duplicate_report(groups, splits)
    duplicates.update(removed=removed, columns=list(dup_cols))
    report = {
        "rows": len(frame),
        "vocab_sizes": {k: v.size for k, v in fitted.vocabularies.items()},
        # Rows per split and feature holding an id mapped to the OOV bucket (unseen in train or rare).
        "oov": {s: {k: n for k, n in d.items() if n} for s, d in oov.items()},
        # Rows per split and multi-valued feature whose list was cut to the feature's max_len.
        "truncated": {s: {k: n for k, n in d.items() if n} for s, d in cut.items()},
        # Exact duplicate rows (identical in ``columns``): copies across splits, and rows removed by dedupe.
        "duplicates": duplicates,
        # Domains without training rows whose val/test rows were removed (split.untrained_domains: drop).
        "dropped_untrained": untrained,
        "encode_s": round(time.perf_counter() - t0, 3),
    }
    _warn_duplicates(report)
    return _from_arrays(schema, arrays, {s: splits[s] for s in SPLITS}, fitted, report)


def _from_arrays(schema, arrays, splits, fitted, report) -> EncodedDataset:
    # Arrays from pandas may be read-only views; torch needs writable memory.
    t = {
        k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous else np.array(v, order="C"))
        for k, v in arrays.items()
    }
    ds = EncodedDataset(
        schema=schema,
        sparse=t["sparse"].long(),
        dense=t["dense"].float(),
        label=t["label"].float(),
        domain=t["domain"].long(),
        multi={k.split(".", 1)[1]: v.long() for k, v in t.items() if k.startswith("multi.")},
        user=t["user"].long() if "user" in t else None,
        splits={s: torch.from_numpy(np.asarray(splits[s], dtype=np.int64)) for s in SPLITS},
        processing=fitted,
        report=report,
    )
    ds.report["split_hash"] = ds.split_hash
    return ds


def new_domain_dataset(
    run_data: DataConfig,
    base: EncodedDataset,
    schema: DatasetSchema,
    data: DataConfig,
    name: str,
    backbone_domain: int = 0,
) -> EncodedDataset:
    """The rows of domain ``name`` of data set ``data``, encoded the way a trained run's data was.

    Args:
        run_data: the trained run's data config (its features are encoded, with the vocabularies and
            scalers fitted on the run's training split, ``base.processing``).
        base: the run's encoded data set (for its fitted processing).
        schema: the adapted model's schema, which already lists ``name`` as its last domain.
        data: where the new rows come from (source, label rule, domain rule, split); ``name`` must be one
            of the domains its domain rule produces.
        name: the new domain.
        backbone_domain: the existing domain the backbone computes the new one as (see
            :func:`~polyrec.models.adapters.add_domain`); with ``domain.as_feature`` the new rows' domain
            indicator feature is that domain's, since the trained embedding table has no row for the new one.

    Ids unseen in the run's training data map to the OOV bucket (counted in ``report["oov"]``).

    Raises:
        ValueError: ``base`` has no fitted processing, or ``name`` is not a domain of ``data``'s domain rule.
    """
    if base.processing is None:
        raise ValueError("the run's data set has no fitted processing to encode new rows with; rebuild its cache")
    frame = sample_rows(load_source(data.source, id_columns(run_data)), data.sample)  # ids read exactly
    codes, names = derive_domain(frame, data.domain)
    if name not in names:
        raise ValueError(
            f"domain {name!r} is not in the new data; its domain rule gives {list(names)}; "
            "pick one of them with --domain, or change data.domain"
        )
    frame = frame[codes == names.index(name)].reset_index(drop=True)
    label = derive_label(frame, data.label)
    arrays, oov_rows = encode_rows(frame, run_data, base.processing)
    if run_data.domain.as_feature:
        indicator = np.full((len(frame), 1), backbone_domain + FIRST_INDEX, np.int64)
        arrays["sparse"] = np.concatenate([arrays["sparse"], indicator], axis=1)
    users = None
    if run_data.user_feature is not None:
        fc = next(f for f in run_data.features if f.name == run_data.user_feature)
        users = pd.factorize(_as_str(frame[fc.source_column]), use_na_sentinel=False)[0].astype(np.int64)
        arrays["user"] = users
    times = frame[data.split.time_column].to_numpy() if data.split.method == "time" else None
    domain = np.full(len(frame), schema.num_domains - 1, dtype=np.int64)
    splits = make_splits(data.split.method, data.split.ratios, data.split.seed, label, domain, users, times)
    arrays["label"], arrays["domain"] = label, domain
    oov = {s: {k: int(v[splits[s]].sum()) for k, v in oov_rows.items() if int(v[splits[s]].sum())} for s in splits}
    return _from_arrays(schema, arrays, splits, base.processing, {"rows": len(frame), "oov": oov, "new_domain": name})


# ------------------------------------------------------------------------------------------------ cache


class CacheEntryError(ValueError):
    """A cache entry that must not be read: no manifest (an older format), or a file missing, unlisted or
    changed since it was written. The message names the entry and the file."""


# Data config fields added after presets were published: left out of the key at their defaults, so a
# config that does not use them keys (and splits) exactly as before they existed.
_KEY_DEFAULTS = {
    ("split", "dedupe"): False,
    ("split", "untrained_domains"): "error",
    ("domain", "describing"): [],
    ("sample", "fraction"): 1.0,
    ("sample", "seed"): 0,
}


def _key_payload(cfg: DataConfig, files: dict[str, str]) -> dict[str, Any]:
    config = to_dict(cfg)
    if cfg.domain.groups is not None:
        # The order of the groups is the domain index order; ``sort_keys`` below would erase it, so two
        # configs that number the domains differently would share one cache entry.
        config["domain"]["groups"] = [[name, list(values)] for name, values in cfg.domain.groups.items()]
    for (section, name), default in _KEY_DEFAULTS.items():
        value = config[section].get(name)
        if (list(value) if isinstance(value, tuple) else value) == default:
            del config[section][name]
    if not config["sample"]:
        del config["sample"]
    return {"config": config, "source": _fingerprint_of(cfg.source, files), "format": FORMAT_VERSION}


def _key(cfg: DataConfig, files: dict[str, str]) -> str:
    payload = json.dumps(_key_payload(cfg, files), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def dataset_key(cfg: DataConfig) -> str:
    """Content hash of the config, the source files and the encoding format (hashes the source now)."""
    return _key(cfg, source_files(cfg.source))


def data_fingerprint(cfg: DataConfig, ds: EncodedDataset) -> dict[str, Any]:
    """Which data a run saw, as plain JSON for its run directory.

    Returns:
        ``{"source": {"kind", "files": {name: sha256}}, "split_hash", "rows": {split: {domain: n}},
        "cache_key", "format"}``. The file sums are the ones :func:`build_dataset` computed for the cache
        key (``ds.report["source_files"]``; a cache hit implies the same files), so nothing is hashed
        again; a data set built without the cache has its source hashed here. Compare ``files`` with
        :func:`source_files` to tell whether the source changed since.

    Example:
        >>> json.dumps(data_fingerprint(cfg, build_dataset(cfg)))          # doctest: +SKIP
    """
    files = ds.report.get("source_files")
    if files is None:
        files = source_files(cfg.source)
    key = ds.report.get("cache_key") or _key(cfg, files)
    return {
        "source": {"kind": cfg.source.kind, "files": {str(k): str(v) for k, v in files.items()}},
        "split_hash": ds.split_hash,
        "rows": {s: {str(k): int(v) for k, v in ds.domain_counts(s).items()} for s in SPLITS},
        "cache_key": key,
        "format": FORMAT_VERSION,
    }


def save_dataset(ds: EncodedDataset, directory: Path) -> None:
    """Write ``ds`` to ``directory`` atomically (a temporary folder renamed into place).

    The entry's ``manifest.json`` lists every other file with its size and sha256; :func:`load_dataset_dir`
    refuses an entry whose files do not match it. The temporary folder's name holds this process's pid
    (:func:`~polyrec.data.cache.temp_prefix`), so what a killed writer leaves behind is recognised and
    removed by the next :func:`build_dataset`.

    A failure part-way leaves no partial folder and any existing ``directory`` untouched. When another
    process finished the same entry first (the key is a content hash, so its content is the same), that
    entry is kept and this copy discarded.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix("tmp"), dir=directory.parent))
    try:
        arrays = {"sparse": ds.sparse, "dense": ds.dense, "label": ds.label, "domain": ds.domain}
        arrays.update({f"multi.{k}": v for k, v in ds.multi.items()})
        if ds.user is not None:
            arrays["user"] = ds.user
        arrays.update({f"split.{s}": ds.splits[s] for s in SPLITS})
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v.numpy(), allow_pickle=False)
        (tmp / "schema.json").write_text(ds.schema.to_json())
        (tmp / "processing.json").write_text(json.dumps(ds.processing.to_dict() if ds.processing else {}))
        (tmp / "report.json").write_text(json.dumps(ds.report, sort_keys=True))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
        manifest = {"format": FORMAT_VERSION, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, directory: Path) -> None:
    """Rename the finished folder ``tmp`` to ``directory``, replacing an existing entry."""
    if not directory.exists():
        try:
            os.replace(tmp, directory)
            return
        except OSError:
            if not (directory / MANIFEST).exists():
                raise
            # Another process finished the same entry meanwhile (same key, same content): keep it.
            shutil.rmtree(tmp, ignore_errors=True)
            return
    # Replace an existing entry: rename it away, put the new one in place, then delete the old one. If
    # the second rename fails, the old entry is put back.
    old = Path(tempfile.mkdtemp(prefix=temp_prefix("old"), dir=directory.parent)) / "entry"
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        if not directory.exists():
            os.replace(old, directory)
        shutil.rmtree(old.parent, ignore_errors=True)
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def _verified_files(directory: Path, mapped: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The bytes of every file of the entry, each checked against the manifest (read once, so what is
    parsed is what was checked); files whose name ends with one of ``mapped`` are checked by streaming
    them and not kept (their value is ``b""``): the caller memory-maps them."""
    label = f"dataset cache entry {str(directory)!r}"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CacheEntryError(
            f"{label} has no {MANIFEST} (written by a polyrec older than format "
            f"{FORMAT_VERSION}, or the file was deleted)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest["files"]
        fmt = manifest["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheEntryError(f"{label}: file {MANIFEST!r} is not a valid manifest ({exc})") from None
    if fmt != FORMAT_VERSION:
        raise CacheEntryError(f"{label}: {MANIFEST} says format {fmt!r}, this polyrec reads format {FORMAT_VERSION}")
    present = {p.name for p in directory.iterdir() if p.name != MANIFEST}
    missing = sorted(set(listed) - present)
    if missing:
        raise CacheEntryError(f"{label}: file {missing[0]!r} listed in its manifest is missing")
    extra = sorted(present - set(listed))
    if extra:
        raise CacheEntryError(f"{label}: file {extra[0]!r} is not listed in its manifest")
    out = {}
    for name in sorted(listed):
        want = listed[name]
        if mapped and name.endswith(mapped):
            data, size, got = b"", (directory / name).stat().st_size, sha256_file(directory / name)
        else:
            data = (directory / name).read_bytes()
            size, got = len(data), hashlib.sha256(data).hexdigest()
        if size != want["bytes"]:
            raise CacheEntryError(
                f"{label}: file {name!r} has {size} bytes, its manifest says {want['bytes']} (truncated or rewritten)"
            )
        if got != want["sha256"]:
            raise CacheEntryError(
                f"{label}: file {name!r} has changed (sha256 {got[:16]}..., its manifest says {want['sha256'][:16]}...)"
            )
        out[name] = data
    return out


def load_dataset_dir(directory: Path, mmap: bool = False) -> EncodedDataset:
    """Load a data set written by :func:`save_dataset`, after checking every file against its manifest.

    Nothing is unpickled: arrays are read with ``allow_pickle=False``, everything else is JSON.

    ``mmap``: memory-map the arrays (copy-on-write) instead of reading them whole: batches then read the
    pages they touch, and the operating system can drop them again, so an encoded data set larger than
    memory trains. Each array file is checked against the manifest when it is opened (streamed through
    sha256); a change made to the file afterwards, by another process, is not detected.

    Raises:
        CacheEntryError: no manifest (an older format), or a file missing, unlisted or changed (named).
    """
    directory = Path(directory)
    files = _verified_files(directory, (".npy",) if mmap else ())
    schema = DatasetSchema.from_json(files["schema.json"].decode())
    arrays = {
        name[: -len(".npy")]: (
            np.load(directory / name, mmap_mode="c", allow_pickle=False)
            if mmap
            else np.load(io.BytesIO(data), allow_pickle=False)
        )
        for name, data in files.items()
        if name.endswith(".npy")
    }
    splits = {s: arrays.pop(f"split.{s}") for s in SPLITS}
    proc = json.loads(files["processing.json"].decode())
    fitted = FittedProcessing.from_dict(proc) if proc else None
    report = json.loads(files["report.json"].decode())
    return _from_arrays(schema, arrays, splits, fitted, report)


def build_dataset(
    cfg: DataConfig, cache: bool = True, cache_root: str | Path | None = None, mmap: bool | None = None
) -> EncodedDataset:
    """Encoded data set for ``cfg``, from the on-disk cache when an identical build exists.

    The source files are hashed once per build, for the cache key; their sums are kept in
    ``report["source_files"]`` (and in the entry, so a cache hit hashes nothing more) for
    :func:`data_fingerprint`. A cache entry is read only if every file matches its manifest; a damaged
    entry (a changed, missing or extra file, or no manifest) is warned about, naming the entry and the
    file, and rebuilt. Temporary folders left in the cache by killed writers are removed first.

    Args:
        cfg: the data config (source, label, domains, features, split).
        cache: read and write the cache (keyed by a hash of ``cfg`` and the source files' contents).
        cache_root: cache folder (default: ``$POLYREC_CACHE/datasets`` or ``~/.cache/polyrec/datasets``).
        mmap: memory-map a cache hit's arrays (:func:`load_dataset_dir`); default: the environment variable
            ``POLYREC_MMAP`` set to ``1``. A build (a cache miss) is in memory either way.
    """
    t0 = time.perf_counter()
    if mmap is None:
        mmap = os.environ.get("POLYREC_MMAP", "") == "1"
    if not cache:
        return encode_frame(load_rows(cfg), cfg)
    root = Path(cache_root) if cache_root else cache_dir() / "datasets"
    remove_abandoned(root)
    files = source_files(cfg.source)
    key = _key(cfg, files)
    directory = root / key
    if directory.exists():
        try:
            ds = load_dataset_dir(directory, mmap=mmap)
        except Exception as exc:  # a damaged entry (files changed or deleted, disk error): rebuild it
            warnings.warn(f"dataset cache entry {str(directory)!r} is unreadable ({exc}); rebuilding it", stacklevel=2)
        else:
            ds.report.update(
                cache="hit", mmap=mmap, cache_key=key, source_files=files, load_s=round(time.perf_counter() - t0, 3)
            )
            _warn_duplicates(ds.report)
            return ds
    ds = encode_frame(load_rows(cfg), cfg)
    ds.report.update(cache_key=key, source_files=files, prepare_s=round(time.perf_counter() - t0, 3))
    save_dataset(ds, directory)
    ds.report["cache"] = "miss"
    return ds
