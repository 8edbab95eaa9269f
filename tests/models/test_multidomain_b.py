"""The gated / generated-parameter multi-domain models: PEPNet (and EPNet, PPNet), HiNet, SAR-Net, M2M,
AdaSparse, AdaptDHM, HAMUR, M3oE, and the layers they share (polyrec.layers.gates).

Each test checks a property the paper or the bank contract states and that a wrong port would break:
gate ranges, stop-gradients, per-domain routing of generated weights, the sparsity loss, strict configs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polyrec
from polyrec import Batch, ConfigError, DatasetSchema, DomainSpec, FeatureSpec, create_model
from polyrec.layers.domain import DomainSegments
from polyrec.layers.gates import DomainExpertBank, GateNU, ParallelMLP, segment_einsum
from polyrec.models.multidomain.pepnet import _PEPNetFamily

MODELS = ["pepnet", "epnet", "ppnet", "hinet", "sarnet", "m2m", "adasparse", "adaptdhm", "hamur", "m3oe"]


def make_schema(num_domains: int = 3) -> DatasetSchema:
    return DatasetSchema(
        features=(
            FeatureSpec("user", "sparse", vocab_size=30),
            FeatureSpec("item", "sparse", vocab_size=25),
            FeatureSpec("category", "sparse", vocab_size=6),
            FeatureSpec("tags", "multi", vocab_size=10, max_len=4),
            FeatureSpec("price", "dense"),
        ),
        domain=DomainSpec("scenario", tuple(f"d{i}" for i in range(num_domains))),
        user_feature="user",
    )


def make_batch(n: int = 48, num_domains: int = 3, seed: int = 0, domain: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    dom = torch.randint(0, num_domains, (n,), generator=g) if domain is None else domain
    tags = torch.randint(2, 10, (n, 4), generator=g)
    tags[torch.rand(n, 4, generator=g) < 0.4] = 0
    return Batch(
        sparse=torch.stack(
            [torch.randint(2, 30, (n,), generator=g), torch.randint(2, 25, (n,), generator=g),
             torch.randint(2, 6, (n,), generator=g)], 1),
        dense=torch.randn(n, 1, generator=g),
        multi={"tags": tags},
        label=torch.randint(0, 2, (n,), generator=g).float(),
        domain=dom,
    )


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------- layers.gates


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


def test_domain_expert_bank_routes_rows_and_mixes_parameters() -> None:
    bank = DomainExpertBank(6, (5, 3), num_domains=4, num_experts=2)
    dom = torch.tensor([0, 2, 2, 3, 0, 3, 3])
    seg = DomainSegments.from_domain(dom)
    x = seg.sort(torch.randn(7, 6))
    out = bank(x, seg)
    assert out.shape == (7, 2, 3)
    for i in range(7):
        d = int(seg.sorted_domain[i])
        h = torch.relu(torch.einsum("i,kio->ko", x[i], bank.weights[0][d]) + bank.biases[0][d])
        h = torch.relu(torch.einsum("ki,kio->ko", h, bank.weights[1][d]) + bank.biases[1][d])
        torch.testing.assert_close(out[i], h)
    # A one-hot mixture is the plain selection; absent domain 1 gets no gradient.
    onehot = nn.functional.one_hot(seg.domains, 4).float()
    torch.testing.assert_close(bank(x, seg, mix=onehot), out)
    out.sum().backward()
    assert bank.weights[0].grad[1].abs().sum() == 0 and bank.weights[0].grad[0].abs().sum() > 0
    assert ParallelMLP(6, (4,), num_experts=3)(torch.randn(5, 6)).shape == (5, 3, 4)


# ---------------------------------------------------------------- PEPNet family


def test_epnet_ppnet_pepnet_are_distinct_entries_of_one_implementation() -> None:
    classes = {name: polyrec.models.get_model_class(name) for name in ("pepnet", "epnet", "ppnet")}
    assert len(set(classes.values())) == 3
    for name, cls in classes.items():
        assert issubclass(cls, _PEPNetFamily) and cls.model_name == name
        assert cls.forward is _PEPNetFamily.forward and cls.__init__ is _PEPNetFamily.__init__
    schema = make_schema()
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
    model = perturb(create_model("epnet", make_schema(), hidden_units=(16, 8)))
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits, _plain_path(model, batch), atol=1e-4)
        model.ep_gate.fc2.weight.zero_()
        model.ep_gate.fc2.bias.zero_()  # δ = γ·sigmoid(0) = 1 with γ = 2
        torch.testing.assert_close(model(batch).logits, _plain_path(model, batch))


def test_epnet_gate_reads_the_embeddings_through_a_stop_gradient() -> None:
    model = perturb(create_model("pepnet", make_schema(), hidden_units=(16, 8)))
    batch = make_batch()
    captured = {}
    model.ep_gate.register_forward_hook(lambda m, i, o: captured.__setitem__("ep", o))
    model.pp_gates[0].register_forward_hook(lambda m, i, o: captured.__setitem__("pp", o))
    logits = model(batch).logits
    table = model.embeddings.table.weight
    tags = model.embeddings.multi["tags"].weight
    # EPNet gate: no path to any embedding, but it trains itself and the domain embedding.
    grads = torch.autograd.grad(captured["ep"].sum(), [table, tags, model.domain_embedding.weight],
                                retain_graph=True, allow_unused=True)
    assert grads[0] is None and grads[1] is None
    assert grads[2].abs().sum() > 0
    # PPNet gate: reads the user and item ids (O_prior, trained through the gate) and ⊘(O_ep): no path to
    # the other fields' embeddings nor to the EPNet gate.
    g_table, g_tags, g_ep = torch.autograd.grad(
        captured["pp"].sum(), [table, tags, model.ep_gate.fc1.weight], retain_graph=True, allow_unused=True)
    offsets = model.embeddings.offsets.tolist()  # user rows [0, 30), item rows [30, 55), category [55, 61)
    assert g_table[: offsets[2]].abs().sum() > 0
    assert g_table[offsets[2]:].abs().sum() == 0
    assert (g_tags is None or g_tags.abs().sum() == 0) and g_ep is None
    # The main path still trains every embedding.
    (g_main,) = torch.autograd.grad(logits.sum(), [table])
    assert g_main[offsets[2]:].abs().sum() > 0


# ---------------------------------------------------------------- AdaSparse


@pytest.mark.parametrize("form", ["binarization", "scaling", "fusion"])
def test_adasparse_returns_a_finite_differentiable_sparsity_loss(form: str) -> None:
    model = create_model("adasparse", make_schema(), hidden_units=(16, 8), form=form, sparsity_range=(0.8, 0.9))
    out = model(make_batch())
    loss = out.aux_losses["sparsity"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0  # kept fraction ~0.5: under the target
    loss.backward()
    assert model.pruners[1].weight.grad.abs().sum() > 0
    assert "sparsity" not in create_model("adasparse", make_schema(), sparsity_weight=0.0)(make_batch()).aux_losses


def test_adasparse_binarization_prunes_with_0_1_factors_and_alpha_moves_only_in_training() -> None:
    model = perturb(create_model("adasparse", make_schema(), hidden_units=(16, 8), form="binarization",
                                 epsilon=0.3), scale=1.0)
    dom = model.domain_embedding(torch.tensor([0, 1, 2]))
    pi, soft = model.weighting_factors(1, dom, torch.randn(3, 16))
    assert set(pi.detach().unique().tolist()) <= {0.0, 1.0} and (pi == 0).any() and (pi == 1).any()
    alpha = float(model.alpha)
    model.eval()
    model(make_batch())
    assert float(model.alpha) == alpha
    model.train()
    model(make_batch())
    assert float(model.alpha) == pytest.approx(alpha + model.config.alpha_step)
    with pytest.raises(ValueError, match="sparsity_range"):
        create_model("adasparse", make_schema(), sparsity_range=(0.6, 0.2))


# ---------------------------------------------------------------- M2M


def test_m2m_generates_different_weights_per_domain_and_rows_use_only_their_own() -> None:
    model = create_model("m2m", make_schema(), expert_units=(16, 8), scenario_dim=8)
    model.eval()
    weights = model.meta_weights(torch.arange(3))
    for name, w in weights.items():
        assert w.shape[0] == 3
        assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2]), name
    batch = make_batch(60)
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
    model = create_model("hinet", make_schema(4))
    w = model.attention(torch.tensor([0, 2, 3]))
    assert w.shape == (3, 4)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert w[0, 0] == 0 and w[1, 2] == 0 and w[2, 3] == 0 and (w[0, 1:] > 0).all()


@pytest.mark.parametrize("name", ["hinet", "m3oe"])
def test_cross_domain_models_work_with_a_single_domain(name: str) -> None:
    model = create_model(name, make_schema(1))
    out = model(make_batch(16, num_domains=1)).logits
    assert out.shape == (16,) and torch.isfinite(out).all()


def test_adaptdhm_soft_assignment_and_centres_move_only_in_training() -> None:
    model = create_model("adaptdhm", make_schema(), hidden_units=(16,))
    batch = make_batch()
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


@pytest.mark.parametrize("name,prefixes", [
    ("sarnet", ("domain_scale", "domain_shift", "specific", "gate")),
    ("hamur", ("domain_embedding", "layers", "adapters", "out")),
])
def test_rows_use_only_their_own_domains_bank_slices(name: str, prefixes: tuple[str, ...]) -> None:
    model = create_model(name, make_schema(5))
    model.eval()
    batch = make_batch(60, num_domains=5)
    touched = 0
    with torch.no_grad():
        before = model(batch).logits
        for pname, p in model.named_parameters():
            if pname.startswith(prefixes) and p.shape[0] == 5:
                p[2].add_(0.5)
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
        create_model(name, make_schema(), bogus=1)
    cfg = polyrec.models.get_model_class(name).Config()
    assert cfg.embedding_dim == 16 and cfg.activation == "relu" and cfg.dropout == 0.0
    assert cfg.aux_network is False and cfg.aux_hidden == (32,)
    with_aux = create_model(name, make_schema(), aux_network=True)
    assert with_aux.aux is not None
    assert torch.isfinite(with_aux(make_batch(8)).logits).all()
