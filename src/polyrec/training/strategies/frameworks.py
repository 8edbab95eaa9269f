"""Model-agnostic learning frameworks that MAMDR compares with (Luo et al., MAMDR, §V.B and Fig. 5):
``weighted_loss`` (Kendall et al. 2018), ``pcgrad`` (Yu et al. 2020), ``maml`` (Finn et al. 2017),
``reptile`` (Nichol et al. 2018) and ``mldg`` (Li et al. 2018). Each works on any registered model.

MAMDR names the baselines and says one sentence about each (MAML: "we treat each domain as the task and
split the training data into the support and query sets"); the rest is read from the original papers.
Readings shared by all five:

- A *round* uses single-domain batches of every domain that has training rows (``ctx.domain_stream``:
  per-domain shuffled streams; a domain that runs out restarts with a fresh shuffle), in a random domain
  order, and makes one update of the model. The order, PCGrad's projection orders and MLDG's
  meta-train/meta-test splits come from the epoch's own stream (seed, epoch, ``"rounds"``), so runs (and
  resumed runs) are reproducible and no other shuffle replays it.
- An epoch is one pass over the largest domain's batches, like ``dfei_cyclic``'s ``epoch_end="largest"``:
  with ``k`` batches of a domain per round (MAML: support + query, Reptile: ``inner_steps``, the others:
  1), an epoch has ``ceil(batches of the largest domain / k)`` rounds. Smaller domains are oversampled.
- Weighted Loss and PCGrad are multi-task methods whose tasks share each step's data, so by default
  (``sampling="mixed"``) their step is one mixed batch of the training rows split by domain into the
  tasks' batches (a domain absent from the batch contributes nothing), and an epoch is one pass over the
  rows; ``sampling="rounds"`` gives them the rounds above. Measured on ``ml1m-age7`` (7 domains of 13k to
  237k training rows), rounds oversample the small domains about 18 times per epoch, and both methods then
  overfit them within 1-2 epochs.
- "Loss" in the epoch stats is the mean task loss (BCE plus the model's auxiliary losses) of the round's
  forward passes that define the update (per strategy below), so it is comparable with other strategies;
  ``ctx.samples_seen`` counts the rows of every training forward pass (inner steps included).
- Inner (adaptation) steps are plain SGD computed functionally (``torch.func.functional_call`` with a
  dict of fast weights); buffers (batch-norm statistics) are the model's own and are updated in place by
  whatever forward passes run. The outer update goes through ``ctx.optimizer`` (train.optimizer at
  train.lr, clipped to train.grad_clip), except Reptile's, which interpolates parameters directly.
- Evaluation uses the model's parameters as they are (the meta-parameters for MAML/Reptile/MLDG): MDR
  evaluates one model on all domains, with no test-time adaptation.
- The inner learning rates and step counts are not given by MAMDR for these baselines; the defaults are
  this module's choices (Reptile's ``outer_lr=0.1`` is MAMDR's own outer learning rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ...config import param
from ...data.batch import Batch
from ...layers.domain import DomainSegments
from ..task import LOSS
from .base import Strategy, TrainContext, flag, mean_stats, register_strategy

Params = dict[str, Tensor]
SAMPLING = ("mixed", "rounds")
INF = math.inf  # an upper bound that rejects inf (and, as every bound does, NaN)


# --------------------------------------------------------------------------------------- shared helpers
def _trainable(model: nn.Module) -> Params:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _loss(ctx: TrainContext, batch: Batch, params: Params | None = None) -> Tensor:
    """The task loss of ``batch`` with the model's parameters, or with ``params`` in their place."""
    ctx.samples_seen += len(batch)
    out = ctx.model(batch) if params is None else functional_call(ctx.model, params, (batch,))
    return ctx.task.losses(out, batch)[LOSS]


def _grads(loss: Tensor, params: Params, create_graph: bool = False, retain_graph: bool | None = None) -> list[Tensor]:
    """d loss / d params (zeros for parameters the loss does not use)."""
    gs = torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), gs)]


def _sgd(
    params: Params, loss: Tensor, lr: float, create_graph: bool = False, retain_graph: bool | None = None
) -> Params:
    """One functional SGD step ``θ - lr ∇loss``; differentiable through the gradient if ``create_graph``
    (else the gradient is a constant and the result depends on ``params`` through the identity only)."""
    grads = _grads(loss, params, create_graph, retain_graph)
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads)}


def _flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


class _RoundStrategy(Strategy):
    """Rounds of single-domain batches of every domain with rows; subclasses implement :meth:`round`."""

    default_sampler = "mixed"  # how each domain's own stream is shuffled
    min_domains = 1

    def setup(self, ctx: TrainContext) -> None:
        n = len(ctx.rows_by_domain())
        if n < self.min_domains:
            raise ValueError(
                f"strategy {self.name!r} needs training rows of at least {self.min_domains} "
                f"domains, but only {n} domain(s) have any"
            )

    def batches_per_domain(self) -> int:
        """Batches of each domain one round uses."""
        return 1

    def rounds(self, ctx: TrainContext) -> int:
        """Rounds in one epoch: one pass over the largest domain's batches."""
        largest = max(math.ceil(len(r) / ctx.batch_size) for r in ctx.rows_by_domain().values())
        return math.ceil(largest / self.batches_per_domain())

    def updates(self, ctx: TrainContext, epoch: int, g: torch.Generator) -> Iterator[dict[int, list[Batch]]]:
        """The per-domain batches of every update of one epoch: rounds of single-domain batches (their
        domain order drawn from ``g``), or (with ``sampling="mixed"``) one pass over the training rows in
        the configured sampler's batches, each split by domain."""
        if getattr(self.config, "sampling", "rounds") == "rounds":
            yield from ctx.domain_rounds(epoch, self.rounds(ctx), g, per_domain=self.batches_per_domain())
            return
        for batch in ctx.batches(epoch):
            seg = DomainSegments.from_domain(batch.domain)
            yield {d: [batch.select(rows)] for d, rows in zip(seg.domains.tolist(), seg.split_rows())}

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        # One generator for the rounds' domain orders and what an update draws (PCGrad's projection orders).
        g = ctx.stream(epoch, "rounds")
        stats = []
        for batches in self.updates(ctx, epoch, g):
            stats.append(self.round(ctx, batches, g))
            if ctx.on_step is not None:
                ctx.on_step(stats[-1])
        return {**mean_stats(stats), **self.epoch_stats(ctx)}

    def round(self, ctx: TrainContext, batches: dict[int, list[Batch]], g: torch.Generator) -> dict[str, float]:
        """One update from ``batches`` (domain -> its batches, in the round's domain order)."""
        raise NotImplementedError

    def epoch_stats(self, ctx: TrainContext) -> dict[str, float]:
        """Extra stats reported at the end of an epoch."""
        return {}


# --------------------------------------------------------------------------------------- weighted loss
LOG_VARS = "weighted_loss_log_vars"  # name of the optimiser group of the learned log-variances


@register_strategy("weighted_loss")
class WeightedLoss(_RoundStrategy):
    """Uncertainty-weighted loss (Kendall, Gal & Cipolla, CVPR 2018): Σ_d exp(-s_d)·L_d + s_d.

    Per step, the loss L_d of each domain's rows (see ``sampling``); ``s_d`` is a learned log-variance per
    domain (init 0), trained jointly with the model by ``ctx.optimizer``. Readings:

    - The paper's classification form is exp(-s)·L + s/2; this uses the common simplified form
      exp(-s)·L + s for every domain (its optimum is exp(-s_d) = 1/L_d).
    - The ``s_d`` are one extra parameter group of ``ctx.optimizer`` (same optimiser and hyper-parameters,
      so the Trainer checkpoints their moments), without weight decay (it would pull every weight to 1),
      at ``log_var_lr`` (default train.lr). Their values are the strategy's state (``state_dict``).
    - Stats: ``loss`` is the unweighted mean of the domains' losses, ``objective`` the weighted total,
      ``weight_<d>`` the current exp(-s_d) of domain index d (at the end of the epoch).
    """

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`WeightedLoss`.

        Args:
            log_var_lr: learning rate of the log-variances (None: train.lr).
            sampling: ``mixed``: each step is a mixed batch of the training rows (the configured sampler),
                split by domain into the per-domain losses, one pass over the rows per epoch; ``rounds``:
                one single-domain batch of every domain per step (small domains oversampled).
        """

        log_var_lr: float | None = param(None, gt=0, lt=INF)
        sampling: Literal["mixed", "rounds"] = param("mixed", choices=SAMPLING)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.log_vars: nn.Parameter | None = None

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        if any(grp.get("name") == LOG_VARS for grp in ctx.optimizer.param_groups):
            return  # already added (a second fit() on the same optimiser)
        self.log_vars = nn.Parameter(torch.zeros(ctx.dataset.schema.num_domains, device=ctx.device))
        group: dict[str, Any] = {"params": [self.log_vars], "weight_decay": 0.0, "name": LOG_VARS}
        if self.config.log_var_lr is not None:
            group["lr"] = self.config.log_var_lr
        ctx.optimizer.add_param_group(group)

    def weights(self) -> Tensor:
        """exp(-s_d) of every domain of the schema."""
        return torch.exp(-self.log_vars.detach())

    def round(self, ctx, batches, g):
        losses = {d: _loss(ctx, b[0]) for d, b in batches.items()}
        s = self.log_vars
        objective = sum(torch.exp(-s[d]) * loss + s[d] for d, loss in losses.items())
        ctx.zero_grad()
        objective.backward()
        ctx.apply_gradients(domains=list(batches))
        return {
            LOSS: sum(float(v.detach()) for v in losses.values()) / len(losses),
            "objective": float(objective.detach()),
        }

    def epoch_stats(self, ctx):
        w = self.weights()
        return {f"weight_{d}": float(w[d]) for d in ctx.rows_by_domain()}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.log_vars is None else {"log_vars": self.log_vars.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "log_vars" not in state or self.log_vars is None or state["log_vars"].shape != self.log_vars.shape:
            raise ValueError(
                f"strategy 'weighted_loss' expected its log-variances in the checkpoint, got {sorted(state)}"
            )
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])


# --------------------------------------------------------------------------------------- PCGrad
def project_conflicting(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad's gradient surgery (Yu et al. 2020, Algorithm 1) on ``grads`` ``[T, P]`` (one row per task).

    For each task i, for the other tasks j in a random order: if <g_i^PC, g_j> < 0, then
    g_i^PC ← g_i^PC − <g_i^PC, g_j> / ||g_j||² · g_j, with the original g_j. Returns the projected rows.
    """
    out = grads.clone()
    n = len(grads)
    for i in range(n):
        others = [j for j in torch.randperm(n, generator=generator).tolist() if j != i]
        for j in others:
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return out


@register_strategy("pcgrad")
class PCGrad(_RoundStrategy):
    """PCGrad (Yu et al., "Gradient surgery for multi-task learning", NeurIPS 2020) with domains as tasks.

    Per step, each domain's rows (see ``sampling``); the gradient of each domain's loss over all trainable
    parameters (flattened into one vector) is projected by :func:`project_conflicting` and the projected gradients are
    summed (``reduction="sum"``, Algorithm 1) or averaged, set as ``.grad`` and applied by
    ``ctx.optimizer``. Readings: the random order of the other tasks is drawn per task and per round; a
    parameter no domain's loss uses gets a zero gradient; ``conflict_rate`` is the fraction of domain pairs
    whose *original* gradients have a negative inner product (0 with a single domain).
    """

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`PCGrad`.

        Args:
            reduction: combine the projected gradients by ``sum`` (the paper) or ``mean``.
            sampling: ``mixed`` (each step a mixed batch split by domain into the tasks' batches, one pass
                over the rows per epoch) or ``rounds`` (one single-domain batch of every domain per step).
        """

        reduction: Literal["sum", "mean"] = param("sum", choices=("sum", "mean"))
        sampling: Literal["mixed", "rounds"] = param("mixed", choices=SAMPLING)

    def round(self, ctx, batches, g):
        params = _trainable(ctx.model)
        losses = [_loss(ctx, b[0]) for b in batches.values()]
        grads = torch.stack([_flat(_grads(loss, params)) for loss in losses])
        update = project_conflicting(grads, g)
        update = update.sum(0) if self.config.reduction == "sum" else update.mean(0)
        ctx.zero_grad()
        for p, gp in zip(params.values(), update.split([p.numel() for p in params.values()])):
            p.grad = gp.view_as(p).clone()
        ctx.apply_gradients(domains=list(batches))
        n = len(grads)
        dots = grads @ grads.T
        conflicts = int((dots.triu(1) < 0).sum())
        return {
            LOSS: sum(float(v.detach()) for v in losses) / n,
            "conflict_rate": conflicts / (n * (n - 1) / 2) if n > 1 else 0.0,
        }


# --------------------------------------------------------------------------------------- MAML
@register_strategy("maml")
class MAML(_RoundStrategy):
    """MAML (Finn, Abbeel & Levine, ICML 2017) with each domain as a task (MAMDR §V.B).

    Per round, for each domain a *support* and a *query* batch (two consecutive batches of the domain's
    shuffled stream: the training rows are split into support and query sets at random, afresh every round);
    θ'_d = θ − inner_lr·∇L_support(θ), ``inner_steps`` times on the same support batch (functional, so the
    model stays at θ); the meta-loss is L_query(θ'_d). The meta-gradient, averaged over the round's
    domains, is applied by ``ctx.optimizer`` (the outer optimiser at train.lr). ``first_order=False``
    differentiates through the inner steps (``create_graph=True``, Hessian-vector terms); True is FOMAML:
    the inner gradients are constants, so the gradient at θ'_d is used as the gradient at θ.

    Readings: evaluation uses θ as is (MDR evaluates the meta-parameters on all domains, no test-time
    adaptation); ``loss`` is the mean query loss at θ'_d, ``support_loss`` the mean support loss at θ.
    """

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`MAML`.

        Args:
            inner_lr: SGD learning rate of the inner (adaptation) steps.
            inner_steps: adaptation steps on the support batch (0: plain training on the query batches).
            first_order: FOMAML (no second derivatives).
        """

        inner_lr: float = param(0.01, ge=0, lt=INF)
        inner_steps: int = param(1, ge=0)
        first_order: bool = flag(False)

    def batches_per_domain(self) -> int:
        return 2

    def round(self, ctx, batches, g):
        cfg = self.config
        params = _trainable(ctx.model)
        ctx.zero_grad()
        query_losses, support_losses = [], []
        for support, query in batches.values():
            fast = params
            for step in range(cfg.inner_steps):
                loss = _loss(ctx, support, fast)
                if step == 0:
                    support_losses.append(float(loss.detach()))
                fast = _sgd(fast, loss, cfg.inner_lr, create_graph=not cfg.first_order)
            q = _loss(ctx, query, fast)
            (q / len(batches)).backward()  # per domain, so only one domain's graph is alive at a time
            query_losses.append(float(q.detach()))
        ctx.apply_gradients(domains=list(batches))
        stats = {LOSS: sum(query_losses) / len(query_losses)}
        if support_losses:
            stats["support_loss"] = sum(support_losses) / len(support_losses)
        return stats


# --------------------------------------------------------------------------------------- Reptile
@register_strategy("reptile")
class Reptile(_RoundStrategy):
    """Reptile (Nichol, Achiam & Schulman 2018, "On first-order meta-learning algorithms"), domains as tasks.

    Per round, for each domain d, from the same θ: ``inner_steps`` steps on the next batches of domain d,
    giving θ̃_d; then θ ← θ + outer_lr · mean_d(θ̃_d − θ) (the batched version, Algorithm 2). Unlike
    Domain Negotiation, which chains the domains (θ̃ of one domain is where the next starts), every
    domain starts from θ (MAMDR Fig. 5d). Readings:

    - ``inner_optimizer="train"`` (default): the inner steps are ordinary steps of the configured optimiser
      (``ctx.optimizer``: Adam at train.lr in the presets, clipped to train.grad_clip) whose moments persist
      across steps, domains and rounds while θ is reset for every domain: the same inner loop as MAMDR's DN,
      and as the MAMDR authors' Reptile. ``"sgd"``: plain SGD at ``inner_lr`` (Reptile's own setting),
      computed functionally; train.grad_clip clips each inner gradient. On ml1m-age7 the MLP barely left
      the base rate in 20 epochs with SGD at 0.1 and ``outer_lr`` 0.1 (validation AUC 0.51).
    - The outer update is an interpolation (no outer optimiser); buffers (batch-norm statistics) are
      whatever the inner steps left; ``loss`` is the mean loss of the inner steps.
    """

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`Reptile`.

        Args:
            inner_optimizer: ``train`` (the configured optimiser, persistent moments) or ``sgd``.
            inner_lr: SGD learning rate of the inner steps (``inner_optimizer="sgd"`` only).
            inner_steps: steps (batches) per domain per round.
            outer_lr: interpolation factor ε of θ ← θ + ε(θ̃ − θ), in [0, 1].
        """

        inner_optimizer: Literal["train", "sgd"] = param("train", choices=("train", "sgd"))
        inner_lr: float = param(0.1, gt=0, lt=INF)
        inner_steps: int = param(5, ge=1)
        outer_lr: float = param(0.1, ge=0, le=1)

    def batches_per_domain(self) -> int:
        return self.config.inner_steps

    def _sgd_steps(self, ctx: TrainContext, params: Params, domain_batches: list[Batch], losses: list[float]) -> Params:
        fast = {n: p.detach().requires_grad_() for n, p in params.items()}
        for batch in domain_batches:
            loss = _loss(ctx, batch, fast)
            grads = _grads(loss, fast)
            if ctx.grad_clip > 0:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads]))
                scale = (ctx.grad_clip / (norm + 1e-6)).clamp(max=1.0)  # as nn.utils.clip_grad_norm_
                grads = [gr * scale for gr in grads]
            with torch.no_grad():
                fast = {n: (w - self.config.inner_lr * gr).requires_grad_() for (n, w), gr in zip(fast.items(), grads)}
            losses.append(float(loss.detach()))
        return fast

    def _optimizer_steps(
        self, ctx: TrainContext, params: Params, domain_batches: list[Batch], losses: list[float]
    ) -> Params:
        start = {n: p.detach().clone() for n, p in params.items()}
        for batch in domain_batches:
            losses.append(ctx.step(batch)[LOSS])
        with torch.no_grad():
            end = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():  # the next domain starts from θ again
                p.copy_(start[n])
        return end

    def round(self, ctx, batches, g):
        cfg = self.config
        params = _trainable(ctx.model)
        inner = self._optimizer_steps if cfg.inner_optimizer == "train" else self._sgd_steps
        delta = {n: torch.zeros_like(p) for n, p in params.items()}
        losses: list[float] = []
        for domain_batches in batches.values():
            fast = inner(ctx, params, domain_batches, losses)
            with torch.no_grad():
                for n, p in params.items():
                    delta[n] += fast[n] - p
        with torch.no_grad():
            for n, p in params.items():
                p.add_(delta[n], alpha=cfg.outer_lr / len(batches))
        return {LOSS: sum(losses) / len(losses)}


# --------------------------------------------------------------------------------------- MLDG
@register_strategy("mldg")
class MLDG(_RoundStrategy):
    """MLDG (Li, Yang, Song & Hospedales, AAAI 2018): meta-train/meta-test domain split per round.

    "Learning to generalize: meta-learning for domain generalization", Algorithm 1.
    Per round, one batch per domain; the round's domains are split at random into meta-train (all but
    ``meta_test_domains``) and meta-test; F = mean meta-train loss at θ; θ' = θ − inner_lr·∇F
    (functional; differentiated through unless ``first_order``); G = mean meta-test loss at θ';
    θ is updated by ``ctx.optimizer`` on ∇(F + beta·G). Readings: the split is drawn afresh every round
    over the domains with training rows (the first ``meta_test_domains`` of the round's random order; the
    paper splits its source domains at random every iteration); with
    ``first_order`` ∇F is a constant, so the G term contributes ∇G(θ'). Stats: ``loss`` = F + beta·G,
    ``meta_train`` = F, ``meta_test`` = G. Needs training rows of at least 2 domains (and more than
    ``meta_test_domains``).
    """

    min_domains = 2

    @dataclass(frozen=True)
    class Config:
        """Options of :class:`MLDG`.

        Args:
            inner_lr: α, the SGD learning rate of the virtual meta-train step.
            beta: β, the weight of the meta-test loss.
            meta_test_domains: domains held out as meta-test in every round.
            first_order: do not differentiate through the virtual step.
        """

        inner_lr: float = param(0.01, ge=0, lt=INF)
        beta: float = param(1.0, ge=0, lt=INF)
        meta_test_domains: int = param(1, ge=1)
        first_order: bool = flag(False)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        n = len(ctx.rows_by_domain())
        if self.config.meta_test_domains >= n:
            raise ValueError(
                f"strategy 'mldg': train.strategy_options.meta_test_domains="
                f"{self.config.meta_test_domains} leaves no meta-train domain; {n} domains have "
                f"training rows, so it must be at most {n - 1}"
            )

    def round(self, ctx, batches, g):
        cfg = self.config
        order = list(batches)  # the round's random domain order
        test, train = order[: cfg.meta_test_domains], order[cfg.meta_test_domains :]
        params = _trainable(ctx.model)
        f = sum(_loss(ctx, batches[d][0]) for d in train) / len(train)
        fast = _sgd(params, f, cfg.inner_lr, create_graph=not cfg.first_order, retain_graph=True)
        g_loss = sum(_loss(ctx, batches[d][0], fast) for d in test) / len(test)
        total = f + cfg.beta * g_loss
        ctx.zero_grad()
        total.backward()
        ctx.apply_gradients(domains=list(batches))
        return {LOSS: float(total.detach()), "meta_train": float(f.detach()), "meta_test": float(g_loss.detach())}
