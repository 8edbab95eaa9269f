"""The retrieval model contract, for every model tagged ``retrieval``, and ADI's equations one by one."""

from __future__ import annotations

import math

import pytest
import torch

import polyrec
from polyrec.config import ConfigError
from polyrec.layers.domain import DomainSegments
from polyrec.models import create_model, get_model_class
from polyrec.models.retrieval.base import RetrievalSchema
from polyrec.retrieval.inputs import ItemInputs, UserInputs
from polyrec.retrieval.layers import DomainInterestAdaptation, NormedBank

MODELS = polyrec.list_models("retrieval")
D = 3
SCHEMA = RetrievalSchema(
    domains=("a", "b", "c"),
    user_fields=(("user_id", 50), ("gender", 3), ("age", 8)),
    item_fields=(("item_id", 41), ("year", 10)),
    multi_field=("genres", 6),
    history_len=5,
    item_id_offset=1,
)
ADI_VARIANTS = [
    {},
    {"fusion": "sum"},
    {"fusion": "network_mul"},
    {"adaptation_placement": "network"},
    {"adaptation_placement": "global", "dsbn": False},
    {"adaptation": "none"},
    {"adaptation": "linear"},
    {"adaptation": "attention"},
    {"num_shared": 3},
]


def batch(n: int = 48, seed: int = 0, domain: int | None = None) -> tuple[UserInputs, ItemInputs]:
    g = torch.Generator().manual_seed(seed)
    dom = torch.full((n,), domain) if domain is not None else torch.arange(n) % D  # interleaved: mixed domains
    sparse = torch.stack([torch.randint(0, v, (n,), generator=g) for _, v in SCHEMA.user_fields], 1)
    history = torch.randint(0, 41, (n, SCHEMA.history_len), generator=g)
    history[0] = 0  # a user without history
    user = UserInputs(sparse, history, dom)
    isparse = torch.stack([torch.randint(1, 41, (n,), generator=g), torch.randint(0, 10, (n,), generator=g)], 1)
    item = ItemInputs(isparse, torch.randint(0, 6, (n, 3), generator=g), dom)
    return user, item


def build(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model(name, SCHEMA, **overrides)


CASES = [(m, {}) for m in MODELS] + [("adi", v) for v in ADI_VARIANTS[1:]]
IDS = [f"{m}{'-' + '-'.join(f'{k}={v}' for k, v in o.items()) if o else ''}" for m, o in CASES]


def test_the_family_is_registered() -> None:
    assert {"dnn", "dnn_single", "shared_bottom_tt", "cross_stitch_tt", "mmoe_tt", "ple_tt", "adi"} <= set(MODELS)
    assert {"adi_lt", "adi_va", "adi_se", "adi_se_max"} <= set(MODELS)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_shapes_finite_backward(name: str, overrides: dict) -> None:
    model = build(name, **overrides)
    user, item = batch()
    u, v = model.user_embedding(user), model.item_embedding(item)
    assert u.shape == v.shape == (48, model.config.output_dim)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    if model.config.normalize:
        assert torch.allclose(u.norm(dim=-1), torch.ones(48), atol=1e-5)
    (u @ v.T).logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_eval_row_independent_of_its_batch_and_of_the_batch_order(name: str, overrides: dict) -> None:
    model = build(name, **overrides)
    user, item = batch()
    model.train()
    for s in range(3):  # move the moving statistics off their initial values
        u2, i2 = batch(seed=s + 1)
        model.user_embedding(u2).sum().backward()
        model.item_embedding(i2).sum().backward()
    model.eval()
    with torch.no_grad():
        full_u, full_v = model.user_embedding(user), model.item_embedding(item)
        rows = torch.tensor([5, 0, 17])
        part_u, part_v = model.user_embedding(user.select(rows)), model.item_embedding(item.select(rows))
        perm = torch.randperm(48, generator=torch.Generator().manual_seed(3))
        perm_u = model.user_embedding(user.select(perm))
    torch.testing.assert_close(part_u, full_u[rows], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(part_v, full_v[rows], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(perm_u, full_u[perm], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_state_round_trip(name: str, overrides: dict) -> None:
    a, b = build(name, seed=0, **overrides), build(name, seed=1, **overrides)
    user, item = batch()
    a.train()
    a.user_embedding(user)  # moving statistics differ from b's
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a.score(user, item), b.score(user, item), atol=0, rtol=0)


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_mixed_batch_equals_its_domains_run_apart_in_eval(name: str, overrides: dict) -> None:
    model = build(name, **overrides).eval()
    user, item = batch()
    with torch.no_grad():
        mixed = model.score(user, item)
        for d in range(D):
            rows = torch.nonzero(user.domain == d).squeeze(1)
            torch.testing.assert_close(
                model.score(user.select(rows), item.select(rows)), mixed[rows], atol=1e-6, rtol=0
            )


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_the_domain_conditions_both_towers(name: str, overrides: dict) -> None:
    model = build(name, **overrides).eval()
    user, item = batch()
    with torch.no_grad():
        for tower, side in ((model.user_embedding, user), (model.item_embedding, item)):
            assert not torch.allclose(tower(side.with_domain(0)), tower(side.with_domain(1)))


@pytest.mark.parametrize("name", MODELS)
def test_a_domain_index_outside_the_schema_is_an_error(name: str) -> None:
    model = build(name)
    user, item = batch()
    with pytest.raises(ValueError, match=r"user\.domain holds index 3, outside the model's 3 domains"):
        model.user_embedding(user.with_domain(torch.full((48,), 3)))
    bad = ItemInputs(item.sparse[:, :1], item.multi, item.domain)
    with pytest.raises(ValueError, match=r"item\.sparse has shape \(48, 1\); the model's schema has 2 item fields"):
        model.item_embedding(bad)


@pytest.mark.parametrize("name", MODELS)
def test_config_checks_name_the_field(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^model\.output_dim: 0 is not allowed"):
        create_model(name, SCHEMA, output_dim=0)
    with pytest.raises(ConfigError, match=r"^model\.hidden_units: \[\] is not allowed"):
        create_model(name, SCHEMA, hidden_units=[])


def test_adi_config_refuses_network_placement_with_network_mul() -> None:
    with pytest.raises(ConfigError, match=r"adaptation_placement: 'network' is not allowed with model\.fusion"):
        create_model("adi", SCHEMA, fusion="network_mul", adaptation_placement="network")
    with pytest.raises(ConfigError, match=r"model\.fusion"):
        create_model("adi", SCHEMA, fusion="product")


def test_variants_are_their_papers_settings() -> None:
    cfg = {n: get_model_class(n).Config() for n in ("adi", "adi_se", "adi_lt", "adi_va", "adi_se_max")}
    assert cfg["adi"] == cfg["adi_se"].__class__.__mro__[1]() and cfg["adi"].adaptation == "se"
    assert cfg["adi"].fusion == "concat" and cfg["adi"].dsbn and cfg["adi"].adaptation_placement == "domain"
    assert cfg["adi_lt"].adaptation == "linear" and cfg["adi_va"].adaptation == "attention"
    assert cfg["adi_se_max"].num_shared == 3 and cfg["adi"].num_shared == 1


# ------------------------------------------------------------------------------------ routing (banks)
@pytest.mark.parametrize("name", ["dnn_single", "ple_tt", "adi", "shared_bottom_tt", "mmoe_tt"])
def test_a_domains_rows_train_only_its_own_domain_specific_parameters(name: str) -> None:
    model = build(name)
    user, item = batch(domain=1)
    model.score(user, item).sum().backward()
    tower = model.user_tower
    banks = [m for m in tower.modules() if hasattr(m, "weight") and getattr(m, "num", None) == D]
    assert banks, "the tower has per-domain banks"
    for bank in banks:
        g = bank.weight.grad
        if g is None:
            continue
        assert g[1].abs().sum() > 0
        assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0


def test_dnn_single_is_one_model_per_domain() -> None:
    model = build("dnn_single")
    user, item = batch(domain=2)
    model.score(user, item).sum().backward()
    table = model.user_emb.tables[0]  # [D * V, E]: domain d owns rows d*V .. d*V + V - 1
    V = SCHEMA.user_fields[0][1]
    rows_with_grad = torch.nonzero(table.weight.grad.abs().sum(1)).squeeze(1)
    assert len(rows_with_grad) and bool(((rows_with_grad >= 2 * V) & (rows_with_grad < 3 * V)).all())


# ------------------------------------------------------------------------------------ ADI's equations
def _adi_tower(**overrides):
    return build("adi", **overrides).user_tower


def test_eq8_the_shared_gate_is_a_linear_normalisation() -> None:
    tower = _adi_tower(num_shared=3)
    with torch.no_grad():
        tower.gate_weight.normal_()
        tower.gate_bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    f = torch.randn(4, 16)
    a = f @ tower.gate_weight + tower.gate_bias
    torch.testing.assert_close(tower.shared_gate(f), a / a.sum(-1, keepdim=True))
    assert torch.allclose(tower.shared_gate(f).sum(-1), torch.ones(4))
    # Not a softmax: scaling W and b scales nothing.
    with torch.no_grad():
        tower.gate_weight.mul_(5), tower.gate_bias.mul_(5)
    torch.testing.assert_close(tower.shared_gate(f), a / a.sum(-1, keepdim=True))
    fresh = _adi_tower(num_shared=4)
    torch.testing.assert_close(fresh.shared_gate(f), torch.full((4, 4), 0.25))


def _pieces(tower, fields, f_dom, domain):
    """E_spec, E_shared (eq. 9-10) of a tower on rows of one domain, recomputed from the parts."""
    seg = DomainSegments.from_domain(domain)
    x = tower.dial(fields, domain).flatten(1) if tower.dial is not None else fields.flatten(1)
    shared = tower.shared.dense(x, domain)
    e_shared = torch.einsum("bk,kbh->bh", tower.shared_gate(f_dom), shared)
    return tower.specific.routed(x, seg), e_shared, seg


def test_eq11_to_13_concat_fusion_and_eq18_forward_network() -> None:
    tower = _adi_tower().eval()
    fields, f_dom = torch.randn(6, tower.num_fields, 16), torch.randn(6, 16)
    domain = torch.full((6,), 2)
    with torch.no_grad():
        e_spec, e_shared, _ = _pieces(tower, fields, f_dom, domain)
        b1 = torch.sigmoid(f_dom @ tower.beta_spec[2])
        b2 = torch.sigmoid(f_dom @ tower.beta_shared[2])
        fused = torch.cat([b1 * e_spec, (b1 * e_spec) * (b2 * e_shared), b2 * e_shared], 1)
        expected = fused @ tower.forward_net.weight[2] + tower.forward_net.bias[2]
        torch.testing.assert_close(tower(fields, f_dom, domain), expected, atol=1e-6, rtol=1e-5)


def test_eq14_15_sum_fusion() -> None:
    tower = _adi_tower(fusion="sum").eval()
    fields, f_dom = torch.randn(6, tower.num_fields, 16), torch.randn(6, 16)
    domain = torch.full((6,), 0)
    with torch.no_grad():
        tower.sum_bias.fill_(0.3)
        e_spec, e_shared, _ = _pieces(tower, fields, f_dom, domain)
        alpha = torch.sigmoid(f_dom @ tower.sum_weight[0] + 0.3)
        expected = (alpha * e_spec + (1 - alpha) * e_shared) @ tower.forward_net.weight[0] + tower.forward_net.bias[0]
        torch.testing.assert_close(tower(fields, f_dom, domain), expected, atol=1e-6, rtol=1e-5)


def test_eq16_17_network_mul_is_the_star_fcn() -> None:
    tower = _adi_tower(fusion="network_mul", adaptation="none").eval()
    fields, f_dom = torch.randn(5, tower.num_fields, 16), torch.randn(5, 16)
    domain = torch.full((5,), 1)
    with torch.no_grad():
        for layer in tower.star:
            layer.domain_weight.normal_()
            layer.domain_bias.normal_()
        h = fields.flatten(1)
        for layer, norm in zip(tower.star, tower.star_norms):
            z = h @ (layer.weight * layer.domain_weight[1]) + layer.bias + layer.domain_bias[1]  # eq. 16
            z = (z - norm.running_mean[1]) / torch.sqrt(norm.running_var[1] + norm.eps)
            h = torch.relu(z * norm.domain_gamma[1] + norm.domain_beta[1])
        expected = h @ tower.forward_net.weight[1] + tower.forward_net.bias[1]
        torch.testing.assert_close(tower(fields, f_dom, domain), expected, atol=1e-5, rtol=1e-5)


def test_eq20_dsbn_keeps_statistics_and_affine_per_domain() -> None:
    bank = NormedBank(4, (3,), num=1, num_domains=2, domain_norm=True)
    norm = bank.norms[0]
    assert not norm.gamma.requires_grad and norm.domain_gamma.shape == (2, 3)  # α^(d), β^(d) only
    x = torch.randn(10, 4)
    domain = torch.tensor([0] * 4 + [1] * 6)
    bank.train()
    bank.dense(x, domain)
    z = bank.layers[0](x)[0].detach()
    for d, rows in ((0, slice(0, 4)), (1, slice(4, 10))):
        expected = 0.9 * torch.zeros(3) + 0.1 * z[rows].mean(0)
        torch.testing.assert_close(norm.running_mean[d], expected)
    # Each domain's rows are normalised with their own batch statistics (eq. 20).
    with torch.no_grad():
        out = bank.dense_layer(0, x, domain)[0]
        zn = (z[4:] - z[4:].mean(0)) / torch.sqrt(z[4:].var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(out[4:], torch.relu(zn), atol=1e-5, rtol=1e-4)
    plain = NormedBank(4, (3,), num=1, num_domains=2, domain_norm=False)
    assert plain.norms[0].running_mean.shape == (1, 3)


def test_eq22_linear_domain_transformation() -> None:
    layer = DomainInterestAdaptation("linear", 4, 5, num_blocks=3)
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
    f, block = torch.randn(6, 4, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(layer(f, block), layer.weight[block] * f + layer.bias[block])
    fresh = DomainInterestAdaptation("linear", 4, 5, num_blocks=3)
    torch.testing.assert_close(fresh(f, block), f)  # starts as the identity


def test_eq23_24_vanilla_domain_attention() -> None:
    layer = DomainInterestAdaptation("attention", 4, 5, num_blocks=2)
    f, block = torch.randn(3, 4, 5), torch.tensor([1, 0, 1])
    for b in range(3):
        for i in range(4):
            alpha = 1 / (1 + math.exp(-float(layer.query[block[b], i].detach() @ f[b, i])))
            torch.testing.assert_close(layer(f, block)[b, i], alpha * f[b, i])


@pytest.mark.parametrize("gate", ["sigmoid", "none"])
def test_eq25_26_se_block(gate: str) -> None:
    layer = DomainInterestAdaptation("se", 6, 4, num_blocks=2, se_reduction=2, se_gate=gate)
    f, block = torch.randn(3, 6, 4), torch.tensor([1, 0, 1])
    for b in range(3):
        k = int(block[b])
        z = f[b].mean(-1)  # F_avg per field
        h = torch.relu(z @ layer.fc1.weight[k] + layer.fc1.bias[k])
        a = h @ layer.fc2.weight[k] + layer.fc2.bias[k]
        a = torch.sigmoid(a) if gate == "sigmoid" else a
        torch.testing.assert_close(layer(f, block)[b], a.unsqueeze(-1) * f[b])
    assert layer.fc1.out_dim == 3  # max(1, N // reduction)


def test_se_placements_1se_3se_4se() -> None:
    assert _adi_tower(adaptation_placement="global").dial.fc1.num == 1  # 1-SE: one global block
    assert _adi_tower().dial.fc1.num == D  # 3-SE: one block per domain
    assert _adi_tower(adaptation_placement="network", num_shared=2).dial.fc1.num == 2 + D  # 4-SE: per network
    # 3-SE: a row's domain picks the block; 1-SE ignores the domain.
    t = _adi_tower().eval()
    fields = torch.randn(1, t.num_fields, 16)
    w0, w1 = t.dial.weights(fields, torch.tensor([0])), t.dial.weights(fields, torch.tensor([1]))
    assert not torch.allclose(w0, w1)


@pytest.mark.parametrize("name", MODELS)
def test_eq1_the_score_is_the_inner_product_of_the_two_towers(name: str) -> None:
    model = build(name).eval()
    user, item = batch()
    with torch.no_grad():
        expected = (model.user_embedding(user) * model.item_embedding(item)).sum(-1)
        torch.testing.assert_close(model.score(user, item), expected)
        all_pairs = model.user_embedding(user) @ model.item_embedding(item).T
        torch.testing.assert_close(torch.diagonal(all_pairs), expected, atol=1e-6, rtol=1e-5)


def test_eq19_plain_bn_normalises_with_the_whole_batchs_statistics() -> None:
    bank = NormedBank(4, (3,), num=2, num_domains=2, domain_norm=False)
    x = torch.randn(10, 4)
    domain = torch.tensor([0] * 4 + [1] * 6)
    with torch.no_grad():
        out = bank.dense(x, domain)  # [2, 10, 3]
        z = bank.layers[0](x)
        for k in range(2):  # each member over every row, whatever its domain
            zn = (z[k] - z[k].mean(0)) / torch.sqrt(z[k].var(0, unbiased=False) + 1e-5)
            torch.testing.assert_close(out[k], torch.relu(zn), atol=1e-5, rtol=1e-4)
