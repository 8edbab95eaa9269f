"""Declarative data configuration: where rows come from and how they become an encoded data set.

A :class:`DataConfig` is plain data (YAML-serialisable). Splitting MovieLens by occupation instead of
gender, or loading a CSV of your own, is a change of config, not of code.

Every field that allows only some values declares them with :func:`~polyrec.config.param`, so a bad
value is refused when the config is read (``data.split.ratios: [0.5, 0.2, 0.2] is not allowed; ...``),
not half-way through an encoding.

Example (YAML)::

    source: {kind: csv, path: clicks.csv}
    label: {column: clicked, op: identity}
    domain: {column: page}
    features:
      - {name: user_id, column: uid}
      - {name: item_id, column: iid}
      - {name: price, column: price, kind: dense, transform: minmax}
    split: {method: stratified_domain, ratios: [0.8, 0.1, 0.1], seed: 0}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import field_error, param


def _rule(ok: Callable[[Any], bool], allowed: str) -> Callable[[Any], str | None]:
    """A ``param(rule=...)`` function: None when ``ok(value)``, else the error text naming the value."""

    def check(value: Any) -> str | None:
        return None if ok(value) else f"{value!r} is not allowed; {allowed}"

    return check


_NON_EMPTY = _rule(lambda v: isinstance(v, str) and v != "", "must be a non-empty string")
_FINITE = _rule(lambda v: math.isfinite(v), "must be a finite number")


def _groups_error(groups: dict[str, list[Any]]) -> str | None:
    if not groups:
        return (
            f"{groups!r} is not allowed; name at least one domain (name: [raw values]), or leave groups "
            "unset to make each distinct value its own domain"
        )
    for name, values in groups.items():
        if not name:
            return f"{groups!r} is not allowed; every domain needs a non-empty name"
        if not values:
            return f"{groups!r} is not allowed; domain {name!r} lists no raw values: give it at least one, or remove it"
    return None


def _unique_strings_error(names: tuple[str, ...]) -> str | None:
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        return f"{list(names)!r} is not allowed; every name must be a non-empty string"
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return f"{list(names)!r} is not allowed; {dup} listed more than once (name each feature once)"
    return None


def _unique_names_error(features: tuple[FeatureConfig, ...]) -> str | None:
    names = [f.name for f in features]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        return (
            f"names {names} are not allowed; duplicate names {dup}: every feature needs its own name (set "
            "column: to read one raw column as two features)"
        )
    return None


#: The MovieLens data sets, by the one name configs, records and the CLI use.
MOVIELENS_NAMES = ("ml-1m", "ml-100k")
#: Other spellings accepted for them (``polyrec data fetch movielens-1m``, ``name: movielens-100k``), read
#: as the name they stand for, so a config spelt either way is the same config (and the same cache entry).
MOVIELENS_ALIASES = {"movielens-1m": "ml-1m", "movielens-100k": "ml-100k"}


def movielens_name(name: str) -> str | None:
    """The canonical name (``ml-1m``, ``ml-100k``) of a MovieLens data set spelt ``name`` (case and the
    ``movielens-`` aliases ignored), or None when it names none of them."""
    key = str(name).strip().lower()
    key = MOVIELENS_ALIASES.get(key, key)
    return key if key in MOVIELENS_NAMES else None


@dataclass(frozen=True)
class SourceConfig:
    """Where the raw rows come from.

    Args:
        kind: ``movielens`` (``name`` ml-1m / ml-100k, also spelt movielens-1m / movielens-100k; from the
            registry wheel or ``path``), ``csv``,
            ``parquet``, ``atomic`` (RecBole atomic files: ``path`` is the folder, ``name`` the prefix) or
            ``synthetic`` (``options`` are :func:`polyrec.data.sources.make_synthetic` arguments).
        name: data set name for ``movielens`` and ``atomic``.
        path: local file or folder (required for ``csv``, ``parquet`` and ``atomic``); for ``movielens``
            optional (a GroupLens zip/folder or the wheel).
        sep: field separator for ``csv``. Unset: inferred from the file name (tab for ``.tsv`` / ``.tab``,
            compressed too, such as ``.tsv.gz``; ``","`` otherwise). A Parquet file has no separator, so
            setting one for ``parquet`` is an error; the other kinds ignore it.
        options: source-specific arguments (synthetic generator parameters).
    """

    kind: Literal["movielens", "csv", "parquet", "atomic", "synthetic"] = "movielens"
    name: str = param("ml-1m", rule=_NON_EMPTY)
    path: str | None = param(None, rule=_NON_EMPTY)
    sep: str | None = param(None, rule=_NON_EMPTY)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "movielens" and isinstance(self.name, str):
            canonical = movielens_name(self.name)
            if canonical is None:
                raise field_error(
                    "name",
                    self.name,
                    f"must be one of {', '.join(map(repr, MOVIELENS_NAMES))} "
                    f"(also spelt {', '.join(map(repr, MOVIELENS_ALIASES))})",
                )
            object.__setattr__(self, "name", canonical)  # one spelling in saved configs and cache keys
        if self.kind in ("csv", "parquet", "atomic") and not self.path:
            raise field_error(
                "path",
                self.path,
                f"kind {self.kind!r} reads local files: set data.source.path to the file (or folder) to read",
            )
        if self.sep is not None and self.kind == "parquet":
            raise field_error("sep", self.sep, "data.source.sep applies to csv files only; remove it for parquet")


@dataclass(frozen=True)
class LabelRule:
    """How the binary label is derived from a column: ``label = column <op> threshold``.

    ``op: identity`` takes the column as is; its values must already be 0 or 1.
    """

    column: str = param("label", rule=_NON_EMPTY)
    op: Literal["identity", "eq", "gt", "ge", "lt", "le"] = "identity"
    threshold: float = param(0.0, rule=_FINITE)


@dataclass(frozen=True)
class DomainRule:
    """How rows are assigned to domains.

    Args:
        column: the raw column that defines the domain.
        groups: domain name -> list of raw values. ``None`` makes each distinct value its own domain
            (names are the values as strings, in sorted order: numerically for a numeric column, as strings
            for a string column, such as MovieLens' occupation codes; listings and reports show integer
            codes numerically either way). A raw value in no group is an error.
        as_feature: also expose the domain indicator as a sparse input feature named ``domain``.
        describing: features of ``data.features`` (sparse or multi-valued) that describe the domain rather
            than the user or the item (a page's type, a scenario's theme, its position); STAR's auxiliary
            network takes them with the domain indicator (§3.5). Each name once.
    """

    column: str = param("domain", rule=_NON_EMPTY)
    groups: dict[str, list[Any]] | None = param(None, rule=_groups_error)
    as_feature: bool = False
    describing: tuple[str, ...] = param((), rule=_unique_strings_error)


@dataclass(frozen=True)
class FeatureConfig:
    """One input feature.

    Args:
        name: feature name in the schema.
        column: raw column (defaults to ``name``).
        kind: ``sparse``, ``multi`` (a string of ids joined by ``sep``) or ``dense``.
        min_count: ids seen fewer times than this in the training split map to the OOV bucket (>= 1).
        sep: separator of a multi-valued column.
        max_len: padded length of a multi-valued feature (0: the longest list in the training split).
        transform: dense scaling fitted on the training split: ``minmax``, ``standard``, ``log1p_minmax``
            or ``none``.
    """

    name: str = param(rule=_NON_EMPTY)
    column: str | None = param(None, rule=_NON_EMPTY)
    kind: Literal["sparse", "multi", "dense"] = "sparse"
    min_count: int = param(1, ge=1)
    sep: str = param("|", rule=_NON_EMPTY)
    max_len: int = param(0, ge=0)
    transform: Literal["minmax", "standard", "log1p_minmax", "none"] = "minmax"

    @property
    def source_column(self) -> str:
        return self.column or self.name


def ratios_ok(ratios: Any) -> bool:
    """Three finite non-negative fractions summing to 1 (within 1e-6), the training one > 0.

    A tiny negative from float arithmetic (``1 - 0.8 - 0.2 = -5.6e-17``) counts as 0.
    """
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        return False
    return (
        len(values) == 3
        and all(math.isfinite(r) and r >= -1e-9 for r in values)
        and abs(sum(values) - 1.0) <= 1e-6
        and values[0] > 0
    )


@dataclass(frozen=True)
class SampleConfig:
    """A seeded random subset of the source's rows, drawn before anything else (for data-size studies).

    Args:
        fraction: share of the rows kept, in (0, 1] (1: all of them, no draw).
        seed: seed of the draw (the split has its own).
    """

    fraction: float = param(1.0, gt=0, le=1)
    seed: int = param(0, ge=0, lt=2**32)


@dataclass(frozen=True)
class SplitConfig:
    """How rows are split into train / validation / test.

    Args:
        method: ``stratified_domain`` (within each domain, stratified by label), ``random`` (global random
            permutation), ``user`` (users, not rows, are split) or ``time`` (by ``time_column``, oldest rows
            train).
        ratios: train, validation, test fractions summing to 1 (train > 0: processing is fitted on it).
        seed: split seed (>= 0), independent of every model seed.
        time_column: timestamp column for ``time``.
        dedupe: remove exact duplicate rows (identical in every column the data config reads: features,
            label, domain, and the time column of a ``time`` split) before splitting, keeping the first
            occurrence; the number removed is in ``report["duplicates"]["removed"]``. Off by default: the
            published protocols split the rows as they are. Duplicates that land in train and in val/test
            are counted (and warned about) either way.
        untrained_domains: what to do with a domain that gets no training rows: ``error`` (the default; its
            test metrics would come from untrained parameters) or ``drop`` (remove its validation and test
            rows, counted in ``report["dropped_untrained"]``; the domain stays in the schema).
    """

    method: Literal["stratified_domain", "random", "user", "time"] = "stratified_domain"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = param(2024, ge=0)
    time_column: str = param("timestamp", rule=_NON_EMPTY)
    dedupe: bool = False
    untrained_domains: Literal["error", "drop"] = "error"

    def __post_init__(self) -> None:
        if not ratios_ok(self.ratios):
            raise field_error(
                "ratios",
                list(self.ratios) if isinstance(self.ratios, (list, tuple)) else self.ratios,
                "must be three finite non-negative fractions (train, val, test) summing to 1 with train > 0, "
                "for example [0.8, 0.1, 0.1]",
            )


@dataclass(frozen=True)
class DataConfig:
    """Source, label, domains, features and split: everything that defines an encoded data set.

    ``user_feature`` names the sparse feature that identifies users (used for GAUC and user splits).
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    label: LabelRule = field(default_factory=LabelRule)
    domain: DomainRule = field(default_factory=DomainRule)
    features: tuple[FeatureConfig, ...] = param((), rule=_unique_names_error)
    user_feature: str | None = param(None, rule=_NON_EMPTY)
    split: SplitConfig = field(default_factory=SplitConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        sparse = [f.name for f in self.features if f.kind == "sparse"]
        if self.user_feature is not None and self.user_feature not in sparse:
            raise field_error(
                "user_feature",
                self.user_feature,
                f"data.user_feature must name a sparse feature in data.features (sparse features: "
                f"{sparse}); set it to one of them or leave it unset",
            )
        embedded = [f.name for f in self.features if f.kind in ("sparse", "multi")]
        for name in self.domain.describing:
            if name not in embedded:
                raise field_error(
                    "domain.describing",
                    list(self.domain.describing),
                    f"{name!r} is not a sparse or multi-valued feature of data.features (those are "
                    f"{embedded}); name only such features, or add {name!r} to data.features",
                )
        if self.domain.as_feature and "domain" in [f.name for f in self.features]:
            raise field_error(
                "features",
                [f.name for f in self.features],
                "data.domain.as_feature adds a feature named 'domain'; rename the feature called "
                "'domain' or set data.domain.as_feature: false",
            )
