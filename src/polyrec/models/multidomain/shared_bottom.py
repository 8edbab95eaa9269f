"""Shared-Bottom: a shared MLP bottom under one tower per domain (Caruana, 1997; the multi-task baseline).

Embeddings (with dense values concatenated) → shared bottom MLP → the row's own domain tower → logit,
plus the optional auxiliary domain network of STAR §3.5. The towers are a
:class:`~polyrec.layers.bank.MLPBank` routed by domain: the batch is sorted by domain once, each row runs through its
own domain's tower only, and a tower learns only from its own domain's rows.

Defaults follow the Scenario-Wise-Rec benchmark's MovieLens run (bottom ``[128]``, towers ``[8]``); the
reference code's towers end in a BatchNorm/activation-free ``Linear(·, 1)`` exactly as here, but its hidden
layers carry BatchNorm, which this model leaves out. The STAR paper's Shared-Bottom shares only the
embeddings (``bottom_units=()``: each domain then has a full network of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...data.batch import Batch
from ...layers.bank import MLPBank, mark_domain_bank
from ...layers.domain import DomainSegments
from ...layers.mlp import optional_mlp
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class SharedBottomConfig(ModelConfig):
    """Config of :class:`SharedBottomModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        bottom_units: hidden sizes of the shared bottom MLP, each >= 1 (empty: the towers read the
            embeddings).
        tower_units: hidden sizes of each domain's tower, each >= 1 (a ``Linear(·, 1)`` output layer
            follows; empty: that layer alone).
    """

    bottom_units: tuple[int, ...] = layer_sizes((128,))
    tower_units: tuple[int, ...] = layer_sizes((8,))


@register_model("shared_bottom", tags=("multidomain",))
class SharedBottomModel(Model):
    """Shared-Bottom: a shared MLP bottom and one tower per domain, each row through its own tower.

    Shape:
        forward(batch) -> logits ``[B]``; the towers run once per domain present in the batch.

    Example:
        >>> model = create_model("shared_bottom", schema, bottom_units=[128], tower_units=[8])   # doctest: +SKIP
        >>> model(batch).logits.shape                                                           # doctest: +SKIP
        torch.Size([B])
    """

    Config = SharedBottomConfig

    def __init__(self, schema, config: SharedBottomConfig) -> None:
        super().__init__(schema, config)
        in_dim = self._build_embeddings()
        self.bottom = optional_mlp(in_dim, config.bottom_units, config.activation, config.dropout)
        bottom_dim = config.bottom_units[-1] if config.bottom_units else in_dim
        self.towers = MLPBank(
            bottom_dim, config.tower_units, schema.num_domains, config.activation, config.dropout, output_dim=1
        )
        mark_domain_bank(self.towers)  # routed: a row through its own domain's tower
        self._build_aux()

    def forward(self, batch: Batch) -> ModelOutput:
        z = self.flat_inputs(batch)
        h = self.bottom(z) if self.bottom is not None else z
        seg = DomainSegments.from_domain(batch.domain)
        logits = seg.unsort(self.towers(seg.sort(h), seg).squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))
