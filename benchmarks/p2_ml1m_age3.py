"""P2 `ml1m-age3` (Scenario-Wise-Rec MovieLens): STAR (and MLP), 5 model seeds, overall and per-domain AUC.

STAR uses the benchmark's sizes: embedding 16, FCN [128, 64, 32], auxiliary network [32]. Resumable.

    python benchmarks/p2_ml1m_age3.py [--seeds 5] [--models star,mlp]
    python benchmarks/p2_ml1m_age3.py --models zoo --out benchmarks/results/p2_ml1m_age3_zoo   # every multi-domain model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polyrec.benchmark import run_benchmark
from polyrec.data.protocols import preset
from polyrec.evaluation.metrics import summarize_runs

OUT = Path(__file__).resolve().parent / "results" / "p2_ml1m_age3"
ZOO = ["mlp", "star", "shared_bottom", "mmoe", "ple", "sarnet", "m2m", "adasparse", "adaptdhm", "epnet", "ppnet",
       "pepnet", "cross_stitch", "mulann", "hmoe", "aitm", "hinet", "hamur", "m3oe", "dfei"]  # published ones first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default="star,mlp", help="comma-separated names, or 'zoo' for every multi-domain model")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    out = Path(args.out)
    models = ZOO if args.models == "zoo" else args.models.split(",")
    runs = run_benchmark("ml1m-age3", models, args.seeds, out)
    ref = preset("ml1m-age3")["reference"]
    lines = ["", "## Against the published numbers (test split, mean ± std over seeds)", "",
             "| model | overall AUC | d0 | d1 | d2 | overall logloss | published overall (d0/d1/d2) | train rows/s | epochs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        rs = [r for r in runs if r["model"] == m]
        cell = lambda xs: "{:.4f} ± {:.4f}".format(*summarize_runs(xs))
        per = [cell([r["metrics"]["auc_per_domain"][d] for r in rs]) for d in ("0", "1", "2")]
        if not rs:
            continue
        pub = ref["auc_overall"].get(m)
        pub_d = ref.get("auc_per_domain", {}).get(m)
        pub_txt = "—" if pub is None else f"{pub:.4f}" + (f" ({pub_d['0']:.4f}/{pub_d['1']:.4f}/{pub_d['2']:.4f})" if pub_d else "")
        lines.append(f"| {m} | {cell([r['metrics']['auc_overall'] for r in rs])} | {' | '.join(per)} | "
                     f"{cell([r['metrics']['logloss_overall'] for r in rs])} | {pub_txt} | "
                     f"{summarize_runs([r['train_samples_per_s'] for r in rs])[0]:,.0f} | "
                     f"{summarize_runs([r['epochs'] for r in rs])[0]:.1f} |")
    lines += ["", "Command: `python benchmarks/p2_ml1m_age3.py` (or `make bench-p2`)."]
    with open(out / "results.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
