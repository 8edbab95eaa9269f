"""Training and evaluation of the two-tower retrieval models.

:class:`RetrievalTrainConfig` says what to do; :class:`RetrievalTrainer` runs epochs of domain batches,
evaluates full-corpus Recall@N / NDCG@N on the validation split after every epoch, stops early on the
monitored metric and restores the best weights; :func:`evaluate_retrieval` scores a split.

**Batches.** Every batch holds one domain's training positives (the ``domain_batched`` sampler, as STAR and
ADI's Algorithm 1, which computes "the loss for all training data (X^(i), y^(i))" domain by domain): the
in-batch negatives of a row are then items of its own domain, embedded for that domain like the positive,
and ``log Q`` is the item's frequency among that domain's training positives. A domain's last batch of a
single row is skipped (it has no in-batch negative); with batches of 1,024 that is at most one row per
domain and epoch.

**Loss.** Sampled softmax with log Q correction (:mod:`polyrec.retrieval.loss`, eq. 4-5) over the in-batch
items, plus ``extra_negatives`` items drawn from the domain's corpus (uniformly or by frequency) when set.

**Self-training** (``strategy: self_training``; ADI §4.3, Algorithm 1, eq. 27). After the loss of a domain-i
batch, for every other domain j the frozen model (no gradient, batch norms on their moving statistics)
(eval mode) scores each of the batch's pairs as if it were in domain j, ``f(v | u, j)``; the top ``p`` share of the pairs
become pseudo-positives of domain j, and their sampled-softmax loss in domain j (candidates: every item of
the batch, embedded for domain j) is added to the batch's loss, each pseudo-pair weighing as much as a real
one (eq. 27 sums the two log-likelihoods). ``p`` starts at ``self_training_start`` and grows by
``self_training_step`` every epoch up to ``self_training_max`` (``p = p + Δp``). Readings the paper leaves
open: the initial p, Δp and a cap are not published (the defaults here are 5%, +5% per epoch, 50%); the
pseudo-pairs' forward pass normalises with their batch statistics like any training pass, but the moving
statistics are restored after it, so that re-labelled rows of domain i do not move domain j's statistics.
(Normalising that pass with the moving statistics instead was tried and measured: one epoch of ADI on
ml1m-age3-retrieval reached validation Recall@50 0.155 against 0.230 without self-training and 0.231 with
batch statistics; the gradient through stale moving statistics is badly scaled.)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import param
from ..data.samplers import epoch_batches, stream_generator
from ..layers.norm import PartitionedNorm
from .loss import NegativeSampler, log_q_from_counts, sampled_softmax_loss
from .metrics import RETRIEVAL_CUTOFFS, RetrievalEvaluator, RetrievalMetrics, popularity_ranks, target_ranks

STRATEGIES = ("joint", "self_training")


def monitor_names(cutoffs: tuple[int, ...] = RETRIEVAL_CUTOFFS) -> tuple[str, ...]:
    """The validation metrics ``train.monitor`` may name: ``recall@N`` / ``ndcg@N``, ``_mean`` or ``_overall``."""
    return tuple(f"{m}@{n}_{agg}" for m in ("recall", "ndcg") for n in cutoffs for agg in ("mean", "overall"))


@dataclass(frozen=True)
class RetrievalTrainConfig:
    """Config of a retrieval training run.

    Args:
        optimizer: ``adam`` or ``adamw``.
        lr: learning rate.
        weight_decay: L2 (adam) or decoupled (adamw) weight decay.
        batch_size: training positives per step (all of one domain).
        eval_batch_size: users or items per evaluation forward pass.
        max_epochs: upper bound on epochs.
        patience: epochs without improvement of ``monitor`` before stopping (0: never stop early).
        monitor: the validation metric of early stopping and best-weight selection (maximised), e.g.
            ``recall@50_mean`` (the unweighted mean over domains) or ``recall@50_overall`` (every query weighs 1).
        temperature: τ of the sampled softmax (logits are scores / τ).
        log_q_correction: subtract log Q from every candidate's logit (eq. 4).
        extra_negatives: items drawn from the domain's corpus per batch, added to the in-batch negatives.
        negative_sampling: how the extra negatives are drawn: ``uniform`` or ``frequency``.
        strategy: ``joint`` (the loss of eq. 5) or ``self_training`` (Algorithm 1, eq. 27).
        self_training_start, self_training_step, self_training_max: the share p of pseudo-labels: its value
            in the first epoch, its growth per epoch (Δp) and its cap.
        grad_clip: clip the global gradient norm to this value (0: off).
        seed: model seed (initialisation, batches, negatives).
        num_threads: torch intra-op threads (0: leave torch's default).
        precise_norm_stats: after every epoch, set every batch norm's statistics (per domain for DSBN) to
            their exact values over ``norm_stats_rows`` training positives under the current weights
            (:func:`recompute_norm_statistics`), instead of the moving averages.
        norm_stats_rows: how many training positives (a fixed random subset, drawn once from ``seed``).
    """

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = param(1e-3, gt=0, le=10)
    weight_decay: float = param(0.0, ge=0)
    batch_size: int = param(1024, ge=2)
    eval_batch_size: int = param(8192, ge=1)
    max_epochs: int = param(100, ge=1, lt=1_000_003)
    patience: int = param(3, ge=0)
    monitor: str = param("recall@50_mean", choices=monitor_names())
    temperature: float = param(0.05, gt=0)
    log_q_correction: bool = True
    extra_negatives: int = param(0, ge=0)
    negative_sampling: Literal["uniform", "frequency"] = "uniform"
    strategy: Literal["joint", "self_training"] = "joint"
    self_training_start: float = param(0.05, ge=0, le=1)
    self_training_step: float = param(0.05, ge=0, le=1)
    self_training_max: float = param(0.5, ge=0, le=1)
    grad_clip: float = param(0.0, ge=0)
    seed: int = param(0, ge=0, lt=2**40)
    num_threads: int = param(0, ge=0)
    precise_norm_stats: bool = True
    norm_stats_rows: int = param(65536, ge=2)

    def pseudo_share(self, epoch: int) -> float:
        """p of Algorithm 1 in ``epoch`` (0-based): start + epoch · Δp, at most the cap."""
        return min(self.self_training_start + epoch * self.self_training_step, self.self_training_max)


@contextlib.contextmanager
def moving_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Batch norms normalise with the batch's statistics as in training, but their moving statistics are
    restored when the block ends: the rows of the block leave no trace in them."""
    norms = [m for m in model.modules() if isinstance(m, (PartitionedNorm, nn.BatchNorm1d))]
    saved = [
        {k: b.clone() for k, b in m.named_buffers(recurse=False) if k.startswith(("running_", "num_batches"))}
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


@torch.no_grad()
def recompute_norm_statistics(model: nn.Module, data: Any, rows: Tensor, batch_size: int = 8192) -> int:
    """Exact batch-norm statistics over training positives ``rows``, layer by layer.

    With one domain per batch, a plain batch norm's moving averages are dominated by the domains of the last
    few batches of an epoch, and every domain is then evaluated with those (measured: DNN's validation
    Recall@50 on ml1m-age3-retrieval wandered by ±0.01-0.02 from epoch to epoch, and one seed of five ended
    0.05 below the others). Here each normalisation layer, in module order (so a later layer sees inputs
    normalised with the earlier ones' exact statistics), gets the exact moments of its inputs over ``rows``
    under the current weights: per domain for domain-specific BN, over all rows for plain BN, the same
    quantities eq. 19-20 estimate, without the lag. Each pass runs only the tower the layer belongs to.

    Returns:
        The number of layers recalibrated.
    """
    layers = [
        m for m in model.modules() if isinstance(m, PartitionedNorm) and any(p.requires_grad for p in m.parameters())
    ]
    if not layers:
        return 0
    user_side = {id(m) for m in model.user_tower.modules()}
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            layer.begin_calibration()
            try:
                for chunk in _chunks(rows, batch_size):
                    d = data.domain.index_select(0, chunk)
                    if id(layer) in user_side:
                        model.user_embedding(data.user_inputs(chunk, d))
                    else:
                        model.item_embedding(data.item_inputs(data.item.index_select(0, chunk), d))
            except BaseException:
                layer.abort_calibration()
                raise
            layer.end_calibration()
    finally:
        model.train(was_training)
    return len(layers)


def _chunks(rows: Tensor, size: int) -> list[Tensor]:
    return [c for c in torch.split(rows, size) if len(c)]


@torch.no_grad()
def embed_users(model: nn.Module, data: Any, rows: Tensor, domain: int, batch_size: int = 8192) -> Tensor:
    """User embeddings ``[len(rows), O]`` of interaction rows ``rows`` (their user and history) for ``domain``."""
    d = torch.full((len(rows),), domain, dtype=torch.long)
    parts = [model.user_embedding(data.user_inputs(r, d[: len(r)])) for r in _chunks(rows, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.config.output_dim)


@torch.no_grad()
def embed_items(model: nn.Module, data: Any, items: Tensor, domain: int, batch_size: int = 8192) -> Tensor:
    """Item embeddings ``[len(items), O]`` of item indices ``items`` for ``domain``."""
    d = torch.full((len(items),), domain, dtype=torch.long)
    parts = [model.item_embedding(data.item_inputs(i, d[: len(i)])) for i in _chunks(items, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.config.output_dim)


def evaluate_retrieval(
    model: nn.Module | None,
    data: Any,
    split: str = "test",
    batch_size: int = 8192,
    cutoffs: tuple[int, ...] = RETRIEVAL_CUTOFFS,
) -> RetrievalMetrics:
    """Full-corpus Recall@N and NDCG@N of ``split`` (``val`` or ``test``), per domain and overall.

    Each query (a user's held-out positive in a domain) ranks the target among every item of the domain's
    corpus, scored exactly (one matmul per domain), with the user's training positives masked (and its
    validation positives at test time). ``model=None`` is the popularity baseline: items ranked by their
    frequency among the domain's training positives, the same list for every user.
    """
    if model is not None:
        was_training = model.training
        model.eval()
    evaluator = RetrievalEvaluator(list(data.domains), cutoffs)
    for d in range(len(data.domains)):
        queries = data.queries(split, d)
        if len(queries) == 0:
            continue
        target, exclude = data.targets(split, d), data.exclude(split, d)
        corpus = data.corpus[d]
        if model is None:
            ranks = popularity_ranks(data.train_counts[d].index_select(0, corpus), target, exclude)
        else:
            users = embed_users(model, data, queries, d, batch_size)
            items = embed_items(model, data, corpus, d, batch_size)
            ranks = target_ranks(users, items, target, exclude)
        evaluator.update(d, ranks)
    if model is not None:
        model.train(was_training)
    return evaluator.compute()


class RetrievalTrainer:
    """Fit a two-tower model on a retrieval data set (see the module docstring).

    Args:
        model: a registered retrieval model.
        data: the retrieval data set (:class:`polyrec.retrieval.data.RetrievalData`).
        config: the training config.
        progress: print one line per epoch on stderr (default: unless ``POLYREC_QUIET=1``).
    """

    def __init__(self, model: nn.Module, data: Any, config: RetrievalTrainConfig, progress: bool | None = None):
        from ..config import validate

        validate(config, "train")
        if tuple(model.schema.domains) != tuple(data.domains):
            raise ValueError(
                f"the model was built for domains {list(model.schema.domains)}, the data has {list(data.domains)}; "
                "build the model from this data's schema"
            )
        self.model, self.data, self.config = model, data, config
        self.progress = os.environ.get("POLYREC_QUIET") != "1" if progress is None else progress
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        torch.set_flush_denormal(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = opt(params, lr=config.lr, weight_decay=config.weight_decay)
        D = len(data.domains)
        self.log_q = [log_q_from_counts(data.train_counts[d]) for d in range(D)]
        self.samplers = None
        if config.extra_negatives:
            self.samplers = [
                NegativeSampler(
                    data.corpus[d],
                    data.train_counts[d].index_select(0, data.corpus[d]),
                    mode=config.negative_sampling,
                    num=config.extra_negatives,
                )
                for d in range(D)
            ]
        train_rows = torch.nonzero(data.split == 0).squeeze(1)
        pick = torch.randperm(len(train_rows), generator=stream_generator(config.seed, 0, "norm_stats_rows"))
        self.norm_rows = train_rows[pick[: config.norm_stats_rows]].sort().values
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.train_time = 0.0
        self.eval_time = 0.0
        self.samples = 0

    # ------------------------------------------------------------------------------ one step
    def _side(self, rows: Tensor, domain: int) -> tuple[Any, Any, Tensor]:
        d = torch.full((len(rows),), domain, dtype=torch.long)
        items = self.data.item.index_select(0, rows)
        return self.data.user_inputs(rows, d), self.data.item_inputs(items, d), items

    def _loss_sum(self, user, item, ids: Tensor, log_q: Tensor, domain: int, g: torch.Generator) -> Tensor:
        """Σ over rows of the sampled-softmax loss of ``user``'s rows with ``item``'s items as positives."""
        cfg, model = self.config, self.model
        extra = {}
        if self.samplers is not None:
            ex_ids, ex_lq = self.samplers[domain].sample(g)
            dd = torch.full((len(ex_ids),), domain, dtype=torch.long)
            extra = dict(
                extra_item=model.item_embedding(self.data.item_inputs(ex_ids, dd)), extra_ids=ex_ids, extra_log_q=ex_lq
            )
        loss = sampled_softmax_loss(
            model.user_embedding(user),
            model.item_embedding(item),
            ids,
            log_q,
            temperature=cfg.temperature,
            correct=cfg.log_q_correction,
            **extra,
        )
        return loss * len(ids)

    def _pseudo_loss_sum(self, user, item, ids: Tensor, log_q: Tensor, domain: int, p: float) -> Tensor:
        """Algorithm 1's inner loop: the pseudo-labelled pairs of every other domain j, and their loss."""
        cfg, model = self.config, self.model
        B = len(ids)
        take = min(math.ceil(p * B), B)
        total = torch.zeros(())
        if take == 0:
            return total
        for j in range(len(self.data.domains)):
            if j == domain:
                continue
            u_j, i_j = user.with_domain(j), item.with_domain(j)
            with torch.no_grad():
                model.eval()
                scores = model.score(u_j, i_j)  # f(X^(i), j) of the frozen model
                model.train()
            top = torch.topk(scores, take).indices
            rest = torch.ones(B, dtype=torch.bool)
            rest[top] = False
            with moving_statistics_kept(model):
                items = model.item_embedding(i_j)  # every item of the batch, embedded for domain j
                loss = sampled_softmax_loss(
                    model.user_embedding(u_j.select(top)),
                    items.index_select(0, top),
                    ids.index_select(0, top),
                    log_q.index_select(0, top),
                    temperature=cfg.temperature,
                    correct=cfg.log_q_correction,
                    extra_item=items[rest],
                    extra_ids=ids[rest],
                    extra_log_q=log_q[rest],
                )
            total = total + loss * take
        return total

    def run_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, model = self.config, self.data, self.model
        model.train()
        train_rows = torch.nonzero(data.split == 0).squeeze(1)
        batches = epoch_batches(
            "domain_batched", train_rows, data.domain, len(data.domains), cfg.batch_size, cfg.seed, epoch
        )
        g = stream_generator(cfg.seed, epoch, "negatives")
        p = cfg.pseudo_share(epoch) if cfg.strategy == "self_training" else 0.0
        loss_total, rows_total = 0.0, 0
        for rows in batches:
            if len(rows) < 2:
                continue  # one row has no in-batch negative
            domain = int(data.domain[rows[0]])
            user, item, ids = self._side(rows, domain)
            log_q = self.log_q[domain].index_select(0, ids)
            loss = self._loss_sum(user, item, ids, log_q, domain, g)
            if p > 0:
                loss = loss + self._pseudo_loss_sum(user, item, ids, log_q, domain, p)
            loss = loss / len(rows)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            loss_total += float(loss.detach()) * len(rows)
            rows_total += len(rows)
        return {"loss": loss_total / max(rows_total, 1), "rows": rows_total, "pseudo_share": p}

    # ------------------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_epochs`` or early stopping; restore the best weights; return a summary."""
        cfg = self.config
        bad = 0
        epoch = 0
        stopped = False
        while epoch < cfg.max_epochs and not stopped:
            t0 = time.perf_counter()
            stats = self.run_epoch(epoch)
            if cfg.precise_norm_stats:
                recompute_norm_statistics(self.model, self.data, self.norm_rows, cfg.eval_batch_size)
            t1 = time.perf_counter()
            if not math.isfinite(stats["loss"]):
                raise ValueError(
                    f"training diverged at epoch {epoch}: loss {stats['loss']}; lower train.lr (now {cfg.lr:g}) "
                    f"or raise train.temperature (now {cfg.temperature:g})"
                )
            val = evaluate_retrieval(self.model, self.data, "val", cfg.eval_batch_size)
            t2 = time.perf_counter()
            self.train_time += t1 - t0
            self.eval_time += t2 - t1
            self.samples += stats["rows"]
            value = val.value(cfg.monitor)
            improved = self.best is None or value > self.best
            if improved:
                self.best, self.best_epoch, bad = value, epoch, 0
                self.best_state = copy.deepcopy(self.model.state_dict())
            else:
                bad += 1
            record = {
                "epoch": epoch,
                "train_loss": stats["loss"],
                "pseudo_share": stats["pseudo_share"],
                f"val_{cfg.monitor}": value,
                "val": val.to_dict(),
                "epoch_s": round(t1 - t0, 3),
                "eval_s": round(t2 - t1, 3),
                "samples_per_s": round(stats["rows"] / (t1 - t0), 1) if t1 > t0 else None,
                "best": improved,
            }
            self.history.append(record)
            if self.progress:
                print(
                    f"epoch {epoch:3d}  loss {stats['loss']:.4f}  val {cfg.monitor} {value:.4f}"
                    f"{' *' if improved else ''}  {record['samples_per_s'] or 0:,.0f} rows/s",
                    file=sys.stderr,
                )
            epoch += 1
            stopped = cfg.patience > 0 and bad >= cfg.patience
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {
            "epochs": epoch,
            "best_epoch": self.best_epoch,
            "stopped_by": "early_stopping" if stopped else "max_epochs",
            f"best_val_{cfg.monitor}": self.best,
            "train_samples_per_s": self.samples / self.train_time if self.train_time > 0 else None,
            "train_s": self.train_time,
            "epoch_s": self.train_time / max(epoch, 1),
            "eval_s": self.eval_time / max(epoch, 1),
        }
