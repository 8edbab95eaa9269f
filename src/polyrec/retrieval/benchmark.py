"""Many retrieval runs of one preset (model specs × seeds) into ``results.json`` and ``results.md``.

Each record is one run (:func:`~polyrec.retrieval.experiment.run_retrieval`, without a run directory);
``results.json`` is rewritten atomically after every run, and a benchmark started again on the same folder
keeps the finished runs whose config is unchanged (a changed config is an error naming the run). The
Markdown report: the overall table (mean over domains of Recall@50, Recall@100 and NDCG@50, mean ± std
over seeds), per-domain tables, paired t-tests of ADI against DNN and against PLE, the cost of each model,
and the published numbers of the paper for comparison of orderings.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..evaluation.metrics import paired_ttest, summarize_runs
from ..safeio import atomic_write_text, read_json, write_json
from .experiment import load_data, make_retrieval_config, run_retrieval

HEADLINE = ("recall@50", "recall@100", "ndcg@50")


def _run_in_worker(protocol: str, spec: str, overrides: list[str], seed: int) -> dict[str, Any]:
    cfg = make_retrieval_config(protocol, spec, overrides, seed=seed)
    record = run_retrieval(cfg)
    record["spec"] = spec
    return record


def run_retrieval_benchmark(
    protocol: str,
    models: Iterable[str],
    seeds: int | Iterable[int] = 5,
    out_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Train every model spec with every seed on retrieval preset ``protocol``; write the results.

    Args:
        protocol: a retrieval preset (``ml1m-age3-retrieval``, ``ml1m-genre3-retrieval``).
        models: model specs (``dnn``, ``mmoe``, ``adi@self_training``, ``adi[fusion=sum]@self_training``); a
            record is labelled with its spec as written.
        seeds: a number of seeds (0..n-1) or the seeds.
        out_dir: where ``results.json`` and ``results.md`` go.
        overrides: dotted overrides for every run.
        jobs: runs at the same time, one process each, ``cpu_count // jobs`` torch threads each.
    """
    import os

    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    models = list(models)
    if not models:
        raise ValueError("a benchmark needs at least one model (--models dnn,adi@self_training)")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    overrides = list(overrides)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if not any(o.startswith("train.num_threads=") for o in overrides):
        overrides.append(f"train.num_threads={threads}")
    out = Path(out_dir) if out_dir else None
    runs: list[dict[str, Any]] = []
    if out is not None and (out / "results.json").exists():
        runs = read_json(out / "results.json", "benchmark results")
        if not isinstance(runs, list) or not all(isinstance(r, dict) and {"spec", "seed"} <= set(r) for r in runs):
            raise ValueError(f"{str(out / 'results.json')!r} is not a list of retrieval run records; use another --out")
    done = {(r["spec"], r["seed"]): r for r in runs}
    todo = []
    for seed in seeds:  # seed by seed: an interrupted benchmark holds every model at its first seeds
        for spec in models:
            cfg = make_retrieval_config(protocol, spec, overrides, seed=seed)
            old = done.get((spec, seed))
            if old is not None:
                if old["config"] != cfg.to_dict():
                    raise ValueError(
                        f"{str(out)!r} holds run {spec!r} seed {seed} of another config; use another --out or "
                        "delete its results.json"
                    )
                continue
            todo.append((spec, seed, cfg))
    data = load_data(todo[0][2]) if todo and jobs == 1 else None

    def finished(record: dict[str, Any]) -> None:
        runs.append(record)
        m = record["metrics"]["mean"]
        print(
            f"[{protocol}] {record['spec']} seed {record['seed']}: recall@50 {m['recall@50']:.4f} "
            f"recall@100 {m['recall@100']:.4f} ndcg@50 {m['ndcg@50']:.4f}",
            file=sys.stderr,
        )
        if out is not None:
            write_results(out, protocol, runs, models)

    if jobs == 1:
        for spec, _seed, cfg in todo:
            record = run_retrieval(cfg, data=data)
            record["spec"] = spec
            finished(record)
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_in_worker, protocol, s, overrides, seed) for s, seed, _ in todo]
            for f in as_completed(futures):
                finished(f.result())
    if out is not None:
        write_results(out, protocol, runs, models)
    return runs


def write_results(out: Path, protocol: str, runs: list[dict[str, Any]], order: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    specs = list(dict.fromkeys([*(order or []), *(r["spec"] for r in runs)]))
    runs = sorted(runs, key=lambda r: (specs.index(r["spec"]), r["seed"]))
    write_json(out / "results.json", runs)
    atomic_write_text(out / "results.md", results_markdown(protocol, runs, specs))


def _by_spec(runs: list[dict[str, Any]], specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {s: [r for r in runs if r["spec"] == s] for s in specs if any(r["spec"] == s for r in runs)}


def _ms(values: list[float], scale: float = 100.0) -> str:
    mean, std = summarize_runs(values)
    return f"{mean * scale:.2f} ± {std * scale:.2f}" if len(values) > 1 else f"{mean * scale:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def results_markdown(protocol: str, runs: list[dict[str, Any]], specs: list[str]) -> str:
    from .presets import retrieval_preset

    groups = _by_spec(runs, specs)
    if not groups:
        return f"# {protocol}\n\nno runs yet\n"
    domains = list(next(iter(groups.values()))[0]["metrics"]["per_domain"])
    env = runs[0].get("environment", {})
    parts = [
        f"# Retrieval benchmark: {protocol}",
        "",
        "Full-corpus Recall@N and NDCG@N on the test split (×100), mean ± std over seeds; each query ranks its "
        "held-out positive among every item of its domain's corpus, the user's training and validation "
        "positives masked. `mean` is the unweighted mean over domains.",
        "",
        f"Machine: {env.get('cpu', '?')}, torch {env.get('torch', '?')}, polyrec {env.get('polyrec', '?')}.",
        "",
        "## Overall (mean over domains)",
        "",
    ]
    rows = []
    for spec, rs in groups.items():
        rows.append(
            [f"`{spec}`", str(len(rs))]
            + [_ms([r["metrics"]["mean"][k] for r in rs]) for k in HEADLINE]
            + [_ms([r["metrics"]["mean"]["recall@500"] for r in rs])]
        )
    parts += [_table(["model", "seeds", "R@50", "R@100", "NDCG@50", "R@500"], rows), ""]
    for k in HEADLINE:
        parts += [f"## {k} per domain", ""]
        rows = [
            [f"`{spec}`"] + [_ms([r["metrics"]["per_domain"][d][k] for r in rs]) for d in domains]
            for spec, rs in groups.items()
        ]
        parts += [_table(["model", *domains], rows), ""]
    # Paired tests: every ADI spec against DNN and PLE, paired by seed.
    refs = [s for s in ("dnn", "ple", "ple_tt") if s in groups]
    adis = [s for s in groups if s.startswith("adi")]
    if refs and adis:
        parts += ["## Paired tests (by seed): ADI against DNN and PLE", ""]
        rows = []
        for a in adis:
            for ref in refs:
                pa = {r["seed"]: r for r in groups[a]}
                pb = {r["seed"]: r for r in groups[ref]}
                common = sorted(set(pa) & set(pb))
                if len(common) < 2:
                    continue
                for k in HEADLINE:
                    x = [pa[s]["metrics"]["mean"][k] for s in common]
                    y = [pb[s]["metrics"]["mean"][k] for s in common]
                    diff = [u - v for u, v in zip(x, y)]
                    wins = sum(d > 0 for d in diff)
                    rows.append(
                        [f"`{a}` − `{ref}`", k, _ms(diff), f"{wins}/{len(common)}", f"{paired_ttest(x, y):.3g}"]
                    )
        parts += [_table(["pair", "metric", "Δ ×100", "wins", "p (paired t)"], rows), ""]
    parts += ["## Cost", ""]
    rows = []
    for spec, rs in groups.items():

        def mean_of(key: str, rs: list[dict[str, Any]] = rs) -> str:
            vals = [r[key] for r in rs if r.get(key) is not None]
            return f"{sum(vals) / len(vals):,.1f}" if vals else "–"

        rows.append(
            [
                f"`{spec}`",
                f"{rs[0].get('num_parameters', 0):,}",
                mean_of("train_samples_per_s"),
                mean_of("epoch_s"),
                mean_of("epochs"),
                mean_of("eval_s"),
                mean_of("test_eval_s"),
            ]
        )
    parts += [
        _table(
            ["model", "parameters", "train rows/s", "epoch s", "epochs", "val eval s", "test eval s (full corpus)"],
            rows,
        ),
        "",
    ]
    published = retrieval_preset(protocol)["published"]
    parts += [
        "## Published (for orderings, not values)",
        "",
        f"{published['source']}. Ordering: {published['ordering']}.",
        "",
        _table(
            ["method", "D#1", "D#2", "D#3"],
            [[k] + [f"{v:.4f}" for v in vals] for k, vals in published["table2_r500"].items()],
        ),
        "",
        f"Reproduce: `polyrec benchmark {protocol} --models {','.join(groups)} --seeds "
        f"{max(len(rs) for rs in groups.values())} --out DIR`",
        "",
    ]
    return "\n".join(parts)
