"""The model-agnostic learning frameworks MAMDR compares with (weighted_loss, pcgrad, maml, reptile, mldg):
learning on a tiny synthetic data set, the epoch/round structure, option validation, and each method's
update checked against a hand-computed one."""

import copy
import dataclasses
import math

import pytest
import torch

from polyrec import TrainConfig, Trainer, create_model
from polyrec.config import ConfigError, field_check, from_dict
from polyrec.training.checkpoint import load_latest_checkpoint
from polyrec.training.strategies import TrainContext, create_strategy, list_strategies
from polyrec.training.strategies.frameworks import LOG_VARS, project_conflicting
from polyrec.training.task import BinaryTask

MIXED = ["weighted_loss", "pcgrad"]  # the multi-task methods: mixed batches split by domain by default
BS = 64
NAMES = ["weighted_loss", "pcgrad", "maml", "reptile", "mldg"]
# options with which each learns visibly in 2 epochs of the tiny data set
LEARNING_OPTIONS = {"reptile": {"inner_steps": 2, "outer_lr": 0.5}}


def mlp(ds, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])


def cfg(strategy, **kw):
    base = {
        "batch_size": BS,
        "max_epochs": 2,
        "patience": 0,
        "lr": 1e-2,
        "eval_batch_size": 2000,
        "strategy": strategy,
        "monitor": "logloss_overall",
    }
    base.update(kw)
    return from_dict(TrainConfig, base)


def context(model, ds, optimizer=None, grad_clip=0.0):
    return TrainContext(
        model=model,
        optimizer=optimizer or torch.optim.SGD(model.parameters(), lr=0.1),
        task=BinaryTask(),
        dataset=ds,
        rows=ds.splits["train"],
        batch_size=BS,
        sampler="mixed",
        seed=0,
        device=torch.device("cpu"),
        grad_clip=grad_clip,
    )


def domain_batch(ds, domain, start=0, n=BS):
    rows = ds.splits["train"]
    return ds.batch(rows[ds.domain[rows] == domain][start : start + n])


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(a, b):
    """``a`` and ``b``: models or lists of parameter values."""
    a, b = (x if isinstance(x, list) else params(x) for x in (a, b))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def sgd_steps(model, ds, batches, lr):
    """Plain SGD steps (the reference for inner loops)."""
    ctx = context(model, ds, torch.optim.SGD(model.parameters(), lr=lr))
    for b in batches:
        ctx.step(b)


def epoch_updates(strategy, ds, monkeypatch):
    """Run one epoch of ``strategy`` on an MLP; return the per-domain batches of every update, and the context."""
    cls = type(strategy)
    seen = []
    real = cls.round
    monkeypatch.setattr(
        cls, "round", lambda self, ctx, batches, g: (seen.append(batches), real(self, ctx, batches, g))[1]
    )
    ctx = context(mlp(ds), ds)
    strategy.setup(ctx)
    strategy.run_epoch(ctx, 0)
    return seen, ctx


# ------------------------------------------------------------------------------------ all five
@pytest.mark.parametrize("name", NAMES)
def test_learns_on_any_model_through_the_trainer(tiny_dataset, name):
    model = mlp(tiny_dataset)
    trainer = Trainer(model, tiny_dataset, cfg(name, strategy_options=LEARNING_OPTIONS.get(name, {})))
    before = trainer.evaluate("val")
    trainer.fit()
    after = trainer.evaluate("val")
    losses = [h["train_loss"] for h in trainer.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert after["logloss_overall"] < before["logloss_overall"] - 0.01
    assert after["auc_overall"] > 0.55
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.samples >= len(tiny_dataset.splits["train"])  # throughput counts the training rows used


def test_all_registered_and_bad_options_name_the_field():
    assert set(NAMES) <= set(list_strategies())
    for name in NAMES:
        create_strategy(name)  # defaults are valid


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("weighted_loss", {"log_var_lr": 0.0}, "log_var_lr"),
        ("pcgrad", {"reduction": "max"}, "reduction"),
        ("maml", {"inner_steps": -1}, "inner_steps"),
        ("maml", {"inner_lr": -0.1}, "inner_lr"),
        ("reptile", {"outer_lr": 1.5}, "outer_lr"),
        ("reptile", {"inner_steps": 0}, "inner_steps"),
        ("reptile", {"inner_optimizer": "adam"}, "inner_optimizer"),
        ("mldg", {"beta": -1.0}, "beta"),
        ("mldg", {"meta_test_domains": 0}, "meta_test_domains"),
    ],
)
def test_bad_option_raises_config_error(name, options, field):
    with pytest.raises(ConfigError, match=f"train.strategy_options.{field}"):
        create_strategy(name, options)


@pytest.mark.parametrize("name", NAMES)
def test_rounds_hold_every_domain_and_an_epoch_is_one_pass_of_the_largest(tiny_dataset, monkeypatch, name):
    strategy = create_strategy(name, {"sampling": "rounds"} if name in MIXED else {})
    seen, _ctx = epoch_updates(strategy, tiny_dataset, monkeypatch)
    counts = torch.bincount(tiny_dataset.domain[tiny_dataset.splits["train"]]).tolist()
    k = strategy.batches_per_domain()
    assert len(seen) == math.ceil(math.ceil(max(counts) / BS) / k)
    for batches in seen:
        assert sorted(batches) == [0, 1, 2]
        for d, bs in batches.items():
            assert len(bs) == k and all((b.domain == d).all() for b in bs)
    assert len({tuple(b) for b in seen}) > 1 or len(seen) == 1  # the domain order is drawn per round


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_parameters(tiny_dataset, name):
    a, b = mlp(tiny_dataset), mlp(tiny_dataset)
    Trainer(a, tiny_dataset, cfg(name, max_epochs=1)).fit()
    Trainer(b, tiny_dataset, cfg(name, max_epochs=1)).fit()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_grad_clip_bounds_the_update(tiny_dataset, name):
    model = mlp(tiny_dataset)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    strategy = create_strategy(name)
    ctx = context(model, tiny_dataset, torch.optim.SGD(model.parameters(), lr=1.0), grad_clip=1e-3)
    strategy.setup(ctx)
    k = strategy.batches_per_domain()
    strategy.round(
        ctx,
        {d: [domain_batch(tiny_dataset, d, i * BS) for i in range(k)] for d in range(3)},
        torch.Generator().manual_seed(0),
    )
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before
    cfg_ = strategy.config
    # Reptile: inner_steps clipped steps of the optimiser (lr 1) per domain, averaged, times outer_lr
    bound = 1e-3 * (cfg_.inner_steps * cfg_.outer_lr if name == "reptile" else 1.0)
    assert 0 < moved.norm() <= bound * 1.001


def test_a_step_keeps_gradients_only_on_what_its_optimiser_updates(tiny_dataset, monkeypatch):
    model = mlp(tiny_dataset)
    head = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    tables = [p for n, p in model.named_parameters() if n.startswith("embeddings.")]
    ctx = context(model, tiny_dataset, grad_clip=1e-3)
    batch = domain_batch(tiny_dataset, 0)
    ctx.step(batch)  # the context's optimiser holds every parameter
    assert all(p.grad is not None for p in model.parameters())
    clipped = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, *args, **kwargs):
        clipped.append(list(parameters))
        return real(clipped[-1], *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    ctx.step(batch, torch.optim.SGD(head, lr=0.1))
    assert [id(p) for p in clipped[0]] == [id(p) for p in head]  # only the updated ones count in the norm
    assert all(p.grad is None for p in tables) and all(p.grad is not None for p in head)


# ------------------------------------------------------------------------------------ pcgrad
def test_pcgrad_projects_conflicting_pair_to_orthogonal_and_leaves_others():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = project_conflicting(g)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert out[0] @ g[1] == pytest.approx(0) and out[1] @ g[0] == pytest.approx(0)
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(project_conflicting(agreeing), agreeing)


def test_pcgrad_projects_onto_the_original_gradients_in_a_random_order():
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 2.0, 0.0], [-1.0, -1.0, 3.0]])  # every pair conflicts

    def manual(i, order):
        v = g[i].clone()
        for j in order:
            if v @ g[j] < 0:
                v = v - (v @ g[j]) / (g[j] @ g[j]) * g[j]
        return v

    outcomes = set()
    for seed in range(8):
        out = project_conflicting(g, torch.Generator().manual_seed(seed))
        for i in range(3):
            j, k = [o for o in range(3) if o != i]
            options = [manual(i, [j, k]), manual(i, [k, j])]
            hit = [n for n, v in enumerate(options) if torch.allclose(out[i], v)]
            assert hit, f"row {i} {out[i]} is neither order's projection {options}"
            outcomes.add((i, hit[0]))
    assert outcomes == {(i, n) for i in range(3) for n in (0, 1)}  # every order occurs


def test_pcgrad_with_a_single_domain_is_an_ordinary_step(tiny_dataset):
    a = mlp(tiny_dataset)
    b = copy.deepcopy(a)
    batch = domain_batch(tiny_dataset, 1)
    ctx = context(a, tiny_dataset, torch.optim.Adam(a.parameters(), lr=1e-2))
    stats = create_strategy("pcgrad").round(ctx, {1: [batch]}, torch.Generator())
    context(b, tiny_dataset, torch.optim.Adam(b.parameters(), lr=1e-2)).step(batch)
    assert_params_close(a, b)
    assert stats["conflict_rate"] == 0.0 and ctx.samples_seen == len(batch)


# ------------------------------------------------------------------------------------ maml
@pytest.mark.parametrize("options", [{"inner_steps": 0}, {"inner_lr": 0.0}])
def test_maml_without_adaptation_is_the_plain_query_gradient(tiny_dataset, options):
    a = mlp(tiny_dataset)
    b = copy.deepcopy(a)
    support, query = domain_batch(tiny_dataset, 0), domain_batch(tiny_dataset, 0, BS)
    create_strategy("maml", options).round(context(a, tiny_dataset), {0: [support, query]}, torch.Generator())
    context(b, tiny_dataset).step(query)
    assert_params_close(a, b)


def test_maml_meta_gradient_first_and_second_order(tiny_dataset):
    theta = mlp(tiny_dataset)
    support, query = domain_batch(tiny_dataset, 2), domain_batch(tiny_dataset, 2, BS)
    adapted = copy.deepcopy(theta)
    sgd_steps(adapted, tiny_dataset, [support], lr=0.5)
    adapted.zero_grad()
    BinaryTask().losses(adapted(query), query)["loss"].backward()
    # first order: the query gradient at θ' = θ - α ∇L_support(θ), applied at θ (outer SGD lr 0.1)
    expected = [p.detach() - 0.1 * a.grad for p, a in zip(theta.parameters(), adapted.parameters())]

    fo, so = theta, copy.deepcopy(theta)
    opts = {"inner_lr": 0.5, "inner_steps": 1}
    create_strategy("maml", {**opts, "first_order": True}).round(
        context(fo, tiny_dataset), {2: [support, query]}, torch.Generator()
    )
    assert_params_close(params(fo), expected)
    create_strategy("maml", {**opts, "first_order": False}).round(
        context(so, tiny_dataset), {2: [support, query]}, torch.Generator()
    )
    diff = max(float((x - y).abs().max()) for x, y in zip(params(fo), params(so)))
    assert diff > 1e-5  # the second-order (Hessian) term is not zero
    # second order: the meta-gradient is (I - α H_support(θ)) ∇L_query(θ'), H·v by double backward
    start = mlp(tiny_dataset)  # θ again (``theta`` itself has moved)
    g_query = [a.grad for a in adapted.parameters()]
    g_support = torch.autograd.grad(
        BinaryTask().losses(start(support), support)["loss"], list(start.parameters()), create_graph=True
    )
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(g_support, g_query)), list(start.parameters()))
    second = [p.detach() - 0.1 * (gq - 0.5 * h) for p, gq, h in zip(start.parameters(), g_query, hvp)]
    assert_params_close(params(so), second)


def test_maml_keeps_the_model_at_the_meta_parameters_and_averages_domains(tiny_dataset):
    a = mlp(tiny_dataset)
    b = copy.deepcopy(a)
    batches = {d: [domain_batch(tiny_dataset, d), domain_batch(tiny_dataset, d, BS)] for d in (0, 1)}
    create_strategy("maml", {"inner_steps": 0}).round(context(a, tiny_dataset), batches, torch.Generator())
    b.zero_grad()
    sum(BinaryTask().losses(b(q), q)["loss"] for _, q in batches.values()).div(2).backward()
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    assert_params_close(a, b)


# ------------------------------------------------------------------------------------ reptile
def test_reptile_with_outer_lr_one_and_one_domain_is_inner_sgd(tiny_dataset):
    a = mlp(tiny_dataset)
    b = copy.deepcopy(a)
    batches = [domain_batch(tiny_dataset, 0, i * BS) for i in range(3)]
    reptile = create_strategy("reptile", {"inner_optimizer": "sgd", "inner_steps": 3, "inner_lr": 0.3, "outer_lr": 1.0})
    reptile.round(context(a, tiny_dataset), {0: batches}, torch.Generator())
    sgd_steps(b, tiny_dataset, batches, lr=0.3)
    assert_params_close(a, b)


def test_reptile_interpolates_towards_the_mean_of_independent_inner_runs(tiny_dataset):
    theta = mlp(tiny_dataset)
    batches = {d: [domain_batch(tiny_dataset, d, i * BS) for i in range(2)] for d in (2, 0)}
    runs = []
    for domain_batches in batches.values():
        run = copy.deepcopy(theta)
        sgd_steps(run, tiny_dataset, domain_batches, lr=0.3)  # every domain starts from the same θ
        runs.append(params(run))
    start = params(theta)
    reptile = create_strategy(
        "reptile", {"inner_optimizer": "sgd", "inner_steps": 2, "inner_lr": 0.3, "outer_lr": 0.25}
    )
    reptile.round(context(theta, tiny_dataset), batches, torch.Generator())
    expected = [t + 0.25 * ((r0 - t) + (r1 - t)) / 2 for t, r0, r1 in zip(start, *runs)]
    assert_params_close(params(theta), expected)


def test_reptile_default_inner_loop_is_the_configured_optimiser_and_restarts_from_theta(tiny_dataset):
    """inner_optimizer="train": ordinary optimiser steps per domain, θ restored between domains."""
    a = mlp(tiny_dataset)
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    batches = [domain_batch(tiny_dataset, 0, i * BS) for i in range(3)]
    reptile = create_strategy("reptile", {"inner_steps": 3, "outer_lr": 1.0})
    reptile.round(context(a, tiny_dataset, torch.optim.Adam(a.parameters(), lr=1e-2)), {0: batches}, torch.Generator())
    ctx_b = context(b, tiny_dataset, torch.optim.Adam(b.parameters(), lr=1e-2))
    for batch in batches:
        ctx_b.step(batch)
    assert_params_close(a, b)  # one domain, outer_lr 1: exactly the optimiser's inner steps
    two = {0: batches[:1], 1: [domain_batch(tiny_dataset, 1)]}
    start = params(c)
    ctx_c = context(c, tiny_dataset, torch.optim.SGD(c.parameters(), lr=0.1))
    create_strategy("reptile", {"inner_steps": 1, "outer_lr": 0.5}).round(ctx_c, two, torch.Generator())
    runs = []
    for bs in two.values():  # each domain from the same θ with plain SGD (no state): independent runs
        run = copy.deepcopy(mlp(tiny_dataset))
        sgd_steps(run, tiny_dataset, bs, lr=0.1)
        runs.append(params(run))
    expected = [t + 0.5 * ((r0 - t) + (r1 - t)) / 2 for t, r0, r1 in zip(start, *runs)]
    assert_params_close(params(c), expected)
    assert ctx_c.samples_seen == sum(len(b[0]) for b in two.values())


def test_reptile_with_outer_lr_zero_does_not_move(tiny_dataset):
    model = mlp(tiny_dataset)
    start = params(model)
    Trainer(model, tiny_dataset, cfg("reptile", max_epochs=1, strategy_options={"outer_lr": 0.0})).fit()
    for x, y in zip(start, model.parameters()):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------------------ mldg
def test_mldg_with_beta_zero_is_an_ordinary_step_on_the_meta_train_loss(tiny_dataset):
    a = mlp(tiny_dataset)
    b = copy.deepcopy(a)
    b0, b1 = domain_batch(tiny_dataset, 0), domain_batch(tiny_dataset, 1)
    ctx = context(a, tiny_dataset, torch.optim.Adam(a.parameters(), lr=1e-2))
    # the round's order is (1, 0): domain 1 is the meta-test domain, domain 0 the meta-train one
    stats = create_strategy("mldg", {"beta": 0.0}).round(ctx, {1: [b1], 0: [b0]}, torch.Generator())
    context(b, tiny_dataset, torch.optim.Adam(b.parameters(), lr=1e-2)).step(b0)
    assert_params_close(a, b)
    assert stats["loss"] == pytest.approx(stats["meta_train"]) and stats["meta_test"] > 0


def test_mldg_meta_test_term_changes_the_update(tiny_dataset):
    batches = {1: [domain_batch(tiny_dataset, 1)], 0: [domain_batch(tiny_dataset, 0)]}
    results = []
    for options in ({"beta": 0.0}, {"beta": 1.0}, {"beta": 1.0, "first_order": True}):
        model = mlp(tiny_dataset)
        create_strategy("mldg", options).round(context(model, tiny_dataset), batches, torch.Generator())
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert not torch.allclose(results[0], results[1]) and not torch.allclose(results[1], results[2])


def test_mldg_needs_two_domains_and_a_meta_train_domain(tiny_dataset):
    ctx = context(mlp(tiny_dataset), tiny_dataset)
    ctx.rows = ctx.domain_rows(0)
    with pytest.raises(ValueError, match="at least 2 domains"):
        create_strategy("mldg").setup(ctx)
    with pytest.raises(ValueError, match="meta_test_domains"):
        create_strategy("mldg", {"meta_test_domains": 3}).setup(context(mlp(tiny_dataset), tiny_dataset))


# ------------------------------------------------------------------------------------ weighted loss
def test_weighted_loss_log_variances_learn_and_are_checkpointed(tiny_dataset, tmp_path):
    options = {"log_var_lr": 0.05}
    straight = mlp(tiny_dataset)
    t = Trainer(straight, tiny_dataset, cfg("weighted_loss", strategy_options=options))
    t.fit()
    s_straight = t.strategy.log_vars.detach().clone()
    assert (s_straight.abs() > 1e-2).all()  # they moved from 0
    assert [g.get("name") for g in t.optimizer.param_groups] == [None, LOG_VARS]
    assert t.history[-1]["train_weight_0"] == pytest.approx(math.exp(-float(s_straight[0])))

    first = Trainer(
        mlp(tiny_dataset), tiny_dataset, cfg("weighted_loss", max_epochs=1, strategy_options=options), out_dir=tmp_path
    )
    first.fit()
    s_saved = first.strategy.log_vars.detach().clone()
    checkpoint = load_latest_checkpoint(tmp_path / "checkpoints")
    torch.testing.assert_close(checkpoint["strategy"]["log_vars"], s_saved, rtol=0, atol=0)

    again = Trainer(
        mlp(tiny_dataset, seed=1),
        tiny_dataset,
        cfg("weighted_loss", max_epochs=1, strategy_options=options),
        out_dir=tmp_path,
        resume=True,
    )
    again.fit()  # epoch 1 of 1 is done: only restores
    assert torch.equal(again.strategy.log_vars.detach(), s_saved)

    resumed = mlp(tiny_dataset, seed=1)
    t2 = Trainer(resumed, tiny_dataset, cfg("weighted_loss", strategy_options=options), out_dir=tmp_path, resume=True)
    t2.fit()
    torch.testing.assert_close(t2.strategy.log_vars.detach(), s_straight)
    assert_params_close(resumed, straight)


@pytest.mark.parametrize("name", MIXED)
def test_mixed_sampling_splits_each_mixed_batch_by_domain_once_per_row(tiny_dataset, monkeypatch, name):
    strategy = create_strategy(name)  # sampling="mixed" is the default of the multi-task methods
    assert strategy.config.sampling == "mixed"
    seen, ctx = epoch_updates(strategy, tiny_dataset, monkeypatch)
    train = tiny_dataset.splits["train"]
    assert len(seen) == math.ceil(len(train) / BS)  # one update per mixed batch
    counts = [0, 0, 0]
    for batches in seen:
        assert sum(len(b[0]) for b in batches.values()) <= BS
        for d, (b,) in batches.items():
            assert (b.domain == d).all() and len(b)
            counts[d] += len(b)
    assert counts == torch.bincount(tiny_dataset.domain[train]).tolist()  # every row exactly once
    assert ctx.samples_seen == len(train)


def test_sampling_option_is_checked():
    with pytest.raises(ConfigError, match="train.strategy_options.sampling"):
        create_strategy("pcgrad", {"sampling": "mixd"})


# ------------------------------------------------------------------------------------ options of every strategy
def get_strategy_class(name):
    return type(create_strategy(name))


def _fields(name):
    return dataclasses.fields(get_strategy_class(name).Config)


def test_every_option_of_every_strategy_declares_its_allowed_values():
    for name in list_strategies():
        for f in _fields(name):
            check = field_check(get_strategy_class(name).Config, f.name)
            assert check is not None, f"{name}.{f.name} has no param(...)"


def _bad_values(check):
    """Values of the field's type that its declared check must refuse: one past every bound, a name
    outside the closed set, a non-bool for a flag (inf for an upper bound of inf: a finite number)."""
    if check.choices is not None:
        return ["bogus"]
    if check.rule is not None:
        return [1]
    bad = []
    if check.gt is not None:
        bad.append(check.gt)
    if check.ge is not None:
        bad.append(check.ge - 1)
    if check.le is not None:
        bad.append(check.le + 0.5)
    if check.lt is not None:
        bad.append(check.lt)
    return bad


@pytest.mark.parametrize("name", list_strategies())
def test_a_bad_value_of_every_option_raises_naming_the_option(name):
    for f in _fields(name):
        check = field_check(get_strategy_class(name).Config, f.name)
        values = _bad_values(check)
        assert values, f"{name}.{f.name}: no bad value derived from {check}"
        for value in values:
            with pytest.raises(ConfigError, match=f"^train.strategy_options.{f.name}: "):
                create_strategy(name, {f.name: value})


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("mamdr", {"specific_lr": 1.5}, "specific_lr: 1.5 is not allowed; must be > 0 and <= 1"),  # a rate in (0, 1]
        ("domain_negotiation", {"outer_lr": 0.0}, "outer_lr: 0.0 is not allowed; must be > 0 and <= 1"),
        ("domain_regularization", {"outer_lr": 2.0}, "outer_lr: 2.0 is not allowed; must be > 0 and <= 1"),
        ("reptile", {"outer_lr": -0.1}, "outer_lr: -0.1 is not allowed; must be >= 0 and <= 1"),  # a rate in [0, 1]
        ("mamdr", {"helper_batches": 0}, "helper_batches: 0 is not allowed; must be >= 1"),  # an optional count
        ("alternate_finetune", {"alternate_epochs": 0}, "alternate_epochs: 0 is not allowed; must be >= 1"),  # a count
        ("two_phase", {"pretrain_epochs": -1}, "pretrain_epochs: -1 is not allowed; must be >= 0"),
        ("maml", {"inner_lr": float("nan")}, "inner_lr: nan is not allowed; must be >= 0 and < inf"),  # a finite lr
        ("weighted_loss", {"log_var_lr": float("inf")}, "log_var_lr: inf is not allowed; must be > 0 and < inf"),
        (
            "mamdr",
            {"specific_parameters": "sparse"},
            r"specific_parameters: value 'sparse' is not one of \['all', 'dense'\]",
        ),  # a closed set
        ("dfei_cyclic", {"shuffle_order": "yes"}, "shuffle_order: expected true or false, got 'yes'"),  # a flag
    ],
)
def test_bad_option_messages_name_the_path_the_value_and_what_is_allowed(name, options, message):
    with pytest.raises(ConfigError, match=f"^train.strategy_options.{message}$"):
        create_strategy(name, options)


def test_options_built_directly_are_checked_too():
    from polyrec.training.strategies.frameworks import MAML
    from polyrec.training.strategies.mamdr import MAMDR

    with pytest.raises(ConfigError, match=r"^train.strategy_options.inner_steps: -1 is not allowed; must be >= 0$"):
        MAML(MAML.Config(inner_steps=-1))
    with pytest.raises(ConfigError, match="^train.strategy_options.regularize: 1 is not allowed; must be true or f"):
        MAMDR(MAMDR.Config(regularize=1))
    with pytest.raises(ConfigError, match="specific_parameters: 'sparse' is not allowed; must be one of 'all', 'dense"):
        MAMDR(MAMDR.Config(specific_parameters="sparse"))


def test_a_taken_strategy_name_cannot_be_registered_again():
    from polyrec.training.strategies import Strategy, register_strategy

    taken = r"strategy name 'maml' is already registered by polyrec.training.strategies.frameworks.MAML; "
    with pytest.raises(ValueError, match=taken + r"register .*Impostor under another name"):

        @register_strategy("maml")
        class Impostor(Strategy):
            pass

    assert get_strategy_class("maml").__name__ == "MAML"
