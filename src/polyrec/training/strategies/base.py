"""The Strategy seam: how one epoch of optimisation steps uses the domains.

A strategy wraps any conforming model. It receives a :class:`TrainContext` that knows how to make
batches (any sampler, any subset of rows) and how to take a standard step, and owns only the order and
the form of the steps: joint training on mixed batches, domain-batched steps, domain after domain
(Alternate), and later meta-learning (MAMDR, Reptile), gradient surgery (PCGrad), two-phase adapters or
DFEI's cyclic schedule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...config import from_dict, param, to_dict, validate
from ...data.batch import Batch
from ...data.dataset import EncodedDataset
from ...data.samplers import epoch_batches, stream_generator
from ...layers.bank import domain_banks
from ...layers.domain import bank_row_gradients
from ...registry import Registry
from ..rowwise import clip_grad_norm, rowwise_step
from ..task import Task


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{value!r} is not allowed; must be true or false"


def flag(default: bool) -> Any:
    """A boolean strategy option (``param`` with a check that the value is a bool)."""
    return param(default, rule=_boolean)


@dataclass
class TrainContext:
    """Everything a strategy may use during an epoch: the model, the optimiser, the loss, the data, and the
    ways to draw batches and to take a step. The Trainer builds one per run (a strategy never builds its own).

    Attributes:
        model: the model being trained (after :meth:`Strategy.prepare_model`).
        optimizer: the run's optimiser over the model's trainable parameters (``train.optimizer``).
        task: the loss (:class:`~polyrec.training.task.Task`; binary cross-entropy by default).
        dataset: the encoded data set.
        rows: the row indices a strategy trains on (the training split).
        batch_size: rows per batch (``train.batch_size``).
        sampler: the sampler :meth:`batches` uses unless told otherwise (``train.sampler``, else the
            strategy's ``default_sampler``): ``mixed``, ``domain_batched``, ``domain_sequential``, ...
        seed: the run's seed; every random draw of an epoch comes from (seed, epoch, purpose), so a resumed
            run sees the same batches.
        device: where batches are moved.
        grad_clip: global gradient-norm clipping in :meth:`apply_gradients` (0: none).
        bank_update: ``dense`` (the optimiser steps every parameter) or ``rowwise`` (``train.bank_update``:
            the domain banks' rows of the domains a step saw are updated, the others left as they are; see
            :mod:`polyrec.training.rowwise`).
        samples_seen: rows stepped on so far (:meth:`step` counts them; a strategy that steps by hand adds
            its own).
        on_step: called with each step's losses (the Trainer's progress bar).

    Example (one epoch of the ``joint`` strategy on a tiny synthetic data set):
        >>> import torch
        >>> from polyrec import DataConfig, build_dataset, create_model
        >>> from polyrec.config import from_dict
        >>> from polyrec.training.strategies import create_strategy
        >>> from polyrec.training.task import BinaryTask
        >>> ds = build_dataset(from_dict(DataConfig, {
        ...     "source": {"kind": "synthetic", "options": {"n_domains": 2, "n_samples": 300}},
        ...     "label": {"column": "label"}, "domain": {"column": "domain"},
        ...     "features": [{"name": "user_id"}, {"name": "item_id"}], "split": {"dedupe": True}}), cache=False)
        >>> model = create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])
        >>> ctx = TrainContext(model, torch.optim.Adam(model.parameters(), lr=1e-2), BinaryTask(), ds,
        ...                    rows=ds.splits["train"], batch_size=128, sampler="mixed", seed=0,
        ...                    device=torch.device("cpu"))
        >>> [len(b) for b in ctx.batches(epoch=0)]
        [128, 128, 128, 90]
        >>> sorted(create_strategy("joint").run_epoch(ctx, epoch=0)), ctx.samples_seen
        (['bce', 'loss'], 474)
        >>> {d: len(r) for d, r in ctx.rows_by_domain().items()}
        {0: 236, 1: 238}
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: Task
    dataset: EncodedDataset
    rows: Tensor
    batch_size: int
    sampler: str
    seed: int
    device: torch.device
    grad_clip: float = 0.0
    bank_update: str = "dense"
    samples_seen: int = 0
    on_step: Callable[[dict[str, float]], None] | None = None
    _by_domain: tuple[Tensor, dict[int, Tensor]] | None = field(default=None, init=False, repr=False)

    def batches(
        self,
        epoch: int,
        sampler: str | None = None,
        rows: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Batches of one epoch with the configured (or the given) sampler over ``rows``.

        Without ``generator`` they are the plain per-epoch stream of (seed, epoch): the one every basic
        strategy draws. A second shuffle within the epoch (another pass, a restarted domain) must pass
        its own generator, from :meth:`stream`, or it would replay the first.
        """
        for idx in epoch_batches(
            sampler or self.sampler,
            self.rows if rows is None else rows,
            self.dataset.domain,
            self.dataset.schema.num_domains,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            generator=generator,
        ):
            yield self.dataset.batch(idx).to(self.device)

    def stream(self, epoch: int, purpose: str, *index: int) -> torch.Generator:
        """A generator of its own for one use of randomness in ``epoch`` (see
        :func:`polyrec.data.samplers.stream_generator`): ``purpose`` names the use (``"rounds"``,
        ``"passes"``, ...) and ``index`` tells apart several of one purpose."""
        return stream_generator(self.seed, epoch, purpose, *index)

    def domain_rows(self, domain: int) -> Tensor:
        """Training rows of one domain."""
        return self.rows[self.dataset.domain.index_select(0, self.rows) == domain]

    def rows_by_domain(self) -> dict[int, Tensor]:
        """Training rows of every domain that has any, keyed by domain index (ascending); computed once
        per ``rows`` (strategies ask every epoch)."""
        if self._by_domain is None or self._by_domain[0] is not self.rows:
            rows = {d: self.domain_rows(d) for d in range(self.dataset.schema.num_domains)}
            rows = {d: r for d, r in rows.items() if len(r)}
            if not rows:
                raise ValueError("the training split has no rows")
            self._by_domain = (self.rows, rows)
        return self._by_domain[1]

    def domain_stream(self, epoch: int, domain: int, rows: Tensor | None = None) -> Iterator[Batch]:
        """An endless stream of batches of ``domain`` (over ``rows``, default its training rows): a domain
        that runs out restarts with a fresh shuffle, from the stream (seed, epoch, "domain_stream", domain,
        restart), so runs and resumed runs see the same batches and no two domains, restarts, epochs or
        seeds share a shuffle."""
        rows = self.rows_by_domain()[domain] if rows is None else rows
        restart = 0
        while True:
            yield from self.batches(epoch, rows=rows, generator=self.stream(epoch, "domain_stream", domain, restart))
            restart += 1

    def domain_rounds(
        self, epoch: int, rounds: int, generator: torch.Generator, per_domain: int = 1, shuffle: bool = True
    ) -> Iterator[dict[int, list[Batch]]]:
        """``rounds`` rounds of ``per_domain`` single-domain batches of every domain with training rows, from
        the domains' :meth:`domain_stream`; a round is ``{domain: [batches]}`` in the round's domain order
        (a fresh permutation from ``generator`` when ``shuffle``, else ascending)."""
        rows = self.rows_by_domain()
        domains = sorted(rows)
        streams = {d: self.domain_stream(epoch, d, rows[d]) for d in domains}
        for _ in range(rounds):
            order = [domains[i] for i in torch.randperm(len(domains), generator=generator)] if shuffle else domains
            yield {d: [next(streams[d]) for _ in range(per_domain)] for d in order}

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        return self.task.losses(self.model(batch), batch)

    def zero_grad(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Drop the gradients of every model parameter and of every parameter of ``optimizer`` (default
        :attr:`optimizer`): a phase whose optimiser holds only some parameters (Domain Regularization's
        dense ones) must not let the others' gradients pile up from step to step."""
        self.model.zero_grad(set_to_none=True)
        (optimizer or self.optimizer).zero_grad(set_to_none=True)

    def apply_gradients(
        self, optimizer: torch.optim.Optimizer | None = None, domains: Tensor | Iterable[int] | None = None
    ) -> None:
        """Clip and step: the gradients of model parameters that ``optimizer`` (default :attr:`optimizer`)
        does not update are dropped, the rest clipped to :attr:`grad_clip` (global norm, if set) and applied.

        Only what the step updates counts in the clipping norm; a parameter the backward pass reached but
        the optimiser does not hold (a shared embedding table while domain-specific parameters train)
        neither scales the update down nor keeps a gradient after the step.

        ``domains``: the domains of the rows whose gradient is applied (a batch's ``domain``, or domain
        indices). With :attr:`bank_update` ``rowwise`` only those domains' rows of the domain banks are
        updated; None counts every domain as present. Ignored by the dense update.
        """
        opt = optimizer or self.optimizer
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        updated = []
        for p in self.model.parameters():  # model order, as the clipping norm has always summed
            if id(p) in held:
                updated.append(p)
            else:
                p.grad = None
        if self.grad_clip > 0:
            clip_grad_norm(updated, self.grad_clip)
        if self.bank_update == "rowwise":
            rowwise_step(opt, domain_banks(self.model), domains)
        else:
            opt.step()

    def step(self, batch: Batch, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One standard step: forward, loss, backward, optional clipping, optimiser step (with ``optimizer``,
        default :attr:`optimizer`; see :meth:`zero_grad` and :meth:`apply_gradients`)."""
        self.zero_grad(optimizer)
        rows_only = domain_banks(self.model) if self.bank_update == "rowwise" else ()
        with bank_row_gradients(rows_only):  # the banks get their gathered rows' gradient only
            losses = self.compute_loss(batch)
        losses["loss"].backward()
        self.apply_gradients(optimizer, batch.domain)
        self.samples_seen += len(batch)
        stats = {k: float(v.detach()) for k, v in losses.items()}
        if self.on_step is not None:
            self.on_step(stats)
        return stats


class Strategy:
    """How an epoch of optimisation steps uses the domains: the base class of every strategy.

    A subclass implements :meth:`run_epoch` (draw batches from the :class:`TrainContext`, take steps,
    return the epoch's mean losses) and may override the hooks below; it is registered with
    ``@register_strategy(name)``, which makes it ``train.strategy: name`` in configs and ``MODEL@name`` on
    the command line. The model, the loss and the loop are not its business: it works with any model.

    Attributes:
        name: the registered name (set by :func:`register_strategy`).
        default_sampler: the sampler :meth:`TrainContext.batches` uses when ``train.sampler`` is unset.
        Config: a frozen dataclass of the strategy's options (``train.strategy_options``), each a field with
            a default; declare allowed values with :func:`polyrec.config.param` (or :func:`flag`) so a bad
            option is an error naming it.
        config: the validated options of this instance.

    Hooks: :meth:`setup` (once, before the first epoch), :meth:`prepare_model` (wrap the model with extra
    parameters), :meth:`state_dict` / :meth:`load_state_dict` (state to checkpoint), :meth:`next_stage`
    and :meth:`stages_end_by_early_stopping` (a second stage; see :class:`TwoStages`), and
    :meth:`effective_options` (options whose default depends on the data).

    Example (a strategy that steps on every ``stride``-th batch, run for one epoch):
        >>> import torch
        >>> from dataclasses import dataclass
        >>> from polyrec import DataConfig, build_dataset, create_model
        >>> from polyrec.config import from_dict, param
        >>> from polyrec.training.task import BinaryTask
        >>> class EveryOther(Strategy):
        ...     '''Joint training on every ``stride``-th batch of the mixed stream.'''
        ...     @dataclass(frozen=True)
        ...     class Config:
        ...         stride: int = param(2, ge=1)
        ...     def run_epoch(self, ctx, epoch):
        ...         batches = [b for i, b in enumerate(ctx.batches(epoch)) if i % self.config.stride == 0]
        ...         return mean_stats([ctx.step(b) for b in batches])
        >>> ds = build_dataset(from_dict(DataConfig, {
        ...     "source": {"kind": "synthetic", "options": {"n_domains": 2, "n_samples": 300}},
        ...     "label": {"column": "label"}, "domain": {"column": "domain"},
        ...     "features": [{"name": "user_id"}, {"name": "item_id"}], "split": {"dedupe": True}}), cache=False)
        >>> model = create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])
        >>> ctx = TrainContext(model, torch.optim.Adam(model.parameters()), BinaryTask(), ds, ds.splits["train"],
        ...                    batch_size=128, sampler=EveryOther.default_sampler, seed=0, device=torch.device("cpu"))
        >>> sorted(EveryOther().run_epoch(ctx, epoch=0)), ctx.samples_seen
        (['bce', 'loss'], 256)
        >>> EveryOther(EveryOther.Config(stride=0))
        Traceback (most recent call last):
        ...
        polyrec.config.ConfigError: train.strategy_options.stride: 0 is not allowed; must be >= 1

    Registered (``@register_strategy("every_other")`` above the class), it trains from a config with
    ``train.strategy: every_other`` and ``train.strategy_options: {stride: 3}``; docs/architecture.md
    does that end to end.
    """

    name: str = ""
    default_sampler: str = "mixed"

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None) -> None:
        # Options built directly (not read by create_strategy) are checked here the same way.
        self.config = validate(config if config is not None else self.Config(), "train.strategy_options")

    def effective_options(self, num_domains: int) -> dict[str, Any]:
        """The options as they act on data with ``num_domains`` domains that have training rows: the
        config's, with any option whose unset value stands for a data-dependent default given that value
        (MAMDR's ``helper_domains``). What a run record reports next to its config."""
        return to_dict(self.config)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model this strategy trains, built from ``model`` (default: ``model`` itself). A strategy
        that needs more parameters than the model has (MAMDR's domain-specific θ^d) wraps it here;
        :func:`polyrec.experiment.build_model` calls this, so runs saved and loaded get the same model."""
        return model

    def setup(self, ctx: TrainContext) -> None:
        """Called once before the first epoch (for example to build extra optimisers)."""

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def next_stage(self, ctx: TrainContext, epoch: int) -> bool:
        """Called when early stopping would end the run before ``epoch``: return True to go on to a further
        stage instead (the Trainer then restores the best weights and starts the patience counter again).
        Record the switch in :meth:`state_dict`, so that a resumed run is in the same stage."""
        return False

    def stages_end_by_early_stopping(self) -> bool:
        """True when :meth:`next_stage` may return True (the Trainer then requires ``patience >= 1``)."""
        return False

    def stage_pending(self, epochs: int) -> bool:
        """True when, after ``epochs`` epochs, a further stage has yet to train one (for the warning when
        ``max_epochs`` ends a run)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """State the strategy owns beyond the model and the optimiser (learned loss weights, a second
        optimiser's moments); the Trainer checkpoints it and gives it back on resume, after :meth:`setup`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")


class TwoStages:
    """Mixin of a :class:`Strategy` with two stages (two-phase training, Alternate + Finetune): the first
    lasts :meth:`first_stage_epochs` epochs, or, when that is None, until early stopping ends it; the
    epoch the second stage started at is then ``switch_epoch``, which the strategy checkpoints."""

    switch_epoch: int | None = None

    def first_stage_epochs(self) -> int | None:
        raise NotImplementedError

    def in_second_stage(self, epoch: int) -> bool:
        first = self.first_stage_epochs()
        first = first if first is not None else self.switch_epoch
        return first is not None and epoch >= first

    def stages_end_by_early_stopping(self) -> bool:
        return self.first_stage_epochs() is None

    def stage_pending(self, epochs: int) -> bool:
        return self.switch_epoch is None or self.switch_epoch >= epochs

    def next_stage(self, ctx: TrainContext, epoch: int) -> bool:
        if self.first_stage_epochs() is not None or self.switch_epoch is not None:
            return False
        self.switch_epoch = epoch
        return True


def _prepare(name: str, cls: type[Strategy]) -> None:
    cls.name = name


#: The strategy registry (:class:`polyrec.registry.Registry`); the functions below are its public face.
STRATEGIES: Registry[type[Strategy]] = Registry("strategy", on_register=_prepare)


def register_strategy(name: str, *, tags: Iterable[str] = ()) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a :class:`Strategy` under ``name`` (``train.strategy``), with optional ``tags``.

    A name names one strategy: a second class registering a taken name raises, naming both (the same class
    defined again by reloading its module replaces itself). The class gets ``name``.
    """
    return STRATEGIES.register(name, tags=tags)


def list_strategies(tag: str | None = None) -> list[str]:
    """Names of the registered strategies, sorted (with ``tag``, those that carry it)."""
    return STRATEGIES.names(tag)


def describe_strategy(name: str) -> str:
    """The first line of strategy ``name``'s docstring."""
    return STRATEGIES.entry(name).summary


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as strategy ``name``; unknown names raise with the close matches and the valid ones.

    Example:
        >>> strategy_class("altrenate")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polyrec.registry.UnknownNameError: unknown strategy 'altrenate'. Did you mean 'alternate'? Valid strategies: alternate, ...
    """
    return STRATEGIES[name]


def strategy_options(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated options (``Config`` dataclass, every default filled in) of strategy ``name``, without
    building the strategy: what a config holds as ``train.strategy_options``."""
    return from_dict(strategy_class(name).Config, options or {}, path="train.strategy_options")


def create_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """Strategy ``name`` with validated options; unknown names raise with the valid ones."""
    return strategy_class(name)(strategy_options(name, options))


def optimizer_like(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """A new optimiser of ``optimizer``'s type and hyper-parameters (lr, betas, weight decay, ...) over
    ``groups`` (``[{"params": [...], ...}]``, empty groups dropped); its state starts empty."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)([g for g in groups if g["params"]], **kwargs)


def mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    if not stats:
        return {}
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
