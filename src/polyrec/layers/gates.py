"""Gates, expert stacks and per-domain expert banks shared by the gated multi-domain models.

- :class:`GateNU`: PEPNet's gate neural unit, ``γ·sigmoid(MLP(x))`` (PEPNet, Chang et al., KDD 2023).
- :class:`ParallelMLP`: K independent MLP experts evaluated together from stacked weights ``[K, ...]``
  (the shared experts of HiNet, SAR-Net, M2M, M3oE).
- :class:`DomainExpertBank`: K MLP experts *per domain*, stored as banks ``[D, K, ...]`` and applied to a
  domain-sorted batch, so a row runs only through its own domain's experts (SAR-Net's specific experts).
  Methods whose definition needs every domain's expert outputs on every row (HiNet's SAN, M3oE's domain
  balance) use :class:`~polyrec.layers.experts.ExpertBank`, which runs the whole stacked bank as one
  batched matmul.
- :func:`segment_einsum`: the primitive behind the banks: one einsum per domain present (or one padded
  batched einsum when many domains are present), generalising :func:`~polyrec.layers.domain.segment_linear`
  to experts and generated weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .domain import DomainSegments
from .mlp import activation as make_activation


class GateNU(nn.Module):
    """Gate neural unit of PEPNet (Chang et al., KDD 2023).

    ``δ = γ · sigmoid(W₂ · ReLU(W₁ x + b₁) + b₂)``: a two-layer MLP whose sigmoid output is scaled by γ, so
    the gate lies in ``(0, γ)`` and can both damp (δ < 1) and amplify (δ > 1) what it multiplies; with
    γ = 2 an output of 1 (no change) sits in the middle of the range.

    Args:
        in_dim: D_in, the size of the gate's input (its conditioning information).
        out_dim: D_out, the size of what the gate multiplies, element-wise.
        hidden_dim: size of the hidden layer (default: ``out_dim``, as in the paper's Gate NU).
        gamma: γ, the scale of the sigmoid (paper: 2).

    Shape:
        ``[B, D_in]`` -> ``[B, D_out]`` with values in ``(0, γ)``.

    Example:
        >>> gate = GateNU(24, 8)                                   # doctest: +SKIP
        >>> scaled = x * gate(torch.cat([domain_emb, ctx], 1))    # doctest: +SKIP
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"GateNU: gamma must be > 0, got {gamma}")
        hidden = hidden_dim or out_dim
        self.gamma = float(gamma)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """``nn.Linear``'s default initialisation, U(-1/√fan_in, 1/√fan_in), for a stacked weight or bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def segment_einsum(equation: str, x: Tensor, seg: DomainSegments, weight: Tensor, loop_max: int = 16) -> Tensor:
    """Combine each domain's rows of a domain-sorted batch with that domain's slice of ``weight``.

    ``equation`` is written for one segment: its first operand is the rows (their first index is the row
    index, which must also lead the output), its second one ``weight[s]``; for example ``"ni,io->no"`` (a
    linear map) or ``"nki,kio->nko"`` (K experts). Up to ``loop_max`` segments run one einsum each;
    beyond, the segments are padded to a common length and run as one batched einsum.

    Args:
        equation: einsum equation for a single segment (must not use the letter ``s``).
        x: rows sorted by domain.
        seg: the segments of ``x``.
        weight: one slice per present domain, ``[S, ...]``.
        loop_max: the largest number of segments run as a Python loop.

    Shape:
        x ``[B, ...]``, weight ``[S, ...]`` -> ``[B, ...]`` as the equation says.
    """
    if "s" in equation:
        raise ValueError(f"segment_einsum: the equation {equation!r} must not use the letter 's'")
    if seg.num_segments == 1:
        return torch.einsum(equation, x, weight[0])
    if seg.num_segments <= loop_max:
        parts = torch.split(x, seg.counts)
        return torch.cat([torch.einsum(equation, p, weight[i]) for i, p in enumerate(parts)], dim=0)
    inputs, out = equation.replace(" ", "").split("->")
    a, b = inputs.split(",")
    counts = torch.tensor(seg.counts, device=x.device)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(x.shape[0], device=x.device) - starts.index_select(0, seg.local)
    padded = x.new_zeros(seg.num_segments, max(seg.counts), *x.shape[1:])
    padded[seg.local, pos] = x
    return torch.einsum(f"s{a},s{b}->s{out}", padded, weight)[seg.local, pos]


class ParallelMLP(nn.Module):
    """K independent MLP experts held as stacked weights and evaluated together (no Python loop).

    Args:
        in_dim: D_in.
        hidden_units: the layer sizes of each expert (at least one).
        num_experts: K.
        activation: activation after every layer.
        dropout: dropout after every activation.

    Shape:
        ``[B, D_in]`` -> ``[B, K, hidden_units[-1]]``.

    Example:
        >>> experts = ParallelMLP(32, (64, 16), num_experts=4)   # doctest: +SKIP
        >>> experts(x).shape                                      # doctest: +SKIP
        torch.Size([B, 4, 16])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...] | list[int],
        num_experts: int,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1 or not hidden_units:
            raise ValueError(f"ParallelMLP needs num_experts >= 1 and hidden units; got {num_experts}, {hidden_units}")
        sizes = [in_dim, *hidden_units]
        self.weights = nn.ParameterList(_uniform((num_experts, a, b), a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(_uniform((num_experts, b), a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_experts = num_experts
        self.output_dim = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        h = torch.einsum("bi,kio->bko", x, self.weights[0]) + self.biases[0]
        h = self.dropout(self.act(h))
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = self.dropout(self.act(torch.einsum("bki,kio->bko", h, w) + b))
        return h


class DomainExpertBank(nn.Module):
    """K MLP experts for every domain, as banks ``[D, K, D_in, D_out]``: a row uses its own domain's experts.

    Applied to a domain-sorted batch (:class:`~polyrec.layers.domain.DomainSegments`) with one einsum per
    domain present, so absent domains cost nothing and receive zero gradient.

    Args:
        in_dim: D_in.
        hidden_units: layer sizes of each expert (at least one).
        num_domains: D.
        num_experts: K experts per domain.
        activation: activation after every layer.
        dropout: dropout after every activation.

    Shape:
        forward(x ``[B, D_in]`` sorted by domain, seg) -> ``[B, K, hidden_units[-1]]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...] | list[int],
        num_domains: int,
        num_experts: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1 or not hidden_units:
            raise ValueError(f"DomainExpertBank needs num_experts >= 1 and hidden units; got {num_experts}, {hidden_units}")
        sizes = [in_dim, *hidden_units]
        D, K = num_domains, num_experts
        self.weights = nn.ParameterList(_uniform((D, K, a, b), a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(_uniform((D, K, b), a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_domains, self.num_experts, self.output_dim = D, K, sizes[-1]

    def forward(self, x: Tensor, seg: DomainSegments) -> Tensor:
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            w_s, b_s = w.index_select(0, seg.domains), b.index_select(0, seg.domains)
            h = segment_einsum("ni,kio->nko" if i == 0 else "nki,kio->nko", h, seg, w_s)
            h = self.dropout(self.act(h + b_s.index_select(0, seg.local)))
        return h

    def extra_repr(self) -> str:
        return f"num_domains={self.num_domains}, num_experts={self.num_experts}, output_dim={self.output_dim}"
