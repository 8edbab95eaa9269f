"""DFEI: Automatic Domain Feature Extraction and Personalized Integration (Meituan, 2024).

The input embedding ``e`` (eq. 2: every feature's embedding, concatenated, with the dense values) goes
through a shared tower ``s = f(e)`` and the row's own domain tower ``u = f_d(e)`` (eq. 3). Every domain
keeps a *domain feature* ``v_d``: the moving average, over training steps, of the mean of its tower's
outputs on the domain's rows of the batch (eq. 4). Each row then attends over all D domain features,
query ``h2(e)``, keys ``h3(v_d)``, values ``h1(v_d)`` (eq. 5-6), giving the personalised integration
``z``; the logit is ``MLP([s, u, v_d, z])`` with ``v_d`` the row's own domain feature (eq. 7). The paper
trains it with Algorithm 1 (one batch per domain in turn, shared parameters at lr/D): the
``dfei_cyclic`` strategy.

Readings of the paper made here:

- Eq. 3 names the domain tower's output ``u_d`` and eq. 5 the integrated feature ``z_d``, so eq. 7's
  ``[s_d, u_d, v_d, z_d]`` is [shared tower output, own domain tower output, own domain feature,
  attention output].
- Eq. 4 is applied per training step to the domains present in the batch; absent domains keep their
  value. The first batch of a domain sets ``v_d^0 = pooling(u_d^0)`` exactly as the paper says (a
  persistent per-domain flag, ``v_initialized``, remembers which domains have been seen); after that
  ``v_d ← α v_d + (1 − α) mean``. The history is detached; the current batch's mean term carries gradient
  (it is computed in the graph, as eq. 4 at step t is) but only into the loss of rows of that same
  domain (``mean_gradient``): a row sees the other domains' features as constants. With the paper's
  single-domain batches this is exactly eq. 4 in the graph; with mixed batches it keeps a domain tower
  from learning from other domains' rows.
- The authors' released code never writes the moving average back, so its inference uses the initial
  value of the variable; polyrec writes it back (a persistent buffer, saved in the state_dict) and uses
  ``v_d = v_d^T`` at inference, as the paper's text says. Nothing is updated in eval mode.
- ``h1``, ``h2``, ``h3`` are "single-layer MLPs with dimension k": one linear layer each, no activation
  (as the attention of AITM, which the paper follows).
- θ^s is "E, f, h1, h2, h3" and "the other parameters" are θ^u_d, so the prediction MLP of eq. 7 is
  per domain (``domain_head=True``, a bank like the towers); ``domain_head=False`` shares one head.
  :meth:`DFEIModel.parameter_groups` gives this split to the ``dfei_cyclic`` strategy.

Serving: :meth:`DFEIModel.fold` precomputes what inference reads of the frozen domain features, the
attention keys ``h3(v_d)`` and values ``h1(v_d)`` of every domain (:class:`FoldedDFEI`).

Shape:
    forward(batch) -> logits ``[B]``; the towers and heads cost one matmul per domain present, the
    attention O(D) per row (it reads all D domain features by definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import param
from ...data.batch import Batch
from ...layers.bank import MLPBank, mark_domain_bank
from ...layers.domain import DomainSegments
from ...layers.mlp import MLP
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class DFEIConfig(ModelConfig):
    """Config of :class:`DFEIModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        embedding_dim: E for every sparse feature (paper: 16).
        shared_units: hidden sizes of the shared tower f, each >= 1 and at least one (paper: 128, 64, 32).
        domain_units: hidden sizes of every domain tower f_d, each >= 1 and at least one; the last size is
            the size of u_d and v_d.
        head_units: hidden sizes of the prediction MLP of eq. 7, each >= 1 (an output layer of size 1
            follows; empty: that layer alone).
        domain_head: one prediction MLP per domain (θ^u_d, the paper's split) instead of one shared.
        attention_dim: k >= 1, the size of h1, h2, h3 and the √k of eq. 6 (paper: 32).
        alpha: decay α of the domain-feature moving average, eq. 4, in [0, 1] (paper: 0.9; 0: v_d is the
            current batch's mean, 1: v_d keeps its first batch's value).
        mean_gradient: let the current batch's mean term of eq. 4 carry gradient to the rows of its own
            domain (False: v_d is a constant for the loss).
        activation: hidden activation of towers and head.
        dropout: dropout after each hidden activation of towers and head.
    """

    shared_units: tuple[int, ...] = layer_sizes((128, 64, 32), required=True)
    domain_units: tuple[int, ...] = layer_sizes((128, 64, 32), required=True)
    head_units: tuple[int, ...] = layer_sizes((32,))
    domain_head: bool = True
    attention_dim: int = param(32, ge=1)
    alpha: float = param(0.9, ge=0, le=1)
    mean_gradient: bool = True


@register_model("dfei", tags=("multidomain",))
class DFEIModel(Model):
    """DFEI: shared and domain towers, moving-average domain features and attention over all domains.

    Buffers:
        v: ``[D, U]`` domain features (U = ``domain_units[-1]``), persistent.
        v_initialized: ``[D]`` whether domain d has had its first training batch (eq. 4's v_d^0).

    Shape:
        forward(batch) -> logits ``[B]``.

    Example:
        >>> model = create_model("dfei", schema, attention_dim=32, alpha=0.9)   # doctest: +SKIP
        >>> out = model(batch); out.logits.shape                                # doctest: +SKIP
    """

    Config = DFEIConfig

    def __init__(self, schema, config: DFEIConfig) -> None:
        super().__init__(schema, config)
        D, k = schema.num_domains, config.attention_dim
        in_dim = self._build_embeddings()
        self.shared_tower = MLP(in_dim, config.shared_units, config.activation, config.dropout)
        self.domain_towers = MLPBank(in_dim, config.domain_units, D, config.activation, config.dropout)
        mark_domain_bank(self.domain_towers)  # routed
        feat = config.domain_units[-1]
        self.h1 = nn.Linear(feat, k)  # values
        self.h2 = nn.Linear(in_dim, k)  # query
        self.h3 = nn.Linear(feat, k)  # keys
        head_in = config.shared_units[-1] + 2 * feat + k
        if config.domain_head:
            self.head = MLPBank(head_in, config.head_units, D, config.activation, config.dropout, output_dim=1)
            mark_domain_bank(self.head)  # routed
        else:
            self.head = MLP(head_in, config.head_units, config.activation, config.dropout, output_dim=1)
        self._build_aux()
        self.register_buffer("v", torch.zeros(D, feat))
        self.register_buffer("v_initialized", torch.zeros(D, dtype=torch.bool))
        self.scale = 1.0 / math.sqrt(k)

    # ------------------------------------------------------------------------------------ pieces
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """θ^u (``domain``: domain towers, per-domain heads, the auxiliary network's domain embedding) and
        θ^s (``shared``: everything else), for the ``dfei_cyclic`` strategy's learning rates."""
        domain = list(self.domain_towers.parameters())
        if self.config.domain_head:
            domain += list(self.head.parameters())
        if self.aux is not None:
            domain.append(self.aux.embedding.weight)
        ids = {id(p) for p in domain}
        shared = [p for p in self.parameters() if id(p) not in ids]
        return {"shared": shared, "domain": domain}

    def _domain_features(self, u: Tensor, seg: DomainSegments) -> Tensor:
        """Eq. 4 on the domains present: the ``[D, U]`` features this step uses (and, in training, the new
        buffer value). ``u`` is the domain towers' output on the domain-sorted batch."""
        if not self.training:
            return self.v
        counts = torch.tensor(seg.counts, device=u.device, dtype=u.dtype).unsqueeze(1)
        mean = u.new_zeros(seg.num_segments, u.shape[1]).index_add(0, seg.local, u) / counts
        if not self.config.mean_gradient:
            mean = mean.detach()
        old = self.v.index_select(0, seg.domains)
        # v_d^0 = pooling(u_d^0): a domain's first batch sets its feature (α_eff = 0), later ones decay.
        alpha = torch.where(self.v_initialized.index_select(0, seg.domains), self.config.alpha, 0.0).unsqueeze(1)
        new = alpha * old + (1.0 - alpha) * mean
        v = self.v.detach().index_copy(0, seg.domains, new)
        with torch.no_grad():
            self.v.index_copy_(0, seg.domains, new.detach())
            self.v_initialized[seg.domains] = True
        return v

    def attention(self, x: Tensor, v: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
        """Personalised integration (eq. 5-6) of rows ``x`` over the domain features ``v``.

        The own domain's feature enters with its gradient (if it has one); the other domains' features
        as constants, so the loss of a row never trains another domain's tower.

        Shape:
            x ``[B, D_in]``, v ``[D, U]``, domain ``[B]`` -> z ``[B, k]``, weights w ``[B, D]`` (rows sum to 1).
        """
        q = self.h2(x)
        v_const = v.detach()
        keys, values = self.h3(v_const), self.h1(v_const)
        scores = q @ keys.T
        if v.requires_grad:
            own = F.one_hot(domain, v.shape[0]).bool()
            v_own = v.index_select(0, domain)
            own_score = (q * self.h3(v_own)).sum(1, keepdim=True)
            scores = torch.where(own, own_score, scores)
        w = torch.softmax(scores * self.scale, dim=1)
        if v.requires_grad:
            w_own = w.gather(1, domain.unsqueeze(1))
            z = w.masked_fill(own, 0.0) @ values + w_own * self.h1(v_own)
        else:
            z = w @ values
        return z, w

    def forward(self, batch: Batch) -> ModelOutput:
        x, seg = self.sorted_inputs(batch)
        domain = seg.sorted_domain
        s = self.shared_tower(x)
        u = self.domain_towers(x, seg)
        v = self._domain_features(u, seg)
        z, _ = self.attention(x, v, domain)
        h = torch.cat([s, u, v.index_select(0, domain), z], dim=1)
        out = self.head(h, seg) if self.config.domain_head else self.head(h)
        logits = seg.unsort(out.squeeze(-1))
        return ModelOutput(self.add_aux_logit(logits, batch))

    @torch.no_grad()
    def fold(self) -> FoldedDFEI:
        """An inference-only view with the frozen domain features' attention keys and values precomputed."""
        return FoldedDFEI(self)


class FoldedDFEI(nn.Module):
    """DFEI at inference with the keys ``h3(v_d)`` and values ``h1(v_d)`` of every domain precomputed.

    In eval mode the domain features ``v`` are constants (eq. 4 updates them only in training), so eq. 5-6
    need ``h3(v)`` and ``h1(v)`` once, not once per batch. Produces exactly the logits of the model in eval
    mode (it runs the model in eval mode, whatever the model's mode); it shares every other module with the
    model it was folded from. Rebuild it after further training.

    Shape:
        forward(batch) -> ModelOutput with logits ``[B]``.
    """

    def __init__(self, model: DFEIModel) -> None:
        super().__init__()
        self.schema = model.schema
        self.model = model
        with torch.no_grad():
            v = model.v.detach().clone()
            self.register_buffer("v", v)
            self.register_buffer("keys", model.h3(v))
            self.register_buffer("values", model.h1(v))

    @torch.no_grad()
    def forward(self, batch: Batch) -> ModelOutput:
        model = self.model
        was_training = model.training
        model.eval()  # dropout off, as at inference (the model's mode is restored after the call)
        try:
            x, seg = model.sorted_inputs(batch)
            domain = seg.sorted_domain
            s = model.shared_tower(x)
            u = model.domain_towers(x, seg)
            w = torch.softmax((model.h2(x) @ self.keys.T) * model.scale, dim=1)
            h = torch.cat([s, u, self.v.index_select(0, domain), w @ self.values], dim=1)
            out = model.head(h, seg) if model.config.domain_head else model.head(h)
            logits = seg.unsort(out.squeeze(-1))
            return ModelOutput(model.add_aux_logit(logits, batch))
        finally:
            model.train(was_training)
