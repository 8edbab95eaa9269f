"""Shared-Bottom: a shared MLP bottom under one tower per domain (Caruana, 1997; the multi-task baseline).

Embeddings (with dense values concatenated) → shared bottom MLP → the row's own domain tower → logit,
plus the optional auxiliary domain network of STAR §3.5. The towers are a
:class:`~polyrec.layers.domain.DomainMLPBank`: the batch is sorted by domain once, each row runs through its
own domain's tower only, and a tower learns only from its own domain's rows.

Defaults follow the Scenario-Wise-Rec benchmark's MovieLens run (bottom ``[128]``, towers ``[8]``); the
reference code's towers end in a BatchNorm/activation-free ``Linear(·, 1)`` exactly as here, but its hidden
layers carry BatchNorm, which this model leaves out. The STAR paper's Shared-Bottom shares only the
embeddings (``bottom_units=()``: each domain then has a full network of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork, DomainMLPBank, DomainSegments
from ...layers.embedding import EmbeddingCollection
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class SharedBottomConfig:
    """Config of :class:`SharedBottomModel`.

    Args:
        embedding_dim: E for every sparse feature.
        bottom_units: hidden sizes of the shared bottom MLP (empty: the towers read the embeddings).
        tower_units: hidden sizes of each domain's tower (a ``Linear(·, 1)`` output layer follows).
        activation: hidden activation.
        dropout: dropout after each hidden activation.
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    bottom_units: tuple[int, ...] = (128,)
    tower_units: tuple[int, ...] = (8,)
    activation: str = "relu"
    dropout: float = 0.0
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("shared_bottom")
class SharedBottomModel(Model):
    """Shared-Bottom: a shared MLP bottom and one tower per domain, each row through its own tower.

    Shape:
        forward(batch) -> logits ``[B]``; the towers run once per domain present in the batch.

    Example:
        >>> model = create_model("shared_bottom", schema, bottom_units=[128], tower_units=[8])   # doctest: +SKIP
        >>> model(batch).logits.shape                                                           # doctest: +SKIP
        torch.Size([B])
    """

    Config = SharedBottomConfig

    def __init__(self, schema, config: SharedBottomConfig) -> None:
        super().__init__(schema, config)
        self.embeddings = EmbeddingCollection(schema, config.embedding_dim)
        in_dim = self.embeddings.output_dim + len(schema.dense)
        self.bottom = MLP(in_dim, config.bottom_units, config.activation, config.dropout) if config.bottom_units else None
        bottom_dim = config.bottom_units[-1] if config.bottom_units else in_dim
        self.towers = DomainMLPBank(
            bottom_dim, config.tower_units, schema.num_domains, config.activation, config.dropout, output_dim=1
        )
        self.aux = (
            AuxiliaryDomainNetwork(schema.num_domains, config.embedding_dim, config.aux_hidden, activation=config.activation)
            if config.aux_network
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        z = torch.cat([self.embeddings(batch).flatten(1), batch.dense], dim=1)
        h = self.bottom(z) if self.bottom is not None else z
        seg = DomainSegments.from_domain(batch.domain)
        logits = seg.unsort(self.towers(seg.sort(h), seg).squeeze(-1))
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
