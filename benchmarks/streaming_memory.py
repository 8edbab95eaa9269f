"""Data larger than memory: streaming Parquet (fit, encode, window buffer) against the in-memory path.

A synthetic Parquet data set of ``--parts`` files of 1,000,000 rows each (default 50: 50M rows), each file
drawn by the synthetic source (``make_synthetic``, 3 domains, 100,000 users, 50,000 items, a multi-valued tag
column, 2 dense features) with its own seed. Each measurement runs in its own process, so its peak RSS
is its own:

- ``stream`` at 5, 20 and all parts: one pass of :class:`polyrec.data.streaming.StreamingFitter` over the
  files (vocabularies, scalers, domains), then a second pass that encodes every record batch
  (:func:`~polyrec.data.streaming.encode_chunks`) and draws the training batches of 4,096 rows from a
  sliding window of 262,144 rows (:class:`~polyrec.data.streaming.SlidingWindowShuffle`): the data path
  of ``polyrec train --stream`` without the model;
- ``in memory`` at 1, 5 and 10 parts: ``build_dataset`` on the same files (read into pandas, split, fit,
  encode into tensors), the path of ``polyrec train``.

    python benchmarks/streaming_memory.py            # writes benchmarks/results/streaming_memory.{json,md}
    python benchmarks/streaming_memory.py --parts 10 --out /tmp/x
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
ROWS_PER_PART = 1_000_000
WINDOW, BATCH = 262_144, 4096


def data_config(files: list[str]) -> dict:
    from polyrec.data.protocols import preset

    return {
        "source": {"kind": "parquet", "path": str(Path(files[0]).parent)},
        "label": {"column": "label"},
        "domain": {"column": "domain", "as_feature": True},
        "features": preset("synthetic-zipf-10k")["data"]["features"],  # the generator's columns
        "user_feature": "user_id",
        "split": {"method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0},
    }


def write_parts(folder: Path, parts: int) -> list[str]:
    from polyrec.data.sources.synthetic import make_synthetic

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in range(parts):
        path = folder / f"part-{p:03d}.parquet"
        if not path.exists():
            frame = make_synthetic(
                n_domains=3,
                n_samples=[500_000, 300_000, 200_000],
                n_users=100_000,
                n_items=50_000,
                seed=p,
            )
            frame.to_parquet(path, row_group_size=65_536)
        paths.append(str(path))
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_stream(files: list[str]) -> dict:
    from polyrec.config import from_dict
    from polyrec.data.config import DataConfig
    from polyrec.data.streaming import SlidingWindowShuffle, StreamingFitter, encode_chunks, parquet_chunks

    cfg = from_dict(DataConfig, data_config(files), path="data")
    ids = ["user_id", "item_id", "user_group", "item_cat"]
    t0 = time.perf_counter()
    fitter = StreamingFitter(cfg)
    for frame in parquet_chunks(files, id_columns=ids):
        fitter.update(frame)
    fitted, names = fitter.finish()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = batches = 0
    encoded = encode_chunks(parquet_chunks(files, id_columns=ids), cfg, fitted, names)
    for batch in SlidingWindowShuffle(WINDOW, BATCH, seed=0).batches(encoded):
        rows += len(batch["label"])
        batches += 1
    batch_s = time.perf_counter() - t0
    return {
        "path": "stream",
        "parts": len(files),
        "rows": rows,
        "batches": batches,
        "fit_s": round(fit_s, 1),
        "fit_rows_per_s": round(rows / fit_s),
        "encode_and_batch_s": round(batch_s, 1),
        "encode_and_batch_rows_per_s": round(rows / batch_s),
        "vocabulary_sizes": {k: v.size for k, v in fitted.vocabularies.items()},
        "peak_rss_mb": round(peak_rss_mb()),
    }


def measure_memory(files: list[str]) -> dict:
    import shutil

    from polyrec.config import from_dict
    from polyrec.data.config import DataConfig
    from polyrec.data.dataset import build_dataset

    folder = Path(tempfile.mkdtemp())
    for f in files:  # the source is a folder: just these parts
        (folder / Path(f).name).symlink_to(f)
    cfg_dict = data_config(files)
    cfg_dict["source"]["path"] = str(folder)
    cfg = from_dict(DataConfig, cfg_dict, path="data")
    t0 = time.perf_counter()
    ds = build_dataset(cfg, cache=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(folder)
    return {
        "path": "in memory",
        "parts": len(files),
        "rows": len(ds),
        "build_s": round(seconds, 1),
        "build_rows_per_s": round(len(ds) / seconds),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=50)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polyrec-streaming-bench")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--one", nargs=2, metavar=("PATH", "PARTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    files = write_parts(args.data, args.parts)
    if args.one:
        kind, n = args.one[0], int(args.one[1])
        print(json.dumps(measure_stream(files[:n]) if kind == "stream" else measure_memory(files[:n])))
        return
    from polyrec.experiment import cpu_model, environment

    plan = [("memory", n) for n in (1, 5, 10) if n <= args.parts]
    plan += [("stream", n) for n in sorted({min(5, args.parts), min(20, args.parts), args.parts})]
    rows = []
    for kind, n in plan:
        cmd = [sys.executable, __file__, "--one", kind, str(n), "--parts", str(args.parts), "--data", str(args.data)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"path": kind, "parts": n, "error": done.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
    env = environment()
    command = "python benchmarks/streaming_memory.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    payload = {"command": command, "cpu": cpu_model(), "environment": env, "rows_per_part": ROWS_PER_PART, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_memory.json").write_text(json.dumps(payload, indent=1))
    lines = [
        "# Data larger than memory: streaming Parquet against the in-memory path",
        "",
        f"Command: `{command}`  ",
        f"Machine: {payload['cpu']}, {env.get('cpus')} logical CPUs, 24 GiB; python {env.get('python')}, "
        f"torch {env.get('torch')}; one process per row",
        "",
        f"Synthetic Parquet, {ROWS_PER_PART:,} rows per file (3 domains, 100k users, 50k items, tags, 2 dense). "
        f"Stream: one fitting pass, then encode + sliding window ({WINDOW:,} rows) + batches of {BATCH:,}. "
        "In memory: `build_dataset` (read into pandas, split, fit, encode into tensors).",
        "",
        "| path | rows | fit rows/s | encode + batch rows/s | in-memory build rows/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['parts'] * ROWS_PER_PART:,} | failed: {r['error']} | | | |")
        elif r["path"] == "stream":
            lines.append(
                f"| stream | {r['rows']:,} | {r['fit_rows_per_s']:,} | {r['encode_and_batch_rows_per_s']:,} | – | "
                f"{r['peak_rss_mb']:,} |"
            )
        else:
            lines.append(f"| in memory | {r['rows']:,} | – | – | {r['build_rows_per_s']:,} | {r['peak_rss_mb']:,} |")
    (args.out / "streaming_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
