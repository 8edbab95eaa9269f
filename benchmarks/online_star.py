"""STAR's online training (§4.4) on a drifting synthetic stream: the sliding-window buffer against arrival order.

The stream: one synthetic world (``make_synthetic``, 3 domains whose preferences conflict in part), its rows
dealt into 9 days. Every day holds 40,000 rows whose domain shares change from day to day, and within a
day the rows arrive in the order of a day's traffic: domain 0 peaks in the morning, domain 2 in the
evening (each row gets an hour drawn from its domain's peak, and the day is sorted by hour). That is the
situation the paper's buffer is for: trained in arrival order, a model follows the domain of the hour.

STAR (the synthetic-zipf presets' sizes) is trained offline on day 0 (``polyrec train``, early stopping on
a random split of day 0). Then, for days 1-8, three ways to go on, each evaluated on every day before
training on it:

- ``frozen``: the day-0 model, never updated;
- ``arrival order``: online training with a window of one batch (each batch is the next rows as they
  arrive: no shuffle);
- ``sliding window``: online training with a window of 32 batches (``polyrec train --stream``).

    python benchmarks/online_star.py        # writes benchmarks/results/online_star.{json,md,svg}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
DAYS, ROWS_PER_DAY, BATCH = 9, 40_000, 512


def make_stream(folder: Path, seed: int = 0) -> list[Path]:
    from polyrec.data.sources.synthetic import make_synthetic

    world = make_synthetic(
        n_domains=3,
        n_samples=[DAYS * ROWS_PER_DAY] * 3,
        n_users=3000,
        n_items=1500,
        specific_signs=[1.0, -1.0, 0.5],
        cross_strength=[1.5, -1.5, 0.0],
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    pools = {d: rng.permutation(np.flatnonzero(world["domain"].to_numpy() == d)).tolist() for d in range(3)}
    peaks = np.array([8.0, 14.0, 20.0])  # the hour each domain's traffic peaks
    paths = []
    for day in range(DAYS):
        share = np.array([1.0 + np.sin(day), 1.0, 1.0 + np.cos(day)])  # the day's domain shares drift
        counts = np.floor(share / share.sum() * ROWS_PER_DAY).astype(int)
        rows, hours = [], []
        for d in range(3):
            take = [pools[d].pop() for _ in range(counts[d])]
            rows += take
            hours.append(rng.normal(peaks[d], 2.5, len(take)))
        frame = world.iloc[rows].reset_index(drop=True)
        frame["hour"] = np.concatenate(hours)
        frame = frame.sort_values("hour", kind="mergesort").drop(columns="hour").reset_index(drop=True)
        path = folder / f"day-{day}.parquet"
        frame.to_parquet(path, row_group_size=8192)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from polyrec.data.processing import FittedProcessing
    from polyrec.experiment import cpu_model, environment, load_run, run_experiment
    from polyrec.runconfig import make_config
    from polyrec.safeio import read_json
    from polyrec.training.online import _encoded, _evaluate, _svg, train_online

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        days = make_stream(root, args.seed)
        cfg = make_config(
            "synthetic-zipf-10k",
            "star",
            overrides=[
                "data.source.kind=parquet",
                f"data.source.path={days[0]}",
                "data.source.options={}",
                "data.split.method=random",
                "data.domain.as_feature=true",
                f"train.batch_size={BATCH}",
                "train.max_epochs=20",
                "train.num_threads=1",
                "train.bank_update=dense",
                f"train.seed={args.seed}",
            ],
        )
        base = root / "base"
        run_experiment(cfg, base)
        run_cfg, frozen = load_run(base)
        fitted = FittedProcessing.from_dict(read_json(base / "processing.json", "processing"))
        names = list(frozen.schema.domain.values)
        results = {"frozen": []}
        for day in days[1:]:
            m = _evaluate(frozen, _encoded(day, run_cfg, fitted, names, 8192), names, 32768)
            results["frozen"].append(m)
        for label, window in (("arrival order", BATCH), ("sliding window", 32 * BATCH)):
            records = train_online(base, days[1:], root / label.replace(" ", "_"), window=window, seed=args.seed)
            results[label] = [r["metrics"] for r in records]
    table = []
    for i in range(DAYS - 1):
        row = {"day": i + 1}
        for label, ms in results.items():
            row[label] = {k: ms[i][k] for k in ("auc_overall", "logloss_overall", "auc_per_domain")}
        table.append(row)
    env = environment()
    payload = {
        "command": "python benchmarks/online_star.py" + (f" --seed {args.seed}" if args.seed else ""),
        "cpu": cpu_model(),
        "environment": env,
        "days": table,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "online_star.json").write_text(json.dumps(payload, indent=1))
    labels = list(results)
    lines = [
        "# STAR online: sliding-window buffer against arrival order (drifting synthetic stream)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['cpu']}; torch {env.get('torch')}",
        "",
        f"{DAYS - 1} days of {ROWS_PER_DAY:,} rows after the day-0 training day; within a day the rows arrive "
        "in the order of the day's traffic (domain 0 peaks in the morning, domain 2 in the evening). Each "
        f"day's AUC ×100 is measured before training on that day. Batch {BATCH}; sliding window {32 * BATCH:,} "
        "rows; arrival order = a window of one batch.",
        "",
        "| day | "
        + " | ".join(f"{lab} AUC" for lab in labels)
        + " | "
        + " | ".join(f"{lab} logloss" for lab in labels)
        + " |",
        "|---|" + "---|" * (2 * len(labels)),
    ]
    for row in table:
        aucs = " | ".join(f"{100 * row[lab]['auc_overall']:.2f}" for lab in labels)
        lls = " | ".join(f"{row[lab]['logloss_overall']:.4f}" for lab in labels)
        lines.append(f"| {row['day']} | {aucs} | {lls} |")
    means = {lab: float(np.mean([r[lab]["auc_overall"] for r in table])) for lab in labels}
    lines += [
        "",
        "Mean AUC ×100 over the days: " + ", ".join(f"{lab} {100 * v:.2f}" for lab, v in means.items()) + ".",
        "",
        "Per-domain AUC ×100 of the last day: "
        + "; ".join(
            f"{lab}: " + ", ".join(f"{d} {100 * v:.2f}" for d, v in table[-1][lab]["auc_per_domain"].items())
            for lab in labels
        )
        + ".",
    ]
    (OUT / "online_star.md").write_text("\n".join(lines) + "\n")
    (OUT / "online_star.svg").write_text(
        _svg(
            [
                {
                    "day": f"day {r['day']}",
                    "metrics": {
                        "auc_overall": r["sliding window"]["auc_overall"],
                        "auc_per_domain": {lab: r[lab]["auc_overall"] for lab in labels},
                    },
                }
                for r in table
            ]
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
