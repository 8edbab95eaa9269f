"""DFEI: the domain-feature moving average (eq. 4), the attention over domains (eq. 5-6), the head (eq. 7)
and the routing of gradients, with tests that fail on the known defects (a moving average never written
back, towers trained by other domains' rows)."""

import copy

import pytest
import torch
from builders import make_batch, make_schema
from torch import nn

from polyrec import ConfigError, create_model
from polyrec.layers.domain import DomainSegments

D = 3


def schema_of():
    return make_schema(D, sparse=(("user", 50), ("item", 40)), multi=(("tags", 12, 3),))


def batch_of(n=60, seed=0, domains=None):
    return make_batch(schema_of(), n, seed, domains=domains, padding=0.0)


def build(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"shared_units": (16, 8), "domain_units": (16, 8), "attention_dim": 8, **kw}
    return create_model("dfei", schema_of(), **kw)


def inputs(model, batch):
    emb = model.embeddings(batch)
    return torch.cat([emb.flatten(1), batch.dense], dim=1)


@torch.no_grad()
def tower_means(model, batch):
    """Mean of f_d(e) over the batch's rows of each domain present, computed directly."""
    x = inputs(model, batch)
    out = {}
    for d in batch.domain.unique().tolist():
        xd = x[batch.domain == d]
        seg = DomainSegments.from_domain(torch.full((len(xd),), d))
        out[d] = model.domain_towers(xd, seg).mean(0)
    return out


def test_domain_feature_is_the_moving_average_of_present_domains_only():
    model = build(alpha=0.9)
    model.train()
    assert torch.equal(model.v, torch.zeros(D, 8))
    first = batch_of(40, seed=1, domains=[0, 2] * 20)
    means = tower_means(model, first)
    model(first)
    # v_d^0 = pooling(u_d^0) for the domains seen; domain 1 untouched.
    torch.testing.assert_close(model.v[0], means[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.v[2], means[2], rtol=0, atol=1e-6)
    assert torch.equal(model.v[1], torch.zeros(8))
    assert model.v_initialized.tolist() == [True, False, True]

    old = model.v.clone()
    second = batch_of(30, seed=2, domains=[0, 0, 1] * 10)
    means = tower_means(model, second)
    model(second)
    torch.testing.assert_close(model.v[0], 0.9 * old[0] + 0.1 * means[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.v[1], means[1], rtol=0, atol=1e-6)  # first batch of domain 1
    assert torch.equal(model.v[2], old[2])  # absent: unchanged
    assert not model.v.requires_grad

    old = model.v.clone()
    third = batch_of(30, seed=3, domains=[1, 2] * 15)
    means = tower_means(model, third)
    model(third)
    for d in (1, 2):
        torch.testing.assert_close(model.v[d], 0.9 * old[d] + 0.1 * means[d], rtol=0, atol=1e-6)
    assert torch.equal(model.v[0], old[0])


def test_domain_feature_is_not_updated_in_eval():
    model = build()
    model.train()
    model(batch_of(seed=1))
    before = model.v.clone()
    model.eval()
    model(batch_of(seed=2))
    with torch.no_grad():
        model(batch_of(seed=3))
    assert torch.equal(model.v, before)


def test_domain_feature_is_in_the_state_dict_and_restored():
    model = build()
    model.train()
    for s in range(3):
        model(batch_of(seed=s))
    state = model.state_dict()
    assert "v" in state and "v_initialized" in state
    fresh = build(seed=5)
    assert not torch.equal(fresh.v, model.v)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.v, model.v) and torch.equal(fresh.v_initialized, model.v_initialized)


def test_attention_weights_are_a_softmax_over_all_domains():
    model = build()
    model.train()
    model(batch_of(seed=1))  # give the domains distinct features
    model.eval()
    batch = batch_of(20, seed=4)
    with torch.no_grad():
        x = inputs(model, batch)
        z, w = model.attention(x, model.v, batch.domain)
        assert w.shape == (20, D)
        torch.testing.assert_close(w.sum(1), torch.ones(20))
        assert (w > 0).all()
        # eq. 6: softmax of <h2(e), h3(v_d)> / sqrt(k); eq. 5: z = sum_d w_d h1(v_d)
        scores = model.h2(x) @ model.h3(model.v).T / 8**0.5
        torch.testing.assert_close(w, torch.softmax(scores, 1))
        torch.testing.assert_close(z, w @ model.h1(model.v))


def test_eval_logit_is_eq_7_on_shared_domain_feature_and_integration():
    model = build(aux_network=True)
    model.train()
    model(batch_of(seed=1))
    model.eval()
    batch = batch_of(12, seed=5, domains=[2] * 12)
    with torch.no_grad():
        x = inputs(model, batch)
        seg = DomainSegments.from_domain(batch.domain)
        s = model.shared_tower(x)
        u = model.domain_towers(x, seg)
        v = model.v[2].expand(12, -1)
        z, _ = model.attention(x, model.v, batch.domain)
        expected = model.head(torch.cat([s, u, v, z], 1), seg).squeeze(-1) + model.aux(batch.domain)
        torch.testing.assert_close(model(batch).logits, expected)


def test_written_back_domain_feature_changes_inference():
    """The authors' code never writes the average back, so inference sees the initial v: not here."""
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for s in range(4):
        b = batch_of(seed=s)
        loss = nn.functional.binary_cross_entropy_with_logits(model(b).logits, b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    stale = copy.deepcopy(model)
    stale.v.zero_()
    stale.v_initialized.zero_()
    model.eval()
    stale.eval()
    batch = batch_of(30, seed=9)
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits, stale(batch).logits, atol=1e-4)


@pytest.mark.parametrize("mean_gradient", [True, False])
@pytest.mark.parametrize("warm", [False, True])
def test_domain_parameters_get_no_gradient_from_other_domains_rows(mean_gradient, warm):
    model = build(mean_gradient=mean_gradient, aux_network=True)
    model.train()
    if warm:
        model(batch_of(seed=1))
    batch = batch_of(60, seed=2, domains=[0, 1, 2] * 20)
    logits = model(batch).logits
    mask = batch.domain == 0
    nn.functional.binary_cross_entropy_with_logits(logits[mask], batch.label[mask]).backward()
    banks = [*model.domain_towers.hidden, *model.head.hidden, model.head.out]
    for layer in banks:
        for p in (layer.weight, layer.bias):
            assert p.grad[0].abs().sum() > 0
            assert torch.equal(p.grad[1:], torch.zeros_like(p.grad[1:]))
    emb = model.aux.embedding.weight.grad
    assert emb[0].abs().sum() > 0 and torch.equal(emb[1:], torch.zeros_like(emb[1:]))


def test_mean_term_carries_gradient_to_the_own_tower_only_if_asked():
    batch = batch_of(60, seed=2)
    grads = {}
    for flag in (True, False):
        model = build(mean_gradient=flag)
        model.train()
        out = model(batch).logits
        nn.functional.binary_cross_entropy_with_logits(out, batch.label).backward()
        grads[flag] = (out.detach(), model.domain_towers.hidden[0].weight.grad.clone())
    torch.testing.assert_close(grads[True][0], grads[False][0])  # same forward
    assert not torch.allclose(grads[True][1], grads[False][1])  # the mean term's gradient


def test_parameter_groups_split_every_parameter_once():
    model = build(aux_network=True)
    groups = model.parameter_groups()
    assert set(groups) == {"shared", "domain"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    domain = {id(p) for p in groups["domain"]}
    for p in [*model.domain_towers.parameters(), *model.head.parameters(), model.aux.embedding.weight]:
        assert id(p) in domain
    for m in (model.embeddings, model.shared_tower, model.h1, model.h2, model.h3, model.aux.mlp):
        assert all(id(p) not in domain for p in m.parameters())
    shared_head = build(domain_head=False)
    shared = {id(p) for p in shared_head.parameter_groups()["shared"]}
    assert all(id(p) in shared for p in shared_head.head.parameters())


def test_config_rejects_bad_alpha_and_attention_dim():
    with pytest.raises(ConfigError, match="alpha"):
        build(alpha=1.5)
    with pytest.raises(ConfigError, match="attention_dim"):
        build(attention_dim=0)
