"""The model contract shared by every registered model."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Check, param, validate
from ..data.batch import Batch
from ..data.schema import DatasetSchema
from ..layers.domain import AuxiliaryDomainNetwork, DomainSegments
from ..layers.embedding import EmbeddingCollection
from ..layers.mlp import activation_names

# ------------------------------------------------------------------------------ declared checks, shared
# The checks below are the vocabulary of every model config: a field declares what it allows next to its
# default, and :func:`polyrec.config.from_dict` rejects anything else when the config is read, naming the
# key (``model.hidden_units: item 0 (0) is not allowed; must be >= 1``).


def _shown(value: Any) -> Any:
    # Users write lists in YAML and on the command line; show a tuple the way they wrote it.
    return list(value) if isinstance(value, tuple) else value


def _at_least_one(value: Sequence[int]) -> str | None:
    return None if len(value) else f"{_shown(value)!r} is not allowed; name at least one layer size"


def _distinct_names(value: Sequence[str]) -> str | None:
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            return f"item {i} ({name!r}) is not allowed; every name must be a non-empty string"
    for i, name in enumerate(value):
        if name in value[:i]:
            return f"{_shown(value)!r} is not allowed; {name!r} is listed twice (name each one once)"
    return None


def _finite(value: float) -> str | None:
    return None if math.isfinite(value) else f"{value!r} is not allowed; must be a finite number"


def layer_sizes(default: tuple[int, ...], *, required: bool = False) -> Any:
    """A config field of layer sizes: every size >= 1; with ``required``, at least one size.

    Without ``required`` an empty list is allowed: the field's docstring says what it means (usually "no
    such part", a plain linear layer in its place).
    """
    return param(default, items=Check(ge=1), rule=_at_least_one if required else None)


def feature_names(default: tuple[str, ...] = ()) -> Any:
    """A config field naming features (or domains): non-empty strings, each at most once. Whether a name
    exists in the data is checked where the schema is known, when the model is built."""
    return param(default, rule=_distinct_names)


def finite_number(default: float) -> Any:
    """A float config field that may take any finite value (an initial logit, say); NaN and ±inf are not."""
    return param(default, rule=_finite)


@dataclass(frozen=True)
class ModelConfig:
    """The fields every model config shares; a model's ``Config`` inherits them and adds its own.

    Inherited fields come first in a subclass (and in its ``to_dict``). A subclass changes a default by
    declaring the field again (STAR: ``aux_network: bool = True``), with its ``param(...)`` check.

    Every field declares the values it allows (:func:`polyrec.config.param`); a bad value is rejected when
    the config is read, as ``model.<field>: <value> is not allowed; ...``.

    Args:
        embedding_dim: E for every sparse feature (and for the model's own domain embedding, if it has one);
            >= 1.
        activation: hidden activation, a name of :data:`polyrec.layers.mlp.ACTIVATIONS`.
        dropout: dropout probability after each hidden activation, in [0, 1) (0: no dropout).
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit (:meth:`Model.add_aux_logit`).
        aux_hidden: hidden sizes of the auxiliary network, each >= 1 (empty: a linear map of the domain
            embedding).
    """

    embedding_dim: int = param(16, ge=1)
    activation: str = param("relu", choices=activation_names)
    dropout: float = param(0.0, ge=0, lt=1)
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = layer_sizes((32,))


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
    against the schema the model was built for. The config's declared checks run again here, so a config
    dataclass built directly (not read with :func:`polyrec.config.from_dict`) is held to the same values;
    checks that need the schema (a feature name that must exist) belong in the subclass's ``__init__``.

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
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            # A config built directly (not read with from_dict) gets the same declared checks.
            validate(config, "model")
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
