"""STAR: tests that fail on the known defects of other ports (whole-batch PN, ReLU on the logit,
per-domain towers run on every row) and check the paper's equations."""

import pytest
import torch
from builders import make_batch, make_schema
from builders import perturb as perturb_params
from torch import nn

from polyrec import create_model
from polyrec.layers.domain import DomainSegments, StarLinear, segment_linear
from polyrec.layers.norm import PartitionedNorm


def schema_of(num_domains=3):
    return make_schema(num_domains, sparse=(("user", 50), ("item", 40)), multi=(("tags", 12, 3),))


def batch_of(n=64, num_domains=3, seed=0, domains=None):
    batch = make_batch(schema_of(num_domains), n, seed, domains=domains, padding=0.0)
    batch.dense.mul_(3).add_(1)  # off zero mean / unit variance, so that normalisation has work to do
    return batch


def perturb(model, seed=0):
    """Move every parameter away from its initial value so that domain banks differ per domain."""
    return perturb_params(model, seed, scale=0.1)


def train_steps(model, n=5, seed=1):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(n):
        b = batch_of(128, model.num_domains, seed=seed + i)
        loss = nn.functional.binary_cross_entropy_with_logits(model(b).logits, b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("norm_hidden", [False, True])
def test_eval_prediction_of_a_row_does_not_depend_on_its_batch(norm_hidden):
    torch.manual_seed(0)
    model = train_steps(
        create_model("star", schema_of(), embedding_dim=4, hidden_units=[16, 8], norm_hidden=norm_hidden)
    )
    model.eval()
    b = batch_of(90, seed=5)
    full = model(b).logits
    for idx in (torch.arange(7), torch.tensor([3]), torch.nonzero(b.domain == 1).squeeze(1), torch.arange(89, -1, -1)):
        part = model(b.select(idx)).logits
        torch.testing.assert_close(part, full[idx], atol=1e-5, rtol=1e-5)


def test_domain_parameters_get_gradient_only_from_their_rows():
    torch.manual_seed(0)
    model = perturb(create_model("star", schema_of(4), embedding_dim=4, hidden_units=[16, 8]))
    model.train()
    b = batch_of(60, 4, domains=[0, 2] * 30)
    model(b).logits.sum().backward()
    for layer in model.layers:
        assert layer.domain_weight.grad[1].abs().sum() == 0 and layer.domain_weight.grad[3].abs().sum() == 0
        assert layer.domain_bias.grad[1].abs().sum() == 0
        assert layer.domain_weight.grad[0].abs().sum() > 0 and layer.domain_weight.grad[2].abs().sum() > 0
    assert model.pn.domain_gamma.grad[1].abs().sum() == 0 and model.pn.domain_gamma.grad[0].abs().sum() > 0


def test_domain_gradient_equals_gradient_from_that_domain_alone():
    """With per-domain PN statistics, the rows of other domains cannot influence domain p's gradient.

    Whole-batch normalisation (a known defect of other ports) fails this test."""
    torch.manual_seed(0)
    model = perturb(create_model("star", schema_of(), embedding_dim=4, hidden_units=[16, 8], aux_network=False))
    model.train()
    b = batch_of(96, seed=3)
    model(b).logits.sum().backward()
    mixed = model.layers[0].domain_weight.grad[1].clone()
    model.zero_grad()
    model(b.select(torch.nonzero(b.domain == 1).squeeze(1))).logits.sum().backward()
    alone = model.layers[0].domain_weight.grad[1]
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-4)


def test_single_domain_star_equals_mlp_with_elementwise_product_weights():
    torch.manual_seed(0)
    model = perturb(
        create_model(
            "star", schema_of(1), embedding_dim=4, hidden_units=[16, 8], partitioned_norm=False, aux_network=False
        )
    )
    model.eval()
    b = batch_of(32, 1)
    linears = []
    for layer in model.layers:
        lin = nn.Linear(layer.in_dim, layer.out_dim)
        with torch.no_grad():
            lin.weight.copy_((layer.weight * layer.domain_weight[0]).T)
            lin.bias.copy_(layer.bias + layer.domain_bias[0])
        linears.append(lin)
    mlp = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2])
    z = torch.cat([model.embeddings(b).flatten(1), b.dense], 1)
    torch.testing.assert_close(model(b).logits, mlp(z).squeeze(-1), atol=1e-6, rtol=1e-5)


def test_logit_has_no_activation():
    """The final star layer's output is the logit: it can be negative (no ReLU/BN on the logit)."""
    torch.manual_seed(0)
    model = create_model("star", schema_of(), embedding_dim=4, hidden_units=[8], aux_network=False)
    with torch.no_grad():
        model.layers[-1].bias.fill_(-3.0)
    model.eval()
    assert (model(batch_of(32)).logits < 0).all()


@pytest.mark.parametrize("norm_hidden", [False, True])
def test_folded_model_matches_unfolded(norm_hidden):
    torch.manual_seed(0)
    model = perturb(
        train_steps(
            create_model(
                "star",
                schema_of(),
                embedding_dim=4,
                hidden_units=[16, 8],
                norm_hidden=norm_hidden,
                aux_features=("item",),
            )
        )
    )
    model.eval()
    b = batch_of(200, seed=9)
    folded = model.fold()
    torch.testing.assert_close(folded(b).logits, model(b).logits, atol=1e-5, rtol=1e-5)


def test_partitioned_norm_uses_domain_statistics():
    torch.manual_seed(0)
    pn = PartitionedNorm(3, 2, momentum=1.0)  # momentum 1: running stats = last batch's unbiased stats
    x = torch.cat([torch.randn(50, 3) * 2 + 5, torch.randn(50, 3) * 0.5 - 1])
    domain = torch.tensor([0] * 50 + [1] * 50)
    seg = DomainSegments.from_domain(domain)
    y = pn(x, seg.local, seg.domains)
    for d in (0, 1):
        rows = y[domain == d]
        torch.testing.assert_close(rows.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(rows.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
        torch.testing.assert_close(pn.running_mean[d], x[domain == d].mean(0))
        torch.testing.assert_close(pn.running_var[d], x[domain == d].var(0))
    pn.eval()
    with torch.no_grad():
        pn.domain_gamma[1].fill_(2.0)
        pn.domain_beta[1].fill_(0.5)
    out = pn(x[domain == 1], torch.zeros(50, dtype=torch.long), torch.tensor([1]))
    expected = 2.0 * (x[domain == 1] - pn.running_mean[1]) / torch.sqrt(pn.running_var[1] + pn.eps) + 0.5
    torch.testing.assert_close(out, expected)


def test_singleton_domain_in_training_batch_uses_running_stats():
    pn = PartitionedNorm(2, 2)
    x = torch.randn(5, 2)
    domain = torch.tensor([0, 0, 0, 0, 1])
    seg = DomainSegments.from_domain(domain)
    y = pn(x, seg.local, seg.domains)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[4], x[4] / torch.sqrt(torch.tensor(1.0 + pn.eps)))
    assert pn.num_batches_tracked.tolist() == [1, 0]


def test_segment_linear_paths_agree_and_handle_many_domains():
    torch.manual_seed(0)
    layer = StarLinear(6, 5, num_domains=10_000)
    with torch.no_grad():
        layer.domain_weight.normal_()
        layer.domain_bias.normal_()
    domain = torch.randint(0, 10_000, (300,))
    x = torch.randn(300, 6)
    seg = DomainSegments.from_domain(domain)
    w, b = layer.combined(seg.domains)
    looped = segment_linear(seg.sort(x), seg, w, b, loop_max=10**9)
    padded = segment_linear(seg.sort(x), seg, w, b, loop_max=0)
    torch.testing.assert_close(looped, padded)
    expected = torch.stack(
        [
            x[i] @ (layer.weight * layer.domain_weight[d]) + layer.bias + layer.domain_bias[d]
            for i, d in enumerate(domain.tolist())
        ]
    )
    torch.testing.assert_close(seg.unsort(padded), expected, atol=1e-5, rtol=1e-5)


def test_domain_batched_and_mixed_batches_both_train():
    torch.manual_seed(0)
    model = create_model("star", schema_of(), embedding_dim=4, hidden_units=[8])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for b in (batch_of(64, domains=[2] * 64), batch_of(64)):
        loss = nn.functional.binary_cross_entropy_with_logits(model(b).logits, b.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_aux_network_adds_a_domain_logit():
    torch.manual_seed(0)
    on = create_model("star", schema_of(), embedding_dim=4, hidden_units=[8], aux_network=True)
    off = create_model("star", schema_of(), embedding_dim=4, hidden_units=[8], aux_network=False)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("aux.")})
    on.eval(), off.eval()
    b = batch_of(20)
    torch.testing.assert_close(on(b).logits - off(b).logits, on.aux(b.domain))


def test_star_config_errors():
    with pytest.raises(ValueError, match="aux_features"):
        create_model("star", schema_of(), aux_features=("nope",))
    from polyrec import ConfigError

    with pytest.raises(ConfigError, match="hiden_units"):
        create_model("star", schema_of(), hiden_units=[8])


def test_calibration_sets_exact_per_domain_statistics():
    torch.manual_seed(0)
    pn = PartitionedNorm(3, 3)
    x = torch.randn(300, 3) * torch.tensor([1.0, 2.0, 3.0]) + 4
    domain = torch.randint(0, 2, (300,))  # domain 2 absent: keeps its statistics
    pn.eval()
    pn.begin_calibration()
    for part in torch.split(torch.arange(300), 64):
        seg = DomainSegments.from_domain(domain[part])
        pn(seg.sort(x[part]), seg.local, seg.domains)
    pn.end_calibration()
    for d in (0, 1):
        torch.testing.assert_close(pn.running_mean[d], x[domain == d].mean(0))
        torch.testing.assert_close(pn.running_var[d], x[domain == d].var(0))
    assert torch.equal(pn.running_mean[2], torch.zeros(3)) and torch.equal(pn.running_var[2], torch.ones(3))


@pytest.mark.parametrize("norm_hidden", [False, True])
def test_recompute_norm_statistics_matches_the_population_moments(norm_hidden):
    from polyrec.training.calibration import recompute_norm_statistics

    class Data:  # the minimal dataset interface recompute_norm_statistics uses
        def __init__(self, batch):
            self.b = batch

        def batch(self, idx):
            return self.b.select(idx)

    torch.manual_seed(0)
    model = train_steps(
        create_model("star", schema_of(), embedding_dim=4, hidden_units=[8, 4], norm_hidden=norm_hidden, dropout=0.3)
    )
    b = batch_of(500, seed=11)
    assert recompute_norm_statistics(model, Data(b), torch.arange(500), batch_size=97) == (3 if norm_hidden else 1)
    assert model.training
    model.eval()
    z = torch.cat([model.embeddings(b).flatten(1), b.dense], 1)
    for d in range(3):
        torch.testing.assert_close(model.pn.running_mean[d], z[b.domain == d].mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.pn.running_var[d], z[b.domain == d].var(0), atol=1e-5, rtol=1e-4)
    if norm_hidden:  # the first hidden PN sees the first layer's output given the exact input statistics
        seg = DomainSegments.from_domain(b.domain)
        h = model.layers[0](model.pn(seg.sort(z), seg.local, seg.domains), seg)
        for i, d in enumerate(seg.domains.tolist()):
            rows = h[seg.local == i]
            torch.testing.assert_close(model.hidden_norms[0].running_mean[d], rows.mean(0), atol=1e-5, rtol=1e-4)


def test_aux_network_takes_the_schemas_domain_describing_features_by_default():
    """§3.5: the auxiliary network sees the indicator and the features that describe the domain."""
    import dataclasses

    described = dataclasses.replace(schema_of(), domain_features=("item",))
    torch.manual_seed(0)
    star = create_model("star", described, embedding_dim=4, hidden_units=[8], aux_network=True)
    assert star.aux_feature_names == ("item",) and star.aux.extra_dim == 4
    # two rows of one domain that differ only in the domain-describing feature get different aux logits
    b = batch_of(2, domains=[1, 1])
    b.sparse[1] = b.sparse[0]
    b.sparse[1, 1] = (b.sparse[0, 1] + 1) % 40
    perturb(star)
    star.eval()
    aux = star.aux(b.domain, star._aux_extra(star.embeddings(b)))
    assert aux[0] != aux[1]
    alone = create_model("star", described, embedding_dim=4, hidden_units=[8], aux_features=[])  # indicator only
    assert alone.aux_feature_names == () and alone.aux.extra_dim == 0
    plain = create_model("star", schema_of(), embedding_dim=4, hidden_units=[8])  # the schema declares none
    assert plain.aux_feature_names == () and plain.aux.extra_dim == 0


def test_the_binned_many_segment_path_equals_the_loop_with_skewed_segments():
    """Segments of very different sizes (a Zipf batch): the bins give the loop's values and gradients, and the
    padding stays under half of the work."""
    torch.manual_seed(0)
    domain = torch.multinomial(1.0 / torch.arange(1, 61, dtype=torch.float64) ** 1.2, 700, replacement=True)
    seg = DomainSegments.from_domain(domain)
    x = torch.randn(700, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(seg.num_segments, 6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(seg.num_segments, 3, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for loop_max in (10**9, 0):
        y = segment_linear(seg.sort(x), seg, w, b, loop_max=loop_max)
        outs.append(y)
        grads.append(torch.autograd.grad((y**3).sum(), (x, w, b)))
    torch.testing.assert_close(outs[1], outs[0])
    for g1, g0 in zip(grads[1], grads[0]):
        torch.testing.assert_close(g1, g0)
    bins = seg.bins()
    padded = sum(int(idx.numel()) for idx in bins.index)
    assert padded < 2 * len(domain) and max(seg.counts) > 20 * min(seg.counts)
    assert sorted(bins.order.tolist()) == list(range(seg.num_segments))


@pytest.mark.parametrize("sparse", [False, True])
def test_star_layer_many_segments_gather_per_bin_as_the_loop_does(sparse):
    """With many segments a star layer gathers each bin's domain rows itself: the values and the gradients
    of x, W, b and the domain banks (dense, or sparse under bank_row_gradients) are those of the loop."""
    from polyrec.layers.domain import bank_row_gradients

    torch.manual_seed(1)
    domain = torch.multinomial(1.0 / torch.arange(1, 81, dtype=torch.float64) ** 1.1, 600, replacement=True)
    seg = DomainSegments.from_domain(domain)
    assert seg.num_segments > 16 and len(seg.bins().sizes) > 2
    layer = StarLinear(5, 3, 80).double()
    with torch.no_grad():
        layer.domain_weight.add_(0.3 * torch.randn_like(layer.domain_weight))
        layer.domain_bias.add_(torch.randn_like(layer.domain_bias))
    x = torch.randn(600, 5, dtype=torch.float64, requires_grad=True)
    params = (x, layer.weight, layer.bias, layer.domain_weight, layer.domain_bias)
    results = []
    for loop_max in (10**9, 0):
        with bank_row_gradients([layer.domain_weight, layer.domain_bias] if sparse else []):
            y = layer(seg.sort(x), seg, loop_max=loop_max)
            grads = torch.autograd.grad((y**3).sum(), params)
        results.append((y, [g.to_dense() if g.is_sparse else g for g in grads]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for g1, g0 in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(g1, g0)
    absent = torch.ones(80, dtype=torch.bool)
    absent[seg.domains] = False
    assert not results[1][1][3][absent].any()
