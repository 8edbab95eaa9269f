"""Wide & Deep (Cheng et al., DLRS 2016).

logit = wide(x) + deep(x): the wide part is :class:`~polyrec.layers.linear.LinearPart` (one weight per id
plus a linear map on dense values); the deep part is an MLP on the concatenated field embeddings and
dense values. Both are trained jointly (paper Sec. 3.3, Eq. 3).

Readings of the paper made here:

- The paper's wide part also holds hand-made cross-product transformations; here it takes the raw
  features (a cross feature is simply another sparse feature of the schema), as the common open-source
  ports do. The paper trains the wide part with FTRL + L1 and the deep part with AdaGrad; here one
  optimiser trains both.
- ``hidden_units=()`` drops the deep part, leaving logistic regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork
from ...layers.embedding import EmbeddingCollection
from ...layers.linear import LinearPart
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class WDLConfig:
    """Config of :class:`WDLModel`.

    Args:
        embedding_dim: E for every sparse feature.
        hidden_units: deep-part sizes; empty drops the deep part.
        activation: hidden activation.
        dropout: dropout after each hidden layer.
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (256, 128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("wdl")
class WDLModel(Model):
    """Wide & Deep: a linear (wide) term plus an MLP (deep) on embeddings and dense values.

    Reference: H.-T. Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016, Eq. 3.

    Shape:
        forward(batch) -> logits ``[B]``.

    Example:
        >>> model = create_model("wdl", schema, hidden_units=[64, 32])   # doctest: +SKIP
    """

    Config = WDLConfig

    def __init__(self, schema, config: WDLConfig) -> None:
        super().__init__(schema, config)
        self.embeddings = EmbeddingCollection(schema, config.embedding_dim)
        self.linear = LinearPart(schema)
        in_dim = self.embeddings.output_dim + len(schema.dense)
        self.dnn = (
            MLP(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
            if config.hidden_units
            else None
        )
        self.aux = (
            AuxiliaryDomainNetwork(schema.num_domains, config.embedding_dim, config.aux_hidden)
            if config.aux_network
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        logits = self.linear(batch)
        if self.dnn is not None:
            deep_in = torch.cat([self.embeddings(batch).flatten(1), batch.dense], dim=1)
            logits = logits + self.dnn(deep_in).squeeze(-1)
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
