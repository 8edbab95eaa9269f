"""P2 `ml1m-age3` (Scenario-Wise-Rec MovieLens): STAR (and MLP), 5 model seeds, overall and per-domain AUC.

STAR uses the benchmark's sizes: embedding 16, FCN [128, 64, 32], auxiliary network [32]. Resumable. The same as
`polyrec benchmark ml1m-age3 --models ... --seeds 5 --out ...`; results.md holds the tables next to the
published numbers (overall and per-domain AUC and logloss, throughput and epochs per model).

    python benchmarks/p2_ml1m_age3.py [--seeds 5] [--models star,mlp]
    python benchmarks/p2_ml1m_age3.py --models zoo --out benchmarks/results/p2_ml1m_age3_zoo   # every multi-domain model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polyrec.benchmark import run_benchmark
from polyrec.data.protocols import preset
from polyrec.models import list_models

OUT = Path(__file__).resolve().parent / "results" / "p2_ml1m_age3"
PROTOCOL = "ml1m-age3"
# The zoo's models without a published number, in the order they first ran; a model added since runs after
# them (by name). Only the order comes from here: membership comes from the registry's tags.
FIRST_RUN_ORDER = ("pepnet", "cross_stitch", "mulann", "hmoe", "aitm", "hinet", "hamur", "m3oe", "dfei")


def zoo() -> list[str]:
    """The P2 zoo: every model tagged ``baseline`` or ``multidomain``, the baseline first, then the models with
    a published number on the protocol in the preset's order, then the others (:data:`FIRST_RUN_ORDER`)."""
    baseline = list_models("baseline")
    members = baseline + [m for m in list_models("multidomain") if m not in baseline]
    order = [*preset(PROTOCOL)["reference"]["auc_overall"], *FIRST_RUN_ORDER]
    rank = {name: i for i, name in enumerate(order)}
    return sorted(members, key=lambda m: (m not in baseline, rank.get(m, len(rank)), m))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default="star,mlp", help="comma-separated names, or 'zoo' for every multi-domain model")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    out = Path(args.out)
    models = zoo() if args.models == "zoo" else args.models.split(",")
    run_benchmark(PROTOCOL, models, args.seeds, out)  # writes results.json and results.md after every run
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
