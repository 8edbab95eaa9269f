"""Mixture-of-experts pieces for multi-domain models: expert banks, per-domain gates, CGC/PLE extraction,
cross-stitch units and gradient reversal.

Every group of networks of the same shape (E experts, or one network per domain where a method's definition
needs all of them for every row) is a *bank*: its weights are stacked ``[G, D_in, D_out]`` tensors and the
whole group runs as one batched matmul, never as a ``ModuleList`` looped over rows that are then masked.
Per-domain pieces that only a row's own domain needs (gates, domain-specific experts at PLE's last level)
run on a domain-sorted batch (:class:`~polyrec.layers.domain.DomainSegments`), so absent domains cost nothing.

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

import math

import torch
from torch import Tensor, nn

from .domain import DomainLinearBank, DomainSegments, segment_linear
from .mlp import activation as make_activation

# --------------------------------------------------------------------------------------------------------
# Banks of linear layers and MLPs
# --------------------------------------------------------------------------------------------------------


class BankLinear(nn.Module):
    """G independent linear layers stored as one bank ``[G, D_in, D_out]`` and run as one batched matmul.

    Args:
        in_dim: D_in.
        out_dim: D_out.
        num: G, the number of layers in the bank.

    Shape:
        forward(x): x ``[B, D_in]`` (the same rows for every member, one matmul) or ``[G, B, D_in]`` (each
        member its own rows) -> ``[G, B, D_out]``.
    """

    def __init__(self, in_dim: int, out_dim: int, num: int) -> None:
        super().__init__()
        if num < 1 or in_dim < 1 or out_dim < 1:
            raise ValueError(f"BankLinear needs positive sizes, got in_dim={in_dim}, out_dim={out_dim}, num={num}")
        self.in_dim, self.out_dim, self.num = in_dim, out_dim, num
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            # One [B, D_in] x [D_in, G*D_out] matmul for all members.
            w = self.weight.permute(1, 0, 2).reshape(self.in_dim, self.num * self.out_dim)
            y = (x @ w).view(x.shape[0], self.num, self.out_dim) + self.bias
            return y.permute(1, 0, 2)
        if x.dim() != 3 or x.shape[0] != self.num:
            raise ValueError(f"BankLinear expects [B, {self.in_dim}] or [{self.num}, B, {self.in_dim}], got {tuple(x.shape)}")
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def forward_member(self, x: Tensor, index: int) -> Tensor:
        """Member ``index`` alone on ``x`` ``[N, D_in]`` -> ``[N, D_out]``."""
        return torch.addmm(self.bias[index], x, self.weight[index])

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, num={self.num}"


class ExpertBank(nn.Module):
    """E MLPs of identical shape (experts, or per-domain networks) run as one batched MLP.

    Each layer's weights are a stacked ``[E, D_in, D_out]`` tensor (:class:`BankLinear`); every hidden layer
    is followed by the activation and dropout, an optional ``output_dim`` layer by nothing (logits).

    Args:
        in_dim: D_in.
        hidden_units: hidden sizes of every expert.
        num_experts: E.
        activation: hidden activation.
        dropout: dropout after each hidden activation.
        output_dim: optional final linear size of every expert (no activation).

    Shape:
        forward(x): x ``[B, D_in]`` -> ``[E, B, H]``, or x ``[G, B, D_in]`` with E divisible by G -> ``[E, B, H]``
        where experts ``g*E/G .. (g+1)*E/G - 1`` read ``x[g]`` (PLE's domain-specific experts on their own
        domain's input). H is ``output_dim`` or ``hidden_units[-1]``.

        forward_domain(x, seg, k): x ``[B, D_in]`` sorted by domain -> ``[k, B, H]``: each row through the
        k = E/D experts of its own domain only (see :meth:`forward_domain`).

    Example:
        >>> experts = ExpertBank(32, (16,), num_experts=4)
        >>> experts(torch.randn(8, 32)).shape
        torch.Size([4, 8, 16])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...] | list[int],
        num_experts: int,
        activation: str = "relu",
        dropout: float = 0.0,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"ExpertBank needs num_experts >= 1, got {num_experts}")
        if not hidden_units and output_dim is None:
            raise ValueError("ExpertBank needs hidden_units or an output_dim")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        sizes = [in_dim, *hidden_units]
        self.hidden = nn.ModuleList(BankLinear(a, b, num_experts) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = BankLinear(sizes[-1], output_dim, num_experts) if output_dim is not None else None
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.in_dim, self.num_experts = in_dim, num_experts
        self.output_dim = output_dim if output_dim is not None else sizes[-1]

    def _layers(self) -> list[tuple[BankLinear, bool]]:
        layers = [(layer, True) for layer in self.hidden]
        if self.out is not None:
            layers.append((self.out, False))
        return layers

    def forward(self, x: Tensor) -> Tensor:
        E = self.num_experts
        if x.dim() == 3 and x.shape[0] != E:
            G = x.shape[0]
            if E % G:
                raise ValueError(f"ExpertBank: {E} experts cannot be split into {G} input groups")
            # Each group's input is read by its E/G experts.
            x = x.unsqueeze(1).expand(G, E // G, *x.shape[1:]).reshape(E, *x.shape[1:])
        for layer, hidden in self._layers():
            x = layer(x)
            if hidden:
                x = self.dropout(self.act(x))
        return x

    def forward_member(self, x: Tensor, index: int) -> Tensor:
        """Expert ``index`` alone on ``x`` ``[N, D_in]`` -> ``[N, H]`` (e.g. one domain's network on a slice)."""
        for layer, hidden in self._layers():
            x = layer.forward_member(x, index)
            if hidden:
                x = self.dropout(self.act(x))
        return x

    def forward_domain(self, x: Tensor, seg: DomainSegments, per_domain: int = 1) -> Tensor:
        """Each row through its own domain's experts only.

        The bank holds ``k = per_domain`` experts per domain, domain d owning experts ``d*k .. d*k + k - 1``
        (E = D*k). Rows are domain-sorted; each present domain's rows run through that domain's k experts,
        one matmul per (present domain, expert, layer) via :func:`~polyrec.layers.domain.segment_linear`, so
        other domains' experts neither run on these rows nor receive gradient from them, and absent domains
        cost nothing.

        Shape:
            x ``[B, D_in]`` sorted by domain -> ``[k, B, H]``.
        """
        k = per_domain
        if k < 1 or self.num_experts % k:
            raise ValueError(f"cannot split {self.num_experts} experts into groups of {k} per domain")
        outs = []
        for j in range(k):
            h = x
            for layer, hidden in self._layers():
                w = layer.weight.view(-1, k, layer.in_dim, layer.out_dim)[:, j].index_select(0, seg.domains)
                b = layer.bias.view(-1, k, layer.out_dim)[:, j].index_select(0, seg.domains)
                h = segment_linear(h, seg, w, b)
                if hidden:
                    h = self.dropout(self.act(h))
            outs.append(h)
        return torch.stack(outs, 0)


def mix_experts(weights: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sum of expert outputs.

    Shape:
        weights ``[B, E]``, experts ``[E, B, H]`` -> ``[B, H]``.
    """
    return torch.einsum("be,ebh->bh", weights, experts)


# --------------------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------------------


class DomainGate(nn.Module):
    """One softmax gate per domain over E experts (MMoE eq. 5: ``g_d(x) = softmax(W_d x)``), as a bank.

    The gate weights are a :class:`~polyrec.layers.domain.DomainLinearBank` ``[D, D_in, E]``: on a
    domain-sorted batch each row is scored by its own domain's gate only (:meth:`forward`).
    :meth:`forward_all` scores every row with every domain's gate, for methods whose definition needs all
    domains' gated mixtures of every row (PLE's intermediate levels, HMoE).

    Args:
        in_dim: D_in.
        num_experts: E.
        num_domains: D.

    Shape:
        forward(x ``[B, D_in]`` sorted by domain, seg) -> ``[B, E]``, rows summing to 1.
        forward_all(x ``[B, D_in]`` or ``[D, B, D_in]``) -> ``[D, B, E]``.
    """

    def __init__(self, in_dim: int, num_experts: int, num_domains: int) -> None:
        super().__init__()
        self.linear = DomainLinearBank(in_dim, num_experts, num_domains)

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
        self.shared = ExpertBank(in_dim, expert_units, num_shared, activation, dropout) if num_shared else None
        self.specific = (
            ExpertBank(in_dim, expert_units, D * num_specific, activation, dropout)
            if num_specific
            else None
        )
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
                spec_own = self.specific.forward_domain(shared_x if domain_x is None else domain_x, seg, k)
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
