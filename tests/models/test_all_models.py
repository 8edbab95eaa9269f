"""The model contract, checked for every registered model (walks ``polyrec.list_models()``, no special cases).

A model that joins the registry is tested from that moment: default construction from a schema, logits of
shape [B], finite values and gradients, training reduces the loss, mixed- and single-domain batches, eval
predictions independent of the batch a row is in, state_dict round trip, strict config, and rejection of an
unknown domain index.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import make_batch, make_schema
from torch import nn

import polyrec
from polyrec import Batch, ConfigError, DatasetSchema, ModelOutput, create_model
from polyrec.models import describe_model

NUM_DOMAINS = 3
# The ranking models (the two-tower retrieval models have their own contract: tests/retrieval/test_models.py).
MODELS = [m for m in polyrec.list_models() if "retrieval" not in polyrec.models.model_tags(m)]


def tiny_schema() -> DatasetSchema:
    return make_schema(NUM_DOMAINS, domain_name="scenario", user_feature="user")


def tiny_batch(n: int = 48, seed: int = 0, domain: int | None = None) -> Batch:
    """Every domain present, in an interleaved order (a mixed-domain batch), unless ``domain`` is given."""
    return make_batch(tiny_schema(), n, seed, domains=domain, every_domain=True)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, tiny_schema())


def loss_of(model, batch: Batch) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model(batch).logits, batch.label)


def fit(model, batch: Batch, steps: int = 5, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_is_not_empty() -> None:
    assert {"mlp", "star"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_returns_finite_logits_of_shape_b(name: str) -> None:
    model = build(name)
    batch = tiny_batch()
    model.check_batch(batch)
    for mode in (True, False):
        model.train(mode)
        out = model(batch)
        assert isinstance(out, ModelOutput)
        assert out.logits.shape == (len(batch),)
        assert out.logits.dtype == torch.float32
        assert torch.isfinite(out.logits).all()
        for key, value in out.aux_losses.items():
            assert value.dim() == 0 and torch.isfinite(value), key


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients_and_training_reduces_the_loss(name: str) -> None:
    model = build(name)
    batch = tiny_batch()
    model.train()
    loss_of(model, batch).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, f"{name}: no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradient"
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: every gradient is zero"
    model.zero_grad()
    losses = fit(model, batch, steps=8)
    model.train()
    with torch.no_grad():
        final = float(loss_of(model, batch))
    assert final < losses[0], f"{name}: loss did not decrease ({losses[0]:.4f} -> {final:.4f})"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("domain", [None, 0, NUM_DOMAINS - 1])
def test_mixed_and_single_domain_batches(name: str, domain: int | None) -> None:
    model = build(name)
    batch = tiny_batch(24, seed=3, domain=domain)
    model.train()
    logits = model(batch).logits
    assert logits.shape == (24,) and torch.isfinite(logits).all()
    logits.sum().backward()
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
    assert logits.shape == (24,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_eval_prediction_of_a_row_does_not_depend_on_its_batch(name: str) -> None:
    model = build(name)
    fit(model, tiny_batch(64, seed=1), steps=3)  # move batch-norm statistics and banks off their init
    model.eval()
    batch = tiny_batch(40, seed=2)
    with torch.no_grad():
        full = model(batch).logits
        head = model(batch.select(torch.arange(7))).logits
        reversed_ = model(batch.select(torch.arange(39, -1, -1))).logits
    torch.testing.assert_close(head, full[:7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reversed_, full.flip(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_gives_identical_eval_logits(name: str) -> None:
    model = build(name, seed=0)
    fit(model, tiny_batch(64, seed=1), steps=3)
    model.eval()
    fresh = build(name, seed=123)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    batch = tiny_batch(32, seed=4)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, fresh(batch).logits)


@pytest.mark.parametrize("name", MODELS)
def test_check_batch_rejects_a_domain_outside_the_schema(name: str) -> None:
    model = build(name)
    batch = tiny_batch(8)
    model.check_batch(batch)
    batch.domain[3] = NUM_DOMAINS
    with pytest.raises(ValueError, match="domain"):
        model.check_batch(batch)
    batch.domain[3] = -1
    with pytest.raises(ValueError, match="domain"):
        model.check_batch(batch)


@pytest.mark.parametrize("name", MODELS)
def test_config_is_strict_frozen_and_described(name: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        create_model(name, tiny_schema(), bogus=1)
    cls = polyrec.models.get_model_class(name)
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    info = describe_model(name)
    assert info["summary"], f"{name}: the class docstring needs a one-line summary"
    assert isinstance(info["defaults"], dict)
    # The model remembers the config it was built with, and the defaults reproduce the default model.
    assert build(name).config == cls.Config()


@pytest.mark.parametrize("name", MODELS)
def test_runs_on_data_encoded_by_the_pipeline(name: str, tiny_dataset) -> None:
    # The shared fixture from tests/conftest.py: real encoder output (OOV ids, the domain as a feature,
    # padded multi-valued ids, min-max scaled dense values).
    torch.manual_seed(0)
    model = create_model(name, tiny_dataset.schema)
    batch = tiny_dataset.batch(tiny_dataset.splits["train"][:96])
    model.check_batch(batch)
    model.train()
    loss_of(model, batch).backward()
    model.eval()
    with torch.no_grad():
        logits = model(tiny_dataset.batch(tiny_dataset.splits["test"][:64])).logits
    assert logits.shape == (64,) and torch.isfinite(logits).all()
