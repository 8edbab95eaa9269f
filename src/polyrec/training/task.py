"""Task: turns a model output and a batch into named losses.

The Trainer and every strategy compute losses through a task (:meth:`TrainContext.compute_loss
<polyrec.training.strategies.TrainContext.compute_loss>`), never inline: a new objective (a weighted loss,
the sampled softmax of a retrieval model) is a new task, and the models, strategies and the loop stay as
they are.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.batch import Batch
from ..models.base import ModelOutput

#: The key of the back-propagated total in a Task's losses and in a strategy's epoch statistics (logged as
#: ``train_loss``); ``BCE`` is the cross-entropy part of it.
LOSS = "loss"
BCE = "bce"


class Task(Protocol):
    """What the training loop asks of a task: ``losses(output, batch) -> {name: scalar tensor}``.

    The returned dict must hold ``"loss"``, the scalar that is back-propagated; every other entry (the
    parts of the loss, auxiliary losses) is logged as the epoch's mean. :class:`BinaryTask` is the one
    every run uses; pass another to :class:`~polyrec.training.trainer.Trainer` as ``task=``.

    Example:
        >>> class ScaledTask:
        ...     def losses(self, output, batch):
        ...         parts = BinaryTask().losses(output, batch)
        ...         return {**parts, "loss": 2 * parts["loss"]}
        >>> batch = Batch(sparse=torch.zeros(2, 0, dtype=torch.long), dense=torch.zeros(2, 0),
        ...               label=torch.tensor([0.0, 1.0]), domain=torch.tensor([0, 1]))
        >>> round(float(ScaledTask().losses(ModelOutput(torch.zeros(2)), batch)["loss"]), 4)  # 2 log 2
        1.3863
    """

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]: ...


class BinaryTask:
    """Binary cross-entropy on logits, plus the model's auxiliary losses.

    Args:
        pos_weight: optional weight of positive rows in the BCE.

    Returns from :meth:`losses`: ``{"loss": total, "bce": ..., <aux name>: ...}``; ``loss`` is what is
    back-propagated: the BCE plus every entry of ``output.aux_losses`` (already weighted by the model).

    Example:
        >>> batch = Batch(sparse=torch.zeros(2, 0, dtype=torch.long), dense=torch.zeros(2, 0),
        ...               label=torch.tensor([0.0, 1.0]), domain=torch.tensor([0, 1]))
        >>> out = ModelOutput(torch.zeros(2), aux_losses={"sparsity": torch.tensor(0.5)})
        >>> {k: round(float(v), 4) for k, v in BinaryTask().losses(out, batch).items()}
        {'bce': 0.6931, 'sparsity': 0.5, 'loss': 1.1931}
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        self.pos_weight = pos_weight

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=output.logits.device)
        bce = F.binary_cross_entropy_with_logits(output.logits, batch.label, pos_weight=pw)
        out = {BCE: bce}
        total = bce
        for name, value in output.aux_losses.items():
            out[name] = value
            total = total + value
        out[LOSS] = total
        return out
