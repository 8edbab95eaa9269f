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

from torch import nn

from ...config import field_error
from ...data.batch import Batch
from ...layers.interaction import CIN
from ...layers.linear import LinearPart
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class XDeepFMConfig(ModelConfig):
    """Config of :class:`XDeepFMModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: DNN sizes, each >= 1; empty drops the DNN.
        cin_layer_sizes: feature maps H_k >= 1 of each CIN layer; at least one layer (the CIN is what
            xDeepFM adds to DeepFM).
        cin_split_half: send half of each hidden CIN layer's maps to the output (every size but the last
            must then be even).
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    cin_layer_sizes: tuple[int, ...] = layer_sizes((128, 128), required=True)
    cin_split_half: bool = True

    def __post_init__(self) -> None:
        sizes = self.cin_layer_sizes
        if self.cin_split_half and all(h >= 1 for h in sizes) and any(h % 2 for h in sizes[:-1]):
            raise field_error(
                "cin_layer_sizes",
                list(sizes),
                "with cin_split_half every size but the last must "
                "be even (half of each layer's maps feed the next); make them even or set "
                "cin_split_half=false",
            )


@register_model("xdeepfm", tags=("ctr",))
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
        in_dim = self._build_embeddings()
        self.linear = LinearPart(schema)
        self.cin = CIN(self.embeddings.num_fields, config.cin_layer_sizes, config.cin_split_half)
        self.cin_out = nn.Linear(self.cin.output_dim, 1)
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        logits = self.linear(batch) + self.cin_out(self.cin(emb)).squeeze(-1)
        if self.dnn is not None:
            logits = logits + self.dnn(self.flat_inputs(batch, emb)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
