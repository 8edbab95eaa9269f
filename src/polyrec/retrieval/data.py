"""The multi-domain retrieval data sets of MovieLens (ADI's setting): positives, splits, histories, corpora.

:func:`build_retrieval_data` turns a :class:`RetrievalDataConfig` into a :class:`RetrievalData`: every tensor
a two-tower model, its sampled-softmax loss and the full-corpus metrics need, in the conventions of
:mod:`polyrec.retrieval.inputs`. Two named protocols, :data:`RETRIEVAL_PROTOCOLS`, fix the configs that
``docs/retrieval_protocols.md`` documents (with their measured statistics); :func:`retrieval_config` reads
one.

Every choice, stated once:

- **Catalogue.** Users are every user of the ratings frame, numbered ``0 .. U-1`` by their id (numerically
  when every id is an integer, as MovieLens' are, otherwise as strings). Items are every rated movie,
  numbered ``0 .. I-1`` by their ``item_id`` by the same rule (MovieLens titles with their year: string
  order); ``items[i]`` is the title of item ``i``. Users or items without a positive stay in the catalogue.
- **Vocabularies.** Each field's vocabulary ``vocab[field]`` is a list of strings whose index ``0`` is the
  reserved :data:`RESERVED` slot (out-of-vocabulary, missing, and padding for the multi-valued genres); the
  values follow in sorted order (numerically when every value is an integer, otherwise as strings), so an
  index is the position in that list. Numbers are written as integers where they are integral (age ``18``
  → ``"18"``, release year ``1995.0`` → ``"1995"``). The id fields follow the same rule: the user-id field
  index of user ``u`` is ``u + 1`` and the item-id field index of item ``i`` is ``i + 1``, which is also the
  value a history slot holds for item ``i``, so a model may share one id table between the history and the
  item tower. ``item_multi`` holds a movie's genres in their original order, padded with ``0``.
- **Positives.** A rating ``>= min_rating`` is a positive; there are no explicit negatives (the loss samples
  them). Should a user have two positives for one item (two MovieIDs under one title, as in ML-100K), only
  the earliest is kept, so an item is at most one positive of a user.
- **Domains.** A positive's domain is the group of ``domain_groups`` that holds its ``domain_column`` value (a
  user attribute when ``domain_by`` is ``user``, an item attribute when it is ``item``). Values are compared
  as strings (``18``, ``18.0`` and ``"18"`` are one value; a missing value reads as ``""``). Every value
  that occurs among the positives must be in exactly one group, and every group must hold a positive;
  ratings below the threshold whose value is in no group count towards no corpus. Domains are numbered in
  the order of the ``domain_groups`` keys.
- **Order and split.** Interactions are sorted by (user, timestamp), ties in time in the order of the
  source file (PROTOCOLS.md R1). Within each (user, domain) pair, in that order: the last positive is the
  test query, the second-to-last the
  validation query, the rest train. A pair with fewer than ``min_positives`` positives contributes only
  training rows (its user has no query in that domain); with ``min_positives`` of 1 or 2 a pair of one
  positive yields a test query only, a pair of two a test and a validation query.
- **History (the leakage rule).** The history of an interaction is the user's most recent positives of every
  domain and every split whose timestamp is *strictly* earlier than its own, as ``item + 1``, most recent
  first (ties in time latest in file order first), cut to ``history_len`` and padded with ``0``. Positives
  with the same timestamp are never history of each other, so no query sees its own target or anything
  rated in the same second. Rows are never rewritten per split: with item-grouped domains (users shared)
  the validation or test positive of one domain may appear in the history of a later training row of
  another domain, exactly as it would in a live system; it never appears in the history of its own query.
- **Corpus.** ``corpus[d]`` is the sorted item indices of domain ``d``'s catalogue. With user-grouped
  domains (items shared) every domain's catalogue is the whole item catalogue (every rated movie: 3,706 on
  ML-1M, PROTOCOLS.md R1); with item-grouped domains (items disjoint) it is the items whose column value is
  in the group. Ranking is over the domain's full corpus; ``targets`` and ``exclude`` give
  positions in it.
- **Masking.** ``exclude(split, d)`` lists, for each query of ``split`` in domain ``d``, the corpus positions of
  the user's earlier positives in ``d`` to mask: the training positives for validation, the training and
  validation positives for test. A query's own target is never masked.
- **Fingerprint.** A sha256 over the config (as sorted JSON, with the domain groups in their order, without
  ``path``), the vocabularies and the bytes of every built tensor, with :data:`FORMAT_VERSION`. It hashes
  what the model sees rather than the source files, so the same ratings read from the registry wheel or from
  a GroupLens zip have one fingerprint, and a change in the code that builds the data changes it.

Example:
    >>> data = build_retrieval_data(retrieval_config("ml1m-age3-retrieval"))  # doctest: +SKIP
    >>> rows = data.queries("test", 0)  # doctest: +SKIP
    >>> users = data.user_inputs(rows)  # doctest: +SKIP
    >>> items = data.item_inputs(data.corpus[0], torch.zeros(len(data.corpus[0]), dtype=torch.long))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import field_error, from_dict, param, to_dict, validate
from ..data.config import MOVIELENS_ALIASES, MOVIELENS_NAMES, movielens_name
from ..data.protocols import UnknownPresetError
from ..data.sources import load_movielens
from .inputs import ItemInputs, UserInputs

__all__ = [
    "FORMAT_VERSION",
    "GENRE3_GROUPS",
    "ITEM_COLUMNS",
    "ITEM_FIELDS",
    "MULTI_FIELD",
    "RESERVED",
    "RETRIEVAL_PROTOCOLS",
    "SPLITS",
    "USER_COLUMNS",
    "USER_FIELDS",
    "RetrievalData",
    "RetrievalDataConfig",
    "build_retrieval_data",
    "list_retrieval_protocols",
    "retrieval_config",
]

#: Bumped whenever the same config builds different tensors (it is part of the fingerprint).
FORMAT_VERSION = 1
#: The split names, in the order of their codes in ``RetrievalData.split`` (0 train, 1 val, 2 test).
SPLITS = ("train", "val", "test")
#: Index ``0`` of every vocabulary: out-of-vocabulary, missing, and padding of the multi-valued field.
RESERVED = "<oov>"
#: The categorical user features, in the column order of ``user_sparse`` (column 0 the user id).
USER_FIELDS = ("user_id", "gender", "age", "occupation", "zip_code")
#: The categorical item features, in the column order of ``item_sparse`` (column 0 the item id).
ITEM_FIELDS = ("item_id", "release_year")
#: The multi-valued item feature (``"|"``-joined in the frame).
MULTI_FIELD = "genres"
#: Frame columns that describe a user (may define user-grouped domains).
USER_COLUMNS = ("user_id", "gender", "age", "occupation", "zip_code")
#: Frame columns that describe an item with one value (may define item-grouped domains).
ITEM_COLUMNS = ("item_id", "title", "release_year", "first_genre")

_P2_AGE_GROUPS: dict[str, list[Any]] = {"0": [1, 18], "1": [25], "2": [35, 45, 50, 56]}

#: The three first-genre domains of ``ml1m-genre3-retrieval`` (see docs/retrieval_protocols.md for the
#: shares measured on ML-1M): serious drama; comedy and family entertainment; action and the suspense
#: genres (crime, thriller, horror, mystery, noir, science fiction, western).
GENRE3_GROUPS: dict[str, list[Any]] = {
    "drama": ["Drama", "Romance", "War", "Documentary"],
    "comedy_family": ["Comedy", "Animation", "Children's", "Musical", "Fantasy"],
    "action_thriller": [
        "Action",
        "Adventure",
        "Crime",
        "Horror",
        "Thriller",
        "Film-Noir",
        "Mystery",
        "Sci-Fi",
        "Western",
    ],
}

#: The named retrieval protocols: plain :class:`RetrievalDataConfig` data (``from_dict`` reads them).
RETRIEVAL_PROTOCOLS: dict[str, dict[str, Any]] = {
    # ADI's setting on MovieLens-1M: P2's age groups, users disjoint across domains, items shared.
    "ml1m-age3-retrieval": {
        "name": "ml-1m",
        "min_rating": 4.0,
        "domain_by": "user",
        "domain_column": "age",
        "domain_groups": _P2_AGE_GROUPS,
        "history_len": 20,
        "min_positives": 3,
    },
    # The opposite overlap: three groups of the movie's first genre, items disjoint, users shared.
    "ml1m-genre3-retrieval": {
        "name": "ml-1m",
        "min_rating": 4.0,
        "domain_by": "item",
        "domain_column": "first_genre",
        "domain_groups": GENRE3_GROUPS,
        "history_len": 20,
        "min_positives": 3,
    },
}

_N_EXAMPLES = 8


# --------------------------------------------------------------------------------------------- config


def _key(value: Any) -> str:
    """The string a raw value is compared as: integral numbers as integers, missing as ``""``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _keys(values: pd.Series) -> np.ndarray:
    """:func:`_key` of every value of a column, vectorised.

    Shape:
        values ``[n]``; returns ``[n]`` object array of str.
    """
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.full(len(v), "", dtype=object)
        integral = np.isfinite(v) & (v == np.round(v))
        out[integral] = v[integral].astype(np.int64).astype(str)
        other = ~integral & ~np.isnan(v)
        out[other] = v[other].astype(str)
        return out
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.astype(str).to_numpy(dtype=object)
    return values.astype(object).where(values.notna(), "").astype(str).to_numpy(dtype=object)


def _non_empty(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"{value!r} is not allowed; must be a non-empty string"


def _finite(value: float) -> str | None:
    return None if np.isfinite(value) else f"{value!r} is not allowed; must be a finite number"


def _groups_rule(groups: dict[str, list[Any]]) -> str | None:
    if not groups:
        return f"{groups!r} is not allowed; name at least one domain as name: [column values]"
    for name, values in groups.items():
        if not name:
            return f"{groups!r} is not allowed; every domain needs a non-empty name"
        if not values:
            return (
                f"{groups!r} is not allowed; domain {name!r} lists no column values: give it at least one, or remove it"
            )
    return None


@dataclass(frozen=True)
class RetrievalDataConfig:
    """Which MovieLens data, which positives and which domains a retrieval data set holds.

    Args:
        name: the MovieLens data set, ``ml-1m`` or ``ml-100k`` (also spelt ``movielens-1m`` /
            ``movielens-100k``), as :func:`~polyrec.data.sources.load_movielens` takes it.
        path: where the data is (:func:`~polyrec.data.sources.load_movielens`'s ``path``): the registry
            wheel, a GroupLens zip or folder; ``None`` uses the pinned wheel from the cache.
        min_rating: a rating ``>= min_rating`` is a positive.
        domain_by: whether the domain is a property of the ``user`` (users disjoint across domains) or of
            the ``item`` (items disjoint).
        domain_column: the frame column that defines the domain: one of :data:`USER_COLUMNS` for
            ``domain_by: user``, of :data:`ITEM_COLUMNS` for ``domain_by: item``.
        domain_groups: domain name → the column values it holds (compared as strings, so ``18`` and
            ``"18"`` are one value). Each value in at most one group; every value among the positives must
            be in one (checked when the data is built).
        history_len: how many earlier positives the user side carries (``L``).
        min_positives: a (user, domain) pair needs this many positives to have a validation and a test
            query; one with fewer contributes only training rows.

    Example:
        >>> cfg = from_dict(RetrievalDataConfig, {"history_len": 50})
        >>> (cfg.domain_column, cfg.history_len)
        ('age', 50)
    """

    name: str = param("ml-1m", rule=_non_empty)
    path: str | None = param(None, rule=_non_empty)
    min_rating: float = param(4.0, rule=_finite)
    domain_by: Literal["user", "item"] = "user"
    domain_column: str = param("age", rule=_non_empty)
    domain_groups: dict[str, list[Any]] = param(
        default_factory=lambda: copy.deepcopy(_P2_AGE_GROUPS), rule=_groups_rule
    )
    history_len: int = param(20, ge=1)
    min_positives: int = param(3, ge=1)

    def __post_init__(self) -> None:
        if isinstance(self.name, str) and self.name:
            canonical = movielens_name(self.name)
            if canonical is None:
                raise field_error(
                    "name",
                    self.name,
                    f"must be one of {', '.join(map(repr, MOVIELENS_NAMES))} "
                    f"(also spelt {', '.join(map(repr, MOVIELENS_ALIASES))})",
                )
            object.__setattr__(self, "name", canonical)
        own, other, other_columns = (
            (USER_COLUMNS, "item", ITEM_COLUMNS) if self.domain_by == "user" else (ITEM_COLUMNS, "user", USER_COLUMNS)
        )
        if self.domain_column not in own:
            hint = f" ({self.domain_column!r} describes the {other}: set domain_by: {other})"
            hint = hint if self.domain_column in other_columns else ""
            raise field_error(
                "domain_column",
                self.domain_column,
                f"with domain_by {self.domain_by!r} it must be one of {', '.join(map(repr, own))}{hint}",
            )
        seen: dict[str, str] = {}
        for group, values in (self.domain_groups or {}).items():
            for value in values or ():
                key = _key(value)
                if key in seen and seen[key] != group:
                    raise field_error(
                        "domain_groups",
                        dict(self.domain_groups),
                        f"value {key!r} of {self.domain_column!r} is in two groups ({seen[key]!r} and {group!r}); "
                        "each value belongs to exactly one domain: remove it from one of them",
                    )
                seen[key] = group

    def key_data(self) -> dict[str, Any]:
        """The config as plain data with the domain groups as an ordered list of ``[name, values]`` pairs
        (the group order is the domain numbering, which sorted JSON would erase)."""
        data = to_dict(self)
        data["domain_groups"] = [[name, [_key(v) for v in values]] for name, values in self.domain_groups.items()]
        return data


def list_retrieval_protocols() -> list[str]:
    """The names of :data:`RETRIEVAL_PROTOCOLS`, sorted."""
    return sorted(RETRIEVAL_PROTOCOLS)


def retrieval_config(name: str, **overrides: Any) -> RetrievalDataConfig:
    """The config of retrieval protocol ``name``, with ``overrides`` (config keys) applied.

    Raises:
        UnknownPresetError: for an unknown name, with the close matches and the valid names.
        ConfigError: for an unknown override key or a value it does not allow.

    Example:
        >>> retrieval_config("ml1m-genre3-retrieval").domain_column
        'first_genre'
    """
    if name not in RETRIEVAL_PROTOCOLS:
        close = difflib.get_close_matches(name, RETRIEVAL_PROTOCOLS, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPresetError(
            f"unknown retrieval protocol {name!r}.{hint} Valid protocols: {', '.join(list_retrieval_protocols())}"
        )
    data = copy.deepcopy(RETRIEVAL_PROTOCOLS[name])
    data.update(overrides)
    return from_dict(RetrievalDataConfig, data)


# ------------------------------------------------------------------------------------------- the data


@dataclass
class RetrievalData:
    """A multi-domain retrieval data set: catalogue features, positives with their split and history, and
    each domain's corpus (conventions in the module docstring).

    Args:
        config: the config it was built from.
        domains: the domain names, in index order.
        vocab: per field of ``user_fields``, ``item_fields`` and ``multi_field``, its values as strings,
            index ``0`` being :data:`RESERVED`.
        user_sparse: the user features, one column per ``user_fields`` entry (column 0: ``user + 1``).
        item_sparse: the item features, one column per ``item_fields`` entry (column 0: ``item + 1``).
        item_multi: every genre of the item, as genre-vocabulary indices, padded with ``0``.
        user: the user of each positive, sorted by (user, timestamp, item).
        item: its item.
        domain: its domain.
        timestamp: its time (seconds since the epoch).
        split: ``0`` train, ``1`` validation, ``2`` test (int8).
        history: the user's positives strictly before it, as ``item + 1``, most recent first, ``0``-padded.
        corpus: per domain, the sorted item indices of its catalogue.
        train_counts: how often each item is a training positive in each domain (float32).
        fingerprint: sha256 of the config, the vocabularies and every tensor.

    Shape:
        user_sparse ``[U, 5]``; item_sparse ``[I, 2]``; item_multi ``[I, G]``; user, item, domain,
        timestamp, split ``[N]``; history ``[N, L]``; corpus[d] ``[C_d]``; train_counts ``[D, I]``.
    """

    config: RetrievalDataConfig
    domains: tuple[str, ...]
    vocab: dict[str, list[str]]
    user_sparse: Tensor
    item_sparse: Tensor
    item_multi: Tensor
    user: Tensor
    item: Tensor
    domain: Tensor
    timestamp: Tensor
    split: Tensor
    history: Tensor
    corpus: list[Tensor]
    train_counts: Tensor
    fingerprint: str = ""
    user_fields: tuple[str, ...] = USER_FIELDS
    item_fields: tuple[str, ...] = ITEM_FIELDS
    multi_field: str = MULTI_FIELD
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return int(self.user.shape[0])

    def __repr__(self) -> str:
        return (
            f"RetrievalData(domains={list(self.domains)}, users={self.num_users}, items={self.num_items}, "
            f"positives={len(self)}, history_len={self.history_len}, corpus={[len(c) for c in self.corpus]}, "
            f"fingerprint={self.fingerprint[:12]!r})"
        )

    @property
    def users(self) -> list[str]:
        """The raw user ids; ``users[u]`` is user ``u``."""
        return self.vocab["user_id"][1:]

    @property
    def items(self) -> list[str]:
        """The item titles; ``items[i]`` is item ``i``."""
        return self.vocab["item_id"][1:]

    @property
    def num_users(self) -> int:
        return int(self.user_sparse.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_sparse.shape[0])

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def history_len(self) -> int:
        return int(self.history.shape[1])

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding rows per field, the reserved index ``0`` included."""
        return {name: len(values) for name, values in self.vocab.items()}

    # ------------------------------------------------------------------------------------ selection
    def _domain_index(self, domain: int | str) -> int:
        if isinstance(domain, str):
            if domain not in self.domains:
                raise ValueError(
                    f"domain {domain!r} is not a domain of this data set; domains are {list(self.domains)}"
                )
            return self.domains.index(domain)
        d = int(domain)
        if not 0 <= d < self.num_domains:
            raise ValueError(
                f"domain {domain!r} is out of range; pass an index in 0..{self.num_domains - 1} or a name of "
                f"{list(self.domains)}"
            )
        return d

    @staticmethod
    def _split_code(split: str, allowed: Sequence[str] = SPLITS) -> int:
        if split not in allowed:
            raise ValueError(f"split {split!r} is not one of {list(allowed)}; pass one of them")
        return SPLITS.index(split)

    def queries(self, split: str, domain: int | str) -> Tensor:
        """The interaction rows of ``split`` (``train``, ``val`` or ``test``) in ``domain``, ascending.

        Shape:
            returns ``[Q]`` long.
        """
        s, d = self._split_code(split), self._domain_index(domain)
        key = ("queries", s, d)
        if key not in self._memo:
            self._memo[key] = torch.nonzero((self.split == s) & (self.domain == d)).flatten()
        return self._memo[key]

    def targets(self, split: str, domain: int | str) -> Tensor:
        """The position of each query's target item in ``corpus[domain]`` (the order of :meth:`queries`).

        Shape:
            returns ``[Q]`` long.
        """
        d = self._domain_index(domain)
        return torch.searchsorted(self.corpus[d], self.item[self.queries(split, d)])

    def exclude(self, split: str, domain: int | str) -> tuple[Tensor, Tensor]:
        """The (query, corpus position) pairs to mask when ranking ``domain``'s corpus for ``split``.

        For validation queries: the user's training positives in the domain; for test queries: the training
        and validation positives. The query's own target is never among them. Pairs are sorted by query,
        then position.

        Args:
            split: ``val`` or ``test``.
            domain: a domain index or name.

        Returns:
            ``(q_idx, corpus_pos)``: the query's index in :meth:`queries` and the masked item's position in
            ``corpus[domain]``.

        Shape:
            both ``[P]`` long.
        """
        s, d = self._split_code(split, ("val", "test")), self._domain_index(domain)
        q = self.queries(split, d)
        query_of_user = torch.full((self.num_users,), -1, dtype=torch.long)
        query_of_user[self.user[q]] = torch.arange(len(q))
        earlier = torch.nonzero((self.domain == d) & (self.split < s)).flatten()
        q_idx = query_of_user[self.user[earlier]]
        keep = q_idx >= 0
        q_idx, earlier = q_idx[keep], earlier[keep]
        pos = torch.searchsorted(self.corpus[d], self.item[earlier])
        not_target = pos != self.targets(split, d)[q_idx]
        q_idx, pos = q_idx[not_target], pos[not_target]
        order = torch.argsort(q_idx * len(self.corpus[d]) + pos)
        return q_idx[order], pos[order]

    def user_inputs(self, rows: Tensor, domain: Tensor | int | None = None) -> UserInputs:
        """The user side of interaction ``rows``: the user's features and the row's history.

        Args:
            rows: interaction row indices.
            domain: the domain to embed each row for; ``None`` takes each row's own domain.

        Shape:
            rows ``[B]``; domain ``[B]``; returns sparse ``[B, 5]``, history ``[B, L]``, domain ``[B]``.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        if domain is None:
            dom = self.domain.index_select(0, rows)
        elif isinstance(domain, int):
            dom = torch.full((len(rows),), self._domain_index(domain), dtype=torch.long)
        else:
            dom = torch.as_tensor(domain, dtype=torch.long)
        return UserInputs(
            sparse=self.user_sparse.index_select(0, self.user.index_select(0, rows)),
            history=self.history.index_select(0, rows),
            domain=dom,
        )

    def item_inputs(self, items: Tensor, domain: Tensor | int) -> ItemInputs:
        """The item side of ``items`` (item indices), embedded for ``domain``.

        Shape:
            items ``[B]``; domain ``[B]`` (or one int); returns sparse ``[B, 2]``, multi ``[B, G]``,
            domain ``[B]``.
        """
        items = torch.as_tensor(items, dtype=torch.long)
        if isinstance(domain, int):
            dom = torch.full((len(items),), self._domain_index(domain), dtype=torch.long)
        else:
            dom = torch.as_tensor(domain, dtype=torch.long)
        return ItemInputs(
            sparse=self.item_sparse.index_select(0, items),
            multi=self.item_multi.index_select(0, items),
            domain=dom,
        )

    # ------------------------------------------------------------------------------------- reports
    def stats(self) -> dict[str, Any]:
        """Counts for the protocol document: users, items, positives per domain and split, corpus sizes,
        and the overlap between domains (ADI Table 5).

        ``overlap.users[a][b]``: users with a positive in both ``a`` and ``b``; ``overlap.items[a][b]``:
        items that are a positive in both; ``overlap.corpus[a][b]``: items in both corpora. The diagonal is
        the domain's own count.
        """
        n_dom, n_users, n_items = self.num_domains, self.num_users, self.num_items
        per_split = torch.bincount(self.domain * 3 + self.split.long(), minlength=3 * n_dom).view(n_dom, 3)
        has_user = torch.zeros(n_dom, n_users, dtype=torch.bool)
        has_user[self.domain, self.user] = True
        has_item = torch.zeros(n_dom, n_items, dtype=torch.bool)
        has_item[self.domain, self.item] = True
        in_corpus = torch.zeros(n_dom, n_items, dtype=torch.bool)
        for d, c in enumerate(self.corpus):
            in_corpus[d, c] = True

        def overlap(m: Tensor) -> list[list[int]]:
            f = m.to(torch.float64)
            return (f @ f.T).round().long().tolist()

        domains = {}
        for d, name in enumerate(self.domains):
            counts = {s: int(per_split[d, k]) for k, s in enumerate(SPLITS)}
            domains[name] = {
                "users": int(has_user[d].sum()),
                "items": int(has_item[d].sum()),
                "positives": {**counts, "all": sum(counts.values())},
                "corpus": len(self.corpus[d]),
            }
        totals = {s: int(per_split[:, k].sum()) for k, s in enumerate(SPLITS)}
        return {
            "users": n_users,
            "items": n_items,
            "users_with_positives": int(has_user.any(0).sum()),
            "positives": {**totals, "all": len(self)},
            "domains": domains,
            "overlap": {"users": overlap(has_user), "items": overlap(has_item), "corpus": overlap(in_corpus)},
        }

    def schema(self) -> dict[str, Any]:
        """What a model built on this data needs to know, as plain JSON data (for a run directory)."""
        return {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "config": self.config.key_data(),
            "domains": list(self.domains),
            "user_fields": list(self.user_fields),
            "item_fields": list(self.item_fields),
            "multi_field": self.multi_field,
            "vocab_sizes": self.vocab_sizes,
            "multi_len": int(self.item_multi.shape[1]),
            "history_len": self.history_len,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "corpus_sizes": [len(c) for c in self.corpus],
        }

    def to_json(self) -> str:
        """:meth:`schema` as JSON text (sorted keys)."""
        return json.dumps(self.schema(), sort_keys=True)


# ------------------------------------------------------------------------------------------ building


def _factor(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column as codes into its distinct :func:`_key` strings (missing values read as ``""``).

    Factorising first keeps the string work to the distinct values (thousands, not a million rows).

    Shape:
        values ``[n]``; returns codes ``[n]`` int64 and the distinct keys ``[K]`` (object array of str).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    keys = np.append(_keys(pd.Series(uniques)), "")  # code -1 (missing) reads the appended ""
    codes = np.where(codes < 0, len(keys) - 1, codes)
    key_codes, distinct = pd.factorize(pd.Series(keys, dtype=object))  # 1 and 1.0 in one object column
    return key_codes.astype(np.int64)[codes], np.asarray(distinct, dtype=object)


def _sorted_vocab(keys: np.ndarray) -> list[str]:
    """The distinct non-empty strings of ``keys``, numerically when all are integers, else as strings."""
    values = np.asarray(pd.unique(pd.Series(keys, dtype=object)), dtype=object)
    values = values[values != ""]
    if len(values) == 0:
        return []
    num = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(num).all() and (num == np.round(num)).all():
        order = np.lexsort((values.astype(str), num))
    else:
        order = np.argsort(values.astype(str), kind="stable")
    return values[order].astype(str).tolist()


def _encode(keys: np.ndarray, vocab: list[str]) -> np.ndarray:
    """Indices of ``keys`` in ``[RESERVED, *vocab]``: ``0`` for a missing (``""``) or unknown value.

    Shape:
        keys ``[n]``; returns ``[n]`` int64.
    """
    return pd.Index(vocab, dtype=object).get_indexer(pd.Index(keys, dtype=object)).astype(np.int64) + 1


def _domain_codes(keys: np.ndarray, groups: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """The domain index of each raw key, ``-1`` for a value in no group."""
    mapping = {_key(v): d for d, values in enumerate(groups.values()) for v in values}
    return pd.Series(keys, dtype=object).map(mapping).fillna(-1).to_numpy(np.int64)


def _group_starts(*columns: np.ndarray) -> np.ndarray:
    """For rows sorted by ``columns``, the index of the first row of each row's run of equal values.

    Shape:
        each column ``[n]``; returns ``[n]`` int64.
    """
    n = len(columns[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for col in columns:
            new[1:] |= col[1:] != col[:-1]
    return np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, np.int64)


def _check_columns(frame: pd.DataFrame, cfg: RetrievalDataConfig) -> None:
    wanted = {"user_id", "item_id", "rating", "timestamp", *USER_FIELDS, *ITEM_FIELDS, MULTI_FIELD, cfg.domain_column}
    missing = sorted(wanted - set(frame.columns))
    if missing:
        raise ValueError(
            f"build_retrieval_data: the frame lacks column(s) {missing}; pass the frame load_movielens returns "
            f"(columns {sorted(wanted)})"
        )


def _hash_tensors(cfg: RetrievalDataConfig, vocab: dict[str, list[str]], tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    config = cfg.key_data()
    del config["path"]  # where the ratings were read from; their content is hashed below
    h.update(json.dumps({"config": config, "format": FORMAT_VERSION}, sort_keys=True).encode())
    h.update(json.dumps(vocab, sort_keys=True).encode())
    for t in tensors:
        a = t.contiguous().numpy()
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def build_retrieval_data(config: RetrievalDataConfig, frame: pd.DataFrame | None = None) -> RetrievalData:
    """Build the retrieval data set ``config`` describes (every rule in the module docstring).

    Args:
        config: the data set; checked again here, so a config built directly (not with ``from_dict``) is
            held to the same rules.
        frame: the ratings frame, when already loaded: it must be what
            ``load_movielens(config.name, config.path)`` returns. ``None`` loads it.

    Returns:
        The :class:`RetrievalData`.

    Raises:
        ConfigError: for a config value that is not allowed.
        ValueError: for positives whose ``domain_column`` value is in no group (the message lists them), a
            group without positives, or a frame without the MovieLens columns.
    """
    validate(config)
    cfg = config
    if frame is None:
        frame = load_movielens(cfg.name, cfg.path)
    _check_columns(frame, cfg)

    # Catalogue and vocabularies: the big columns are factorised once, their distinct values encoded.
    vocab: dict[str, list[str]] = {}
    user_codes, user_values = _factor(frame["user_id"])
    item_codes, item_values = _factor(frame["item_id"])
    users, items = _sorted_vocab(user_values), _sorted_vocab(item_values)
    user_of_row = (_encode(user_values, users) - 1)[user_codes]
    item_of_row = (_encode(item_values, items) - 1)[item_codes]
    if (user_of_row < 0).any() or (item_of_row < 0).any():
        raise ValueError("build_retrieval_data: the frame has rating(s) with an empty user_id or item_id; drop them")
    n_users, n_items = len(users), len(items)

    first_user = np.unique(user_of_row, return_index=True)[1]  # the first row of each user, in user order
    user_sparse = np.zeros((n_users, len(USER_FIELDS)), dtype=np.int64)
    for j, name in enumerate(USER_FIELDS):
        keys = _keys(frame[name].iloc[first_user])
        vocab[name] = [RESERVED, *(users if name == "user_id" else _sorted_vocab(keys))]
        user_sparse[:, j] = _encode(keys, vocab[name][1:])

    first_item = np.unique(item_of_row, return_index=True)[1]
    item_sparse = np.zeros((n_items, len(ITEM_FIELDS)), dtype=np.int64)
    for j, name in enumerate(ITEM_FIELDS):
        keys = _keys(frame[name].iloc[first_item])
        vocab[name] = [RESERVED, *(items if name == "item_id" else _sorted_vocab(keys))]
        item_sparse[:, j] = _encode(keys, vocab[name][1:])

    genres = pd.Series(_keys(frame[MULTI_FIELD].iloc[first_item]), dtype=object).str.split("|").explode()
    genres = genres.str.strip()
    genres = genres[genres.notna() & (genres != "")]
    slot = genres.groupby(level=0).cumcount().to_numpy()
    vocab[MULTI_FIELD] = [RESERVED, *sorted(genres.unique().tolist())]
    item_multi = np.zeros((n_items, int(slot.max()) + 1 if len(slot) else 1), dtype=np.int64)
    item_multi[genres.index.to_numpy(), slot] = _encode(genres.to_numpy(dtype=object), vocab[MULTI_FIELD][1:])

    # Domains of every rating (for the corpora) and the positives.
    domain_codes, domain_values = _factor(frame[cfg.domain_column])
    domain_of_row = _domain_codes(domain_values, cfg.domain_groups)[domain_codes]
    positive = frame["rating"].to_numpy(dtype=np.float64) >= cfg.min_rating
    unassigned = positive & (domain_of_row < 0)
    if unassigned.any():
        values = sorted(domain_values[np.unique(domain_codes[unassigned])].tolist())
        raise ValueError(
            f"domain_groups: value(s) {values[:_N_EXAMPLES]}{' ...' if len(values) > _N_EXAMPLES else ''} of "
            f"column {cfg.domain_column!r} occur in {int(unassigned.sum())} positive(s) but are in no group; add "
            f"each to one group of domain_groups (groups: {dict(cfg.domain_groups)})"
        )
    domains = tuple(cfg.domain_groups)
    n_dom = len(domains)
    counts = np.bincount(domain_of_row[positive], minlength=n_dom)
    empty = [name for name, c in zip(domains, counts) if c == 0]
    if empty:
        raise ValueError(
            f"domain_groups: domain(s) {empty} hold no positive (no rating >= {cfg.min_rating:g} has a "
            f"{cfg.domain_column!r} value in {[cfg.domain_groups[n] for n in empty]}); remove them or fix their values"
        )

    # The positives, sorted by (user, timestamp, item); a repeated (user, item) keeps its earliest.
    user = user_of_row[positive]
    item = item_of_row[positive]
    ts = frame["timestamp"].to_numpy(dtype=np.int64)[positive]
    dom = domain_of_row[positive]
    file_order = np.flatnonzero(positive)  # ties in time keep the file's order (PROTOCOLS.md R1)
    order = np.lexsort((file_order, ts, user))
    user, item, ts, dom = user[order], item[order], ts[order], dom[order]
    first = ~pd.Series(user * n_items + item).duplicated(keep="first").to_numpy()
    user, item, ts, dom = user[first], item[first], ts[first], dom[first]
    n = len(user)

    # Split per (user, domain): a stable sort keeps the (timestamp, item) order inside each pair.
    by_pair = np.argsort(user * n_dom + dom, kind="stable")
    pair = (user * n_dom + dom)[by_pair]
    start = _group_starts(pair)
    size = np.bincount(start, minlength=n)[start]
    from_end = size - 1 - (np.arange(n) - start)
    eligible = size >= cfg.min_positives
    split_sorted = np.where(eligible & (from_end == 0), 2, np.where(eligible & (from_end == 1), 1, 0))
    split = np.empty(n, dtype=np.int8)
    split[by_pair] = split_sorted

    # History: the rows of the user before the first row with this row's timestamp, latest first. Row n's
    # window is the L rows before its tie start (a strided view of the 0-padded item column, reversed);
    # the slots that fall before the user's first row are zeroed.
    length = cfg.history_len
    user_start = _group_starts(user)
    tie_start = _group_starts(user, ts)
    padded = torch.cat([torch.zeros(length, dtype=torch.long), torch.from_numpy(item + 1)])
    windows = padded.unfold(0, length, 1)  # windows[k] = padded[k : k + L] = items k - L .. k - 1 (+1)
    history = windows.index_select(0, torch.from_numpy(tie_start)).flip(1)
    n_earlier = torch.from_numpy(np.minimum(tie_start - user_start, length))
    history.masked_fill_(torch.arange(length)[None, :] >= n_earlier[:, None], 0)

    # Corpora: user-grouped domains share the whole catalogue; an item-grouped domain holds its group's items.
    if cfg.domain_by == "user":
        corpus = [torch.arange(n_items, dtype=torch.long) for _ in range(n_dom)]
    else:
        rated = domain_of_row >= 0
        pairs = np.unique(domain_of_row[rated] * n_items + item_of_row[rated])
        bounds = np.searchsorted(pairs, np.arange(n_dom + 1) * n_items)
        corpus = [torch.from_numpy(pairs[bounds[d] : bounds[d + 1]] - d * n_items) for d in range(n_dom)]

    train = split == 0
    train_counts = (
        np.bincount(dom[train] * n_items + item[train], minlength=n_dom * n_items)
        .reshape(n_dom, n_items)
        .astype(np.float32)
    )

    tensors = {
        "user_sparse": torch.from_numpy(user_sparse),
        "item_sparse": torch.from_numpy(item_sparse),
        "item_multi": torch.from_numpy(item_multi),
        "user": torch.from_numpy(user),
        "item": torch.from_numpy(item),
        "domain": torch.from_numpy(dom),
        "timestamp": torch.from_numpy(ts),
        "split": torch.from_numpy(split),
        "history": history.contiguous(),
        "train_counts": torch.from_numpy(train_counts),
    }
    fingerprint = _hash_tensors(cfg, vocab, [*tensors.values(), *corpus])
    return RetrievalData(config=cfg, domains=domains, vocab=vocab, corpus=corpus, fingerprint=fingerprint, **tensors)
