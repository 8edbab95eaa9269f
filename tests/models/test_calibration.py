"""Precise normalisation statistics skip frozen layers (polyrec.training.calibration).

The Trainer recalibrates partitioned norms after every epoch. A frozen norm (all its parameters frozen, or
kept in eval mode by MLoRA's ``freeze_backbone``) must keep its statistics: adding a domain to a trained
STAR + MLoRA model must leave the existing domains' predictions exactly as they were.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import make_batch, make_schema

from polyrec import TrainConfig, Trainer, create_model
from polyrec.config import from_dict
from polyrec.layers.norm import PartitionedNorm
from polyrec.models.adapters import add_domain, attach_mlora
from polyrec.training import calibration
from polyrec.training.calibration import calibration_layers, is_frozen, recompute_norm_statistics
from polyrec.training.strategies.two_phase import finetune_new_domains
from polyrec.training.trainer import predict


@pytest.fixture
def trainer_uses_calibration(monkeypatch):
    """Make the Trainer recalibrate with :mod:`polyrec.training.calibration` (a no-op once it imports it)."""
    from polyrec.training import trainer

    monkeypatch.setattr(trainer, "recompute_norm_statistics", calibration.recompute_norm_statistics, raising=False)


class Rows:
    """The minimal dataset interface recompute_norm_statistics uses: ``batch(index)``."""

    def __init__(self, batch):
        self.b = batch

    def batch(self, idx):
        return self.b.select(idx)


def star(**kw):
    torch.manual_seed(0)
    return create_model("star", make_schema(), embedding_dim=4, hidden_units=[8, 4], norm_hidden=True, **kw)


def stats(model):
    return {k: v.clone() for k, v in model.named_buffers() if "running" in k}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_norm_of_a_trainable_model_is_recalibrated():
    model = star()
    before = stats(model)
    assert len(calibration_layers(model)) == 3
    assert recompute_norm_statistics(model, Rows(make_batch(model.schema, 300, seed=1)), torch.arange(300), 64) == 3
    after = stats(model)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_a_norm_whose_parameters_are_all_frozen_keeps_its_statistics():
    model = star()
    for p in model.hidden_norms[0].parameters():
        p.requires_grad_(False)
    assert is_frozen(model.hidden_norms[0]) and not is_frozen(model.pn)
    before = stats(model)
    assert recompute_norm_statistics(model, Rows(make_batch(model.schema, 300, seed=1)), torch.arange(300), 64) == 2
    after = stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("hidden_norms.0."))
    assert not torch.equal(before["pn.running_mean"], after["pn.running_mean"])
    # One frozen parameter among trainable ones does not freeze the layer.
    model.pn.gamma.requires_grad_(False)
    assert not is_frozen(model.pn)


def test_norms_kept_in_eval_mode_by_mlora_keep_their_statistics_and_the_mode_is_restored():
    adapted = attach_mlora(star(), alpha=2)
    adapted.freeze_backbone(freeze_norm_stats=True)
    for p in adapted.backbone_parameters():  # kept in eval mode even with trainable parameters
        p.requires_grad_(True)
    assert calibration_layers(adapted) == []
    before = stats(adapted)
    adapted.train()
    batch = make_batch(adapted.schema, 200, seed=2)
    assert recompute_norm_statistics(adapted, Rows(batch), torch.arange(200), 64) == 0
    assert same(before, stats(adapted)) and adapted.training
    adapted.unfreeze_backbone()
    assert len(calibration_layers(adapted)) == 3


def test_a_layer_without_parameters_is_not_frozen():
    class Stats(torch.nn.Module):
        def begin_calibration(self):  # pragma: no cover - only its presence matters here
            pass

    assert not is_frozen(Stats())
    assert is_frozen(PartitionedNorm(3, 2).requires_grad_(False))


def test_a_failed_pass_leaves_no_calibration_running():
    model = star()

    class Broken(Rows):
        def batch(self, idx):
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        recompute_norm_statistics(model, Broken(None), torch.arange(10))
    assert all(getattr(m, "_calib", None) is None for m in model.modules())


def test_adding_a_domain_to_star_mlora_keeps_existing_predictions_bit_identical(tiny_dataset, trainer_uses_calibration):
    torch.manual_seed(0)
    backbone = create_model("star", tiny_dataset.schema, embedding_dim=4, hidden_units=[16, 8], norm_hidden=True)
    model = attach_mlora(backbone, alpha=4)
    train = {"batch_size": 256, "max_epochs": 1, "patience": 0, "lr": 1e-2, "precise_norm_stats": True}
    Trainer(model, tiny_dataset, from_dict(TrainConfig, train)).fit()  # backbone and adapters, stats calibrated
    rows = tiny_dataset.splits["test"]
    before = predict(model, tiny_dataset, rows)
    stats_before = stats(model)

    add_domain(model, "late")  # computed by the backbone as domain 0
    # The new domain's rows: every row relabelled (its schema gains "late").
    new = dataclasses.replace(tiny_dataset, schema=model.schema, domain=torch.full_like(tiny_dataset.domain, 3))
    finetune_new_domains(model, new, from_dict(TrainConfig, {**train, "max_epochs": 2}), first=3)

    assert torch.equal(predict(model, tiny_dataset, rows), before)
    assert same(stats_before, stats(model))  # the frozen backbone's statistics, domain 0's included
    assert any(b.B[3].abs().sum() > 0 for b in model.banks())  # the new domain did learn
