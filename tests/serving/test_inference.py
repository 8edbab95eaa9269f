"""Inference modules (polyrec.serving.inference): single-domain segments, NaN for a broken promise, mixed
batches split by domain, folding, snapshots, and a dynamic batch size under torch.export."""

from __future__ import annotations

import pytest
import torch
from builders import make_batch, make_schema, perturb

from polyrec import create_model
from polyrec.layers.domain import DomainSegments, assume_single_domain, single_domain_assumed
from polyrec.models.adapters import attach_mlora
from polyrec.models.specific import DomainSpecificModel
from polyrec.serving.inference import InferenceModule, export_program, input_specs, predict_mixed

SCHEMA = make_schema(3, domain_name="scenario", user_feature="user")


def built(name: str, variant: str = "") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, SCHEMA)
    if variant == "mlora":
        model = attach_mlora(model, alpha=4)
    elif variant == "mamdr":
        model = DomainSpecificModel(model)
    return perturb(model, scale=0.1).eval()


def test_single_segments_equal_the_general_ones_on_a_single_domain_batch() -> None:
    domain = torch.full((5,), 2)
    general, single = DomainSegments.from_domain(domain), DomainSegments.single(domain)
    assert single.perm is None and general.perm is None and single.inverse is None
    assert torch.equal(single.domains, general.domains) and single.counts == general.counts
    assert torch.equal(single.local, general.local)
    assert not single_domain_assumed()
    with pytest.raises(RuntimeError), assume_single_domain():
        assert single_domain_assumed()
        assert DomainSegments.from_domain(torch.tensor([1, 0])).domains.tolist() == [1]  # the caller's promise
        raise RuntimeError("left by an exception")
    assert not single_domain_assumed()
    assert DomainSegments.from_domain(torch.tensor([1, 0])).domains.tolist() == [0, 1]


@pytest.mark.parametrize(
    "name, variant", [("star", ""), ("mmoe", ""), ("aitm", ""), ("mlp", "mlora"), ("star", "mlora"), ("mlp", "mamdr")]
)
def test_folded_unfolded_and_eager_agree_and_a_mixed_batch_is_split(name, variant) -> None:
    model = built(name, variant)
    folded, unfolded = InferenceModule(model), InferenceModule(model, fold=False)
    assert bool(folded.folded) == (name == "star" or variant in ("mlora", "mamdr"))
    with torch.no_grad():
        for d in range(3):
            batch = make_batch(SCHEMA, 9, seed=d, domains=d)
            ref = model(batch).logits
            torch.testing.assert_close(unfolded(*unfolded.batch_inputs(batch)), ref, rtol=0, atol=0)
            torch.testing.assert_close(folded(*folded.batch_inputs(batch)), ref, rtol=1e-5, atol=1e-6)
        mixed = make_batch(SCHEMA, 12, seed=5, every_domain=True)
        one_call = folded(*folded.batch_inputs(mixed))
        assert torch.equal(torch.isnan(one_call), mixed.domain != mixed.domain[0])
        split = predict_mixed(lambda feed: folded(*feed.values()), folded.named_inputs(mixed))
        torch.testing.assert_close(torch.from_numpy(split), model(mixed).logits, rtol=1e-5, atol=1e-6)


def test_an_exported_program_takes_any_batch_size() -> None:
    model = built("star", "mlora")
    module = InferenceModule(model)
    program = export_program(module).module()
    with torch.no_grad():
        for n in (1, 2, 17):
            batch = make_batch(SCHEMA, n, seed=n, domains=1)
            torch.testing.assert_close(program(*module.batch_inputs(batch)), model(batch).logits, rtol=1e-5, atol=1e-6)


def test_the_module_is_an_eval_snapshot() -> None:
    model = built("mlp").train()
    module = InferenceModule(model)
    module.train()
    assert not module.training and not any(m.training for m in module.modules())
    assert model.training  # the model is not changed
    batch = make_batch(SCHEMA, 6, seed=1, domains=0)
    before = module(*module.batch_inputs(batch))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(module(*module.batch_inputs(batch)), before)
    assert not any(p.requires_grad for p in module.parameters())


def test_inputs_follow_the_schema() -> None:
    schema = make_schema(2, multi=(("tags", 10, 4), ("my genres", 8, 2)), dense=())
    specs = input_specs(schema)
    assert [(s.name, s.shape) for s in specs] == [
        ("sparse", ("batch", 3)),
        ("multi_tags", ("batch", 4)),
        ("multi_my_genres", ("batch", 2)),
        ("domain", ("batch",)),
    ]
    torch.manual_seed(0)
    model = create_model("deepfm", schema).eval()
    module = InferenceModule(model)
    batch = make_batch(schema, 4, domains=1)
    torch.testing.assert_close(module(*module.batch_inputs(batch)), model(batch).logits)
    with pytest.raises(TypeError, match="takes 4 inputs"):
        module(batch.sparse)
