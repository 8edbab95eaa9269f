"""Trainer, strategies, checkpoints and early stopping on a tiny synthetic data set."""

import json

import pytest
import torch

from polyrec import TrainConfig, Trainer, create_model
from polyrec.config import from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import build_dataset
from polyrec.data.samplers import epoch_batches
from polyrec.training.strategies import create_strategy, list_strategies

DATA = {
    "source": {
        "kind": "synthetic",
        "options": {"n_domains": 3, "n_samples": [1500, 800, 400], "n_users": 200, "n_items": 150, "seed": 3},
    },
    "label": {"column": "label"},
    "domain": {"column": "domain"},
    "features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "dense_0", "kind": "dense"}],
    "user_feature": "user_id",
    "split": {"method": "stratified_domain", "ratios": [0.7, 0.15, 0.15], "seed": 0},
}


@pytest.fixture(scope="module")
def ds():
    return build_dataset(from_dict(DataConfig, DATA), cache=False)


def model_for(ds, name="mlp"):
    torch.manual_seed(0)
    return create_model(name, ds.schema, embedding_dim=4, hidden_units=[16])


def cfg(**kw):
    base = dict(batch_size=256, max_epochs=3, patience=0, lr=3e-3, eval_batch_size=1000)
    base.update(kw)
    return from_dict(TrainConfig, base)


def test_training_improves_validation_auc(ds):
    model = model_for(ds, "star")
    before = Trainer(model, ds, cfg()).evaluate("val")["auc_overall"]
    trainer = Trainer(model, ds, cfg(max_epochs=6, monitor="auc_overall"))
    trainer.fit()
    after = trainer.evaluate("val")["auc_overall"]
    assert after > before + 0.05


@pytest.mark.parametrize(
    "strategy,sampler", [("joint", "mixed"), ("domain_batched", "domain_batched"), ("alternate", "domain_sequential")]
)
def test_strategies_use_their_samplers(ds, strategy, sampler, monkeypatch):
    seen = []
    import polyrec.training.strategies.base as base

    def spy(name, *a, **k):
        seen.append(name)
        return epoch_batches(name, *a, **k)

    monkeypatch.setattr(base, "epoch_batches", spy)
    Trainer(model_for(ds), ds, cfg(strategy=strategy, max_epochs=1)).fit()
    assert seen == [sampler]


def test_unknown_strategy_and_monitor_raise(ds):
    with pytest.raises(KeyError, match="altrenate.*alternate"):
        create_strategy("altrenate")
    with pytest.raises(ValueError, match="monitor: 'acc' is not allowed; must be one of 'auc_mean'"):
        Trainer(model_for(ds), ds, cfg(monitor="acc"))
    assert {"joint", "domain_batched", "alternate"} <= set(list_strategies())


def test_early_stopping_restores_best_weights(ds):
    model = model_for(ds)
    # lr so high that validation gets worse after the first epochs
    trainer = Trainer(model, ds, cfg(max_epochs=20, patience=2, lr=0.3, monitor="logloss_overall"))
    summary = trainer.fit()
    assert summary["epochs"] < 20
    assert summary["epochs"] - 1 - summary["best_epoch"] == 2
    restored = trainer.evaluate("val")["logloss_overall"]
    assert restored == pytest.approx(trainer.best, rel=1e-6)


def test_checkpoint_resume_equals_uninterrupted_training(ds, tmp_path):
    straight = model_for(ds)
    Trainer(straight, ds, cfg(max_epochs=4)).fit()
    first = model_for(ds)
    Trainer(first, ds, cfg(max_epochs=2), out_dir=tmp_path).fit()
    resumed = model_for(ds)
    trainer = Trainer(resumed, ds, cfg(max_epochs=4), out_dir=tmp_path, resume=True)
    assert trainer.epoch == 2
    trainer.fit()
    assert len(trainer.history) == 4
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 5


def test_gradient_clipping_and_optimizers(ds):
    for opt in ("adam", "adamw", "sgd"):
        Trainer(model_for(ds), ds, cfg(optimizer=opt, grad_clip=1.0, max_epochs=1, weight_decay=1e-4)).fit()


def test_trainer_rejects_schema_mismatch(ds):
    other = build_dataset(from_dict(DataConfig, {**DATA, "features": DATA["features"][:2]}), cache=False)
    with pytest.raises(ValueError, match="schema mismatch"):
        Trainer(model_for(other), ds, cfg())


def test_evaluation_reports_per_domain_metrics(ds):
    m = Trainer(model_for(ds), ds, cfg()).evaluate("test")
    assert set(m["auc_per_domain"]) == set(ds.schema.domain.values)
    n = sum(c["n"] for c in m["count_per_domain"].values())
    assert n == len(ds.splits["test"])
    wauc = sum(m["auc_per_domain"][d] * m["count_per_domain"][d]["n"] for d in m["auc_per_domain"]) / n
    assert m["wauc"] == pytest.approx(wauc)
    assert "gauc" in m


def test_unknown_domain_at_evaluation_is_an_error(ds):
    import dataclasses

    bad = dataclasses.replace(ds, domain=ds.domain.clone())
    bad.domain[bad.splits["test"][0]] = 7
    with pytest.raises(ValueError, match="7"):
        Trainer(model_for(ds), bad, cfg()).evaluate("test")


# ------------------------------------------------------------------------------------ the evaluation loop
def test_score_rows_runs_the_rows_in_order_in_batches(ds):
    from polyrec.training.scoring import score_rows
    from polyrec.training.trainer import predict

    model = model_for(ds)
    model.train()
    rows = ds.splits["test"][torch.randperm(len(ds.splits["test"]), generator=torch.Generator().manual_seed(0))]
    seen = []
    scores = score_rows(model, ds, rows, batch_size=97, on_batch=lambda b, logits: seen.append((len(b), logits)))
    assert not model.training  # left in eval mode, as predict and evaluate always have
    assert [n for n, _ in seen] == [97] * (len(rows) // 97) + [len(rows) % 97]
    assert torch.equal(torch.cat([logits for _, logits in seen]), scores.logits)
    assert scores.logits.dtype == torch.float32 and scores.logits.shape == rows.shape
    assert torch.equal(scores.label, ds.label[rows]) and torch.equal(scores.domain, ds.domain[rows])
    assert torch.equal(scores.user, ds.user[rows])
    with torch.no_grad():
        torch.testing.assert_close(scores.logits, model(ds.batch(rows)).logits)  # one batch or many: the same rows
    assert torch.equal(predict(model, ds, rows, batch_size=97), scores.logits)
    empty = score_rows(model, ds, rows[:0])
    assert empty.logits.shape == (0,) and empty.user is None


def test_evaluate_is_an_evaluator_fed_batch_by_batch(ds):
    from polyrec.evaluation.metrics import MultiDomainEvaluator
    from polyrec.training.trainer import evaluate

    model = model_for(ds)
    got = evaluate(model, ds, "val", batch_size=64)
    ev = MultiDomainEvaluator(list(ds.schema.domain.values))
    rows = ds.splits["val"]
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            batch = ds.batch(rows[start : start + 64])
            ev.update(model(batch).logits, batch.label, batch.domain, batch.user)
    assert json.dumps(got.to_dict()) == json.dumps(ev.compute().to_dict())  # the same bytes


def test_epoch_records_keep_their_keys(ds, tmp_path):
    Trainer(model_for(ds), ds, cfg(max_epochs=1, monitor="gauc"), out_dir=tmp_path).fit()
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(record) == [
        "epoch",
        "train_bce",
        "train_loss",
        "val_gauc",
        "val_auc_overall",
        "val_logloss_overall",
        "val_auc_per_domain",
        "epoch_s",
        "recalibration_s",
        "samples_per_s",
        "best",
    ]
    assert list(record["val_auc_per_domain"]) == list(ds.schema.domain.values)


def test_non_finite_validation_logits_are_divergence(ds, monkeypatch):
    from polyrec.training import trainer as trainer_module

    def blown(*a, **k):
        raise ValueError("logits contains 1 non-finite value(s), first at position 0 (value inf)")

    monkeypatch.setattr(trainer_module, "evaluate", blown)
    with pytest.raises(trainer_module.TrainingDiverged, match="epoch 0: training loss .*, validation logloss inf"):
        Trainer(model_for(ds), ds, cfg(max_epochs=1)).fit()


def test_compiled_training_follows_eager_training_and_keeps_the_state_dict(ds, tmp_path):
    """train.compile: the forward runs through torch.compile in place; the weights after an epoch are the
    eager run's within kernel rounding, the state dict keeps its keys, and the checkpoint resumes."""
    eager, compiled = model_for(ds), model_for(ds)
    Trainer(eager, ds, cfg(max_epochs=1)).fit()
    Trainer(compiled, ds, cfg(max_epochs=1, compile="static"), out_dir=tmp_path).fit()
    assert compiled._compiled_call_impl is not None and eager._compiled_call_impl is None  # nn.Module.compile
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for (k, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    assert any(k.startswith("_orig_mod") for k in compiled.state_dict()) is False
    resumed = model_for(ds)
    assert Trainer(resumed, ds, cfg(max_epochs=1, compile="static"), out_dir=tmp_path, resume=True).epoch == 1
    with pytest.raises(ValueError, match="compile"):
        cfg(compile="max-autotune")
