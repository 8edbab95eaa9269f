"""xDeepFM (Lian et al., KDD 2018).

logit = linear(x) + w_cinᵀ p⁺ + DNN([E, dense]) (paper Eq. 9): the Compressed Interaction Network builds
explicit vector-wise interactions of bounded degree from the field embeddings (Eq. 6), each layer's feature
maps are sum-pooled over the embedding dimension into p⁺, and an MLP learns implicit interactions from the
same embeddings.

Readings of the paper made here:

- CIN feature maps are linear and ``cin_split_half`` follows the authors' released code (half of every
  hidden layer's maps go to the output, half to the next layer).
- ``hidden_units=()`` drops the DNN (the paper's "CIN + linear" ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork
from ...layers.embedding import EmbeddingCollection
from ...layers.interaction import CIN
from ...layers.linear import LinearPart
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class XDeepFMConfig:
    """Config of :class:`XDeepFMModel`.

    Args:
        embedding_dim: E for every sparse feature.
        hidden_units: DNN sizes; empty drops the DNN.
        activation: hidden activation.
        dropout: dropout after each hidden layer.
        cin_layer_sizes: feature maps H_k of each CIN layer.
        cin_split_half: send half of each hidden CIN layer's maps to the output (they must then be even).
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (256, 128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    cin_layer_sizes: tuple[int, ...] = (128, 128)
    cin_split_half: bool = True
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("xdeepfm")
class XDeepFMModel(Model):
    """xDeepFM: linear term plus Compressed Interaction Network plus an MLP on shared embeddings.

    Reference: J. Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
    Recommender Systems", KDD 2018, Eq. 6 (CIN layer), Eq. 9 (output unit).

    Shape:
        forward(batch) -> logits ``[B]``; the CIN maps ``[B, F, E]`` -> ``[B, Σ H_k]`` (halved with split_half).

    Example:
        >>> model = create_model("xdeepfm", schema, cin_layer_sizes=[64, 64])   # doctest: +SKIP
    """

    Config = XDeepFMConfig

    def __init__(self, schema, config: XDeepFMConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        self.embeddings = EmbeddingCollection(schema, E)
        self.linear = LinearPart(schema)
        self.cin = CIN(self.embeddings.num_fields, config.cin_layer_sizes, config.cin_split_half)
        self.cin_out = nn.Linear(self.cin.output_dim, 1)
        in_dim = self.embeddings.output_dim + len(schema.dense)
        self.dnn = (
            MLP(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
            if config.hidden_units
            else None
        )
        self.aux = (
            AuxiliaryDomainNetwork(schema.num_domains, E, config.aux_hidden)
            if config.aux_network
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        logits = self.linear(batch) + self.cin_out(self.cin(emb)).squeeze(-1)
        if self.dnn is not None:
            logits = logits + self.dnn(torch.cat([emb.flatten(1), batch.dense], dim=1)).squeeze(-1)
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
