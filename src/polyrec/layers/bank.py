"""Banks: K small networks of one shape held as stacked tensors and run together, never as a ``ModuleList``.

Every group of same-shaped networks in the multi-domain models is a bank: the shared experts of MMoE, PLE,
HMoE, HiNet, M3oE, M2M and SAR-Net, the per-domain experts of PLE, HiNet, M3oE and SAR-Net, the per-domain
towers of Shared-Bottom, MMoE, PLE, M3oE, DFEI, MuLANN and AITM, the per-domain gates, Cross-Stitch's
columns. A bank is applied in one of two ways:

- **dense**, ``bank(x)``: every member on every row, as one batched matmul (shared experts; methods whose
  definition needs every domain's network on every row, such as HiNet's SAN or M3oE's domain balance);
- **routed**, ``bank(x, seg)``: each row through its own member only. The rows are sorted by domain
  (:class:`~polyrec.layers.domain.DomainSegments`) and each present domain's rows run through that
  domain's member, one matmul per present domain (:func:`~polyrec.layers.domain.segment_linear`), so
  absent domains cost nothing and a member learns only from its own domain's rows. With ``k`` members per
  domain (domain d owns members ``d*k .. d*k + k - 1``), :meth:`MLPBank.route_experts` runs a row through
  its domain's k members.

``forward_member`` runs one member alone (AITM's towers, applied position by position along its chain).

Layout: the members lead, ``[K, B, H]`` (what ``torch.bmm`` consumes); a gate's weights are ``[B, K]`` and
:func:`~polyrec.layers.experts.mix_experts` reduces the two to ``[B, H]``.

- :func:`linear_init_`: ``nn.Linear``'s default initialisation U(±1/√fan_in), the one every bank uses.
- :class:`LinearBank`: K linear layers, weight ``[K, D_in, D_out]`` and bias ``[K, D_out]``.
- :class:`MLPBank`: K MLPs, a :class:`LinearBank` per layer.
- :func:`mark_domain_bank` / :func:`domain_banks`: which parameters are indexed by domain (first dimension
  D, or D·k), for the row-wise optimiser update (``train.bank_update: rowwise``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .domain import (  # noqa: F401  (the domain-bank marks, re-exported here with the banks)
    DomainBank,
    DomainSegments,
    domain_banks,
    gather_rows,
    mark_domain_bank,
    member_rows,
    segment_einsum,
    segment_linear,
    unmark_domain_bank,
)
from .mlp import activation as make_activation

ORDERS = ("members", "rows")


def linear_init_(tensor: Tensor, fan_in: int) -> Tensor:
    """Fill ``tensor`` in place from U(-1/√fan_in, 1/√fan_in), ``nn.Linear``'s default initialisation.

    For a bank's weight ``[K, D_in, D_out]`` or bias ``[K, D_out]`` (``fan_in = D_in``) this is each member
    initialised as its own ``nn.Linear``; the values are drawn in the tensor's row-major order.

    Args:
        tensor: the weight or bias to fill.
        fan_in: D_in of the layer the tensor belongs to.

    Shape:
        any -> same (returns ``tensor``).

    Example:
        >>> w = linear_init_(torch.empty(4, 16, 8), fan_in=16)
        >>> bool(w.abs().max() <= 0.25)
        True
    """
    if fan_in < 1:
        raise ValueError(f"linear_init_: fan_in must be >= 1, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class LinearBank(nn.Module):
    """K independent linear layers, stored as one weight ``[K, D_in, D_out]`` and one bias ``[K, D_out]``.

    Each member starts as ``nn.Linear(D_in, D_out)`` would (:func:`linear_init_`, the weight drawn before the
    bias).

    Args:
        in_dim: D_in.
        out_dim: D_out.
        num: K, the number of members.
        init: draw the initial values now (False leaves them uninitialised for the caller to draw, as
            :class:`MLPBank` does to choose the order of the draws).

    Shape:
        forward(x): x ``[B, D_in]`` (every member on the same rows, one matmul) or ``[K, B, D_in]`` (member k
        on ``x[k]``, one batched matmul) -> ``[K, B, D_out]``.

        forward(x, seg): x ``[B, D_in]`` sorted by domain -> ``[B, D_out]``, a row of domain d through member d
        (a per-domain layer, K = D).

        forward_member(x, index): x ``[N, D_in]`` -> ``[N, D_out]``, member ``index`` alone.

        route_member(x, seg, per_domain, member): x ``[B, D_in]`` sorted by domain -> ``[B, D_out]``, a row of
        domain d through member ``d * per_domain + member``.

    Example:
        >>> bank = LinearBank(8, 4, num=3)
        >>> bank(torch.randn(5, 8)).shape                      # every member on every row
        torch.Size([3, 5, 4])
        >>> seg = DomainSegments.from_domain(torch.tensor([2, 0, 2, 1, 0]))
        >>> seg.unsort(bank(seg.sort(torch.randn(5, 8)), seg)).shape   # each row through its own member
        torch.Size([5, 4])
    """

    def __init__(self, in_dim: int, out_dim: int, num: int, *, init: bool = True) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("num", num)):
            if value < 1:
                raise ValueError(f"LinearBank: {name} must be >= 1, got {value}")
        self.in_dim, self.out_dim, self.num = in_dim, out_dim, num
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num, out_dim))
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        linear_init_(self.weight, self.in_dim)
        linear_init_(self.bias, self.in_dim)

    def forward(self, x: Tensor, seg: DomainSegments | None = None) -> Tensor:
        if seg is not None:
            return self.route_member(x, seg)
        if x.dim() == 2:
            # One [B, D_in] x [D_in, K*D_out] matmul for all members.
            w = self.weight.permute(1, 0, 2).reshape(self.in_dim, self.num * self.out_dim)
            y = (x @ w).view(x.shape[0], self.num, self.out_dim) + self.bias
            return y.permute(1, 0, 2)
        if x.dim() != 3 or x.shape[0] != self.num:
            raise ValueError(
                f"LinearBank: x must be [B, {self.in_dim}] or [{self.num}, B, {self.in_dim}], got {list(x.shape)}"
            )
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def forward_member(self, x: Tensor, index: int) -> Tensor:
        """Member ``index`` alone on ``x`` ``[N, D_in]`` -> ``[N, D_out]``."""
        if not 0 <= index < self.num:
            raise IndexError(f"LinearBank: index must be in [0, {self.num}), got {index}")
        return torch.addmm(self.bias[index], x, self.weight[index])

    def route_member(self, x: Tensor, seg: DomainSegments, per_domain: int = 1, member: int = 0) -> Tensor:
        """Each row of domain d through member ``d * per_domain + member`` only (rows sorted by domain).

        One matmul per present domain (:func:`~polyrec.layers.domain.segment_linear`): other members do not
        run on these rows and get no gradient from them.

        Shape:
            x ``[B, D_in]`` sorted by domain -> ``[B, D_out]``.
        """
        _check_group(self.num, per_domain, member)
        rows = member_rows(seg.domains, per_domain, member)
        return segment_linear(x, seg, gather_rows(self.weight, rows), gather_rows(self.bias, rows))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, num={self.num}"


def _check_group(num: int, per_domain: int, member: int = 0) -> None:
    if per_domain < 1 or num % per_domain:
        raise ValueError(f"per_domain must be >= 1 and divide the bank's {num} members, got {per_domain}")
    if not 0 <= member < per_domain:
        raise ValueError(f"member must be in [0, per_domain={per_domain}), got {member}")


def _rows_dense(layer: LinearBank, h: Tensor) -> Tensor:
    """Every member on rows ``h`` ``[B, D_in]`` (or member k on ``h[:, k]``), rows leading: ``[B, K, D_out]``."""
    return torch.einsum("bi,kio->bko" if h.dim() == 2 else "bki,kio->bko", h, layer.weight) + layer.bias


def _rows_routed(layer: LinearBank, h: Tensor, seg: DomainSegments, k: int) -> Tensor:
    """Each row through its domain's k members, rows leading: h ``[B, D_in]`` or ``[B, k, D_in]`` -> ``[B, k, D_out]``."""
    rows = member_rows(seg.domains, k)
    w = gather_rows(layer.weight, rows).view(-1, k, layer.in_dim, layer.out_dim)
    b = gather_rows(layer.bias, rows).view(-1, k, layer.out_dim)
    h = segment_einsum("ni,kio->nko" if h.dim() == 2 else "nki,kio->nko", h, seg, w)
    return h + b.index_select(0, seg.local)


class MLPBank(nn.Module):
    """K MLPs of identical shape (experts, per-domain towers), one :class:`LinearBank` per layer.

    Every hidden layer is followed by the activation and dropout, an optional ``output_dim`` layer by nothing
    (logits). Members are initialised as K independent ``nn.Linear`` stacks (:func:`linear_init_`).

    ``order`` fixes how the floating-point work and the random draws are ordered; both orders compute the
    same function. ``"members"`` (the default) runs the members leading, ``[K, B, ·]``, through ``bmm`` and
    per-member matmuls, and draws each layer's weight and bias in turn. ``"rows"`` runs the rows leading,
    ``[B, K, ·]``, through ``einsum``, and draws every layer's weight before any bias: the shared experts of
    HiNet, M3oE, M2M and SAR-Net and SAR-Net's scenario experts were built that way, and keep it so that a
    seed gives them the same initial values, dropout masks and results (to the last bit) as before.

    Args:
        in_dim: D_in.
        hidden_units: hidden sizes of every member.
        num: K, the number of members (for a routed bank, D domains times k members per domain).
        activation: hidden activation.
        dropout: dropout after each hidden activation, in [0, 1).
        output_dim: optional final linear size of every member (no activation), e.g. 1 for a logit.
        order: ``"members"`` or ``"rows"`` (see above).

    Shape:
        H is ``output_dim`` or ``hidden_units[-1]``.

        forward(x): x ``[B, D_in]`` -> ``[K, B, H]``, every member on every row; or, in ``"members"`` order,
        x ``[G, B, D_in]`` with K divisible by G -> ``[K, B, H]``, members ``g*K/G .. (g+1)*K/G - 1`` reading
        ``x[g]`` (PLE's domain-specific experts on their own domain's input).

        forward(x, seg): x ``[B, D_in]`` sorted by domain -> ``[B, H]``, a row of domain d through member d
        (per-domain towers, K = D).

        route_experts(x, seg, per_domain): x ``[B, D_in]`` sorted by domain -> ``[k, B, H]`` with
        k = ``per_domain``, a row of domain d through members ``d*k .. d*k + k - 1``.

        forward_member(x, index): x ``[N, D_in]`` -> ``[N, H]``, member ``index`` alone.

        In ``"rows"`` order the ``[K, B, H]`` results are transposed views of row-major ``[B, K, H]`` tensors.

    Example:
        >>> experts = MLPBank(32, (16,), num=4)               # 4 shared experts
        >>> experts(torch.randn(8, 32)).shape
        torch.Size([4, 8, 16])
        >>> towers = MLPBank(16, (8,), num=3, output_dim=1)    # one tower per domain
        >>> seg = DomainSegments.from_domain(torch.tensor([1, 0, 2, 1, 1, 0, 2, 0]))
        >>> logit = seg.unsort(towers(seg.sort(torch.randn(8, 16)), seg).squeeze(-1))
        >>> logit.shape
        torch.Size([8])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: tuple[int, ...] | list[int],
        num: int,
        activation: str = "relu",
        dropout: float = 0.0,
        output_dim: int | None = None,
        order: str = "members",
    ) -> None:
        super().__init__()
        if num < 1:
            raise ValueError(f"MLPBank: num must be >= 1, got {num}")
        if not hidden_units and output_dim is None:
            raise ValueError("MLPBank: needs hidden_units or an output_dim, got neither")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPBank: dropout must be in [0, 1), got {dropout}")
        if order not in ORDERS:
            raise ValueError(f"MLPBank: order must be one of {', '.join(ORDERS)}, got {order!r}")
        sizes = [in_dim, *hidden_units]
        self.hidden = nn.ModuleList(LinearBank(a, b, num, init=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = LinearBank(sizes[-1], output_dim, num, init=False) if output_dim is not None else None
        layers = [layer for layer, _ in self._layers()]
        if order == "rows":
            for layer in layers:
                linear_init_(layer.weight, layer.in_dim)
            for layer in layers:
                linear_init_(layer.bias, layer.in_dim)
        else:
            for layer in layers:
                layer.reset_parameters()
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.in_dim, self.num, self.order = in_dim, num, order
        self.output_dim = output_dim if output_dim is not None else sizes[-1]
        self.register_load_state_dict_pre_hook(_load_legacy_names)

    def _layers(self) -> list[tuple[LinearBank, bool]]:
        """(layer, followed by activation and dropout) for every layer."""
        layers = [(layer, True) for layer in self.hidden]
        if self.out is not None:
            layers.append((self.out, False))
        return layers

    def _after(self, h: Tensor, hidden: bool) -> Tensor:
        return self.dropout(self.act(h)) if hidden else h

    def forward(self, x: Tensor, seg: DomainSegments | None = None) -> Tensor:
        if seg is not None:
            return self._route(x, seg)
        K = self.num
        if self.order == "rows":
            if x.dim() != 2:
                raise ValueError(f"MLPBank(order='rows'): x must be [B, {self.in_dim}], got {list(x.shape)}")
            for layer, hidden in self._layers():
                x = self._after(_rows_dense(layer, x), hidden)
            return x.transpose(0, 1)
        if x.dim() == 3 and x.shape[0] != K:
            G = x.shape[0]
            if K % G:
                raise ValueError(f"MLPBank: x has {G} input groups, which do not divide the bank's {K} members")
            # Each group's input is read by its K/G members.
            x = x.unsqueeze(1).expand(G, K // G, *x.shape[1:]).reshape(K, *x.shape[1:])
        for layer, hidden in self._layers():
            x = self._after(layer(x), hidden)
        return x

    def forward_member(self, x: Tensor, index: int) -> Tensor:
        """Member ``index`` alone on ``x`` ``[N, D_in]`` -> ``[N, H]`` (e.g. one domain's tower on a slice)."""
        for layer, hidden in self._layers():
            x = self._after(layer.forward_member(x, index), hidden)
        return x

    def _route(self, x: Tensor, seg: DomainSegments) -> Tensor:
        # forward(x, seg): one matmul per present domain and layer; other members neither run on these rows
        # nor receive gradient from them, and absent domains cost nothing.
        if self.order == "rows":
            return self.route_experts(x, seg, 1)[0]
        return self._route_member(x, seg, 1, 0)

    def route_experts(self, x: Tensor, seg: DomainSegments, per_domain: int) -> Tensor:
        """Each row of domain d through its own k = ``per_domain`` members ``d*k .. d*k + k - 1`` only.

        Rows are sorted by domain. In ``"members"`` order one matmul per (present domain, member, layer), in
        ``"rows"`` order one einsum per (present domain, layer) over the k members
        (:func:`~polyrec.layers.domain.segment_einsum`); either way other domains' members neither run on
        these rows nor receive gradient from them.

        Shape:
            x ``[B, D_in]`` sorted by domain -> ``[k, B, H]``.
        """
        _check_group(self.num, per_domain)
        if self.order == "rows":
            h = x
            for layer, hidden in self._layers():
                h = self._after(_rows_routed(layer, h, seg, per_domain), hidden)
            return h.transpose(0, 1)
        return torch.stack([self._route_member(x, seg, per_domain, j) for j in range(per_domain)], 0)

    def _route_member(self, x: Tensor, seg: DomainSegments, per_domain: int, member: int) -> Tensor:
        for layer, hidden in self._layers():
            x = self._after(layer.route_member(x, seg, per_domain, member), hidden)
        return x

    def legacy_names(self) -> dict[str, str]:
        """``{name: former name}`` of the parameters a bank of this shape had before the banks were merged.

        ``ParallelMLP`` and ``DomainExpertBank`` named layer i's parameters ``weights.<i>`` and
        ``biases.<i>`` (``DomainExpertBank``'s shaped ``[D, k, ...]`` rather than ``[D*k, ...]``); the other
        banks had today's names. Loading a state dict maps those names (and shapes) to today's.
        """
        names = {}
        for i in range(len(self.hidden)):
            names[f"hidden.{i}.weight"], names[f"hidden.{i}.bias"] = f"weights.{i}", f"biases.{i}"
        return names

    def extra_repr(self) -> str:
        return f"num={self.num}, output_dim={self.output_dim}, order={self.order!r}"


def _load_legacy_names(module: MLPBank, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: a state dict saved before the banks were merged still loads (see
    :meth:`MLPBank.legacy_names`)."""
    params = dict(module.named_parameters())
    for name, old in module.legacy_names().items():
        if prefix + old in state_dict and prefix + name not in state_dict:
            t = state_dict.pop(prefix + old)
            state_dict[prefix + name] = t.reshape(params[name].shape) if t.numel() == params[name].numel() else t
