"""Batches from a time-ordered stream: STAR's sliding-window shuffle buffer (Sheng et al., CIKM 2021, §4.4).

Online, the share of each domain in the arriving rows changes through the day (a domain's traffic peaks
in the morning, another's in the evening); trained in arrival order, a model follows those swings. STAR
keeps a buffer holding a sliding window of recent rows: a mini-batch is sampled from the shuffled buffer,
removed from it, and the slots it freed take the next arriving rows. :class:`SlidingWindowShuffle` is that
buffer; :class:`DomainWindowShuffle` keeps one window per domain and emits single-domain batches (for the
domain-batched strategies).

A stream is an iterable of chunks, each a mapping of column name to an array whose first dimension is the
chunk's rows (the encoded columns of a Parquet row group, a day's file, ...); every chunk has the same
columns with the same dtypes and trailing shapes. Batches are mappings of the same columns.

Readings of the paper made here (it gives the idea, not the procedure):

- The window holds ``capacity`` rows; a batch is ``batch_size`` slots drawn uniformly without replacement
  from the full window, and the freed slots are refilled in arrival order. So every row waits in the
  window until drawn: its expected stay is ``capacity / batch_size`` batches, and no row is drawn before
  it arrived.
- When the stream ends the window is drained: its rows shuffled and emitted in batches (the last one
  short unless ``drop_last``), so every row of the stream is emitted exactly once.
- Sampling is driven by a ``numpy.random.Generator`` seeded with ``seed``: the same stream and seed give
  the same batches.

Example:
    >>> import numpy as np
    >>> stream = [{"id": np.arange(i, i + 4)} for i in range(0, 12, 4)]  # three chunks of four rows
    >>> buf = SlidingWindowShuffle(capacity=6, batch_size=3, seed=0)
    >>> batches = [b["id"].tolist() for b in buf.batches(stream)]
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    >>> all(max(b) < 6 + 3 * k for k, b in enumerate(batches))  # never a row before it arrived
    True
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .config import DataConfig
    from .processing import FittedProcessing

__all__ = ["DomainWindowShuffle", "SlidingWindowShuffle", "StreamingFitter", "encode_chunks", "parquet_chunks"]

Chunk = Mapping[str, np.ndarray]
#: Per-chunk id counts a :class:`StreamingFitter` holds before merging them (or the vocabulary's size, if
#: larger).
_MERGE_ENTRIES = 1_000_000


def _check_size(field: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _drain(window: dict[str, np.ndarray], filled: int, b: int, rng: np.random.Generator, drop_last: bool):
    """The first ``filled`` rows of a window, shuffled, in batches of ``b`` (the short last one unless
    ``drop_last``)."""
    order = rng.permutation(filled)
    for start in range(0, filled, b):
        idx = order[start : start + b]
        if len(idx) < b and drop_last:
            return
        yield {c: a[idx] for c, a in window.items()}


def _window_sizes(capacity: object, batch_size: object, window: str) -> tuple[int, int]:
    b, cap = _check_size("batch_size", batch_size), _check_size("capacity", capacity)
    if cap < b:
        raise ValueError(
            f"capacity ({cap}) must be at least batch_size ({b}): a batch is drawn from {window}; raise the "
            f"window (e.g. capacity={b * 16}) or lower the batch size"
        )
    return cap, b


class _Layout:
    """The columns of a stream (name → dtype, trailing shape), fixed by its first chunk."""

    def __init__(self, chunk: Chunk) -> None:
        if not chunk:
            raise ValueError("a stream chunk must hold at least one column, got an empty mapping")
        self.columns = {k: (np.asarray(v).dtype, np.asarray(v).shape[1:]) for k, v in chunk.items()}

    def check(self, chunk: Chunk, index: int) -> tuple[dict[str, np.ndarray], int]:
        arrays = {k: np.asarray(v) for k, v in chunk.items()}
        if set(arrays) != set(self.columns):
            raise ValueError(
                f"stream chunk {index} has the columns {sorted(arrays)}, the stream's first chunk "
                f"{sorted(self.columns)}; every chunk must hold the same columns"
            )
        lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ValueError(f"stream chunk {index}: its columns' lengths differ ({lengths}); give one row count")
        for k, a in arrays.items():
            dtype, shape = self.columns[k]
            if a.dtype != dtype or a.shape[1:] != shape:
                raise ValueError(
                    f"stream chunk {index}, column {k!r}: dtype {a.dtype} shape [n, {', '.join(map(str, a.shape[1:]))}]"
                    f", but the first chunk has {dtype} [n, {', '.join(map(str, shape))}]; encode every chunk alike"
                )
        return arrays, next(iter(lengths.values()))

    def empty(self, rows: int) -> dict[str, np.ndarray]:
        return {k: np.empty((rows, *shape), dtype=dtype) for k, (dtype, shape) in self.columns.items()}


def _rows(source: Iterable[Chunk]) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """The stream's chunks, checked against its first chunk's layout (empty chunks skipped)."""
    layout: _Layout | None = None
    for i, chunk in enumerate(source):
        if layout is None:
            layout = _Layout(chunk)
        arrays, n = layout.check(chunk, i)
        if n:
            yield arrays, n


class SlidingWindowShuffle:
    """STAR's buffer (§4.4): batches sampled from a sliding window of the stream's most recent rows.

    Args:
        capacity: rows the window holds (>= ``batch_size``). Larger windows mix more; a row's expected wait
            is ``capacity / batch_size`` batches.
        batch_size: rows per batch.
        seed: seed of the draws.
        drop_last: drop the short last batch of the drain at the end of the stream.
    """

    def __init__(self, capacity: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.capacity, self.batch_size = _window_sizes(capacity, batch_size, "the window")
        self.seed = _check_size("seed", seed, 0)
        self.drop_last = bool(drop_last)

    def batches(self, stream: Iterable[Chunk]) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``stream``, every row once."""
        rng = np.random.default_rng(self.seed)
        b, cap = self.batch_size, self.capacity
        window: dict[str, np.ndarray] | None = None
        filled = 0
        pending: list[tuple[dict[str, np.ndarray], int]] = []  # arrived rows not yet in the window
        offset = 0  # rows of pending[0] already taken

        def take(n: int) -> dict[str, np.ndarray] | None:
            """Up to ``n`` arriving rows, in order."""
            nonlocal offset
            parts: list[dict[str, np.ndarray]] = []
            got = 0
            while got < n and pending:
                arrays, rows = pending[0]
                k = min(n - got, rows - offset)
                parts.append({c: a[offset : offset + k] for c, a in arrays.items()})
                got, offset = got + k, offset + k
                if offset == rows:
                    pending.pop(0)
                    offset = 0
            if not parts:
                return None
            return parts[0] if len(parts) == 1 else {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

        def pending_rows() -> int:
            return sum(n for _, n in pending) - offset

        chunks = _rows(stream)
        exhausted = False
        while True:
            # Read until the window is full and a batch's worth of rows waits to refill it (or the stream ends).
            while not exhausted and filled + pending_rows() < cap + b:
                nxt = next(chunks, None)
                if nxt is None:
                    exhausted = True
                else:
                    pending.append(nxt)
                    if window is None:
                        window = _Layout(nxt[0]).empty(cap)
            if window is None:
                return  # an empty stream
            if filled < cap:
                new = take(cap - filled)
                if new is not None:
                    n = len(next(iter(new.values())))
                    for c, a in new.items():
                        window[c][filled : filled + n] = a
                    filled += n
            if filled < cap:  # the stream ended before the window filled: drain it
                break
            slots = np.sort(rng.choice(cap, size=b, replace=False))
            yield {c: a[slots] for c, a in window.items()}
            new = take(b)
            n = 0 if new is None else len(next(iter(new.values())))
            if n:
                for c, a in new.items():
                    window[c][slots[:n]] = a
            if n < b:  # the stream has ended: move the last rows into the free slots, then drain
                free = slots[n:]
                keep = np.setdiff1d(np.arange(cap - len(free), cap), free)
                holes = free[free < cap - len(free)]
                for c in window:
                    window[c][holes] = window[c][keep]
                filled = cap - len(free)
                break
        yield from _drain(window, filled, b, rng, self.drop_last)


class DomainWindowShuffle:
    """One sliding window per domain: single-domain batches, each sampled from its domain's recent rows.

    A row joins its domain's window; when a window holds ``capacity`` rows, a batch of ``batch_size`` is
    drawn from it (uniformly, without replacement) and emitted, and the window refills as rows of that
    domain arrive. At the end of the stream every window is drained in shuffled batches, the domains in a
    random order. Batches therefore come in the order in which domains fill their windows: a domain with more
    traffic is trained on more often, as its rows arrive.

    Args:
        capacity: rows each domain's window holds (>= ``batch_size``).
        batch_size: rows per batch.
        domain: the column holding each row's domain index.
        seed: seed of the draws.
        drop_last: drop each domain's short last batch of the drain.
    """

    def __init__(
        self, capacity: int, batch_size: int, domain: str = "domain", seed: int = 0, drop_last: bool = False
    ) -> None:
        self.capacity, self.batch_size = _window_sizes(capacity, batch_size, "a domain's window")
        self.domain, self.seed, self.drop_last = domain, _check_size("seed", seed, 0), bool(drop_last)

    def batches(self, stream: Iterable[Chunk]) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        b, cap = self.batch_size, self.capacity
        windows: dict[int, dict[str, np.ndarray]] = {}
        filled: dict[int, int] = {}
        layout: _Layout | None = None
        for arrays, _ in _rows(stream):
            if self.domain not in arrays:
                raise ValueError(
                    f"DomainWindowShuffle: the stream has no column {self.domain!r} (columns: {sorted(arrays)}); "
                    f"name the domain column with domain=..."
                )
            if layout is None:
                layout = _Layout(arrays)
            dom = arrays[self.domain]
            if dom.ndim != 1 or dom.dtype.kind not in "iu":
                raise ValueError(
                    f"column {self.domain!r} must hold one integer domain index per row, got {dom.dtype} {dom.shape}"
                )
            # Each domain's rows of the chunk fill its window in order; a full window emits a batch just
            # before the row that finds it full. Emissions are yielded in the order of those rows.
            events: list[tuple[int, int, dict[str, np.ndarray]]] = []
            order = np.argsort(dom, kind="stable")
            present, counts = np.unique(dom[order], return_counts=True)
            for d, rows in zip(present.tolist(), np.split(order, np.cumsum(counts)[:-1]), strict=True):
                if d not in windows:
                    windows[d], filled[d] = layout.empty(cap), 0
                w, k = windows[d], 0
                while k < len(rows):
                    if filled[d] == cap:
                        slots = np.sort(rng.choice(cap, size=b, replace=False))
                        events.append((int(rows[k]), d, {c: a[slots] for c, a in w.items()}))
                        # the drawn slots are freed: the window's last rows move into them
                        keep = np.setdiff1d(np.arange(cap - b, cap), slots)
                        holes = slots[slots < cap - b]
                        for c in w:
                            w[c][holes] = w[c][keep]
                        filled[d] = cap - b
                    part = rows[k : k + cap - filled[d]]
                    for c, a in arrays.items():
                        w[c][filled[d] : filled[d] + len(part)] = a[part]
                    filled[d] += len(part)
                    k += len(part)
            for _, _, batch in sorted(events, key=lambda e: e[:2]):
                yield batch
        for d in rng.permutation(sorted(windows)).tolist() if windows else []:
            yield from _drain(windows[d], filled[d], b, rng, self.drop_last)


# ------------------------------------------------------------------------------------------ Parquet streams
def _parquet_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files of a Parquet source: a file, a folder (its ``*.parquet`` / ``*.pq``, sorted), a glob, or a
    list of those, in the order given (a time-ordered stream keeps its order)."""
    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted([*p.glob("*.parquet"), *p.glob("*.pq")])
            if not found:
                raise FileNotFoundError(f"Parquet source folder {str(p)!r} holds no *.parquet or *.pq file")
            files += found
        elif p.exists():
            files.append(p)
        else:
            found = sorted(Path(f) for f in glob.glob(str(item)))
            if not found:
                raise FileNotFoundError(f"Parquet source {str(item)!r}: no such file, folder or glob match")
            files += found
    return files


def parquet_chunks(
    source: str | Path | Sequence[str | Path],
    columns: Sequence[str] | None = None,
    id_columns: Sequence[str] = (),
    rows: int = 65_536,
) -> Iterator[pd.DataFrame]:
    """A Parquet data set as frames of at most ``rows`` rows, read record batch by record batch.

    Only one batch of rows is in memory at a time, so a data set larger than memory streams through.
    Integer ``id_columns`` with missing cells come as pandas' nullable ``Int64`` (not float64, whose
    rounding would merge ids above 2^53), as :func:`polyrec.data.sources.load_table` reads them.

    Args:
        source: a file, a folder, a glob, or a list of them (files are read in that order).
        columns: the columns to read (all by default); a missing one is an error naming the file.
        id_columns: identifier columns read exactly.
        rows: rows per frame (>= 1).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _check_size("rows", rows)
    for path in _parquet_files(source):
        handle = pq.ParquetFile(path)
        names = handle.schema_arrow.names
        if columns is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                raise KeyError(f"Parquet file {str(path)!r} has no column(s) {missing}; its columns: {names}")
        wanted = list(columns) if columns is not None else names
        ints = [
            c
            for c in dict.fromkeys(id_columns)
            if c in wanted and pa.types.is_integer(handle.schema_arrow.field(c).type)
        ]
        for batch in handle.iter_batches(batch_size=rows, columns=wanted):
            frame = batch.to_pandas()
            for c in ints:
                col = batch.column(c)
                if col.null_count:
                    frame[c] = col.to_pandas(types_mapper={col.type: pd.Int64Dtype()}.get).array
            yield frame


# ------------------------------------------------------------------------------- fitting in one pass
class StreamingFitter:
    """The processing of :func:`polyrec.data.processing.fit_processing`, fitted over a stream of frames.

    Feed it frames (:meth:`update`); :meth:`finish` gives the same vocabularies (ids by descending count,
    ties by their string; ``min_count`` applied to the whole stream's counts), the same multi-valued lengths
    and the same scalers as fitting the concatenated frames at once (``standard``: to float rounding, the
    moments merged chunk by chunk), and the domain names (:func:`polyrec.data.dataset.derive_domain`'s).
    Memory holds the counts of the distinct ids, not the rows. Fit on every row, a sample, or a first
    period by choosing the frames fed.
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.counts: dict[str, pd.Series] = {}
        # Per-chunk counts not merged yet: merging them in groups keeps the cost linear in the rows (one
        # alignment of the running counts per chunk grew with the vocabulary) and the memory bounded.
        self.pending: dict[str, list[pd.Series]] = {}
        self.pending_size: dict[str, int] = {}
        self.longest: dict[str, int] = {}
        self.moments: dict[str, tuple[int, float, float, float, float]] = {}  # n, mean, M2, min, max
        self.domains: dict[str, object] = {}
        self.rows = 0

    def update(self, frame: pd.DataFrame) -> None:
        from .processing import DenseScaler, _as_str, _dense_values, split_multi

        for fc in self.cfg.features:
            if fc.source_column not in frame.columns:
                raise KeyError(
                    f"feature {fc.name!r}: column {fc.source_column!r} is not in the data; columns: {list(frame.columns)}"
                )
            col = frame[fc.source_column]
            if fc.kind in ("sparse", "multi"):
                if fc.kind == "multi":
                    col = split_multi(col, fc.sep)
                    if len(col):
                        self.longest[fc.name] = max(self.longest.get(fc.name, 1), int(col.index.value_counts().max()))
                counts = _as_str(col).value_counts(sort=False)
                self.pending.setdefault(fc.name, []).append(counts)
                self.pending_size[fc.name] = self.pending_size.get(fc.name, 0) + len(counts)
                if self.pending_size[fc.name] > max(_MERGE_ENTRIES, len(self.counts.get(fc.name, ()))):
                    self._merge_counts(fc.name)
            else:
                v = DenseScaler._check(fc.name, np.asarray(_dense_values(col), dtype=np.float64))
                if fc.transform == "log1p_minmax":
                    if (v < 0).any():
                        raise ValueError(f"dense feature {fc.name!r}: log1p_minmax needs values >= 0, min is {v.min()}")
                    v = np.log1p(v)
                if len(v):
                    self._merge(fc.name, v)
        raw = frame[self.cfg.domain.column] if self.cfg.domain.column in frame.columns else None
        if raw is not None and self.cfg.domain.groups is None:
            uniq = raw.dropna().unique()
            for key, value in zip(_as_str(pd.Series(uniq)).tolist(), uniq.tolist(), strict=True):
                self.domains.setdefault(key, value)
        self.rows += len(frame)

    def _merge_counts(self, name: str) -> None:
        parts = ([self.counts[name]] if name in self.counts else []) + self.pending.pop(name, [])
        self.pending_size[name] = 0
        if parts:
            self.counts[name] = pd.concat(parts).groupby(level=0, sort=False).sum().astype(np.int64)

    def _merge(self, name: str, v: np.ndarray) -> None:
        n, mean = len(v), float(v.mean())
        m2, lo, hi = float(((v - mean) ** 2).sum()), float(v.min()), float(v.max())
        if name in self.moments:  # Chan et al.'s pairwise update of (n, mean, M2)
            n0, mean0, m20, lo0, hi0 = self.moments[name]
            total = n0 + n
            delta = mean - mean0
            mean, m2 = mean0 + delta * n / total, m20 + m2 + delta * delta * n0 * n / total
            n, lo, hi = total, min(lo, lo0), max(hi, hi0)
        self.moments[name] = (n, mean, m2, lo, hi)

    def finish(self) -> tuple[FittedProcessing, tuple[str, ...]]:
        from .processing import DenseScaler, FittedProcessing, Vocabulary

        if self.rows == 0:
            raise ValueError("StreamingFitter: no rows were fed; fit on at least one frame")
        fitted = FittedProcessing()
        for fc in self.cfg.features:
            if fc.kind in ("sparse", "multi"):
                self._merge_counts(fc.name)
                counts = self.counts[fc.name]
                counts = counts[counts >= fc.min_count]
                table = pd.DataFrame({"tok": counts.index.astype(str), "n": counts.to_numpy()})
                table = table.sort_values(["n", "tok"], ascending=[False, True], kind="mergesort")
                fitted.vocabularies[fc.name] = Vocabulary(fc.name, table["tok"].tolist(), fc.min_count)
                if fc.kind == "multi":
                    fitted.max_lens[fc.name] = fc.max_len or max(self.longest.get(fc.name, 1), 1)
            else:
                n, mean, m2, lo, hi = self.moments.get(fc.name, (0, 0.0, 0.0, 0.0, 0.0))
                if fc.transform in ("minmax", "log1p_minmax"):
                    fitted.scalers[fc.name] = DenseScaler(fc.name, fc.transform, a=lo, b=(hi - lo) or 1.0)
                elif fc.transform == "standard":
                    std = float(np.sqrt(m2 / n)) if n else 0.0
                    fitted.scalers[fc.name] = DenseScaler(fc.name, fc.transform, a=mean, b=std or 1.0)
                else:
                    fitted.scalers[fc.name] = DenseScaler.fit(fc.name, np.zeros(1), fc.transform)
        if self.cfg.domain.groups is not None:
            names = tuple(self.cfg.domain.groups)
        elif self.domains and all(isinstance(v, int | float | np.number) for v in self.domains.values()):
            names = tuple(k for k, _ in sorted(self.domains.items(), key=lambda kv: kv[1]))
        else:
            names = tuple(sorted(self.domains))
        return fitted, names


def encode_chunks(
    frames: Iterable[pd.DataFrame], cfg: DataConfig, fitted: FittedProcessing, domain_names: Sequence[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Each frame encoded with frozen processing: the columns of a :class:`~polyrec.data.batch.Batch`.

    ``sparse``, ``dense``, ``multi.<name>``, ``label``, ``domain`` (and ``user``, the user feature's encoded
    id, where the config names one). A domain outside ``domain_names`` is an error naming it: the domains
    are fixed when the processing is.
    """
    from .dataset import derive_label, encode_rows
    from .processing import _as_str
    from .schema import FIRST_INDEX

    index = pd.Index(list(domain_names), dtype=str)
    mapping = None
    if cfg.domain.groups is not None:
        mapping = {
            key: i
            for i, vals in enumerate(cfg.domain.groups.values())
            for key in _as_str(pd.Series(list(vals))).tolist()
        }
    sparse = [fc.name for fc in cfg.features if fc.kind == "sparse"]
    user_col = sparse.index(cfg.user_feature) if cfg.user_feature in sparse else None
    for k, frame in enumerate(frames):
        if cfg.domain.column not in frame.columns:
            raise KeyError(f"data.domain.column {cfg.domain.column!r} is not a column; columns: {list(frame.columns)}")
        keys = _as_str(frame[cfg.domain.column])
        if mapping is not None:
            codes = keys.map(mapping)
        else:
            codes = pd.Series(index.get_indexer(keys), index=keys.index)
        bad = (codes.isna() | (codes < 0)).to_numpy()
        if bad.any():
            unknown = sorted(keys[bad].unique().tolist())[:5]
            raise ValueError(
                f"stream chunk {k}: {int(bad.sum())} row(s) of domain(s) {unknown} that the fitted processing "
                f"does not know (domains: {list(domain_names)[:10]}); refit on data that holds them"
            )
        domain = codes.to_numpy(np.int64)
        arrays, _ = encode_rows(frame, cfg, fitted)
        if cfg.domain.as_feature:
            arrays["sparse"] = np.concatenate([arrays["sparse"], (domain + FIRST_INDEX)[:, None]], axis=1)
        arrays["label"] = derive_label(frame, cfg.label)
        arrays["domain"] = domain
        if user_col is not None:
            arrays["user"] = arrays["sparse"][:, user_col].copy()
        yield arrays
