"""Explicit feature-interaction layers used by CTR and multi-domain models.

Unless stated otherwise, every layer takes field embeddings ``x: [B, F, E]`` (B batch, F fields, E embedding
dim). Pairwise layers enumerate field pairs ``(i, j)`` with ``i < j`` in row-major order
((0,1), (0,2), ..., (0,F-1), (1,2), ...), i.e. the order of ``torch.triu_indices(F, F, offset=1)``, so their
outputs line up column by column.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "CIN",
    "BiInteractionPooling",
    "BilinearInteraction",
    "CrossNetwork",
    "CrossNetworkV2",
    "FMInteraction",
    "InnerProduct",
    "OuterProduct",
    "SENETLayer",
    "SelfAttentionInteraction",
]


# --------------------------------------------------------------------------------------------------------
# Argument and input checks
# --------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; True as a dimension is always a mistake, so reject it explicitly.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value  # type: ignore[return-value]


def _check_fields(x: Tensor, layer: str, num_fields: int | None = None, embed_dim: int | None = None) -> None:
    # Shape mistakes otherwise surface as opaque einsum/broadcast errors (or, worse, silently broadcast).
    if x.dim() != 3:
        raise ValueError(f"{layer} expects field embeddings [B, F, E], got a tensor of shape {tuple(x.shape)}")
    if num_fields is not None and x.size(1) != num_fields:
        raise ValueError(f"{layer} was built for F={num_fields} fields, got input of shape {tuple(x.shape)}")
    if embed_dim is not None and x.size(2) != embed_dim:
        raise ValueError(f"{layer} was built for E={embed_dim}, got input of shape {tuple(x.shape)}")


def _check_flat(x: Tensor, layer: str, in_dim: int) -> None:
    if x.dim() != 2 or x.size(1) != in_dim:
        raise ValueError(f"{layer} expects [B, D_in] with D_in={in_dim}, got a tensor of shape {tuple(x.shape)}")


def _pair_indices(num_fields: int) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
    return rows, cols


# --------------------------------------------------------------------------------------------------------
# FM / NFM
# --------------------------------------------------------------------------------------------------------


def _fm_pairwise(x: Tensor) -> Tensor:
    # Rendle's O(F·E) rewriting of Σ_{i<j} v_i ⊙ v_j: the square of the sum counts every ordered pair plus
    # the diagonal, so removing the squares and halving leaves each unordered pair exactly once.
    square_of_sum = x.sum(dim=1).pow(2)
    sum_of_square = x.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square)


class FMInteraction(nn.Module):
    """Factorization-machine second-order term Σ_{i<j} <v_i, v_j>, computed in linear time.

    Reference: S. Rendle, "Factorization Machines", ICDM 2010, Eq. 1 (pairwise term) and its linear-time
    reformulation in Lemma 3.1: 0.5 · Σ_e [(Σ_i v_{i,e})² − Σ_i v_{i,e}²]. Used as the FM component of DeepFM
    (H. Guo et al., IJCAI 2017). Fields are assumed already scaled by their feature values (x_i v_i).

    Args:
        reduce_sum: if True sum over the embedding dim and return one logit per example; if False return the
            per-dimension vector 0.5·((Σv)² − Σv²) (the NFM Bi-Interaction vector).

    Shape:
        ``x: [B, F, E]`` -> ``[B, 1]`` if ``reduce_sum`` else ``[B, E]``.

    Example:
        >>> FMInteraction()(torch.randn(4, 6, 8)).shape
        torch.Size([4, 1])
    """

    def __init__(self, reduce_sum: bool = True) -> None:
        super().__init__()
        if not isinstance(reduce_sum, bool):
            raise ValueError(f"reduce_sum must be a bool (True or False), got {reduce_sum!r}")
        self.reduce_sum = reduce_sum

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "FMInteraction")
        out = _fm_pairwise(x)
        return out.sum(dim=1, keepdim=True) if self.reduce_sum else out

    def extra_repr(self) -> str:
        return f"reduce_sum={self.reduce_sum}"


class BiInteractionPooling(nn.Module):
    """NFM Bi-Interaction pooling: the element-wise sum of all pairwise products Σ_{i<j} v_i ⊙ v_j.

    Reference: X. He and T.-S. Chua, "Neural Factorization Machines for Sparse Predictive Analytics",
    SIGIR 2017, Bi-Interaction layer f_BI(V_x) = Σ_i Σ_{j>i} x_i v_i ⊙ x_j v_j and its linear-time form
    0.5·[(Σ_i x_i v_i)² − Σ_i (x_i v_i)²] (Sec. 2.1.2, Eqs. 3–4). No parameters.

    Shape:
        ``x: [B, F, E]`` -> ``[B, E]``.

    Example:
        >>> BiInteractionPooling()(torch.randn(4, 6, 8)).shape
        torch.Size([4, 8])
    """

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "BiInteractionPooling")
        return _fm_pairwise(x)


# --------------------------------------------------------------------------------------------------------
# AutoInt
# --------------------------------------------------------------------------------------------------------


class SelfAttentionInteraction(nn.Module):
    """AutoInt interacting layer: multi-head self-attention across fields with a projected residual and ReLU.

    Reference: W. Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks", CIKM 2019, Sec. 4.3 (interacting layer, Eqs. 5–8). For head h, with Q = x W_Q^h, K = x W_K^h,
    V = x W_V^h (each ``[B, F, d]``, d = ``attention_dim``)::

        head_h = softmax(Q Kᵀ / s) V,      s = √d if scale else 1
        out    = ReLU(concat_h(head_h) + x W_Res)          (W_Res only if use_residual)

    The paper uses the plain inner product (s = 1); ``scale=True`` (default) adds the Transformer √d scaling,
    which keeps attention logits well-conditioned for larger d. Layers stack because the output is again a
    set of per-field vectors: the next layer's ``embed_dim`` is this layer's ``output_dim``.

    Args:
        embed_dim: E, size of each input field vector.
        attention_dim: d, per-head size of queries, keys and values.
        num_heads: number of attention heads H.
        use_residual: add the projected input x W_Res (``[E, H·d]``) before the ReLU.
        scale: divide attention logits by √d.

    Shape:
        ``x: [B, F, E]`` -> ``[B, F, H·d]``; ``output_dim`` = H·d.

    Example:
        >>> layer = SelfAttentionInteraction(embed_dim=8, attention_dim=4, num_heads=2)
        >>> layer(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(
        self,
        embed_dim: int,
        attention_dim: int,
        num_heads: int,
        use_residual: bool = True,
        scale: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = _check_int("embed_dim", embed_dim, 1)
        self.attention_dim = _check_int("attention_dim", attention_dim, 1)
        self.num_heads = _check_int("num_heads", num_heads, 1)
        self.use_residual = bool(use_residual)
        self.scale = bool(scale)
        self.output_dim = attention_dim * num_heads
        # The paper's projections are plain matrices (no bias); all heads are fused into one matmul each.
        self.query = nn.Linear(embed_dim, self.output_dim, bias=False)
        self.key = nn.Linear(embed_dim, self.output_dim, bias=False)
        self.value = nn.Linear(embed_dim, self.output_dim, bias=False)
        self.residual = nn.Linear(embed_dim, self.output_dim, bias=False) if use_residual else None
        for m in (self.query, self.key, self.value, self.residual):
            if m is not None:
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "SelfAttentionInteraction", embed_dim=self.embed_dim)
        b, f, _ = x.shape
        h, d = self.num_heads, self.attention_dim

        def split(t: Tensor) -> Tensor:  # [B, F, H·d] -> [B, H, F, d]
            return t.view(b, f, h, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = q @ k.transpose(-1, -2)
        if self.scale:
            logits = logits / math.sqrt(d)
        heads = torch.softmax(logits, dim=-1) @ v  # [B, H, F, d]
        out = heads.transpose(1, 2).reshape(b, f, self.output_dim)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, attention_dim={self.attention_dim}, num_heads={self.num_heads}, "
            f"use_residual={self.use_residual}, scale={self.scale}"
        )


# --------------------------------------------------------------------------------------------------------
# PNN
# --------------------------------------------------------------------------------------------------------


class InnerProduct(nn.Module):
    """All pairwise inner products <v_i, v_j> for i < j (the IPNN product signals).

    Reference: Y. Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016,
    Sec. III-A, inner product g(f_i, f_j) = <f_i, f_j> (Eq. 7). This layer returns the raw product vector;
    the learned combination W_p ⊙ p is left to the following linear/MLP layer.

    Args:
        num_fields: F (>= 2, otherwise there are no pairs).

    Shape:
        ``x: [B, F, E]`` -> ``[B, F(F−1)/2]``; ``output_dim`` = F(F−1)/2.

    Example:
        >>> InnerProduct(num_fields=5)(torch.randn(4, 5, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.num_fields = _check_int("num_fields", num_fields, 2)
        rows, cols = _pair_indices(num_fields)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.output_dim = rows.numel()

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "InnerProduct", num_fields=self.num_fields)
        # Gather both sides of each pair rather than building the F×F Gram matrix: only the upper triangle
        # is wanted, and the gather keeps the pair order identical to the other pairwise layers.
        return (x[:, self.rows] * x[:, self.cols]).sum(dim=-1)

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}"


class OuterProduct(nn.Module):
    """Kernel product v_iᵀ K_ij v_j for every field pair i < j (the OPNN / KPNN product layer).

    Reference: Y. Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016
    (outer-product layer, Sec. III-B), with the per-pair kernel form of the journal version (Y. Qu et al.,
    "Product-Based Neural Networks for User Response Prediction over Multi-Field Categorical Data",
    ACM TOIS 2018, kernel product f_KP(v_i, v_j) = v_iᵀ K_ij v_j). ``kernel_type`` picks K_ij:

    * ``"mat"``: a full E×E matrix per pair (most expressive, P·E² parameters);
    * ``"vec"``: a diagonal kernel, i.e. a weighted inner product Σ_e k_ij,e v_i,e v_j,e (P·E parameters);
    * ``"num"``: one scalar per pair, k_ij <v_i, v_j> (P parameters).

    Args:
        num_fields: F (>= 2).
        embed_dim: E.
        kernel_type: ``"mat"``, ``"vec"`` or ``"num"``.

    Shape:
        ``x: [B, F, E]`` -> ``[B, F(F−1)/2]``; ``output_dim`` = F(F−1)/2.

    Example:
        >>> OuterProduct(num_fields=5, embed_dim=8, kernel_type="mat")(torch.randn(4, 5, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_fields: int, embed_dim: int, kernel_type: Literal["mat", "vec", "num"] = "mat") -> None:
        super().__init__()
        self.num_fields = _check_int("num_fields", num_fields, 2)
        self.embed_dim = _check_int("embed_dim", embed_dim, 1)
        self.kernel_type = _check_choice("kernel_type", kernel_type, ("mat", "vec", "num"))
        rows, cols = _pair_indices(num_fields)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        pairs = rows.numel()
        self.output_dim = pairs
        shape = {"mat": (pairs, embed_dim, embed_dim), "vec": (pairs, embed_dim), "num": (pairs, 1)}[kernel_type]
        self.kernel = nn.Parameter(torch.empty(shape))
        # Glorot-style bound with fan_in = fan_out = E, so every product starts at the scale of <v_i, v_j>/√E
        # whatever the kernel type (xavier_uniform_ on a 3-D tensor would treat P as a channel dimension).
        bound = math.sqrt(6.0 / (2 * embed_dim))
        nn.init.uniform_(self.kernel, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "OuterProduct", num_fields=self.num_fields, embed_dim=self.embed_dim)
        p, q = x[:, self.rows], x[:, self.cols]  # [B, P, E] each
        if self.kernel_type == "mat":
            return torch.einsum("bpe,pef,bpf->bp", p, self.kernel, q)
        return (p * q * self.kernel).sum(dim=-1)  # vec: [P, E]; num: [P, 1] broadcasts over E

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, embed_dim={self.embed_dim}, kernel_type={self.kernel_type!r}"


# --------------------------------------------------------------------------------------------------------
# DCN / DCN-v2
# --------------------------------------------------------------------------------------------------------


class CrossNetwork(nn.Module):
    """DCN (v1) cross network: x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l, stacked ``num_layers`` times.

    Reference: R. Wang, B. Fu, G. Fu and M. Wang, "Deep & Cross Network for Ad Click Predictions",
    ADKDD 2017, Eq. 3. Since x_lᵀ w_l is a scalar per example, each layer costs O(D_in) instead of forming
    the D_in × D_in outer product.

    Args:
        in_dim: D_in, size of the flat input (e.g. F·E concatenated embeddings plus dense features).
        num_layers: number of cross layers L (>= 1).

    Shape:
        ``x: [B, D_in]`` -> ``[B, D_in]``; ``output_dim`` = D_in.

    Example:
        >>> CrossNetwork(in_dim=16, num_layers=3)(torch.randn(4, 16)).shape
        torch.Size([4, 16])
    """

    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        self.in_dim = _check_int("in_dim", in_dim, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.output_dim = in_dim
        self.weight = nn.Parameter(torch.empty(num_layers, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_layers, in_dim))
        # w_l maps D_in -> 1; a Glorot-scaled init keeps x_lᵀ w_l O(1) at the start.
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (in_dim + 1)))

    def forward(self, x: Tensor) -> Tensor:
        _check_flat(x, "CrossNetwork", self.in_dim)
        x0, xl = x, x
        for w, b in zip(self.weight, self.bias):
            xl = x0 * (xl @ w).unsqueeze(-1) + b + xl
        return xl

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_layers={self.num_layers}"


class CrossNetworkV2(nn.Module):
    """DCN-v2 cross network: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l, full-rank or as a mixture of low-rank experts.

    Reference: R. Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
    Learning to Rank Systems", WWW 2021. Full-rank cross layer: Eq. 1. Mixture of low-rank experts
    (Sec. "Cost-Effective Mixture of Low-Rank DCN")::

        x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l
        E_i(x_l) = x_0 ⊙ (U_l^i g(C_l^i g(V_l^iᵀ x_l)) + b_l)          (low_rank = r)
        E_i(x_l) = x_0 ⊙ (W_l^i x_l + b_l)                               (low_rank = None)

    with U, V ∈ R^{D_in×r}, C ∈ R^{r×r}, g = tanh, and gates G(x_l) = softmax(x_l W_g) over the experts.
    Because the gates sum to one, the shared bias b_l factors out: x_{l+1} = x_0 ⊙ (Σ_i G_i u_i + b_l) + x_l.
    With ``low_rank=None`` and ``num_experts=1`` the gate is identically 1 and this is exactly Eq. 1.

    Args:
        in_dim: D_in.
        num_layers: number of cross layers L (>= 1).
        low_rank: rank r of the U_i, V_i factors; None for full D_in×D_in matrices.
        num_experts: number of experts K per layer (>= 1).

    Shape:
        ``x: [B, D_in]`` -> ``[B, D_in]``; ``output_dim`` = D_in.

    Example:
        >>> CrossNetworkV2(in_dim=16, num_layers=2, low_rank=4, num_experts=3)(torch.randn(5, 16)).shape
        torch.Size([5, 16])
    """

    def __init__(self, in_dim: int, num_layers: int, low_rank: int | None = None, num_experts: int = 1) -> None:
        super().__init__()
        self.in_dim = _check_int("in_dim", in_dim, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        if low_rank is not None:
            _check_int("low_rank", low_rank, 1)
        self.low_rank = low_rank
        self.num_experts = _check_int("num_experts", num_experts, 1)
        self.output_dim = in_dim
        L, K, D = num_layers, num_experts, in_dim

        def glorot(*shape: int, fan_in: int, fan_out: int) -> nn.Parameter:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

        if low_rank is None:
            # W stored as [out, in] so that W x is `x @ W.T`, matching nn.Linear's convention.
            self.W = glorot(L, K, D, D, fan_in=D, fan_out=D)
        else:
            r = low_rank
            self.V = glorot(L, K, D, r, fan_in=D, fan_out=r)
            self.C = glorot(L, K, r, r, fan_in=r, fan_out=r)
            self.U = glorot(L, K, r, D, fan_in=r, fan_out=D)  # stored transposed: [r, D]
        self.bias = nn.Parameter(torch.zeros(L, D))
        # A single expert needs no gate (softmax over one logit is 1), so no dead parameters are created.
        self.gate = nn.Parameter(torch.zeros(L, D, K)) if K > 1 else None
        if self.gate is not None:
            nn.init.xavier_uniform_(self.gate.view(L * D, K))

    def forward(self, x: Tensor) -> Tensor:
        _check_flat(x, "CrossNetworkV2", self.in_dim)
        x0, xl = x, x
        for layer in range(self.num_layers):
            if self.low_rank is None:
                experts = torch.einsum("bd,ked->bke", xl, self.W[layer])  # [B, K, D]: W_i x_l
            else:
                z = torch.tanh(torch.einsum("bd,kdr->bkr", xl, self.V[layer]))
                z = torch.tanh(torch.einsum("bkr,ksr->bks", z, self.C[layer]))
                experts = torch.einsum("bkr,krd->bkd", z, self.U[layer])
            if self.gate is None:
                mixed = experts[:, 0]
            else:
                weights = torch.softmax(xl @ self.gate[layer], dim=-1)  # [B, K]
                mixed = (weights.unsqueeze(-1) * experts).sum(dim=1)
            xl = x0 * (mixed + self.bias[layer]) + xl
        return xl

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_layers={self.num_layers}, low_rank={self.low_rank}, "
            f"num_experts={self.num_experts}"
        )


# --------------------------------------------------------------------------------------------------------
# xDeepFM
# --------------------------------------------------------------------------------------------------------


class CIN(nn.Module):
    """xDeepFM Compressed Interaction Network with sum pooling over the embedding dimension.

    Reference: J. Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender
    Systems", KDD 2018, Eq. 6: X^k_{h,*} = Σ_i Σ_j W^{k,h}_{ij} (X^{k−1}_{i,*} ∘ X^0_{j,*}), then sum pooling
    p^k_h = Σ_e X^k_{h,e} and concatenation over layers. Each layer is a 1×1 convolution over the H_{k−1}·F
    channels of the outer product along the field axis. Feature maps are linear (identity activation), as in
    the paper, which found identity worked best for CIN neurons.

    With ``split_half`` every layer but the last sends half of its H_k maps to the output and half to the
    next layer (the paper's released implementation trick that halves the cost of the next layer); those
    layer sizes must then be even.

    Args:
        num_fields: F, number of input fields (>= 1).
        layer_sizes: H_1, ..., H_T feature maps per layer (each >= 1, at least one layer).
        split_half: split hidden layers' maps between output and next layer.

    Shape:
        ``x: [B, F, E]`` -> ``[B, output_dim]`` with ``output_dim`` = Σ_{k<T} H_k/2 + H_T if ``split_half``
        else Σ_k H_k.

    Example:
        >>> cin = CIN(num_fields=6, layer_sizes=(16, 8))
        >>> cin(torch.randn(4, 6, 10)).shape, cin.output_dim
        (torch.Size([4, 16]), 16)
    """

    def __init__(
        self,
        num_fields: int,
        layer_sizes: tuple[int, ...] | list[int] = (128, 128),
        split_half: bool = True,
    ) -> None:
        super().__init__()
        self.num_fields = _check_int("num_fields", num_fields, 1)
        sizes = tuple(layer_sizes)
        if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(f"layer_sizes must be a non-empty sequence of integers >= 1, got {layer_sizes!r}")
        if split_half and any(h % 2 for h in sizes[:-1]):
            raise ValueError(
                f"layer_sizes must be even for every layer but the last when split_half=True, got {layer_sizes!r}"
            )
        self.layer_sizes = sizes
        self.split_half = bool(split_half)
        self.convs = nn.ModuleList()
        self._keep: list[int] = []  # how many maps of each layer feed the next layer
        prev, out_dim = num_fields, 0
        for k, h in enumerate(sizes):
            self.convs.append(nn.Conv1d(prev * num_fields, h, kernel_size=1))
            last = k == len(sizes) - 1
            keep = h // 2 if (split_half and not last) else h
            self._keep.append(keep)
            out_dim += h - keep if (split_half and not last) else h
            prev = keep
        self.output_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "CIN", num_fields=self.num_fields)
        b, _, e = x.shape
        x0, xk = x, x
        pooled = []
        for k, conv in enumerate(self.convs):
            # z[b, h, m, e] = X^{k-1}_{h,e} · X^0_{m,e}; flatten (h, m) into channels for the 1×1 conv.
            z = torch.einsum("bhe,bme->bhme", xk, x0).reshape(b, -1, e)
            out = conv(z)  # [B, H_k, E]
            last = k == len(self.convs) - 1
            if self.split_half and not last:
                keep = self._keep[k]
                xk, direct = out[:, :keep], out[:, keep:]
            else:
                xk, direct = out, out
            pooled.append(direct.sum(dim=-1))
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, layer_sizes={self.layer_sizes}, split_half={self.split_half}"


# --------------------------------------------------------------------------------------------------------
# FiBiNET
# --------------------------------------------------------------------------------------------------------


class SENETLayer(nn.Module):
    """FiBiNET squeeze-and-excitation: re-weights each field embedding by a learned field importance.

    Reference: T. Huang, Z. Zhang and J. Zhang, "FiBiNET: Combining Feature Importance and Bilinear Feature
    Interaction for Click-Through Rate Prediction", RecSys 2019, Sec. 3.3: squeeze z_i = mean_e(v_i) (Eq. 1),
    excitation A = σ₂(W₂ σ₁(W₁ z)) with W₁ ∈ R^{F/r × F}, W₂ ∈ R^{F × F/r} (Eq. 2), re-weight
    V = [a_1·v_1, ..., a_F·v_F] (Eq. 3). σ₁ = σ₂ = ReLU here.

    Args:
        num_fields: F (>= 1).
        reduction_ratio: r; the bottleneck has max(1, F // r) units.

    Shape:
        ``x: [B, F, E]`` -> ``[B, F, E]``.

    Example:
        >>> SENETLayer(num_fields=6, reduction_ratio=3)(torch.randn(4, 6, 8)).shape
        torch.Size([4, 6, 8])
    """

    def __init__(self, num_fields: int, reduction_ratio: int = 3) -> None:
        super().__init__()
        self.num_fields = _check_int("num_fields", num_fields, 1)
        self.reduction_ratio = _check_int("reduction_ratio", reduction_ratio, 1)
        # Clamp to 1 so that few fields with a large ratio still yield a valid bottleneck.
        self.reduced_dim = max(1, num_fields // reduction_ratio)
        self.excitation = nn.Sequential(
            nn.Linear(num_fields, self.reduced_dim, bias=False),
            nn.ReLU(),
            nn.Linear(self.reduced_dim, num_fields, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "SENETLayer", num_fields=self.num_fields)
        weights = self.excitation(x.mean(dim=-1))  # [B, F]
        return x * weights.unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, reduction_ratio={self.reduction_ratio}"


class BilinearInteraction(nn.Module):
    """FiBiNET bilinear interaction p_ij = (v_i W) ⊙ v_j for every field pair i < j.

    Reference: T. Huang, Z. Zhang and J. Zhang, "FiBiNET", RecSys 2019, Sec. 3.4, Eqs. 4–6. ``bilinear_type``
    chooses how W is shared:

    * ``"field_all"``: one W ∈ R^{E×E} for all pairs (Eq. 4);
    * ``"field_each"``: one W_i per left field i (Eq. 5; the last field is never on the left, so F−1 matrices);
    * ``"field_interaction"``: one W_ij per pair (Eq. 6).

    Args:
        num_fields: F (>= 2).
        embed_dim: E.
        bilinear_type: ``"field_all"``, ``"field_each"`` or ``"field_interaction"``.

    Shape:
        ``x: [B, F, E]`` -> ``[B, F(F−1)/2, E]``.

    Example:
        >>> BilinearInteraction(num_fields=5, embed_dim=8)(torch.randn(4, 5, 8)).shape
        torch.Size([4, 10, 8])
    """

    def __init__(
        self,
        num_fields: int,
        embed_dim: int,
        bilinear_type: Literal["field_all", "field_each", "field_interaction"] = "field_all",
    ) -> None:
        super().__init__()
        self.num_fields = _check_int("num_fields", num_fields, 2)
        self.embed_dim = _check_int("embed_dim", embed_dim, 1)
        self.bilinear_type = _check_choice(
            "bilinear_type", bilinear_type, ("field_all", "field_each", "field_interaction")
        )
        rows, cols = _pair_indices(num_fields)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = rows.numel()
        count = {"field_all": 1, "field_each": num_fields - 1, "field_interaction": self.num_pairs}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(count, embed_dim, embed_dim))
        bound = math.sqrt(6.0 / (2 * embed_dim))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_fields(x, "BilinearInteraction", num_fields=self.num_fields, embed_dim=self.embed_dim)
        left, right = x[:, self.rows], x[:, self.cols]  # [B, P, E]
        if self.bilinear_type == "field_all":
            projected = left @ self.weight[0]
        elif self.bilinear_type == "field_each":
            # Project every field once, then pick the left side of each pair (cheaper than per-pair W_i).
            projected = torch.einsum("bfe,fed->bfd", x[:, :-1], self.weight)[:, self.rows]
        else:
            projected = torch.einsum("bpe,ped->bpd", left, self.weight)
        return projected * right

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, embed_dim={self.embed_dim}, bilinear_type={self.bilinear_type!r}"
