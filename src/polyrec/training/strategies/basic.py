"""The basic strategies: joint, domain-batched and alternate training."""

from __future__ import annotations

from .base import Strategy, TrainContext, mean_stats, register_strategy


@register_strategy("joint")
class Joint(Strategy):
    """All domains together: every step is an ordinary step on the sampler's next batch (mixed by default)."""

    default_sampler = "mixed"

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        return mean_stats([ctx.step(b) for b in ctx.batches(epoch)])


@register_strategy("domain_batched")
class DomainBatched(Joint):
    """Every batch from one domain, domains drawn in proportion to their size (STAR §3.2)."""

    default_sampler = "domain_batched"


@register_strategy("alternate")
class Alternate(Joint):
    """Domain after domain: each epoch a random order of domains, each trained on in full (MLoRA, MAMDR)."""

    default_sampler = "domain_sequential"
