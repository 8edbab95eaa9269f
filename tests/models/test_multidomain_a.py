"""Multi-domain baselines: Shared-Bottom, MMoE, PLE, Cross-Stitch, MuLANN, HMoE, AITM.

Tests that fail on the usual porting mistakes: a domain's tower or gate learning from other domains' rows,
absent domains' parameters being run, gates that do not sum to one, PLE levels wired differently from the
paper, a gradient-reversal layer that does not reverse, HMoE without its stop-gradient, AITM chains that
run past a row's own position.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import make_batch, make_schema, perturb

from polyrec import ConfigError, create_model
from polyrec.data.batch import Batch
from polyrec.data.schema import DatasetSchema
from polyrec.layers.bank import MLPBank
from polyrec.layers.domain import DomainSegments
from polyrec.layers.experts import (
    CrossStitchUnit,
    DomainGate,
    ExtractionLayer,
    GradientReversal,
    grad_reverse,
)

D = 3
MODELS = ["shared_bottom", "mmoe", "ple", "cross_stitch", "mulann", "hmoe", "aitm"]


def schema_of(num_domains: int = D) -> DatasetSchema:
    return make_schema(num_domains, sparse=(("user", 40), ("item", 30)), multi=(("tags", 10, 3),))


def batch_of(n: int = 30, seed: int = 0, domains=None, num_domains: int = D) -> Batch:
    return make_batch(schema_of(num_domains), n, seed, domains=domains, every_domain=True, padding=0.0)


def build(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model(name, schema_of(), **overrides)


def inputs(model, batch: Batch) -> torch.Tensor:
    return torch.cat([model.embeddings(batch).flatten(1), batch.dense], dim=1)


def per_domain_params(model, name: str):
    """(label, parameter) of every per-domain bank whose domains must be isolated; each is domain-major, so
    ``p.view(D, -1)[d]`` is domain d's part."""
    out = [(f"towers.{n}", p) for n, p in model.towers.named_parameters()]
    if name == "mmoe":
        out += [(f"gates.{n}", p) for n, p in model.gates.named_parameters()]
    if name == "ple":
        last = model.levels[-1]
        out += [(f"levels[-1].gates.{n}", p) for n, p in last.gates.named_parameters()]
        # [D*k, ...]: domain d owns experts d*k .. d*k+k-1
        out += [(f"levels[-1].specific.{n}", p) for n, p in last.specific.named_parameters()]
    return out


# --------------------------------------------------------------------------------------------------------
# Per-domain isolation (Shared-Bottom, MMoE, PLE)
# --------------------------------------------------------------------------------------------------------

ISOLATED = [
    ("shared_bottom", {}),
    ("mmoe", {}),
    ("ple", {"num_levels": 1}),
    ("ple", {"num_levels": 2}),
    ("ple", {"num_levels": 3}),
]


@pytest.mark.parametrize("name,overrides", ISOLATED, ids=lambda v: str(v))
def test_domain_towers_and_gates_get_no_gradient_from_other_domains_rows(name, overrides) -> None:
    model = perturb(build(name, **overrides))
    batch = batch_of(36, seed=1)
    logits = model(batch).logits
    own = batch.domain == 0
    F.binary_cross_entropy_with_logits(logits[own], batch.label[own]).backward()
    checked = 0
    for label, p in per_domain_params(model, name):
        grad = p.grad.view(D, -1)
        assert torch.count_nonzero(grad[1:]) == 0, f"{name}: {label} of domains 1-2 learnt from domain-0 rows"
        assert torch.count_nonzero(grad[0]) > 0, f"{name}: {label} of domain 0 got no gradient from its rows"
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name,overrides", ISOLATED[:3], ids=lambda v: str(v))
def test_absent_domains_parameters_are_never_used(name, overrides) -> None:
    # NaN in domain 2's tower (and gate/experts) must not reach the logits or the gradients of a batch
    # without domain 2: those parameters are not run at all (a run-every-tower-then-mask port fails here).
    model = perturb(build(name, **overrides))
    with torch.no_grad():
        for _, p in per_domain_params(model, name):
            p.view(D, -1)[2].fill_(float("nan"))
    batch = batch_of(20, seed=2, domains=[0, 1] * 10)
    logits = model(batch).logits
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {n}"


# --------------------------------------------------------------------------------------------------------
# Gates and experts
# --------------------------------------------------------------------------------------------------------


def test_mmoe_gate_weights_are_a_distribution_per_row_and_depend_on_the_domain() -> None:
    model = perturb(build("mmoe", num_experts=5))
    batch = batch_of(24, seed=3)
    w = model.gate_weights(batch)
    assert w.shape == (24, 5)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(24))
    # The same row scored as another domain uses that domain's gate.
    other = Batch(batch.sparse, batch.dense, batch.label, (batch.domain + 1) % D, batch.multi)
    assert not torch.allclose(w, model.gate_weights(other))


def test_domain_gate_rows_sum_to_one_and_forward_all_agrees_with_own_domain() -> None:
    torch.manual_seed(0)
    gate = perturb(DomainGate(6, 4, D))
    x = torch.randn(10, 6)
    domain = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 0])
    seg = DomainSegments.from_domain(domain)
    own = seg.unsort(gate(seg.sort(x), seg))
    torch.testing.assert_close(own.sum(-1), torch.ones(10))
    every = gate.forward_all(x)  # [D, B, E]
    torch.testing.assert_close(every[domain, torch.arange(10)], own)


def test_ple_cgc_without_specific_experts_is_mmoe() -> None:
    common = dict(expert_units=(16, 8), tower_units=(4,))
    mmoe = perturb(build("mmoe", num_experts=3, **common))
    ple = build("ple", seed=5, num_levels=1, num_specific_experts=0, num_shared_experts=3, **common)
    ple.embeddings.load_state_dict(mmoe.embeddings.state_dict())
    ple.levels[0].shared.load_state_dict(mmoe.experts.state_dict())
    ple.levels[0].gates.load_state_dict(mmoe.gates.state_dict())
    ple.towers.load_state_dict(mmoe.towers.state_dict())
    batch = batch_of(30, seed=4)
    torch.testing.assert_close(ple(batch).logits, mmoe(batch).logits, rtol=1e-6, atol=1e-6)


def _mlp_member(bank: MLPBank, j: int, x: torch.Tensor) -> torch.Tensor:
    for layer in bank.hidden:
        x = torch.relu(x @ layer.weight[j] + layer.bias[j])
    return x


def reference_ple(model, batch: Batch) -> torch.Tensor:
    """PLE written row by row from the paper (§4.3), with every domain's path computed for every row."""
    z = inputs(model, batch)
    logits = []
    for b in range(len(batch)):
        p = int(batch.domain[b])
        shared, dom = z[b], [z[b]] * D
        for level in model.levels:
            k, S = level.num_specific, level.num_shared
            spec = [[_mlp_member(level.specific, q * k + j, dom[q]) for j in range(k)] for q in range(D)]
            sh = [_mlp_member(level.shared, j, shared) for j in range(S)]
            new_dom = []
            for q in range(D):
                g = torch.softmax(dom[q] @ level.gates.linear.weight[q] + level.gates.linear.bias[q], -1)
                new_dom.append(sum(g[i] * e for i, e in enumerate(spec[q] + sh)))
            if level.shared_gate is not None:
                g = torch.softmax(level.shared_gate.linear(shared), -1)
                everything = [e for q in range(D) for e in spec[q]] + sh
                shared = sum(g[i] * e for i, e in enumerate(everything))
            dom = new_dom
        h = dom[p]
        for layer in model.towers.hidden:
            h = torch.relu(h @ layer.weight[p] + layer.bias[p])
        logits.append(h @ model.towers.out.weight[p] + model.towers.out.bias[p])
    return torch.cat(logits)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ple_matches_a_row_by_row_implementation_of_the_paper(levels: int) -> None:
    model = perturb(build("ple", num_levels=levels, num_shared_experts=2, num_specific_experts=2, expert_units=(8,)))
    model.eval()
    batch = batch_of(12, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, reference_ple(model, batch), rtol=1e-5, atol=1e-5)


def test_ple_intermediate_shared_gate_reads_every_domains_specific_experts() -> None:
    # By PLE's definition, level 1's shared gate mixes every domain's specific experts: domain-0 rows
    # train domain-1's level-1 experts. At the last level they must not.
    model = perturb(build("ple", num_levels=2))
    batch = batch_of(30, seed=7, domains=[0] * 30)
    model(batch).logits.sum().backward()
    first = model.levels[0].specific.hidden[0].weight.grad.view(D, -1)
    last = model.levels[1].specific.hidden[0].weight.grad.view(D, -1)
    assert torch.count_nonzero(first[1]) > 0
    assert torch.count_nonzero(last[1:]) == 0


def test_extraction_layer_rejects_own_domain_input_where_every_domain_is_needed() -> None:
    layer = ExtractionLayer(4, (4,), D, num_shared=1, num_specific=1, shared_gate=True)
    seg = DomainSegments.from_domain(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="every domain"):
        layer(torch.randn(3, 4), torch.randn(3, 4), seg)


# --------------------------------------------------------------------------------------------------------
# Cross-stitch
# --------------------------------------------------------------------------------------------------------


def reference_cross_stitch(model, batch: Batch) -> torch.Tensor:
    z = inputs(model, batch)
    cols = [z] * D
    for layer, stitch in zip(model.layers, model.stitches):
        h = [torch.relu(cols[d] @ layer.weight[d] + layer.bias[d]) for d in range(D)]
        cols = [sum(stitch.alpha[d, e] * h[e] for e in range(D)) for d in range(D)]
    out = torch.stack([cols[d] @ model.out.weight[d] + model.out.bias[d] for d in range(D)])  # [D, B, 1]
    return out[batch.domain, torch.arange(len(batch)), 0]


def test_cross_stitch_matches_the_papers_all_columns_definition() -> None:
    model = perturb(build("cross_stitch", hidden_units=(16, 8, 4)), scale=0.2)
    model.eval()
    batch = batch_of(24, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, reference_cross_stitch(model, batch), rtol=1e-5, atol=1e-5)


def test_cross_stitch_with_identity_units_is_independent_domain_networks() -> None:
    model = perturb(build("cross_stitch", hidden_units=(8, 4)), scale=0.2)
    with torch.no_grad():
        for s in model.stitches:
            s.alpha.copy_(torch.eye(D))
    batch = batch_of(24, seed=9)
    own = batch.domain == 1
    model(batch).logits[own].sum().backward()
    for layer in model.layers:
        g = layer.weight.grad
        assert torch.count_nonzero(g[[0, 2]]) == 0 and torch.count_nonzero(g[1]) > 0


def test_cross_stitch_unit_initialisation_and_row_selection() -> None:
    unit = CrossStitchUnit(4, self_weight=0.7)
    torch.testing.assert_close(unit.alpha.sum(1), torch.ones(4))
    assert torch.allclose(unit.alpha.diagonal(), torch.full((4,), 0.7))
    h = torch.randn(4, 5, 3)
    col = torch.tensor([3, 0, 1, 1, 2])
    torch.testing.assert_close(unit.forward_rows(h, col), unit(h)[col, torch.arange(5)])


# --------------------------------------------------------------------------------------------------------
# Gradient reversal and MuLANN
# --------------------------------------------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_flips_the_gradient() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)
    x.grad = None
    (GradientReversal(2.0)(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, -2.0 * w)


def test_mulann_adversarial_loss_reaches_the_extractor_with_reversed_sign() -> None:
    model = perturb(build("mulann", adversarial_weight=0.3), scale=0.1)
    batch = batch_of(30, seed=10)
    out = model(batch)
    assert set(out.aux_losses) == {"domain_adversarial"}
    adv = out.aux_losses["domain_adversarial"]
    extractor = list(model.extractor.parameters())
    disc = list(model.discriminator.parameters())
    g_rev = torch.autograd.grad(adv, extractor + disc)
    # The same loss without the reversal layer.
    plain = F.cross_entropy(model.discriminator(model.features(batch)), batch.domain) * 0.3
    torch.testing.assert_close(adv, plain)
    g_plain = torch.autograd.grad(plain, extractor + disc)
    n = len(extractor)
    for a, b in zip(g_rev[:n], g_plain[:n]):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, -b)
    for a, b in zip(g_rev[n:], g_plain[n:]):  # the discriminator itself is trained normally
        torch.testing.assert_close(a, b)


def test_mulann_shared_head_variant_and_zero_weight() -> None:
    model = build("mulann", domain_heads=False, adversarial_weight=0.0)
    out = model(batch_of(12, seed=11))
    assert out.logits.shape == (12,) and out.aux_losses["domain_adversarial"].item() == 0.0


# --------------------------------------------------------------------------------------------------------
# HMoE
# --------------------------------------------------------------------------------------------------------


def test_hmoe_other_domains_scores_are_used_but_not_trained_by_a_rows_loss() -> None:
    model = perturb(build("hmoe", expert_units=(16,), tower_units=(8,)), scale=0.2)
    batch = batch_of(30, seed=12)
    own = batch.domain == 0
    logits = model(batch).logits
    logits[own].sum().backward()
    for layer in [*model.towers.hidden, model.towers.out]:
        g = layer.weight.grad
        assert torch.count_nonzero(g[1:]) == 0, "stop-gradient: domain-0 rows trained other domains' towers"
        assert torch.count_nonzero(g[0]) > 0
    assert torch.count_nonzero(model.gates.linear.weight.grad[1:]) == 0
    assert torch.count_nonzero(model.label_gates.linear.weight.grad[1:]) == 0
    # ...yet domain 1's tower is part of domain-0 rows' prediction (label-space mixture).
    with torch.no_grad():
        before = model(batch).logits
        model.towers.out.bias[1] += 1.0
        after = model(batch).logits
    assert (before[own] - after[own]).abs().min() > 0
    # Without the stop-gradient, other towers do learn from domain-0 rows.
    free = perturb(build("hmoe", stop_gradient=False, expert_units=(16,), tower_units=(8,)), scale=0.2)
    free(batch).logits[own].sum().backward()
    assert torch.count_nonzero(free.towers.out.weight.grad[1]) > 0


# --------------------------------------------------------------------------------------------------------
# AITM
# --------------------------------------------------------------------------------------------------------


def reference_aitm(model, batch: Batch) -> torch.Tensor:
    z = inputs(model, batch)
    out = []
    for b in range(len(batch)):
        pos = int(model.position_of[batch.domain[b]])
        x = z[b : b + 1]
        zt = None
        for t in range(pos + 1):
            p = model.towers.forward_member(x, t)
            if t == 0:
                zt = p
            else:
                q = torch.relu(model.transfer.forward_member(zt, t - 1))
                zt = model._ait(p, q, t - 1)
        out.append(model.heads.forward_member(zt, pos))
    return torch.cat(out).squeeze(-1)


@pytest.mark.parametrize("domains", [None, [2, 0, 2, 2, 0, 0, 2], [2, 2, 2], [1, 0, 1]])
@pytest.mark.parametrize("order", [(), ("d2", "d0", "d1")])
def test_aitm_matches_a_row_by_row_chain(domains, order) -> None:
    model = perturb(build("aitm", tower_units=(16, 8), domain_order=order), scale=0.2)
    model.eval()
    batch = batch_of(18, seed=13, domains=domains)
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, reference_aitm(model, batch), rtol=1e-5, atol=1e-5)


def test_aitm_row_depends_on_towers_up_to_its_position_only() -> None:
    model = perturb(build("aitm", tower_units=(16, 8)), scale=0.2)
    model.eval()
    batch = batch_of(30, seed=14)
    with torch.no_grad():
        before = model(batch).logits
        model.towers.hidden[0].bias[1] += 1.0  # the tower at position 1
        after = model(batch).logits
    changed = (before - after).abs() > 0
    assert not changed[batch.domain == 0].any()
    assert changed[batch.domain == 1].all() and changed[batch.domain == 2].all()


def test_aitm_rejects_a_bad_domain_order() -> None:
    with pytest.raises(ConfigError, match="domain_order"):
        build("aitm", domain_order=("d0", "d1"))
    with pytest.raises(ConfigError, match="domain_order"):
        build("aitm", domain_order=("d0", "d1", "d1"))


# --------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_config_rejects_unknown_keys(name: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        create_model(name, schema_of(), bogus=1)


@pytest.mark.parametrize(
    "name,bad",
    [
        ("mmoe", {"num_experts": 0}),
        ("hmoe", {"num_experts": 0}),
        ("ple", {"num_levels": 0}),
        ("ple", {"num_shared_experts": 0, "num_specific_experts": 0}),
        ("cross_stitch", {"hidden_units": ()}),
        ("mulann", {"adversarial_weight": -1.0}),
        ("aitm", {"tower_units": ()}),
    ],
)
def test_config_rejects_bad_values(name: str, bad: dict) -> None:
    with pytest.raises(ConfigError, match=name):
        create_model(name, schema_of(), **bad)


@pytest.mark.parametrize("name", MODELS)
def test_aux_network_adds_a_domain_logit(name: str) -> None:
    model = build(name, aux_network=True)
    batch = batch_of(12, seed=15)
    assert model.aux is not None
    base = model(batch).logits
    with torch.no_grad():
        model.aux.mlp.net[-1].bias += 1.0
    torch.testing.assert_close(model(batch).logits, base + 1.0)


def test_single_domain_schema() -> None:
    schema = schema_of(1)
    batch = batch_of(8, seed=16, domains=[0] * 8, num_domains=1)
    for name in MODELS:
        torch.manual_seed(0)
        out = create_model(name, schema)(batch)
        assert out.logits.shape == (8,) and torch.isfinite(out.logits).all(), name
