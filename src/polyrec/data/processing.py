"""Feature processing fitted on the training split only: vocabularies with OOV, dense scaling.

All encoders are vectorised (pandas categoricals, numpy), never a Python loop over rows. The fitted
state is plain data (lists and floats) so it can be saved as JSON beside the encoded tensors and reused
to encode new rows at evaluation or serving time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import FeatureConfig
from .schema import FIRST_INDEX, OOV_INDEX, PAD_INDEX


def _as_str(values: pd.Series) -> pd.Series:
    """Ids as strings, so that 1, "1" and 1.0 read from different files agree; missing stays missing.

    The conversion is element-wise (an integral float is written as an int, any other float as itself),
    so a value's string never depends on which other rows are in the column: the training subset and the
    full column give the same string for the same id. Vectorised, no per-row Python.
    """
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(v)
        integral = np.isfinite(v) & (v == np.round(v)) & (np.abs(v) < 2.0**63)
        out = np.full(len(v), np.nan, dtype=object)
        out[integral] = v[integral].astype(np.int64).astype(str)
        other = ~integral & ~missing
        out[other] = v[other].astype(str)
        return pd.Series(out, index=values.index).astype(str)
    if pd.api.types.is_integer_dtype(values) and isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        # Nullable integers (ids with empty cells, read exactly rather than through float64): the same
        # strings as int64, missing cells missing exactly as in a float column.
        missing = values.isna().to_numpy()
        out = np.full(len(values), np.nan, dtype=object)
        out[~missing] = values[~missing].to_numpy(dtype=values.dtype.numpy_dtype).astype(str)
        return pd.Series(out, index=values.index).astype(str)
    return values.astype(str)


def _dense_values(values: pd.Series) -> np.ndarray:
    """A dense column as a numpy array; nullable numbers give NaN for missing cells (refused, by name,
    by :class:`DenseScaler`), never ``pd.NA`` objects."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return values.to_numpy()


@dataclass
class Vocabulary:
    """Id vocabulary of one sparse or multi-valued feature.

    Order is deterministic: by descending training count, ties broken by the id's string value, so the
    same training data always gives the same indices. Index 0 is padding, 1 is OOV.
    """

    name: str
    tokens: list[str]
    min_count: int = 1
    #: The tokens' hash index, built on the first encode and kept (encoding chunk after chunk of a stream
    #: rebuilt and re-checked it for every chunk); rebuilt when ``tokens`` is replaced or changes length.
    _lookup: tuple[list[str], int, pd.Index] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.tokens) + FIRST_INDEX

    def _index(self) -> pd.Index:
        cached = self._lookup
        if cached is None or cached[0] is not self.tokens or cached[1] != len(self.tokens):
            cached = self._lookup = (self.tokens, len(self.tokens), pd.Index(self.tokens, dtype=str))
        return cached[2]

    @classmethod
    def fit(cls, name: str, values: pd.Series, min_count: int = 1) -> Vocabulary:
        if min_count < 1:
            raise ValueError(f"feature {name!r}: min_count must be >= 1, got {min_count}")
        counts = _as_str(values).value_counts(sort=False)
        counts = counts[counts >= min_count]
        frame = pd.DataFrame({"tok": counts.index.astype(str), "n": counts.to_numpy()})
        frame = frame.sort_values(["n", "tok"], ascending=[False, True], kind="mergesort")
        return cls(name=name, tokens=frame["tok"].tolist(), min_count=min_count)

    def encode(self, values: pd.Series) -> tuple[np.ndarray, int]:
        """Map raw ids to indices; returns (indices int64, number of OOV rows)."""
        # A hash lookup; ids not in the vocabulary (and missing values) give -1. (pd.Categorical with
        # unknown values is deprecated and will raise in pandas 4.)
        codes = self._index().get_indexer(_as_str(values))
        codes = codes.astype(np.int64)
        oov = codes < 0
        codes += FIRST_INDEX
        codes[oov] = OOV_INDEX
        return codes, int(oov.sum())


def split_multi(values: pd.Series, sep: str) -> pd.Series:
    """A column of ``sep``-joined id strings -> exploded Series of ids, indexed by row position."""
    if pd.api.types.is_integer_dtype(values):
        # A column of single integer ids (read exactly, possibly nullable): their strings, as a sparse id.
        values = _as_str(values)
    if not sep:
        raise ValueError("a multi-valued feature needs a non-empty separator (FeatureConfig.sep)")
    import pyarrow as pa
    import pyarrow.compute as pc

    # Split in Arrow (vectorised; pandas' str.split runs Python once per row): the ids of each cell in
    # order, empty ids dropped, each indexed by its row's position.
    cells = pa.array(values.fillna("").astype(str).to_numpy(dtype=object), type=pa.string())
    lists = pc.split_pattern(cells, sep)
    ids, rows = pc.list_flatten(lists), pc.list_parent_indices(lists)
    keep = pc.greater(pc.utf8_length(ids), 0)
    ids, rows = ids.filter(keep), rows.filter(keep)
    return pd.Series(ids.to_numpy(zero_copy_only=False), index=rows.to_numpy().astype(np.int64), dtype=str)


def encode_multi(
    vocab: Vocabulary, values: pd.Series, sep: str, max_len: int, *, return_truncated: bool = False
) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, np.ndarray]:
    """Encode a multi-valued column into a padded ``[N, max_len]`` array (0 = padding).

    Lists longer than ``max_len`` keep their first ``max_len`` ids. With ``return_truncated`` a third
    value, a boolean ``[N]`` array of the truncated rows, is returned so the caller can report them
    (nothing is dropped silently).

    Returns:
        (ids ``[N, max_len]`` int64, number of OOV ids kept[, truncated rows ``[N]`` bool]).
    """
    if max_len < 1:
        raise ValueError(f"feature {vocab.name!r}: max_len must be >= 1, got {max_len}")
    n = len(values)
    exploded = split_multi(values, sep)
    rows = exploded.index.to_numpy()
    codes, _ = vocab.encode(exploded)
    out = np.full((n, max_len), PAD_INDEX, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    oov = 0
    if len(rows):
        # Position of each id within its row: running count since the row started.
        starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        pos = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        keep = pos < max_len
        out[rows[keep], pos[keep]] = codes[keep]
        truncated[rows[~keep]] = True
        oov = int((codes[keep] == OOV_INDEX).sum())
    if return_truncated:
        return out, oov, truncated
    return out, oov


@dataclass
class DenseScaler:
    """Dense feature scaling fitted on training rows only."""

    name: str
    transform: str
    a: float = 0.0  # shift
    b: float = 1.0  # scale

    @staticmethod
    def _check(name: str, values: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"dense feature {name!r} has {int(bad.sum())} NaN/inf value(s) (first at row {first}: "
                f"{values[first]}); clean or impute the column before encoding"
            )
        return values

    @classmethod
    def fit(cls, name: str, values: np.ndarray, transform: str) -> DenseScaler:
        v = cls._check(name, np.asarray(values, dtype=np.float64))
        if transform == "log1p_minmax":
            if (v < 0).any():
                raise ValueError(f"dense feature {name!r}: log1p_minmax needs values >= 0, min is {v.min()}")
            v = np.log1p(v)
        if transform in ("minmax", "log1p_minmax"):
            lo, hi = float(v.min()), float(v.max())
            return cls(name, transform, a=lo, b=(hi - lo) or 1.0)
        if transform == "standard":
            return cls(name, transform, a=float(v.mean()), b=float(v.std()) or 1.0)
        if transform == "none":
            return cls(name, transform)
        raise ValueError(f"dense feature {name!r}: unknown transform {transform!r}")

    def transform_values(self, values: np.ndarray) -> np.ndarray:
        v = self._check(self.name, np.asarray(values, dtype=np.float64))
        if self.transform == "log1p_minmax":
            neg = v < 0
            if neg.any():
                raise ValueError(
                    f"dense feature {self.name!r}: log1p_minmax needs values >= 0, but {int(neg.sum())} value(s) "
                    f"are negative (min {v.min()}); use transform minmax or standard for this column"
                )
            v = np.log1p(v)
        return ((v - self.a) / self.b).astype(np.float32)


@dataclass
class FittedProcessing:
    """Fitted state of every feature: vocabularies and scalers (plain data, JSON-serialisable)."""

    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    scalers: dict[str, DenseScaler] = field(default_factory=dict)
    max_lens: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "vocabularies": {k: {"tokens": v.tokens, "min_count": v.min_count} for k, v in self.vocabularies.items()},
            "scalers": {k: {"transform": s.transform, "a": s.a, "b": s.b} for k, s in self.scalers.items()},
            "max_lens": dict(self.max_lens),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FittedProcessing:
        return cls(
            vocabularies={k: Vocabulary(k, v["tokens"], v["min_count"]) for k, v in d["vocabularies"].items()},
            scalers={k: DenseScaler(k, s["transform"], s["a"], s["b"]) for k, s in d["scalers"].items()},
            max_lens=dict(d["max_lens"]),
        )


def fit_processing(
    frame: pd.DataFrame, features: tuple[FeatureConfig, ...], train_rows: np.ndarray
) -> FittedProcessing:
    """Fit vocabularies and scalers of ``features`` on ``frame.iloc[train_rows]`` only."""
    train = frame.iloc[train_rows]
    fitted = FittedProcessing()
    for fc in features:
        col = train[fc.source_column]
        if fc.kind == "sparse":
            fitted.vocabularies[fc.name] = Vocabulary.fit(fc.name, col, fc.min_count)
        elif fc.kind == "multi":
            exploded = split_multi(col, fc.sep)
            fitted.vocabularies[fc.name] = Vocabulary.fit(fc.name, exploded, fc.min_count)
            longest = int(exploded.index.value_counts().max()) if len(exploded) else 1
            fitted.max_lens[fc.name] = fc.max_len or max(longest, 1)
        else:
            fitted.scalers[fc.name] = DenseScaler.fit(fc.name, _dense_values(col), fc.transform)
    return fitted
