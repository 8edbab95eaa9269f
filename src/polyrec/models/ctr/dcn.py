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

from ...config import param
from ...data.batch import Batch
from ...layers.interaction import CrossNetwork
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class DCNConfig(ModelConfig):
    """Config of :class:`DCNModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: deep-network sizes, each >= 1; empty drops the deep network.
        num_cross_layers: L_c, cross layers, >= 1 (the cross network is what DCN adds to an MLP).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    num_cross_layers: int = param(3, ge=1)


@register_model("dcn", tags=("ctr",))
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
        in_dim = self._build_embeddings()
        self.cross = CrossNetwork(in_dim, config.num_cross_layers)
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout)
        self.out = nn.Linear(in_dim + (self.dnn.output_dim if self.dnn is not None else 0), 1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = self.flat_inputs(batch)
        parts = [self.cross(x0)]
        if self.dnn is not None:
            parts.append(self.dnn(x0))
        logits = self.out(torch.cat(parts, dim=1)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
