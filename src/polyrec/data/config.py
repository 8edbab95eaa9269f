"""Declarative data configuration: where rows come from and how they become an encoded data set.

A :class:`DataConfig` is plain data (YAML-serialisable). Splitting MovieLens by occupation instead of
gender, or loading a CSV of your own, is a change of config, not of code.

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

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SourceConfig:
    """Where the raw rows come from.

    Args:
        kind: ``movielens`` (``name`` ml-1m / ml-100k; from the registry wheel or ``path``), ``csv``,
            ``parquet``, ``atomic`` (RecBole atomic files: ``path`` is the folder, ``name`` the prefix) or
            ``synthetic`` (``options`` are :func:`polyrec.data.sources.make_synthetic` arguments).
        name: data set name for ``movielens`` and ``atomic``.
        path: local file or folder; for ``movielens`` optional (a GroupLens zip/folder or the wheel).
        sep: field separator for ``csv``.
        options: source-specific arguments (synthetic generator parameters).
    """

    kind: Literal["movielens", "csv", "parquet", "atomic", "synthetic"] = "movielens"
    name: str = "ml-1m"
    path: str | None = None
    sep: str = ","
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelRule:
    """How the binary label is derived from a column: ``label = column <op> threshold``.

    ``op: identity`` takes the column as is; its values must already be 0 or 1.
    """

    column: str = "label"
    op: Literal["identity", "eq", "gt", "ge", "lt", "le"] = "identity"
    threshold: float = 0.0


@dataclass(frozen=True)
class DomainRule:
    """How rows are assigned to domains.

    Args:
        column: the raw column that defines the domain.
        groups: domain name -> list of raw values. ``None`` makes each distinct value its own domain
            (names are the values as strings, in sorted order). A raw value in no group is an error.
        as_feature: also expose the domain indicator as a sparse input feature named ``domain``.
    """

    column: str = "domain"
    groups: dict[str, list[Any]] | None = None
    as_feature: bool = False


@dataclass(frozen=True)
class FeatureConfig:
    """One input feature.

    Args:
        name: feature name in the schema.
        column: raw column (defaults to ``name``).
        kind: ``sparse``, ``multi`` (a string of ids joined by ``sep``) or ``dense``.
        min_count: ids seen fewer times than this in the training split map to the OOV bucket.
        sep: separator of a multi-valued column.
        max_len: padded length of a multi-valued feature (0: the longest list in the training split).
        transform: dense scaling fitted on the training split: ``minmax``, ``standard``, ``log1p_minmax``
            or ``none``.
    """

    name: str
    column: str | None = None
    kind: Literal["sparse", "multi", "dense"] = "sparse"
    min_count: int = 1
    sep: str = "|"
    max_len: int = 0
    transform: Literal["minmax", "standard", "log1p_minmax", "none"] = "minmax"

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class SplitConfig:
    """How rows are split into train / validation / test.

    Args:
        method: ``stratified_domain`` (within each domain, stratified by label), ``random`` (global random
            permutation), ``user`` (users, not rows, are split) or ``time`` (by ``time_column``, oldest rows
            train).
        ratios: train, validation, test fractions summing to 1.
        seed: split seed, independent of every model seed.
        time_column: timestamp column for ``time``.
    """

    method: Literal["stratified_domain", "random", "user", "time"] = "stratified_domain"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    time_column: str = "timestamp"


@dataclass(frozen=True)
class DataConfig:
    """Source, label, domains, features and split: everything that defines an encoded data set.

    ``user_feature`` names the sparse feature that identifies users (used for GAUC and user splits).
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    label: LabelRule = field(default_factory=LabelRule)
    domain: DomainRule = field(default_factory=DomainRule)
    features: tuple[FeatureConfig, ...] = ()
    user_feature: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
