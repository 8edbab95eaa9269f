"""The model contract shared by every registered model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.batch import Batch
from ..data.schema import DatasetSchema
from ..layers.domain import AuxiliaryDomainNetwork, DomainSegments
from ..layers.embedding import EmbeddingCollection


@dataclass(frozen=True)
class ModelConfig:
    """The fields every model config shares; a model's ``Config`` inherits them and adds its own.

    Inherited fields come first in a subclass (and in its ``to_dict``). A subclass changes a default by
    declaring the field again (STAR: ``aux_network: bool = True``).

    Args:
        embedding_dim: E for every sparse feature (and for the model's own domain embedding, if it has one).
        activation: hidden activation.
        dropout: dropout after each hidden activation.
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit (:meth:`Model.add_aux_logit`).
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    activation: str = "relu"
    dropout: float = 0.0
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


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

    Subclasses set a ``Config`` dataclass (usually a :class:`ModelConfig`), call
    ``super().__init__(schema, config)`` and implement ``forward``. :meth:`check_batch` validates a batch
    against the schema the model was built for.

    The common pieces, in one place: :meth:`_build_embeddings` and :meth:`flat_inputs` (every feature's
    embedding, flattened, then the dense values), :meth:`sorted_inputs` (the same, rows sorted by domain),
    :meth:`_build_aux` and :meth:`add_aux_logit` (STAR's auxiliary domain network). Modules are created
    where the helper is called, so a model keeps its initialisation order (and parameter names
    ``embeddings.*``, ``aux.*``).
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

    def _build_embeddings(self) -> int:
        """Create ``self.embeddings`` (E = ``config.embedding_dim``); return the width of :meth:`flat_inputs`."""
        self.embeddings = EmbeddingCollection(self.schema, self.config.embedding_dim)
        return self.embeddings.output_dim + len(self.schema.dense)

    def flat_inputs(self, batch: Batch, emb: Tensor | None = None) -> Tensor:
        """Every feature's embedding, flattened, then the dense values.

        Args:
            batch: the batch.
            emb: ``self.embeddings(batch)`` when the caller has it already (it is not recomputed).

        Shape:
            emb ``[B, F, E]`` -> ``[B, F·E + Fd]``.
        """
        flat = (self.embeddings(batch) if emb is None else emb).flatten(1)
        return torch.cat([flat, batch.dense], dim=1) if batch.dense.shape[1] else flat

    def sorted_inputs(self, batch: Batch) -> tuple[Tensor, DomainSegments]:
        """:meth:`flat_inputs` with the rows sorted by domain, and the segments that undo the sort.

        Shape:
            -> ``[B, F·E + Fd]`` (rows in domain order), segments of the batch's domains.
        """
        seg = DomainSegments.from_domain(batch.domain)
        return seg.sort(self.flat_inputs(batch)), seg

    def _build_aux(self, activation: str | None = None, embedding_dim: int | None = None, extra_dim: int = 0) -> None:
        """Create ``self.aux``: STAR's auxiliary domain network if ``config.aux_network``, else None.

        Args:
            activation: its hidden activation (default ``config.activation``).
            embedding_dim: size of its domain embedding (default ``config.embedding_dim``).
            extra_dim: width of the extra domain features passed to :meth:`add_aux_logit` (0: none).
        """
        cfg = self.config
        self.aux = (
            AuxiliaryDomainNetwork(
                self.schema.num_domains,
                cfg.embedding_dim if embedding_dim is None else embedding_dim,
                cfg.aux_hidden,
                extra_dim=extra_dim,
                activation=cfg.activation if activation is None else activation,
            )
            if cfg.aux_network
            else None
        )

    def add_aux_logit(self, logits: Tensor, batch: Batch, extra: Tensor | None = None) -> Tensor:
        """``logits`` plus the auxiliary network's logit on ``batch.domain`` (and ``extra``), if there is one.

        Shape:
            logits ``[B]``, extra ``[B, extra_dim]`` or None -> ``[B]``.
        """
        return logits if self.aux is None else logits + self.aux(batch.domain, extra)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
