"""AITM: Adaptive Information Transfer Multi-task framework (Xi et al., "Modeling the Sequential Dependence
among Audience Multi-step Conversions with Multi-task Learning in Targeted Display Advertising", KDD 2021),
with the domains as the ordered sequence of tasks.

Each domain t has a tower ``p_t = tower_t(x)`` on the shared embeddings. Along the sequence, the
representation of domain t-1 is transferred (``q_{t-1} = g_{t-1}(z_{t-1})``, a dense ReLU layer) and the
Adaptive Information Transfer module (AIT, eq. 3-5) attends over ``{p_t, q_{t-1}}``:
``w_u = softmax_u(<h_1(u), h_2(u)> / sqrt(k))``, ``z_t = Σ_u w_u h_3(u)``; the first domain has
``z_0 = p_0``. Domain t's logit is a linear head on ``z_t``.

Adaptation to multi-domain data (one label per row, as in the DFEI paper's use of AITM as a baseline):

- The sequence order is the schema's domain order, or ``domain_order`` (domain names, first to last).
- A row of domain t is scored by ``head_t(z_t)``, the output of its own position in the chain. Computing
  ``z_t`` needs towers ``0..t`` on that row, by AITM's definition; nothing after position t runs on it.
  With rows sorted by position, the rows that reach position t are a suffix of the batch, so each step is
  one matmul on a slice, and the chain stops at the last position present in the batch. The cost of a
  row therefore grows with its position in the chain (O(t + 1) towers), never with domains after it.
- Gradient flows back along the chain, as in AITM: a row of domain t also trains towers and transfer
  layers of the domains before it.
- Serving (:mod:`polyrec.serving.inference`): how far the chain runs depends on the positions present,
  which an exported graph cannot hold. :meth:`AITMModel.forward_dense` runs every row through the whole
  chain (O(D) towers per row, the cost of the last position for every row) and reads each row's logit at
  its own position: the same logits, with no data-dependent shapes or loops.
- AITM's behavioural expectation calibrator (a hinge penalty ``max(ŷ_t − ŷ_{t−1}, 0)``) encodes that a
  conversion step cannot be likelier than the step before it; domains are not funnel steps and a row has
  only one label, so it is left out.

Defaults: towers ``[128, 64, 32]`` and attention size 32, as in the AITM authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...config import ConfigError
from ...data.batch import Batch
from ...layers.bank import LinearBank, MLPBank, linear_init_
from ...layers.domain import DomainSegments
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, feature_names, layer_sizes


@dataclass(frozen=True)
class AITMConfig(ModelConfig):
    """Config of :class:`AITMModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        tower_units: hidden sizes of each domain's tower, each >= 1 and at least one; its last size k is
            also the size of the transferred information and of the AIT attention.
        domain_order: the sequence of domains by name, first to last, each domain once (empty: the
            schema's order).
        activation: hidden activation of the towers.
        dropout: dropout after each hidden activation and after the transfer layer.
    """

    tower_units: tuple[int, ...] = layer_sizes((128, 64, 32), required=True)
    domain_order: tuple[str, ...] = feature_names()


@register_model("aitm", tags=("multidomain",))
class AITMModel(Model):
    """AITM: per-domain towers chained in domain order by adaptive information transfer (attention).

    Shape:
        forward(batch) -> logits ``[B]``; a row of the domain at position t runs towers 0..t.

    Example:
        >>> model = create_model("aitm", schema, domain_order=["d0", "d1", "d2"])   # doctest: +SKIP
        >>> model(batch).logits.shape                                              # doctest: +SKIP
        torch.Size([B])
    """

    Config = AITMConfig

    def __init__(self, schema, config: AITMConfig) -> None:
        super().__init__(schema, config)
        D = schema.num_domains
        names = list(schema.domain.values)
        order = list(config.domain_order) or names
        if sorted(order) != sorted(names):
            raise ConfigError(
                f"model.domain_order: {order!r} is not allowed; list every domain of the data once, "
                f"in chain order: {names} (model {self.model_name!r})"
            )
        # position_of[domain index] = the domain's position in the chain.
        self.register_buffer(
            "position_of", torch.tensor([order.index(n) for n in names], dtype=torch.long), persistent=False
        )
        in_dim = self._build_embeddings()
        k = config.tower_units[-1]
        self.k = k
        self.towers = MLPBank(in_dim, config.tower_units, D, config.activation, config.dropout)  # by position
        self.heads = LinearBank(k, 1, D)
        if D > 1:
            self.transfer = LinearBank(k, k, D - 1)  # position t-1 -> t
            self.attention = nn.Parameter(linear_init_(torch.empty(D - 1, 3, k, k), k))  # h1, h2, h3
        else:
            self.transfer = None
            self.register_parameter("attention", None)
        self.transfer_act = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._build_aux()

    def _ait(self, p: Tensor, q: Tensor, index: int) -> Tensor:
        """AIT (eq. 3-5) over the two candidates ``p`` (own tower) and ``q`` (transferred): ``[N, k]``."""
        u = torch.stack([p, q], dim=1)  # [N, 2, k]
        h = torch.einsum("nui,cij->cnuj", u, self.attention[index])  # [3, N, 2, k]
        w = torch.softmax((h[0] * h[1]).sum(-1) / math.sqrt(self.k), dim=1)  # [N, 2]
        return (w.unsqueeze(-1) * h[2]).sum(1)

    def forward(self, batch: Batch) -> ModelOutput:
        z = self.flat_inputs(batch)
        position = self.position_of.index_select(0, batch.domain)
        seg = DomainSegments.from_domain(position)
        x = seg.sort(z)
        present = seg.domains.tolist()
        count = dict(zip(present, seg.counts))
        outs = []
        prev, prev_start, start = None, 0, 0
        for t in range(present[-1] + 1 if present else 0):
            rows = x[start:]  # the rows whose position is >= t (a suffix of the sorted batch)
            p = self.towers.forward_member(rows, t)
            if t == 0:
                zt = p
            else:
                q = self.dropout(self.transfer_act(self.transfer.forward_member(prev[start - prev_start :], t - 1)))
                zt = self._ait(p, q, t - 1)
            n = count.get(t, 0)
            if n:
                outs.append(self.heads.forward_member(zt[:n], t))
            prev, prev_start, start = zt, start, start + n
        logits = seg.unsort(torch.cat(outs).squeeze(-1)) if outs else z.new_zeros(0)
        return ModelOutput(self.add_aux_logit(logits, batch))

    def forward_dense(self, batch: Batch) -> ModelOutput:
        """:meth:`forward` with every row through the whole chain, each logit read at the row's own position.

        The same logits as :meth:`forward` (to float rounding), with a fixed amount of work per row: D towers,
        D - 1 transfers and D heads, whatever the positions present, so the graph has no data-dependent
        shapes (what :mod:`polyrec.serving.inference` exports). It costs what the last position costs, for
        every row; :meth:`forward` stays the training and evaluation path.

        Shape:
            forward_dense(batch) -> logits ``[B]``.
        """
        z = self.flat_inputs(batch)
        heads, prev = [], None
        for t in range(self.num_domains):
            p = self.towers.forward_member(z, t)
            if t == 0:
                zt = p
            else:
                q = self.dropout(self.transfer_act(self.transfer.forward_member(prev, t - 1)))
                zt = self._ait(p, q, t - 1)
            heads.append(self.heads.forward_member(zt, t))
            prev = zt
        every = torch.cat(heads, dim=1)  # [B, D]: the logit of every position for every row
        position = self.position_of.index_select(0, batch.domain)
        logits = every.gather(1, position.unsqueeze(1)).squeeze(1)
        return ModelOutput(self.add_aux_logit(logits, batch))
