"""The tensors a retrieval model reads: one side of a (user, item) pair, each conditioned on a domain.

A retrieval model has two towers (:mod:`polyrec.retrieval.models`): the user tower reads
:class:`UserInputs`, the item tower :class:`ItemInputs`, and a pair's score is the inner product of the two
embeddings. Both towers see the domain, so one user (or item) has one embedding per domain.

Conventions shared by the data pipeline, the models, the loss and the metrics:

- items are numbered ``0 .. I-1`` (the catalogue's row order); a history slot holds ``item + 1`` and ``0``
  is padding;
- users are numbered ``0 .. U-1``;
- domains are numbered ``0 .. D-1`` in the order of the schema's domain names;
- every categorical value is an index into its field's vocabulary, ``0`` reserved for out-of-vocabulary or
  missing values (a multi-valued field pads with ``0`` too).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class UserInputs:
    """The user side of a batch.

    Args:
        sparse: categorical user features, one column per user field of the schema (user id, gender, ...).
        history: the user's most recent positives strictly before the target, as ``item + 1`` (``0``: padding).
        domain: the domain each row is embedded for.

    Shape:
        sparse ``[B, F_u]`` long; history ``[B, L]`` long; domain ``[B]`` long.
    """

    sparse: Tensor
    history: Tensor
    domain: Tensor

    def __len__(self) -> int:
        return int(self.domain.shape[0])

    def to(self, device: torch.device | str) -> UserInputs:
        return UserInputs(*(getattr(self, f.name).to(device) for f in fields(self)))

    def select(self, rows: Tensor) -> UserInputs:
        """The rows ``rows`` (an index tensor) of this batch."""
        return UserInputs(*(getattr(self, f.name).index_select(0, rows) for f in fields(self)))

    def with_domain(self, domain: Tensor | int) -> UserInputs:
        """The same rows, embedded for ``domain`` (a tensor ``[B]`` or one domain for every row)."""
        if isinstance(domain, int):
            domain = torch.full_like(self.domain, domain)
        return UserInputs(self.sparse, self.history, domain)


@dataclass
class ItemInputs:
    """The item side of a batch.

    Args:
        sparse: categorical item features, one column per item field of the schema (item id, release year, ...);
            column 0 is always the item id.
        multi: a multi-valued item feature (genres), padded with ``0``.
        domain: the domain each row is embedded for.

    Shape:
        sparse ``[B, F_i]`` long; multi ``[B, G]`` long; domain ``[B]`` long.
    """

    sparse: Tensor
    multi: Tensor
    domain: Tensor

    def __len__(self) -> int:
        return int(self.domain.shape[0])

    def to(self, device: torch.device | str) -> ItemInputs:
        return ItemInputs(*(getattr(self, f.name).to(device) for f in fields(self)))

    def select(self, rows: Tensor) -> ItemInputs:
        """The rows ``rows`` (an index tensor) of this batch."""
        return ItemInputs(*(getattr(self, f.name).index_select(0, rows) for f in fields(self)))

    def with_domain(self, domain: Tensor | int) -> ItemInputs:
        """The same rows, embedded for ``domain`` (a tensor ``[B]`` or one domain for every row)."""
        if isinstance(domain, int):
            domain = torch.full_like(self.domain, domain)
        return ItemInputs(self.sparse, self.multi, domain)
