"""Tests for polyrec.layers.interaction: shapes, brute-force equivalence, gradients and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from polyrec.layers.interaction import (
    CIN,
    BiInteractionPooling,
    BilinearInteraction,
    CrossNetwork,
    CrossNetworkV2,
    FMInteraction,
    InnerProduct,
    OuterProduct,
    SelfAttentionInteraction,
    SENETLayer,
)

B, F, E = 4, 5, 6
P = F * (F - 1) // 2

# Double precision so brute-force comparisons can use tight tolerances.
DT = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def fields(b: int = B, f: int = F, e: int = E) -> torch.Tensor:
    return torch.randn(b, f, e, dtype=DT)


def pairs(f: int = F) -> list[tuple[int, int]]:
    return [(i, j) for i in range(f) for j in range(i + 1, f)]


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "layer, inp, shape",
    [
        (FMInteraction(), (B, F, E), (B, 1)),
        (FMInteraction(reduce_sum=False), (B, F, E), (B, E)),
        (BiInteractionPooling(), (B, F, E), (B, E)),
        (SelfAttentionInteraction(E, 3, 2), (B, F, E), (B, F, 6)),
        (SelfAttentionInteraction(E, 4, 1, use_residual=False, scale=False), (B, F, E), (B, F, 4)),
        (InnerProduct(F), (B, F, E), (B, P)),
        (OuterProduct(F, E, "mat"), (B, F, E), (B, P)),
        (OuterProduct(F, E, "vec"), (B, F, E), (B, P)),
        (OuterProduct(F, E, "num"), (B, F, E), (B, P)),
        (CrossNetwork(12, 3), (B, 12), (B, 12)),
        (CrossNetworkV2(12, 2), (B, 12), (B, 12)),
        (CrossNetworkV2(12, 2, low_rank=3), (B, 12), (B, 12)),
        (CrossNetworkV2(12, 2, low_rank=3, num_experts=4), (B, 12), (B, 12)),
        (CrossNetworkV2(12, 2, num_experts=3), (B, 12), (B, 12)),
        (CIN(F, (8, 6)), (B, F, E), (B, 4 + 6)),
        (CIN(F, (8, 6), split_half=False), (B, F, E), (B, 14)),
        (CIN(F, (5,)), (B, F, E), (B, 5)),
        (SENETLayer(F, 2), (B, F, E), (B, F, E)),
        (BilinearInteraction(F, E, "field_all"), (B, F, E), (B, P, E)),
        (BilinearInteraction(F, E, "field_each"), (B, F, E), (B, P, E)),
        (BilinearInteraction(F, E, "field_interaction"), (B, F, E), (B, P, E)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else None,
)
def test_shapes(layer: torch.nn.Module, inp: tuple[int, ...], shape: tuple[int, ...]) -> None:
    out = layer(torch.randn(*inp))
    assert out.shape == shape
    assert torch.isfinite(out).all()
    if hasattr(layer, "output_dim"):
        assert layer.output_dim == shape[-1]


def test_self_attention_stacks() -> None:
    first = SelfAttentionInteraction(E, 4, 2)
    second = SelfAttentionInteraction(first.output_dim, 3, 3)
    assert second(first(torch.randn(B, F, E))).shape == (B, F, 9)


# ---------------------------------------------------------------------------------------------- FM / NFM


def test_fm_equals_pairwise_double_loop() -> None:
    x = fields()
    expected_vec = torch.zeros(B, E, dtype=DT)
    for i, j in pairs():
        expected_vec += x[:, i] * x[:, j]
    torch.testing.assert_close(FMInteraction(reduce_sum=False)(x), expected_vec)
    torch.testing.assert_close(FMInteraction()(x), expected_vec.sum(dim=1, keepdim=True))


def test_bi_interaction_equals_pairwise_double_loop() -> None:
    x = fields()
    expected = torch.zeros(B, E, dtype=DT)
    for i in range(F):
        for j in range(F):
            if i < j:
                expected += x[:, i] * x[:, j]
    torch.testing.assert_close(BiInteractionPooling()(x), expected)


# ---------------------------------------------------------------------------------------------- PNN


def test_inner_product_equals_brute_force() -> None:
    x = fields()
    expected = torch.stack([(x[:, i] * x[:, j]).sum(-1) for i, j in pairs()], dim=1)
    torch.testing.assert_close(InnerProduct(F)(x), expected)


@pytest.mark.parametrize("kernel_type", ["mat", "vec", "num"])
def test_outer_product_equals_brute_force(kernel_type: str) -> None:
    layer = OuterProduct(F, E, kernel_type).double()
    x = fields()
    k = layer.kernel
    cols = []
    for p, (i, j) in enumerate(pairs()):
        vi, vj = x[:, i], x[:, j]
        if kernel_type == "mat":
            cols.append(torch.stack([vi[b] @ k[p] @ vj[b] for b in range(B)]))
        elif kernel_type == "vec":
            cols.append((vi * k[p] * vj).sum(-1))
        else:
            cols.append(k[p, 0] * (vi * vj).sum(-1))
    torch.testing.assert_close(layer(x), torch.stack(cols, dim=1))


# ---------------------------------------------------------------------------------------------- DCN


def test_cross_network_matches_explicit_formula() -> None:
    d = 7
    layer = CrossNetwork(d, 2).double()
    with torch.no_grad():
        layer.bias.normal_()  # zero init would hide a dropped bias term
    x = torch.randn(B, d, dtype=DT)
    x0 = x
    xl = x
    for i in range(2):
        w = layer.weight[i].reshape(d, 1)
        b = layer.bias[i].reshape(d, 1)
        rows = []
        for n in range(B):
            x0n, xln = x0[n].reshape(d, 1), xl[n].reshape(d, 1)
            # x_{l+1} = x_0 x_l^T w_l + b_l + x_l with the d×d outer product written out.
            rows.append((x0n @ xln.T @ w + b + xln).reshape(d))
        xl = torch.stack(rows)
    torch.testing.assert_close(layer(x), xl)


def test_cross_network_v2_single_full_rank_expert_matches_matrix_formula() -> None:
    d = 6
    layer = CrossNetworkV2(d, 3).double()
    assert layer.gate is None
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(B, d, dtype=DT)
    x0, xl = x, x
    for i in range(3):
        W = layer.W[i, 0]  # [D, D], acting as W x
        b = layer.bias[i]
        rows = []
        for n in range(B):
            rows.append(x0[n] * (W @ xl[n] + b) + xl[n])
        xl = torch.stack(rows)
    torch.testing.assert_close(layer(x), xl)


def test_cross_network_v2_low_rank_mixture_matches_formula() -> None:
    d, r, k = 6, 2, 3
    layer = CrossNetworkV2(d, 1, low_rank=r, num_experts=k).double()
    with torch.no_grad():
        layer.bias.normal_()
        layer.gate.normal_()  # non-uniform gates so a wrong mixture is detectable
    x = torch.randn(B, d, dtype=DT)
    rows = []
    for n in range(B):
        xn = x[n]
        g = torch.softmax(xn @ layer.gate[0], dim=0)
        total = torch.zeros(d, dtype=DT)
        for i in range(k):
            V, C, U = layer.V[0, i], layer.C[0, i], layer.U[0, i].T  # V: [D, r], C: [r, r] (z @ C.T), U: [D, r]
            inner = torch.tanh(C @ torch.tanh(V.T @ xn))
            total = total + g[i] * (xn * (U @ inner + layer.bias[0]))
        rows.append(total + xn)
    torch.testing.assert_close(layer(x), torch.stack(rows))


# ---------------------------------------------------------------------------------------------- FiBiNET


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_equals_brute_force(bilinear_type: str) -> None:
    layer = BilinearInteraction(F, E, bilinear_type).double()
    x = fields()
    outs = []
    for p, (i, j) in enumerate(pairs()):
        index = {"field_all": 0, "field_each": i, "field_interaction": p}[bilinear_type]
        W = layer.weight[index]
        outs.append((x[:, i] @ W) * x[:, j])
    torch.testing.assert_close(layer(x), torch.stack(outs, dim=1))


def test_bilinear_parameter_counts() -> None:
    assert BilinearInteraction(F, E, "field_all").weight.shape == (1, E, E)
    assert BilinearInteraction(F, E, "field_each").weight.shape == (F - 1, E, E)
    assert BilinearInteraction(F, E, "field_interaction").weight.shape == (P, E, E)


def test_senet_reweights_each_field_by_a_scalar() -> None:
    layer = SENETLayer(F, 2).double()
    x = fields()
    out = layer(x)
    z = x.mean(dim=-1)
    a = torch.relu(torch.relu(z @ layer.excitation[0].weight.T) @ layer.excitation[2].weight.T)
    torch.testing.assert_close(out, x * a.unsqueeze(-1))
    assert layer.reduced_dim == 2
    assert SENETLayer(2, 5).reduced_dim == 1


# ---------------------------------------------------------------------------------------------- AutoInt


@pytest.mark.parametrize("scale", [True, False])
def test_self_attention_single_head_matches_hand_written(scale: bool) -> None:
    d = 3
    layer = SelfAttentionInteraction(E, d, 1, use_residual=True, scale=scale).double()
    x = fields()
    Wq, Wk, Wv, Wr = (m.weight.T for m in (layer.query, layer.key, layer.value, layer.residual))
    outs = []
    for n in range(B):
        q, k, v = x[n] @ Wq, x[n] @ Wk, x[n] @ Wv
        logits = q @ k.T
        if scale:
            logits = logits / math.sqrt(d)
        att = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        outs.append(torch.relu(att @ v + x[n] @ Wr))
    torch.testing.assert_close(layer(x), torch.stack(outs))


def test_self_attention_heads_are_independent_blocks() -> None:
    # With 2 heads, each head's output block must equal a 1-head layer built from that head's slices.
    d = 2
    layer = SelfAttentionInteraction(E, d, 2, use_residual=False).double()
    x = fields()
    out = layer(x)
    for h in range(2):
        single = SelfAttentionInteraction(E, d, 1, use_residual=False).double()
        with torch.no_grad():
            for name in ("query", "key", "value"):
                getattr(single, name).weight.copy_(getattr(layer, name).weight[h * d : (h + 1) * d])
        torch.testing.assert_close(out[..., h * d : (h + 1) * d], single(x))


# ---------------------------------------------------------------------------------------------- CIN


def test_cin_output_dim() -> None:
    assert CIN(F, (128, 128)).output_dim == 64 + 128
    assert CIN(F, (128, 128), split_half=False).output_dim == 256
    assert CIN(F, (10, 20, 7)).output_dim == 5 + 10 + 7
    assert CIN(F, (10, 20, 7)).convs[1].in_channels == 5 * F  # next layer sees only the kept half


def test_cin_is_equivariant_to_batch_permutation() -> None:
    layer = CIN(F, (8, 6)).double()
    x = fields(b=7)
    perm = torch.randperm(7)
    torch.testing.assert_close(layer(x[perm]), layer(x)[perm])


def test_cin_first_layer_matches_formula() -> None:
    h = 3
    layer = CIN(F, (h,), split_half=False).double()
    x = fields()
    W = layer.convs[0].weight.reshape(h, F, F)  # channels are (i over X^{k-1}) × (j over X^0)
    bias = layer.convs[0].bias
    expected = torch.zeros(B, h, dtype=DT)
    for k in range(h):
        for i in range(F):
            for j in range(F):
                expected[:, k] += W[k, i, j] * (x[:, i] * x[:, j]).sum(-1)
        expected[:, k] += bias[k] * E
    torch.testing.assert_close(layer(x), expected)


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make, inp",
    [
        (lambda: SelfAttentionInteraction(E, 3, 2), (B, F, E)),
        (lambda: OuterProduct(F, E, "mat"), (B, F, E)),
        (lambda: OuterProduct(F, E, "vec"), (B, F, E)),
        (lambda: OuterProduct(F, E, "num"), (B, F, E)),
        (lambda: CrossNetwork(10, 2), (B, 10)),
        (lambda: CrossNetworkV2(10, 2), (B, 10)),
        (lambda: CrossNetworkV2(10, 2, low_rank=3, num_experts=3), (B, 10)),
        (lambda: CrossNetworkV2(10, 2, num_experts=2), (B, 10)),
        (lambda: CIN(F, (8, 6)), (B, F, E)),
        (lambda: SENETLayer(F, 2), (B, F, E)),
        (lambda: BilinearInteraction(F, E, "field_all"), (B, F, E)),
        (lambda: BilinearInteraction(F, E, "field_each"), (B, F, E)),
        (lambda: BilinearInteraction(F, E, "field_interaction"), (B, F, E)),
        (lambda: FMInteraction(), (B, F, E)),
        (lambda: BiInteractionPooling(), (B, F, E)),
        (lambda: InnerProduct(F), (B, F, E)),
    ],
)
def test_gradients_reach_all_parameters_and_input(make, inp) -> None:
    layer = make()
    x = torch.randn(*inp)
    if isinstance(layer, SENETLayer):
        # ReLU excitation can zero a whole unit for a tiny batch; positive weights and inputs keep every
        # path alive so a missing gradient means a real disconnection.
        with torch.no_grad():
            for p in layer.parameters():
                p.abs_()
        x = torch.rand(*inp) + 0.1
    x.requires_grad_(True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------- bad args


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FMInteraction(reduce_sum=1), r"reduce_sum must be a bool.*got 1"),
        (lambda: SelfAttentionInteraction(0, 4, 2), r"embed_dim must be an integer >= 1, got 0"),
        (lambda: SelfAttentionInteraction(8, -1, 2), r"attention_dim must be an integer >= 1, got -1"),
        (lambda: SelfAttentionInteraction(8, 4, 0), r"num_heads must be an integer >= 1, got 0"),
        (lambda: InnerProduct(1), r"num_fields must be an integer >= 2, got 1"),
        (lambda: OuterProduct(4, 0), r"embed_dim must be an integer >= 1, got 0"),
        (lambda: OuterProduct(4, 8, "matrix"), r"kernel_type must be one of 'mat', 'vec', 'num'; got 'matrix'"),
        (lambda: CrossNetwork(0, 2), r"in_dim must be an integer >= 1, got 0"),
        (lambda: CrossNetwork(8, 0), r"num_layers must be an integer >= 1, got 0"),
        (lambda: CrossNetworkV2(8, 2, low_rank=0), r"low_rank must be an integer >= 1, got 0"),
        (lambda: CrossNetworkV2(8, 2, num_experts=0), r"num_experts must be an integer >= 1, got 0"),
        (lambda: CrossNetworkV2(8, 2.5), r"num_layers must be an integer >= 1, got 2.5"),
        (lambda: CIN(0), r"num_fields must be an integer >= 1, got 0"),
        (lambda: CIN(4, ()), r"layer_sizes must be a non-empty sequence"),
        (lambda: CIN(4, (8, 0)), r"layer_sizes must be a non-empty sequence of integers >= 1, got \(8, 0\)"),
        (lambda: CIN(4, (7, 8)), r"layer_sizes must be even .* split_half=True, got \(7, 8\)"),
        (lambda: SENETLayer(4, 0), r"reduction_ratio must be an integer >= 1, got 0"),
        (lambda: BilinearInteraction(1, 8), r"num_fields must be an integer >= 2, got 1"),
        (lambda: BilinearInteraction(4, 8, "all"), r"bilinear_type must be one of .*got 'all'"),
    ],
)
def test_bad_constructor_args_raise(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_cin_odd_sizes_allowed_without_split() -> None:
    assert CIN(4, (7, 5), split_half=False).output_dim == 12


@pytest.mark.parametrize(
    "layer, x, match",
    [
        (FMInteraction(), torch.randn(B, F), r"expects field embeddings \[B, F, E\]"),
        (InnerProduct(F), torch.randn(B, F + 1, E), r"built for F=5"),
        (OuterProduct(F, E), torch.randn(B, F, E + 1), r"built for E=6"),
        (CrossNetwork(8, 1), torch.randn(B, 9), r"D_in=8"),
        (CrossNetworkV2(8, 1), torch.randn(B, 2, 4), r"D_in=8"),
        (SelfAttentionInteraction(E, 2, 2), torch.randn(B, F, E + 2), r"built for E=6"),
        (CIN(F, (4,)), torch.randn(B, F - 1, E), r"built for F=5"),
    ],
)
def test_bad_input_shapes_raise(layer, x, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer(x)
