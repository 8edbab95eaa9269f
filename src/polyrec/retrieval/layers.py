"""The pieces the two-tower models are built from: batch-normalised network banks and the domain interest
adaptation layers of ADI (Jiang et al., §4.1-4.2).

- :class:`NormedBank`: K MLPs of one shape, each hidden layer ``Linear → batch norm → activation`` (ADI
  §5.1.4: every method is equipped with BN). Dense, every member on every row (shared networks, experts),
  or routed, a row through its own domain's member only (domain-specific networks, one matmul per present
  domain). The batch norm of a dense bank keeps one set of statistics per member (plain BN, eq. 19) or one
  per (member, domain) (domain-specific BN, eq. 20); a routed member only ever sees its own domain's rows,
  so its BN is domain-specific by construction.
- :class:`DomainInterestAdaptation`: re-weights the embedded input fields per domain before the networks,
  as a linear transformation (eq. 22), a vanilla attention (eq. 23-24) or an SE block (eq. 25-26), with
  one block per domain (the paper's 3-SE, default), one global block (1-SE) or one block per network (4-SE).

Readings of the paper (it publishes the equations, not the sizes):

- The SE block's ``F_se`` is written ``(FC, ReLU, FC)``. The SE network it names (Hu et al.) ends the
  excitation with a sigmoid, and without one the scores start near zero and erase the input at
  initialisation, so ``se_gate="sigmoid"`` is the default; ``"none"`` is the literal reading. The hidden
  width of ``F_se`` is ``max(1, N // se_reduction)`` for N fields.
- The linear transformation starts as the identity (``W = 1, b = 0``), the attention's queries at small
  random values (every weight near σ(0) = 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.bank import LinearBank
from ..layers.domain import DomainSegments
from ..layers.mlp import activation as make_activation
from ..layers.norm import PartitionedNorm

DIAL_KINDS = ("none", "linear", "attention", "se")
DIAL_PLACEMENTS = ("domain", "global", "network")


def norm_groups(domain: Tensor, by_domain: bool) -> tuple[Tensor, Tensor]:
    """``(local, groups)`` for :class:`~polyrec.layers.norm.PartitionedNorm`: each row's statistics group.

    With ``by_domain`` the groups are the present domains (rows must be sorted by domain); without, one group.
    """
    if not by_domain:
        return torch.zeros_like(domain), domain.new_zeros(1)
    groups, local = torch.unique_consecutive(domain, return_inverse=True)
    return local, groups


class NormedBank(nn.Module):
    """K MLPs of one shape, every hidden layer ``Linear → BatchNorm → activation → [dropout]``.

    Args:
        in_dim: D_in.
        hidden_units: hidden sizes of every member (at least one).
        num: K members (a routed bank has one per domain, K = D).
        num_domains: D.
        routed: each row runs through its own domain's member only (:meth:`routed`); otherwise every member
            runs on every row (:meth:`dense`).
        domain_norm: a dense bank normalises with per-domain statistics and affine (DSBN, eq. 20) instead
            of batch-wide ones (BN, eq. 19). A routed member sees only its own domain's rows, so its
            normalisation is domain-specific either way.
        activation, dropout: after every batch norm.

    Shape:
        dense(x, domain): x ``[B, D_in]`` (every member reads it) or ``[K, B, D_in]`` (member k reads x[k]),
        domain ``[B]`` sorted -> ``[K, B, H]``.

        routed(x, seg): x ``[B, D_in]`` sorted by domain -> ``[B, H]``, a row of domain d through member d.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...],
        num: int,
        num_domains: int,
        *,
        routed: bool = False,
        domain_norm: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_units:
            raise ValueError("NormedBank: hidden_units must name at least one layer")
        if routed and num != num_domains:
            raise ValueError(f"NormedBank: a routed bank has one member per domain ({num_domains}), got num={num}")
        sizes = [in_dim, *hidden_units]
        self.layers = nn.ModuleList(LinearBank(a, b, num) for a, b in zip(sizes[:-1], sizes[1:]))
        if routed:  # member d's statistics are domain d's
            self.norms = nn.ModuleList(PartitionedNorm(h, num, shared_affine=False) for h in hidden_units)
        else:  # the K members' features side by side, [B, K*H]: per-member statistics (and per domain)
            groups = num_domains if domain_norm else 1
            self.norms = nn.ModuleList(PartitionedNorm(num * h, groups, shared_affine=False) for h in hidden_units)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num, self.is_routed, self.domain_norm, self.output_dim = num, routed, domain_norm, sizes[-1]

    def dense_layer(self, i: int, x: Tensor, domain: Tensor) -> Tensor:
        """Layer ``i`` of every member: x ``[B, D_in]`` or ``[K, B, D_in]`` -> ``[K, B, H_i]``."""
        if self.is_routed:
            raise RuntimeError("NormedBank: this bank is routed; call routed(x, seg)")
        h = self.layers[i](x)  # [K, B, H]
        K, B, H = h.shape
        local, groups = norm_groups(domain, self.domain_norm)
        flat = self.norms[i](h.permute(1, 0, 2).reshape(B, K * H), local, groups)
        return self.dropout(self.act(flat.view(B, K, H).permute(1, 0, 2)))

    def dense(self, x: Tensor, domain: Tensor) -> Tensor:
        for i in range(len(self.layers)):
            x = self.dense_layer(i, x, domain)
        return x

    def routed(self, x: Tensor, seg: DomainSegments) -> Tensor:
        if not self.is_routed:
            raise RuntimeError("NormedBank: this bank is dense; call dense(x, domain)")
        for layer, norm in zip(self.layers, self.norms):
            x = self.dropout(self.act(norm(layer.route_member(x, seg), seg.local, seg.domains)))
        return x


class DomainInterestAdaptation(nn.Module):
    """ADI's domain interest adaptation layer (§4.2.2): per-domain re-weighting of the embedded fields.

    Args:
        kind: ``linear`` (eq. 22: ``W^(d) ⊙ F + b^(d)``, W and b of F's size), ``attention`` (eq. 23-24:
            ``α_i = σ(Q_i^(d) · F_i)``, field i scaled by α_i) or ``se`` (eq. 25-26: ``α = F_se(avg-pooled
            fields)``, field i scaled by α_i).
        num_fields: N.
        dim: e, the embedding size of every field.
        num_blocks: how many independent blocks (D for one per domain, 1 for a global one, or one per
            network); ``forward`` picks a row's block by ``block`` ``[B]``.
        se_reduction: the SE block's hidden width is ``max(1, N // se_reduction)``.
        se_gate: ``sigmoid`` (SE-Net's excitation) or ``none`` (the paper's literal ``(FC, ReLU, FC)``).

    Shape:
        forward(fields ``[B, N, e]``, block ``[B]``) -> ``[B, N, e]``; ``weights`` gives the per-field scores.
    """

    def __init__(
        self,
        kind: str,
        num_fields: int,
        dim: int,
        num_blocks: int,
        se_reduction: int = 2,
        se_gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        if kind not in DIAL_KINDS[1:]:
            raise ValueError(f"DomainInterestAdaptation: kind {kind!r} is not one of {', '.join(DIAL_KINDS[1:])}")
        if se_gate not in ("sigmoid", "none"):
            raise ValueError(f"DomainInterestAdaptation: se_gate {se_gate!r} is not one of sigmoid, none")
        self.kind, self.num_fields, self.dim, self.se_gate = kind, num_fields, dim, se_gate
        if kind == "linear":
            self.weight = nn.Parameter(torch.ones(num_blocks, num_fields, dim))
            self.bias = nn.Parameter(torch.zeros(num_blocks, num_fields, dim))
        elif kind == "attention":
            self.query = nn.Parameter(torch.randn(num_blocks, num_fields, dim) * 0.01)
        else:
            hidden = max(1, num_fields // se_reduction)
            self.fc1 = LinearBank(num_fields, hidden, num_blocks)
            self.fc2 = LinearBank(hidden, num_fields, num_blocks)

    def weights(self, fields: Tensor, block: Tensor) -> Tensor:
        """The per-field scores α ``[B, N]`` (attention and SE; the linear kind has none)."""
        if self.kind == "attention":
            return torch.sigmoid((self.query.index_select(0, block) * fields).sum(-1))
        if self.kind == "se":
            z = fields.mean(-1)  # F_avg of every field: [B, N]
            w1, b1 = self.fc1.weight.index_select(0, block), self.fc1.bias.index_select(0, block)
            w2, b2 = self.fc2.weight.index_select(0, block), self.fc2.bias.index_select(0, block)
            h = torch.relu(torch.baddbmm(b1.unsqueeze(1), z.unsqueeze(1), w1))
            a = torch.baddbmm(b2.unsqueeze(1), h, w2).squeeze(1)
            return torch.sigmoid(a) if self.se_gate == "sigmoid" else a
        raise ValueError("the linear domain transformation has no per-field weights")

    def forward(self, fields: Tensor, block: Tensor) -> Tensor:
        if self.kind == "linear":
            return torch.addcmul(self.bias.index_select(0, block), fields, self.weight.index_select(0, block))
        return fields * self.weights(fields, block).unsqueeze(-1)
