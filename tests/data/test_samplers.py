"""Samplers (index permutations per epoch) and the BatchLoader (index gathers)."""

from __future__ import annotations

import pytest
import torch

from polyrec.data.batch import Batch
from polyrec.data.loader import BatchLoader
from polyrec.data.samplers import MAX_EPOCHS, SAMPLERS, domain_order, epoch_batches, stream_generator

D = 3


@pytest.fixture(scope="module")
def rows():
    """A 'split' of 1,000 rows out of 1,300, unevenly spread over 3 domains, in non-trivial order."""
    g = torch.Generator().manual_seed(0)
    domain = torch.cat([torch.zeros(700), torch.ones(400), torch.full((200,), 2.0)]).long()
    domain = domain[torch.randperm(1300, generator=g)]
    indices = torch.randperm(1300, generator=g)[:1000].sort().values
    return indices, domain


def batches(sampler, rows, batch_size=64, seed=0, epoch=0, drop_last=False):
    indices, domain = rows
    return epoch_batches(sampler, indices, domain, D, batch_size, seed=seed, epoch=epoch, drop_last=drop_last)


def flat(bs):
    return torch.cat(bs) if bs else torch.zeros(0, dtype=torch.long)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_covers_every_row_exactly_once(sampler, rows):
    indices, _ = rows
    bs = batches(sampler, rows)
    assert all(0 < len(b) <= 64 for b in bs)
    assert torch.equal(flat(bs).sort().values, indices)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_are_deterministic_for_seed_and_epoch(sampler, rows):
    assert same(batches(sampler, rows, seed=3, epoch=2), batches(sampler, rows, seed=3, epoch=2))


@pytest.mark.parametrize("sampler", ["mixed", "domain_batched", "domain_sequential"])
def test_shuffling_samplers_change_with_epoch_and_seed(sampler, rows):
    e0 = batches(sampler, rows, epoch=0)
    assert not torch.equal(flat(e0), flat(batches(sampler, rows, epoch=1)))
    assert not torch.equal(flat(e0), flat(batches(sampler, rows, seed=1)))


def test_mixed_batches_mix_domains(rows):
    _, domain = rows
    bs = batches("mixed", rows)
    assert sum(len(domain[b].unique()) > 1 for b in bs) > len(bs) // 2


def test_domain_batched_every_batch_single_domain(rows):
    _, domain = rows
    bs = batches("domain_batched", rows)
    assert all(len(domain[b].unique()) == 1 for b in bs)
    # Batches of different domains are interleaved, not grouped.
    seq = [int(domain[b[0]]) for b in bs]
    switches = sum(a != b for a, b in zip(seq, seq[1:]))
    assert switches > D


def test_domain_batched_batch_counts_follow_domain_sizes(rows):
    indices, domain = rows
    bs = batches("domain_batched", rows)
    for d in range(D):
        n_d = int((domain[indices] == d).sum())
        assert sum(int(domain[b[0]]) == d for b in bs) == -(-n_d // 64)  # ceil


def test_domain_sequential_domains_are_contiguous_and_order_varies(rows):
    _, domain = rows
    orders = set()
    for epoch in range(12):
        bs = batches("domain_sequential", rows, epoch=epoch)
        assert all(len(domain[b].unique()) == 1 for b in bs)
        seq = [int(domain[b[0]]) for b in bs]
        # Contiguous: once a domain's batches end, it never comes back.
        runs = [d for i, d in enumerate(seq) if i == 0 or d != seq[i - 1]]
        assert sorted(runs) == list(range(D)), seq
        orders.add(tuple(runs))
    assert len(orders) > 1


def test_domain_order_is_a_seeded_permutation():
    assert sorted(domain_order(5, seed=0, epoch=0)) == list(range(5))
    assert domain_order(5, 0, 3) == domain_order(5, 0, 3)
    assert len({tuple(domain_order(5, 0, e)) for e in range(10)}) > 1


def test_sequential_keeps_order(rows):
    indices, _ = rows
    bs = batches("sequential", rows, batch_size=300)
    assert [len(b) for b in bs] == [300, 300, 300, 100]
    assert torch.equal(flat(bs), indices)
    assert same(bs, batches("sequential", rows, batch_size=300, epoch=5, seed=9))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_drop_last(sampler, rows):
    indices, domain = rows
    bs = batches(sampler, rows, batch_size=64, drop_last=True)
    assert all(len(b) == 64 for b in bs)
    if sampler in ("mixed", "sequential"):
        assert len(bs) == len(indices) // 64
    else:  # each domain's stream drops its own incomplete tail
        assert len(bs) == sum(int((domain[indices] == d).sum()) // 64 for d in range(D))
    assert len(flat(bs).unique()) == len(flat(bs))


def test_empty_rows_and_absent_domains():
    domain = torch.tensor([0, 0, 2, 2, 2])
    assert epoch_batches("domain_sequential", torch.zeros(0, dtype=torch.long), domain, 3, 2) == []
    bs = epoch_batches("domain_batched", torch.tensor([0, 1]), domain, 3, 4)
    assert len(bs) == 1 and sorted(bs[0].tolist()) == [0, 1]


def test_bad_sampler_name_and_batch_size_raise(rows):
    with pytest.raises(
        ValueError,
        match="unknown sampler 'domain'; valid samplers: mixed, domain_batched, domain_sequential, sequential",
    ):
        batches("domain", rows)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batches("mixed", rows, batch_size=0)


# ----------------------------------------------------------------------------------------------- loader


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_loader_batches_equal_direct_indexing(tiny_dataset, sampler):
    ds = tiny_dataset
    loader = BatchLoader(ds, "train", 128, sampler=sampler, seed=4)
    idx = loader.batch_indices(1)
    got = list(loader.epoch(1))
    assert len(got) == len(idx) == len(loader)
    for b, i in zip(got, idx):
        assert isinstance(b, Batch)
        assert torch.equal(b.sparse, ds.sparse[i]) and torch.equal(b.dense, ds.dense[i])
        assert torch.equal(b.label, ds.label[i]) and torch.equal(b.domain, ds.domain[i])
        assert torch.equal(b.user, ds.user[i]) and torch.equal(b.multi["tags"], ds.multi["tags"][i])
    assert torch.equal(torch.cat(idx).sort().values, ds.splits["train"])
    # Iterating the loader is epoch 0.
    assert all(torch.equal(a.label, b.label) for a, b in zip(loader, loader.epoch(0)))


def test_loader_accepts_explicit_rows(tiny_dataset):
    rows = torch.tensor([3, 1, 2])
    (b,) = list(BatchLoader(tiny_dataset, rows, 10, sampler="sequential"))
    assert torch.equal(b.label, tiny_dataset.label[rows])
    (b,) = list(BatchLoader(tiny_dataset, [3, 1, 2], 10, sampler="sequential"))
    assert torch.equal(b.label, tiny_dataset.label[rows])


def test_loader_errors(tiny_dataset):
    with pytest.raises(KeyError, match=r"unknown split 'valid'; valid splits: \['test', 'train', 'val'\]"):
        BatchLoader(tiny_dataset, "valid", 10)
    with pytest.raises(ValueError, match="unknown sampler 'shuffle'; valid samplers: mixed"):
        BatchLoader(tiny_dataset, "train", 10, sampler="shuffle")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchLoader(tiny_dataset, "train", 0)


# ----------------------------------------------------------------------------------------------- streams
def test_the_plain_per_epoch_stream_is_seed_times_max_epochs_plus_epoch(rows):
    """Pinned: the committed results of joint, domain_batched and alternate were drawn from this stream."""
    indices, _ = rows
    expected = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(3 * MAX_EPOCHS + 2))]
    assert torch.equal(flat(batches("mixed", rows, seed=3, epoch=2)), expected)
    assert MAX_EPOCHS == 1_000_003


@pytest.mark.parametrize("sampler", ["mixed", "domain_batched", "domain_sequential"])
def test_a_given_generator_replaces_the_per_epoch_stream(sampler, rows):
    indices, domain = rows
    own = epoch_batches(sampler, indices, domain, D, 64, generator=stream_generator(0, 0, "passes", 1))
    assert same(own, epoch_batches(sampler, indices, domain, D, 64, generator=stream_generator(0, 0, "passes", 1)))
    assert not torch.equal(flat(own), flat(batches(sampler, rows)))
    assert torch.equal(flat(own).sort().values, indices)  # still every row exactly once


def test_epochs_outside_the_injective_range_raise(rows):
    with pytest.raises(ValueError, match=r"epoch 1000003 is outside 0..1000002.*stream_generator"):
        batches("mixed", rows, epoch=MAX_EPOCHS)
    with pytest.raises(ValueError, match="epoch -1 is outside"):
        batches("mixed", rows, epoch=-1)
    assert batches("mixed", rows, epoch=MAX_EPOCHS - 1)


def test_domain_order_has_a_stream_of_its_own():
    g = stream_generator(0, 4, "domain_order")
    assert domain_order(6, 0, 4) == torch.randperm(6, generator=g).tolist()
