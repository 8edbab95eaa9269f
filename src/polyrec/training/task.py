"""Task: turns a model output and a batch into named losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.batch import Batch
from ..models.base import ModelOutput

#: The key of the back-propagated total in a Task's losses and in a strategy's epoch statistics (logged as
#: ``train_loss``); ``BCE`` is the cross-entropy part of it.
LOSS = "loss"
BCE = "bce"


class BinaryTask:
    """Binary cross-entropy on logits, plus the model's auxiliary losses.

    Args:
        pos_weight: optional weight of positive rows in the BCE.

    Returns from :meth:`losses`: ``{"loss": total, "bce": ..., <aux name>: ...}``; ``loss`` is what is
    back-propagated.
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
