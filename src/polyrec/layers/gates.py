"""Gates of the gated multi-domain models.

- :class:`GateNU`: PEPNet's gate neural unit, ``γ·sigmoid(MLP(x))`` (PEPNet, Chang et al., KDD 2023).

The softmax gates over experts are in :mod:`polyrec.layers.experts`, the expert, tower and gate banks in
:mod:`polyrec.layers.bank`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
        >>> gate = GateNU(24, 8)
        >>> delta = gate(torch.randn(5, 24))     # e.g. of the domain embedding ⊕ the context
        >>> delta.shape, bool(((delta > 0) & (delta < 2)).all())
        (torch.Size([5, 8]), True)
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
