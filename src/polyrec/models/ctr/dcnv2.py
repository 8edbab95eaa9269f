"""DCN-V2 (Wang et al., WWW 2021).

x_0 = [field embeddings, dense values] goes through the DCN-V2 cross network (x_{l+1} = x_0 ⊙ (W_l x_l +
b_l) + x_l, Eq. 1; optionally a mixture of low-rank experts, Sec. 5) and a deep MLP, combined either
``stacked`` (the MLP reads the cross output) or ``parallel`` (both read x_0, outputs concatenated), each
followed by one linear layer to the logit (Sec. 3, Fig. 1).

Readings of the paper made here:

- ``structure`` defaults to ``parallel``; the paper reports neither structure dominating (it depends on
  the data set) and ``parallel`` matches DCN v1's layout.
- ``low_rank=None, num_experts=1`` is the full-rank DCN-V2; ``low_rank=r`` with ``num_experts=K`` is
  DCN-Mix (the paper's cost-effective variant; g = tanh).
- ``hidden_units=()`` drops the deep network (the cross network alone, then the output layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import param
from ...data.batch import Batch
from ...layers.interaction import CrossNetworkV2
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class DCNv2Config(ModelConfig):
    """Config of :class:`DCNv2Model` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: deep-network sizes, each >= 1; empty drops the deep network.
        num_cross_layers: cross layers, >= 1.
        low_rank: rank r >= 1 of the cross layers' low-rank factors; None for full-rank W.
        num_experts: low-rank (or full-rank) experts per cross layer, >= 1, mixed by a softmax gate.
        structure: ``parallel`` (cross ∥ deep on x_0) or ``stacked`` (deep on the cross output).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    num_cross_layers: int = param(3, ge=1)
    low_rank: int | None = param(None, ge=1)
    num_experts: int = param(1, ge=1)
    structure: Literal["parallel", "stacked"] = "parallel"


@register_model("dcnv2", tags=("ctr",))
class DCNv2Model(Model):
    """DCN-V2: full-rank or mixture-of-low-rank cross network with a deep MLP, stacked or parallel.

    Reference: R. Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
    Learning to Rank Systems", WWW 2021, Eq. 1 (cross layer), Sec. 5 (mixture of low-rank experts), Fig. 1
    (stacked and parallel structures).

    Shape:
        forward(batch) -> logits ``[B]``; x_0 is ``[B, F·E + Fd]``.

    Example:
        >>> model = create_model("dcnv2", schema, low_rank=32, num_experts=4, structure="stacked")  # doctest: +SKIP
    """

    Config = DCNv2Config

    def __init__(self, schema, config: DCNv2Config) -> None:
        super().__init__(schema, config)
        in_dim = self._build_embeddings()
        self.cross = CrossNetworkV2(in_dim, config.num_cross_layers, config.low_rank, config.num_experts)
        self.stacked = config.structure == "stacked"
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout)
        if self.dnn is None:
            out_dim = in_dim
        else:
            out_dim = self.dnn.output_dim if self.stacked else in_dim + self.dnn.output_dim
        self.out = nn.Linear(out_dim, 1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = self.flat_inputs(batch)
        crossed = self.cross(x0)
        if self.dnn is None:
            h = crossed
        elif self.stacked:
            h = self.dnn(crossed)
        else:
            h = torch.cat([crossed, self.dnn(x0)], dim=1)
        logits = self.out(h).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
