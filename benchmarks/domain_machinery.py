"""Does the domain machinery work? A check that can fail, on synthetic data built to need it (or not).

Three scenarios of :func:`polyrec.data.sources.synthetic.make_synthetic`, with the same users, items and
long-tailed (Zipf) domain sizes:

- ``conflict``: five domains whose domain-specific signal is strong and conflicting. The
  ``user_group x item_cat`` effect and the dense weights flip sign between domains (``s_d = +1, -1, +1,
  -1, +1``), each domain has its own latent interaction ``<U[u], M[d] V[i]>`` (independent ``M[d]``,
  strength 3, three times the shared preference), and the base rates differ. A model that pools the
  domains learns the majority's direction and is wrong on the others. (A latent interaction that only
  flips sign, ``specific_signs``, was tried first: the MLP with the domain as a feature learnt the flip as
  well as STAR did, 84.3 against 84.4 WAUC on the quick size, so it tells nothing apart.)
- ``identical``: the same model with no domain-specific signal at all (``identical_domains=True``): the
  domain says nothing about the label, so machinery that models it can only fit noise.
- ``conflict_blind``: the ``conflict`` rows with the domain indicator removed from the features
  (``as_feature: false``): the MLP cannot see the domain at all, so a method's gain here is what its
  domain machinery alone carries. It tells a machinery that does nothing (no gain here either) from one
  whose work the MLP already does with the domain as a feature (a gain here, none in ``conflict``).

In ``conflict`` and ``identical`` every method sees the same encoded data: user and item ids, user group,
item category, two dense features, and the domain indicator as a feature (``data.domain.as_feature:
true``), so the MLP baseline knows the domain too and a domain-aware method must win through its
structure, not through information the MLP lacks. The tables also give the Bayes-optimal WAUC (the
generator's true probabilities as scores): the ceiling every method is far or close to.

The rule (per method, WAUC on the test split, paired with the MLP by seed):

- conflict, conflict_blind: PASS when the gain over the MLP is > 0 and > 2 x the sample std of the
  per-seed differences;
- identical: PASS when the loss against the MLP is < 2 x that std (a gain always passes).

    python benchmarks/domain_machinery.py                # 5 seeds, every method; writes results/domain_machinery.{json,md}
    python benchmarks/domain_machinery.py --quick        # smaller data, 3 seeds; writes to --out (default: a temp dir)
    python benchmarks/domain_machinery.py --size large --methods mlp,shared_bottom --scenarios identical --out /tmp/l
    python benchmarks/domain_machinery.py --methods mlp,star --seeds 2 --out /tmp/dm

Runs are resumable: the JSON is rewritten after every run and a rerun skips the (scenario, method, seed)
triples it holds with the same config hash.

A failure is traced with the ablations of ``DIAGNOSTICS`` (one change to a method each, named only in
``--methods``) and with the ``large`` size (four times the full size's rows, same users and items), which
tells a cost that data removes from one it does not. The committed tables:

    python benchmarks/domain_machinery.py --quick --scenarios identical,conflict --out results/domain_machinery_ablations \
        --methods mlp,mlp+mlora,mlp+mlora[output],dfei,dfei@joint,dfei[small]@joint,mlp@dfei_cyclic,pepnet,epnet,ppnet
    python benchmarks/domain_machinery.py --methods mlp,mlp@domain_negotiation --scenarios conflict,identical \
        --out results/domain_machinery_ablations_full
    python benchmarks/domain_machinery.py --size large --seeds 3 --scenarios identical,conflict \
        --methods mlp,shared_bottom,mmoe,mlp+mlora,mlp+mlora@two_phase,pepnet,dfei --out results/domain_machinery_large
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "domain_machinery"

SCENARIOS = ("conflict", "identical", "conflict_blind")
# Scenarios whose data hide the domain from the features (the domain machinery is the only way to it).
BLIND = ("conflict_blind",)
N_DOMAINS = 5
SIGNS = (1.0, -1.0, 1.0, -1.0, 1.0)

# Data sizes: rows over all domains (Zipf-like sizes, exponent 1, smallest domain >= min_rows), users, items.
SIZES: dict[str, dict[str, int]] = {
    "full": {"rows": 60_000, "min_rows": 2_000, "users": 600, "items": 300},
    # The full size's users and items with four times the rows: how a cost measured at full size moves with data.
    "large": {"rows": 240_000, "min_rows": 8_000, "users": 600, "items": 300},
    "quick": {"rows": 30_000, "min_rows": 1_500, "users": 150, "items": 80},
    "test": {"rows": 16_000, "min_rows": 1_200, "users": 100, "items": 60},
}

# Method name -> (experiment model name, model options, train options). Sizes are small and alike: embedding 8,
# two hidden layers of 64 and 32 (or the model's own layout at that width).
_DNN = {"embedding_dim": 8, "hidden_units": [64, 32]}
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "mlp": ("mlp", _DNN, {}),
    "star": ("star", {**_DNN, "aux_network": True, "aux_hidden": [16]}, {}),
    # MLoRA with its paper's two-phase schedule (§3.3; each phase ended by early stopping), and trained
    # jointly from the first step (adapters and backbone together), as the P1 tables run it.
    "mlp+mlora@two_phase": ("mlp+mlora@two_phase", _DNN, {}),
    "star+mlora@two_phase": ("star+mlora@two_phase", {**_DNN, "aux_network": True, "aux_hidden": [16]}, {}),
    "mlp+mlora": ("mlp+mlora", _DNN, {}),
    "star+mlora": ("star+mlora", {**_DNN, "aux_network": True, "aux_hidden": [16]}, {}),
    # DFEI is trained with its paper's cyclic schedule (Algorithm 1), as the ml1m-age3 preset does.
    "dfei": (
        "dfei",
        {"embedding_dim": 8, "shared_units": [64, 32], "domain_units": [64, 32], "head_units": [16]},
        {"strategy": "dfei_cyclic"},
    ),
    "pepnet": ("pepnet", _DNN, {}),
    "shared_bottom": ("shared_bottom", {"embedding_dim": 8, "bottom_units": [64], "tower_units": [32]}, {}),
    "mmoe": ("mmoe", {"embedding_dim": 8, "num_experts": 4, "expert_units": [64], "tower_units": [32]}, {}),
    # MAMDR's settings (§V-C), as the ml1m-age7 preset gives them: β = γ = 0.1, k = 3 helper domains.
    # DN moves θ a tenth of the way per outer step (one epoch): 120 epochs ended it still improving, so the
    # bound is far above what early stopping needs (the Trainer warns if it is ever reached).
    "mlp@mamdr": (
        "mlp@mamdr",
        _DNN,
        {"strategy_options": {"outer_lr": 0.1, "specific_lr": 0.1, "helper_domains": 3}, "max_epochs": 600},
    ),
    "mlp@domain_regularization": (
        "mlp@domain_regularization",
        _DNN,
        {"strategy_options": {"specific_lr": 0.1, "helper_domains": 3}},
    ),
}
# Ablations that locate a failure of the check, run only when named in --methods (never by default): each
# changes one thing of a method above (or gives the MLP one thing of a method), same data and training.
DIAGNOSTICS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # MLoRA trained jointly, its adapters on the logit layer only (no adapter on the layers reading the ids).
    "mlp+mlora[output]": ("mlp+mlora", _DNN, {}),
    # The MLP under DFEI's Algorithm 1 (one single-domain batch per domain in turn, lr/D): the schedule alone.
    "mlp@dfei_cyclic": ("mlp", _DNN, {"strategy": "dfei_cyclic"}),
    # DFEI trained like the MLP (mixed batches, one learning rate): the model alone.
    "dfei@joint": METHODS["dfei"][:2] + ({},),
    # DFEI jointly trained, its domain towers cut to one layer of 8 and one shared prediction head.
    "dfei[small]@joint": ("dfei", {**METHODS["dfei"][1], "domain_units": [8], "domain_head": False}, {}),
    # PEPNet's halves: the domain gate on the embeddings alone, the id-conditioned layer gates alone.
    "epnet": ("epnet", _DNN, {}),
    "ppnet": ("ppnet", _DNN, {}),
    # MAMDR's halves: Domain Negotiation alone (DR alone is a method above).
    "mlp@domain_negotiation": (
        "mlp@domain_negotiation",
        _DNN,
        {"strategy_options": {"outer_lr": 0.1}, "max_epochs": 600},
    ),
}
# Adapter options beyond MLORA, per method.
ADAPTER_EXTRA: dict[str, dict[str, Any]] = {"mlp+mlora[output]": {"targets": ["output"]}}
VARIANTS = {**METHODS, **DIAGNOSTICS}
BASELINE = "mlp"
# MLoRA's α for the MLP and STAR backbones, as the ml1m-gender preset gives it (r = max(d_out // 16, 1): 4, 2).
MLORA = {"alpha": 16}

# lr 3e-3 and patience 10: an MLP whose embeddings start at std 1e-2 sits for 5-10 epochs on a plateau (the
# dense features' solution) before the id embeddings grow; patience 3 stops it there (test WAUC 75 against
# 84 when it is let through, measured on the quick identical scenario). STAR's partitioned normalization
# rescales the embeddings and skips the plateau, so a short patience would hand it a win that has nothing
# to do with domains.
# max_epochs is only a bound, far above what early stopping needs (two-phase training runs two early-stopped
# phases; a run the bound ends while still improving is warned about).
TRAIN = {
    "optimizer": "adam",
    "lr": 3e-3,
    "batch_size": 256,
    "max_epochs": 300,
    "patience": 10,
    "monitor": "wauc",
    "strategy": "joint",
    "num_threads": 1,
}


def domain_sizes(size: str) -> list[int]:
    """The long-tailed per-domain row counts of a size (largest domain first)."""
    from polyrec.data.sources.synthetic import zipf_sizes

    s = SIZES[size]
    return zipf_sizes(s["rows"], N_DOMAINS, exponent=1.0, min_size=s["min_rows"])


def source_options(scenario: str, size: str = "full", data_seed: int = 0) -> dict[str, Any]:
    """The :func:`make_synthetic` options of a scenario at a size."""
    if scenario not in SCENARIOS:
        raise KeyError(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    s = SIZES[size]
    common = {
        "n_domains": N_DOMAINS,
        "n_samples": domain_sizes(size),
        "n_users": s["users"],
        "n_items": s["items"],
        "n_dense": 2,
        "multi_valued": False,
        "seed": data_seed,
        "shared_strength": 1.0,
    }
    if scenario == "identical":
        return {**common, "ctr": 0.2, "cross_strength": 1.5, "dense_weights": [1.0, -0.5], "identical_domains": True}
    # conflict (and conflict_blind, the same rows): an independent interaction matrix per domain, the group x
    # category effect and the dense weights with opposite signs across domains, different base rates.
    return {
        **common,
        "ctr": [0.15, 0.2, 0.25, 0.2, 0.3],
        "specific_strength": 3.0,
        "cross_strength": [1.5 * s for s in SIGNS],
        "dense_weights": [[1.0 * s, -0.5 * s] for s in SIGNS],
    }


def data_config(scenario: str, size: str = "full", data_seed: int = 0) -> dict[str, Any]:
    """The ``data`` section of a scenario: the features every method sees, the domain as a feature too."""
    return {
        "source": {"kind": "synthetic", "options": source_options(scenario, size, data_seed)},
        "label": {"column": "label"},
        "domain": {"column": "domain", "as_feature": scenario not in BLIND},
        "features": [
            {"name": "user_id"},
            {"name": "item_id"},
            {"name": "user_group"},
            {"name": "item_cat"},
            {"name": "dense_0", "kind": "dense", "transform": "standard"},
            {"name": "dense_1", "kind": "dense", "transform": "standard"},
        ],
        "user_feature": "user_id",
        "split": {"method": "stratified_domain", "ratios": [0.7, 0.15, 0.15], "seed": 0},
    }


def experiment_config(
    scenario: str,
    method: str,
    seed: int,
    size: str = "full",
    train: dict[str, Any] | None = None,
    overrides: Iterable[str] = (),
):
    """The validated :class:`~polyrec.experiment.ExperimentConfig` of one run.

    Written as a YAML config file and read back by :func:`polyrec.experiment.make_config`, the way a user's
    own ``--config`` is, so the run goes through the same validation.
    """
    import yaml

    from polyrec.experiment import make_config

    if method not in VARIANTS:
        raise KeyError(f"unknown method {method!r}; valid: {', '.join(VARIANTS)}")
    model, options, train_extra = VARIANTS[method]
    train_doc = {**TRAIN, **train_extra, **(train or {}), "seed": seed}
    if "@" in model:  # '<model>@<strategy>' names its strategy; the file must not name another
        train_doc.pop("strategy")
    doc = {
        "protocol": f"synthetic-{scenario}",
        "data": data_config(scenario, size),
        "model": dict(options),
        "train": train_doc,
    }
    if model.endswith("+mlora"):
        doc["adapter"] = {**MLORA, **ADAPTER_EXTRA.get(method, {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(doc))
        return make_config(config_file=str(path), model=model, overrides=list(overrides))


def run_one(
    scenario: str,
    method: str,
    seed: int,
    size: str = "full",
    dataset=None,
    train: dict[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Train and test one (scenario, method, seed); the run record of :func:`polyrec.experiment.run_experiment`
    with ``scenario``, ``method`` and ``size`` added."""
    from polyrec.experiment import run_experiment

    cfg = experiment_config(scenario, method, seed, size, train, overrides)
    record = run_experiment(cfg, dataset=dataset, progress=False)
    return {"scenario": scenario, "method": method, "size": size, **record}


def oracle(scenario: str, size: str, dataset) -> dict[str, Any]:
    """The Bayes-optimal test WAUC ×100: the generator's true click probability as the score.

    The ceiling of every method on these rows (``dataset`` is the scenario's encoded data set, whose rows
    are the generator's rows in order).
    """
    from polyrec.data.sources import make_synthetic
    from polyrec.evaluation.metrics import auc

    frame = make_synthetic(**source_options(scenario, size), with_probability=True)
    test = dataset.splits["test"]
    label, score, domain = (frame[c].to_numpy()[test] for c in ("label", "p_true", "domain"))
    if len(frame) != len(dataset) or not (dataset.label.numpy()[test] == label).all():
        raise ValueError(
            f"the encoded data set of {scenario!r} ({len(dataset)} rows) is not the generator's rows "
            f"in order ({len(frame)}); rebuild it from data_config({scenario!r}, {size!r})"
        )
    per = {str(d): auc(label[domain == d], score[domain == d]) * 100 for d in sorted(set(domain.tolist()))}
    counts = {str(d): int((domain == d).sum()) for d in sorted(set(domain.tolist()))}
    return {"wauc": sum(per[d] * counts[d] for d in per) / sum(counts.values()), "auc_per_domain": per}


def paired(records: list[dict[str, Any]], scenario: str, method: str, metric: str = "wauc") -> dict[str, Any]:
    """Mean ± std of ``method``'s metric (×100) and its difference to the baseline, paired by seed."""
    by_seed = {
        r["seed"]: r["metrics"][metric] * 100 for r in records if r["scenario"] == scenario and r["method"] == method
    }
    base = {
        r["seed"]: r["metrics"][metric] * 100 for r in records if r["scenario"] == scenario and r["method"] == BASELINE
    }
    seeds = sorted(set(by_seed) & set(base))
    values = [by_seed[s] for s in sorted(by_seed)]
    diffs = [by_seed[s] - base[s] for s in seeds]

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else float("nan")

    out = {
        "scenario": scenario,
        "method": method,
        "seeds": seeds,
        "n": len(values),
        "mean": statistics.fmean(values) if values else float("nan"),
        "std": sd(values),
        "diff": statistics.fmean(diffs) if diffs else float("nan"),
        "diff_std": sd(diffs),
        "diffs": diffs,
    }
    out["verdict"] = verdict(scenario, out["diff"], out["diff_std"]) if method != BASELINE else "baseline"
    return out


def verdict(scenario: str, diff: float, diff_std: float, k: float = 2.0) -> str:
    """PASS/FAIL of a paired difference (method − MLP) under the scenario's rule (see the module docstring)."""
    if math.isnan(diff) or math.isnan(diff_std):
        return "n/a (needs >= 2 paired seeds)"
    if scenario != "identical":
        return "PASS" if diff > 0 and diff > k * diff_std else "FAIL"
    return "PASS" if -diff < k * diff_std else "FAIL"


def per_domain_diff(records: list[dict[str, Any]], scenario: str, method: str) -> dict[str, float]:
    """Mean per-domain test AUC difference (×100) to the baseline, paired by seed."""
    mine = {
        r["seed"]: r["metrics"]["auc_per_domain"]
        for r in records
        if r["scenario"] == scenario and r["method"] == method
    }
    base = {
        r["seed"]: r["metrics"]["auc_per_domain"]
        for r in records
        if r["scenario"] == scenario and r["method"] == BASELINE
    }
    seeds = sorted(set(mine) & set(base))
    if not seeds:
        return {}
    return {d: statistics.fmean((mine[s][d] - base[s][d]) * 100 for s in seeds) for d in base[seeds[0]]}


def environment() -> dict[str, Any]:
    import numpy
    import torch

    import polyrec

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "polyrec": getattr(polyrec, "__version__", "?"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def markdown(meta: dict[str, Any], records: list[dict[str, Any]], methods: list[str]) -> str:
    lines = [
        "# Domain machinery on synthetic data built to need it (or not)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Size `{meta['size']}`, seeds {meta['seeds']}; test-split WAUC ×100, mean ± sample std over seeds; "
        "Δ = method − MLP paired by seed, ± the sample std of the per-seed differences. Rule: conflict → "
        "PASS when Δ > 0 and Δ > 2·std(Δ); identical → PASS when −Δ < 2·std(Δ).",
        "",
    ]
    for scenario in SCENARIOS:
        if not any(r["scenario"] == scenario for r in records):
            continue
        opts = source_options(scenario, meta["size"])
        feature = "hidden from the features" if scenario in BLIND else "a feature of every method"
        ceiling = meta.get("oracle", {}).get(scenario)
        lines += [
            f"## {scenario}",
            "",
            f"`make_synthetic` options: `{json.dumps(opts)}`; the domain is {feature}."
            + (f" Bayes-optimal test WAUC: {ceiling['wauc']:.2f}." if ceiling else ""),
            "",
            "| method | WAUC ×100 | Δ vs MLP | verdict | per-domain ΔAUC (domains 0..4, largest first) | best epoch |",
            "|---|---|---|---|---|---|",
        ]
        for method in methods:
            rs = [r for r in records if r["scenario"] == scenario and r["method"] == method]
            if not rs:
                continue
            p = paired(records, scenario, method)
            dom = per_domain_diff(records, scenario, method)
            dom_txt = " ".join(f"{v:+.2f}" for v in dom.values()) if method != BASELINE else ""
            delta = f"{p['diff']:+.2f} ± {p['diff_std']:.2f}" if method != BASELINE else "—"
            epochs = "/".join(str(r["best_epoch"]) for r in rs)
            lines.append(
                f"| {method} | {p['mean']:.2f} ± {p['std']:.2f} | {delta} | {p['verdict']} | {dom_txt} | {epochs} |"
            )
        lines.append("")
    lines += ["## Settings", "", f"Training: `{json.dumps(TRAIN)}` (per-method extras below)", ""]
    for method in methods:
        model, options, extra = VARIANTS[method]
        adapter = ADAPTER_EXTRA.get(method)
        lines.append(
            f"- `{method}`: model `{model}` `{json.dumps(options)}`"
            + (f", train `{json.dumps(extra)}`" if extra else "")
            + (f", adapter `{json.dumps({**MLORA, **adapter})}`" if adapter else "")
        )
    env = meta["environment"]
    lines += [
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} CPUs, torch threads {env['torch_threads']}), "
        f"{env['platform']}; python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"polyrec {env['polyrec']}. Wall time {meta['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="model seeds 0..n-1 (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller data (30k rows) and 3 seeds (= --size quick)")
    parser.add_argument(
        "--size",
        choices=tuple(SIZES),
        default=None,
        help="data size (default full; quick: 30k rows, large: 240k rows); not full: --out is required unless --quick",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of: " + ", ".join(METHODS) + "; or the ablations (named only "
        "explicitly): " + ", ".join(DIAGNOSTICS),
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", default=None, help="output stem: writes STEM.json and STEM.md")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="dotted override applied to every run (train.lr=3e-3)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.size not in (None, "quick"):
        parser.error(f"--quick is --size quick; it cannot be combined with --size {args.size}")
    size = "quick" if args.quick else (args.size or "full")
    if size not in ("full", "quick") and not args.out:
        parser.error(f"--size {size} needs --out (results/domain_machinery holds the full size only)")
    seeds = list(range(args.seeds if args.seeds is not None else (3 if size == "quick" else 5)))
    methods = [m for m in args.methods.split(",") if m]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for m in methods:
        if m not in VARIANTS:
            parser.error(f"--methods: unknown method {m!r}; valid: {', '.join(VARIANTS)}")
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"--scenarios: unknown scenario {s!r}; valid: {', '.join(SCENARIOS)}")
    stem = (
        Path(args.out)
        if args.out
        else (OUT if size == "full" else Path(tempfile.gettempdir()) / "domain_machinery_quick")
    )
    os.environ.setdefault("POLYREC_QUIET", "1")

    import torch

    from polyrec.data.dataset import build_dataset
    from polyrec.rundir import config_hash

    torch.set_num_threads(1)
    records: list[dict[str, Any]] = []
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    if json_path.exists():
        records = json.loads(json_path.read_text()).get("runs", [])
    done = {(r["scenario"], r["method"], r["seed"]): r.get("config_hash") for r in records}
    meta = {
        "command": "python benchmarks/domain_machinery.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": size,
        "seeds": seeds,
        "methods": methods,
        "environment": environment(),
        "wall_s": 0.0,
    }
    t0 = time.perf_counter()

    def write() -> None:
        meta["wall_s"] = time.perf_counter() - t0
        summary = [
            paired(records, s, m)
            for s in scenarios
            for m in methods
            if any(r["scenario"] == s and r["method"] == m for r in records)
        ]
        stem.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**meta, "summary": summary, "runs": records}, indent=1, default=float))
        md_path.write_text(markdown(meta, records, methods))

    meta["oracle"] = {}
    for scenario in scenarios:
        dataset = build_dataset(experiment_config(scenario, BASELINE, 0, size, overrides=args.overrides).data)
        meta["oracle"][scenario] = oracle(scenario, size, dataset)
        for method in methods:
            for seed in seeds:
                cfg = experiment_config(scenario, method, seed, size, overrides=args.overrides)
                if done.get((scenario, method, seed)) == config_hash(cfg.to_dict()):
                    continue
                records = [r for r in records if (r["scenario"], r["method"], r["seed"]) != (scenario, method, seed)]
                record = run_one(scenario, method, seed, size, dataset=dataset, overrides=args.overrides)
                records.append(record)
                print(
                    f"[{scenario}] {method} seed {seed}: wauc {record['metrics']['wauc']:.4f} "
                    f"best epoch {record['best_epoch']} / {record['epochs']} ({record['wall_s']:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
                write()
    write()
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
