"""DeepFM (Guo et al., IJCAI 2017).

logit = linear(x) + FM(V) + DNN([V, dense]) (paper Eq. 1-4): the FM component (first-order term plus
the pairwise term Σ_{i<j} <v_i, v_j>) and the deep component share the same field embeddings V.

Readings of the paper made here:

- The FM first-order term is :class:`~polyrec.layers.linear.LinearPart` (per-id weights and a linear map
  on dense values). The pairwise term uses the field embeddings only; dense values enter the first-order
  term and the DNN's input.
- A multi-valued field is one FM field whose vector is the mean of its ids' embeddings (as
  :class:`~polyrec.layers.embedding.EmbeddingCollection` pools it).
- ``hidden_units=()`` drops the deep component, leaving a factorization machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork
from ...layers.embedding import EmbeddingCollection
from ...layers.interaction import FMInteraction
from ...layers.linear import LinearPart
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class DeepFMConfig:
    """Config of :class:`DeepFMModel`.

    Args:
        embedding_dim: E, shared by the FM and the deep component.
        hidden_units: deep-component sizes; empty drops the deep component (a plain FM).
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


@register_model("deepfm")
class DeepFMModel(Model):
    """DeepFM: linear term plus FM pairwise term plus an MLP, all on shared embeddings.

    Reference: H. Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
    IJCAI 2017, Eq. 1 (ŷ = sigmoid(y_FM + y_DNN)), Eq. 2 (FM component).

    Shape:
        forward(batch) -> logits ``[B]``; the FM term sees embeddings ``[B, F, E]``.

    Example:
        >>> model = create_model("deepfm", schema, embedding_dim=8)   # doctest: +SKIP
    """

    Config = DeepFMConfig

    def __init__(self, schema, config: DeepFMConfig) -> None:
        super().__init__(schema, config)
        self.embeddings = EmbeddingCollection(schema, config.embedding_dim)
        self.linear = LinearPart(schema)
        self.fm = FMInteraction(reduce_sum=True)
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
        emb = self.embeddings(batch)
        logits = self.linear(batch) + self.fm(emb).squeeze(-1)
        if self.dnn is not None:
            logits = logits + self.dnn(torch.cat([emb.flatten(1), batch.dense], dim=1)).squeeze(-1)
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
