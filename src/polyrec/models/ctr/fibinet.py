"""FiBiNET (Huang, Zhang & Zhang, RecSys 2019).

The field embeddings E are re-weighted by a squeeze-and-excitation network into V = SENET(E) (Sec. 3.3);
a bilinear-interaction layer turns E into p and another turns V into q, one vector (v_i W) ⊙ v_j per
field pair (Sec. 3.4); [p, q] is flattened into an MLP ("combination layer" and deep network, Sec. 3.5)
whose logit is added to the first-order linear term (the paper's output unit, Sec. 3.6).

Readings of the paper made here:

- p and q come from two bilinear layers with their own weights (the paper writes the same operator for
  both; the common open-source implementations, e.g. DeepCTR and FuxiCTR, use two layers).
- ``bilinear_type`` defaults to ``field_interaction`` (one W_ij per pair, the most expressive; the paper
  finds the best type depends on the data set); ``field_all`` and ``field_each`` are the cheaper variants.
- SENET uses ReLU for both excitation activations; the bottleneck has max(1, F // reduction_ratio) units.
- Dense values are concatenated to [p, q] at the MLP input and enter the linear term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...config import param
from ...data.batch import Batch
from ...layers.interaction import BilinearInteraction, SENETLayer
from ...layers.linear import LinearPart
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class FiBiNETConfig(ModelConfig):
    """Config of :class:`FiBiNETModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: sizes of the MLP on [p, q], each >= 1 (an output layer of size 1 follows; empty: that
            layer alone).
        reduction_ratio: SENET reduction ratio r >= 1 (the bottleneck has max(1, F // r) units).
        bilinear_type: ``field_all``, ``field_each`` or ``field_interaction`` (how W is shared).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    reduction_ratio: int = param(3, ge=1)
    bilinear_type: Literal["field_all", "field_each", "field_interaction"] = "field_interaction"


@register_model("fibinet", tags=("ctr",))
class FiBiNETModel(Model):
    """FiBiNET: SENET field re-weighting and bilinear interactions of both embeddings, through an MLP.

    Reference: T. Huang, Z. Zhang and J. Zhang, "FiBiNET: Combining Feature Importance and Bilinear Feature
    Interaction for Click-Through Rate Prediction", RecSys 2019, Eqs. 1-3 (SENET), 4-6 (bilinear), Sec. 3.6
    (output unit with the linear term).

    Shape:
        forward(batch) -> logits ``[B]``; p and q are ``[B, F(F−1)/2, E]`` each.

    Example:
        >>> model = create_model("fibinet", schema, bilinear_type="field_all")   # doctest: +SKIP
    """

    Config = FiBiNETConfig

    def __init__(self, schema, config: FiBiNETConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        self._build_embeddings()
        F = self.embeddings.num_fields
        if F < 2:
            raise ValueError(
                f"fibinet needs at least 2 embedded fields for bilinear interactions; the schema has {F} "
                f"({self.embeddings.sparse_names + self.embeddings.multi_names}); use mlp for a single field"
            )
        self.linear = LinearPart(schema)
        self.senet = SENETLayer(F, config.reduction_ratio)
        self.bilinear = BilinearInteraction(F, E, config.bilinear_type)
        self.bilinear_senet = BilinearInteraction(F, E, config.bilinear_type)
        in_dim = 2 * self.bilinear.num_pairs * E + len(schema.dense)
        self.dnn = MLP(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        p = self.bilinear(emb).flatten(1)
        q = self.bilinear_senet(self.senet(emb)).flatten(1)
        logits = self.linear(batch) + self.dnn(torch.cat([p, q, batch.dense], dim=1)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
