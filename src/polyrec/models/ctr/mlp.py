"""The embedding + MLP baseline (the papers' Base / MLP / DNN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork
from ...layers.embedding import EmbeddingCollection
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class MLPConfig:
    """Config of :class:`MLPModel`.

    Args:
        embedding_dim: E for every sparse feature.
        hidden_units: DNN sizes.
        activation: hidden activation.
        dropout: dropout after each hidden layer.
        norm: ``none``, ``batch`` or ``layer`` normalisation in the DNN.
        domain_embedding: add a domain-indicator embedding as an input feature (when the data does not
            already expose the domain as a feature).
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (256, 128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    norm: Literal["none", "batch", "layer"] = "none"
    domain_embedding: bool = False
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("mlp")
class MLPModel(Model):
    """Embeddings of all features, concatenated with dense values, through an MLP to one logit.

    One network for all domains; the domain can enter as a feature (``domain_embedding`` or the data's
    domain feature) and through STAR's auxiliary network.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = MLPConfig

    def __init__(self, schema, config: MLPConfig) -> None:
        super().__init__(schema, config)
        self.embeddings = EmbeddingCollection(schema, config.embedding_dim)
        self.domain_embedding = nn.Embedding(schema.num_domains, config.embedding_dim) if config.domain_embedding else None
        if self.domain_embedding is not None:
            nn.init.normal_(self.domain_embedding.weight, std=1e-2)
        in_dim = self.embeddings.output_dim + len(schema.dense) + (config.embedding_dim if config.domain_embedding else 0)
        self.dnn = MLP(in_dim, config.hidden_units, config.activation, config.dropout, config.norm, output_dim=1)
        self.aux = (
            AuxiliaryDomainNetwork(schema.num_domains, config.embedding_dim, config.aux_hidden)
            if config.aux_network
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        parts = [self.embeddings(batch).flatten(1), batch.dense]
        if self.domain_embedding is not None:
            parts.append(self.domain_embedding(batch.domain))
        logits = self.dnn(torch.cat(parts, dim=1)).squeeze(-1)
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
