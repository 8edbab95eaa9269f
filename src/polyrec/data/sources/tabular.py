"""Interaction tables from CSV, Parquet and RecBole atomic files.

Every loader returns one :class:`pandas.DataFrame` with one row per
interaction and plain column names. RecBole atomic files
(``name.inter`` / ``name.user`` / ``name.item``) are joined into a single
frame: user attributes on ``user_id``, item attributes on ``item_id``.

Example:
    >>> from polyrec.data.sources import load_table
    >>> df = load_table("clicks.parquet")  # doctest: +SKIP
    >>> df = load_table("clicks.tsv", columns=["user_id", "item_id", "label"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

__all__ = ["ATOMIC_TYPES", "SUPPORTED_FORMATS", "default_sep", "load_atomic", "load_table"]

PathLike = Union[str, "os.PathLike[str]"]

#: Formats accepted by :func:`load_table` and the extensions that imply them.
SUPPORTED_FORMATS = {
    "csv": (".csv", ".tsv", ".tab"),
    "parquet": (".parquet", ".pq"),
    "atomic": (".inter",),
}
# pandas decompresses these transparently; they may follow .csv / .tsv.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
# Text files whose fields are separated by tabs.
_TAB_EXTENSIONS = (".tsv", ".tab")

#: RecBole column types and the pandas dtype each is read as. Sequence types
#: stay as the raw space-separated string: splitting them is a feature
#: engineering choice that belongs to the caller.
ATOMIC_TYPES = {"token": "str", "token_seq": "str", "float": "float64", "float_seq": "str"}

_N_EXAMPLES = 5


# --------------------------------------------------------------------------- #
# RecBole atomic files
# --------------------------------------------------------------------------- #
def _split_typed_header(header_line: str, label: str) -> tuple[list[str], list[str]]:
    """Split an atomic header such as ``user_id:token\\tage:float``.

    Returns the plain names and their RecBole types.
    """
    cells = header_line.rstrip("\r\n").lstrip("\ufeff").split("\t")
    names, types = [], []
    for cell in cells:
        name, sep, typ = cell.rpartition(":")
        if not sep or not name:
            raise ValueError(
                f"{label}: header cell {cell!r} has no ':type' suffix; RecBole atomic headers look like "
                f"'user_id:token'. Supported types: {sorted(ATOMIC_TYPES)}."
            )
        if typ not in ATOMIC_TYPES:
            raise ValueError(
                f"{label}: column {name!r} has unknown type {typ!r}; supported types are {sorted(ATOMIC_TYPES)}."
            )
        names.append(name)
        types.append(typ)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{label}: header repeats column name(s) {dupes}; column names must be unique.")
    return names, types


def _read_atomic(
    source: Path | bytes,
    label: str,
    *,
    dtype_override: dict | None = None,
) -> pd.DataFrame:
    """Read one RecBole atomic file into a frame with plain column names.

    Args:
        source: File path, or the raw bytes of the file (e.g. a zip member).
        label: How to name the file in error messages.
        dtype_override: Optional ``{plain_name: dtype}`` replacing the dtype
            implied by the header type (used where a caller knows better,
            e.g. integer codes stored as ``float``).

    Returns:
        Frame with ``token`` columns as str and ``float`` columns as float64,
        in file order.
    """
    if isinstance(source, (bytes, bytearray)):
        end = source.find(b"\n")
        first = bytes(source[: end if end >= 0 else len(source)])
        buffer: Path | io.BytesIO = io.BytesIO(source)
    else:
        with open(source, "rb") as fh:
            first = fh.readline()
        buffer = source
    if not first.strip():
        raise ValueError(f"{label}: file is empty; expected a typed header such as 'user_id:token'.")
    names, types = _split_typed_header(first.decode("utf-8-sig"), label)
    dtypes = {n: ATOMIC_TYPES[t] for n, t in zip(names, types)}
    dtypes.update(dtype_override or {})
    numeric = [n for n in names if dtypes[n] != "str"]

    def _parse(dtype_map: dict) -> pd.DataFrame:
        if isinstance(buffer, io.BytesIO):
            buffer.seek(0)
        return pd.read_csv(
            buffer,
            sep="\t",
            header=0,
            names=names,
            dtype=dtype_map,
            engine="c",
            encoding="utf-8-sig",
            # Titles contain quote characters; RecBole never quotes fields.
            quoting=csv.QUOTE_NONE,
            # Only an empty numeric field means "missing": a token such as
            # "NA" or "null" is a real value and must stay a string.
            keep_default_na=False,
            na_values={n: [""] for n in numeric},
        )

    try:
        frame = _parse(dtypes)
    except pd.errors.ParserError as exc:
        raise ValueError(f"{label}: malformed atomic file ({exc}). Fields must be tab separated.") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{label}: not valid UTF-8 ({exc}); RecBole atomic files are UTF-8, re-encode the file."
        ) from exc
    except ValueError:
        # A numeric column holds text. Re-read it as strings only to report
        # which column and which values are at fault.
        frame = _parse({n: "str" for n in names})
        for n in numeric:
            bad = frame[n][pd.to_numeric(frame[n], errors="coerce").isna() & (frame[n] != "")]
            if len(bad):
                raise ValueError(
                    f"{label}: column {n!r} is declared numeric but {len(bad)} value(s) are not numbers, "
                    f"e.g. {bad.unique()[:_N_EXAMPLES].tolist()}; fix the values or declare the column ':token'."
                ) from None
        raise
    str_cols = [n for n in names if dtypes[n] == "str"]
    short = frame[str_cols].isna().any(axis=1) if str_cols else pd.Series(False, index=frame.index)
    if short.any():
        raise ValueError(
            f"{label}: {int(short.sum())} row(s) have fewer fields than the header "
            f"(first at data row {int(np.flatnonzero(short.to_numpy())[0]) + 1}); every row needs "
            f"{len(names)} tab-separated fields."
        )
    return frame


def _join_attributes(
    left: pd.DataFrame,
    right: pd.DataFrame,
    key: str,
    left_label: str,
    right_label: str,
) -> pd.DataFrame:
    """Left-join ``right``'s columns onto ``left`` by ``key``, keeping row order.

    Exact duplicate rows in ``right`` are collapsed (they carry no extra
    information); a key with conflicting attribute rows, a key of ``left``
    absent from ``right`` and a column name present in both are errors,
    because each would otherwise silently change or lose data.
    """
    for frame, label in ((left, left_label), (right, right_label)):
        if key not in frame.columns:
            raise ValueError(f"{label} has no {key!r} column to join on; columns are {list(frame.columns)}.")
    clash = sorted(set(left.columns) & set(right.columns) - {key})
    if clash:
        raise ValueError(
            f"column(s) {clash} appear in both {left_label} and {right_label}; rename them in one file so "
            "the joined table keeps both."
        )
    right = right.drop_duplicates(ignore_index=True)
    dup = right[key].duplicated(keep=False)
    if dup.any():
        keys = right.loc[dup, key].unique()
        raise ValueError(
            f"{right_label}: {len(keys)} {key} value(s) have several different attribute rows, e.g. "
            f"{keys[:_N_EXAMPLES].tolist()}; keep one row per {key}."
        )
    pos = pd.Index(right[key]).get_indexer(left[key])
    missing = pos < 0
    if missing.any():
        keys = pd.unique(left[key].to_numpy()[missing])
        hint = ""
        if left[key].dtype != right[key].dtype:
            hint = f" (note: {key} is {left[key].dtype} in {left_label} but {right[key].dtype} in {right_label})"
        raise ValueError(
            f"{int(missing.sum())} row(s) of {left_label} ({len(keys)} distinct {key} value(s)) have no "
            f"matching row in {right_label}, e.g. {list(keys[:_N_EXAMPLES])}{hint}; add those {key} "
            f"values to {right_label} or drop the interactions first."
        )
    attrs = right.drop(columns=[key]).take(pos).reset_index(drop=True)
    return pd.concat([left.reset_index(drop=True), attrs], axis=1)


def _atomic_paths(prefix_or_dir: PathLike, name: str | None) -> tuple[Path, str]:
    """Resolve ``(folder, dataset name)`` of an atomic dataset."""
    p = Path(prefix_or_dir)
    tried = []
    if p.is_dir():
        name = name or p.name
        # RecBole's layout is data_path/name/name.inter; accept data_path too.
        for folder in (p, p / name):
            tried.append(folder / f"{name}.inter")
            if tried[-1].is_file():
                return folder, name
    else:
        if p.suffix in (".inter", ".user", ".item"):
            p = p.with_suffix("")
        if name is not None and name != p.name:
            raise ValueError(
                f"load_atomic: name={name!r} does not match the prefix {str(p)!r}; pass either a folder "
                f"with name, or a prefix such as 'data/{name}' without name."
            )
        tried.append(p.parent / f"{p.name}.inter")
        if tried[-1].is_file():
            return p.parent, p.name
    raise FileNotFoundError(
        f"load_atomic: no RecBole interaction file found for {str(prefix_or_dir)!r}; tried {[str(t) for t in tried]}."
    )


def load_atomic(prefix_or_dir: PathLike, name: str | None = None) -> pd.DataFrame:
    """Load a RecBole atomic dataset as one interaction frame.

    Reads ``{name}.inter`` and, when present, ``{name}.user`` and
    ``{name}.item``, then left-joins them on ``user_id`` / ``item_id``.
    Header ``:type`` suffixes are stripped: ``token`` (and the ``*_seq``
    types, kept as their raw space-separated text) become str columns,
    ``float`` becomes float64.

    Args:
        prefix_or_dir: Either a folder holding ``{name}.inter`` (or
            ``{name}/{name}.inter``), or a path prefix such as
            ``data/ml-1m/ml-1m`` (a trailing ``.inter`` is accepted too).
        name: Dataset name for a folder; defaults to the folder's name.

    Returns:
        One row per line of ``{name}.inter``, in file order, with user and
        item attribute columns appended.

    Raises:
        FileNotFoundError: if no ``.inter`` file is found.
        ValueError: if a join key of the interactions is missing from the
            attribute file (the message gives the count and examples), if a
            key has conflicting attribute rows, or if a header is malformed.

    Example:
        >>> df = load_atomic("dataset/ml-1m")  # doctest: +SKIP
        >>> df.columns[:4].tolist()  # doctest: +SKIP
        ['user_id', 'item_id', 'rating', 'timestamp']
    """
    folder, name = _atomic_paths(prefix_or_dir, name)
    inter_path = folder / f"{name}.inter"
    frame = _read_atomic(inter_path, str(inter_path))
    for suffix, key in (("user", "user_id"), ("item", "item_id")):
        attr_path = folder / f"{name}.{suffix}"
        if attr_path.is_file():
            attrs = _read_atomic(attr_path, str(attr_path))
            frame = _join_attributes(frame, attrs, key, str(inter_path), str(attr_path))
    return frame


# --------------------------------------------------------------------------- #
# Generic tables
# --------------------------------------------------------------------------- #
def _text_extension(path: Path) -> str:
    """The extension that names a file's format, past a compression suffix (``a.tsv.gz`` -> ``.tsv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in _COMPRESSION_SUFFIXES:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def default_sep(path: PathLike) -> str:
    """The CSV field separator a file name implies: a tab for ``.tsv`` / ``.tab`` (compressed too, as in
    ``.tsv.gz``), else ``","``.

    Example:
        >>> default_sep("clicks.tsv.gz") == "\\t", default_sep("clicks.csv")
        (True, ',')
    """
    return "\t" if _text_extension(Path(path)) in _TAB_EXTENSIONS else ","


def _infer_format(path: Path) -> tuple[str, str | None]:
    """Return ``(format, default separator)`` implied by ``path``'s extension."""
    if path.is_dir():
        # A folder is either a partitioned Parquet dataset or a RecBole one.
        if any(path.glob("*.parquet")) or any(path.glob("*.pq")):
            return "parquet", None
        if any(path.glob("*.inter")):
            return "atomic", None
        raise ValueError(
            f"load_table: cannot infer the format of folder {str(path)!r}: it holds no *.parquet, *.pq or "
            "*.inter files. Pass format='parquet' or format='atomic', or point at a file."
        )
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in _COMPRESSION_SUFFIXES:
        ext = suffixes[-2]
        if ext not in SUPPORTED_FORMATS["csv"]:
            ext = "".join(suffixes[-2:])
    else:
        ext = suffixes[-1] if suffixes else ""
    for fmt, exts in SUPPORTED_FORMATS.items():
        if ext in exts:
            return fmt, (default_sep(path) if fmt == "csv" else None)
    supported = sorted(e for exts in SUPPORTED_FORMATS.values() for e in exts)
    raise ValueError(
        f"load_table: unsupported extension {ext or '(none)'!r} of {str(path)!r}; supported extensions are "
        f"{supported} (CSV/TSV may add {list(_COMPRESSION_SUFFIXES)}). Pass format= one of "
        f"{sorted(SUPPORTED_FORMATS)} to override."
    )


def _check_columns(wanted: Sequence[str], available: Sequence[str], label: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(f"{label}: requested column(s) {missing} not found; available columns are {list(available)}.")


# An integer written as text, optionally with a zero fraction ("12", "-3", "12.0" as written by a float
# column that holds integers and missing cells).
_INTEGER_TEXT = r"[+-]?\d+(?:\.0*)?"


def _ids_from_text(text: pd.Series) -> pd.Series:
    """An identifier column read as text -> exact identifiers.

    pandas infers ``float64`` for an integer column with an empty cell, and float64 holds integers exactly
    only up to 2**53: ids such as 9007199254740992 and 9007199254740993 would become one id. Here:

    - every present value an integer: ``int64`` (no missing cell) or the nullable ``Int64`` (missing cells
      stay missing), exact over the whole int64 range; an integer beyond it keeps its text;
    - every present value some other number: ``float64``, as pandas infers it;
    - otherwise the text as written (missing cells missing), as pandas infers it.

    Vectorised string operations, no per-row Python.
    """
    mask = text.notna().to_numpy()
    present = text[mask].str.strip()
    if len(present) == 0:
        return text
    if present.str.fullmatch(_INTEGER_TEXT).all():
        try:
            ints = present.str.replace(r"\.0*$", "", regex=True).astype(np.int64).to_numpy()
        except (OverflowError, ValueError):  # beyond int64: the text is the exact id
            return text
        if mask.all():
            return pd.Series(ints, index=text.index, name=text.name)
        values = np.zeros(len(text), dtype=np.int64)
        values[mask] = ints
        return pd.Series(pd.arrays.IntegerArray(values, ~mask), index=text.index, name=text.name)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return pd.to_numeric(text)
    return text


def _read_csv(path: Path, sep: str, columns: list[str] | None, id_columns: Sequence[str]) -> pd.DataFrame:
    header = pd.read_csv(path, sep=sep, nrows=0).columns
    if columns is not None:
        _check_columns(columns, header, str(path))
    ids = [c for c in dict.fromkeys(id_columns) if c in header and (columns is None or c in columns)]
    frame = pd.read_csv(path, sep=sep, usecols=columns, dtype={c: str for c in ids})
    for c in ids:
        frame[c] = _ids_from_text(frame[c])
    return frame


def _read_parquet(path: Path, columns: list[str] | None, id_columns: Sequence[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.ParquetDataset(path).schema
    if columns is not None:
        _check_columns(columns, schema.names, str(path))
    frame = pd.read_parquet(path, engine="pyarrow", columns=columns)
    # pandas turns an integer column with nulls into float64 (ids above 2**53 merge); read those id
    # columns again as nullable integers. Without nulls they are plain int64, as before.
    ints = [
        c
        for c in dict.fromkeys(id_columns)
        if c in frame.columns and c in schema.names and pa.types.is_integer(schema.field(c).type)
    ]
    if ints:
        exact = pd.read_parquet(path, engine="pyarrow", columns=ints, dtype_backend="numpy_nullable")
        for c in ints:
            col = exact[c]
            frame[c] = col.array if col.isna().any() else col.to_numpy(dtype=col.dtype.numpy_dtype)
    return frame


def load_table(
    path: PathLike,
    format: str | None = None,
    sep: str | None = None,
    columns: Sequence[str] | None = None,
    id_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Load an interaction table from CSV/TSV, Parquet or RecBole atomic files.

    Args:
        path: File (or Parquet dataset folder / RecBole folder) to read.
        format: ``"csv"``, ``"parquet"`` or ``"atomic"``; inferred from the
            extension when omitted (``.csv``, ``.tsv``, ``.tab``, optionally
            compressed with ``.gz``/``.bz2``/``.xz``/``.zst``/``.zip``;
            ``.parquet``, ``.pq``; ``.inter``).
        sep: CSV field separator. Defaults to a tab for ``.tsv`` / ``.tab``
            (compressed too) and ``","`` otherwise. Only valid for CSV.
        columns: Optional subset of columns to return, in this order.
        id_columns: Columns that hold identifiers (sparse ids, domain values,
            users). They are never read through float64, which merges integer
            ids above 2**53: from CSV they are read as text, then as ``int64``
            / nullable ``Int64`` when every value is an integer (see
            :func:`_ids_from_text`); from Parquet an integer column with nulls
            is a nullable integer column. Names not in the file are ignored.
            Atomic files read ids as text already.

    Returns:
        The table as a DataFrame in file order. CSV dtypes are inferred by
        pandas (except ``id_columns``); atomic files are typed by their headers
        and joined with their user/item files (see :func:`load_atomic`).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown extension or format, a separator given for
            a non-CSV format, or requested columns that do not exist.

    Example:
        >>> df = load_table("events.csv", sep=";", columns=["user_id", "item_id"])  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"load_table: no such file or folder {str(p)!r}")
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise TypeError(f"load_table: columns must be a list of column names, got {columns!r}.")
        columns = list(columns)
    if isinstance(id_columns, str):
        raise TypeError(f"load_table: id_columns must be a list of column names, got {id_columns!r}.")
    if format is None:
        fmt, implied_sep = _infer_format(p)
    else:
        fmt = str(format).lower()
        if fmt == "tsv":
            fmt, implied_sep = "csv", "\t"
        elif fmt not in SUPPORTED_FORMATS:
            raise ValueError(
                f"load_table: unknown format={format!r}; supported formats are {sorted(SUPPORTED_FORMATS)}."
            )
        else:
            implied_sep = default_sep(p)
    if sep is not None and fmt != "csv":
        raise ValueError(f"load_table: sep={sep!r} only applies to CSV files, but {str(p)!r} is read as {fmt}.")

    if fmt == "csv":
        frame = _read_csv(p, implied_sep if sep is None else sep, columns, id_columns)
    elif fmt == "parquet":
        frame = _read_parquet(p, columns, id_columns)
    else:
        frame = load_atomic(p)
    if columns is not None:
        _check_columns(columns, frame.columns, str(p))
        frame = frame[columns]
    return frame
