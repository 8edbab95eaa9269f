"""Product-based Neural Networks: IPNN, OPNN and PNN* (Qu et al., ICDM 2016).

The product layer emits a linear signal z (the field embeddings themselves) and a quadratic signal p (one
product per field pair); an MLP on [z, p] gives the logit (paper Sec. III, Eqs. 2-6). Its first hidden
layer computes l_1 = relu(W_z z + W_p p + b_1), which is exactly a linear layer on the concatenation.

Readings of the paper made here:

- ``product_type``: ``inner`` is IPNN (p_ij = <f_i, f_j>, Eq. 7), ``outer`` is OPNN, ``both`` is PNN*
  (inner and outer signals concatenated).
- The outer product uses the per-pair kernel form v_iᵀ K_ij v_j of the journal version (Qu et al., TOIS
  2018) through :class:`~polyrec.layers.interaction.OuterProduct` (``kernel_type`` mat, vec or num),
  rather than the ICDM paper's sum-pooled "superposition" f_Σ f_Σᵀ, which discards which fields interact.
- Dense values are concatenated to [z, p] at the MLP input. ``hidden_units=()`` maps [z, p] linearly
  to the logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...data.batch import Batch
from ...layers.interaction import InnerProduct, OuterProduct
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class PNNConfig(ModelConfig):
    """Config of :class:`PNNModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: sizes of the MLP on the product layer, each >= 1 (an output layer of size 1 follows;
            empty: that layer alone).
        product_type: ``inner`` (IPNN), ``outer`` (OPNN) or ``both`` (PNN*).
        kernel_type: the outer-product kernel K_ij: ``mat`` (E×E), ``vec`` (diagonal) or ``num`` (scalar).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    product_type: Literal["inner", "outer", "both"] = "inner"
    kernel_type: Literal["mat", "vec", "num"] = "mat"


@register_model("pnn", tags=("ctr",))
class PNNModel(Model):
    """PNN: embeddings and their pairwise inner and/or outer products, concatenated, through an MLP.

    Reference: Y. Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016,
    Sec. III (Eqs. 2-7); kernel outer product from Qu et al., ACM TOIS 2018.

    Shape:
        forward(batch) -> logits ``[B]``; the product layer emits ``[B, F·E + k·F(F−1)/2]`` (k = 1 or 2).

    Example:
        >>> model = create_model("pnn", schema, product_type="both")   # PNN*  # doctest: +SKIP
    """

    Config = PNNConfig

    def __init__(self, schema, config: PNNConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        self._build_embeddings()
        F = self.embeddings.num_fields
        if F < 2:
            raise ValueError(
                f"pnn needs at least 2 embedded fields to form pairwise products; the schema has {F} "
                f"({self.embeddings.sparse_names + self.embeddings.multi_names}); use mlp for a single field"
            )
        products: list[nn.Module] = []
        if config.product_type in ("inner", "both"):
            products.append(InnerProduct(F))
        if config.product_type in ("outer", "both"):
            products.append(OuterProduct(F, E, config.kernel_type))
        self.products = nn.ModuleList(products)
        in_dim = self.embeddings.output_dim + sum(p.output_dim for p in products) + len(schema.dense)
        self.dnn = MLP(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        parts = [emb.flatten(1)] + [product(emb) for product in self.products] + [batch.dense]
        logits = self.dnn(torch.cat(parts, dim=1)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
