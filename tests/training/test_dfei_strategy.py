"""dfei_cyclic (DFEI Algorithm 1): rounds of one single-domain batch per domain, shared lr / D, the
optimiser the trainer checkpoints, and learning on a tiny synthetic data set."""

import math

import pytest
import torch

from polyrec import TrainConfig, Trainer, create_model
from polyrec.config import from_dict
from polyrec.training.checkpoint import load_latest_checkpoint
from polyrec.training.strategies import TrainContext, create_strategy
from polyrec.training.strategies.dfei import DOMAIN, SHARED

BS = 128


def dfei(ds, seed=0):
    torch.manual_seed(seed)
    return create_model(
        "dfei", ds.schema, embedding_dim=4, shared_units=[16], domain_units=[16], head_units=[8], attention_dim=8
    )


def cfg(**kw):
    base = dict(batch_size=BS, max_epochs=1, patience=0, lr=3e-3, eval_batch_size=2000, strategy="dfei_cyclic")
    base.update(kw)
    return from_dict(TrainConfig, base)


def train_counts(ds):
    rows = ds.splits["train"]
    return torch.bincount(ds.domain[rows], minlength=ds.schema.num_domains).tolist()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_has_shared_group_at_lr_over_d_and_domain_group_at_lr(tiny_dataset, optimizer):
    model = dfei(tiny_dataset)
    trainer = Trainer(model, tiny_dataset, cfg(optimizer=optimizer, weight_decay=1e-4, max_epochs=1))
    configured = trainer.optimizer
    trainer.fit()
    opt = trainer.optimizer  # the trainer checkpoints the optimiser the strategy uses
    assert opt is not configured and type(opt) is type(configured)
    D = tiny_dataset.schema.num_domains
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {SHARED, DOMAIN}
    assert groups[SHARED]["lr"] == pytest.approx(3e-3 / D)
    assert groups[DOMAIN]["lr"] == pytest.approx(3e-3)
    expected = model.parameter_groups()
    assert {id(p) for p in groups[SHARED]["params"]} == {id(p) for p in expected["shared"]}
    assert {id(p) for p in groups[DOMAIN]["params"]} == {id(p) for p in expected["domain"]}
    for key in ("weight_decay", "betas", "momentum"):
        if key in configured.defaults:
            assert groups[SHARED][key] == groups[DOMAIN][key] == configured.defaults[key]
    assert opt.state  # it is the one that stepped


def test_model_without_parameter_groups_is_all_shared(tiny_dataset):
    torch.manual_seed(0)
    model = create_model("mlp", tiny_dataset.schema, embedding_dim=4, hidden_units=[8])
    trainer = Trainer(model, tiny_dataset, cfg())
    trainer.fit()
    (group,) = trainer.optimizer.param_groups
    assert group["name"] == SHARED and group["lr"] == pytest.approx(3e-3 / tiny_dataset.schema.num_domains)
    assert len(group["params"]) == len(list(model.parameters()))


def test_no_shared_lr_scaling_when_disabled(tiny_dataset):
    trainer = Trainer(dfei(tiny_dataset), tiny_dataset, cfg(strategy_options={"scale_shared_lr": False}))
    trainer.fit()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [3e-3, 3e-3]


@pytest.mark.parametrize("epoch_end", ["largest", "smallest"])
def test_every_round_holds_exactly_one_batch_of_each_domain(tiny_dataset, monkeypatch, epoch_end):
    seen: list[torch.Tensor] = []
    real_step = TrainContext.step

    def spy(self, batch, optimizer=None):
        seen.append(batch.domain.clone())
        return real_step(self, batch, optimizer)

    monkeypatch.setattr(TrainContext, "step", spy)
    Trainer(dfei(tiny_dataset), tiny_dataset, cfg(strategy_options={"epoch_end": epoch_end})).fit()
    D = tiny_dataset.schema.num_domains
    counts = train_counts(tiny_dataset)
    batches = [math.ceil(n / BS) for n in counts]
    rounds = max(batches) if epoch_end == "largest" else min(batches)
    assert len(seen) == rounds * D
    domains = []
    for dom in seen:
        assert len(dom.unique()) == 1, "a dfei_cyclic batch mixes domains"
        domains.append(int(dom[0]))
    for r in range(rounds):
        assert domains[r * D : (r + 1) * D] == list(range(D))  # Algorithm 1's d = 1..D
    if epoch_end == "largest":
        # the largest domain's rows are each seen once; a smaller domain restarts its stream
        big = max(range(D), key=lambda d: counts[d])
        assert sum(len(s) for s in seen if int(s[0]) == big) == counts[big]
        small = min(range(D), key=lambda d: counts[d])
        assert sum(len(s) for s in seen if int(s[0]) == small) > counts[small]


def test_shuffled_order_still_one_batch_per_domain_per_round(tiny_dataset, monkeypatch):
    seen = []
    real_step = TrainContext.step
    monkeypatch.setattr(
        TrainContext, "step", lambda self, b, o=None: (seen.append(int(b.domain[0])), real_step(self, b, o))[1]
    )
    Trainer(dfei(tiny_dataset), tiny_dataset, cfg(strategy_options={"shuffle_order": True})).fit()
    D = tiny_dataset.schema.num_domains
    rounds = [seen[i : i + D] for i in range(0, len(seen), D)]
    assert all(sorted(r) == list(range(D)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


def test_training_improves_validation_auc(tiny_dataset):
    model = dfei(tiny_dataset)
    trainer = Trainer(model, tiny_dataset, cfg(max_epochs=6, lr=1e-2, monitor="auc_overall"))
    before = trainer.evaluate("val")["auc_overall"]
    trainer.fit()
    after = trainer.evaluate("val")["auc_overall"]
    assert after > before + 0.05
    assert model.v_initialized.all() and model.v.abs().sum() > 0


def test_resume_equals_uninterrupted_training(tiny_dataset, tmp_path):
    straight = dfei(tiny_dataset)
    Trainer(straight, tiny_dataset, cfg(max_epochs=2)).fit()
    first = dfei(tiny_dataset)
    Trainer(first, tiny_dataset, cfg(max_epochs=1), out_dir=tmp_path).fit()
    saved = load_latest_checkpoint(tmp_path / "checkpoints")["optimizer"]
    assert len(saved["param_groups"]) == 2  # the strategy's optimiser was checkpointed
    resumed = dfei(tiny_dataset)
    trainer = Trainer(resumed, tiny_dataset, cfg(max_epochs=2), out_dir=tmp_path, resume=True)
    trainer.fit()
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="epoch_ends"):
        create_strategy("dfei_cyclic", {"epoch_ends": "largest"})
