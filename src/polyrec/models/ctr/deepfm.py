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

from ...data.batch import Batch
from ...layers.interaction import FMInteraction
from ...layers.linear import LinearPart
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class DeepFMConfig(ModelConfig):
    """Config of :class:`DeepFMModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        embedding_dim: E, shared by the FM and the deep component.
        hidden_units: deep-component sizes, each >= 1; empty drops the deep component (a plain FM).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))


@register_model("deepfm", tags=("ctr",))
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
        in_dim = self._build_embeddings()
        self.linear = LinearPart(schema)
        self.fm = FMInteraction(reduce_sum=True)
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        logits = self.linear(batch) + self.fm(emb).squeeze(-1)
        if self.dnn is not None:
            logits = logits + self.dnn(self.flat_inputs(batch, emb)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
