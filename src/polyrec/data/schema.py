"""Frozen, JSON-serialisable descriptions of an encoded data set.

A :class:`DatasetSchema` is what a model needs to know about its data: the features (kind, vocabulary
size), the domains (names, in index order), the label and the optional user field. It holds no modules and
no tensors, is saved as JSON next to the encoded data and inside every checkpoint, and two schemas compare
equal exactly when a model built for one can read the other.

Index convention for sparse features: 0 is padding (used only by multi-valued features), 1 is the reserved
out-of-vocabulary (OOV) bucket, and 2.. are the vocabulary in its deterministic order.

Example:
    >>> s = DatasetSchema(features=(FeatureSpec("user_id", "sparse", vocab_size=10),),
    ...                   domain=DomainSpec("gender", ("F", "M")))
    >>> DatasetSchema.from_json(s.to_json()) == s
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

PAD_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2

FeatureKind = Literal["sparse", "multi", "dense"]


def display_order(names: Iterable[str]) -> list[str]:
    """Domain names in the order to list them: numerically when every name is an integer code (``"2"``
    before ``"10"``, MovieLens' occupation codes), else as given (index order, or a config's group order).

    Only listing and printing use it; a domain's index (its encoding) is never reordered.

    Example:
        >>> display_order(["0", "1", "10", "2"]), display_order(["M", "F"])
        (['0', '1', '2', '10'], ['M', 'F'])
    """
    names = list(names)
    try:
        keys = [int(str(n)) for n in names]
    except ValueError:
        return names
    return [n for _, _, n in sorted(zip(keys, range(len(names)), names))]


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature after encoding.

    Args:
        name: feature name, unique in the schema.
        kind: ``sparse`` (one id per row), ``multi`` (a padded list of ids per row) or ``dense`` (a float).
        vocab_size: number of embedding rows including padding and OOV (sparse and multi only).
        max_len: padded length of a multi-valued feature.
    """

    name: str
    kind: FeatureKind
    vocab_size: int = 0
    max_len: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("sparse", "multi", "dense"):
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} is not one of sparse, multi, dense")
        if self.kind != "dense" and self.vocab_size < FIRST_INDEX:
            raise ValueError(
                f"feature {self.name!r}: vocab_size {self.vocab_size} must be >= {FIRST_INDEX} "
                "(padding and OOV rows are reserved)"
            )
        if self.kind == "multi" and self.max_len < 1:
            raise ValueError(f"feature {self.name!r}: a multi-valued feature needs max_len >= 1, got {self.max_len}")
        if self.kind == "dense" and (self.vocab_size or self.max_len):
            raise ValueError(
                f"feature {self.name!r}: a dense feature has no vocabulary or length "
                f"(got vocab_size={self.vocab_size}, max_len={self.max_len}); leave both at 0"
            )
        if self.kind == "sparse" and self.max_len:
            raise ValueError(
                f"feature {self.name!r}: max_len applies to multi-valued features only, got {self.max_len}"
            )


@dataclass(frozen=True)
class DomainSpec:
    """The domain field: its source name and the domain names in index order."""

    name: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        # A list would make the frozen spec unhashable and compare unequal to its JSON round trip.
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) < 1:
            raise ValueError(f"domain field {self.name!r} has no domains")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"domain field {self.name!r} has duplicate domain names: {list(self.values)}")

    @property
    def num_domains(self) -> int:
        return len(self.values)

    def index(self, name: str) -> int:
        """Index of domain ``name``; unknown names raise with the valid ones."""
        try:
            return self.values.index(name)
        except ValueError:
            raise KeyError(f"unknown domain {name!r}; the schema's domains are {list(self.values)}") from None


@dataclass(frozen=True)
class DatasetSchema:
    """Everything a model needs to know about its input.

    Args:
        features: the features in batch order (sparse ones first in ``Batch.sparse`` column order, then
            multi-valued ones, then dense ones in ``Batch.dense`` column order).
        domain: the domain field.
        label: name of the label (binary, {0, 1}).
        user_feature: name of the sparse feature that identifies users (for GAUC), if any.
        domain_feature: name of the sparse feature that carries the domain indicator, if the data set
            exposes the domain as an input feature.
        domain_features: the sparse or multi-valued features that describe the domain (the data config's
            ``domain.describing``), which STAR's auxiliary network takes with the domain indicator.
    """

    features: tuple[FeatureSpec, ...]
    domain: DomainSpec
    label: str = "label"
    user_feature: str | None = None
    domain_feature: str | None = None
    domain_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "domain_features", tuple(self.domain_features))
        embedded = [f.name for f in self.features if f.kind in ("sparse", "multi")]
        for name in self.domain_features:
            if name not in embedded:
                raise ValueError(
                    f"domain_features names {name!r}, which is not a sparse or multi-valued feature; "
                    f"those are {embedded}"
                )
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names in schema: {sorted(dup)}")
        for ref in ("user_feature", "domain_feature"):
            value = getattr(self, ref)
            if value is not None and value not in self.sparse_names:
                raise ValueError(f"{ref} {value!r} is not a sparse feature; sparse features: {self.sparse_names}")

    # Views by kind, in batch column order.
    @property
    def sparse(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == "sparse")

    @property
    def multi(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == "multi")

    @property
    def dense(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def num_domains(self) -> int:
        return self.domain.num_domains

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"unknown feature {name!r}; the schema has {[f.name for f in self.features]}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not self.domain_features:  # schemas without them read (and hash) as before the field existed
            del out["domain_features"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetSchema:
        return cls(
            features=tuple(FeatureSpec(**f) for f in data["features"]),
            domain=DomainSpec(data["domain"]["name"], tuple(data["domain"]["values"])),
            label=data.get("label", "label"),
            user_feature=data.get("user_feature"),
            domain_feature=data.get("domain_feature"),
            domain_features=tuple(data.get("domain_features", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """Short content hash, recorded with checkpoints to detect a model/data mismatch."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def check_compatible(self, other: DatasetSchema, what: str = "data") -> None:
        """Raise ValueError naming the first difference if a model built for ``self`` cannot read ``other``."""
        if self == other:
            return
        fix = "encode the data with the model's processing (the run directory's schema.json)"
        mine = {f.name: f for f in self.features}
        theirs = {f.name: f for f in other.features}
        # Walk the names in schema order so the first difference reported is always the same one.
        names = [f.name for f in self.features] + [f.name for f in other.features if f.name not in mine]
        for name in names:
            if mine.get(name) != theirs.get(name):
                raise ValueError(
                    f"schema mismatch between the model and the {what}: feature {name!r} is "
                    f"{mine.get(name)} in the model and {theirs.get(name)} in the {what}; {fix}"
                )
        if [f.name for f in self.features] != [f.name for f in other.features]:
            raise ValueError(
                f"schema mismatch between the model and the {what}: feature order "
                f"{[f.name for f in self.features]} vs {[f.name for f in other.features]}; {fix}"
            )
        if self.domain != other.domain:
            raise ValueError(
                f"schema mismatch between the model and the {what}: domains {self.domain.name!r} "
                f"{list(self.domain.values)} vs {other.domain.name!r} {list(other.domain.values)}; "
                "use data encoded with the same domain rule"
            )
        for ref in ("label", "user_feature", "domain_feature", "domain_features"):
            if getattr(self, ref) != getattr(other, ref):
                raise ValueError(
                    f"schema mismatch between the model and the {what}: {ref} is {getattr(self, ref)!r} in the "
                    f"model and {getattr(other, ref)!r} in the {what}; {fix}"
                )
        raise ValueError(f"schema mismatch between the model and the {what}: {self} vs {other}")
