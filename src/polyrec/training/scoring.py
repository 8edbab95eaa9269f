"""The one evaluation loop: a model run over some rows of a data set, in batches, in eval mode, no grad.

:func:`score_rows` is every pass that runs a model without training it: :func:`~polyrec.training.trainer.predict`
(the logits), :func:`~polyrec.training.trainer.evaluate` (the metrics, fed batch by batch through
``on_batch``) and :func:`~polyrec.training.calibration.recompute_norm_statistics` (a pass whose only
product is the statistics the layers accumulate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # only for annotations
    from ..data.batch import Batch
    from ..data.dataset import EncodedDataset


@dataclass(frozen=True)
class Scores:
    """What a model gave some rows, with what the metrics need of each row (all on the CPU, in row order).

    Shape:
        logits ``[N]`` float32; label ``[N]``; domain ``[N]`` long; user ``[N]`` or None (no user ids).
    """

    logits: Tensor
    label: Tensor
    domain: Tensor
    user: Tensor | None


@torch.no_grad()
def score_rows(
    model: nn.Module,
    dataset: EncodedDataset,
    rows: Tensor,
    batch_size: int = 32768,
    device: torch.device | str = "cpu",
    on_batch: Callable[[Batch, Tensor], None] | None = None,
) -> Scores:
    """Run ``model`` in eval mode over ``rows`` of ``dataset``, ``batch_size`` rows at a time, in order.

    The model is left in eval mode (a caller that trains on restores the mode it wants).

    Args:
        model: any ``nn.Module`` whose forward takes a batch and returns an output with ``logits``.
        dataset: where the rows come from: anything with ``batch(index_tensor)`` returning a batch with
            ``.to(device)``, ``label``, ``domain`` and ``user``.
        rows: indices of the rows, in the order wanted.
        batch_size: rows per forward pass.
        device: where each batch runs.
        on_batch: called after every batch with the batch (on the CPU) and its logits (``[B]`` float32, on
            the CPU): a streaming consumer (an evaluator's ``update``) sees the batches as they come.

    Returns:
        The logits of every row with its label, domain and user (:class:`Scores`).

    Example:
        >>> scores = score_rows(model, ds, ds.splits["test"], batch_size=4096)  # doctest: +SKIP
        >>> scores.logits.shape == ds.splits["test"].shape                     # doctest: +SKIP
        True
    """
    model.eval()
    logits, labels, domains, users = [], [], [], []
    for start in range(0, len(rows), batch_size):
        batch = dataset.batch(rows[start : start + batch_size])
        out = model(batch.to(device)).logits.float().cpu()
        if on_batch is not None:
            on_batch(batch, out)
        logits.append(out)
        labels.append(batch.label)
        domains.append(batch.domain)
        users.append(batch.user)
    if not logits:
        return Scores(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), None)
    return Scores(
        torch.cat(logits),
        torch.cat(labels),
        torch.cat(domains),
        None if any(u is None for u in users) else torch.cat(users),
    )
