"""AdaptDHM: Adaptive Distribution Hierarchical Model for multi-domain CTR prediction (Li et al., 2022).

AdaptDHM's observation: the business-defined domains need not match the data's distributions, so samples
are routed by *distribution* rather than by domain label. A distribution-adaptation module clusters the
samples online: cluster centres ``c_k`` (unit vectors, not trained by backpropagation) are compared with
each sample's key by cosine similarity, the soft assignment ``r_ik = softmax_k(u_i · c_k / τ)`` updates the
centres with momentum β (an EM-like step, ``c_k ← normalise(β c_k + (1 − β) m_k)`` with ``m_k`` the
assignment-weighted mean of the batch's keys), and each sample is served by its cluster's expert tower.
The towers are hierarchical, STAR-style: layer weights ``W ⊙ W_k`` and biases ``b + b_k`` share ``W, b``
across clusters.

Readings and simplifications made here:

- Routing is conditioned on the domain: the key is ``u = (normalise(⊘z) ⊕ normalise(⊘e_d)) / √2``, the
  sample's features and the model's own domain embedding with equal weight, so clusters can follow the
  domains, split them or merge them. The domain embedding is also an input of the towers (that is where
  it learns: the routing, as in the paper, is not trained by gradient).
- Soft assignment: the logit is the assignment-weighted sum of the K cluster towers' logits (the paper
  routes each sample to its arg-max cluster; τ → 0 recovers it). All K towers run on every row: cost grows
  with the number of clusters K (a hyper-parameter), never with the number of domains.
- One centre update per training batch, computed before the batch is routed; evaluation never moves the
  centres, so a row's prediction does not depend on its batch. The centres are a buffer, saved with the
  model. (The Scenario-Wise-Rec port sums rather than averages the assigned keys, so β has almost no
  effect, and multiplies two Xavier-initialised matrices per layer.)
- Cluster weights ``W_k`` start at 1 and ``b_k`` at 0 (STAR's initialisation): training starts from one
  shared tower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import param
from ...data.batch import Batch
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, layer_sizes


@dataclass(frozen=True)
class AdaptDHMConfig(ModelConfig):
    """Config of :class:`AdaptDHMModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: hidden sizes of each cluster tower, each >= 1 (default (64, 64), the P2 benchmark's);
            a cluster-specific output layer of size 1 follows (empty: that layer alone).
        num_clusters: K >= 1, the number of distribution clusters and expert towers (default 3).
        momentum: β of the centre update ``c ← β c + (1 − β) m``, in [0, 1) (default 0.9; 0: each batch's
            assigned mean replaces the centre; 1 would never move the centres).
        temperature: τ > 0 of the soft assignment over cosine similarities (default 0.1; τ → 0 is the
            paper's hard arg-max routing).
    """

    hidden_units: tuple[int, ...] = layer_sizes((64, 64))
    num_clusters: int = param(3, ge=1)
    momentum: float = param(0.9, ge=0, lt=1)
    temperature: float = param(0.1, gt=0)


class ClusterStarLayer(nn.Module):
    """K cluster-specific linear maps ``W ⊙ W_k``, ``b + b_k`` around a shared ``W, b``, run on every row.

    Shape:
        forward(x ``[B, D_in]`` or ``[B, K, D_in]``) -> ``[B, K, D_out]``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_clusters: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.kaiming_uniform_(self.weight.T, a=math.sqrt(5))  # nn.Linear's default, on [out, in]
        bound = 1.0 / math.sqrt(in_dim)
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))
        self.cluster_weight = nn.Parameter(torch.ones(num_clusters, in_dim, out_dim))
        self.cluster_bias = nn.Parameter(torch.zeros(num_clusters, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        w = self.cluster_weight * self.weight
        eq = "bi,kio->bko" if x.dim() == 2 else "bki,kio->bko"
        return torch.einsum(eq, x, w) + (self.cluster_bias + self.bias)


@register_model("adaptdhm", tags=("multidomain",))
class AdaptDHMModel(Model):
    """AdaptDHM (2022): samples softly routed by online clustering (conditioned on the domain) to STAR-style towers.

    Li et al., "AdaptDHM: Adaptive Distribution Hierarchical Model for Multi-Domain CTR Prediction", arXiv
    2022. See the module docstring for the routing, the centre update and the simplifications made.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = AdaptDHMConfig

    def __init__(self, schema, config: AdaptDHMConfig) -> None:
        super().__init__(schema, config)
        E, K = config.embedding_dim, config.num_clusters
        feat_dim = self._build_embeddings()
        self.domain_embedding = nn.Embedding(schema.num_domains, E)
        nn.init.normal_(self.domain_embedding.weight, std=1e-2)
        self.register_buffer("centers", F.normalize(torch.randn(K, feat_dim + E), dim=1))
        sizes = [feat_dim + E, *config.hidden_units, 1]
        self.layers = nn.ModuleList(ClusterStarLayer(a, b, K) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._build_aux()

    @torch.no_grad()
    def assign(self, features: Tensor, dom: Tensor) -> Tensor:
        """Soft cluster assignment ``[B, K]``; in training mode, first one momentum update of the centres."""
        key = torch.cat([F.normalize(features, dim=1), F.normalize(dom, dim=1)], dim=1) / math.sqrt(2.0)
        tau = self.config.temperature
        if self.training and key.shape[0] > 0:
            r = torch.softmax(key @ self.centers.T / tau, dim=1)
            means = F.normalize(r.T @ key, dim=1)  # direction of the assignment-weighted mean key
            beta = self.config.momentum
            self.centers.copy_(F.normalize(beta * self.centers + (1.0 - beta) * means, dim=1))
        return torch.softmax(key @ self.centers.T / tau, dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        features = self.flat_inputs(batch)
        dom = self.domain_embedding(batch.domain)
        r = self.assign(features.detach(), dom.detach())
        h = torch.cat([features, dom], dim=1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = self.dropout(self.act(h))
        logits = (r * h.squeeze(-1)).sum(1)  # soft routing over the K cluster towers
        return ModelOutput(self.add_aux_logit(logits, batch))
