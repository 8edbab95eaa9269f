"""The model contract shared by every registered model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.batch import Batch
from ..data.schema import DatasetSchema


@dataclass
class ModelOutput:
    """What ``forward`` returns.

    Args:
        logits: one logit per row (never a probability).
        aux_losses: named auxiliary losses the Task adds to the main loss (weights are already applied).

    Shape:
        logits ``[B]``.
    """

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


class Model(nn.Module):
    """Base class: ``Model(schema, config)``; ``forward(batch) -> ModelOutput``.

    Subclasses set a ``Config`` dataclass, call ``super().__init__(schema, config)`` and implement
    ``forward``. :meth:`check_batch` validates a batch against the schema the model was built for.
    """

    Config: type
    model_name: str = ""

    def __init__(self, schema: DatasetSchema, config) -> None:
        super().__init__()
        self.schema = schema
        self.config = config

    @property
    def num_domains(self) -> int:
        return self.schema.num_domains

    def check_batch(self, batch: Batch) -> None:
        """Raise ValueError naming the mismatch if ``batch`` does not fit this model's schema."""
        ns, nd = len(self.schema.sparse), len(self.schema.dense)
        if batch.sparse.dim() != 2 or batch.sparse.shape[1] != ns:
            raise ValueError(
                f"batch.sparse has shape {tuple(batch.sparse.shape)} but the model's schema has {ns} sparse "
                f"features {self.schema.sparse_names}; encode the data with the model's schema"
            )
        if batch.dense.dim() != 2 or batch.dense.shape[1] != nd:
            raise ValueError(
                f"batch.dense has shape {tuple(batch.dense.shape)} but the model's schema has {nd} dense features"
            )
        missing = [f.name for f in self.schema.multi if f.name not in batch.multi]
        if missing:
            raise ValueError(f"batch lacks multi-valued feature(s) {missing} of the model's schema")
        if len(batch) and (int(batch.domain.min()) < 0 or int(batch.domain.max()) >= self.num_domains):
            bad = int(batch.domain.max()) if int(batch.domain.max()) >= self.num_domains else int(batch.domain.min())
            raise ValueError(
                f"batch.domain has index {bad}, outside the model's {self.num_domains} domains "
                f"{list(self.schema.domain.values)}"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
