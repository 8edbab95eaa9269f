"""The typed mini-batch that flows from the loader into every model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Batch:
    """A mini-batch of encoded rows.

    Args:
        sparse: single-valued ids, one column per sparse feature in schema order.
        dense: dense values, one column per dense feature in schema order.
        multi: multi-valued ids per feature, padded with 0 to the feature's ``max_len``.
        label: binary labels as floats.
        domain: domain index of each row.
        user: user index of each row (for GAUC), if the schema has a user feature.

    Shape:
        sparse ``[B, Fs]`` int64, dense ``[B, Fd]`` float32, multi ``{name: [B, L]}`` int64,
        label ``[B]`` float32, domain ``[B]`` int64, user ``[B]`` int64.

    Multi-valued features are stored padded rather than as (values, offsets): a batch is then a single
    index gather per tensor, which is what keeps the data path fast; pooling masks the padding.
    """

    sparse: Tensor
    dense: Tensor
    label: Tensor
    domain: Tensor
    multi: dict[str, Tensor] = field(default_factory=dict)
    user: Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            sparse=self.sparse.to(device, non_blocking=True),
            dense=self.dense.to(device, non_blocking=True),
            label=self.label.to(device, non_blocking=True),
            domain=self.domain.to(device, non_blocking=True),
            multi={k: v.to(device, non_blocking=True) for k, v in self.multi.items()},
            user=None if self.user is None else self.user.to(device, non_blocking=True),
        )

    def select(self, index: Tensor) -> Batch:
        """Rows ``index`` of this batch (a gather on every tensor)."""
        return Batch(
            sparse=self.sparse[index],
            dense=self.dense[index],
            label=self.label[index],
            domain=self.domain[index],
            multi={k: v[index] for k, v in self.multi.items()},
            user=None if self.user is None else self.user[index],
        )
