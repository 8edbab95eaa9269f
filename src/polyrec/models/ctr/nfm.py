"""Neural Factorization Machines (He & Chua, SIGIR 2017).

logit = linear(x) + MLP(BI(V)) (paper Eq. 1-2): the Bi-Interaction pooling f_BI(V) = Σ_{i<j} v_i ⊙ v_j
compresses all pairwise interactions into one E-vector, which an MLP turns into the non-linear part.

Readings of the paper made here:

- As in the paper (Sec. 3.3-3.4), batch normalisation and dropout are applied to the Bi-Interaction
  output (``bi_batch_norm``, ``bi_dropout``); ``dropout`` applies after each hidden layer. The paper's
  final "prediction layer" h is the MLP's output layer, so ``hidden_units=()`` is the paper's NFM-0
  (a linear map of the pooled vector).
- Dense values are concatenated to the pooled vector at the MLP input (the Bi-Interaction sees the
  field embeddings only) and enter the linear term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...data.batch import Batch
from ...layers.interaction import BiInteractionPooling
from ...layers.linear import LinearPart
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class NFMConfig(ModelConfig):
    """Config of :class:`NFMModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        embedding_dim: E, also the size of the Bi-Interaction vector.
        hidden_units: sizes of the MLP on the pooled vector, each >= 1 (an output layer of size 1 follows;
            empty: that layer alone, the paper's NFM-0).
        bi_batch_norm: batch normalisation of the Bi-Interaction vector (paper Sec. 3.4).
        bi_dropout: dropout probability on the Bi-Interaction vector (paper Sec. 3.3), in [0, 1) (0: none).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    bi_batch_norm: bool = True
    bi_dropout: float = param(0.0, ge=0, lt=1)


@register_model("nfm", tags=("ctr",))
class NFMModel(Model):
    """NFM: linear term plus an MLP over the Bi-Interaction pooling of the embeddings.

    Reference: X. He and T.-S. Chua, "Neural Factorization Machines for Sparse Predictive Analytics",
    SIGIR 2017, Eq. 2 (model), Eq. 4 (Bi-Interaction pooling), Sec. 3.3-3.4 (dropout and BN on it).

    Shape:
        forward(batch) -> logits ``[B]``; the pooled vector is ``[B, E]``.

    Example:
        >>> model = create_model("nfm", schema, bi_dropout=0.3)   # doctest: +SKIP
    """

    Config = NFMConfig

    def __init__(self, schema, config: NFMConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        self._build_embeddings()
        self.linear = LinearPart(schema)
        self.bi_pooling = BiInteractionPooling()
        self.bi_norm = nn.BatchNorm1d(E) if config.bi_batch_norm else nn.Identity()
        self.bi_dropout = nn.Dropout(config.bi_dropout) if config.bi_dropout > 0 else nn.Identity()
        self.dnn = MLP(E + len(schema.dense), config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.bi_dropout(self.bi_norm(self.bi_pooling(self.embeddings(batch))))
        logits = self.linear(batch) + self.dnn(torch.cat([pooled, batch.dense], dim=1)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
