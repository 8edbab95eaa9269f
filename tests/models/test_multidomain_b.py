"""The gated / generated-parameter multi-domain models: PEPNet (and EPNet, PPNet), HiNet, SAR-Net, M2M,
AdaSparse, AdaptDHM, HAMUR, M3oE, and the layers they share (polyrec.layers.gates, segment_einsum; the
banks are tested in tests/layers/test_bank.py).

Each test checks a property the paper or the bank contract states and that a wrong port would break:
gate ranges, stop-gradients, per-domain routing of generated weights, the sparsity loss, strict configs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import make_batch, make_schema, perturb
from torch import nn

import polyrec
from polyrec import Batch, ConfigError, DatasetSchema, create_model
from polyrec.layers.domain import DomainSegments, segment_einsum
from polyrec.layers.gates import GateNU
from polyrec.models.multidomain.pepnet import _PEPNetFamily

MODELS = ["pepnet", "epnet", "ppnet", "hinet", "sarnet", "m2m", "adasparse", "adaptdhm", "hamur", "m3oe"]


def schema_of(num_domains: int = 3) -> DatasetSchema:
    return make_schema(num_domains, domain_name="scenario", user_feature="user")


def batch_of(n: int = 48, num_domains: int = 3, seed: int = 0, domain: torch.Tensor | None = None) -> Batch:
    return make_batch(schema_of(num_domains), n, seed, domains=domain)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------- layers.gates, segment_einsum


def test_gate_nu_lies_in_zero_gamma_and_scales_with_gamma() -> None:
    x = torch.randn(256, 8) * 3
    for gamma in (2.0, 3.5):
        torch.manual_seed(1)
        gate = GateNU(8, 5, gamma=gamma)
        out = gate(x)
        assert out.shape == (256, 5)
        assert (out > 0).all() and (out < gamma).all()
        assert out.max() > 1.0  # the gate can amplify, not only damp
    torch.manual_seed(1)
    unit = GateNU(8, 5, gamma=1.0)
    torch.testing.assert_close(gate(x), 3.5 * unit(x))
    with pytest.raises(ValueError, match="gamma"):
        GateNU(8, 5, gamma=0.0)


def test_segment_einsum_padded_path_equals_the_loop_and_a_per_row_computation() -> None:
    dom = torch.randint(0, 20, (150,))
    seg = DomainSegments.from_domain(dom)
    x = seg.sort(torch.randn(150, 6))
    w = torch.randn(seg.num_segments, 6, 4)
    loop = segment_einsum("ni,io->no", x, seg, w, loop_max=64)
    padded = segment_einsum("ni,io->no", x, seg, w, loop_max=2)
    per_row = torch.stack([x[i] @ w[seg.local[i]] for i in range(150)])
    torch.testing.assert_close(loop, per_row)
    torch.testing.assert_close(padded, per_row)


# ---------------------------------------------------------------- PEPNet family


def test_epnet_ppnet_pepnet_are_distinct_entries_of_one_implementation() -> None:
    classes = {name: polyrec.models.get_model_class(name) for name in ("pepnet", "epnet", "ppnet")}
    assert len(set(classes.values())) == 3
    for name, cls in classes.items():
        assert issubclass(cls, _PEPNetFamily) and cls.model_name == name
        assert cls.forward is _PEPNetFamily.forward and cls.__init__ is _PEPNetFamily.__init__
    schema = schema_of()
    pep, ep, pp = (create_model(n, schema) for n in ("pepnet", "epnet", "ppnet"))
    assert pep.ep_gate is not None and pep.pp_gates is not None
    assert ep.ep_gate is not None and ep.pp_gates is None
    assert pp.ep_gate is None and pp.pp_gates is not None
    assert pp.prior_names == ["user", "item"]
    with pytest.raises(ConfigError, match="prior_features"):
        create_model("epnet", schema, prior_features=["user"])  # EPNet has no prior ids
    with pytest.raises(ValueError, match="tags"):
        create_model("ppnet", schema, prior_features=["user", "tags"])


def _plain_path(model, batch: Batch) -> torch.Tensor:
    """The EPNet model's DNN on the un-gated input E (embeddings ⊕ dense)."""
    h = torch.cat([model.embeddings(batch).flatten(1), batch.dense], dim=1)
    for layer in model.hidden:
        h = model.act(layer(h))
    return model.out(h).squeeze(-1)


def test_epnet_with_its_gate_forced_to_one_is_the_plain_embedding_path() -> None:
    model = perturb(create_model("epnet", schema_of(), hidden_units=(16, 8)))
    model.eval()
    batch = batch_of()
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits, _plain_path(model, batch), atol=1e-4)
        model.ep_gate.fc2.weight.zero_()
        model.ep_gate.fc2.bias.zero_()  # δ = γ·sigmoid(0) = 1 with γ = 2
        torch.testing.assert_close(model(batch).logits, _plain_path(model, batch))


def test_epnet_gate_reads_the_embeddings_through_a_stop_gradient() -> None:
    model = perturb(create_model("pepnet", schema_of(), hidden_units=(16, 8)))
    batch = batch_of()
    captured = {}
    model.ep_gate.register_forward_hook(lambda m, i, o: captured.__setitem__("ep", o))
    model.pp_gates[0].register_forward_hook(lambda m, i, o: captured.__setitem__("pp", o))
    logits = model(batch).logits
    table = model.embeddings.table.weight
    tags = model.embeddings.multi["tags"].weight
    # EPNet gate: no path to any embedding, but it trains itself and the domain embedding.
    grads = torch.autograd.grad(
        captured["ep"].sum(), [table, tags, model.domain_embedding.weight], retain_graph=True, allow_unused=True
    )
    assert grads[0] is None and grads[1] is None
    assert grads[2].abs().sum() > 0
    # PPNet gate: reads the user and item ids (O_prior, trained through the gate) and ⊘(O_ep): no path to
    # the other fields' embeddings nor to the EPNet gate.
    g_table, g_tags, g_ep = torch.autograd.grad(
        captured["pp"].sum(), [table, tags, model.ep_gate.fc1.weight], retain_graph=True, allow_unused=True
    )
    offsets = model.embeddings.offsets.tolist()  # user rows [0, 30), item rows [30, 55), category [55, 61)
    assert g_table[: offsets[2]].abs().sum() > 0
    assert g_table[offsets[2] :].abs().sum() == 0
    assert (g_tags is None or g_tags.abs().sum() == 0) and g_ep is None
    # The main path still trains every embedding.
    (g_main,) = torch.autograd.grad(logits.sum(), [table])
    assert g_main[offsets[2] :].abs().sum() > 0


# ---------------------------------------------------------------- AdaSparse


@pytest.mark.parametrize("form", ["binarization", "scaling", "fusion"])
def test_adasparse_returns_a_finite_differentiable_sparsity_loss(form: str) -> None:
    model = create_model("adasparse", schema_of(), hidden_units=(16, 8), form=form, sparsity_range=(0.8, 0.9))
    out = model(batch_of())
    loss = out.aux_losses["sparsity"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0  # kept fraction ~0.5: under the target
    loss.backward()
    assert model.pruners[1].weight.grad.abs().sum() > 0
    assert "sparsity" not in create_model("adasparse", schema_of(), sparsity_weight=0.0)(batch_of()).aux_losses


def test_adasparse_binarization_prunes_with_0_1_factors_and_alpha_moves_only_in_training() -> None:
    model = perturb(
        create_model("adasparse", schema_of(), hidden_units=(16, 8), form="binarization", epsilon=0.3), scale=1.0
    )
    dom = model.domain_embedding(torch.tensor([0, 1, 2]))
    pi, _soft = model.weighting_factors(1, dom, torch.randn(3, 16))
    assert set(pi.detach().unique().tolist()) <= {0.0, 1.0} and (pi == 0).any() and (pi == 1).any()
    alpha = float(model.alpha)
    model.eval()
    model(batch_of())
    assert float(model.alpha) == alpha
    model.train()
    model(batch_of())
    assert float(model.alpha) == pytest.approx(alpha + model.config.alpha_step)
    with pytest.raises(ValueError, match="sparsity_range"):
        create_model("adasparse", schema_of(), sparsity_range=(0.6, 0.2))


# ---------------------------------------------------------------- M2M


def test_m2m_generates_different_weights_per_domain_and_rows_use_only_their_own() -> None:
    model = create_model("m2m", schema_of(), expert_units=(16, 8), scenario_dim=8)
    model.eval()
    weights = model.meta_weights(torch.arange(3))
    for name, w in weights.items():
        assert w.shape[0] == 3
        assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2]), name
    batch = batch_of(60)
    with torch.no_grad():
        before = model(batch).logits
        model.domain_embedding.weight[1].add_(1.0)
        after = model(batch).logits
    own = batch.domain == 1
    assert own.any() and (~own).any()
    torch.testing.assert_close(after[~own], before[~own])
    assert (after[own] - before[own]).abs().min() > 0


# ---------------------------------------------------------------- HiNet, M3oE, AdaptDHM, bank routing


def test_hinet_attends_only_to_the_other_scenarios() -> None:
    model = create_model("hinet", schema_of(4))
    w = model.attention(torch.tensor([0, 2, 3]))
    assert w.shape == (3, 4)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert w[0, 0] == 0 and w[1, 2] == 0 and w[2, 3] == 0 and (w[0, 1:] > 0).all()


def _input_of(module: nn.Module, model: nn.Module, batch: Batch) -> torch.Tensor:
    """The (first) input ``module`` receives during ``model(batch)``."""
    captured = {}
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0]))
    try:
        model(batch)
    finally:
        handle.remove()
    return captured["x"]


def _features(model, batch: Batch) -> torch.Tensor:
    return torch.cat([model.embeddings(batch).flatten(1), batch.dense], dim=1)


def _relabel(batch: Batch, domain: int) -> Batch:
    return dataclasses.replace(batch, domain=torch.full_like(batch.domain, domain))


def _mlp_member(x: torch.Tensor, layers, member: int) -> torch.Tensor:
    """Bank member ``member`` of a stack of :class:`~polyrec.layers.bank.LinearBank` layers as a plain ReLU
    MLP, on one row."""
    for layer in layers:
        x = torch.relu(x @ layer.weight[member] + layer.bias[member])
    return x


# These references run the rows sorted by domain (every domain present): the models may evaluate on a
# domain-sorted copy of the batch, and a sorted batch makes that copy the batch itself, so tower inputs
# captured by a hook line up with the batch's rows whatever the implementation.


def test_hinet_san_is_the_attention_weighted_sum_of_the_other_scenarios_expert_outputs() -> None:
    # HiNet eq. for SAN: A_i(x) = Σ_{j≠i} w_ij S_j(x), S_j(x) scenario j's specific expert (its sub-experts
    # under its own gate) evaluated on x, w_i = softmax over j≠i of MLP(e_i). Mixing the experts'
    # parameters instead is a different model through the activations, and fails this check.
    D, H = 4, 6
    model = perturb(create_model("hinet", schema_of(D), expert_units=(8, H)), scale=0.5)
    model.eval()
    dom = torch.arange(D).repeat_interleave(5)
    batch = batch_of(len(dom), D, domain=dom)
    with torch.no_grad():
        got = _input_of(model.tower, model, batch)  # C = A ⊕ S ⊕ G
        # S_j(x) of every row, from the model's own-scenario path with every row relabelled scenario j.
        specific = [_input_of(model.tower, model, _relabel(batch, j))[:, H : 2 * H] for j in range(D)]
        for b in range(len(dom)):
            i = int(dom[b])
            scores = model.san(model.domain_embedding.weight[i])
            norm = sum(torch.exp(scores[j]) for j in range(D) if j != i)
            expected = sum(torch.exp(scores[j]) / norm * specific[j][b] for j in range(D) if j != i)
            torch.testing.assert_close(got[b, :H], expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got[b, H : 2 * H], specific[i][b])


def test_hinet_scenario_expert_is_its_own_sub_experts_under_its_own_gate() -> None:
    # S_i(x) = Σ_k softmax(W_i x + b_i)_k E^i_k(x), from scenario i's parameters only, row by row.
    D, K, H = 3, 2, 6
    dom = torch.arange(D).repeat_interleave(4)
    for san in (True, False):  # without SAN, the row's own scenario runs alone
        model = create_model("hinet", schema_of(D), expert_units=(8, H), specific_experts=K, san=san)
        perturb(model, scale=0.5).eval()
        batch = batch_of(len(dom), D, domain=dom, seed=int(san))
        with torch.no_grad():
            got = _input_of(model.tower, model, batch)
            x = _features(model, batch)
            offset = H if san else 0
            for b in range(len(dom)):
                i = int(dom[b])
                gate = torch.softmax(
                    x[b] @ model.specific_gate.linear.weight[i] + model.specific_gate.linear.bias[i], -1
                )
                expected = sum(gate[k] * _mlp_member(x[b], model.specific.hidden, i * K + k) for k in range(K))
                torch.testing.assert_close(got[b, offset : offset + H], expected, atol=1e-5, rtol=1e-4)


def _m3oe_shared_and_task(model, x: torch.Tensor, domain: int, b: int) -> torch.Tensor:
    """G_d(x_b) + σ(w_T) T(x_b): the parts of M3oE's fused representation outside the domain balance."""
    gate = torch.softmax(x[b] @ model.gates.weight[domain] + model.gates.bias[domain], -1)
    shared = (gate.unsqueeze(-1) * model.shared(x[b : b + 1])[:, 0]).sum(0)  # experts [K, B, H]
    return shared + torch.sigmoid(model.task_weight) * model.task_expert(x[b : b + 1])[0]


def test_m3oe_domain_balance_mixes_every_domains_expert_outputs() -> None:
    # M3oE: z = G_d + w_D B_d + w_T T with B_d(x) = α f_d(x) + (1 − α) mean_{j≠d} f_j(x), a combination of
    # the domain experts' OUTPUTS. Mixing the experts' parameters instead fails this check.
    D, H = 4, 6
    model = perturb(create_model("m3oe", schema_of(D), expert_units=(8, H), balance=0.2), scale=0.5)
    model.eval()
    dom = torch.arange(D).repeat_interleave(5)
    batch = batch_of(len(dom), D, domain=dom)
    with torch.no_grad():
        got = _input_of(model.towers, model, batch)  # z, one row per batch row
        x = _features(model, batch)
        alpha, w_d = torch.sigmoid(model.balance), torch.sigmoid(model.domain_weight)
        # f_j(x) of every row: with α = 1 the balance is the row's own expert alone; relabel every row j.
        balance = model.balance.clone()
        model.balance.fill_(40.0)  # sigmoid(40) == 1 in float32
        own_only = [_input_of(model.towers, model, _relabel(batch, j)) for j in range(D)]
        model.balance.copy_(balance)
        f = [
            [(own_only[j][b] - _m3oe_shared_and_task(model, x, j, b)) / w_d for b in range(len(dom))] for j in range(D)
        ]
        for b in range(len(dom)):
            d = int(dom[b])
            others = sum(f[j][b] for j in range(D) if j != d) / (D - 1)
            expected = _m3oe_shared_and_task(model, x, d, b) + w_d * (alpha * f[d][b] + (1 - alpha) * others)
            torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-4)
        # The α = 1 extraction is each domain's own expert, read from its parameters.
        for j in range(D):
            for b in range(len(dom)):
                expected = _mlp_member(x[b], model.domain_experts.hidden, j)
                torch.testing.assert_close(f[j][b], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["hinet", "m3oe"])
def test_cross_domain_models_work_with_a_single_domain(name: str) -> None:
    model = create_model(name, schema_of(1))
    out = model(batch_of(16, num_domains=1)).logits
    assert out.shape == (16,) and torch.isfinite(out).all()


def test_adaptdhm_soft_assignment_and_centres_move_only_in_training() -> None:
    model = create_model("adaptdhm", schema_of(), hidden_units=(16,))
    batch = batch_of()
    feats = torch.cat([model.embeddings(batch).flatten(1), batch.dense], 1).detach()
    dom = model.domain_embedding(batch.domain).detach()
    model.eval()
    centres = model.centers.clone()
    r = model.assign(feats, dom)
    torch.testing.assert_close(r.sum(1), torch.ones(len(batch)))
    assert torch.equal(model.centers, centres)
    model.train()
    model.assign(feats, dom)
    assert not torch.equal(model.centers, centres)
    torch.testing.assert_close(model.centers.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize(
    "name,prefixes,overrides",
    [
        ("sarnet", ("domain_scale", "domain_shift", "specific", "gate"), {}),
        ("hamur", ("domain_embedding", "layers", "adapters", "out"), {}),
        ("hinet", ("specific",), {"san": False, "specific_experts": 1}),  # without SAN: own scenario only
    ],
)
def test_rows_use_only_their_own_domains_bank_slices(name: str, prefixes: tuple[str, ...], overrides: dict) -> None:
    model = create_model(name, schema_of(5), **overrides)
    model.eval()
    batch = batch_of(60, num_domains=5)
    touched = 0
    with torch.no_grad():
        before = model(batch).logits
        for pname, p in model.named_parameters():
            if pname.startswith(prefixes) and p.shape[0] % 5 == 0:  # [D, ...] or [D*k, ...], domain-major
                p.view(5, -1)[2].add_(0.5)
                touched += 1
        after = model(batch).logits
    assert touched >= 4
    own = batch.domain == 2
    torch.testing.assert_close(after[~own], before[~own])
    assert (after[own] - before[own]).abs().min() > 0


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", MODELS)
def test_config_rejects_unknown_keys_and_states_its_defaults(name: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        create_model(name, schema_of(), bogus=1)
    cfg = polyrec.models.get_model_class(name).Config()
    assert cfg.embedding_dim == 16 and cfg.activation == "relu" and cfg.dropout == 0.0
    assert cfg.aux_network is False and cfg.aux_hidden == (32,)
    with_aux = create_model(name, schema_of(), aux_network=True)
    assert with_aux.aux is not None
    assert torch.isfinite(with_aux(batch_of(8)).logits).all()
