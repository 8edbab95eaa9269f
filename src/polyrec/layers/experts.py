"""Mixture-of-experts pieces for multi-domain models: gates, CGC/PLE extraction, cross-stitch units and
gradient reversal.

The experts themselves, and every other group of same-shaped networks, are banks
(:class:`~polyrec.layers.bank.MLPBank`, :class:`~polyrec.layers.bank.LinearBank`): stacked ``[K, D_in, D_out]``
weights run as one batched matmul (every member on every row) or routed on a domain-sorted batch
(:class:`~polyrec.layers.domain.DomainSegments`, each row through its own domain's members, absent domains
cost nothing).

Layout: expert outputs are expert-major, ``[E, B, H]``, which is what ``torch.bmm`` consumes; a gate's
weights are ``[B, E]`` and :func:`mix_experts` reduces the two to ``[B, H]``.

References:
    - Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
      KDD 2018 (MMoE).
    - Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020 (CGC and PLE).
    - Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016.
    - Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (gradient reversal).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bank import LinearBank, MLPBank
from .domain import DomainSegments

# --------------------------------------------------------------------------------------------------------
# Gates and the gated mixture
# --------------------------------------------------------------------------------------------------------


def mix_experts(weights: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sum of expert outputs.

    Shape:
        weights ``[B, E]``, experts ``[E, B, H]`` -> ``[B, H]``.

    Example:
        >>> mix_experts(torch.full((2, 4), 0.25), torch.ones(4, 2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    return torch.einsum("be,ebh->bh", weights, experts)


class DomainGate(nn.Module):
    """One softmax gate per domain over E experts (MMoE eq. 5: ``g_d(x) = softmax(W_d x)``), as a bank.

    The gate weights are a :class:`~polyrec.layers.bank.LinearBank` ``[D, D_in, E]``: on a domain-sorted
    batch each row is scored by its own domain's gate only (:meth:`forward`).
    :meth:`forward_all` scores every row with every domain's gate, for methods whose definition needs all
    domains' gated mixtures of every row (PLE's intermediate levels, HMoE).

    Args:
        in_dim: D_in.
        num_experts: E.
        num_domains: D.

    Shape:
        forward(x ``[B, D_in]`` sorted by domain, seg) -> ``[B, E]``, rows summing to 1.
        forward_all(x ``[B, D_in]`` or ``[D, B, D_in]``) -> ``[D, B, E]``.

    Example:
        >>> gate = DomainGate(8, num_experts=4, num_domains=3)
        >>> seg = DomainSegments.from_domain(torch.tensor([0, 0, 2]))
        >>> weights = gate(torch.randn(3, 8), seg)     # rows sorted by domain, each scored by its own gate
        >>> weights.shape, torch.allclose(weights.sum(-1), torch.ones(3))
        (torch.Size([3, 4]), True)
    """

    def __init__(self, in_dim: int, num_experts: int, num_domains: int) -> None:
        super().__init__()
        self.linear = LinearBank(in_dim, num_experts, num_domains)

    def logits(self, x: Tensor, seg: DomainSegments) -> Tensor:
        return self.linear(x, seg)

    def forward(self, x: Tensor, seg: DomainSegments) -> Tensor:
        return torch.softmax(self.linear(x, seg), dim=-1)

    def forward_all(self, x: Tensor) -> Tensor:
        w, b = self.linear.weight, self.linear.bias
        if x.dim() == 2:
            logits = torch.einsum("bi,dio->dbo", x, w) + b.unsqueeze(1)
        else:
            logits = torch.baddbmm(b.unsqueeze(1), x, w)
        return torch.softmax(logits, dim=-1)


class SoftmaxGate(nn.Module):
    """A single (shared) softmax gate over E experts: ``softmax(W x + b)``.

    Shape:
        ``[B, D_in]`` -> ``[B, E]``.
    """

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)


# --------------------------------------------------------------------------------------------------------
# CGC / PLE extraction layer
# --------------------------------------------------------------------------------------------------------


def _own_rows(x_all: Tensor, seg: DomainSegments) -> Tensor:
    """Row b's own domain slice of ``x_all`` ``[D, B, H]`` (rows sorted by domain) -> ``[B, H]``."""
    idx = seg.sorted_domain.view(1, -1, 1).expand(1, x_all.shape[1], x_all.shape[2])
    return x_all.gather(0, idx).squeeze(0)


class ExtractionLayer(nn.Module):
    """One CGC / PLE extraction level (Tang et al., RecSys 2020, §4.2-4.3), stackable.

    Shared experts read the shared input; domain d's ``num_specific`` experts read domain d's input; domain
    d's gate mixes its own specific experts with the shared experts (eq. 2-4). A level that is not the last
    also has the shared gate (eq. 5), which mixes *all* experts (every domain's specific ones and the shared
    ones) into the next level's shared input.

    Cost. Everything a row needs from its own domain runs on the domain-sorted batch (own gate, own
    specific experts), so a single CGC level (or PLE's last level) never runs other domains' parameters.
    The shared gate of an intermediate level, by PLE's definition, needs every domain's specific experts on
    every row (each on its own domain's input); those run as one batched matmul over the stacked bank.
    When the level after this one is also an intermediate level, it needs every domain's gated output of
    every row (``all_outputs=True``), computed with :meth:`DomainGate.forward_all`.

    Args:
        in_dim: D_in of every expert at this level.
        expert_units: hidden sizes of every expert (H = ``expert_units[-1]``).
        num_domains: D.
        num_shared: shared experts (>= 0).
        num_specific: specific experts per domain (>= 0; the sum must be >= 1).
        shared_gate: whether this level has the shared gate (every level except the last).
        activation: hidden activation of the experts.
        dropout: dropout after each hidden activation.

    Shape:
        forward(shared_x ``[B, D_in]``, domain_x, seg, all_outputs) with rows sorted by domain, where
        domain_x is ``None`` (every domain reads ``shared_x``: the first level), ``[B, D_in]`` (each row's
        own domain's input) or ``[D, B, D_in]`` (every domain's input for every row) ->
        ``(domain_out, shared_out)``: domain_out ``[B, H]`` (own domain) or ``[D, B, H]`` when
        ``all_outputs``; shared_out ``[B, H]`` when the level has the shared gate, else ``None``.
    """

    def __init__(
        self,
        in_dim: int,
        expert_units: tuple[int, ...] | list[int],
        num_domains: int,
        num_shared: int,
        num_specific: int,
        shared_gate: bool,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_shared < 0 or num_specific < 0 or num_shared + num_specific < 1:
            raise ValueError(
                f"an extraction level needs at least one expert; got num_shared={num_shared}, num_specific={num_specific}"
            )
        D = num_domains
        self.num_domains, self.num_shared, self.num_specific = D, num_shared, num_specific
        self.shared = MLPBank(in_dim, expert_units, num_shared, activation, dropout) if num_shared else None
        # Domain d's experts are members d*k .. d*k + k - 1.
        self.specific = MLPBank(in_dim, expert_units, D * num_specific, activation, dropout) if num_specific else None
        self.gates = DomainGate(in_dim, num_specific + num_shared, D)
        self.shared_gate = SoftmaxGate(in_dim, D * num_specific + num_shared) if shared_gate else None
        self.output_dim = expert_units[-1]

    def forward(
        self,
        shared_x: Tensor,
        domain_x: Tensor | None,
        seg: DomainSegments,
        all_outputs: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        D, k = self.num_domains, self.num_specific
        B = shared_x.shape[0]
        need_all_specific = self.shared_gate is not None or all_outputs
        if need_all_specific and domain_x is not None and domain_x.dim() == 2:
            raise ValueError(
                "ExtractionLayer: the shared gate (or all_outputs) needs every domain's input; pass domain_x "
                "as None or [D, B, D_in], not only each row's own domain"
            )
        shared_out = self.shared(shared_x) if self.shared is not None else shared_x.new_zeros(0, B, self.output_dim)

        # Domain-specific experts: [D*k, B, H] for every domain (batched) or [k, B, H] for each row's own.
        spec_all = spec_own = None
        if k:
            if need_all_specific:
                spec_all = self.specific(shared_x if domain_x is None else domain_x)
                own_idx = (seg.sorted_domain * k).view(1, B, 1) + torch.arange(k, device=shared_x.device).view(k, 1, 1)
                spec_own = spec_all.gather(0, own_idx.expand(k, B, self.output_dim))
            else:
                spec_own = self.specific.route_experts(shared_x if domain_x is None else domain_x, seg, k)
        else:
            spec_own = shared_x.new_zeros(0, B, self.output_dim)

        if all_outputs:
            gate_all = self.gates.forward_all(shared_x if domain_x is None else domain_x)  # [D, B, k + S]
            spec = spec_all.view(D, k, B, -1) if k else shared_x.new_zeros(D, 0, B, self.output_dim)
            experts = torch.cat([spec, shared_out.unsqueeze(0).expand(D, *shared_out.shape)], dim=1)
            domain_out = torch.einsum("dbe,debh->dbh", gate_all, experts)
        else:
            gate_in = shared_x if domain_x is None else (domain_x if domain_x.dim() == 2 else _own_rows(domain_x, seg))
            weights = self.gates(gate_in, seg)  # [B, k + S]
            domain_out = mix_experts(weights, torch.cat([spec_own, shared_out], dim=0))

        shared_mix = None
        if self.shared_gate is not None:
            every = torch.cat([spec_all, shared_out], dim=0) if k else shared_out
            shared_mix = mix_experts(self.shared_gate(shared_x), every)
        return domain_out, shared_mix


# --------------------------------------------------------------------------------------------------------
# Cross-stitch
# --------------------------------------------------------------------------------------------------------


class CrossStitchUnit(nn.Module):
    """Cross-stitch unit for D columns (Misra et al., CVPR 2016, eq. 1): ``x̃_d = Σ_e α_de x_e``.

    ``α`` is a learnt ``[D, D]`` matrix, initialised to ``self_weight`` on the diagonal and
    ``(1 - self_weight) / (D - 1)`` off it, so every row of ``α`` starts as a convex combination (the
    paper's (α_S, α_D) initialisation, e.g. (0.9, 0.1) for two tasks).

    Args:
        num_columns: D.
        self_weight: initial diagonal value α_S.

    Shape:
        forward(h ``[D, B, H]``) -> ``[D, B, H]`` (every column).
        forward_rows(h ``[D, B, H]``, column ``[B]``) -> ``[B, H]``: row b's column ``column[b]`` only.
    """

    def __init__(self, num_columns: int, self_weight: float = 0.9) -> None:
        super().__init__()
        D = num_columns
        off = (1.0 - self_weight) / (D - 1) if D > 1 else 0.0
        alpha = torch.full((D, D), off)
        alpha.fill_diagonal_(self_weight if D > 1 else 1.0)
        self.alpha = nn.Parameter(alpha)

    def forward(self, h: Tensor) -> Tensor:
        return torch.einsum("de,ebh->dbh", self.alpha, h)

    def forward_rows(self, h: Tensor, column: Tensor) -> Tensor:
        return torch.einsum("be,ebh->bh", self.alpha.index_select(0, column), h)


# --------------------------------------------------------------------------------------------------------
# Gradient reversal
# --------------------------------------------------------------------------------------------------------


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad.neg() * ctx.scale, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient reversal (Ganin & Lempitsky, ICML 2015): identity forward, gradient times ``-scale`` backward.

    Placed between a feature extractor and a domain discriminator, minimising the discriminator's loss
    trains the discriminator to tell domains apart and the extractor to make them indistinguishable.

    Shape:
        any -> same.
    """
    return _GradientReversal.apply(x, float(scale))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`.

    Args:
        scale: λ, the factor of the reversed gradient.

    Shape:
        any -> same.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
