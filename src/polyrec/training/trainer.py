"""The generic training loop: epochs through a Strategy, validation, early stopping, checkpoints.

Read top to bottom: :class:`TrainConfig` says what to do; :meth:`Trainer.fit` runs epochs, each one
delegated to the strategy, then evaluates the validation split, logs, checkpoints and decides whether
to stop; the best weights are restored at the end.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..config import ConfigError, to_dict
from ..data.dataset import EncodedDataset
from ..evaluation.metrics import MultiDomainEvaluator
from ..models.base import Model
from .checkpoint import atomic_torch_save, load_checkpoint
from .strategies import TrainContext, create_strategy
from .task import BinaryTask


@dataclass(frozen=True)
class TrainConfig:
    """Config of a training run.

    Args:
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
        momentum: SGD momentum.
        batch_size: training rows per step.
        eval_batch_size: rows per evaluation batch.
        max_epochs: upper bound on epochs.
        patience: epochs without improvement of ``monitor`` before stopping (0: never stop early).
        monitor: validation metric for early stopping and best-weight selection (``auc_mean``,
            ``auc_overall``, ``wauc``, ``logloss_overall``, ``gauc``); logloss is minimised, the rest maximised.
        strategy: how steps use the domains (``joint``, ``domain_batched``, ``alternate``, ...).
        strategy_options: the strategy's own options.
        sampler: override the strategy's default sampler.
        grad_clip: clip the global gradient norm to this value (0: off).
        seed: model seed (initialisation, sampling); the data split has its own seed.
        num_threads: torch intra-op threads (0: leave torch's default).
        device: ``cpu`` or ``cuda``.
        precise_norm_stats: after every epoch, set the per-domain statistics of normalisation layers
            (STAR's Partitioned Normalization) to their exact values over the training rows under the
            current weights, instead of the moving averages (see :func:`recompute_norm_statistics`).
        flush_denormal: treat subnormal floats as zero on the CPU (process-wide). Adam's moments of
            embedding rows that a batch does not touch decay geometrically into the subnormal range after
            a few epochs, where x86 arithmetic is tens of times slower; measured on ml1m-age3, MLP fell from
            640k to 43k training rows/s at epoch 8 without it.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 4096
    eval_batch_size: int = 32768
    max_epochs: int = 50
    patience: int = 3
    monitor: str = "auc_mean"
    strategy: str = "joint"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    sampler: str | None = None
    grad_clip: float = 0.0
    seed: int = 0
    num_threads: int = 0
    device: str = "cpu"
    precise_norm_stats: bool = True
    flush_denormal: bool = True

    def __post_init__(self) -> None:
        try:  # the strategy's name and options are checked here, where the config is read
            create_strategy(self.strategy, self.strategy_options)
        except KeyError as e:
            raise ConfigError(f"train.strategy: {e.args[0]}") from None


MONITORS = ("auc_mean", "auc_overall", "wauc", "logloss_overall", "gauc")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer {cfg.optimizer!r} is not one of adam, adamw, sgd")


@torch.no_grad()
def recompute_norm_statistics(model: nn.Module, dataset: EncodedDataset, rows: torch.Tensor,
                              batch_size: int = 32768, device: torch.device | str = "cpu") -> int:
    """Replace the moving statistics of every layer with ``begin_calibration`` by exact ones over ``rows``.

    Moving averages lag behind the weights; when training alternates between domains (the Alternate
    regime), a domain's statistics are a whole pass of the other domains old at evaluation time, and the
    predictions drift off calibration. One no-grad pass per normalisation layer (in module order, so a
    later layer sees inputs normalised with the earlier layers' exact statistics) gives the exact
    per-domain moments under the current weights. Returns the number of layers recalibrated.
    """
    layers = [m for m in model.modules() if hasattr(m, "begin_calibration")]
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            layer.begin_calibration()
            for start in range(0, len(rows), batch_size):
                model(dataset.batch(rows[start:start + batch_size]).to(device))
            layer.end_calibration()
    finally:
        model.train(was_training)
    return len(layers)


@torch.no_grad()
def predict(model: nn.Module, dataset: EncodedDataset, rows: torch.Tensor, batch_size: int = 32768,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of ``rows`` in eval mode (in the order of ``rows``)."""
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch = dataset.batch(rows[start:start + batch_size]).to(device)
        out.append(model(batch).logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: EncodedDataset, split: str = "test", batch_size: int = 32768,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Per-domain and overall metrics of ``model`` on a split (exact AUC, logloss, PCOC, WAUC, GAUC)."""
    if isinstance(model, Model):
        model.schema.check_compatible(dataset.schema)
    rows = dataset.splits[split]
    evaluator = MultiDomainEvaluator(list(dataset.schema.domain.values))
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = dataset.batch(rows[start:start + batch_size])
        logits = model(batch.to(device)).logits.float().cpu()
        evaluator.update(logits, batch.label, batch.domain, batch.user)
    return evaluator.compute()


class Trainer:
    """Fit a model on an encoded data set with a strategy, early stopping and checkpoints.

    Args:
        model: any registered model.
        dataset: the encoded data set (its ``train`` and ``val`` splits are used).
        config: the training config.
        out_dir: where ``metrics.jsonl``, ``metrics.csv`` and ``checkpoint.pt`` go (None: nothing written).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        task: the loss (default binary cross-entropy).
        callbacks: functions called after every epoch with the epoch record.

    Example:
        >>> trainer = Trainer(model, ds, TrainConfig(strategy="alternate"), out_dir="runs/x")  # doctest: +SKIP
        >>> result = trainer.fit(); trainer.evaluate("test")                                   # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        dataset: EncodedDataset,
        config: TrainConfig = TrainConfig(),
        out_dir: str | Path | None = None,
        resume: bool = False,
        task: BinaryTask | None = None,
        callbacks: tuple[Callable[[dict], None], ...] = (),
        progress: bool | None = None,
    ) -> None:
        if config.monitor not in MONITORS:
            raise ValueError(f"train.monitor {config.monitor!r} is not one of {', '.join(MONITORS)}")
        if isinstance(model, Model):
            model.schema.check_compatible(dataset.schema)
        self.model, self.dataset, self.config = model, dataset, config
        self.out_dir = Path(out_dir) if out_dir else None
        self.device = torch.device(config.device)
        self.task = task or BinaryTask()
        self.callbacks = callbacks
        self.progress = sys.stderr.isatty() if progress is None else progress
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        if config.flush_denormal:
            torch.set_flush_denormal(True)
        self.model.to(self.device)
        self.strategy = create_strategy(config.strategy, config.strategy_options)
        self.optimizer = make_optimizer(self.model, config)
        self.history: list[dict] = []
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.train_time = 0.0
        self.samples = 0
        self._optimizer_state: dict | None = None  # a resumed optimiser state, loaded in fit() after setup
        self._strategy_state: dict | None = None  # likewise the strategy's own state
        if resume and self.out_dir is not None and (self.out_dir / "checkpoint.pt").exists():
            self._restore(load_checkpoint(self.out_dir / "checkpoint.pt"))

    # ------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_time": self.train_time,
            "samples": self.samples,
            "config": to_dict(self.config),
            "schema": self.dataset.schema.to_json(),
        }

    def _restore(self, state: dict) -> None:
        saved = state.get("schema")
        if saved is not None and saved != self.dataset.schema.to_json():
            raise ValueError("checkpoint was written for a different data schema; resume with the same data config")
        self.model.load_state_dict(state["model"])
        self._optimizer_state = state["optimizer"]  # the strategy may rebuild the optimiser in setup()
        self._strategy_state = state.get("strategy") or {}
        for k in ("epoch", "best", "best_epoch", "best_state", "bad_epochs", "history", "train_time", "samples"):
            setattr(self, k, state[k])

    def _better(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        return value < self.best if self.config.monitor.startswith("logloss") else value > self.best

    # ------------------------------------------------------------------------------------ logging
    def _log(self, record: dict) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        flat = {k: v for k, v in record.items() if not isinstance(v, dict)}
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        path = self.out_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat))
            if new:
                w.writeheader()
            w.writerow(flat)

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_epochs`` or early stopping; restore the best weights; return a summary."""
        cfg = self.config
        sampler = cfg.sampler or self.strategy.default_sampler
        ctx = TrainContext(
            model=self.model, optimizer=self.optimizer, task=self.task, dataset=self.dataset,
            rows=self.dataset.splits["train"], batch_size=cfg.batch_size, sampler=sampler, seed=cfg.seed,
            device=self.device, grad_clip=cfg.grad_clip,
        )
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ctx.rows), unit="row", leave=False)
            ctx.on_step = lambda s: (bar.update(cfg.batch_size), bar.set_postfix(loss=f"{s['loss']:.4f}"))
        self.strategy.setup(ctx)
        # A strategy may replace the optimiser (DFEI's per-group learning rates): checkpoint the one it uses.
        self.optimizer = ctx.optimizer
        if self._optimizer_state is not None:
            self.optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None
        if self._strategy_state is not None:
            self.strategy.load_state_dict(self._strategy_state)
            self._strategy_state = None
        while self.epoch < cfg.max_epochs:
            if bar is not None:
                bar.reset()
                bar.set_description(f"epoch {self.epoch}")
            self.model.train()
            t0 = time.perf_counter()
            seen0 = ctx.samples_seen
            stats = self.strategy.run_epoch(ctx, self.epoch)
            dt = time.perf_counter() - t0
            self.train_time += dt
            self.samples += ctx.samples_seen - seen0
            if cfg.precise_norm_stats:
                recompute_norm_statistics(self.model, self.dataset, ctx.rows, cfg.eval_batch_size, self.device)
            val = evaluate(self.model, self.dataset, "val", cfg.eval_batch_size, self.device)
            value = val.get(cfg.monitor, float("nan"))
            improved = self._better(value)
            if improved:
                self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                self.best_state = copy.deepcopy(self.model.state_dict())
            else:
                self.bad_epochs += 1
            record = {
                "epoch": self.epoch,
                **{f"train_{k}": v for k, v in stats.items()},
                f"val_{cfg.monitor}": value,
                "val_auc_overall": val.get("auc_overall"),
                "val_logloss_overall": val.get("logloss_overall"),
                "val_auc_per_domain": val.get("auc_per_domain"),
                "epoch_s": round(dt, 3),
                "samples_per_s": round((ctx.samples_seen - seen0) / dt, 1) if dt > 0 else None,
                "best": improved,
            }
            self.history.append(record)
            self._log(record)
            for cb in self.callbacks:
                cb(record)
            if not self.progress and os.environ.get("POLYREC_QUIET") != "1":
                print(
                    f"epoch {self.epoch:3d}  loss {stats.get('loss', float('nan')):.4f}  "
                    f"val {cfg.monitor} {value:.4f}{' *' if improved else ''}  "
                    f"{record['samples_per_s'] or 0:,.0f} rows/s",
                    file=sys.stderr,
                )
            self.epoch += 1
            if self.out_dir is not None:
                atomic_torch_save(self._state(), self.out_dir / "checkpoint.pt")
            if cfg.patience > 0 and self.bad_epochs >= cfg.patience:
                break
        if bar is not None:
            bar.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            f"best_val_{cfg.monitor}": self.best,
            "train_samples_per_s": self.samples / self.train_time if self.train_time > 0 else None,
            "train_s": self.train_time,
        }

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        return evaluate(self.model, self.dataset, split, self.config.eval_batch_size, self.device)
