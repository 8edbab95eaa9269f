"""AutoInt and AutoInt+ (Song et al., CIKM 2019).

Field embeddings go through a stack of multi-head self-attention "interacting layers" (paper Sec. 4.3,
Eqs. 5-8, each with a projected residual and ReLU); the last layer's field vectors are flattened and mapped
to a logit (Eq. 9). With non-empty ``hidden_units`` an MLP on the embeddings and dense values adds its
logit: the paper's AutoInt+ (Sec. 5.6, "jointly trained with a feed-forward network").

Readings of the paper made here:

- The paper's experiments use 3 interacting layers, 2 heads and d = 32 with E = 16; here d defaults to E
  (``attention_dim=0``) so the width follows the embedding size, and attention logits are scaled by √d
  (``attention_scale``, the Transformer convention; the paper uses the plain inner product, reachable with
  ``attention_scale=False``).
- AutoInt+ sums the two logits (as the authors' released code does) rather than concatenating the two
  representations into one output layer.
- Dense values join the flattened attention output at the output layer (so plain AutoInt does not ignore
  them) and the MLP input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...data.batch import Batch
from ...layers.interaction import SelfAttentionInteraction
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class AutoIntConfig(ModelConfig):
    """Config of :class:`AutoIntModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: sizes of the AutoInt+ MLP branch, each >= 1; empty gives plain AutoInt.
        activation: hidden activation of the MLP branch.
        dropout: dropout after each hidden layer of the MLP branch.
        num_attention_layers: number of stacked interacting layers, >= 1 (the attention stack is the model).
        num_heads: attention heads H per layer, >= 1.
        attention_dim: per-head size d of queries, keys and values, >= 1, or 0: ``embedding_dim``.
        use_residual: the projected residual connection of each interacting layer (Eq. 8).
        attention_scale: divide attention logits by √d.
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    num_attention_layers: int = param(3, ge=1)
    num_heads: int = param(2, ge=1)
    attention_dim: int = param(0, ge=0)
    use_residual: bool = True
    attention_scale: bool = True


@register_model("autoint", tags=("ctr",))
class AutoIntModel(Model):
    """AutoInt(+): stacked multi-head self-attention over field embeddings, plus an optional MLP branch.

    Reference: W. Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks", CIKM 2019, Eqs. 5-9; AutoInt+ in Sec. 5.6.

    Shape:
        forward(batch) -> logits ``[B]``; interacting layers map ``[B, F, E]`` -> ``[B, F, H·d]``.

    Example:
        >>> model = create_model("autoint", schema, num_heads=4, hidden_units=[])   # plain AutoInt  # doctest: +SKIP
    """

    Config = AutoIntConfig

    def __init__(self, schema, config: AutoIntConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        in_dim = self._build_embeddings()
        d = config.attention_dim or E
        layers, dim = [], E
        for _ in range(config.num_attention_layers):
            layer = SelfAttentionInteraction(dim, d, config.num_heads, config.use_residual, config.attention_scale)
            layers.append(layer)
            dim = layer.output_dim
        self.attention = nn.Sequential(*layers)
        self.attention_out = nn.Linear(self.embeddings.num_fields * dim + len(schema.dense), 1)
        self.dnn = optional_mlp(in_dim, config.hidden_units, config.activation, config.dropout, output_dim=1)
        self._build_aux(activation="relu")  # config.activation is the DNN's only

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embeddings(batch)
        attended = self.attention(emb).flatten(1)
        logits = self.attention_out(torch.cat([attended, batch.dense], dim=1)).squeeze(-1)
        if self.dnn is not None:
            logits = logits + self.dnn(self.flat_inputs(batch, emb)).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))
