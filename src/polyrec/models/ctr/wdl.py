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

from ...data.batch import Batch
from ...layers.linear import LinearPart
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class WDLConfig(ModelConfig):
    """Config of :class:`WDLModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: deep-part sizes, each >= 1; empty drops the deep part (the wide, linear part alone).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))


@register_model("wdl", tags=("ctr",))
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
        in_dim = self._build_embeddings()
        self.linear = LinearPart(schema)
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        logits = self.linear(batch)
        if self.dnn is not None:
            logits = logits + self.dnn(self.flat_inputs(batch)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
