"""Does ``torch.compile`` pay for STAR training on ml1m-age3? Eager against compiled, one thread, batch 4,096.

Each mode runs in its own process: ``eager``; ``static`` (``torch.compile(model)``: shapes specialised,
so every new per-domain segment size recompiles until dynamo's recompile limit, then falls back to
eager for that frame); ``dynamic`` (``torch.compile(model, dynamic=True)``: symbolic sizes). A training
step is forward, the task's loss, backward and Adam; the rate is rows/s over 8 real batches of the
training split, the best of 5 passes after 3 warm-up steps (whose time, compilation included, is
reported separately).

    python benchmarks/star_compile.py       # writes benchmarks/results/star_compile.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
MODES = ("eager", "static", "dynamic")


def measure(mode: str, passes: int) -> dict:
    import torch

    from polyrec.config import to_dict
    from polyrec.data.dataset import build_dataset
    from polyrec.experiment import make_config
    from polyrec.models import create_model
    from polyrec.training.task import BinaryTask

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = make_config("ml1m-age3", "star")
    ds = build_dataset(cfg.data)
    torch.manual_seed(0)
    model = create_model("star", ds.schema, **to_dict(cfg.model))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    task = BinaryTask()
    bs = cfg.train.batch_size
    batches = [ds.batch(ds.splits["train"][i * bs : (i + 1) * bs]) for i in range(8)]
    forward = model if mode == "eager" else torch.compile(model, dynamic=mode == "dynamic")

    def step(batch):
        loss = task.losses(forward(batch), batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for b in batches[:3]:
        step(b)
    warmup = time.perf_counter() - t0
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        rates.append(len(batches) * bs / (time.perf_counter() - t0))
    return {
        "mode": mode,
        "warmup_s": round(warmup, 1),
        "rows_per_s": [round(r) for r in rates],
        "best": round(max(rates)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.passes)))
        return
    from polyrec.experiment import cpu_model, environment

    rows = []
    for mode in MODES:
        done = subprocess.run(
            [sys.executable, __file__, "--one", mode, "--passes", str(args.passes)], capture_output=True, text=True
        )
        if done.returncode != 0:
            rows.append({"mode": mode, "error": done.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    env = environment()
    payload = {"command": "python benchmarks/star_compile.py", "cpu": cpu_model(), "environment": env, "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "star_compile.json").write_text(json.dumps(payload, indent=1))
    eager = next((r["best"] for r in rows if r["mode"] == "eager" and "best" in r), None)
    lines = [
        "# torch.compile for STAR training (ml1m-age3, batch 4,096, one thread)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['cpu']}, {env.get('cpus')} logical CPUs; torch {env.get('torch')}",
        "",
        "| mode | warm-up s (3 steps, compilation included) | rows/s per pass | best | vs eager |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error']} | | | |")
            continue
        ratio = f"{r['best'] / eager:.2f}×" if eager else "–"
        lines.append(
            f"| {r['mode']} | {r['warmup_s']} | {', '.join(f'{x:,}' for x in r['rows_per_s'])} | {r['best']:,} | {ratio} |"
        )
    lines += [
        "",
        "Warm-up includes compilation, which torch caches on disk (`TORCHINDUCTOR_CACHE_DIR`): a first run on "
        "a machine compiled for about 80 s (static) here, a later one reads the cache. Static shapes meet a new "
        "per-domain segment size in most batches and reach dynamo's recompile limit, after which the frames "
        "concerned run eager. Wired as `train.compile: none | static | dynamic` (default `none`).",
    ]
    (OUT / "star_compile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
