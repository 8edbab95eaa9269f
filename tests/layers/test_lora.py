"""Per-domain LoRA banks: rank rule and cap, exactness at B = 0, both routing paths, gradient isolation,
10,000 domains, and staging rows for a new domain."""

import pytest
import torch
from torch import nn

from polyrec.layers import lora as L
from polyrec.layers.domain import DomainSegments, StarLinear
from polyrec.layers.lora import AdapterRouting, AdapterState, LoRABank, LoRALinear, LoRAStarLinear, lora_rank


def randomize(bank: LoRABank, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bank.B.copy_(torch.randn(bank.B.shape, generator=g))
        if bank.bias is not None:
            bank.bias.copy_(torch.randn(bank.bias.shape, generator=g))


def reference(bank: LoRABank, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Row by row: x_i A_d B_d + b_d."""
    bias = bank.bias if bank.bias is not None else torch.zeros(bank.A.shape[0], bank.out_dim)
    return torch.stack([x[i] @ bank.A[d] @ bank.B[d] + bias[d] for i, d in enumerate(domain.tolist())])


def test_rank_is_dout_over_alpha_at_least_one():
    # MLoRA eq. 10 on the paper's DNN [256, 128, 64] with alpha 16, 32 and 4.
    assert [lora_rank(24, o, 16) for o in (256, 128, 64, 1)] == [16, 8, 4, 1]
    assert [lora_rank(24, o, 32) for o in (256, 128, 64)] == [8, 4, 2]
    assert lora_rank(8, 3, 4) == 1 and lora_rank(8, 7, 4) == 1 and lora_rank(8, 8, 4) == 2
    with pytest.raises(ValueError, match="alpha must be an integer >= 1"):
        lora_rank(8, 8, 0)


def test_cap_reduces_rank_until_it_fits():
    # 256 -> 128, alpha 16: r = 8 costs 256·8 + 8·128 = 3072 parameters per domain (+ 128 with the bias).
    assert lora_rank(256, 128, 16, max_params=3072) == 8
    assert lora_rank(256, 128, 16, max_params=3071) == 7
    assert lora_rank(256, 128, 16, max_params=3200, domain_bias=True) == 8
    assert lora_rank(256, 128, 16, max_params=3199, domain_bias=True) == 7
    r = lora_rank(256, 128, 16, max_params=1000, domain_bias=True)
    assert 256 * r + r * 128 + 128 <= 1000 < 256 * (r + 1) + (r + 1) * 128 + 128
    assert lora_rank(256, 128, 16, max_params=1000) == 2
    with pytest.raises(ValueError, match="at least 384"):
        lora_rank(256, 128, 16, max_params=380)
    with pytest.raises(ValueError, match="at least 512"):
        lora_rank(256, 128, 16, max_params=500, domain_bias=True)


def test_bank_shapes_and_init():
    bank = LoRABank(10, 6, rank=3, num_domains=4)  # MLoRA eq. 9: no per-domain bias
    assert bank.A.shape == (4, 10, 3) and bank.B.shape == (4, 3, 6) and bank.bias is None
    assert bank.params_per_domain() == 10 * 3 + 3 * 6
    biased = LoRABank(10, 6, rank=3, num_domains=4, domain_bias=True)
    assert biased.bias.shape == (4, 6) and biased.bias.abs().sum() == 0
    assert biased.A.abs().sum() > 0 and biased.B.abs().sum() == 0
    assert biased.params_per_domain() == 10 * 3 + 3 * 6 + 6
    with pytest.raises(ValueError, match="a_init 'xavier' is not allowed"):
        LoRABank(10, 6, rank=3, num_domains=4, a_init="xavier")


def test_a_is_drawn_gaussian_by_default_and_uniform_on_request():
    """§3.2: A Gaussian (std 1/sqrt(d_in)); 'uniform' keeps nn.Linear's draw, bounded by 1/sqrt(d_in)."""
    torch.manual_seed(0)
    g = LoRABank(400, 8, rank=50, num_domains=4).A
    u = LoRABank(400, 8, rank=50, num_domains=4, a_init="uniform").A
    bound = 1 / 400**0.5
    assert abs(g.std().item() - bound) < 0.03 * bound and g.abs().max() > bound  # a normal's tails pass the bound
    assert u.abs().max() <= bound and abs(u.std().item() - bound / 3**0.5) < 0.03 * bound
    bank = LoRABank(400, 8, rank=50, num_domains=1)
    bank.extend(2)  # new domains are drawn the same way
    assert abs(bank.A[1:].std().item() - bound) < 0.05 * bound


def test_lora_linear_with_zero_b_is_the_wrapped_layer_exactly():
    torch.manual_seed(0)
    base = nn.Linear(12, 5)
    x = torch.randn(33, 12)
    expected = base(x)
    state = AdapterState()
    layer = LoRALinear(base, num_domains=3, rank=2, state=state)
    assert layer.weight is base.weight and layer.bias is base.bias
    state.routing = AdapterRouting(torch.randint(0, 3, (33,)))
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("loop_max", [0, L.LOOP_MAX])  # 0: gather path; default: segment path
def test_both_paths_compute_the_per_row_formula(loop_max):
    torch.manual_seed(1)
    bank = LoRABank(7, 5, rank=3, num_domains=6)
    randomize(bank)
    x, domain = torch.randn(40, 7), torch.randint(0, 6, (40,))
    out = bank.delta(x, AdapterRouting(domain), loop_max=loop_max)
    torch.testing.assert_close(out, reference(bank, x, domain))
    # Leading dims beyond the batch (attention inputs [B, F, E]).
    x3 = torch.randn(40, 4, 7)
    out3 = bank.delta(x3, AdapterRouting(domain), loop_max=loop_max)
    ref3 = torch.stack([reference(bank, x3[:, f], domain) for f in range(4)], dim=1)
    torch.testing.assert_close(out3, ref3)


@pytest.mark.parametrize("loop_max", [0, L.LOOP_MAX])
def test_gradient_reaches_only_the_rows_of_present_domains(loop_max):
    torch.manual_seed(2)
    bank = LoRABank(6, 4, rank=2, num_domains=5, domain_bias=True)
    randomize(bank)
    domain = torch.tensor([1, 3, 1, 3, 3])
    bank.delta(torch.randn(5, 6), AdapterRouting(domain), loop_max=loop_max).pow(2).sum().backward()
    for p in (bank.A, bank.B, bank.bias):
        assert p.grad is not None
        for d in range(5):
            nonzero = bool(p.grad[d].abs().sum() > 0)
            assert nonzero == (d in (1, 3)), (d, p.grad[d])


def test_domain_grad_comes_from_its_own_rows_only():
    torch.manual_seed(3)
    bank = LoRABank(6, 4, rank=2, num_domains=3)
    randomize(bank)
    x, domain = torch.randn(12, 6), torch.tensor([0, 1, 2] * 4)
    bank.delta(x, AdapterRouting(domain)).sum().backward()
    full = bank.A.grad[1].clone()
    bank.zero_grad()
    keep = domain == 1
    bank.delta(x[keep], AdapterRouting(domain[keep])).sum().backward()
    torch.testing.assert_close(bank.A.grad[1], full)


def test_ten_thousand_domains_mixed_batch():
    torch.manual_seed(4)
    D = 10_000
    state = AdapterState()
    layer = LoRALinear(nn.Linear(16, 8), num_domains=D, rank=2, state=state)
    randomize(layer.lora)
    domain = torch.randint(0, D, (256,))
    domain[:8] = 9_999
    x = torch.randn(256, 16, requires_grad=True)
    state.routing = AdapterRouting(domain)
    assert state.routing.segments.num_segments > L.LOOP_MAX  # the gather path
    out = layer(x)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias) + reference(layer.lora, x, domain)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    absent = torch.ones(D, dtype=torch.bool)
    absent[domain] = False
    assert layer.lora.B.grad[absent].abs().sum() == 0 and layer.lora.A.grad[absent].abs().sum() == 0
    assert layer.lora.B.grad[domain].abs().sum(dim=(1, 2)).gt(0).all()


def test_star_layer_with_adapters():
    torch.manual_seed(5)
    star = StarLinear(6, 4, num_domains=3)
    domain = torch.tensor([2, 0, 2, 1, 0, 0])
    seg = DomainSegments.from_domain(domain)
    x = seg.sort(torch.randn(6, 6))
    expected = star(x, seg)
    state = AdapterState()
    layer = LoRAStarLinear(star, num_domains=3, rank=2, state=state)
    state.routing = AdapterRouting(domain)
    assert torch.equal(layer(x, seg), expected)  # B = 0: exactly STAR
    randomize(layer.lora)
    out = layer(x, seg)
    torch.testing.assert_close(out, expected + reference(layer.lora, x, seg.sorted_domain))
    assert layer.unwrap().domain_weight is star.domain_weight


def test_layer_without_routing_is_a_clear_error():
    layer = LoRALinear(nn.Linear(4, 2), num_domains=2, rank=1, state=AdapterState())
    with pytest.raises(RuntimeError, match="without the batch's domains"):
        layer(torch.randn(3, 4))
    layer.state.enabled = False  # adapters off: the plain layer
    assert layer(torch.randn(3, 4)).shape == (3, 2)


def test_extend_stage_merge_keep_outputs_and_isolate_new_rows():
    torch.manual_seed(6)
    bank = LoRABank(5, 3, rank=2, num_domains=3, domain_bias=True)
    randomize(bank)
    x, domain = torch.randn(9, 5), torch.tensor([0, 1, 2] * 3)
    before = bank.delta(x, AdapterRouting(domain))
    bank.extend(1)
    assert bank.num_domains == 4 and bank.B[3].abs().sum() == 0 and bank.bias[3].abs().sum() == 0
    assert torch.equal(bank.delta(x, AdapterRouting(domain)), before)
    staged = bank.stage(3)
    assert [p.shape[0] for p in staged] == [1, 1, 1] and not bank.A.requires_grad
    mixed = torch.tensor([0, 3, 1, 3, 2, 3, 0, 1, 2])
    for loop_max in (0, L.LOOP_MAX):
        out = bank.delta(x, AdapterRouting(mixed), loop_max=loop_max)
        assert torch.equal(
            out[mixed < 3], bank.delta(x[mixed < 3], AdapterRouting(mixed[mixed < 3]), loop_max=loop_max)
        )
    bank.delta(x, AdapterRouting(mixed)).sum().backward()
    assert all(p.grad is not None for p in staged) and bank.A.grad is None
    bank.merge()
    assert bank.A_new is None and bank.A.shape[0] == 4 and bank.A.requires_grad
    assert torch.equal(bank.delta(x, AdapterRouting(domain)), before)
