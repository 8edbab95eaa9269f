"""MAMDR (Domain Negotiation, Domain Regularization), Alternate + Finetune, and the domain-specific
parameters they train (Θ_d = θ^S + θ^d on any model)."""

import dataclasses

import pytest
import torch

from polyrec import ConfigError, TrainConfig, Trainer, create_model
from polyrec.config import from_dict
from polyrec.experiment import build_model, resolve_config
from polyrec.models.specific import DomainSpecificModel
from polyrec.training.strategies import TrainContext, create_strategy
from polyrec.training.strategies.mamdr import MAMDR, DomainNegotiation, _Passes

BS = 128


def mlp(ds, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])


def cfg(strategy, max_epochs=1, **options):
    return from_dict(
        TrainConfig,
        {
            "batch_size": BS,
            "max_epochs": max_epochs,
            "patience": 0,
            "lr": 3e-3,
            "eval_batch_size": 4000,
            "strategy": strategy,
            "strategy_options": options,
            "precise_norm_stats": False,
        },
    )


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def context(model, ds, config):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    return TrainContext(
        model=model,
        optimizer=opt,
        task=Trainer(model, ds, config).task,
        dataset=ds,
        rows=ds.splits["train"],
        batch_size=config.batch_size,
        sampler="mixed",
        seed=0,
        device=torch.device("cpu"),
    )


# ------------------------------------------------------------------------------------------------ the wrapper
def test_zero_offsets_equal_the_shared_model_and_offsets_act_per_domain(tiny_dataset):
    base = mlp(tiny_dataset)
    model = DomainSpecificModel(base).eval()
    batch = tiny_dataset.batch(tiny_dataset.splits["test"][:300])
    with torch.no_grad():
        # The wrapper runs each domain's rows as their own batch; a BLAS may round a row differently in a
        # batch of another size, so the shared model is held to the same split.
        expected = torch.empty(len(batch))
        for d in batch.domain.unique().tolist():
            rows = torch.nonzero(batch.domain == d).squeeze(1)
            expected[rows] = base(batch.select(rows)).logits
        assert torch.equal(model(batch).logits, expected)
        # an offset on domain 1's output bias moves exactly domain 1's rows, by exactly that much
        name = [n for n in model.specific_names if n.endswith("bias")][-1]
        model.specific[name.replace(".", "__")][1].fill_(0.5)
        got = model(batch).logits
    d1 = batch.domain == 1
    assert d1.any() and (~d1).any()
    torch.testing.assert_close(got[d1], expected[d1] + 0.5)
    assert torch.equal(got[~d1], expected[~d1])
    with model.shared_only(), torch.no_grad():
        torch.testing.assert_close(model(batch).logits, expected, rtol=0, atol=1e-6)  # one batch: rounding only


def test_mixed_batch_equals_each_domain_alone(tiny_dataset):
    model = DomainSpecificModel(mlp(tiny_dataset)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for bank in model.specific.values():
            bank.normal_(0, 0.1)
        rows = tiny_dataset.splits["test"][:400]
        batch = tiny_dataset.batch(rows)
        mixed = model(batch).logits
        for d in range(tiny_dataset.schema.num_domains):
            idx = torch.nonzero(batch.domain == d).squeeze(1)
            torch.testing.assert_close(model(batch.select(idx)).logits, mixed[idx])


def test_offsets_are_saved_not_trained_by_gradients(tiny_dataset):
    model = DomainSpecificModel(mlp(tiny_dataset))
    assert all(not p.requires_grad for p in model.specific.values())
    assert all(k.startswith(("specific.", "model.")) for k in model.state_dict())
    D = tiny_dataset.schema.num_domains
    shared = sum(p.numel() for p in model.model.parameters())
    assert model.num_specific_parameters() == shared
    assert sum(p.numel() for p in model.specific.values()) == D * shared
    dense = DomainSpecificModel(mlp(tiny_dataset), include="dense")
    assert not any(n.startswith("embeddings.") for n in dense.specific_names)
    assert dense.num_specific_parameters() < shared


# ------------------------------------------------------------------------------------------------ DN
def test_dn_with_outer_lr_one_is_the_inner_loop_and_outer_lr_interpolates(tiny_dataset):
    results = {}
    for beta in (1.0, 0.5):
        model = mlp(tiny_dataset)
        start = params(model)
        config = cfg("domain_negotiation", outer_lr=beta)
        ctx = context(model, tiny_dataset, config)
        strategy = create_strategy("domain_negotiation", {"outer_lr": beta})
        strategy.setup(ctx)
        strategy.run_epoch(ctx, 0)
        results[beta] = params(model)
    for k, v0 in start.items():
        if v0.is_floating_point() and k in dict(mlp(tiny_dataset).named_parameters()):
            torch.testing.assert_close(results[0.5][k], v0 + 0.5 * (results[1.0][k] - v0))
    assert any(not torch.equal(results[1.0][k], start[k]) for k in start)


def test_dn_inner_loop_visits_every_domain_in_full_once_per_outer_step(tiny_dataset, monkeypatch):
    seen = []
    real_step = TrainContext.step

    def spy(self, batch, optimizer=None):
        seen.append((int(batch.domain[0]), int((batch.domain != batch.domain[0]).sum()), len(batch)))
        return real_step(self, batch, optimizer)

    monkeypatch.setattr(TrainContext, "step", spy)
    Trainer(mlp(tiny_dataset), tiny_dataset, cfg("domain_negotiation")).fit()
    assert all(mixed == 0 for _, mixed, _ in seen)  # every batch is single-domain
    order = [d for i, (d, _, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != d]
    assert sorted(order) == [0, 1, 2]  # each domain one contiguous pass
    counts = torch.bincount(tiny_dataset.domain[tiny_dataset.splits["train"]]).tolist()
    for d in range(3):
        assert sum(n for dd, _, n in seen if dd == d) == counts[d]


def test_dn_bounded_inner_batches_runs_many_outer_steps(tiny_dataset):
    calls = []
    orig = DomainNegotiation.negotiate

    def count(self, ctx, epoch, passes):
        out = orig(self, ctx, epoch, passes)
        calls.append(len(out))
        return out

    DomainNegotiation.negotiate = count
    try:
        Trainer(mlp(tiny_dataset), tiny_dataset, cfg("domain_negotiation", inner_batches=1)).fit()
    finally:
        DomainNegotiation.negotiate = orig
    largest = max(torch.bincount(tiny_dataset.domain[tiny_dataset.splits["train"]]).tolist())
    steps = -(-largest // BS)
    assert calls == [3 * steps]  # one batch of each of the 3 domains per outer step


# ------------------------------------------------------------------------------------------------ MAMDR
def test_mamdr_dn_leaves_offsets_and_dr_leaves_shared_parameters(tiny_dataset, monkeypatch):
    model = MAMDR().prepare_model(mlp(tiny_dataset))
    trainer = Trainer(model, tiny_dataset, cfg("mamdr"))
    shared_before = [p.detach().clone() for p in model.shared_parameters()]
    snap = {}
    orig = MAMDR.regularize

    def spy(self, ctx, epoch, passes):
        snap["shared"] = [p.detach().clone() for p in model.shared_parameters()]
        snap["offsets"] = [b.detach().clone() for b in model.specific.values()]
        return orig(self, ctx, epoch, passes)

    monkeypatch.setattr(MAMDR, "regularize", spy)
    trainer.fit()
    assert all(torch.count_nonzero(b) == 0 for b in snap["offsets"])  # DN did not touch θ^d
    assert any(not torch.equal(a, b) for a, b in zip(shared_before, snap["shared"]))  # DN moved θ^S
    for a, p in zip(snap["shared"], model.shared_parameters()):  # DR did not move θ^S
        assert torch.equal(a, p)
    for bank in model.specific.values():  # every domain got its own offset
        assert all(torch.count_nonzero(bank[d]) > 0 for d in range(3))


def test_dr_trains_a_copy_on_the_helper_then_the_target_and_moves_the_offset_by_specific_lr(tiny_dataset, monkeypatch):
    """Eqs. 5-8 with one helper: θ^i = γ(θ̃^i − (θ^S + θ^i)), θ̃^i trained on T^j, then on T^i."""
    steps, passes = [], []
    real_step, real_run = TrainContext.step, _Passes.run

    def spy(self, batch, optimizer=None):
        steps.append(int(batch.domain[0]))
        return real_step(self, batch, optimizer)

    def spy_run(self, rows, optimizer, max_batches=None):
        passes.append(int(tiny_dataset.domain[rows[0]]))
        return real_run(self, rows, optimizer, max_batches)

    monkeypatch.setattr(TrainContext, "step", spy)
    monkeypatch.setattr(_Passes, "run", spy_run)
    out = {}
    for gamma in (1.0, 0.25):
        steps.clear()
        passes.clear()
        model = DomainSpecificModel(mlp(tiny_dataset))
        ctx = context(model, tiny_dataset, cfg("mamdr"))
        strategy = create_strategy("mamdr", {"specific_lr": gamma, "helper_domains": 1})
        strategy.setup(ctx)
        shared = [p.detach().clone() for p in model.shared_parameters()]
        strategy.regularize(ctx, 0, _Passes(ctx, 0))
        assert all(torch.equal(a, p) for a, p in zip(shared, model.shared_parameters()))
        out[gamma] = [b.detach().clone() for b in model.specific.values()]
    # the step sequence: for each target (each domain once), a full pass of its helper then of itself
    assert len(passes) == 6 and sorted(passes[1::2]) == [0, 1, 2]
    assert all(h != t for h, t in zip(passes[0::2], passes[1::2]))
    counts = torch.bincount(tiny_dataset.domain[tiny_dataset.splits["train"]]).tolist()
    assert steps == [d for d in passes for _ in range(-(-counts[d] // BS))]
    # each domain had one helper, so its offset is γ times the change of its trained copy: exactly linear in γ
    for full, quarter in zip(out[1.0], out[0.25]):
        assert torch.count_nonzero(full) > 0
        assert torch.equal(quarter, 0.25 * full)


def test_dr_helpers_exclude_the_target_and_honour_k(tiny_dataset):
    g = torch.Generator().manual_seed(0)
    s = MAMDR(from_dict(MAMDR.Config, {"helper_domains": 2}))
    for target in range(3):
        h = s.helpers(target, [0, 1, 2], g)
        assert len(h) == 2 and target not in h and len(set(h)) == 2
    s = MAMDR(from_dict(MAMDR.Config, {"helper_domains": 1, "add_target_domain": True}))
    assert s.helpers(0, [0, 1, 2], g)[-1] == 0
    assert len(MAMDR().helpers(0, [0, 1], g)) == 1  # default min(3, D - 1)


def test_mamdr_checks_its_options_and_its_model(tiny_dataset):
    with pytest.raises(ConfigError, match="outer_lr"):
        create_strategy("mamdr", {"outer_lr": 0.0})
    with pytest.raises(ConfigError, match="specific_lr"):
        create_strategy("mamdr", {"specific_lr": 1.5})
    with pytest.raises(ConfigError, match="inner_batches"):
        create_strategy("domain_negotiation", {"inner_batches": 0})
    with pytest.raises(ConfigError, match="helper_domains is 5.*at most 2"):
        Trainer(MAMDR().prepare_model(mlp(tiny_dataset)), tiny_dataset, cfg("mamdr", helper_domains=5)).fit()
    with pytest.raises(ValueError, match="DomainSpecificModel"):
        Trainer(mlp(tiny_dataset), tiny_dataset, cfg("mamdr")).fit()
    with pytest.raises(ValueError, match="DomainSpecificModel"):
        Trainer(mlp(tiny_dataset), tiny_dataset, cfg("alternate_finetune", alternate_epochs=1)).fit()


@pytest.mark.parametrize(
    "strategy,options",
    [
        ("domain_negotiation", {"outer_lr": 0.5, "inner_batches": 2}),
        ("mamdr", {"outer_lr": 0.5, "inner_batches": 2, "helper_batches": 2, "target_batches": 2}),
        ("mamdr", {"specific_parameters": "dense"}),
        ("domain_regularization", {"helper_domains": 1}),
        ("alternate_finetune", {"alternate_epochs": 2}),
    ],
)
def test_strategies_learn_and_are_deterministic(tiny_dataset, strategy, options):
    runs = []
    for _ in range(2):
        model = create_strategy(strategy, options).prepare_model(mlp(tiny_dataset))
        trainer = Trainer(model, tiny_dataset, cfg(strategy, max_epochs=3, **options))
        trainer.fit()
        runs.append((params(model), trainer.evaluate("test")))
    (p1, m1), (p2, m2) = runs
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert m1["auc_mean"] == m2["auc_mean"] > 0.6
    assert all(torch.isfinite(v).all() for v in p1.values() if v.is_floating_point())


def test_alternate_finetune_trains_only_offsets_after_the_alternate_epochs(tiny_dataset):
    model = DomainSpecificModel(mlp(tiny_dataset))
    ctx = context(model, tiny_dataset, cfg("alternate_finetune", alternate_epochs=1))
    strategy = create_strategy("alternate_finetune", {"alternate_epochs": 1})
    strategy.setup(ctx)
    start = [p.detach().clone() for p in model.shared_parameters()]
    assert strategy.run_epoch(ctx, 0)["phase"] == 1.0
    assert all(torch.count_nonzero(b) == 0 for b in model.specific.values())
    shared = [p.detach().clone() for p in model.shared_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(start, shared))
    assert strategy.run_epoch(ctx, 1)["phase"] == 2.0
    assert all(torch.equal(a, p) for a, p in zip(shared, model.shared_parameters()))
    for bank in model.specific.values():
        assert all(torch.count_nonzero(bank[d]) > 0 for d in range(3))
    assert set(strategy.state_dict()["optimizers"]) == {0, 1, 2}


def test_mamdr_run_resumes_and_loads_through_the_experiment_api(tiny_dataset, synthetic_cfg, tmp_path):
    """build_model wraps the model for the strategy; a checkpoint restores offsets and the DR optimiser."""
    model = MAMDR().prepare_model(mlp(tiny_dataset))
    config = cfg("mamdr", max_epochs=1)
    Trainer(model, tiny_dataset, config, out_dir=tmp_path).fit()
    resumed = MAMDR().prepare_model(mlp(tiny_dataset, seed=5))
    t2 = Trainer(resumed, tiny_dataset, config, out_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    t2.config = dataclasses.replace(config, max_epochs=2)
    t2.fit()
    assert t2.strategy.dr_optimizer.state  # the DR optimiser's moments came back and kept going


def test_build_model_wraps_for_strategies_that_need_specific_parameters(tiny_dataset):
    base = {"data": {}, "model": {"name": "mlp", "embedding_dim": 4, "hidden_units": [8]}}
    plain = build_model(resolve_config({**base, "train": {"strategy": "domain_negotiation"}}), tiny_dataset.schema)
    assert not isinstance(plain, DomainSpecificModel)
    wrapped = build_model(
        resolve_config({**base, "train": {"strategy": "mamdr", "strategy_options": {"specific_parameters": "dense"}}}),
        tiny_dataset.schema,
    )
    assert isinstance(wrapped, DomainSpecificModel) and wrapped.include == "dense"


def test_model_at_strategy_names_a_run_trained_with_that_strategy():
    """``mlp@mamdr``: the model, the strategy, the preset's settings for that strategy, its own results row."""
    from polyrec.experiment import make_config

    c = make_config("ml1m-age7", "mlp@mamdr")
    assert (c.model_name, c.train.strategy, c.display_name) == ("mlp", "mamdr", "mlp@mamdr")
    assert make_config("ml1m-age7", "mlp").display_name == "mlp"
    c = make_config("ml1m-gender", "deepfm+mlora@two_phase")
    assert (c.adapter.kind, c.train.strategy, c.display_name) == ("mlora", "two_phase", "deepfm+mlora@two_phase")
    again = resolve_config(c.to_dict())  # a saved run's config rebuilds the same training
    assert again.train == c.train and again.model_name == "deepfm"
    with pytest.raises(ConfigError, match="asks for strategy 'mamdr' but train.strategy is 'joint'"):
        make_config("ml1m-age7", "mlp@mamdr", overrides=["train.strategy=joint"])
    with pytest.raises(ConfigError, match="train.strategy: unknown strategy 'mamdrr'.*mamdr"):
        make_config("ml1m-age7", "mlp@mamdrr")
    with pytest.raises(ConfigError, match=r"train.strategy_options.outer_lr: 2.0 is not allowed; must be > 0 and <= 1"):
        make_config("ml1m-age7", "mlp@mamdr", overrides=["train.strategy_options.outer_lr=2"])


def test_domain_regularization_is_mamdr_with_alternate_training_of_the_shared_parameters():
    s = create_strategy("domain_regularization")
    assert isinstance(s, MAMDR) and s.config.outer_lr == 1.0 and s.config.regularize
    assert create_strategy("domain_regularization", {"outer_lr": 0.5}).config.outer_lr == 0.5


# ------------------------------------------------------------------------------------------------ gradients
def embedding_parameters(model):
    return [(n, p) for n, p in model.model.named_parameters() if n.startswith("embeddings.")]


@pytest.mark.parametrize(
    "strategy,options",
    [
        ("mamdr", {"specific_parameters": "dense"}),
        ("domain_regularization", {"specific_parameters": "dense"}),
        ("alternate_finetune", {"specific_parameters": "dense", "alternate_epochs": 1}),
    ],
)
def test_phases_that_train_dense_offsets_leave_no_embedding_gradients(tiny_dataset, strategy, options):
    """The embedding tables stay shared while the offsets train: no gradient may pile up on them."""
    s = create_strategy(strategy, options)
    model = s.prepare_model(mlp(tiny_dataset))
    ctx = context(model, tiny_dataset, cfg(strategy, **options))
    s.setup(ctx)
    for epoch in range(2):  # alternate_finetune: epoch 0 Alternate, epoch 1 finetuning
        s.run_epoch(ctx, epoch)
    assert embedding_parameters(model)
    for name, p in embedding_parameters(model):
        assert p.grad is None or not p.grad.any(), f"{name} holds a gradient after the phase that does not train it"
        assert p.requires_grad  # frozen only while the offsets train


def test_grad_clip_norm_counts_only_the_parameters_the_step_updates(tiny_dataset, monkeypatch):
    """With grad_clip on, DR's clipping norm is the norm of the dense parameters' gradients alone."""
    s = create_strategy("mamdr", {"specific_parameters": "dense"})
    model = s.prepare_model(mlp(tiny_dataset))
    ctx = context(model, tiny_dataset, cfg("mamdr"))
    ctx.grad_clip = 1e-3
    s.setup(ctx)
    trained = model.shared_parameters()
    assert len(trained) < len(list(model.model.parameters()))  # the embeddings are not among them
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trained]))
        total = real(parameters, max_norm, *args, **kwargs)
        norms.append((float(total), float(expected)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    s.regularize(ctx, 0, _Passes(ctx, 0))
    assert norms
    for total, expected in norms:
        assert total == pytest.approx(expected, rel=1e-6)


def test_train_specific_freezes_the_parameters_without_offsets_and_restores_them(tiny_dataset):
    model = DomainSpecificModel(mlp(tiny_dataset), include="dense")
    embeddings = [p for _, p in embedding_parameters(model)]
    with model.train_specific(1):
        assert not any(p.requires_grad for p in embeddings)
        assert all(p.requires_grad for p in model.shared_parameters())
    assert all(p.requires_grad for p in embeddings)
    with pytest.raises(RuntimeError, match="boom"), model.train_specific(0):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in embeddings)


def test_alternate_finetune_starts_finetuning_when_early_stopping_ends_alternate(tiny_dataset):
    """By default no epoch count ends the Alternate stage: early stopping does, and finetuning starts from the
    best θ^S, which then stays fixed."""
    model = DomainSpecificModel(mlp(tiny_dataset))
    shared = []
    config = dataclasses.replace(cfg("alternate_finetune", max_epochs=40), patience=1)
    trainer = Trainer(
        model,
        tiny_dataset,
        config,
        callbacks=(lambda r: shared.append([p.detach().clone() for p in model.shared_parameters()]),),
    )
    summary = trainer.fit()
    phases = [r["train_phase"] for r in trainer.history]
    switch = phases.index(2.0)
    assert set(phases[:switch]) == {1.0} and set(phases[switch:]) == {2.0} and summary["stopped_by"] == "early_stopping"
    best = max(i for i in range(switch) if trainer.history[i]["best"])
    assert all(torch.equal(a, b) for a, b in zip(shared[switch], shared[best]))
    assert trainer.strategy.state_dict()["switch_epoch"] == switch


def test_effective_options_resolve_the_data_dependent_defaults():
    assert create_strategy("mamdr").effective_options(7)["helper_domains"] == 3  # min(3, D - 1)
    assert create_strategy("mamdr").effective_options(2)["helper_domains"] == 1
    assert create_strategy("mamdr", {"helper_domains": 2}).effective_options(7)["helper_domains"] == 2
    assert create_strategy("domain_negotiation").effective_options(7) == {"outer_lr": 0.1, "inner_batches": None}


def test_the_trainer_runs_the_strategy_the_model_was_prepared_with_and_refuses_another(tiny_dataset):
    config = cfg("mamdr")
    strategy = create_strategy("mamdr")
    model = strategy.prepare_model(mlp(tiny_dataset))
    assert Trainer(model, tiny_dataset, config, strategy=strategy).strategy is strategy
    with pytest.raises(ValueError, match="is not the one its config names"):
        Trainer(model, tiny_dataset, config, strategy=create_strategy("mamdr", {"outer_lr": 0.5}))
