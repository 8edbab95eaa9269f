"""Do the row-wise bank update and the fused optimiser change STAR's results? P2 (`ml1m-age3`), 5 seeds.

Three `polyrec benchmark` folders under `results/bank_update_p2/`, the same STAR config (the P2 preset's)
but for the update: `dense` (`train.bank_update: dense`, torch's default Adam: the committed P2 setting),
`rowwise` (`train.bank_update: rowwise`: lazy Adam on the present domains' rows of the banks) and
`rowwise_fused` (`rowwise` and `train.optimizer_impl: fused`). The sampler of STAR's preset mixes the
domains in every batch, so every domain is present in nearly every step: the row-wise rule can only differ
from dense Adam on the steps where a domain is absent, and through the rounding of a different kernel.

The summary (`results/bank_update_p2.{json,md}`) pairs the runs by seed: test AUC (overall and the mean
over domains) and logloss of each variant minus dense's, mean ± sample std over seeds, and whether the
mean difference is within 2 std of zero. Every run one torch thread; resumable (the folders hold the runs).

    python benchmarks/bank_update_p2.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from polyrec.benchmark import run_benchmark
from polyrec.experiment import cpu_model

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bank_update_p2"
PROTOCOL, MODEL = "ml1m-age3", "star"
VARIANTS = {
    "dense": ["train.bank_update=dense"],
    "rowwise": ["train.bank_update=rowwise"],
    "rowwise_fused": ["train.bank_update=rowwise", "train.optimizer_impl=fused"],
}
METRICS = ("auc_overall", "auc_mean", "logloss_overall")


def _records(folder: Path) -> dict[int, dict]:
    path = folder / "results.json"
    if not path.is_file():
        return {}
    return {int(r["seed"]): r for r in json.loads(path.read_text()) if r.get("model") == MODEL}


def summarise(seeds: int) -> dict:
    runs = {name: _records(OUT / name) for name in VARIANTS}
    dense = runs["dense"]
    out: dict = {"protocol": PROTOCOL, "model": MODEL, "seeds": seeds, "cpu": cpu_model(), "variants": {}}
    for name, recs in runs.items():
        row: dict = {"seeds": sorted(recs), "overrides": VARIANTS[name]}
        for m in METRICS:
            vals = [recs[s]["metrics"][m] for s in sorted(recs)]
            row[m] = {"mean": statistics.fmean(vals) if vals else None, "values": vals}
            if name != "dense":
                diffs = [recs[s]["metrics"][m] - dense[s]["metrics"][m] for s in sorted(recs) if s in dense]
                sd = statistics.stdev(diffs) if len(diffs) > 1 else None
                mean = statistics.fmean(diffs) if diffs else None
                row[f"{m} - dense"] = {
                    "mean": mean,
                    "std": sd,
                    "n": len(diffs),
                    "within_noise": None if sd is None else abs(mean) <= 2 * sd,
                }
        row["train_samples_per_s"] = (
            statistics.fmean([r["train_samples_per_s"] for r in recs.values()]) if recs else None
        )
        row["epochs"] = [recs[s]["epochs"] for s in sorted(recs)]
        out["variants"][name] = row
    return out


def write(summary: dict) -> None:
    (HERE / "results" / "bank_update_p2.json").write_text(json.dumps(summary, indent=1))
    lines = [
        "# STAR on P2 (`ml1m-age3`): dense against row-wise bank updates, 5 seeds",
        "",
        "Command: `python benchmarks/bank_update_p2.py`  ",
        f"Machine: {summary['cpu']}; one torch thread per run. Test split; differences paired by model seed "
        "(variant − dense), mean ± sample std; **within noise** when |mean| <= 2 std.",
        "",
        "| variant | seeds | AUC overall | AUC mean | logloss | Δ AUC overall ×100 | Δ AUC mean ×100 | Δ logloss ×100 "
        "| epochs | train rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["variants"].items():

        def delta(m: str, row=row) -> str:
            d = row.get(f"{m} - dense")
            if d is None or d["mean"] is None:
                return "–"
            sd = "" if d["std"] is None else f" ± {100 * d['std']:.3f}"
            verdict = (
                "" if d["within_noise"] is None else (" (within noise)" if d["within_noise"] else " (**beyond noise**)")
            )
            return f"{100 * d['mean']:+.3f}{sd}{verdict}"

        means = [row[m]["mean"] for m in METRICS]
        shown = " | ".join("–" if v is None else f"{v:.4f}" for v in means)
        speed = "–" if row["train_samples_per_s"] is None else f"{row['train_samples_per_s']:,.0f}"
        lines.append(
            f"| {name} | {len(row['seeds'])} | {shown} | {delta('auc_overall')} | {delta('auc_mean')} | "
            f"{delta('logloss_overall')} | {', '.join(map(str, row['epochs']))} | {speed} |"
        )
    lines += [
        "",
        "Rows/s are as measured with other work on the machine's second core; `benchmarks/domain_scaling.py` "
        "compares the updates' cost.",
    ]
    (HERE / "results" / "bank_update_p2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--report", action="store_true", help="only the summary, from the folders")
    args = ap.parse_args()
    if not args.report:
        for seed in range(args.seeds):  # seed-major: an interrupted run holds every variant at its first seeds
            for name, overrides in VARIANTS.items():
                run_benchmark(PROTOCOL, [MODEL], [seed], OUT / name, overrides=[*overrides, "train.num_threads=1"])
    write(summarise(args.seeds))


if __name__ == "__main__":
    main()
