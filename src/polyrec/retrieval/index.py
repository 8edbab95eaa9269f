"""Per-domain item indexes: the top-k items of a domain's corpus for a batch of user embeddings, with faiss.

A two-tower model scores a (user, item) pair by the inner product of the two embeddings, so retrieval is a
maximum-inner-product search over the item tower's embeddings of one domain (an item has one embedding per
domain). :class:`ItemIndex` holds one domain's corpus, :class:`DomainIndexes` one index per domain, and
:func:`ann_recall` measures how much of the exact top-k an approximate index finds.

Choices made:

- **Two kinds.** ``"exact"`` is ``faiss.IndexFlatIP`` (brute force, exact); ``"hnsw"`` is
  ``faiss.IndexHNSWFlat`` with the inner-product metric (a graph, approximate), with the options ``m``
  (neighbours per node, 32), ``ef_construction`` (200) and ``ef_search`` (128). The metric is always the
  inner product: a score is the model's logit, not a distance.
- **Ids.** faiss numbers the vectors ``0 .. C-1`` in the order they were added; the index keeps its own
  ``int64`` array mapping that position to the item id (no ``IndexIDMap``), so the faiss file holds only
  the vectors and graph, and the ids are stored next to it as safetensors. Ids are the catalogue's item
  numbers: unique and non-negative (``-1`` marks padding in results).
- **Padding.** :meth:`ItemIndex.search` always returns ``k`` columns, best first. When fewer than ``k``
  items are left (``k`` larger than the corpus, exclusions, or an HNSW search that reaches fewer nodes),
  the missing places hold id ``-1`` and score ``-inf``, after every real result. ``k`` larger than the
  corpus is therefore allowed.
- **Exclusions** (the items a user already has) are removed after the search: faiss is asked for
  ``k + max_q |exclude[q]|`` results (capped at the corpus size) and the excluded ids are dropped, so an
  exact index still returns the exact top-k of the items that are not excluded.
- **Files.** :meth:`ItemIndex.save` writes a folder: ``index-<token>.faiss`` (faiss' own binary format,
  :func:`faiss.write_index`), ``ids-<token>.safetensors`` and ``manifest.json`` (kind, options, dim,
  count, the two file names and their sha256). The data files get a fresh ``<token>`` on every save and
  the manifest is written last, atomically, so a save that fails half-way leaves the previous manifest
  pointing at the previous, untouched files; files no manifest names are removed after a successful save.
  :meth:`ItemIndex.load` checks both files against their sha256 before reading either. Nothing is
  unpickled. The checksum catches damage, not a crafted file: faiss' reader is not hardened against
  malicious input, so load only indexes from sources you trust as you would a model file.
- :class:`DomainIndexes` saves one subfolder per domain, ``domain-<NNN>-<token>`` (numbered, so domain
  names may hold any character), and ``domains.json`` listing the names, their folders and the sha256 of
  each folder's manifest, written last in the same way.

``faiss`` is imported only when an index is built, searched, saved or loaded (``pip install
'polyrec[faiss]'``).

Example:
    >>> import numpy as np
    >>> emb = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    >>> index = ItemIndex(emb, np.arange(100) * 10, kind="exact")  # doctest: +SKIP
    >>> scores, ids = index.search(emb[:2], k=5, exclude=[{0}, set()])  # doctest: +SKIP
    >>> ids.shape, int(ids[1, 0])  # doctest: +SKIP
    ((2, 5), 10)
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.cache import atomic_write, remove_abandoned
from ..registry import unknown_name
from ..safeio import ArtifactError, load_tensors, read_json, save_tensors, sha256_file, verify_files, write_json

__all__ = ["KINDS", "DomainIndexes", "ItemIndex", "ItemIndexError", "ann_recall"]

KINDS = ("exact", "hnsw")
HNSW_DEFAULTS = {"m": 32, "ef_construction": 200, "ef_search": 128}

FORMAT = "polyrec-item-index"
DOMAINS_FORMAT = "polyrec-domain-indexes"
VERSION = 1
MANIFEST = "manifest.json"
DOMAINS_FILE = "domains.json"
_DATA_FILE = re.compile(r"^(index-[0-9a-f]+\.faiss|ids-[0-9a-f]+\.safetensors)$")
_DOMAIN_FOLDER = re.compile(r"^domain-\d{3,}-[0-9a-f]+$")

ArrayLike = Tensor | np.ndarray


class ItemIndexError(ArtifactError):
    """A saved item index that is missing, damaged, of another format, or inconsistent with its manifest."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            f"polyrec's item indexes need faiss, which is not installed ({exc}); install it with "
            "pip install 'polyrec[faiss]'"
        ) from None
    return faiss


# ----------------------------------------------------------------------------------------- validation


def _float_matrix(x: Any, what: str) -> np.ndarray:
    """``x`` (a tensor or array ``[N, E]`` of a floating dtype) as a C-contiguous float32 array."""
    if isinstance(x, Tensor):
        if not torch.is_floating_point(x):
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
        x = x.detach().to("cpu", torch.float32).numpy()
    elif isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{what} must be a floating-point array, got dtype {x.dtype}")
    else:
        raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D [rows, dim], got shape {list(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_ids(ids: Any, count: int, error: type[Exception] = ValueError) -> np.ndarray:
    """``ids`` as an int64 array ``[count]`` of unique, non-negative item ids."""
    if isinstance(ids, Tensor):
        ids = ids.detach().to("cpu").numpy()
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"ids must be a torch.Tensor or numpy.ndarray, got {type(ids).__name__}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers (the item indices), got dtype {ids.dtype}")
    if ids.ndim != 1 or ids.shape[0] != count:
        raise error(f"ids must have shape [{count}] (one per embedding row), got shape {list(ids.shape)}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if count and ids.min() < 0:
        raise error(f"ids must be non-negative item indices, got {int(ids.min())} (-1 marks padding in search results)")
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.shape[0] != count:
        first = int(np.argmax(counts > 1))
        raise error(
            f"ids must be unique, but item id {int(uniq[first])} appears {int(counts[first])} times "
            f"({count - uniq.shape[0]} duplicates in all); give each item of the domain's corpus once"
        )
    return ids


def _positive_int(value: Any, what: str, error: type[Exception] = ValueError) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{what} must be a positive int, got {value!r}")
    if value < 1:
        raise error(f"{what} must be >= 1, got {value}")
    return int(value)


def _check_kind(kind: Any, error: type[Exception] = ValueError) -> str:
    if kind not in KINDS:
        raise error(f"unknown index kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return str(kind)


def _resolve_options(kind: str, options: Mapping[str, Any], error: type[Exception] = ValueError) -> dict[str, int]:
    """The HNSW options with their defaults filled in (``{}`` for an exact index, which takes none)."""
    unknown = sorted(set(options) - set(HNSW_DEFAULTS))
    if unknown:
        raise error(f"unknown index option {unknown[0]!r}; valid options: {', '.join(HNSW_DEFAULTS)} (hnsw only)")
    given = {k: v for k, v in options.items() if v is not None}
    if kind == "exact":
        if given:
            raise error(
                f"the exact index takes no options, got {sorted(given)}; they belong to kind='hnsw' (or drop them)"
            )
        return {}
    return {k: _positive_int(given.get(k, default), k, error) for k, default in HNSW_DEFAULTS.items()}


# ------------------------------------------------------------------------------------------ one index


class ItemIndex:
    """The item embeddings of one domain's corpus, searchable by inner product.

    Args:
        embeddings: the item tower's embeddings of the corpus, one row per item (any floating dtype; stored
            as float32). Every value must be finite.
        ids: the item index of each row: integers, unique, non-negative.
        kind: ``"exact"`` (``faiss.IndexFlatIP``) or ``"hnsw"`` (``faiss.IndexHNSWFlat``, approximate).
        m: HNSW only: neighbours per node (default 32).
        ef_construction: HNSW only: candidate list size while building (default 200).
        ef_search: HNSW only: candidate list size while searching (default 128); larger is slower and finds
            more of the exact top-k.

    Shape:
        embeddings ``[C, E]``; ids ``[C]``.

    Raises:
        ValueError: a wrong shape, duplicate or negative ids, a non-finite embedding, an unknown kind, an
            option that is not positive or is given to an exact index.
        TypeError: an input of the wrong type or dtype.
        ImportError: faiss is not installed.
    """

    def __init__(
        self,
        embeddings: ArrayLike,
        ids: ArrayLike,
        kind: str = "exact",
        *,
        m: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        kind = _check_kind(kind)
        options = _resolve_options(kind, {"m": m, "ef_construction": ef_construction, "ef_search": ef_search})
        emb = _float_matrix(embeddings, "embeddings")
        count, dim = emb.shape
        if count < 1 or dim < 1:
            raise ValueError(f"embeddings must have at least one row and one column, got shape {list(emb.shape)}")
        item_ids = _check_ids(ids, count)
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise ValueError(
                f"embeddings must be finite, but the row of item id {int(item_ids[row])} (row {row}) holds "
                f"NaN or infinity ({int((~finite).sum())} such rows); check the item tower's output"
            )
        faiss = _faiss()
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, options["m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = options["ef_construction"]
        index.add(emb)
        self._set(index, item_ids, kind, options)

    def _set(self, index: Any, ids: np.ndarray, kind: str, options: dict[str, int]) -> None:
        if kind == "hnsw":
            index.hnsw.efSearch = options["ef_search"]
        ids.setflags(write=False)
        self._index, self._ids, self._kind, self._options = index, ids, kind, dict(options)

    # ------------------------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def dim(self) -> int:
        """The embedding size ``E``."""
        return int(self._index.d)

    @property
    def kind(self) -> str:
        """``"exact"`` or ``"hnsw"``."""
        return self._kind

    @property
    def options(self) -> dict[str, int]:
        """The HNSW options (``m``, ``ef_construction``, ``ef_search``); empty for an exact index."""
        return dict(self._options)

    @property
    def ids(self) -> np.ndarray:
        """The item id of each row, in the order the embeddings were given (read-only)."""
        return self._ids

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self._options.items())
        return f"ItemIndex(kind={self._kind!r}, count={len(self)}, dim={self.dim}{opts})"

    # ----------------------------------------------------------------------------------------- search

    def search(
        self, queries: ArrayLike, k: int, exclude: Sequence[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items with the largest inner product with each query, best first.

        Args:
            queries: user embeddings, one row per query (any floating dtype; searched as float32).
            k: results per query, ``>= 1``; may exceed the corpus size (the rest is padding).
            exclude: per query, the item ids not to return (its training positives, say); ``None``: none.
                Ids that are not in the corpus are ignored.

        Returns:
            ``(scores, ids)``: float32 inner products and int64 item ids. Where fewer than ``k`` items are
            left, the row ends in padding: id ``-1`` with score ``-inf``.

        Shape:
            queries ``[Q, E]``; scores and ids ``[Q, k]``.

        Raises:
            ValueError: ``k < 1``, a query of another dimension than the index, a non-finite query, or an
                ``exclude`` whose length is not ``Q``.
        """
        k = _positive_int(k, "k")
        q = _float_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(
                f"queries have dimension {q.shape[1]} but the index holds embeddings of dimension {self.dim}; "
                "embed the queries with the user tower of the model that embedded the items"
            )
        finite = np.isfinite(q).all(axis=1)
        if not finite.all():
            raise ValueError(f"queries must be finite, but query row {int(np.argmin(finite))} holds NaN or infinity")
        n_q = q.shape[0]
        banned: list[np.ndarray] | None = None
        if exclude is not None:
            if len(exclude) != n_q:
                raise ValueError(f"exclude must hold one set per query ({n_q}), got {len(exclude)}")
            banned = [np.fromiter((int(i) for i in ex), dtype=np.int64) for ex in exclude]
        extra = max((b.shape[0] for b in banned), default=0) if banned else 0
        depth = min(len(self), k + extra)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        out_ids = np.full((n_q, k), -1, dtype=np.int64)
        if n_q == 0:
            return out_scores, out_ids
        scores, pos = self._index.search(q, depth)
        valid = pos >= 0
        found = np.where(valid, self._ids[np.where(valid, pos, 0)], -1)
        if banned is not None:
            for row, ban in enumerate(banned):
                if ban.shape[0]:
                    valid[row] &= ~np.isin(found[row], ban)
        # Move the kept results to the front of each row, keeping their order (best first).
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(valid, order, axis=1)
        width = order.shape[1]
        out_ids[:, :width] = np.where(keep, np.take_along_axis(found, order, axis=1), -1)
        out_scores[:, :width] = np.where(keep, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_scores, out_ids

    # ------------------------------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write the index to the folder ``path`` (created if missing); an earlier index there is replaced.

        The data files get new names on every save and the manifest, written last and atomically, names
        them: if the save fails, the folder still holds the previous index, whole. Data files that the new
        manifest does not name are removed once it is in place.

        Returns:
            The folder, as a :class:`~pathlib.Path`.
        """
        faiss = _faiss()
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"cannot save an item index to {str(folder)!r}: it is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        remove_abandoned(folder)
        token = secrets.token_hex(8)
        index_file, ids_file = f"index-{token}.faiss", f"ids-{token}.safetensors"
        try:
            atomic_write(folder / index_file, lambda tmp: faiss.write_index(self._index, str(tmp)))
            save_tensors(folder / ids_file, {"ids": torch.from_numpy(self._ids.copy())})
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "kind": self._kind,
                "metric": "inner_product",
                "options": self._options,
                "dim": self.dim,
                "count": len(self),
                "index_file": index_file,
                "ids_file": ids_file,
                "files": {name: sha256_file(folder / name) for name in (index_file, ids_file)},
                "faiss_version": getattr(faiss, "__version__", "unknown"),
            }
            write_json(folder / MANIFEST, manifest)
        except BaseException:
            for name in (index_file, ids_file):
                (folder / name).unlink(missing_ok=True)
            raise
        for stale in folder.iterdir():
            if _DATA_FILE.match(stale.name) and stale.name not in (index_file, ids_file):
                stale.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        """Read an index written by :meth:`save`, after checking its files against the manifest's sha256.

        Raises:
            ItemIndexError: the folder, the manifest or a data file is missing; a file does not match its
                sha256; the manifest is of another format or version, names an unknown kind, or disagrees
                with the files.
            ImportError: faiss is not installed.
        """
        faiss = _faiss()
        folder = Path(path)
        if not folder.is_dir():
            raise ItemIndexError(f"no item index at {str(folder)!r}: the folder does not exist")
        where = str(folder / MANIFEST)
        try:
            manifest = read_json(folder / MANIFEST, "item index manifest")
        except ArtifactError as exc:
            raise ItemIndexError(f"{exc}; save the index again (ItemIndex.save)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ItemIndexError(
                f"{where!r} is not a polyrec item index manifest (format {found!r}, expected {FORMAT!r})"
            )
        if manifest.get("version") != VERSION:
            raise ItemIndexError(
                f"item index {str(folder)!r} has format version {manifest.get('version')!r}; this polyrec reads "
                f"version {VERSION}: rebuild the index with this polyrec"
            )
        kind = _check_kind(manifest.get("kind"), ItemIndexError)
        options = _resolve_options(kind, manifest.get("options") or {}, ItemIndexError)
        index_file, ids_file, files = manifest.get("index_file"), manifest.get("ids_file"), manifest.get("files")
        if not isinstance(files, dict) or set(files) != {index_file, ids_file}:
            raise ItemIndexError(
                f"{where!r} must list exactly its index file and ids file with their sha256, got "
                f"{sorted(files) if isinstance(files, dict) else files!r}"
            )
        verify_files(folder, files, "item index file", ItemIndexError)
        dim, count = manifest.get("dim"), manifest.get("count")
        _positive_int(dim, f"'dim' in {where!r}", ItemIndexError)
        _positive_int(count, f"'count' in {where!r}", ItemIndexError)

        try:
            index = faiss.read_index(str(folder / index_file))
        except RuntimeError as exc:
            raise ItemIndexError(
                f"item index file {str(folder / index_file)!r} is not a readable faiss index ({exc})"
            ) from None
        expected = faiss.IndexFlatIP if kind == "exact" else faiss.IndexHNSWFlat
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ItemIndexError(
                f"item index file {str(folder / index_file)!r} holds a {type(index).__name__} (metric "
                f"{index.metric_type}), not the inner-product {expected.__name__} its manifest's kind {kind!r} means"
            )
        if index.d != dim or index.ntotal != count:
            raise ItemIndexError(
                f"item index file {str(folder / index_file)!r} holds {index.ntotal} vectors of dimension {index.d}, "
                f"but its manifest says {count} of dimension {dim}"
            )
        tensors, _ = load_tensors(folder / ids_file, "item index ids file")
        ids = tensors.get("ids")
        if ids is None or ids.dtype != torch.int64:
            raise ItemIndexError(
                f"item index ids file {str(folder / ids_file)!r} must hold an int64 tensor 'ids', got "
                f"{'none' if ids is None else ids.dtype}"
            )
        try:
            item_ids = _check_ids(ids.numpy().copy(), count, ItemIndexError)
        except (TypeError, ValueError) as exc:
            raise ItemIndexError(f"item index ids file {str(folder / ids_file)!r}: {exc}") from None
        obj = cls.__new__(cls)
        obj._set(index, item_ids, kind, options)
        return obj


def ann_recall(exact: ItemIndex, ann: ItemIndex, queries: ArrayLike, k: int) -> float:
    """How much of the exact top-k an approximate index finds: the mean over queries of
    ``|top-k(ann) ∩ top-k(exact)| / k``.

    Args:
        exact: the exact index of the corpus (the reference).
        ann: an approximate index of the same corpus (same ids).
        queries: the queries to average over.
        k: the cut-off, ``1 <= k <= len(exact)``.

    Shape:
        queries ``[Q, E]`` with ``Q >= 1``.

    Raises:
        ValueError: the two indexes hold different items or dimensions, ``k`` is out of range, no queries.
    """
    k = _positive_int(k, "k")
    if exact.dim != ann.dim:
        raise ValueError(f"the indexes have different dimensions: exact {exact.dim}, ann {ann.dim}")
    if len(exact) != len(ann) or not np.array_equal(np.sort(exact.ids), np.sort(ann.ids)):
        raise ValueError(
            f"the indexes hold different items ({len(exact)} and {len(ann)} ids); recall compares two indexes "
            "of the same corpus"
        )
    if k > len(exact):
        raise ValueError(f"k must be at most the corpus size {len(exact)} for a recall, got {k}")
    _, truth = exact.search(queries, k)
    if truth.shape[0] == 0:
        raise ValueError("ann_recall needs at least one query, got 0")
    _, approx = ann.search(queries, k)
    hits = [np.intersect1d(t[t >= 0], a[a >= 0]).shape[0] for t, a in zip(truth, approx)]
    return float(np.mean(hits) / k)


# ------------------------------------------------------------------------------------- one per domain


class DomainIndexes(Mapping[str, ItemIndex]):
    """One :class:`ItemIndex` per domain, by domain name (in the order given).

    Args:
        indexes: ``{domain name: index}``; at least one.
    """

    def __init__(self, indexes: Mapping[str, ItemIndex]) -> None:
        if not isinstance(indexes, Mapping) or not indexes:
            raise ValueError(f"DomainIndexes needs a non-empty mapping of domain name to ItemIndex, got {indexes!r}")
        for name, index in indexes.items():
            if not isinstance(name, str):
                raise TypeError(f"domain names must be str, got {name!r} ({type(name).__name__})")
            if not isinstance(index, ItemIndex):
                raise TypeError(f"the index of domain {name!r} must be an ItemIndex, got {type(index).__name__}")
        self._indexes = dict(indexes)

    @classmethod
    def build(
        cls,
        item_embeddings: Mapping[str, tuple[ArrayLike, ArrayLike]],
        kind: str = "exact",
        **options: int,
    ) -> DomainIndexes:
        """Build an index of ``kind`` for each domain.

        Args:
            item_embeddings: ``{domain name: (embeddings [C_d, E], ids [C_d])}``, the item tower's embeddings
                of each domain's corpus and their item ids.
            kind: ``"exact"`` or ``"hnsw"``, for every domain.
            **options: the HNSW options of :class:`ItemIndex` (``m``, ``ef_construction``, ``ef_search``).

        Raises:
            ValueError, TypeError: as :class:`ItemIndex`, with the domain named.
        """
        if not isinstance(item_embeddings, Mapping) or not item_embeddings:
            raise ValueError("item_embeddings must be a non-empty mapping of domain name to (embeddings, ids)")
        _check_kind(kind)
        _resolve_options(kind, options)
        built = {}
        for name, pair in item_embeddings.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(
                    f"item_embeddings[{name!r}] must be a pair (embeddings, ids), got {type(pair).__name__}"
                )
            try:
                built[name] = ItemIndex(pair[0], pair[1], kind, **options)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"domain {name!r}: {exc}") from exc
        return cls(built)

    def __getitem__(self, domain: str) -> ItemIndex:
        try:
            return self._indexes[domain]
        except (KeyError, TypeError):
            raise unknown_name("domain", domain, self._indexes) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._indexes)

    def __len__(self) -> int:
        return len(self._indexes)

    def __repr__(self) -> str:
        return f"DomainIndexes({self._indexes!r})"

    def search(
        self, domain: str, queries: ArrayLike, k: int, exclude: Sequence[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`ItemIndex.search` in the index of ``domain`` (an unknown one is a ``KeyError`` listing the
        valid ones)."""
        return self[domain].search(queries, k, exclude)

    def save(self, path: str | Path) -> Path:
        """Write every domain's index under the folder ``path``; an earlier set of indexes there is replaced.

        Each domain goes to a new subfolder ``domain-<NNN>-<token>``; ``domains.json``, written last and
        atomically, maps the names to them, so a save that fails leaves the previous set whole. Subfolders
        it does not name are removed once it is in place.

        Returns:
            The folder, as a :class:`~pathlib.Path`.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise ValueError(f"cannot save domain indexes to {str(root)!r}: it is a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
        remove_abandoned(root)
        token = secrets.token_hex(4)
        written: list[Path] = []
        entries = []
        try:
            for i, (name, index) in enumerate(self._indexes.items()):
                folder = root / f"domain-{i:03d}-{token}"
                written.append(folder)
                index.save(folder)
                entries.append({"name": name, "folder": folder.name, "manifest_sha256": sha256_file(folder / MANIFEST)})
            write_json(root / DOMAINS_FILE, {"format": DOMAINS_FORMAT, "version": VERSION, "domains": entries})
        except BaseException:
            for folder in written:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        kept = {e["folder"] for e in entries}
        for stale in root.iterdir():
            if stale.is_dir() and _DOMAIN_FOLDER.match(stale.name) and stale.name not in kept:
                shutil.rmtree(stale, ignore_errors=True)
        return root

    @classmethod
    def load(cls, path: str | Path) -> DomainIndexes:
        """Read indexes written by :meth:`save`, checking every file against its sha256.

        Raises:
            ItemIndexError: a missing or damaged file, or a listing of another format or version.
        """
        root = Path(path)
        where = str(root / DOMAINS_FILE)
        try:
            listing = read_json(root / DOMAINS_FILE, "domain index listing")
        except ArtifactError as exc:
            raise ItemIndexError(f"{exc}; save the indexes again (DomainIndexes.save)") from None
        if not isinstance(listing, dict) or listing.get("format") != DOMAINS_FORMAT:
            found = listing.get("format") if isinstance(listing, dict) else type(listing).__name__
            raise ItemIndexError(f"{where!r} is not a polyrec domain index listing (format {found!r})")
        if listing.get("version") != VERSION:
            raise ItemIndexError(
                f"domain indexes {str(root)!r} have format version {listing.get('version')!r}; this polyrec reads "
                f"version {VERSION}: rebuild them with this polyrec"
            )
        domains = listing.get("domains")
        if not isinstance(domains, list) or not domains:
            raise ItemIndexError(f"{where!r} lists no domains")
        indexes: dict[str, ItemIndex] = {}
        for entry in domains:
            if not isinstance(entry, dict):
                raise ItemIndexError(f"{where!r} has a domain entry that is not an object: {entry!r}")
            name, folder = entry.get("name"), entry.get("folder")
            if not isinstance(name, str) or name in indexes:
                raise ItemIndexError(f"{where!r} lists a domain name that is not a string or appears twice: {name!r}")
            if not isinstance(folder, str) or not _DOMAIN_FOLDER.match(folder):
                raise ItemIndexError(f"{where!r} lists an unexpected folder {folder!r} for domain {name!r}")
            manifest = root / folder / MANIFEST
            if not manifest.is_file():
                raise ItemIndexError(f"the index of domain {name!r} is missing: {str(manifest)!r} does not exist")
            if sha256_file(manifest) != entry.get("manifest_sha256"):
                raise ItemIndexError(
                    f"the manifest of domain {name!r}, {str(manifest)!r}, does not match {where!r} (sha256): it "
                    "was changed after it was written; save the indexes again"
                )
            try:
                indexes[name] = ItemIndex.load(root / folder)
            except ItemIndexError as exc:
                raise ItemIndexError(f"domain {name!r}: {exc}") from None
        return cls(indexes)
