"""One experiment = data config + model + training config; run it, save it, evaluate it again later.

This module orchestrates; each job it calls lives in its own module:

- the config: :mod:`polyrec.runconfig` (:func:`make_config` assembles a preset, a YAML file, a model name
  and ``--set`` overrides; :func:`resolve_config` validates) and :mod:`polyrec.runspec` (the model name
  ``<model>[+<adapter>][@<strategy>]``);
- the data: :mod:`polyrec.data` (:func:`~polyrec.data.build_dataset`, and
  :func:`~polyrec.data.new_domain_dataset` for the rows of an added domain);
- the run directory: :mod:`polyrec.rundir` (what is written and read back, and the resume checks).

:func:`run_experiment` trains, evaluates the test split and writes a run directory, building the data set,
the strategy and the model once each; :func:`load_run` and :func:`evaluate_run` reload a run directory;
:func:`add_domain_run` gives a trained MLoRA run one more domain and trains only its adapter.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, apply_overrides, from_dict, to_dict
from .data.config import DataConfig
from .data.dataset import EncodedDataset, build_dataset, new_domain_dataset
from .evaluation.metrics import RECORD_KEYS
from .models import create_model
from .models.adapters import DEFAULT_ALPHA, MLoRAModel, adapter_summary, add_domain, attach_mlora
from .models.specific import specific_summary
from .runconfig import (
    ADAPTER_SUFFIX,
    STRATEGY_SEP,
    ExperimentConfig,
    base_config,
    data_config,
    make_config,
    resolve_config,
    split_model_name,
    split_strategy,
)
from .rundir import (
    check_data,
    check_resumable,
    check_run_data,
    clear,
    config_hash,
    inspect,
    read_add_domain_info,
    read_manifest,
    read_run_config,
    read_run_schemas,
    read_run_weights,
    write_run_inputs,
    write_run_outputs,
)
from .runspec import RunSpec
from .safeio import ArtifactError, write_json
from .training.strategies import Strategy, create_strategy
from .training.trainer import TrainConfig, Trainer, evaluate, predict

#: The metrics a run record keeps, in its order (:meth:`~polyrec.evaluation.metrics.MultiDomainMetrics.to_record`).
RESULT_METRICS = RECORD_KEYS


def polyrec_version() -> str:
    from . import __version__

    return __version__


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``; the platform's processor elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    return {
        "polyrec": polyrec_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def build_strategy(cfg: ExperimentConfig) -> Strategy:
    """The training strategy ``cfg`` names, with its options."""
    return create_strategy(cfg.train.strategy, cfg.train.strategy_options)


def build_model(cfg: ExperimentConfig, schema, strategy: Strategy | None = None):
    """``cfg``'s model for ``schema``, with its adapters attached when ``cfg.adapter.kind`` is ``mlora``, as
    the training strategy needs it (:meth:`polyrec.training.strategies.Strategy.prepare_model`; ``strategy``:
    the one built from ``cfg`` already, default built here)."""
    model = create_model(cfg.model_name, schema, **to_dict(cfg.model))
    if cfg.adapter.kind == "mlora":
        a = cfg.adapter
        model = attach_mlora(
            model,
            alpha=a.alpha if a.alpha is not None else DEFAULT_ALPHA,
            targets=a.targets,
            max_adapter_params=a.max_adapter_params,
            domain_bias=bool(a.domain_bias),
            a_init=a.a_init or "gaussian",
        )
    # A strategy may need parameters of its own (MAMDR's domain-specific offsets): it wraps the model here.
    return (strategy or build_strategy(cfg)).prepare_model(model)


def _check_splits(cfg: ExperimentConfig, ds: EncodedDataset) -> None:
    for split in ("train", "val", "test"):
        if len(ds.splits[split]) == 0:
            raise ConfigError(
                f"data.split.ratios {list(cfg.data.split.ratios)} leave the {split} split empty "
                f"({len(ds):,} rows); a run needs rows in train (fitting), val (early stopping, "
                "model selection) and test (the reported metrics)"
            )


def data_summary(ds: EncodedDataset) -> dict[str, Any]:
    """What a run record says about its data: rows, OOV rows per split and feature, duplicates, drops."""
    report = ds.report
    out = {"rows": {s: len(ds.splits[s]) for s in ("train", "val", "test")}, "oov": report.get("oov", {})}
    for key in ("duplicates", "dedupe_removed", "dropped_untrained", "truncated"):
        if report.get(key):
            out[key] = report[key]
    return out


def _trained_domains(ds: EncodedDataset) -> int:
    """Domains with training rows (what a strategy's data-dependent defaults are resolved against)."""
    counts = torch.bincount(ds.domain[ds.splits["train"]], minlength=ds.schema.num_domains)
    return int((counts > 0).sum())


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: str | Path | None = None,
    dataset: EncodedDataset | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``'s model, evaluate on the test split, and (with ``out_dir``) write the run directory.

    With ``out_dir`` holding a run already, the run is resumed from its newest usable checkpoint when its
    resolved config and data fingerprint are this one's (a finished run is evaluated again); otherwise
    :class:`~polyrec.rundir.RunMismatch` names what differs and ``out_dir`` is left untouched.
    ``overwrite`` removes the previous run's files first (after the config and the data are ready).

    Returns the run record: protocol, model, strategy, ``strategy_options`` (the options the strategy ran
    with, data-dependent defaults resolved: MAMDR's ``helper_domains`` unset is min(3, D − 1)), seed,
    split_hash, config_hash, metrics (test), validation metrics, data (rows, OOV rows per split and
    feature, duplicates), train_samples_per_s, wall_s, the config without its data section, and more.
    """
    from .data import data_fingerprint

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir else None
    config = cfg.to_dict()
    if out is not None and not overwrite:
        check_resumable(out, config)
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    _check_splits(cfg, ds)
    fingerprint = data_fingerprint(cfg.data, ds)
    if out is not None:
        if overwrite:
            clear(out)
        else:
            check_data(out, fingerprint)
        if inspect(out) == "absent":
            write_run_inputs(
                out, config, ds.schema.to_dict(), ds.processing.to_dict() if ds.processing else {}, fingerprint
            )
    torch.manual_seed(cfg.train.seed)
    strategy = build_strategy(cfg)
    model = build_model(cfg, ds.schema, strategy)
    trainer = Trainer(model, ds, cfg.train, out_dir=out, resume=out is not None, progress=progress, strategy=strategy)
    summary = trainer.fit()
    test = trainer.evaluate("test")
    val = trainer.evaluate("val")
    record = {
        "protocol": cfg.protocol,
        "model": cfg.display_name,
        "backbone": cfg.model_name,
        "strategy": cfg.train.strategy,
        "strategy_options": strategy.effective_options(_trained_domains(ds)),
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split.seed,
        "split_hash": ds.split_hash,
        "config_hash": config_hash(config),
        "data_hash": config_hash({"data": config["data"]}),
        "metrics": test.to_record(),
        "val_metrics": val.to_record(),
        "data": data_summary(ds),
        "train_samples_per_s": summary["train_samples_per_s"],
        "wall_s": time.perf_counter() - t0,
        "train_s": summary["train_s"],
        "recalibration_s": summary["recalibration_s"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "stopped_by": summary["stopped_by"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **adapter_summary(model),
        **specific_summary(model),
        "environment": environment(),
        "config": {k: v for k, v in config.items() if k != "data"},  # the data is named by split_hash
    }
    if summary.get("resumed_from_epoch") is not None:
        record["resumed_from_epoch"] = summary["resumed_from_epoch"]
    if out is not None:
        write_run_outputs(out, model.state_dict(), record, config, version=polyrec_version())
    return record


def _model_from_run(run_dir: Path, manifest: dict[str, Any]):
    try:
        cfg = resolve_config(read_run_config(run_dir))
    except ConfigError as exc:
        raise ArtifactError(f"run config {str(run_dir / 'config.json')!r} is not a valid config: {exc}") from None
    schema, backbone_schema = read_run_schemas(run_dir, manifest)
    model = build_model(cfg, backbone_schema)
    for name in schema.domain.values[backbone_schema.num_domains :]:
        add_domain(model, name)  # backbone_domain and the adapters come from the weights below
    try:
        model.load_state_dict(read_run_weights(run_dir))
    except RuntimeError as exc:
        raise ArtifactError(
            f"run weights {str(run_dir / 'model.safetensors')!r} do not fit the run's config "
            f"({str(exc).splitlines()[0]})"
        ) from None
    return cfg, model


def load_run(run_dir: str | Path):
    """(config, model with the run's best weights) of a finished run directory.

    Every file is checked against the run's manifest (sha256) before it is read; only JSON and
    safetensors are read. A missing, damaged or foreign file is an :class:`~polyrec.safeio.ArtifactError`.
    """
    run_dir = Path(run_dir)
    return _model_from_run(run_dir, read_manifest(run_dir))


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Re-evaluate a saved run on a split of its data set (rebuilt from the cache): ``split``, ``split_hash``
    and every metric (:meth:`~polyrec.evaluation.metrics.MultiDomainMetrics.to_dict`), as ``polyrec evaluate
    --json`` prints them.

    The run's data fingerprint must still hold: a changed source file, split or row count is a
    :class:`~polyrec.rundir.RunMismatch` naming what changed. For a run written by :func:`add_domain_run`
    the data set is the added domain's rows.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    cfg, model = _model_from_run(run_dir, manifest)
    if split not in ("train", "val", "test"):
        raise KeyError(f"unknown split {split!r}; valid: test, train, val")
    info = read_add_domain_info(run_dir)
    if info is not None:
        new_data = from_dict(DataConfig, info["data"], path="data")
        check_run_data(run_dir, new_data)
        base = build_dataset(cfg.data)
        ds = new_domain_dataset(cfg.data, base, model.schema, new_data, info["domain"], int(model.backbone_domain[-1]))
        check_run_data(run_dir, new_data, ds)
    else:
        check_run_data(run_dir, cfg.data)
        ds = build_dataset(cfg.data)
        check_run_data(run_dir, cfg.data, ds)
    return {"split": split, "split_hash": ds.split_hash, **evaluate(model, ds, split).to_dict()}


def add_domain_run(
    run_dir: str | Path,
    domain: str,
    out_dir: str | Path,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Iterable[str] = (),
    backbone_domain: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Give a trained MLoRA run one more domain and train only that domain's adapter (MLoRA §1, §3.3).

    The new adapter starts at ``B = 0`` (the backbone's prediction) and is trained on the new domain's rows
    while everything else stays frozen (:func:`~polyrec.training.strategies.two_phase.finetune_new_domains`);
    the predictions of the run's own domains do not change by a single bit, which is checked on the run's
    test rows before the new run is written.

    Args:
        run_dir: a finished run trained with ``adapter.kind: mlora``.
        domain: the new domain's name, one of the domains of the new data's domain rule.
        out_dir: the new run directory (``config.json``, ``schema.json`` with the grown domain list,
            ``model.safetensors``, ``add_domain.json``, ``result.json``, the Trainer's metrics and checkpoint).
        preset / config_file: where the new rows come from (their ``data`` section); neither: the run's own data
            config (change it with ``overrides``, e.g. ``data.source.path=new.csv``).
        overrides: dotted overrides of ``data.*`` (the new data) and ``train.*`` (the run's training config,
            used for the adapter's training).
        backbone_domain: the existing domain whose backbone parameters the new domain is computed with
            (default: the first; it matters only for domain-indexed backbone parts such as STAR's).

    Returns:
        The run record: metrics of the new domain (test split), ``added_params`` (one domain's adapter
        parameters) and ``added_share`` (that / backbone parameters), ``trainable_params``, and
        ``existing_domains_unchanged``.
    """
    from .data import data_fingerprint
    from .training.strategies.two_phase import finetune_new_domains

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir)
    if inspect(out) != "absent":
        raise FileExistsError(f"{str(out)!r} already holds a run; choose another --out")
    cfg, model = load_run(run_dir)
    if not isinstance(model, MLoRAModel):
        raise ValueError(
            f"run {str(run_dir)!r} has no adapters (adapter.kind is {cfg.adapter.kind!r}); "
            f"add-domain needs a run trained with adapter.kind=mlora (e.g. --model "
            f"{RunSpec(cfg.model_name, 'mlora')})"
        )
    overrides = list(overrides)
    raw = base_config(preset, None, config_file) if preset or config_file else {"data": to_dict(cfg.data)}
    raw = apply_overrides({"data": raw.get("data") or {}, "train": to_dict(cfg.train)}, overrides)
    unknown = set(raw) - {"data", "train"}
    if unknown:
        raise ConfigError(f"add-domain overrides may change data.* and train.* only, got {sorted(unknown)}")
    new_data = from_dict(DataConfig, raw["data"], path="data")
    train_cfg = from_dict(TrainConfig, raw["train"], path="train")

    base = build_dataset(cfg.data)
    check_rows = base.splits["test"][:8192]
    before = predict(model, base, check_rows, train_cfg.eval_batch_size)
    first = model.num_domains
    add_domain(model, domain, backbone_domain if backbone_domain is not None else 0)
    ds = new_domain_dataset(cfg.data, base, model.schema, new_data, domain, int(model.backbone_domain[-1]))

    out.mkdir(parents=True, exist_ok=True)
    summary = finetune_new_domains(model, ds, train_cfg, first, out_dir=out, progress=progress)
    after = predict(model, base, check_rows, train_cfg.eval_batch_size)
    unchanged = bool(torch.equal(before, after))
    if not unchanged:
        raise RuntimeError("internal: training the new domain's adapter changed other domains' predictions")
    test, val = (
        evaluate(model, ds, "test", train_cfg.eval_batch_size),
        evaluate(model, ds, "val", train_cfg.eval_batch_size),
    )
    added = model.per_domain_adapter_parameters()
    info = {
        "base_run": str(run_dir),
        "domain": domain,
        "backbone_domain": model.backbone.schema.domain.values[int(model.backbone_domain[-1])],
        "data": to_dict(new_data),
        "train": to_dict(train_cfg),
    }
    record = {
        "protocol": cfg.protocol,
        "model": cfg.display_name,
        "backbone": cfg.model_name,
        "strategy": "add_domain",
        "seed": train_cfg.seed,
        "domain": domain,
        "rows": {s: len(ds.splits[s]) for s in ("train", "val", "test")},
        "metrics": test.to_record(),
        "val_metrics": val.to_record(),
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "stopped_by": summary["stopped_by"],
        "train_samples_per_s": summary["train_samples_per_s"],
        "trainable_params": summary["trainable_params"],
        "added_params": added,
        "added_share": added / max(model.num_backbone_parameters(), 1),
        "existing_domains_unchanged": unchanged,
        "checked_rows": len(check_rows),
        **adapter_summary(model),
        "wall_s": time.perf_counter() - t0,
        "environment": environment(),
    }
    config = cfg.to_dict()
    write_run_inputs(
        out,
        config,
        model.schema.to_dict(),
        base.processing.to_dict() if base.processing else {},
        data_fingerprint(new_data, ds),
    )  # the new domain's rows
    write_json(out / "add_domain.json", info)
    write_run_outputs(
        out,
        model.state_dict(),
        record,
        config,
        version=polyrec_version(),
        model={"backbone_schema": model.backbone.schema.to_dict()},
    )
    return record


__all__ = [
    "ADAPTER_SUFFIX",
    "RESULT_METRICS",
    "STRATEGY_SEP",
    "ExperimentConfig",
    "RunSpec",
    "add_domain_run",
    "base_config",
    "build_model",
    "build_strategy",
    "check_run_data",
    "data_config",
    "data_summary",
    "environment",
    "evaluate_run",
    "load_run",
    "make_config",
    "new_domain_dataset",
    "polyrec_version",
    "resolve_config",
    "run_experiment",
    "split_model_name",
    "split_strategy",
]
