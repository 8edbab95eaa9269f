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
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

SamplerName = Literal["mixed", "domain_batched", "domain_sequential", "sequential"]
SAMPLERS = ("mixed", "domain_batched", "domain_sequential", "sequential")


def _generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return g


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
) -> list[Tensor]:
    """Index tensors of one epoch's batches.

    Args:
        sampler: one of ``mixed``, ``domain_batched``, ``domain_sequential``, ``sequential``.
        indices: the rows to draw from (for example the training split).
        domain: the domain of every row of the data set (indexed by ``indices``).
        num_domains: number of domains D.
        batch_size: rows per batch.
        seed, epoch: the permutation is a function of both.
        drop_last: drop each stream's last incomplete batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    g = _generator(seed, epoch)

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
    """A random order of the domains for one epoch (used by strategies that loop over domains)."""
    return torch.randperm(num_domains, generator=_generator(seed, epoch)).tolist()
