"""Batch loader: index gathers from the columnar tensors of an :class:`EncodedDataset`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .batch import Batch
from .dataset import EncodedDataset
from .samplers import SAMPLERS, epoch_batches


class BatchLoader:
    """Iterate :class:`Batch` objects over some rows of a data set.

    No worker processes and no per-row Python: the sampler yields index tensors and each batch is one
    ``index_select`` per column tensor.

    Args:
        dataset: the encoded data set.
        rows: row indices, or a split name (``train``, ``val``, ``test``).
        batch_size: rows per batch.
        sampler: ``mixed``, ``domain_batched``, ``domain_sequential`` or ``sequential``.
        seed: sampler seed; epoch ``e`` uses the permutation of (seed, e).
        drop_last: drop incomplete batches.

    Example:
        >>> loader = BatchLoader(ds, "train", 4096, sampler="domain_batched", seed=0)  # doctest: +SKIP
        >>> for batch in loader.epoch(0): ...                                          # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: EncodedDataset,
        rows: Tensor | str,
        batch_size: int,
        sampler: str = "mixed",
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        if isinstance(rows, str):
            if rows not in dataset.splits:
                raise KeyError(f"unknown split {rows!r}; valid splits: {sorted(dataset.splits)}")
            rows = dataset.splits[rows]
        # Fail here rather than at the first epoch.
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.batch_size = batch_size
        self.sampler = sampler
        self.seed = seed
        self.drop_last = drop_last

    def batch_indices(self, epoch: int = 0) -> list[Tensor]:
        return epoch_batches(
            self.sampler,
            self.rows,
            self.dataset.domain,
            self.dataset.schema.num_domains,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            drop_last=self.drop_last,
        )

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        for idx in self.batch_indices(epoch):
            yield self.dataset.batch(idx)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def __len__(self) -> int:
        return len(self.batch_indices(0))
