"""STAR: Star Topology Adaptive Recommender (Sheng et al., CIKM 2021).

Embeddings → Partitioned Normalization (§3.3) → star-topology FCN (§3.4) → logit, plus the auxiliary
network on the domain indicator and the domain-describing features (§3.5) whose logit is added (eq. 7). The final layer is star-topology
too and has no activation or normalisation: its output is the logit.

Readings of the paper made here:

- PN's batch statistics are computed per domain present in the batch. The paper samples every batch from
  one domain, where this is exactly eq. 3; with mixed batches (the ``mixed`` sampler) it keeps each
  domain's rows normalised by that domain's moments rather than the whole batch's.
- PN is applied to the FCN's input representation z, as in §3.3; ``norm_hidden`` optionally adds PN after
  each hidden star layer.
- ``W_p`` is initialised to ones and ``b_p`` to zeros, so training starts from the shared network.
- The auxiliary network takes the domain indicator and the features that describe the domain (§3.5):
  ``aux_features``, by default the schema's ``domain_features`` (the data config's
  ``domain.describing``). A data set that declares none gives it the indicator alone, and it is then a
  learned per-domain bias.

Deviation, switchable: PN's statistics at inference. Eq. 4 keeps moving averages of the batch moments; the
Trainer by default sets them after every epoch to their exact values over the training rows under the
current weights (``train.precise_norm_stats: true``, :func:`polyrec.training.calibration
.recompute_norm_statistics`), because the moving averages lag the weights. On P1 (``ml1m-gender``, 5
seeds; ``benchmarks/pn_statistics_ablation.py``, ``benchmarks/results/p1_ml1m_gender/``) the moving
averages gave test WAUC 80.96 ± 0.05 but logloss 0.634 ± 0.146, with per-domain PCOC between 0.19 and 0.71
(the predicted rates far from the observed ones), against WAUC 80.82 ± 0.15 and logloss 0.4239 ± 0.0016
with the exact statistics. ``train.precise_norm_stats: false`` gives eq. 4 as written.

At serving time :meth:`StarModel.fold` precomputes each domain's ``W ⊙ W_p``, ``b + b_p`` and PN affine
(§4.4), so inference costs what a single shared network costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...config import ConfigError, param
from ...data.batch import Batch
from ...layers.domain import DomainSegments, StarLinear, segment_linear
from ...layers.mlp import activation as make_activation
from ...layers.norm import PartitionedNorm
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, feature_names, layer_sizes


@dataclass(frozen=True)
class StarConfig(ModelConfig):
    """Config of :class:`StarModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: hidden sizes of the star-topology FCN, each >= 1 (an output layer of size 1 follows;
            empty: that star layer alone).
        activation: hidden activation φ.
        partitioned_norm: PN on the FCN input (§3.3).
        norm_hidden: also PN after each hidden star layer, before the activation.
        pn_momentum: weight of the batch in PN's moving statistics, in [0, 1] (as ``nn.BatchNorm1d``'s
            momentum; 0: the moving statistics never move, which suits only ``train.precise_norm_stats``,
            where they are set exactly after every epoch).
        pn_eps: PN's ε > 0, the floor under each domain's variance (a constant feature would otherwise
            divide by zero).
        aux_network: add the auxiliary network's logit (§3.5).
        aux_hidden: hidden sizes of the auxiliary network (paper: a two-layer network, i.e. one hidden layer).
        aux_embedding_dim: size of the domain indicator embedding, >= 1, or 0: ``embedding_dim``.
        aux_features: the features that describe the domain, whose embeddings feed the auxiliary network
            with the domain indicator (§3.5); each name once, and each an embedded feature of the data
            (checked when the model is built). ``None`` (the default): the schema's domain-describing
            features (``data.domain.describing``); on data that declares none, the network sees the
            indicator alone, and is then a learned per-domain bias. ``[]``: the indicator alone, always.
    """

    hidden_units: tuple[int, ...] = layer_sizes((256, 128, 64))
    partitioned_norm: bool = True
    norm_hidden: bool = False
    pn_momentum: float = param(0.1, ge=0, le=1)
    pn_eps: float = param(1e-5, gt=0)
    aux_network: bool = True
    aux_embedding_dim: int = param(0, ge=0)
    aux_features: tuple[str, ...] | None = feature_names(None)


@register_model("star", tags=("multidomain",))
class StarModel(Model):
    """STAR: partitioned normalization, star-topology FCN and auxiliary domain network.

    Shape:
        forward(batch) -> logits ``[B]``; rows of any mix of domains, each through its own domain's
        network, at a cost that depends only on the domains present.

    Example:
        >>> model = create_model("star", schema, hidden_units=[128, 64, 32])   # doctest: +SKIP
        >>> out = model(batch); out.logits.shape                                # doctest: +SKIP
    """

    Config = StarConfig

    def __init__(self, schema, config: StarConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        in_dim = self._build_embeddings()
        self.pn = PartitionedNorm(in_dim, D, config.pn_eps, config.pn_momentum) if config.partitioned_norm else None
        sizes = [in_dim, *config.hidden_units, 1]
        self.layers = nn.ModuleList(StarLinear(a, b, D) for a, b in zip(sizes[:-1], sizes[1:]))
        self.hidden_norms = (
            nn.ModuleList(PartitionedNorm(h, D, config.pn_eps, config.pn_momentum) for h in config.hidden_units)
            if config.norm_hidden
            else None
        )
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        #: the features the auxiliary network takes besides the indicator (config, else the schema's)
        self.aux_feature_names = tuple(schema.domain_features if config.aux_features is None else config.aux_features)
        if config.aux_network:
            fields = self.embeddings.sparse_names + self.embeddings.multi_names
            for name in self.aux_feature_names:
                if name not in fields:
                    raise ConfigError(
                        f"model.aux_features: {name!r} is not allowed; it is not an embedded feature "
                        f"of the data; valid: {fields} (model {self.model_name!r})"
                    )
            self.register_buffer(
                "aux_fields",
                torch.tensor([fields.index(n) for n in self.aux_feature_names], dtype=torch.long),
                persistent=False,
            )
        self._build_aux(
            embedding_dim=config.aux_embedding_dim or config.embedding_dim,
            extra_dim=len(self.aux_feature_names) * config.embedding_dim,
        )

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        emb = self.embeddings(batch)
        return emb, self.flat_inputs(batch, emb)

    def _aux_extra(self, emb: Tensor) -> Tensor | None:
        """The ``aux_features``' embeddings, flattened, for the auxiliary network (None: none, or no network)."""
        if self.aux is None or not len(self.aux_fields):
            return None
        return emb.index_select(1, self.aux_fields).flatten(1)

    def forward(self, batch: Batch) -> ModelOutput:
        emb, z = self._inputs(batch)
        seg = DomainSegments.from_domain(batch.domain)
        h = seg.sort(z)
        if self.pn is not None:
            h = self.pn(h, seg.local, seg.domains)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, seg)
            if i < last:
                if self.hidden_norms is not None:
                    h = self.hidden_norms[i](h, seg.local, seg.domains)
                h = self.dropout(self.act(h))
        logits = seg.unsort(h.squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch, self._aux_extra(emb)))

    @torch.no_grad()
    def fold(self) -> FoldedStar:
        """An inference-only copy with every domain's weights and PN affine precomputed (STAR §4.4)."""
        return FoldedStar(self)


class FoldedStar(nn.Module):
    """STAR with per-domain ``W ⊙ W_p``, ``b + b_p`` and PN affine precomputed, for serving.

    Produces the same logits as the unfolded model in eval mode (to float rounding); it shares the
    embedding tables and auxiliary network with the model it was folded from. Rebuild it after further
    training.

    Shape:
        forward(batch) -> ModelOutput with logits ``[B]``.
    """

    def __init__(self, model: StarModel) -> None:
        super().__init__()
        self.schema = model.schema
        self.model = model  # embeddings and auxiliary network are used as they are
        with torch.no_grad():
            if model.pn is not None:
                scale, shift = model.pn.folded_affine()
                self.register_buffer("pn_scale", scale.clone())
                self.register_buffer("pn_shift", shift.clone())
            else:
                self.pn_scale = self.pn_shift = None
            self.weights = [layer.combined() for layer in model.layers]
            self.hidden_affine = (
                [n.folded_affine() for n in model.hidden_norms] if model.hidden_norms is not None else None
            )
        self.act = model.act

    @torch.no_grad()
    def forward(self, batch: Batch) -> ModelOutput:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            emb, z = model._inputs(batch)
            if self.pn_scale is not None:
                z = torch.addcmul(
                    self.pn_shift.index_select(0, batch.domain), z, self.pn_scale.index_select(0, batch.domain)
                )
            seg = DomainSegments.from_domain(batch.domain)
            h = seg.sort(z)
            last = len(self.weights) - 1
            for i, (w, b) in enumerate(self.weights):
                h = segment_linear(h, seg, w.index_select(0, seg.domains), b.index_select(0, seg.domains))
                if i < last:
                    if self.hidden_affine is not None:
                        sc, sh = self.hidden_affine[i]
                        h = torch.addcmul(sh[seg.sorted_domain], h, sc[seg.sorted_domain])
                    h = self.act(h)
            logits = seg.unsort(h.squeeze(-1))
            return ModelOutput(model.add_aux_logit(logits, batch, model._aux_extra(emb)))
        finally:
            model.train(was_training)
