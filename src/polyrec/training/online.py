"""Online training day after day from a time-ordered Parquet stream (STAR §4.4), from a finished run.

:func:`train_online` takes a finished run directory (its model, config, frozen vocabularies and scalers) and
a sequence of days, each a Parquet file or folder. For every day, in order, it

1. evaluates the current model on the day's rows, before training on them (the papers' day-by-day
   protocol: each day is tomorrow's test set for the model trained up to today);
2. trains on the day: the rows stream through a sliding-window shuffle buffer
   (:class:`~polyrec.data.streaming.SlidingWindowShuffle`, or one window per domain,
   :class:`~polyrec.data.streaming.DomainWindowShuffle`, for single-domain batches), record batch by record
   batch, never the whole day in memory;
3. writes the model as a complete run directory ``OUT/days/<day>`` and then points ``OUT/latest`` at it
   (a symbolic link replaced in one rename, so a server following ``OUT/latest`` reloads a finished run,
   never a half-written one).

``OUT/online.json`` and ``OUT/online.md`` hold the day-by-day metrics; ``OUT/online.svg`` plots them.

Readings made here (the paper describes the buffer, not the surrounding loop):

- The vocabularies, scalers and domains stay those of the base run: a new id is OOV, a row of a domain the
  base run does not know is an error naming it (add the domain with ``polyrec add-domain`` first).
- The window is drained at each day's end, so the model evaluated on day d + 1 has trained on every row of
  day d. Within a day the window slides.
- The optimiser is the base run's kind and learning rate with fresh moments; they persist from day to day
  and are checkpointed after each day (``OUT/checkpoints``), so a later call that continues ``OUT`` with
  new days trains exactly as one call over all the days would. Day d's batches and dropout draws come
  from ``seed + d``.
- Rows of a day are evaluated with the model in eval mode; normalisation statistics are the base run's,
  updated as training updates them (STAR's moving averages), not recomputed over a day.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.batch import Batch
from ..data.processing import FittedProcessing
from ..data.streaming import DomainWindowShuffle, SlidingWindowShuffle, encode_chunks, parquet_chunks
from ..evaluation.metrics import MultiDomainEvaluator
from ..safeio import atomic_write_text, read_json, write_json

__all__ = ["day_sources", "train_online"]

#: The metrics of a day kept in ``online.json`` (the run directory's result.json has them all).
_DAY_METRICS = (
    "auc_overall",
    "logloss_overall",
    "wauc",
    "auc_mean",
    "n",
    "auc_per_domain",
    "logloss_per_domain",
    "count_per_domain",
)


def day_sources(stream: str | Path) -> list[Path]:
    """The days of a stream folder: its sub-folders and Parquet files, in name order (name days so that
    they sort in time: ``2026-12-01``, ``day=003``)."""
    root = Path(stream)
    if not root.is_dir():
        raise FileNotFoundError(f"stream {str(root)!r} is not a folder of days (sub-folders or Parquet files)")
    days = sorted(p for p in root.iterdir() if p.is_dir() or p.suffix in (".parquet", ".pq"))
    if not days:
        raise FileNotFoundError(f"stream folder {str(root)!r} holds no day (no sub-folder, no *.parquet / *.pq)")
    return days


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(a, requirements=["C", "W"]))  # a read-only Arrow buffer is copied


def _batch(arrays: dict[str, np.ndarray]) -> Batch:
    return Batch(
        sparse=_tensor(arrays["sparse"]),
        dense=_tensor(arrays["dense"]),
        label=_tensor(arrays["label"]),
        domain=_tensor(arrays["domain"]),
        multi={k[len("multi.") :]: _tensor(v) for k, v in arrays.items() if k.startswith("multi.")},
        user=_tensor(arrays["user"]) if "user" in arrays else None,
    )


def _columns(cfg) -> list[str]:
    cols = [fc.source_column for fc in cfg.data.features] + [cfg.data.label.column, cfg.data.domain.column]
    return list(dict.fromkeys(cols))


def _id_columns(cfg) -> list[str]:
    return [fc.source_column for fc in cfg.data.features if fc.kind in ("sparse", "multi")]


def _encoded(day: Path, cfg, fitted: FittedProcessing, names: Sequence[str], rows: int) -> Iterator[dict]:
    frames = parquet_chunks(day, columns=_columns(cfg), id_columns=_id_columns(cfg), rows=rows)
    return encode_chunks(frames, cfg.data, fitted, names)


@torch.no_grad()
def _evaluate(model, chunks, names: Sequence[str], batch_size: int) -> dict[str, Any]:
    model.eval()
    ev = MultiDomainEvaluator(list(names))
    for arrays in chunks:
        n = len(arrays["label"])
        for s in range(0, n, batch_size):
            b = _batch({k: v[s : s + batch_size] for k, v in arrays.items()})
            ev.update(model(b).logits, b.label, b.domain)
    return ev.compute().to_dict()


def _write_run(base: Path, target: Path, model, record: dict[str, Any]) -> None:
    """A complete run directory at ``target``: the base run's inputs, these weights, this record."""
    from ..experiment import polyrec_version
    from ..rundir import read_manifest, read_run_config, write_manifest
    from ..safeio import save_tensors

    manifest = read_manifest(base)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("config.json", "schema.json", "processing.json", "data.json"):
        shutil.copyfile(base / name, tmp / name)
    save_tensors(tmp / "model.safetensors", {k: v.detach().contiguous() for k, v in model.state_dict().items()})
    write_json(tmp / "result.json", record)
    write_manifest(tmp, read_run_config(base), model=manifest.get("model"), version=polyrec_version())
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _point_latest(out: Path, target: Path) -> None:
    link, tmp = out / "latest", out / "latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.relative_to(out))
    os.replace(tmp, link)  # one rename: a reader sees the old run or the new one


def _svg(days: list[dict[str, Any]]) -> str:
    """Overall AUC and each domain's AUC (before training on the day) against the day: a line per series."""
    width, height, pad = 640, 320, 48
    series: dict[str, list[float | None]] = {"overall": [d["metrics"].get("auc_overall") for d in days]}
    per_domain = days[0]["metrics"].get("auc_per_domain", {})
    for name in per_domain if len(per_domain) <= 8 else []:  # more domains: the overall line only
        series[name] = [d["metrics"].get("auc_per_domain", {}).get(name) for d in days]
    values = [v for s in series.values() for v in s if v is not None and np.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-3
    n = max(len(days) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{pad + i * (width - 2 * pad) / n:.1f},{height - pad - (v - lo) / (hi - lo) * (height - 2 * pad):.1f}"

    colours = ["#222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<text x="{pad}" y="16">AUC on each day before training on it (lowest {lo:.4f}, highest {hi:.4f})</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
    ]
    for i, d in enumerate(days):
        parts.append(
            f'<text x="{xy(i, lo).split(",")[0]}" y="{height - pad + 14}" text-anchor="middle">{d["day"]}</text>'
        )
    for k, (name, vals) in enumerate(series.items()):
        pts = [xy(i, v) for i, v in enumerate(vals) if v is not None and np.isfinite(v)]
        colour = colours[k % len(colours)]
        if len(pts) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="{2 if k == 0 else 1}" points="{" ".join(pts)}"/>'
            )
        parts.append(f'<text x="{width - pad + 4}" y="{30 + 13 * k}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _markdown(days: list[dict[str, Any]], base: Path) -> str:
    names = list(days[0]["metrics"].get("auc_per_domain", {}))
    shown = names if len(names) <= 8 else []
    header = ["day", "rows", "auc_overall", "logloss_overall", *[f"auc {n}" for n in shown], "trained rows", "batches"]
    lines = [
        f"# Online training from `{base}`",
        "",
        "Each day's metrics are measured before the model trains on that day (test AUC ×100).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for d in days:
        m = d["metrics"]
        cells = [d["day"], f"{m.get('n', 0):,}", f"{100 * m['auc_overall']:.2f}", f"{m['logloss_overall']:.4f}"]
        cells += [f"{100 * m['auc_per_domain'][n]:.2f}" for n in shown]
        cells += [f"{d['trained_rows']:,}", f"{d['batches']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def train_online(
    base_run: str | Path | None,
    days: Sequence[str | Path],
    out: str | Path,
    *,
    window: int = 65_536,
    per_domain_window: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    chunk_rows: int = 65_536,
) -> list[dict[str, Any]]:
    """Train the model of ``base_run`` on ``days`` one after the other; see the module docstring.

    Args:
        base_run: a finished run directory (``polyrec train`` output); None continues ``out``'s online
            training from ``out/latest``, skipping the days it has trained (by name), which is also what
            happens when ``out`` holds online training and ``base_run`` is its ``latest``.
        days: Parquet files or folders, one per day, in time order (:func:`day_sources` lists a stream folder).
        out: the output folder: ``days/<day>/`` run directories, ``latest`` (a link to the newest),
            ``online.{json,md,svg}``.
        window: rows the shuffle window holds (per domain with ``per_domain_window``).
        per_domain_window: one window per domain, single-domain batches.
        batch_size: rows per batch (default: the base run's ``train.batch_size``).
        lr: learning rate (default: the base run's ``train.lr``).
        seed: seed of the windows' draws (day d draws from ``seed + d``).
        chunk_rows: rows read from Parquet at a time.

    Returns:
        One record per day: ``day``, ``metrics`` (before training on it), ``trained_rows``, ``batches``,
        ``loss`` (the day's mean training loss), ``run`` (the run directory written).
    """
    from ..experiment import load_run
    from ..rundir import read_manifest, read_run_schemas
    from ..training.checkpoint import check_optimizer_state, load_latest_checkpoint, save_checkpoint
    from ..training.strategies import TrainContext
    from ..training.task import BinaryTask
    from ..training.trainer import make_optimizer

    out = Path(out)
    base = Path(base_run) if base_run is not None else out / "latest"
    if not days:
        raise ValueError("train_online: no days given; pass at least one Parquet file or folder")
    previous: list[dict[str, Any]] = []
    if (out / "online.json").exists():
        state = read_json(out / "online.json", "online training record")
        if base_run is not None and Path(base_run).resolve() != (out / "latest").resolve():
            raise ValueError(
                f"{str(out)!r} holds online training from {state.get('base_run')!r}; continue it without a base "
                f"run (from {str(out / 'latest')!r}), or write to another output folder"
            )
        previous = list(state.get("days", []))
        base = out / "latest"
    elif base_run is None:
        raise ValueError(f"give the run to start from: {str(out)!r} holds no online training to continue")
    done = {r["day"]: r.get("source") for r in previous}
    todo = []
    for day in (Path(p) for p in days):
        name = day.stem if day.is_file() else day.name
        if name in done:
            continue  # trained in an earlier call
        todo.append(day)
    if not todo:
        return previous
    read_manifest(base)  # a finished, intact run, or an ArtifactError naming what is wrong
    cfg, model = load_run(base)
    fitted = FittedProcessing.from_dict(read_json(base / "processing.json", "run processing"))
    schema, _ = read_run_schemas(base, read_manifest(base))
    names = list(schema.domain.values)
    train = cfg.train if lr is None else dataclasses.replace(cfg.train, lr=lr)
    bs = batch_size or train.batch_size
    torch.manual_seed(seed)
    ctx = TrainContext(
        model,
        make_optimizer(model, train),
        BinaryTask(),
        None,  # type: ignore[arg-type]  (step() reads only the batch)
        rows=torch.zeros(0, dtype=torch.long),
        batch_size=bs,
        sampler="mixed",
        seed=seed,
        device=torch.device("cpu"),
        grad_clip=train.grad_clip,
        bank_update=train.bank_update,
    )
    out.mkdir(parents=True, exist_ok=True)
    if previous:  # the optimiser's moments as the previous call left them, so continuing is exact
        state = load_latest_checkpoint(out / "checkpoints")
        if state is None:
            raise ValueError(f"{str(out)!r} holds online training but no optimiser checkpoint under checkpoints/")
        ctx.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(ctx.optimizer, str(out / "checkpoints"))
    records: list[dict[str, Any]] = list(previous)
    origin = previous[0]["base_run"] if previous and "base_run" in previous[0] else str(base)
    for d, day in enumerate(todo, start=len(previous)):
        metrics = _evaluate(model, _encoded(day, cfg, fitted, names, chunk_rows), names, train.eval_batch_size)
        buffer = (
            DomainWindowShuffle(window, bs, seed=seed + d)
            if per_domain_window
            else SlidingWindowShuffle(window, bs, seed=seed + d)
        )
        model.train()
        torch.manual_seed(seed + d)  # dropout's draws of day d, the same in one call or a continued one
        losses, rows = [], 0
        for arrays in buffer.batches(_encoded(day, cfg, fitted, names, chunk_rows)):
            losses.append(ctx.step(_batch(arrays))["loss"])
            rows += len(arrays["label"])
        name = day.stem if day.is_file() else day.name
        record = {
            "base_run": origin,
            "day": name,
            "source": str(day),
            "metrics": {k: v for k, v in metrics.items() if k in _DAY_METRICS},
            "trained_rows": rows,
            "batches": len(losses),
            "loss": float(np.mean(losses)) if losses else None,
        }
        target = out / "days" / name
        _write_run(
            base, target, model, {"online": {"base_run": str(base), "through_day": name, **record}, "metrics": metrics}
        )
        _point_latest(out, target)
        save_checkpoint(out / "checkpoints", d, {"optimizer": ctx.optimizer.state_dict()})
        record["run"] = str(target)
        records.append(record)
        settings = {"window": window, "per_domain_window": per_domain_window, "batch_size": bs, "lr": train.lr}
        write_json(out / "online.json", {"base_run": origin, **settings, "seed": seed, "days": records})
        atomic_write_text(out / "online.md", _markdown(records, Path(origin)))
        atomic_write_text(out / "online.svg", _svg(records))
    return records
