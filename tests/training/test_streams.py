"""Independent random streams: every strategy's batches are a function of (seed, epoch, purpose), so two
seeds, two epochs or two uses within an epoch never replay one another's shuffles.

The regression this guards against: streams seeded by sums such as ``(seed + epoch) * 1_000_003 + restart``
made seed 1 at epoch 0 see exactly the batches of seed 0 at epoch 1. The tests walk the whole strategy
registry (a strategy that joins it is tested from then on) and record the rows of every batch an epoch
draws.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from polyrec import create_model
from polyrec.data.dataset import EncodedDataset
from polyrec.data.samplers import stream_generator, stream_seed
from polyrec.models.adapters import attach_mlora
from polyrec.training.strategies import TrainContext, create_strategy, list_strategies
from polyrec.training.task import BinaryTask

BS = 200

# Options that make each strategy reach its every stream within two epochs (the defaults otherwise).
OPTIONS: dict[str, dict] = {
    "alternate_finetune": {"alternate_epochs": 1},  # epoch 1 is a finetuning epoch
    "two_phase": {"pretrain_epochs": 1},
    "reptile": {"inner_steps": 2},
}
# Variants whose options switch to another stream (round-based sampling, bounded inner loops).
VARIANTS: list[tuple[str, dict]] = [
    ("weighted_loss", {"sampling": "rounds"}),
    ("pcgrad", {"sampling": "rounds"}),
    ("domain_negotiation", {"inner_batches": 2}),
    ("mamdr", {"inner_batches": 2, "helper_batches": 2, "target_batches": 1, "specific_parameters": "dense"}),
    ("dfei_cyclic", {"shuffle_order": True, "epoch_end": "smallest"}),
]
CASES = [(name, OPTIONS.get(name, {})) for name in list_strategies()] + VARIANTS


def model_for(strategy: str, ds: EncodedDataset) -> torch.nn.Module:
    """A small model the strategy can train: MLoRA adapters for two_phase, DFEI for dfei_cyclic, else an MLP."""
    torch.manual_seed(0)
    if strategy == "two_phase":
        return attach_mlora(create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8]), alpha=4)
    if strategy == "dfei_cyclic":
        return create_model(
            "dfei", ds.schema, embedding_dim=4, shared_units=[8], domain_units=[8], head_units=[8], attention_dim=4
        )
    return create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])


def drawn_rows(name: str, options: dict, ds: EncodedDataset, seed: int, monkeypatch, epochs: int = 2) -> list[list]:
    """The rows of every batch drawn by ``epochs`` epochs of strategy ``name`` at ``seed``, one list per epoch."""
    strategy = create_strategy(name, options)
    model = strategy.prepare_model(model_for(name, ds))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ctx = TrainContext(
        model=model,
        optimizer=opt,
        task=BinaryTask(),
        dataset=ds,
        rows=ds.splits["train"],
        batch_size=BS,
        sampler=strategy.default_sampler,
        seed=seed,
        device=torch.device("cpu"),
    )
    seen: list[tuple[int, ...]] = []
    real = EncodedDataset.batch

    def spy(self, idx):
        seen.append(tuple(idx.tolist()))
        return real(self, idx)

    monkeypatch.setattr(EncodedDataset, "batch", spy)
    strategy.setup(ctx)
    out = []
    for epoch in range(epochs):
        seen.clear()
        strategy.run_epoch(ctx, epoch)
        out.append(list(seen))
    monkeypatch.setattr(EncodedDataset, "batch", real)
    return out


def common(a: list, b: list) -> set:
    """Batches (as sets of rows) that two lists of drawn batches share."""
    return {frozenset(x) for x in a} & {frozenset(x) for x in b}


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'-'.join(o) or 'defaults'}" for n, o in CASES])
def test_streams_repeat_for_a_seed_and_differ_across_seeds_and_epochs(tiny_dataset, monkeypatch, name, options):
    a = drawn_rows(name, options, tiny_dataset, 0, monkeypatch)
    assert all(len(epoch) > 0 for epoch in a)
    assert drawn_rows(name, options, tiny_dataset, 0, monkeypatch) == a  # same seed: the same batches, in order
    b = drawn_rows(name, options, tiny_dataset, 1, monkeypatch)
    # Independent shuffles share no batch of BS (or of a domain's last rows); a replayed stream shares them all.
    assert not common(a[0], b[0]) and not common(a[1], b[1]), "seeds 0 and 1 share batches"
    assert not common(a[0], a[1]), "epochs 0 and 1 share batches"
    assert not common(b[0], a[1]), "seed 1's epoch 0 replays seed 0's epoch 1"
    for epoch in a:  # two passes within an epoch (DR's helper and target passes, a restarted domain) differ
        assert len({frozenset(x) for x in epoch}) == len(epoch), "a batch is drawn twice in one epoch"


def test_every_registered_strategy_is_covered():
    assert {name for name, _ in CASES} == set(list_strategies())


# ------------------------------------------------------------------------------------------------ stream_seed
def test_stream_seed_is_distinct_over_a_grid_of_uses():
    purposes = ["domain_stream", "rounds", "dfei_rounds", "dn_order", "dr_order", "passes", "domain_order"]
    indices = [(), (0,), (1,), (2,), (12,), (0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (12, 3), (1, 23)]
    keys = list(itertools.product(range(4), range(4), purposes, indices))
    seeds = [stream_seed(seed, epoch, purpose, *index) for seed, epoch, purpose, index in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= v < 2**64 for v in seeds)
    # the collisions of the sums it replaces: (seed + epoch) * K + restart, and index digits run together
    assert stream_seed(1, 0, "domain_stream", 0, 0) != stream_seed(0, 1, "domain_stream", 0, 0)
    assert stream_seed(0, 0, "passes", 1, 2) != stream_seed(0, 0, "passes", 12)
    assert stream_seed(0, 0, "passes") != stream_seed(0, 0, "passes", 0)


def test_stream_seed_values_never_change():
    """Golden values: a change here silently changes every strategy's batches (and breaks resumed runs)."""
    assert stream_seed(0, 0, "rounds") == 11002168309032136958
    assert stream_seed(1, 0, "rounds") == 6437465387698043957
    assert stream_seed(0, 0, "domain_stream", 2, 3) == 10888359623143345769
    assert stream_seed(7, 3, "passes", 12) == 10579305518638775613


def test_stream_generator_is_seeded_by_stream_seed_and_repeats():
    g = stream_generator(5, 2, "rounds", 1)
    assert g.initial_seed() == stream_seed(5, 2, "rounds", 1)
    a = torch.randperm(50, generator=g)
    assert torch.equal(a, torch.randperm(50, generator=stream_generator(5, 2, "rounds", 1)))
    assert not torch.equal(a, torch.randperm(50, generator=stream_generator(5, 2, "rounds", 2)))


def test_stream_seed_rejects_what_is_not_a_stream_key():
    with pytest.raises(ValueError, match="stream purpose must be a non-empty string, got ''"):
        stream_seed(0, 0, "")
    with pytest.raises(ValueError, match="got 3"):
        stream_seed(0, 0, 3)
    with pytest.raises(TypeError, match=r"must be integers, got seed=0, epoch=1.5"):
        stream_seed(0, 1.5, "rounds")
