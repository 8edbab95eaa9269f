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
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, field_error, param, to_dict
from ..data.dataset import EncodedDataset
from ..data.samplers import MAX_EPOCHS, SAMPLERS  # epochs bounded: the sampler's stream seed stays injective
from ..evaluation.metrics import (
    AUC_MEAN,
    AUC_OVERALL,
    AUC_PER_DOMAIN,
    GAUC,
    LOGLOSS_OVERALL,
    WAUC,
    MultiDomainEvaluator,
    MultiDomainMetrics,
)
from ..models.base import Model
from ..safeio import atomic_write_text
from .calibration import recompute_norm_statistics  # re-exported: the trainer's per-epoch pass
from .checkpoint import CheckpointError, check_optimizer_state, load_latest_checkpoint, save_checkpoint
from .rowwise import BANK_UPDATES, ROWWISE_OPTIMIZERS
from .scoring import score_rows
from .strategies import Strategy, TrainContext, create_strategy, strategy_options
from .task import LOSS, BinaryTask

#: The values of ``train.compile``.
COMPILE_MODES = ("none", "static", "dynamic")
#: The values of ``train.optimizer_impl``.
OPTIMIZER_IMPLS = ("default", "fused")
#: The validation metrics ``train.monitor`` may name (fields of :class:`MultiDomainMetrics`).
MONITORS = (AUC_MEAN, AUC_OVERALL, WAUC, LOGLOSS_OVERALL, GAUC)
#: A validation logloss above this many nats means training diverged (a constant predictor at the base
#: rate scores at most ln 2 ≈ 0.69).
DIVERGED_LOGLOSS = 10.0


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded; the message names the epoch and the settings to change."""


def available_devices() -> tuple[str, ...]:
    """Device names this machine can train on: ``cpu``, and ``cuda`` / ``cuda:N`` / ``mps`` when present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return tuple(out)


def _device_rule(value: str) -> str | None:
    devices = available_devices()
    if value in devices:
        return None
    return f"{value!r} is not a device of this machine; must be one of {', '.join(map(repr, devices))}"


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
        bank_update: how the optimiser updates the domain banks (parameters indexed by domain, such as
            STAR's domain weights, MLoRA's A/B, per-domain towers and gates; see
            :func:`polyrec.layers.bank.mark_domain_bank`): ``dense`` (every row, as any parameter; absent
            domains' rows move through Adam's moments) or ``rowwise`` (only the rows of the domains present in
            the step, with their moments and a per-row step count: lazy Adam / AdamW; absent domains' rows
            stay unchanged; :mod:`polyrec.training.rowwise`). ``rowwise`` needs ``adam`` or ``adamw``. The
            default stays ``dense``: every committed benchmark was trained with it, and on P2 (STAR, 5 seeds)
            ``rowwise`` matches it within noise (test AUC -0.008 ± 0.016 x100,
            ``benchmarks/results/bank_update_p2.md``), so the choice is one of cost: ``rowwise`` when a model
            has many domains and a batch holds few of them (``benchmarks/results/domain_scaling.md``).
        optimizer_impl: ``default`` (torch's own choice of Adam / AdamW implementation: on the CPU one
            tensor at a time) or ``fused`` (its fused kernel: the same rule in one pass over each tensor;
            measured on one thread, 2.7x faster on 200k parameters and 8x on 5M). The two round differently, so a run
            is reproduced with the implementation it was trained with. SGD has no fused CPU kernel here and
            ignores it.
        compile: ``none`` (eager), ``static`` (``torch.compile`` of the model's forward, shapes specialised:
            each new per-domain segment size recompiles until dynamo's limit, then that frame runs eager) or
            ``dynamic`` (symbolic shapes). Measured on STAR, ml1m-age3, one thread
            (``benchmarks/results/star_compile.md``): static 1.15x eager training rows/s, dynamic 1.06x,
            after a first compilation of about 80 s (seconds once torch's on-disk cache holds it). Compiled
            kernels round differently from eager ones, so a run is reproduced with the mode it used.
        flush_denormal: treat subnormal floats as zero on the CPU (process-wide). Adam's moments of
            embedding rows that a batch does not touch decay geometrically into the subnormal range after
            a few epochs, where x86 arithmetic is tens of times slower; measured on ml1m-age3, MLP fell from
            640k to 43k training rows/s at epoch 8 without it.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = param(1e-3, gt=0, le=10)
    weight_decay: float = param(0.0, ge=0)
    momentum: float = param(0.9, ge=0, lt=1)
    batch_size: int = param(4096, ge=1)
    eval_batch_size: int = param(32768, ge=1)
    max_epochs: int = param(50, ge=1, lt=MAX_EPOCHS)
    patience: int = param(3, ge=0)
    monitor: str = param(AUC_MEAN, choices=MONITORS)
    strategy: str = "joint"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    sampler: str | None = param(None, choices=SAMPLERS)
    grad_clip: float = param(0.0, ge=0)
    seed: int = param(0, ge=0, lt=2**40)
    num_threads: int = param(0, ge=0)
    device: str = param("cpu", rule=_device_rule)
    precise_norm_stats: bool = True
    flush_denormal: bool = True
    bank_update: str = param("dense", choices=BANK_UPDATES)
    optimizer_impl: str = param("default", choices=OPTIMIZER_IMPLS)
    compile: str = param("none", choices=COMPILE_MODES)

    def __post_init__(self) -> None:
        if self.bank_update == "rowwise" and self.optimizer not in ROWWISE_OPTIMIZERS:
            raise field_error(
                "bank_update",
                self.bank_update,
                f"the row-wise update is lazy Adam and needs train.optimizer {' or '.join(ROWWISE_OPTIMIZERS)}, "
                f"not {self.optimizer!r}; set train.bank_update: dense",
            )
        try:  # the strategy's name and options are checked here, where the config is read
            options = strategy_options(self.strategy, self.strategy_options)
        except KeyError as e:
            raise ConfigError(f"train.strategy: {e.args[0]}") from None
        # Held resolved (every option, defaults included), so a saved config says what the run used.
        object.__setattr__(self, "strategy_options", to_dict(options))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    impl = {"fused": True} if cfg.optimizer_impl == "fused" else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer {cfg.optimizer!r} is not one of adam, adamw, sgd")


def predict(
    model: nn.Module,
    dataset: EncodedDataset,
    rows: torch.Tensor,
    batch_size: int = 32768,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits ``[N]`` (float32, CPU) of ``rows`` in eval mode, in the order of ``rows``."""
    return score_rows(model, dataset, rows, batch_size, device).logits


def evaluate(
    model: nn.Module,
    dataset: EncodedDataset,
    split: str = "test",
    batch_size: int = 32768,
    device: torch.device | str = "cpu",
) -> MultiDomainMetrics:
    """Per-domain and overall metrics of ``model`` on a split (exact AUC, logloss, PCOC, WAUC, GAUC), fed to
    the evaluator batch by batch by the evaluation loop (:func:`~polyrec.training.scoring.score_rows`)."""
    if isinstance(model, Model):
        model.schema.check_compatible(dataset.schema)
    evaluator = MultiDomainEvaluator(list(dataset.schema.domain.values))
    score_rows(
        model,
        dataset,
        dataset.splits[split],
        batch_size,
        device,
        on_batch=lambda batch, logits: evaluator.update(logits, batch.label, batch.domain, batch.user),
    )
    return evaluator.compute()


def check_ids(dataset: EncodedDataset, schema) -> None:
    """Every id of ``dataset`` indexes its embedding table in ``schema`` (a clear error instead of an
    ``IndexError`` deep inside an embedding lookup); domains are within the domain list."""
    sparse = [f for f in schema.features if f.kind == "sparse"]
    if dataset.sparse.numel() and sparse:
        hi = dataset.sparse.amax(0).tolist()
        lo = dataset.sparse.amin(0).tolist()
        for f, top, bottom in zip(sparse, hi, lo):
            if top >= f.vocab_size or bottom < 0:
                raise ValueError(
                    f"feature {f.name!r} holds id {top if top >= f.vocab_size else bottom}, outside its "
                    f"vocabulary of {f.vocab_size} (0..{f.vocab_size - 1}); encode the rows with the "
                    "model's vocabularies (the run directory's processing.json)"
                )
    for f in schema.features:
        if f.kind == "multi" and f.name in dataset.multi and dataset.multi[f.name].numel():
            values = dataset.multi[f.name]
            if int(values.max()) >= f.vocab_size or int(values.min()) < 0:
                raise ValueError(f"multi-valued feature {f.name!r} holds ids outside its vocabulary of {f.vocab_size}")
    if len(dataset) and (int(dataset.domain.max()) >= schema.num_domains or int(dataset.domain.min()) < 0):
        raise ValueError(
            f"rows name domain index {int(dataset.domain.max())}, but the model knows "
            f"{schema.num_domains} domains {list(schema.domain.values)}"
        )


def _rng_state() -> dict[str, Any]:
    """Every process-wide random generator polyrec or a model may draw from (dropout, numpy, python)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Fit a model on an encoded data set with a strategy, early stopping and checkpoints.

    With ``out_dir`` the Trainer writes ``metrics.jsonl`` / ``metrics.csv`` (one record per epoch) and,
    after every epoch, a checkpoint (:mod:`polyrec.training.checkpoint`; the last two kept) holding the
    complete training state: model, optimiser, the strategy's own state, the best weights so far, early
    stopping's counters, the history, and every random generator's state. A run killed at any moment and
    resumed (``resume=True``) repeats the interrupted epoch from the last checkpoint and ends with weights
    and metrics bit-identical to an uninterrupted run (same machine, same thread count).

    Args:
        model: any registered model.
        dataset: the encoded data set (its ``train`` and ``val`` splits are used).
        config: the training config.
        out_dir: where metrics and ``checkpoints/`` go (None: nothing written).
        resume: continue from the newest usable checkpoint under ``out_dir`` if there is one.
        task: the loss (default binary cross-entropy).
        callbacks: functions called after every epoch with the epoch record.
        progress: show a progress bar (default: when stderr is a terminal).
        strategy: the strategy built from ``config`` already (when the model was prepared by it, see
            :meth:`~polyrec.training.strategies.Strategy.prepare_model`); default: built here.

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
        strategy: Strategy | None = None,
    ) -> None:
        from ..config import validate

        validate(config, "train")  # a TrainConfig built in Python, not read through from_dict
        if isinstance(model, Model):
            model.schema.check_compatible(dataset.schema)
            check_ids(dataset, model.schema)
        if len(dataset.splits["train"]) == 0:
            raise ValueError("the training split is empty; check data.split.ratios")
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
        if config.compile != "none":  # in place: the module, its state dict and its checkpoints stay the same
            self.model.compile(dynamic=config.compile == "dynamic")
        if strategy is None:
            strategy = create_strategy(config.strategy, config.strategy_options)
        elif strategy.name != config.strategy or to_dict(strategy.config) != config.strategy_options:
            raise ValueError(
                f"the strategy given to the Trainer ({strategy.name!r}, options {to_dict(strategy.config)}) "
                f"is not the one its config names (train.strategy {config.strategy!r}, options "
                f"{config.strategy_options}); pass the strategy built from the config, or none"
            )
        self.strategy = strategy
        if self.strategy.stages_end_by_early_stopping() and config.patience == 0:
            raise field_error(
                "patience",
                0,
                f"strategy {config.strategy!r} ends its stages by early stopping "
                "(its stage lengths are unset), which needs train.patience >= 1; set patience, "
                "or set the stage lengths in train.strategy_options",
            )
        self.optimizer = make_optimizer(self.model, config)
        self.history: list[dict] = []
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.train_time = 0.0
        self.recalibration_time = 0.0
        self.samples = 0
        self.resumed_from: int | None = None
        self._optimizer_state: dict | None = None  # a resumed optimiser state, loaded in fit() after setup
        self._strategy_state: dict | None = None  # likewise the strategy's own state
        self._rng_state: dict | None = None  # and the random generators, restored right before the next epoch
        if resume and self.out_dir is not None:
            state = load_latest_checkpoint(self.checkpoint_root)
            if state is not None:
                self._restore(state)

    @property
    def checkpoint_root(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "checkpoints"

    # ------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": _rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_time": self.train_time,
            "recalibration_time": self.recalibration_time,
            "samples": self.samples,
            "config": to_dict(self.config),
            "schema": self.dataset.schema.to_json(),
        }

    def _restore(self, state: dict) -> None:
        saved = state.get("schema")
        if saved is not None and saved != self.dataset.schema.to_json():
            raise CheckpointError(
                f"the checkpoint under {str(self.checkpoint_root)!r} was written for a different data "
                "schema; resume with the same data config, or start afresh"
            )
        saved_cfg, current = state.get("config"), to_dict(self.config)
        if saved_cfg is not None and _neutral(saved_cfg) != _neutral(current):
            diff = sorted(
                k
                for k in set(saved_cfg) | set(current)
                if saved_cfg.get(k) != current.get(k) and k not in NEUTRAL_TRAIN_KEYS
            )
            raise CheckpointError(
                f"the checkpoint under {str(self.checkpoint_root)!r} was written with a different "
                f"training config (train.{', train.'.join(diff)}); resume with the same config, "
                "or start afresh"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"the checkpoint under {str(self.checkpoint_root)!r} does not fit this model "
                f"({str(exc).splitlines()[0]}); resume with the same model config"
            ) from None
        self._optimizer_state = state["optimizer"]  # the strategy may rebuild the optimiser in setup()
        self._strategy_state = state.get("strategy") or {}
        self._rng_state = state["rng"]
        for k in (
            "epoch",
            "best",
            "best_epoch",
            "best_state",
            "bad_epochs",
            "history",
            "train_time",
            "samples",
            "recalibration_time",
        ):
            setattr(self, k, state[k])
        self.resumed_from = self.epoch

    def _better(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        return value < self.best if self.config.monitor.startswith("logloss") else value > self.best

    # ------------------------------------------------------------------------------------ logging
    def _write_logs(self) -> None:
        """``metrics.jsonl`` and ``metrics.csv`` from the history (atomically: one line per finished epoch,
        so an epoch interrupted after its log line and before its checkpoint is not listed twice)."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.out_dir / "metrics.jsonl", "".join(json.dumps(r, default=float) + "\n" for r in self.history)
        )
        buf = io.StringIO()
        flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in self.history]
        if flat:
            w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
            w.writeheader()
            w.writerows(flat)
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def _check_diverged(self, stats: dict, logloss: float) -> None:
        """Raise :class:`TrainingDiverged` on a non-finite training loss or a validation ``logloss`` (nats)
        that is non-finite or above :data:`DIVERGED_LOGLOSS`."""
        loss = stats.get(LOSS, float("nan"))
        bad = (not math.isfinite(loss) and LOSS in stats) or (math.isfinite(logloss) and logloss > DIVERGED_LOGLOSS)
        bad = bad or (not math.isfinite(logloss) and len(self.dataset.splits["val"]) > 0)
        if bad:
            raise TrainingDiverged(
                f"training diverged at epoch {self.epoch}: training loss {loss:.4g}, validation logloss {logloss:.4g} "
                f"(above {DIVERGED_LOGLOSS:g} nats or not finite); lower train.lr (now {self.config.lr:g}) or set "
                f"train.grad_clip (now {self.config.grad_clip:g})"
            )

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_epochs`` or early stopping; restore the best weights; return a summary."""
        cfg = self.config
        sampler = cfg.sampler or self.strategy.default_sampler
        ctx = TrainContext(
            model=self.model,
            optimizer=self.optimizer,
            task=self.task,
            dataset=self.dataset,
            rows=self.dataset.splits["train"],
            batch_size=cfg.batch_size,
            sampler=sampler,
            seed=cfg.seed,
            device=self.device,
            grad_clip=cfg.grad_clip,
            bank_update=cfg.bank_update,
        )
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ctx.rows), unit="row", leave=False)
            ctx.on_step = lambda s: (bar.update(cfg.batch_size), bar.set_postfix(loss=f"{s[LOSS]:.4f}"))
        self.strategy.setup(ctx)
        # A strategy may replace the optimiser (DFEI's per-group learning rates): checkpoint the one it uses.
        self.optimizer = ctx.optimizer
        if self._optimizer_state is not None:
            self.optimizer.load_state_dict(self._optimizer_state)
            check_optimizer_state(self.optimizer, str(self.checkpoint_root))
            self._optimizer_state = None
        if self._strategy_state is not None:
            self.strategy.load_state_dict(self._strategy_state)
            self._strategy_state = None
        if self._rng_state is not None:
            _set_rng_state(self._rng_state)
            self._rng_state = None
        if self.out_dir is not None and self.resumed_from is not None:
            self._write_logs()  # drop the log lines of an epoch that ran after the checkpoint
        stopped = bool(self.history) and self._patience_spent(ctx)
        while self.epoch < cfg.max_epochs and not stopped:
            if bar is not None:
                bar.reset()
                bar.set_description(f"epoch {self.epoch}")
            self.model.train()
            t0 = time.perf_counter()
            seen0 = ctx.samples_seen
            stats = self.strategy.run_epoch(ctx, self.epoch)
            t1 = time.perf_counter()
            if cfg.precise_norm_stats:
                recompute_norm_statistics(self.model, self.dataset, ctx.rows, cfg.eval_batch_size, self.device)
            t2 = time.perf_counter()
            dt = t2 - t0  # what an epoch costs: the steps and the recalibration pass
            self.train_time += dt
            self.recalibration_time += t2 - t1
            self.samples += ctx.samples_seen - seen0
            try:
                val = evaluate(self.model, self.dataset, "val", cfg.eval_batch_size, self.device)
            except ValueError as exc:  # the evaluator refuses non-finite logits: the weights blew up
                if "non-finite" not in str(exc):
                    raise
                val = None
            self._check_diverged(stats, float("inf") if val is None else val.logloss_overall)
            assert val is not None  # a non-finite validation logloss has raised TrainingDiverged
            value = getattr(val, cfg.monitor)  # one of MONITORS; gauc is None without user ids
            value = float("nan") if value is None else value
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
                f"val_{AUC_OVERALL}": val.auc_overall,
                f"val_{LOGLOSS_OVERALL}": val.logloss_overall,
                f"val_{AUC_PER_DOMAIN}": val.auc_per_domain,
                "epoch_s": round(dt, 3),
                "recalibration_s": round(t2 - t1, 3),
                "samples_per_s": round((ctx.samples_seen - seen0) / dt, 1) if dt > 0 else None,
                "best": improved,
            }
            self.history.append(record)
            self.epoch += 1
            if self.out_dir is not None:  # the checkpoint first: the log never lists an epoch it lacks
                save_checkpoint(self.checkpoint_root, self.epoch, self._state())
                self._write_logs()
            for cb in self.callbacks:
                cb(record)
            if not self.progress and os.environ.get("POLYREC_QUIET") != "1":
                print(
                    f"epoch {record['epoch']:3d}  loss {stats.get(LOSS, float('nan')):.4f}  "
                    f"val {cfg.monitor} {value:.4f}{' *' if improved else ''}  "
                    f"{record['samples_per_s'] or 0:,.0f} rows/s",
                    file=sys.stderr,
                )
            stopped = self._patience_spent(ctx)
        if bar is not None:
            bar.close()
        stopped_by = "early_stopping" if stopped else "max_epochs"
        if not stopped:
            self._warn_cap()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "stopped_by": stopped_by,
            f"best_val_{cfg.monitor}": self.best,
            "train_samples_per_s": self.samples / self.train_time if self.train_time > 0 else None,
            "train_s": self.train_time,
            "recalibration_s": self.recalibration_time,
            "resumed_from_epoch": self.resumed_from,
        }

    def _patience_spent(self, ctx: TrainContext) -> bool:
        """True when early stopping ends the run. A strategy with a further stage (two-phase training's
        adapter phase, say) moves to it instead: the best weights so far are restored, the patience counter
        starts again, and the best value stays, so a later stage's weights are kept only if they beat it."""
        cfg = self.config
        if not (cfg.patience > 0 and self.bad_epochs >= cfg.patience):
            return False
        if not self.strategy.next_stage(ctx, self.epoch):
            return True
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.bad_epochs = 0
        if not self.progress and os.environ.get("POLYREC_QUIET") != "1":
            print(
                f"epoch {self.epoch:3d}  {cfg.strategy}: next stage, from the best weights (epoch {self.best_epoch})",
                file=sys.stderr,
            )
        return False

    def _warn_cap(self) -> None:
        """Warn when ``max_epochs`` ended a run that early stopping had not: still improving, or a stage short."""
        cfg = self.config
        pending = self.strategy.stages_end_by_early_stopping() and self.strategy.stage_pending(self.epoch)
        recent = self.best_epoch >= self.epoch - max(cfg.patience, 1)
        if cfg.patience > 0 and (recent or pending):
            why = (
                f"before strategy {cfg.strategy!r} reached its last stage"
                if pending
                else f"while validation {cfg.monitor} was still improving (best epoch {self.best_epoch} of "
                f"{self.epoch})"
            )
            warnings.warn(
                f"train.max_epochs={cfg.max_epochs} ended the run {why}; early stopping did not; raise "
                "train.max_epochs so that patience ends it",
                RuntimeWarning,
                stacklevel=3,
            )

    def evaluate(self, split: str = "test") -> MultiDomainMetrics:
        """Metrics of the model on ``split`` (see :func:`evaluate`)."""
        return evaluate(self.model, self.dataset, split, self.config.eval_batch_size, self.device)


#: Training settings a Trainer may resume with changed values: threads (they change the order of
#: floating-point sums, not the experiment), how long to train (max_epochs, patience: continuing a run
#: for more epochs) and the evaluation batch size. Any other difference from the checkpoint's config is
#: refused. (``polyrec train --out DIR`` is stricter: it resumes only under the identical config.)
NEUTRAL_TRAIN_KEYS = ("num_threads", "max_epochs", "patience", "eval_batch_size")
#: Training settings added after checkpoints were written without them, with the value those runs used.
LEGACY_TRAIN_VALUES = {"bank_update": "dense", "optimizer_impl": "default", "compile": "none"}


def _neutral(train: dict) -> dict:
    train = {**LEGACY_TRAIN_VALUES, **train}
    return {k: v for k, v in train.items() if k not in NEUTRAL_TRAIN_KEYS}
