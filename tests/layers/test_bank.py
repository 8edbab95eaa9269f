"""Banks (polyrec.layers.bank): the numbers every registered model computes, and the bank contract.

The first part recomputes every case of ``bank_reference.json`` (written by ``bank_reference.py`` from the
code before the expert, tower and gate banks were merged into :class:`MLPBank` / :class:`LinearBank`) and
compares it bit for bit: initial state, gradients, train and eval logits. The banks of HiNet, M3oE, M2M and
SAR-Net that were ``ParallelMLP`` / ``DomainExpertBank`` have new parameter names (``hidden.<i>.weight``
for ``weights.<i>``); the comparison maps them, and state dicts saved with the old names still load.

The second part checks the bank contract: dense application equals K independent MLPs, routing sends each
row through its own member(s) only (absent members get exactly zero gradient), both orders compute the
same function, shapes, and errors that name the bad argument.
"""

from __future__ import annotations

import json

import bank_reference as ref
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from polyrec.layers.bank import LinearBank, MLPBank, linear_init_
from polyrec.layers.domain import DomainSegments

REFERENCE = json.loads(ref.REFERENCE.read_text())
SAME_MACHINE = REFERENCE["environment"] == ref.environment()
BIT_FOR_BIT = pytest.mark.skipif(
    not SAME_MACHINE,
    reason=f"the reference was written with {REFERENCE['environment']}; this is {ref.environment()}: matmul "
    "rounding may differ (compared within rounding instead)",
)
CASES = {case.id: case for case in ref.cases()}


def former_names(model: nn.Module) -> dict[str, str]:
    """Today's parameter name -> its name in the reference, for the banks that were renamed."""
    names = {}
    for path, m in model.named_modules():
        if isinstance(m, MLPBank) and m.order == "rows":  # the former ParallelMLP / DomainExpertBank
            names.update({f"{path}.{new}": f"{path}.{old}" for new, old in m.legacy_names().items()})
    return names


def renames_reorder(model: nn.Module) -> bool:
    """Whether a renamed bank also lists its parameters in another order (it has two layers or more: the
    former banks listed every layer's weight before any bias)."""
    return any(isinstance(m, MLPBank) and m.order == "rows" and len(m.hidden) > 1 for m in model.modules())


def renamed(model: nn.Module, key: str) -> str:
    """The state key today of ``key``, a key saved with the former bank names (under any prefix, and as a
    MAMDR offset ``specific.<name with __>``)."""
    for path, m in model.named_modules():
        if isinstance(m, MLPBank):
            for new, old in m.legacy_names().items():
                if key == f"{path}.{old}":
                    return f"{path}.{new}"
                if key == "specific." + f"{path}.{old}".split(".", 1)[1].replace(".", "__"):  # under model.
                    return "specific." + f"{path}.{new}".split(".", 1)[1].replace(".", "__")
    return key


@pytest.fixture(scope="module")
def current() -> dict[str, tuple[dict, dict[str, str], bool]]:
    """Every case recomputed by today's code: (record, former names, whether the parameter order moved)."""
    schemas = ref.schemas()
    out = {}
    with ref.single_thread():
        for cid, case in CASES.items():
            model = ref.build(case, schemas[case.schema])
            names, reordered = former_names(model), renames_reorder(model)
            out[cid] = (ref.record(model, *ref.batches(schemas[case.schema])), names, reordered)
    return out


def test_the_reference_covers_every_registered_model_and_every_case() -> None:
    import polyrec

    assert set(REFERENCE["cases"]) == set(CASES)
    assert {c.model for c in CASES.values()} == set(polyrec.list_models("ctr")) | set(
        polyrec.list_models("multidomain")
    )


@pytest.mark.parametrize("cid", sorted(CASES))
def test_parameter_and_state_names_are_kept_or_mapped(cid: str, current) -> None:
    rec, names, reordered = current[cid]
    expected = REFERENCE["cases"][cid]
    assert sorted(names.get(k, k) for k in rec["state"]) == sorted(expected["state"])
    params = [names.get(n, n) for n in rec["parameters"]]
    if reordered:  # documented: a two-layer former ParallelMLP now lists weight, bias layer by layer
        assert sorted(params) == sorted(expected["parameters"])
    else:
        assert params == expected["parameters"]


@BIT_FOR_BIT
@pytest.mark.parametrize("cid", sorted(CASES))
def test_every_model_reproduces_the_reference_bit_for_bit(cid: str, current) -> None:
    rec, names, _ = current[cid]
    expected = REFERENCE["cases"][cid]
    changed = [k for k, v in rec["state"].items() if expected["state"][names.get(k, k)] != v]
    assert not changed, f"{cid}: initial values changed: {changed}"
    changed = [n for n, v in rec["grads"].items() if expected["grads"][names.get(n, n)] != v]
    assert not changed, f"{cid}: gradients changed: {changed}"
    for key in ("train_logits", "aux_losses", "train_logits_after_step", "eval_logits", "eval_single_logits"):
        assert rec[key] == expected[key], f"{cid}: {key} changed"


@pytest.mark.parametrize("cid", sorted(CASES))
def test_every_model_reproduces_the_reference_within_rounding(cid: str, current) -> None:
    rec, _, _ = current[cid]
    got, want = torch.tensor(rec["eval_logits_values"]), torch.tensor(REFERENCE["cases"][cid]["eval_logits_values"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", sorted(ref.LEGACY))
def test_a_state_dict_saved_with_the_former_bank_names_loads_and_reproduces_its_logits(key: str) -> None:
    tensors = load_file(str(ref.LEGACY_STATE))
    saved = {k[len(key) + 1 :]: v for k, v in tensors.items() if k.startswith(key + "/")}
    assert any(".weights.0" in k or "__weights__0" in k for k in saved)  # the file really has the old names
    model = ref.legacy_model(key)
    model.load_state_dict(saved)  # strict
    with ref.single_thread():
        logits = ref.legacy_logits(model)
    if SAME_MACHINE:
        assert ref.digest(logits) == REFERENCE["legacy"][key]["eval_logits"]
    now = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(now[renamed(model, k)].flatten(), v.flatten()), k


def test_the_legacy_specific_offsets_of_the_mamdr_wrapper_are_mapped() -> None:
    tensors = load_file(str(ref.LEGACY_STATE))
    saved = {k[len("sarnet+specific/") :]: v for k, v in tensors.items() if k.startswith("sarnet+specific/")}
    model = ref.legacy_model("sarnet+specific")
    model.load_state_dict(saved)
    old = saved["specific.specific__weights__0"]  # [D, D, k, D_in, D_out]
    assert torch.equal(model.specific["specific__hidden__0__weight"], old.reshape(old.shape[0], -1, *old.shape[3:]))


# --------------------------------------------------------------------------------------------------------
# The bank contract
# --------------------------------------------------------------------------------------------------------


def _member_mlp(bank: MLPBank, j: int, x: torch.Tensor) -> torch.Tensor:
    """Member ``j`` of ``bank`` as a plain MLP."""
    for layer, hidden in bank._layers():
        x = x @ layer.weight[j] + layer.bias[j]
        if hidden:
            x = torch.relu(x)
    return x


def _perturbed(bank: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return bank


def test_linear_init_is_nn_linears_uniform_per_member() -> None:
    torch.manual_seed(0)
    bank = LinearBank(16, 8, num=3)
    bound = 1 / 16**0.5
    assert bank.weight.shape == (3, 16, 8) and bank.bias.shape == (3, 8)
    assert bank.weight.abs().max() <= bound and bank.bias.abs().max() <= bound
    assert bank.weight.abs().max() > 0.9 * bound
    # The weight is drawn before the bias, in row-major order: the draw of one [3, 16, 8] tensor then [3, 8].
    torch.manual_seed(0)
    w = torch.empty(3, 16, 8).uniform_(-bound, bound)
    b = torch.empty(3, 8).uniform_(-bound, bound)
    assert torch.equal(bank.weight, w) and torch.equal(bank.bias, b)


@pytest.mark.parametrize("order", ["members", "rows"])
def test_dense_application_is_k_independent_mlps(order: str) -> None:
    torch.manual_seed(0)
    bank = MLPBank(5, (7, 3), num=4, output_dim=2, order=order)
    x = torch.randn(9, 5)
    out = bank(x)
    assert out.shape == (4, 9, 2)
    for j in range(4):
        torch.testing.assert_close(out[j], _member_mlp(bank, j, x))
        torch.testing.assert_close(bank.forward_member(x, j), out[j])


def test_grouped_input_is_read_by_its_members() -> None:
    torch.manual_seed(0)
    bank = MLPBank(5, (7, 3), num=4)
    xg = torch.randn(2, 9, 5)  # members 0, 1 read xg[0]; members 2, 3 read xg[1]
    out = bank(xg)
    for j in range(4):
        torch.testing.assert_close(out[j], _member_mlp(bank, j, xg[j // 2]))


def test_both_orders_compute_the_same_function_and_differ_only_in_the_order_of_draws() -> None:
    torch.manual_seed(3)
    members = MLPBank(6, (5, 4), num=3, output_dim=2)
    torch.manual_seed(3)
    rows = MLPBank(6, (5, 4), num=3, output_dim=2, order="rows")
    # "members" draws w0 b0 w1 b1 w2 b2, "rows" w0 w1 w2 b0 b1 b2: the same first draw, then not.
    assert torch.equal(members.hidden[0].weight, rows.hidden[0].weight)
    assert not torch.equal(members.hidden[0].bias, rows.hidden[0].bias)
    rows.load_state_dict(members.state_dict())
    x = torch.randn(11, 6)
    torch.testing.assert_close(rows(x), members(x))
    seg = DomainSegments.from_domain(torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]))
    torch.testing.assert_close(rows(x, seg), members(x, seg))


@pytest.mark.parametrize("order", ["members", "rows"])
@pytest.mark.parametrize("num_domains,n", [(4, 30), (1, 6), (24, 200)])  # loop; one segment; padded (> 16)
def test_routing_sends_each_row_through_its_own_member_and_absent_members_get_zero_grad(order, num_domains, n):
    torch.manual_seed(0)
    bank = _perturbed(MLPBank(5, (7,), num=num_domains, output_dim=2, order=order))
    domain = torch.randint(0, num_domains, (n,))
    if num_domains > 1:
        domain[domain == num_domains - 1] = 0  # the last domain is absent
    x = torch.randn(n, 5)
    seg = DomainSegments.from_domain(domain)
    out = seg.unsort(bank(seg.sort(x), seg))
    assert out.shape == (n, 2)
    expected = torch.stack([_member_mlp(bank, d, x[i]) for i, d in enumerate(domain.tolist())])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    present = set(domain.tolist())
    for p in bank.parameters():
        for d in range(num_domains):
            if d in present:
                assert p.grad[d].abs().sum() > 0
            else:
                assert torch.equal(p.grad[d], torch.zeros_like(p.grad[d]))


@pytest.mark.parametrize("order", ["members", "rows"])
def test_route_experts_runs_a_row_through_its_domains_k_members_only(order: str) -> None:
    torch.manual_seed(0)
    D, k = 4, 3
    bank = _perturbed(MLPBank(6, (5, 3), num=D * k, order=order))
    domain = torch.tensor([0, 2, 2, 3, 0, 3, 3, 0])  # domain 1 absent
    seg = DomainSegments.from_domain(domain)
    x = seg.sort(torch.randn(8, 6))
    out = bank.route_experts(x, seg, per_domain=k)
    assert out.shape == (k, 8, 3)
    for i in range(8):
        d = int(seg.sorted_domain[i])
        for j in range(k):
            torch.testing.assert_close(out[j, i], _member_mlp(bank, d * k + j, x[i]))
    out.sum().backward()
    grad = bank.hidden[0].weight.grad.view(D, k, -1)
    assert torch.equal(grad[1], torch.zeros_like(grad[1])) and grad[0].abs().sum() > 0


def test_linear_bank_dense_member_and_routed_agree() -> None:
    torch.manual_seed(0)
    bank = _perturbed(LinearBank(4, 3, num=5))
    x = torch.randn(7, 4)
    dense = bank(x)
    assert dense.shape == (5, 7, 3)
    assert bank(torch.randn(5, 7, 4)).shape == (5, 7, 3)
    for j in range(5):
        torch.testing.assert_close(dense[j], x @ bank.weight[j] + bank.bias[j])
        torch.testing.assert_close(bank.forward_member(x, j), dense[j])
    domain = torch.tensor([4, 0, 4, 2, 2, 0, 1])
    seg = DomainSegments.from_domain(domain)
    routed = seg.unsort(bank(seg.sort(x), seg))
    torch.testing.assert_close(routed, dense[domain, torch.arange(7)])
    # Members d*per_domain + member: with per_domain=1 the same as above; a bank of 2 domains x 2 members:
    pair = LinearBank(4, 3, num=4)
    seg2 = DomainSegments.from_domain(torch.tensor([0, 1, 1]))
    x2 = torch.randn(3, 4)
    torch.testing.assert_close(
        pair.route_member(x2, seg2, per_domain=2, member=1), pair(x2)[[1, 3, 3], torch.arange(3)]
    )


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LinearBank(0, 3, 2), "in_dim"),
        (lambda: LinearBank(4, 0, 2), "out_dim"),
        (lambda: LinearBank(4, 3, 0), "num"),
        (lambda: MLPBank(4, (3,), num=0), "num"),
        (lambda: MLPBank(4, (), num=2), "hidden_units"),
        (lambda: MLPBank(4, (3,), num=2, dropout=1.0), "dropout"),
        (lambda: MLPBank(4, (3,), num=2, order="experts"), "order"),
        (lambda: MLPBank(4, (3,), num=2, activation="swish"), "activation"),
        (lambda: linear_init_(torch.empty(3), 0), "fan_in"),
    ],
)
def test_bad_construction_names_the_argument(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_application_names_the_argument() -> None:
    bank = MLPBank(4, (3,), num=4)
    seg = DomainSegments.from_domain(torch.tensor([0, 1]))
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="per_domain"):
        bank.route_experts(x, seg, per_domain=3)
    with pytest.raises(ValueError, match="per_domain"):
        bank.route_experts(x, seg, per_domain=0)
    with pytest.raises(ValueError, match="member"):
        bank.hidden[0].route_member(x, seg, per_domain=2, member=2)
    with pytest.raises(IndexError, match="index"):
        bank.forward_member(x, 4)
    with pytest.raises(ValueError, match="input groups"):
        bank(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="x must be"):
        bank.hidden[0](torch.randn(2, 2, 2, 4))
    with pytest.raises(ValueError, match="x must be"):
        MLPBank(4, (3,), num=4, order="rows")(torch.randn(4, 2, 4))


def test_former_names_and_shapes_load_into_a_bank() -> None:
    torch.manual_seed(0)
    D, k = 3, 2
    bank = MLPBank(4, (5, 3), num=D * k, order="rows")
    old = {
        "weights.0": torch.randn(D, k, 4, 5),
        "weights.1": torch.randn(D, k, 5, 3),
        "biases.0": torch.randn(D, k, 5),
        "biases.1": torch.randn(D, k, 3),
    }  # DomainExpertBank's layout
    bank.load_state_dict(old)
    assert torch.equal(bank.hidden[1].weight, old["weights.1"].reshape(D * k, 5, 3))
    assert torch.equal(bank.hidden[0].bias, old["biases.0"].reshape(D * k, 5))
    assert set(bank.state_dict()) == {"hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias"}
    with pytest.raises(RuntimeError, match="size mismatch"):  # a wrong size is still an error, not a reshape
        bank.load_state_dict({**old, "weights.0": torch.randn(D, k, 4, 6)})
