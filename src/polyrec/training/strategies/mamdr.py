"""MAMDR (Luo et al., "MAMDR: A Model Agnostic Learning Framework for Multi-Domain Recommendation",
ICDE 2023): Domain Negotiation, Domain Regularization, and Alternate + Finetune, on any model.

- ``domain_negotiation`` (DN, Algorithm 1): an outer step starts from Θ, trains a copy Θ̃ on the domains one
  after the other in a random order (inner loop, eq. 2), then moves Θ ← Θ + β(Θ̃ − Θ) (eq. 3). With β = 1 it
  is Alternate training. Works on any model's own parameters.
- ``domain_regularization``: DR alone ("w/o DN"): θ^S by Alternate training (DN with β = 1), θ^i by DR.
- ``mamdr`` (Algorithm 3): every epoch, DN on the shared parameters θ^S, then Domain Regularization
  (Algorithm 2) on every domain's specific parameters θ^i: for each of k helper domains j sampled from the
  others, a copy θ̃^i of θ^S + θ^i is trained on T^j and then on T^i (eqs. 5-7), and θ^i moves by
  γ(θ̃^i − (θ^S + θ^i)) (eq. 8); θ^S does not change in DR. Needs the model's domain-specific offsets
  (:class:`polyrec.models.specific.DomainSpecificModel`), which :meth:`MAMDR.prepare_model` adds.
- ``alternate_finetune`` (the paper's "Alternate + Finetune" framework): Alternate training of the shared
  model, then each domain's own copy θ^S + θ^d finetuned on that domain alone (written as the offset θ^d).

Readings of the paper made here (it leaves them open):

- T^i, "the data of domain i", is one pass over domain i's training rows (shuffled with the configured
  sampler), so by default an epoch is one outer DN step, as in the authors' experiments; ``inner_batches: n``
  instead takes n batches of each domain per outer step and runs as many outer steps per epoch as the
  largest domain has batches (a domain that runs out restarts). ``helper_batches`` / ``target_batches``
  bound the passes of DR the same way.
- The inner loops use an optimiser of the configured type (Adam in the paper, learning rate α =
  ``train.lr``) whose moments persist across steps, domains and epochs while the outer step resets the
  parameters: DN uses the Trainer's optimiser, DR its own (checkpointed with the strategy's state), so the
  moments of the shared and of the specific updates do not mix. The outer steps (β, γ) are the plain
  interpolations of eqs. 3 and 8.
- Normalisation statistics and other buffers are shared and keep whatever the inner loops left
  (per-domain statistics such as STAR's Partitioned Normalization are per domain already).
- DR's helper domains are k of the other domains with training rows, without replacement, drawn afresh
  for every target domain and epoch; ``helper_domains`` unset means min(3, D − 1) (the paper uses k = 3
  for 6 domains and 5 for 13 or more). ``add_target_domain`` also runs the target itself as a helper,
  which the authors' configurations do, although Algorithm 2 does not.
- Alternate + Finetune: the finetuning of each domain starts every epoch from the current θ^S + θ^d with
  a per-domain optimiser of the configured type (state kept per domain), and early stopping and the
  restored best weights follow the Trainer's validation monitor over all domains.
- Randomness: every shuffle and draw of an epoch has its own stream (seed, epoch, purpose, ...): DN's
  domain order ``"dn_order"``, DR's target order and helper draws ``"dr_order"``, the n-th full or bounded
  pass over a domain within the epoch ``("passes", n)``, the per-domain streams of ``inner_batches``
  (``"domain_stream"``). Alternate + Finetune's Alternate epochs draw the plain per-epoch stream, as
  ``alternate`` does.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ...config import ConfigError, param
from ...models.specific import INCLUDE, DomainSpecificModel
from .base import Strategy, TrainContext, TwoStages, flag, mean_stats, optimizer_like, register_strategy


def _specific_model(ctx: TrainContext, strategy: str) -> DomainSpecificModel:
    model = ctx.model
    if not isinstance(model, DomainSpecificModel):
        raise ValueError(
            f"strategy {strategy} trains domain-specific parameters, but the model "
            f"{getattr(model, 'model_name', type(model).__name__)!r} has none; build it with "
            f"polyrec.experiment.build_model (which wraps it) or wrap it yourself: "
            f"polyrec.models.specific.DomainSpecificModel(model)"
        )
    return model


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class _Passes:
    """Single-domain batches of one epoch: full passes over a domain, or bounded ones; the n-th pass of
    the epoch shuffles from its own stream (seed, epoch, "passes", n), so no two passes share a shuffle."""

    def __init__(self, ctx: TrainContext, epoch: int) -> None:
        self.ctx, self.epoch, self.n = ctx, epoch, 0

    def run(self, rows: Tensor, optimizer: torch.optim.Optimizer, max_batches: int | None = None) -> list[dict]:
        """Steps with ``optimizer`` over one pass of ``rows`` (at most ``max_batches`` batches)."""
        self.n += 1
        stats = []
        for batch in self.ctx.batches(self.epoch, rows=rows, generator=self.ctx.stream(self.epoch, "passes", self.n)):
            if max_batches is not None and len(stats) >= max_batches:
                break
            stats.append(self.ctx.step(batch, optimizer))
        return stats


@torch.no_grad()
def _interpolate(params: list[nn.Parameter], start: list[Tensor], rate: float) -> None:
    """p ← start + rate · (p − start)."""
    for p, s in zip(params, start):
        p.copy_(torch.lerp(s, p, rate))


@register_strategy("domain_negotiation")
class DomainNegotiation(Strategy):
    """Domain Negotiation (MAMDR Algorithm 1): sequential inner loop over shuffled domains, outer step β.

    Options (``train.strategy_options``):
        outer_lr: β of eq. 3, in (0, 1] (the paper: 0.1; 1 is Alternate training).
        inner_batches: batches of each domain per outer step (null: a full pass over each domain, so an
            epoch is one outer step).
    """

    default_sampler = "mixed"  # how each domain's own rows are shuffled

    @dataclass(frozen=True)
    class Config:
        outer_lr: float = param(0.1, gt=0, le=1)
        inner_batches: int | None = param(None, ge=1)

    def negotiate(self, ctx: TrainContext, epoch: int, passes: _Passes) -> list[dict]:
        """One epoch of DN on the model's trainable parameters (with the Trainer's optimiser)."""
        rows = ctx.rows_by_domain()
        domains = sorted(rows)
        g = ctx.stream(epoch, "dn_order")
        params = _trainable(ctx.model)
        cfg = self.config
        stats: list[dict] = []
        if cfg.inner_batches is None:  # one outer step over full passes
            start = [p.detach().clone() for p in params]
            for i in torch.randperm(len(domains), generator=g).tolist():
                stats += passes.run(rows[domains[i]], ctx.optimizer)
            _interpolate(params, start, cfg.outer_lr)
            return stats
        largest = max(math.ceil(len(r) / ctx.batch_size) for r in rows.values())
        for batches in ctx.domain_rounds(epoch, math.ceil(largest / cfg.inner_batches), g, cfg.inner_batches):
            start = [p.detach().clone() for p in params]
            stats += [ctx.step(b) for domain_batches in batches.values() for b in domain_batches]
            _interpolate(params, start, cfg.outer_lr)
        return stats

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        model = ctx.model
        with model.shared_only() if isinstance(model, DomainSpecificModel) else nullcontext():
            return mean_stats(self.negotiate(ctx, epoch, _Passes(ctx, epoch)))


@register_strategy("mamdr")
class MAMDR(DomainNegotiation):
    """MAMDR (Algorithm 3): Domain Negotiation on θ^S, then Domain Regularization on every θ^i.

    Options (``train.strategy_options``), besides DN's ``outer_lr`` and ``inner_batches``:
        specific_lr: γ of eq. 8, in (0, 1] (the authors: 0.1).
        helper_domains: k, helper domains per target (null: min(3, D − 1)).
        helper_batches, target_batches: bound the passes over a helper / the target domain in DR (null:
            full passes).
        add_target_domain: also use the target domain as one of its helpers (the authors' configs).
        specific_parameters: ``all`` or ``dense`` (embedding tables stay shared).
        regularize: False skips DR (DN on θ^S only, offsets stay zero: the DN ablation with the same model).
    """

    @dataclass(frozen=True)
    class Config(DomainNegotiation.Config):
        specific_lr: float = param(0.1, gt=0, le=1)
        helper_domains: int | None = param(None, ge=1)
        helper_batches: int | None = param(None, ge=1)
        target_batches: int | None = param(None, ge=1)
        add_target_domain: bool = flag(False)
        specific_parameters: Literal["all", "dense"] = param("all", choices=INCLUDE)
        regularize: bool = flag(True)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.dr_optimizer: torch.optim.Optimizer | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if isinstance(model, DomainSpecificModel):
            return model
        return DomainSpecificModel(model, include=self.config.specific_parameters)

    def setup(self, ctx: TrainContext) -> None:
        model = _specific_model(ctx, self.name)
        n = len(ctx.rows_by_domain())
        k = self.config.helper_domains
        if k is not None and k > n - 1:  # depends on the data, so checked here rather than when read
            raise ConfigError(
                f"train.strategy_options.helper_domains is {k}, but only {n - 1} other domain(s) have "
                f"training rows; set it to at most {n - 1} (or null for min(3, D - 1))"
            )
        if self.dr_optimizer is None:
            self.dr_optimizer = optimizer_like(ctx.optimizer, [{"params": model.shared_parameters()}])

    def effective_options(self, num_domains: int) -> dict[str, Any]:
        options = super().effective_options(num_domains)
        if options["helper_domains"] is None:  # as helpers() draws them: min(3, D - 1)
            options["helper_domains"] = min(3, max(num_domains - 1, 0))
        return options

    def helpers(self, target: int, domains: list[int], g: torch.Generator) -> list[int]:
        others = [d for d in domains if d != target]
        k = min(3, len(others)) if self.config.helper_domains is None else self.config.helper_domains
        chosen = [others[i] for i in torch.randperm(len(others), generator=g)[:k].tolist()]
        return chosen + [target] if self.config.add_target_domain else chosen

    def regularize(self, ctx: TrainContext, epoch: int, passes: _Passes) -> list[dict]:
        """Algorithm 2 for every domain with training rows, in a random order."""
        model = _specific_model(ctx, self.name)
        rows = ctx.rows_by_domain()
        domains = sorted(rows)
        g = ctx.stream(epoch, "dr_order")
        cfg, opt = self.config, self.dr_optimizer
        stats: list[dict] = []
        for i in torch.randperm(len(domains), generator=g).tolist():
            target = domains[i]
            for helper in self.helpers(target, domains, g):
                with model.train_specific(target, cfg.specific_lr):  # eqs. 5-8
                    stats += passes.run(rows[helper], opt, cfg.helper_batches)
                    stats += passes.run(rows[target], opt, cfg.target_batches)
        return stats

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        model = _specific_model(ctx, self.name)
        passes = _Passes(ctx, epoch)
        with model.shared_only():
            out = mean_stats(self.negotiate(ctx, epoch, passes))
        if self.config.regularize:
            out.update({f"dr_{k}": v for k, v in mean_stats(self.regularize(ctx, epoch, passes)).items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"dr_optimizer": self.dr_optimizer.state_dict()} if self.dr_optimizer is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "dr_optimizer" in state:
            self.dr_optimizer.load_state_dict(state["dr_optimizer"])


@register_strategy("domain_regularization")
class DomainRegularization(MAMDR):
    """Domain Regularization alone (MAMDR's "DR", Tables VI and X): θ^S by Alternate training, θ^i by DR.

    MAMDR with ``outer_lr`` 1 by default: DN with β = 1 is Alternate training (the domains one after the
    other in a random order, each in full), so this is the "w/o DN" ablation. Options as :class:`MAMDR`.
    """

    @dataclass(frozen=True)
    class Config(MAMDR.Config):
        outer_lr: float = param(1.0, gt=0, le=1)


@register_strategy("alternate_finetune")
class AlternateFinetune(TwoStages, Strategy):
    """Alternate + Finetune (MAMDR §V-B): Alternate training of θ^S, then each domain finetuned alone as θ^d.

    The Alternate stage trains θ^S domain after domain (a random domain order, each in full); every later
    epoch finetunes, for each domain d, the copy θ^S + θ^d on d's rows alone with d's own optimiser and
    keeps the result as θ^d (θ^S is then fixed). The Alternate stage ends by early stopping (the best θ^S
    restored, finetuning starts from it), and finetuning ends the run the same way.

    Options (``train.strategy_options``):
        alternate_epochs: a fixed length of the Alternate stage instead (>= 1; epochs ``0 ..
            alternate_epochs-1``); ``None`` (the default): early stopping ends it.
        specific_parameters: ``all`` or ``dense`` (embedding tables stay shared).
    """

    default_sampler = "mixed"

    @dataclass(frozen=True)
    class Config:
        alternate_epochs: int | None = param(None, ge=1)
        specific_parameters: Literal["all", "dense"] = param("all", choices=INCLUDE)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.optimizers: dict[int, torch.optim.Optimizer] = {}

    def first_stage_epochs(self) -> int | None:
        return self.config.alternate_epochs

    prepare_model = MAMDR.prepare_model

    def setup(self, ctx: TrainContext) -> None:
        model = _specific_model(ctx, self.name)
        for d in ctx.rows_by_domain():
            if d not in self.optimizers:
                self.optimizers[d] = optimizer_like(ctx.optimizer, [{"params": model.shared_parameters()}])

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        model = _specific_model(ctx, self.name)
        if not self.in_second_stage(epoch):
            with model.shared_only():
                batches = ctx.batches(epoch, sampler="domain_sequential")
                return {**mean_stats([ctx.step(b) for b in batches]), "phase": 1.0}
        passes, stats = _Passes(ctx, epoch), []
        for d, rows in ctx.rows_by_domain().items():
            with model.train_specific(d):
                stats += passes.run(rows, self.optimizers[d])
        return {**mean_stats(stats), "phase": 2.0}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"optimizers": {d: o.state_dict() for d, o in self.optimizers.items()}}
        if self.switch_epoch is not None:
            out["switch_epoch"] = self.switch_epoch
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for d, sd in state.get("optimizers", {}).items():
            self.optimizers[int(d)].load_state_dict(sd)
        self.switch_epoch = None if state.get("switch_epoch") is None else int(state["switch_epoch"])
