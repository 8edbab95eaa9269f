"""Samplers: each epoch, a list of index tensors, one per mini-batch.

A sampler never touches feature data; it only permutes row indices, so an epoch's batches cost one
``argsort`` and the loader's gathers. Every sampler is deterministic given (seed, epoch).

- ``mixed``: shuffle all rows, cut into batches (rows of every domain mixed in one batch).
- ``domain_batched``: every batch holds rows of one domain; over an epoch domains come up in proportion to
  their size, because each domain's rows are cut into batches and all batches are shuffled together
  (STAR §3.2: "the mini-batch is sampled from one domain").
- ``domain_sequential``: each epoch a random order of domains, each domain's rows in full (shuffled)
  before the next: the Alternate regime of MLoRA and MAMDR.
- ``sequential``: rows in order, for evaluation.

Random streams. The plain per-epoch stream of :func:`epoch_batches` is seeded by ``seed * 1_000_003 +
epoch``, distinct for every (seed, epoch) with ``0 <= epoch < MAX_EPOCHS``; it is kept as it is because the
committed results of the basic strategies were drawn from it. Every other stream a strategy draws (a
domain's restarted shuffle, the domain order of a round, the n-th pass over a domain within an epoch) comes
from :func:`stream_generator`: a seed hashed from (seed, epoch, purpose, *index), so that two distinct
uses never share a stream. Sums of scaled integers do not guarantee that: with ``(seed + epoch) * K +
restart`` seed 1 at epoch 0 replays seed 0 at epoch 1, batch for batch.
"""

from __future__ import annotations

import hashlib
import json
import operator
from typing import Literal

import torch
from torch import Tensor

SamplerName = Literal["mixed", "domain_batched", "domain_sequential", "sequential"]
SAMPLERS = ("mixed", "domain_batched", "domain_sequential", "sequential")

# The plain per-epoch stream ``seed * MAX_EPOCHS + epoch`` is distinct for every (seed, epoch) only while
# ``0 <= epoch < MAX_EPOCHS``; :func:`epoch_batches` refuses other epochs.
MAX_EPOCHS = 1_000_003


def _generator(seed: int, epoch: int) -> torch.Generator:
    """The plain per-epoch stream (see the module docstring)."""
    if not 0 <= int(epoch) < MAX_EPOCHS:
        raise ValueError(
            f"epoch {epoch} is outside 0..{MAX_EPOCHS - 1}, where the per-epoch streams of a seed are "
            f"distinct; draw other streams with polyrec.data.samplers.stream_generator"
        )
    g = torch.Generator()
    g.manual_seed(int(seed) * MAX_EPOCHS + int(epoch))
    return g


def stream_seed(seed: int, epoch: int, purpose: str, *index: int) -> int:
    """A 64-bit generator seed for one use of randomness: a hash of (seed, epoch, purpose, *index).

    Distinct arguments give unrelated seeds (a 64-bit BLAKE2b digest of their canonical JSON encoding: no two
    tuples share an encoding, and a digest collision needs about 2^32 streams), and the value is the same on
    every machine and version, so runs and resumed runs draw the same numbers.

    Args:
        seed: the run's seed (``train.seed``).
        epoch: the epoch the stream belongs to.
        purpose: what the stream is for, e.g. ``"domain_stream"``, ``"rounds"``, ``"passes"``.
        index: integers that tell apart several streams of one purpose (a domain and its restart, a pass).

    Example:
        >>> stream_seed(0, 0, "rounds") == stream_seed(0, 0, "rounds") != stream_seed(0, 1, "rounds")
        True
    """
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"stream purpose must be a non-empty string, got {purpose!r}")
    try:
        ints = [operator.index(v) for v in (seed, epoch, *index)]
    except TypeError:
        raise TypeError(
            f"stream seed, epoch and index must be integers, got seed={seed!r}, epoch={epoch!r}, index={index!r}"
        ) from None
    key = json.dumps([ints[0], ints[1], purpose, *ints[2:]], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"polyrec.stream").digest(), "big")


def stream_generator(seed: int, epoch: int, purpose: str, *index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`stream_seed` ``(seed, epoch, purpose, *index)``."""
    return torch.Generator().manual_seed(stream_seed(seed, epoch, purpose, *index))


def _by_domain(indices: Tensor, domain: Tensor, num_domains: int, g: torch.Generator) -> list[Tensor]:
    """Shuffled row indices of each domain (empty tensors for absent domains)."""
    perm = indices[torch.randperm(len(indices), generator=g)]
    d = domain[perm]
    order = torch.argsort(d, stable=True)
    counts = torch.bincount(d, minlength=num_domains).tolist()
    return list(torch.split(perm[order], counts))


def epoch_batches(
    sampler: str,
    indices: Tensor,
    domain: Tensor,
    num_domains: int,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Index tensors of one epoch's batches.

    Args:
        sampler: one of ``mixed``, ``domain_batched``, ``domain_sequential``, ``sequential``.
        indices: the rows to draw from (for example the training split).
        domain: the domain of every row of the data set (indexed by ``indices``).
        num_domains: number of domains D.
        batch_size: rows per batch.
        seed, epoch: the permutation is a function of both (the plain per-epoch stream, ``0 <= epoch <
            MAX_EPOCHS``), unless ``generator`` is given.
        drop_last: drop each stream's last incomplete batch.
        generator: draw the permutation from this generator instead (for a stream of its own, from
            :func:`stream_generator`); it is consumed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    g = _generator(seed, epoch) if generator is None else generator

    def cut(rows: Tensor) -> list[Tensor]:
        # torch.split of an empty tensor gives one empty chunk; an absent domain must give no batch.
        parts = [p for p in torch.split(rows, batch_size) if len(p)]
        if drop_last and parts and len(parts[-1]) < batch_size:
            parts.pop()
        return parts

    if sampler == "sequential":
        return cut(indices)
    if sampler == "mixed":
        return cut(indices[torch.randperm(len(indices), generator=g)])
    per_domain = _by_domain(indices, domain, num_domains, g)
    if sampler == "domain_batched":
        batches = [b for rows in per_domain for b in cut(rows)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]
    # domain_sequential
    order = torch.randperm(num_domains, generator=g).tolist()
    return [b for d in order for b in cut(per_domain[d])]


def domain_order(num_domains: int, seed: int, epoch: int) -> list[int]:
    """A random order of the domains for one epoch, from its own stream (``"domain_order"``)."""
    return torch.randperm(num_domains, generator=stream_generator(seed, epoch, "domain_order")).tolist()
