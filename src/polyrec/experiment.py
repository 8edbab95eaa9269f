"""One experiment = data config + model + training config; run it, save it, evaluate it again later.

The plain-dict form (what YAML files, presets and ``--set`` overrides edit) is::

    {"protocol": "ml1m-gender", "data": {...}, "model": {"name": "star", <model options>}, "train": {...}}

:func:`resolve_config` validates it into an :class:`ExperimentConfig`; :func:`run_experiment` trains,
evaluates the test split and writes a run directory; :func:`evaluate_run` reloads a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .data.config import DataConfig
from .data.dataset import EncodedDataset, build_dataset
from .data.protocols import preset as get_preset
from .models import create_model, get_model_class
from .training.checkpoint import atomic_torch_save
from .training.trainer import TrainConfig, Trainer, evaluate

RESULT_METRICS = ("wauc", "auc_overall", "auc_mean", "logloss_overall", "gauc", "auc_per_domain",
                  "logloss_per_domain", "pcoc_per_domain", "count_per_domain")


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: protocol name, data, model name and options, training."""

    protocol: str
    data: DataConfig
    model_name: str
    model: Any
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "data": to_dict(self.data),
                "model": {"name": self.model_name, **to_dict(self.model)}, "train": to_dict(self.train)}


def base_config(preset: str | None = None, model: str | None = None, config_file: str | None = None) -> dict:
    """The plain-dict config from a preset and/or a YAML file (the file's keys win)."""
    data: dict[str, Any] = {"protocol": "custom", "data": {}, "model": {}, "train": {}}
    if preset:
        p = get_preset(preset)
        data = {"protocol": preset, "data": p["data"], "train": p["train"], "model": {}}
        if model:
            params = p["models"].get(model)
            if params is None:
                fields = {f.name for f in dataclasses.fields(get_model_class(model).Config)}
                params = {k: v for k, v in p.get("model_defaults", {}).items() if k in fields}
            data["model"] = {"name": model, **params}
    if config_file:
        file_cfg = load_yaml(config_file)
        for key, value in file_cfg.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    if model and data["model"].get("name") not in (None, model):
        data["model"] = {"name": model}
    elif model:
        data["model"].setdefault("name", model)
    return data


def resolve_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain-dict experiment config (unknown keys and bad types raise ConfigError)."""
    unknown = set(data) - {"protocol", "data", "model", "train"}
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {sorted(unknown)}; valid: protocol, data, model, train")
    model = dict(data.get("model") or {})
    name = model.pop("name", None)
    if not name:
        raise ConfigError("model.name is required (see `polyrec models` for the registered names)")
    cls = get_model_class(name)
    return ExperimentConfig(
        protocol=str(data.get("protocol", "custom")),
        data=from_dict(DataConfig, data.get("data") or {}, path="data"),
        model_name=name,
        model=from_dict(cls.Config, model, path=f"model"),
        train=from_dict(TrainConfig, data.get("train") or {}, path="train"),
    )


def make_config(preset: str | None = None, model: str | None = None, config_file: str | None = None,
                overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Preset/file + dotted overrides -> validated config."""
    return resolve_config(apply_overrides(base_config(preset, model, config_file), list(overrides)))


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in RESULT_METRICS if k in m}


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, dataset: EncodedDataset | None = None,
                   progress: bool | None = None) -> dict[str, Any]:
    """Train ``cfg``'s model, evaluate on the test split, and (with ``out_dir``) write the run directory.

    Returns the run record: protocol, model, strategy, seed, split_hash, metrics (test), validation
    metrics, train_samples_per_s, wall_s and more.
    """
    t0 = time.perf_counter()
    ds = dataset if dataset is not None else build_dataset(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model_name, ds.schema, **to_dict(cfg.model))
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (out / "schema.json").write_text(ds.schema.to_json())
    trainer = Trainer(model, ds, cfg.train, out_dir=out, resume=out is not None, progress=progress)
    summary = trainer.fit()
    test = trainer.evaluate("test")
    val = trainer.evaluate("val")
    record = {
        "protocol": cfg.protocol,
        "model": cfg.model_name,
        "strategy": cfg.train.strategy,
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split.seed,
        "split_hash": ds.split_hash,
        "metrics": _metrics(test),
        "val_metrics": _metrics(val),
        "train_samples_per_s": summary["train_samples_per_s"],
        "wall_s": time.perf_counter() - t0,
        "train_s": summary["train_s"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "environment": environment(),
    }
    if out is not None:
        atomic_torch_save({"model": model.state_dict(), "config": cfg.to_dict(), "schema": ds.schema.to_json()},
                          out / "model.pt")
        (out / "result.json").write_text(json.dumps(record, indent=2, default=float))
    return record


def load_run(run_dir: str | Path):
    """(config, model with the run's best weights) of a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a finished run directory (no model.pt)")
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    cfg = resolve_config(state["config"])
    from .data.schema import DatasetSchema

    schema = DatasetSchema.from_json(state["schema"])
    model = create_model(cfg.model_name, schema, **to_dict(cfg.model))
    model.load_state_dict(state["model"])
    return cfg, model


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Re-evaluate a saved run on a split of its data set (rebuilt from the cache)."""
    cfg, model = load_run(run_dir)
    ds = build_dataset(cfg.data)
    if split not in ds.splits:
        raise KeyError(f"unknown split {split!r}; valid: {sorted(ds.splits)}")
    return {"split": split, "split_hash": ds.split_hash, **evaluate(model, ds, split)}
