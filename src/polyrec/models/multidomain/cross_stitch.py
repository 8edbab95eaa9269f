"""Cross-Stitch networks (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016), with
each domain as a task.

Each domain has its own fully-connected network on the shared embeddings; after every hidden layer a
cross-stitch unit (eq. 1, ``x̃_d = Σ_e α_de x_e``) replaces each domain's hidden state with a learnt linear
combination of all domains' hidden states; each domain's output layer reads its own stitched column. This
is the STAR paper's baseline (§4.1: "each domain has a 7-layer fully-connected network and the cross-stitch
units are added in each hidden layer").

Reading chosen, and its cost. A row of domain p is scored by column p of the last layer, but column p at
layer l mixes *every* domain's column at layer l, which comes from every domain's network at layer l-1. So
the faithful model needs all D columns for every row at every hidden layer: there is no "own column plus
one shared column" shortcut that keeps the method (that would be a two-task cross-stitch between a shared
and a domain network, a different model). It is implemented faithfully: the D per-domain layers are one bank
``[D, D_in, D_out]`` run as a single batched matmul over ``[D, B, ·]`` (cost O(D) per row by the method's
definition; D is small in the benchmarks), with two savings that change nothing: the last cross-stitch
computes only each row's own column, and the output layer runs once per present domain on the
domain-sorted batch. Every domain's network receives gradient from every row through the units; that is
how cross-stitch shares information.

``α`` is initialised with ``stitch_self_weight`` on the diagonal and the rest spread evenly (the paper's
(0.9, 0.1) for two tasks). The paper also trains ``α`` with a larger learning rate and starts from
pre-trained single-task networks; both belong to the training setup, not the model, and are not done here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import LinearBank
from ...layers.experts import CrossStitchUnit
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class CrossStitchConfig(ModelConfig):
    """Config of :class:`CrossStitchModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: hidden sizes of every domain's network, each >= 1 and at least one (the units follow
            the hidden layers); a cross-stitch unit follows each hidden layer and a per-domain
            ``Linear(·, 1)`` output layer the last one.
        stitch_self_weight: initial diagonal of every cross-stitch matrix α (α_S in the paper), in [0, 1]:
            each row of α starts as a convex combination, α_S on the own column and (1 − α_S)/(D − 1) on
            each other (1: the domains start apart, as separate networks).
    """

    hidden_units: tuple[int, ...] = layer_sizes((128, 64, 32), required=True)
    stitch_self_weight: float = param(0.9, ge=0, le=1)


@register_model("cross_stitch", tags=("multidomain",))
class CrossStitchModel(Model):
    """Cross-Stitch: one network per domain, hidden layers linked by learnt cross-stitch units.

    Shape:
        forward(batch) -> logits ``[B]``; every hidden layer runs all D domain networks on every row (one
        batched matmul), as the method defines.

    Example:
        >>> model = create_model("cross_stitch", schema, hidden_units=[64, 32])   # doctest: +SKIP
        >>> model(batch).logits.shape                                            # doctest: +SKIP
        torch.Size([B])
    """

    Config = CrossStitchConfig

    def __init__(self, schema, config: CrossStitchConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        sizes = [in_dim, *config.hidden_units]
        self.layers = nn.ModuleList(LinearBank(a, b, D) for a, b in zip(sizes[:-1], sizes[1:]))
        self.stitches = nn.ModuleList(CrossStitchUnit(D, config.stitch_self_weight) for _ in config.hidden_units)
        self.out = LinearBank(sizes[-1], 1, D)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        h, seg = self.sorted_inputs(batch)  # [B, in]: every domain network reads the same first input
        last = len(self.layers) - 1
        for i, (layer, stitch) in enumerate(zip(self.layers, self.stitches)):
            h = self.dropout(self.act(layer(h)))  # [D, B, H]
            h = stitch(h) if i < last else stitch.forward_rows(h, seg.sorted_domain)  # last: own column only
        logits = seg.unsort(self.out(h, seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
