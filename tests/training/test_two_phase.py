"""two_phase (MLoRA §3.3): the backbone learns in phase 1 with the adapters untouched, then only the adapters
learn with the backbone (and its normalisation statistics) bit-for-bit frozen; resume continues the phase."""

import pytest
import torch

from polyrec import TrainConfig, Trainer, create_model
from polyrec.config import ConfigError, from_dict
from polyrec.models.adapters import attach_mlora
from polyrec.training import calibration


@pytest.fixture
def trainer_uses_calibration(monkeypatch):
    """Make the Trainer recalibrate with :mod:`polyrec.training.calibration` (a no-op once it imports it)."""
    from polyrec.training import trainer

    monkeypatch.setattr(trainer, "recompute_norm_statistics", calibration.recompute_norm_statistics, raising=False)


def adapted(ds, name="mlp", seed=0, **kw):
    torch.manual_seed(seed)
    return attach_mlora(create_model(name, ds.schema, embedding_dim=4, hidden_units=[16, 8], **kw), alpha=4)


def cfg(**kw):
    base = dict(
        batch_size=256,
        max_epochs=2,
        patience=0,
        lr=1e-2,
        eval_batch_size=4096,
        strategy="two_phase",
        strategy_options={"pretrain_epochs": 1},
    )
    base.update(kw)
    return from_dict(TrainConfig, base)


def snapshot(params):
    return [p.detach().clone() for p in params]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name,kw", [("mlp", {"norm": "batch"}), ("star", {})])
def test_phase_one_trains_backbone_phase_two_only_adapters(tiny_dataset, name, kw):
    model = adapted(tiny_dataset, name, **kw)
    trainer = Trainer(model, tiny_dataset, cfg(max_epochs=1))
    back0, ada0 = snapshot(model.backbone_parameters()), snapshot(model.adapter_parameters())
    trainer.fit()  # epoch 0: phase 1
    back1, ada1 = snapshot(model.backbone_parameters()), snapshot(model.adapter_parameters())
    assert not same(back0, back1) and same(ada0, ada1)
    assert trainer.history[-1]["train_phase"] == 1.0
    buffers1 = {k: v.clone() for k, v in model.backbone.named_buffers()}
    assert any("running" in k for k in buffers1)

    trainer.config = from_dict(TrainConfig, {**cfg().__dict__, "max_epochs": 2})
    trainer.fit()  # epoch 1: phase 2
    assert trainer.history[-1]["train_phase"] == 2.0
    assert same(back1, snapshot(model.backbone_parameters()))  # frozen backbone: bit-for-bit unchanged
    assert not same(ada1, snapshot(model.adapter_parameters()))  # adapters learned
    for k, v in model.backbone.named_buffers():  # normalisation statistics frozen too
        assert torch.equal(v, buffers1[k]), k
    assert all(not p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.adapter_parameters())


def test_phase_two_keeps_the_hidden_partitioned_norm_statistics_of_star(tiny_dataset, trainer_uses_calibration):
    # Phase 2 changes the inputs of STAR's hidden norms (the adapters act on the star layers before them);
    # precise normalisation statistics must not recalibrate the frozen norms on those inputs.
    model = adapted(tiny_dataset, "star", norm_hidden=True)
    trainer = Trainer(model, tiny_dataset, cfg(max_epochs=1, precise_norm_stats=True))
    trainer.fit()  # epoch 0: phase 1, statistics recalibrated
    norms = model.backbone.hidden_norms
    phase_one = [(n.running_mean.clone(), n.running_var.clone()) for n in norms]
    assert any(not torch.equal(m, torch.zeros_like(m)) for m, _ in phase_one)

    trainer.config = from_dict(TrainConfig, {**cfg().__dict__, "max_epochs": 3, "precise_norm_stats": True})
    trainer.fit()  # epochs 1-2: phase 2
    assert [r["train_phase"] for r in trainer.history] == [1.0, 2.0, 2.0]
    for norm, (mean, var) in zip(norms, phase_one):
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)


def test_resume_in_phase_two_keeps_backbone_frozen(tiny_dataset, tmp_path):
    model = adapted(tiny_dataset)
    Trainer(model, tiny_dataset, cfg(max_epochs=2), out_dir=tmp_path).fit()
    resumed_model = adapted(tiny_dataset, seed=5)
    trainer = Trainer(resumed_model, tiny_dataset, cfg(max_epochs=3), out_dir=tmp_path, resume=True)
    assert trainer.epoch == 2
    back = snapshot(resumed_model.backbone_parameters())
    trainer.fit()
    assert [r["train_phase"] for r in trainer.history] == [1.0, 2.0, 2.0]
    # best weights restored at the end may be an earlier epoch's; the backbone is phase 1's either way
    assert same(back, snapshot(resumed_model.backbone_parameters()))
    assert trainer.optimizer.state  # the optimiser in use is the checkpointed one, with its state


def test_pretrain_epochs_zero_trains_adapters_from_the_start(tiny_dataset):
    model = adapted(tiny_dataset)
    back, ada = snapshot(model.backbone_parameters()), snapshot(model.adapter_parameters())
    Trainer(model, tiny_dataset, cfg(max_epochs=1, strategy_options={"pretrain_epochs": 0})).fit()
    assert same(back, snapshot(model.backbone_parameters()))
    assert not same(ada, snapshot(model.adapter_parameters()))


def test_two_phase_needs_adapters_and_valid_options(tiny_dataset):
    torch.manual_seed(0)
    plain = create_model("mlp", tiny_dataset.schema, embedding_dim=4, hidden_units=[8])
    with pytest.raises(ValueError, match="has none; set adapter.kind=mlora"):
        Trainer(plain, tiny_dataset, cfg(max_epochs=1)).fit()
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        Trainer(adapted(tiny_dataset), tiny_dataset, cfg(strategy_options={"pretrain_epochs": -1}))
    with pytest.raises(ConfigError, match="unknown config key 'pretrain'"):
        Trainer(adapted(tiny_dataset), tiny_dataset, cfg(strategy_options={"pretrain": 1}))


# ----------------------------------------------------------------------- phases ended by early stopping


def _auto(**kw):
    """The paper's schedule: no fixed phase 1 length, each phase ended by early stopping (patience 1)."""
    return cfg(**{"max_epochs": 40, "patience": 1, "strategy_options": {}, **kw})


def _timeless(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_s", "recalibration_s", "samples_per_s")} for r in history]


def test_early_stopping_ends_phase_one_and_phase_two_starts_from_the_best_backbone(tiny_dataset):
    model = adapted(tiny_dataset)
    backbones = []
    trainer = Trainer(
        model, tiny_dataset, _auto(), callbacks=(lambda r: backbones.append(snapshot(model.backbone_parameters())),)
    )
    summary = trainer.fit()
    phases = [r["train_phase"] for r in trainer.history]
    switch = phases.index(2.0)
    assert switch >= 2 and set(phases[:switch]) == {1.0} and set(phases[switch:]) == {2.0}
    assert not trainer.history[switch - 1]["best"]  # phase 1 ended because it stopped improving
    assert trainer.strategy.switch_epoch == switch and summary["stopped_by"] == "early_stopping"
    best_one = max(i for i in range(switch) if trainer.history[i]["best"])
    # phase 2 trained adapters on the best phase-1 backbone, not on the last one
    assert same(backbones[switch], backbones[best_one]) and not same(backbones[switch - 1], backbones[best_one])
    assert same(snapshot(model.backbone_parameters()), backbones[best_one])
    assert not trainer.history[-1]["best"] and len(phases) < 40


def test_a_run_interrupted_at_the_phase_change_resumes_bit_identically(tiny_dataset, tmp_path):
    whole = adapted(tiny_dataset)
    reference = Trainer(whole, tiny_dataset, _auto(), out_dir=tmp_path / "whole")
    reference.fit()
    switch = reference.strategy.switch_epoch
    part = adapted(tiny_dataset)
    with pytest.warns(RuntimeWarning, match="before strategy 'two_phase' reached its last stage"):
        Trainer(part, tiny_dataset, _auto(max_epochs=switch), out_dir=tmp_path / "part").fit()
    resumed = Trainer(adapted(tiny_dataset, seed=9), tiny_dataset, _auto(), out_dir=tmp_path / "part", resume=True)
    resumed.fit()
    assert resumed.strategy.switch_epoch == switch
    assert _timeless(resumed.history) == _timeless(reference.history)
    for (k, a), b in zip(whole.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_staged_strategies_need_patience(tiny_dataset):
    with pytest.raises(ConfigError, match="patience: 0 is not allowed; strategy 'two_phase' ends its stages"):
        Trainer(adapted(tiny_dataset), tiny_dataset, _auto(patience=0))
    Trainer(adapted(tiny_dataset), tiny_dataset, cfg(patience=0))  # a fixed phase 1 needs none


def test_max_epochs_ending_an_improving_run_is_warned_about(tiny_dataset):
    torch.manual_seed(0)
    plain = create_model("mlp", tiny_dataset.schema, embedding_dim=4, hidden_units=[8])
    run = from_dict(TrainConfig, {"batch_size": 256, "max_epochs": 1, "patience": 3, "lr": 1e-2})
    with pytest.warns(
        RuntimeWarning,
        match=r"train.max_epochs=1 ended the run while validation auc_mean was still "
        r"improving \(best epoch 0 of 1\)",
    ):
        summary = Trainer(plain, tiny_dataset, run).fit()
    assert summary["stopped_by"] == "max_epochs"
