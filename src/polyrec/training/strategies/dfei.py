"""DFEI's joint optimisation (DFEI, Meituan 2024, §3.3 and Algorithm 1): one batch per domain in turn,
shared parameters at lr/D.

Algorithm 1: for every step t, for d = 1..D, compute the gradient on a mini-batch of domain d and update
the domain's own parameters θ^u_d with the learning rate γ and the shared parameters θ^s with γ/D. Each
round of D steps thus moves every domain's parameters once and the shared ones D times at 1/D the rate.

Readings of the paper made here:

- A *round* is one batch of every domain that has training rows, in domain order 1..D (Algorithm 1's
  inner loop; ``shuffle_order`` draws a new order every round). Every batch holds rows of one domain
  only, ``batch_size`` of them (the last batch of a pass over a domain may be smaller).
- Algorithm 1 leaves STEPS open. With ``epoch_end="largest"`` (default) an epoch is as many rounds as
  the largest domain has batches, so every training row is seen at least once per epoch; a smaller
  domain that runs out restarts its own freshly shuffled stream (it is oversampled, as a per-domain
  repeating input pipeline would do). ``epoch_end="smallest"`` stops after the smallest domain's batches,
  so no domain repeats within an epoch and larger domains are subsampled (a fresh random subset each
  epoch).
- The two learning rates are two parameter groups of one optimiser of the configured type, betas and
  weight decay (Adam in the paper). :meth:`DFEICyclic.setup` rebuilds ``ctx.optimizer`` from the model's
  ``parameter_groups()`` (``{"shared": [...], "domain": [...]}``); a model without that method has no
  domain parameters in this sense and all its parameters are treated as shared, i.e. trained at lr/D.
  D is the number of domains with training rows (the number of steps in a round). The trainer
  checkpoints the rebuilt optimiser (it reads ``ctx.optimizer`` back after ``setup``).
- Per-domain streams are shuffled with the configured sampler over that domain's rows alone, from the
  stream (seed, epoch, domain, restart) (:meth:`TrainContext.domain_stream`), and the rounds' orders from
  (seed, epoch, ``"dfei_rounds"``), so runs and resumed runs see the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import param
from .base import Strategy, TrainContext, flag, mean_stats, optimizer_like, register_strategy

# Group names that mark an optimiser already built by this strategy (setup is then a no-op).
SHARED, DOMAIN = "dfei_shared", "dfei_domain"


def split_parameters(model: nn.Module, params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``params`` split into (shared, domain) by ``model.parameter_groups()``; all shared without it."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    groups_fn = getattr(model, "parameter_groups", None)
    if not callable(groups_fn):
        return list(params), []
    groups = groups_fn()
    if set(groups) != {"shared", "domain"}:
        raise ValueError(
            f"{type(model).__name__}.parameter_groups() returned keys {sorted(groups)}; expected 'shared' and 'domain'"
        )
    domain_ids = {id(p) for p in groups["domain"]}
    if domain_ids & {id(p) for p in groups["shared"]}:
        raise ValueError(f"{type(model).__name__}.parameter_groups() lists a parameter as both shared and domain")
    return [p for p in params if id(p) not in domain_ids], [p for p in params if id(p) in domain_ids]


def rebuild_optimizer(
    optimizer: torch.optim.Optimizer, shared: list[nn.Parameter], domain: list[nn.Parameter], shared_lr: float
) -> torch.optim.Optimizer:
    """An optimiser of the same type and hyper-parameters as ``optimizer`` with two groups: ``shared``
    at ``shared_lr`` and ``domain`` at the original learning rate."""
    return optimizer_like(
        optimizer, [{"params": shared, "lr": shared_lr, "name": SHARED}, {"params": domain, "name": DOMAIN}]
    )


@register_strategy("dfei_cyclic")
class DFEICyclic(Strategy):
    """Algorithm 1 of DFEI: rounds of one single-domain batch per domain; shared lr = lr / D.

    Works with any model; with DFEI (or any model with ``parameter_groups()``) the domain parameters keep
    the full learning rate.

    Example:
        >>> Trainer(model, ds, TrainConfig(strategy="dfei_cyclic")).fit()   # doctest: +SKIP
    """

    default_sampler = "mixed"  # how each domain's own stream is shuffled

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`DFEICyclic`.

        Args:
            epoch_end: ``largest``: an epoch is as many rounds as the largest domain has batches (smaller
                domains restart their shuffled stream); ``smallest``: as many as the smallest has.
            shuffle_order: a random domain order in every round instead of 1..D.
            scale_shared_lr: train shared parameters at lr/D (False: everything at lr, the ablation).
        """

        epoch_end: Literal["largest", "smallest"] = param("largest", choices=("largest", "smallest"))
        shuffle_order: bool = flag(False)
        scale_shared_lr: bool = flag(True)

    def setup(self, ctx: TrainContext) -> None:
        opt = ctx.optimizer
        if any(g.get("name") in (SHARED, DOMAIN) for g in opt.param_groups):
            return  # already ours (a second fit() on the same context)
        params = [p for g in opt.param_groups for p in g["params"]]
        shared, domain = split_parameters(ctx.model, params)
        lr = opt.defaults["lr"]
        n = len(ctx.rows_by_domain())
        ctx.optimizer = rebuild_optimizer(opt, shared, domain, lr / n if self.config.scale_shared_lr else lr)

    def rounds(self, ctx: TrainContext) -> int:
        """Rounds in one epoch."""
        batches = [math.ceil(len(r) / ctx.batch_size) for r in ctx.rows_by_domain().values()]
        return max(batches) if self.config.epoch_end == "largest" else min(batches)

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        g = ctx.stream(epoch, "dfei_rounds")
        rounds = ctx.domain_rounds(epoch, self.rounds(ctx), g, shuffle=self.config.shuffle_order)
        return mean_stats([ctx.step(batch) for batches in rounds for (batch,) in batches.values()])
