"""Deep & Cross Network (Wang et al., ADKDD 2017).

x_0 = [field embeddings, dense values] feeds a cross network (x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l, Eq. 3)
and a deep MLP in parallel; their outputs are concatenated and mapped to the logit (Eq. 6, the
"combination layer").

Readings of the paper made here:

- The paper's x_0 stacks the embeddings and the normalised dense features; so does this one.
- ``hidden_units=()`` drops the deep network, leaving the cross network and the combination layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...data.batch import Batch
from ...layers.domain import AuxiliaryDomainNetwork
from ...layers.embedding import EmbeddingCollection
from ...layers.interaction import CrossNetwork
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelOutput


@dataclass(frozen=True)
class DCNConfig:
    """Config of :class:`DCNModel`.

    Args:
        embedding_dim: E for every sparse feature.
        hidden_units: deep-network sizes; empty drops the deep network.
        activation: hidden activation.
        dropout: dropout after each hidden layer.
        num_cross_layers: L_c, cross layers.
        aux_network: add STAR's auxiliary domain network (STAR §3.5) to the logit.
        aux_hidden: hidden sizes of the auxiliary network.
    """

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (256, 128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    num_cross_layers: int = 3
    aux_network: bool = False
    aux_hidden: tuple[int, ...] = (32,)


@register_model("dcn")
class DCNModel(Model):
    """DCN: a cross network and a deep MLP side by side on the embeddings, combined into one logit.

    Reference: R. Wang, B. Fu, G. Fu and M. Wang, "Deep & Cross Network for Ad Click Predictions",
    ADKDD 2017, Eqs. 3 (cross layer) and 6 (combination layer).

    Shape:
        forward(batch) -> logits ``[B]``; x_0 is ``[B, F·E + Fd]``.

    Example:
        >>> model = create_model("dcn", schema, num_cross_layers=2)   # doctest: +SKIP
    """

    Config = DCNConfig

    def __init__(self, schema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        self.embeddings = EmbeddingCollection(schema, config.embedding_dim)
        in_dim = self.embeddings.output_dim + len(schema.dense)
        self.cross = CrossNetwork(in_dim, config.num_cross_layers)
        self.dnn = (
            MLP(in_dim, config.hidden_units, config.activation, config.dropout) if config.hidden_units else None
        )
        self.out = nn.Linear(in_dim + (self.dnn.output_dim if self.dnn is not None else 0), 1)
        self.aux = (
            AuxiliaryDomainNetwork(schema.num_domains, config.embedding_dim, config.aux_hidden)
            if config.aux_network
            else None
        )

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = torch.cat([self.embeddings(batch).flatten(1), batch.dense], dim=1)
        parts = [self.cross(x0)]
        if self.dnn is not None:
            parts.append(self.dnn(x0))
        logits = self.out(torch.cat(parts, dim=1)).squeeze(-1)
        if self.aux is not None:
            logits = logits + self.aux(batch.domain)
        return ModelOutput(logits)
