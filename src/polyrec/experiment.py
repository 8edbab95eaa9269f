"""One experiment = data config + model + training config; run it, save it, evaluate it again later.

The plain-dict form (what YAML files, presets and ``--set`` overrides edit) is::

    {"protocol": "ml1m-gender", "data": {...}, "model": {"name": "star", <model options>}, "train": {...},
     "adapter": {"kind": "mlora", "alpha": 16, "targets": ["dnn"], "max_adapter_params": null}}

``adapter`` is optional (default ``kind: none``). A model name ``<model>+mlora`` (``deepfm+mlora``) is
``<model>`` with ``adapter.kind: mlora``; with ``adapter.alpha`` unset, α is the protocol preset's
``mlora_alpha`` for the model (the MLoRA authors' per-model values for ``ml1m-gender``), else 32.

:func:`resolve_config` validates it into an :class:`ExperimentConfig`; :func:`run_experiment` trains,
evaluates the test split and writes a run directory; :func:`evaluate_run` reloads a run directory;
:func:`add_domain_run` gives a trained MLoRA run one more domain and trains only its adapter.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .data.config import DataConfig
from .data.dataset import EncodedDataset, build_dataset
from .data.protocols import preset as get_preset
from .models import create_model, get_model_class
from .models.adapters import (
    DEFAULT_ALPHA,
    AdapterConfig,
    MLoRAModel,
    adapter_summary,
    add_domain,
    attach_mlora,
)
from .models.specific import specific_summary
from .rundir import (
    RunMismatch,
    check_data,
    check_resumable,
    clear,
    config_hash,
    fingerprint_diff,
    inspect,
    read_manifest,
    with_legacy_values,
    write_manifest,
)
from .safeio import ArtifactError, load_tensors, read_json, save_tensors, write_json
from .training.strategies import create_strategy
from .training.trainer import TrainConfig, Trainer, evaluate, predict

RESULT_METRICS = ("wauc", "auc_overall", "auc_mean", "logloss_overall", "gauc", "auc_per_domain",
                  "logloss_per_domain", "pcoc_per_domain", "count_per_domain")


ADAPTER_SUFFIX = "+mlora"
STRATEGY_SEP = "@"


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: protocol name, data, model name and options, training, adapter."""

    protocol: str
    data: DataConfig
    model_name: str
    model: Any
    train: TrainConfig
    adapter: AdapterConfig = AdapterConfig()
    strategy_in_name: bool = False

    @property
    def display_name(self) -> str:
        """The model's name in results: ``deepfm``, ``deepfm+mlora``, or with the strategy it was asked for
        by name (``mlp@mamdr``)."""
        name = self.model_name + (ADAPTER_SUFFIX if self.adapter.kind == "mlora" else "")
        return name + (STRATEGY_SEP + self.train.strategy if self.strategy_in_name else "")

    def to_dict(self) -> dict[str, Any]:
        out = {"protocol": self.protocol, "data": to_dict(self.data),
               "model": {"name": self.model_name, **to_dict(self.model)}, "train": to_dict(self.train)}
        if self.adapter.kind != "none":
            out["adapter"] = to_dict(self.adapter)
        return out


def split_model_name(name: str) -> tuple[str, bool]:
    """``"deepfm+mlora"`` -> ``("deepfm", True)``; ``"deepfm"`` -> ``("deepfm", False)``."""
    if isinstance(name, str) and name.endswith(ADAPTER_SUFFIX):
        return name[: -len(ADAPTER_SUFFIX)], True
    return name, False


def split_strategy(name: str) -> tuple[str, str | None]:
    """``"mlp@mamdr"`` -> ``("mlp", "mamdr")`` (the model trained with that strategy); ``"mlp"`` -> ``("mlp", None)``."""
    if isinstance(name, str) and STRATEGY_SEP in name:
        model, strategy = name.rsplit(STRATEGY_SEP, 1)
        if not model or not strategy:
            raise ConfigError(f"model name {name!r}: expected '<model>@<strategy>', e.g. 'mlp@mamdr'")
        return model, strategy
    return name, None


def base_config(preset: str | None = None, model: str | None = None, config_file: str | None = None) -> dict:
    """The plain-dict config from a preset and/or a YAML file (the file's keys win)."""
    data: dict[str, Any] = {"protocol": "custom", "data": {}, "model": {}, "train": {}}
    adapted, strategy = False, None
    if model:
        model, strategy = split_strategy(model)
        model, adapted = split_model_name(model)
    if preset:
        p = get_preset(preset)
        data = {"protocol": preset, "data": p["data"], "train": p["train"], "model": {}}
        if model:
            params = p["models"].get(model)
            if params is None:
                fields = {f.name for f in dataclasses.fields(get_model_class(model).Config)}
                params = {k: v for k, v in p.get("model_defaults", {}).items() if k in fields}
            data["model"] = {"name": model, **params}
            # A model whose paper trains it with its own strategy (DFEI's cyclic schedule) says so here.
            data["train"] = {**data["train"], **p.get("model_train", {}).get(model, {})}
            if strategy:  # a strategy asked for by name gets the preset's settings for it (no others')
                data["train"] = {**data["train"], "strategy_options": {}, "strategy": strategy,
                                 **p.get("strategy_train", {}).get(strategy, {})}
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
    if strategy:
        data["model"]["name"] = f"{model}{STRATEGY_SEP}{strategy}"  # resolve_config sets train.strategy from it
    if adapted:
        data["adapter"] = {**(data.get("adapter") or {}), "kind": "mlora"}
    return data


def _resolve_adapter(raw: Any, protocol: str, model_name: str) -> AdapterConfig:
    adapter = from_dict(AdapterConfig, raw or {}, path="adapter")
    if adapter.kind == "mlora" and adapter.alpha is None:
        try:
            alpha = get_preset(protocol).get("mlora_alpha", {}).get(model_name, DEFAULT_ALPHA)
        except KeyError:  # not a preset (a custom protocol name)
            alpha = DEFAULT_ALPHA
        adapter = dataclasses.replace(adapter, alpha=alpha)
    if adapter.kind == "mlora":  # held resolved, so a saved config says which layer the run had
        adapter = dataclasses.replace(adapter, domain_bias=bool(adapter.domain_bias),
                                      a_init=adapter.a_init or "gaussian")
    return adapter


def resolve_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain-dict experiment config (unknown keys and bad types raise ConfigError)."""
    unknown = set(data) - {"protocol", "data", "model", "train", "adapter"}
    if unknown:
        raise ConfigError(
            f"unknown top-level config key(s) {sorted(unknown)}; valid: protocol, data, model, train, adapter"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment config is a mapping with sections data, model, train; got {data!r}")
    for section in ("data", "model", "train", "adapter"):
        value = data.get(section)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{section}: expected a mapping of {section} keys, got {value!r}; set one key with "
                              f"--set {section}.KEY=VALUE")
    model = dict(data.get("model") or {})
    name = model.pop("name", None)
    if not name:
        raise ConfigError("model.name is required (see `polyrec models` for the registered names)")
    given = name
    name, strategy = split_strategy(name)
    name, adapted = split_model_name(name)
    train = dict(data.get("train") or {})
    if strategy:
        if train.get("strategy", strategy) != strategy:
            raise ConfigError(f"model.name {given!r} asks for strategy {strategy!r} but train.strategy is "
                              f"{train['strategy']!r}; drop one of them")
        train["strategy"] = strategy
    raw_adapter = data.get("adapter")
    if adapted:
        if isinstance(raw_adapter, dict) and raw_adapter.get("kind", "mlora") != "mlora":
            raise ConfigError(f"model.name {name + ADAPTER_SUFFIX!r} asks for MLoRA but adapter.kind is "
                              f"{raw_adapter['kind']!r}; drop one of them")
        raw_adapter = {**(raw_adapter if isinstance(raw_adapter, dict) else {}), "kind": "mlora"}
    cls = get_model_class(name)
    protocol = str(data.get("protocol", "custom"))
    data_cfg = from_dict(DataConfig, data.get("data") or {}, path="data")
    model_cfg = from_dict(cls.Config, model, path="model")
    if getattr(model_cfg, "aux_features", ()) is None:
        # STAR's auxiliary network: the data's domain-describing features, held resolved in the config.
        model_cfg = dataclasses.replace(model_cfg, aux_features=tuple(data_cfg.domain.describing))
    return ExperimentConfig(
        protocol=protocol,
        data=data_cfg,
        model_name=name,
        model=model_cfg,
        train=from_dict(TrainConfig, train, path="train"),
        adapter=_resolve_adapter(raw_adapter, protocol, name),
        strategy_in_name=strategy is not None,
    )



def make_config(preset: str | None = None, model: str | None = None, config_file: str | None = None,
                overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Preset/file + dotted overrides -> validated config."""
    return resolve_config(apply_overrides(base_config(preset, model, config_file), list(overrides)))


def polyrec_version() -> str:
    from . import __version__

    return __version__


def environment() -> dict[str, Any]:
    return {
        "polyrec": polyrec_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in RESULT_METRICS if k in m}


def build_model(cfg: ExperimentConfig, schema):
    """``cfg``'s model for ``schema``, with its adapters attached when ``cfg.adapter.kind`` is ``mlora``, as
    the training strategy needs it (:meth:`polyrec.training.strategies.Strategy.prepare_model`)."""
    model = create_model(cfg.model_name, schema, **to_dict(cfg.model))
    if cfg.adapter.kind == "mlora":
        a = cfg.adapter
        model = attach_mlora(model, alpha=a.alpha if a.alpha is not None else DEFAULT_ALPHA, targets=a.targets,
                             max_adapter_params=a.max_adapter_params, domain_bias=bool(a.domain_bias),
                             a_init=a.a_init or "gaussian")
    # A strategy may need parameters of its own (MAMDR's domain-specific offsets): it wraps the model here.
    return create_strategy(cfg.train.strategy, cfg.train.strategy_options).prepare_model(model)


def _check_splits(cfg: ExperimentConfig, ds: EncodedDataset) -> None:
    for split in ("train", "val", "test"):
        if len(ds.splits[split]) == 0:
            raise ConfigError(f"data.split.ratios {list(cfg.data.split.ratios)} leave the {split} split empty "
                              f"({len(ds):,} rows); a run needs rows in train (fitting), val (early stopping, "
                              "model selection) and test (the reported metrics)")


def data_summary(ds: EncodedDataset) -> dict[str, Any]:
    """What a run record says about its data: rows, OOV rows per split and feature, duplicates, drops."""
    report = ds.report
    out = {"rows": {s: len(ds.splits[s]) for s in ("train", "val", "test")}, "oov": report.get("oov", {})}
    for key in ("duplicates", "dedupe_removed", "dropped_untrained", "truncated"):
        if report.get(key):
            out[key] = report[key]
    return out


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, dataset: EncodedDataset | None = None,
                   progress: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg``'s model, evaluate on the test split, and (with ``out_dir``) write the run directory.

    With ``out_dir`` holding a run already, the run is resumed from its newest usable checkpoint when its
    resolved config and data fingerprint are this one's (a finished run is evaluated again); otherwise
    :class:`~polyrec.rundir.RunMismatch` names what differs and ``out_dir`` is left untouched.
    ``overwrite`` removes the previous run's files first (after the config and the data are ready).

    Returns the run record: protocol, model, strategy, seed, split_hash, config_hash, metrics (test),
    validation metrics, data (rows, OOV rows per split and feature, duplicates), train_samples_per_s,
    wall_s and more.
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
        resuming = inspect(out) != "absent"
        out.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_json(out / "config.json", config)
            write_json(out / "schema.json", ds.schema.to_dict())
            write_json(out / "processing.json", ds.processing.to_dict() if ds.processing else {})
            write_json(out / "data.json", fingerprint)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ds.schema)
    trainer = Trainer(model, ds, cfg.train, out_dir=out, resume=out is not None, progress=progress)
    summary = trainer.fit()
    test = trainer.evaluate("test")
    val = trainer.evaluate("val")
    record = {
        "protocol": cfg.protocol,
        "model": cfg.display_name,
        "backbone": cfg.model_name,
        "strategy": cfg.train.strategy,
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split.seed,
        "split_hash": ds.split_hash,
        "config_hash": config_hash(config),
        "data_hash": config_hash({"data": config["data"]}),
        "metrics": _metrics(test),
        "val_metrics": _metrics(val),
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
        save_tensors(out / "model.safetensors", model.state_dict())
        write_json(out / "result.json", record)
        write_manifest(out, config, version=polyrec_version())
    return record


def _model_from_run(run_dir: Path, manifest: dict[str, Any]):
    from .data.schema import DatasetSchema

    try:
        cfg = resolve_config(with_legacy_values(read_json(run_dir / "config.json", "run config")))
    except ConfigError as exc:
        raise ArtifactError(f"run config {str(run_dir / 'config.json')!r} is not a valid config: {exc}") from None
    try:
        schema = DatasetSchema.from_dict(read_json(run_dir / "schema.json", "run schema"))
        backbone = manifest.get("model", {}).get("backbone_schema")
        # A run made by add_domain_run: the backbone was built for fewer domains than the model now has.
        backbone_schema = DatasetSchema.from_dict(backbone) if backbone else schema
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"run schema of {str(run_dir)!r} is malformed ({exc})") from None
    model = build_model(cfg, backbone_schema)
    for name in schema.domain.values[backbone_schema.num_domains:]:
        add_domain(model, name)  # backbone_domain and the adapters come from the weights below
    tensors, _ = load_tensors(run_dir / "model.safetensors", "run weights")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"run weights {str(run_dir / 'model.safetensors')!r} do not fit the run's config "
                            f"({str(exc).splitlines()[0]})") from None
    return cfg, model


def load_run(run_dir: str | Path):
    """(config, model with the run's best weights) of a finished run directory.

    Every file is checked against the run's manifest (sha256) before it is read; only JSON and
    safetensors are read. A missing, damaged or foreign file is an :class:`~polyrec.safeio.ArtifactError`.
    """
    run_dir = Path(run_dir)
    return _model_from_run(run_dir, read_manifest(run_dir))


def check_run_data(run_dir: str | Path, data: DataConfig, ds: EncodedDataset | None = None) -> None:
    """Raise :class:`~polyrec.rundir.RunMismatch` when the run's data changed since it was trained: a source
    file's sha256 (before anything is encoded: ``ds`` None), then the split hash and the rows per split and
    domain of the data set ``data`` gives now (``ds``)."""
    from .data import data_fingerprint, source_files

    run_dir = Path(run_dir)
    stored = read_json(run_dir / "data.json", "run data fingerprint")
    now = {"source": {"files": source_files(data.source)}, "split_hash": stored.get("split_hash"),
           "rows": stored.get("rows")}
    if ds is not None:
        now = data_fingerprint(data, ds)
    diff = fingerprint_diff(stored, now)
    if diff:
        raise RunMismatch(f"the data of run {str(run_dir)!r} changed since it was trained ({'; '.join(diff)}); "
                          "evaluating it would report on other rows. Restore the data it was trained on, or "
                          "retrain the run")


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Re-evaluate a saved run on a split of its data set (rebuilt from the cache).

    The run's data fingerprint must still hold: a changed source file, split or row count is a
    :class:`~polyrec.rundir.RunMismatch` naming what changed. For a run written by :func:`add_domain_run`
    the data set is the added domain's rows.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    cfg, model = _model_from_run(run_dir, manifest)
    if split not in ("train", "val", "test"):
        raise KeyError(f"unknown split {split!r}; valid: test, train, val")
    info_path = run_dir / "add_domain.json"
    if info_path.exists():
        info = read_json(info_path, "add-domain record")
        new_data = from_dict(DataConfig, info["data"], path="data")
        check_run_data(run_dir, new_data)
        base = build_dataset(cfg.data)
        ds = new_domain_dataset(cfg.data, base, model.schema, new_data, info["domain"], int(model.backbone_domain[-1]))
        check_run_data(run_dir, new_data, ds)
    else:
        check_run_data(run_dir, cfg.data)
        ds = build_dataset(cfg.data)
        check_run_data(run_dir, cfg.data, ds)
    return {"split": split, "split_hash": ds.split_hash, **evaluate(model, ds, split)}


# ---------------------------------------------------------------------------------------------- new domains


def new_domain_dataset(run_data: DataConfig, base: EncodedDataset, schema, data: DataConfig, name: str,
                       backbone_domain: int = 0) -> EncodedDataset:
    """The rows of domain ``name`` of data set ``data``, encoded the way the run's data was.

    Args:
        run_data: the trained run's data config (its features are encoded, with the vocabularies and
            scalers fitted on the run's training split, ``base.processing``).
        base: the run's encoded data set (for its fitted processing).
        schema: the adapted model's schema, which already lists ``name`` as its last domain.
        data: where the new rows come from (source, label rule, domain rule, split); ``name`` must be one
            of the domains its domain rule produces.
        name: the new domain.
        backbone_domain: the existing domain the backbone computes the new one as (see
            :func:`~polyrec.models.adapters.add_domain`); with ``domain.as_feature`` the new rows' domain
            indicator feature is that domain's, since the trained embedding table has no row for the new one.

    Ids unseen in the run's training data map to the OOV bucket (counted in ``report["oov"]``).
    """
    import numpy as np
    import pandas as pd

    from .data.dataset import (
        _from_arrays,
        derive_domain,
        derive_label,
        encode_rows,
        id_columns,
        load_source,
        make_splits,
        sample_rows,
    )
    from .data.processing import _as_str
    from .data.schema import FIRST_INDEX

    if base.processing is None:
        raise ValueError("the run's data set has no fitted processing to encode new rows with; rebuild its cache")
    frame = sample_rows(load_source(data.source, id_columns(run_data)), data.sample)  # ids read exactly
    codes, names = derive_domain(frame, data.domain)
    if name not in names:
        raise ValueError(f"domain {name!r} is not in the new data; its domain rule gives {list(names)}; "
                         "pick one of them with --domain, or change data.domain")
    frame = frame[codes == names.index(name)].reset_index(drop=True)
    label = derive_label(frame, data.label)
    arrays, oov_rows = encode_rows(frame, run_data, base.processing)
    if run_data.domain.as_feature:
        indicator = np.full((len(frame), 1), backbone_domain + FIRST_INDEX, np.int64)
        arrays["sparse"] = np.concatenate([arrays["sparse"], indicator], axis=1)
    users = None
    if run_data.user_feature is not None:
        fc = next(f for f in run_data.features if f.name == run_data.user_feature)
        users = pd.factorize(_as_str(frame[fc.source_column]), use_na_sentinel=False)[0].astype(np.int64)
        arrays["user"] = users
    times = frame[data.split.time_column].to_numpy() if data.split.method == "time" else None
    domain = np.full(len(frame), schema.num_domains - 1, dtype=np.int64)
    splits = make_splits(data.split.method, data.split.ratios, data.split.seed, label, domain, users, times)
    arrays["label"], arrays["domain"] = label, domain
    oov = {s: {k: int(v[splits[s]].sum()) for k, v in oov_rows.items() if int(v[splits[s]].sum())} for s in splits}
    return _from_arrays(schema, arrays, splits, base.processing, {"rows": len(frame), "oov": oov, "new_domain": name})


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
            ``model.pt``, ``add_domain.json``, ``result.json``, the Trainer's metrics and checkpoint).
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

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir)
    if inspect(out) != "absent":
        raise FileExistsError(f"{str(out)!r} already holds a run; choose another --out")
    cfg, model = load_run(run_dir)
    if not isinstance(model, MLoRAModel):
        raise ValueError(f"run {str(run_dir)!r} has no adapters (adapter.kind is {cfg.adapter.kind!r}); "
                         "add-domain needs a run trained with adapter.kind=mlora (e.g. --model mlp+mlora)")
    overrides = list(overrides)
    if preset or config_file:
        raw = base_config(preset, None, config_file)
    else:
        raw = {"data": to_dict(cfg.data)}
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

    from .training.strategies.two_phase import finetune_new_domains

    out.mkdir(parents=True, exist_ok=True)
    summary = finetune_new_domains(model, ds, train_cfg, first, out_dir=out, progress=progress)
    after = predict(model, base, check_rows, train_cfg.eval_batch_size)
    unchanged = bool(torch.equal(before, after))
    if not unchanged:
        raise RuntimeError("internal: training the new domain's adapter changed other domains' predictions")
    test, val = evaluate(model, ds, "test", train_cfg.eval_batch_size), evaluate(model, ds, "val", train_cfg.eval_batch_size)
    added = model.per_domain_adapter_parameters()
    info = {"base_run": str(run_dir), "domain": domain, "backbone_domain": model.backbone.schema.domain.values[
        int(model.backbone_domain[-1])], "data": to_dict(new_data), "train": to_dict(train_cfg)}
    record = {
        "protocol": cfg.protocol,
        "model": cfg.display_name,
        "backbone": cfg.model_name,
        "strategy": "add_domain",
        "seed": train_cfg.seed,
        "domain": domain,
        "rows": {s: len(ds.splits[s]) for s in ("train", "val", "test")},
        "metrics": _metrics(test),
        "val_metrics": _metrics(val),
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
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "schema.json", model.schema.to_dict())
    write_json(out / "processing.json", base.processing.to_dict() if base.processing else {})
    write_json(out / "add_domain.json", info)
    write_json(out / "data.json", data_fingerprint(new_data, ds))  # the new domain's rows
    save_tensors(out / "model.safetensors", model.state_dict())
    write_json(out / "result.json", record)
    write_manifest(out, cfg.to_dict(), model={"backbone_schema": model.backbone.schema.to_dict()},
                   version=polyrec_version())
    return record
