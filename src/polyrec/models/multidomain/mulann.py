"""MuLANN: multi-domain adversarial learning (Schoenauer-Sebag et al., "Multi-Domain Adversarial Learning",
ICLR 2019), as the STAR paper's baseline (§4.1).

A shared feature extractor (embeddings → MLP) feeds the click predictor and a domain discriminator. The
discriminator is a D-way classifier of the row's domain, trained with cross-entropy; a gradient-reversal
layer (Ganin & Lempitsky, 2015) sits between it and the extractor, so minimising the one total loss trains
the discriminator to tell the domains apart and the extractor to make them indistinguishable (MuLANN's
multi-domain generalisation of DANN). The discriminator's loss, multiplied by ``adversarial_weight``, is
returned as ``ModelOutput.aux_losses["domain_adversarial"]`` for the Task to add; ``reversal_scale`` (λ)
scales only the reversed gradient reaching the extractor.

Readings chosen:

- Click predictor. ``domain_heads=True`` (default): one head per domain on the shared features
  (:class:`~polyrec.layers.bank.MLPBank`, each row through its own domain's head). The STAR paper's
  MuLANN is "the Base model plus a domain discriminator", i.e. one shared head: ``domain_heads=False``.
- MuLANN's known/unknown-class discriminator handles classes unlabelled in some domains; CTR labels exist
  in every domain, so it has nothing to do here and is left out.
- λ is constant (no DANN warm-up schedule): the schedule depends on training progress, which belongs to
  the training loop, not the model.
- The adversarial loss is computed in eval mode too (it is then only reported, never minimised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank, mark_domain_bank
from ...layers.domain import DomainSegments
from ...layers.experts import grad_reverse
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class MuLANNConfig(ModelConfig):
    """Config of :class:`MuLANNModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: hidden sizes of the shared feature extractor, each >= 1 (empty: the heads and the
            discriminator read the embeddings).
        tower_units: hidden sizes of the click head(s), each >= 1 (a ``Linear(·, 1)`` output layer follows;
            empty: that layer alone).
        domain_heads: one head per domain (True) or one shared head (False, the STAR paper's MuLANN).
        discriminator_units: hidden sizes of the domain discriminator, each >= 1 (a ``Linear(·, D)`` output
            follows; empty: that layer alone).
        adversarial_weight: weight >= 0 of the discriminator's cross-entropy in ``aux_losses`` (0: the
            discriminator is not trained, so no adversarial signal).
        reversal_scale: λ >= 0, the factor of the reversed gradient that reaches the extractor (0: the
            discriminator trains but the extractor gets no adversarial gradient).
    """

    hidden_units: tuple[int, ...] = layer_sizes((128, 64))
    tower_units: tuple[int, ...] = layer_sizes((32,))
    domain_heads: bool = True
    discriminator_units: tuple[int, ...] = layer_sizes((32,))
    adversarial_weight: float = param(0.1, ge=0)
    reversal_scale: float = param(1.0, ge=0)


@register_model("mulann", tags=("multidomain",))
class MuLANNModel(Model):
    """MuLANN: shared extractor, click head(s) and a domain discriminator behind gradient reversal.

    Shape:
        forward(batch) -> logits ``[B]``, aux_losses ``{"domain_adversarial": []}``.

    Example:
        >>> model = create_model("mulann", schema, adversarial_weight=0.1)   # doctest: +SKIP
        >>> out = model(batch); out.aux_losses["domain_adversarial"]        # doctest: +SKIP
    """

    Config = MuLANNConfig

    def __init__(self, schema, config: MuLANNConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        self.extractor = MLP(in_dim, config.hidden_units, config.activation, config.dropout)
        feat_dim = self.extractor.output_dim
        if config.domain_heads:
            self.heads = MLPBank(feat_dim, config.tower_units, D, config.activation, config.dropout, output_dim=1)
            mark_domain_bank(self.heads)  # routed
        else:
            self.heads = MLP(feat_dim, config.tower_units, config.activation, config.dropout, output_dim=1)
        self.discriminator = MLP(feat_dim, config.discriminator_units, config.activation, config.dropout, output_dim=D)
        self._build_aux()

    def features(self, batch: Batch) -> Tensor:
        """The shared extractor's output: ``[B, hidden_units[-1]]``."""
        return self.extractor(self.flat_inputs(batch))

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.features(batch)
        if self.config.domain_heads:
            seg = DomainSegments.from_domain(batch.domain)
            logits = seg.unsort(self.heads(seg.sort(h), seg).squeeze(-1))
        else:
            logits = self.heads(h).squeeze(-1)
        logits = self.add_aux_logit(logits, batch)
        domain_logits = self.discriminator(grad_reverse(h, self.config.reversal_scale))
        if batch.domain.shape[0]:  # not len(batch): a symbolic size while exporting
            adversarial = F.cross_entropy(domain_logits, batch.domain) * self.config.adversarial_weight
        else:  # an empty batch has no domain to discriminate (cross-entropy's mean would be NaN)
            adversarial = domain_logits.sum() * 0.0
        return ModelOutput(logits, {"domain_adversarial": adversarial})
