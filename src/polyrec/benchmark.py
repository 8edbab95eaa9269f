"""Multi-seed benchmark runs of a protocol: ``results.json`` (every run) and ``results.md`` (mean ± std)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .data.dataset import build_dataset
from .data.protocols import preset as get_preset
from .evaluation.metrics import AUC_OVERALL, AUC_PER_DOMAIN, LOGLOSS_PER_DOMAIN, WAUC
from .evaluation.report import (
    adapter_table,
    cost_table,
    per_domain_table,
    rank_table,
    results_table,
)
from .experiment import (
    ExperimentConfig,
    environment,
    make_config,
    resolve_config,
    run_experiment,
)
from .rundir import RunMismatch, config_diff, config_hash
from .safeio import read_json

#: Per-domain tables in results.md list at most this many domains (one column each).
MARKDOWN_DOMAINS = 50


def check_reuse(record: dict[str, Any], cfg: ExperimentConfig, split_hash: str, where: Path | None) -> None:
    """Raise :class:`~polyrec.rundir.RunMismatch` unless ``record`` is a run of ``cfg`` on the same split.

    A record whose ``config_hash`` equals ``cfg``'s is a run of it. Otherwise the config the record stored is
    compared key by key with ``cfg``'s, in the form :func:`~polyrec.rundir.comparable` gives both (so a
    record made before a config key existed matches a config that holds the key at the value that
    reproduces it), and its data by ``data_hash`` where it has one, else by the split hash alone.
    """
    config = cfg.to_dict()
    name = f"{record.get('model')} seed {record.get('seed')}"
    src = f" in {str(where)!r}" if where else ""
    if record.get("split_hash") not in (None, split_hash):
        raise RunMismatch(
            f"the {name} record{src} was run on split {record.get('split_hash')}, this benchmark's "
            f"split is {split_hash}; use another --out, or remove that record from results.json"
        )
    if record.get("config_hash") == config_hash(config):
        return
    stored = record.get("config")
    if stored is None:
        raise RunMismatch(
            f"the {name} record{src} carries no config to compare with; use another --out, or remove "
            "that record from results.json"
        )
    new = {k: v for k, v in config.items() if k != "data"}
    diff = config_diff({k: v for k, v in stored.items() if k != "data"}, new)
    if not diff and record.get("data_hash") not in (None, config_hash({"data": config["data"]})):
        diff = ["data (the data section of the config)"]
    if _stopped_before_either_bound(record, stored, new, diff):
        diff = []
    if diff:
        raise RunMismatch(
            f"the {name} record{src} was run with another config ({'; '.join(diff)}); use "
            "another --out for this config, or remove that record from results.json to rerun it"
        )


def _stopped_before_either_bound(
    record: dict[str, Any], stored: dict[str, Any], new: dict[str, Any], diff: list[str]
) -> bool:
    """True when ``train.max_epochs`` is the only difference and early stopping ended the recorded run before
    either bound: such a run trains exactly as it would have under the other bound."""
    if len(diff) != 1 or not diff[0].startswith("train.max_epochs:"):
        return False
    epochs = record.get("epochs")
    bounds = [(c.get("train") or {}).get("max_epochs") for c in (stored, new)]
    if not isinstance(epochs, int) or not all(isinstance(b, int) for b in bounds):
        return False
    return record.get("stopped_by", "early_stopping") == "early_stopping" and epochs < min(bounds)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_benchmark(
    protocol: str | None,
    models: Iterable[str],
    seeds: int | Iterable[int] = 5,
    out_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    model_overrides: dict[str, list[str]] | None = None,
    jobs: int = 1,
    config_file: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train every model with every seed on a protocol; the data split is the same for all runs.

    Args:
        protocol: a preset name (``ml1m-gender``, ``ml1m-age3``, ...), or None with ``config_file``.
        models: model names (:mod:`polyrec.runspec`); ``<model>+mlora`` is the model with MLoRA adapters
            (the run record says ``"model": "<model>+mlora"``, ``"adapter": "mlora"``, so results tables keep
            them apart); ``<model>@<strategy>`` is the model trained with that strategy (``mlp@mamdr``).
        seeds: a number of seeds (0..n-1) or the seeds themselves (model seeds; the split seed is the config's).
        out_dir: where ``results.json`` and ``results.md`` are written (after every run, atomically).
        overrides: dotted overrides applied to every run (``train.max_epochs=5``).
        model_overrides: extra overrides per model name.
        jobs: runs trained at the same time, each in its own process; a run whose config leaves
            ``train.num_threads`` at 0 gets ``cpu_count // jobs`` torch threads (recorded in its config).
        config_file: a YAML experiment config (``data``, ``model``, ``train``), alone or over the preset's
            keys; the report is named after its ``protocol`` (``custom`` when it names none). Each model
            name combines with it as :func:`~polyrec.runconfig.make_config` says.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if protocol is None and config_file is None:
        raise ValueError(
            "a benchmark needs a protocol: a preset name (see `polyrec presets`) or a config file (--config FILE)"
        )
    config_file = str(config_file) if config_file is not None else None
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    models = list(models)
    if not models:
        raise ValueError("a benchmark needs at least one model name (--models mlp,star)")
    out = Path(out_dir) if out_dir else None
    runs: list[dict[str, Any]] = []
    if out is not None and (out / "results.json").exists():
        runs = read_json(out / "results.json", "benchmark results")  # resume: keep finished runs
        if not isinstance(runs, list) or not all(isinstance(r, dict) and "model" in r and "seed" in r for r in runs):
            raise RunMismatch(f"{str(out / 'results.json')!r} is not a list of run records; use another --out")
    done = {(r["model"], r["seed"]): r for r in runs}
    preset = protocol
    with warnings.catch_warnings():  # said once, by the loop below, for every model name it concerns
        warnings.simplefilter("ignore")
        first = make_config(preset, models[0], config_file, overrides=overrides)
    protocol = first.protocol  # what the report is named after: the preset, or the config file's protocol
    t0 = time.perf_counter()
    dataset = build_dataset(first.data)
    prep = {"cache": dataset.report.get("cache"), "s": round(time.perf_counter() - t0, 3)}
    print(f"[{protocol}] data ready in {prep['s']}s ({prep['cache']}): {dataset.summary()}", file=sys.stderr)
    todo: list[ExperimentConfig] = []
    for model in models:
        for seed in seeds:
            extra = list(overrides) + (model_overrides or {}).get(model, []) + [f"train.seed={seed}"]
            cfg = make_config(preset, model, config_file, overrides=extra)
            previous = done.get((model, seed)) or done.get((cfg.display_name, seed))  # "deepfm" + adapter.kind=mlora
            if previous is not None:
                check_reuse(previous, _with_threads(cfg, jobs), dataset.split_hash, out)
                continue
            if cfg.data != first.data:
                raise ValueError("overrides must not change the data config between models of one benchmark")
            todo.append(_with_threads(cfg, jobs))
    kept, new = list(runs), []
    order = {(c.display_name, c.train.seed): i for i, c in enumerate(todo)}

    def finished(record: dict[str, Any]) -> None:
        new.append(record)
        m = record["metrics"]
        print(
            f"[{protocol}] {record['model']} seed {record['seed']}: wauc {m.get(WAUC, float('nan')):.4f} "
            f"auc {m.get(AUC_OVERALL, float('nan')):.4f} ({record['wall_s']:.0f}s, "
            f"{record['train_samples_per_s']:,.0f} rows/s)",
            file=sys.stderr,
        )
        runs[:] = kept + sorted(new, key=lambda r: order[(r["model"], r["seed"])])
        if out is not None:
            write_results(out, protocol, runs)

    if jobs == 1:
        for cfg in todo:
            finished(run_experiment(cfg, dataset=dataset, progress=False))
    elif todo:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch state
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_in_worker, c.to_dict(), c.strategy_in_name) for c in todo]
            for future in as_completed(futures):
                finished(future.result())
    if out is not None:
        write_results(out, protocol, runs)
    return runs


def _with_threads(cfg: ExperimentConfig, jobs: int) -> ExperimentConfig:
    """``cfg`` with ``cpu_count // jobs`` torch threads when it leaves the count to torch and runs share the CPU."""
    if jobs > 1 and cfg.train.num_threads == 0:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=threads))
    return cfg


def _run_in_worker(config: dict[str, Any], strategy_in_name: bool) -> dict[str, Any]:
    """One benchmark run in a worker process (the config travels as a plain dict)."""
    os.environ.setdefault("POLYREC_QUIET", "1")
    cfg = dataclasses.replace(resolve_config(config), strategy_in_name=strategy_in_name)
    return run_experiment(cfg, progress=False)


def write_results(out: Path, protocol: str, runs: list[dict[str, Any]]) -> None:
    """Write ``results.json`` (every run) and ``results.md`` (the tables), each atomically."""
    _atomic_write_text(out / "results.json", json.dumps(runs, indent=1, default=float))
    _atomic_write_text(out / "results.md", results_markdown(protocol, runs))


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(value)


def settings_table(protocol: str, runs: list[dict[str, Any]]) -> str:
    """One row per model: its model configuration and the training settings that vary between models.

    Read from the runs' ``config``; runs recorded before records carried it show the configuration the
    preset gives today, marked ``(preset)``.
    """
    rows = ["| model | model configuration | training |", "|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        record = next(r for r in runs if r["model"] == model)
        cfg, origin = record.get("config"), ""
        if cfg is None:
            try:
                cfg, origin = make_config(protocol, model).to_dict(), " (preset)"
            except (KeyError, ValueError):
                continue
        model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
        if cfg.get("adapter"):
            model_cfg["adapter"] = {k: v for k, v in cfg["adapter"].items() if v is not None}
        train = cfg["train"]
        train_txt = ", ".join(
            f"{k}={_compact(train[k])}"
            for k in ("strategy", "optimizer", "lr", "weight_decay", "batch_size", "monitor", "patience", "max_epochs")
            if k in train
        )
        model_txt = ", ".join(f"{k}={_compact(v)}" for k, v in model_cfg.items())
        rows.append(f"| {model} | {model_txt}{origin} | {train_txt} |")
    return "\n".join(rows)


def results_markdown(protocol: str, runs: list[dict[str, Any]]) -> str:
    """The Markdown report of a benchmark's runs, next to the preset's published numbers.

    Sections: the primary metric (and overall AUC / logloss) per model with the published value; for models
    run both bare and with MLoRA, the paired comparison (Δ, paired t-test p, parameter share, throughput);
    per-domain AUC (published values in brackets), average AUC and average RANK over domains, and logloss; the cost of each model (parameters, rows/s,
    epochs, threads); the environments the runs were measured in.
    """
    try:
        p = get_preset(protocol)
    except KeyError:
        p = {}
    ref = p.get("reference", {})
    primary = p.get("primary_metric", AUC_OVERALL)
    lines = [
        f"# {protocol}: {len(runs)} runs",
        "",
        "Test split; mean ± std over model seeds (sample std); AUC-type metrics ×100"
        + ("; `paper` is the published number." if ref else " (no published numbers for this protocol)."),
        "",
    ]
    lines.append(results_table(runs, reference=ref.get(primary), reference_metric=primary))
    mlora = adapter_table(runs, metric=primary, reference=ref.get(primary))
    if mlora:
        lines += ["", f"## Without and with MLoRA ({primary} ×100, paired by seed)", "", mlora]
    n_domains = len({d for r in runs for d in ((r.get("metrics") or {}).get(AUC_PER_DOMAIN) or {})})
    if n_domains > MARKDOWN_DOMAINS:
        lines += [
            "",
            f"Per-domain tables: {n_domains:,} domains, more than the {MARKDOWN_DOMAINS} a table here shows; "
            "every run's per-domain metrics are in results.json.",
        ]
    else:
        lines += [
            "",
            "## Per-domain test AUC (×100" + ("; published in brackets)" if ref.get(AUC_PER_DOMAIN) else ")"),
            "",
            per_domain_table(runs, AUC_PER_DOMAIN, reference=ref.get(AUC_PER_DOMAIN)),
        ]
        if len({r["model"] for r in runs}) > 1:
            lines += [
                "",
                "## Average AUC and average RANK over domains (MAMDR's metrics; rank 1 = best)",
                "",
                rank_table(runs),
            ]
        lines += ["", "## Per-domain test logloss", "", per_domain_table(runs, LOGLOSS_PER_DOMAIN)]
    lines += ["", "## Cost (means over seeds; training rows/s over all epochs)", "", cost_table(runs)]
    lines += ["", "## Settings", "", settings_table(protocol, runs)]
    notes: dict[str, list[str]] = {}
    for r in runs:
        if r.get("note"):
            notes.setdefault(r["note"], []).append(f"{r['model']} seed {r['seed']}")
    if notes:
        lines += ["", "## Notes on individual runs", ""] + [
            f"- {', '.join(who)}: {text}" for text, who in notes.items()
        ]
    envs = list(dict.fromkeys(json.dumps(r.get("environment", {}), sort_keys=True) for r in runs))
    envs = envs or [json.dumps(environment(), sort_keys=True)]
    lines += ["", "Environment" + ("s" if len(envs) > 1 else "") + ": " + "; ".join(envs), ""]
    return "\n".join(lines)
