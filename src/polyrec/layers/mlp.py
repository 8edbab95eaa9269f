"""Multi-layer perceptron with optional normalisation and dropout."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation_names() -> tuple[str, ...]:
    """The names :func:`activation` accepts, sorted.

    A function rather than a constant so that config checks (``choices=activation_names``) see an
    activation registered in :data:`ACTIVATIONS` after import.
    """
    return tuple(sorted(ACTIVATIONS))


def activation(name: str) -> nn.Module:
    """An activation module by name; unknown names raise with the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(activation_names())}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Stack of Linear → [norm] → activation → [dropout] blocks, optionally ending in a linear output.

    Args:
        in_dim: D_in.
        hidden_units: sizes of the hidden layers.
        activation: activation name (``relu``, ``prelu``, ...).
        dropout: dropout probability after each hidden activation.
        norm: ``none``, ``batch`` or ``layer`` normalisation before each activation.
        output_dim: if given, a final linear layer to this size with no activation (for logits).

    Shape:
        ``[B, D_in]`` -> ``[B, hidden_units[-1]]`` (or ``[B, output_dim]``).

    Example:
        >>> import torch
        >>> MLP(16, (32, 8), output_dim=1)(torch.randn(4, 16)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...] | list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        norm: Literal["none", "batch", "layer"] = "none",
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if norm not in ("none", "batch", "layer"):
            raise ValueError(f"norm must be one of none, batch, layer; got {norm!r}")
        layers: list[nn.Module] = []
        dim = in_dim
        for h in hidden_units:
            if h < 1:
                raise ValueError(f"hidden_units must be positive, got {list(hidden_units)}")
            layers.append(nn.Linear(dim, h))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(globals()["activation"](activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = h
        if output_dim is not None:
            layers.append(nn.Linear(dim, output_dim))
            dim = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def optional_mlp(
    in_dim: int,
    hidden_units: tuple[int, ...] | list[int],
    activation: str = "relu",
    dropout: float = 0.0,
    output_dim: int | None = None,
) -> MLP | None:
    """An :class:`MLP`, or None when ``hidden_units`` is empty (a model's optional deep part or bottom)."""
    return MLP(in_dim, hidden_units, activation, dropout, output_dim=output_dim) if hidden_units else None
