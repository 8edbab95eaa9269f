"""The embedding + MLP baseline (the papers' Base / MLP / DNN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...data.batch import Batch
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    """Config of :class:`MLPModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: DNN sizes, each >= 1 (an output layer of size 1 follows; empty: that layer alone, a
            logistic regression on the embeddings).
        norm: ``none``, ``batch`` or ``layer`` normalisation in the DNN.
        domain_embedding: add a domain-indicator embedding as an input feature (when the data does not
            already expose the domain as a feature).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    norm: Literal["none", "batch", "layer"] = "none"
    domain_embedding: bool = False


@register_model("mlp", tags=("ctr", "baseline"))
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
        in_dim = self._build_embeddings()
        self.domain_embedding = (
            nn.Embedding(schema.num_domains, config.embedding_dim) if config.domain_embedding else None
        )
        if self.domain_embedding is not None:
            nn.init.normal_(self.domain_embedding.weight, std=1e-2)
            in_dim += config.embedding_dim
        self.dnn = MLP(in_dim, config.hidden_units, config.activation, config.dropout, config.norm, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.flat_inputs(batch)
        if self.domain_embedding is not None:
            x = torch.cat([x, self.domain_embedding(batch.domain)], dim=1)
        logits = self.dnn(x).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
