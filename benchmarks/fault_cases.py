"""What polyrec does with bad data, bad configs and faults: one row per case, the exit code and the message.

Every case is run through the command line (in-process, ``typer.testing.CliRunner``) on small generated
data in a temporary folder, exactly as a user would type it. The output is a table of what a user sees:
the exit code, the first ``error:`` line and any ``warning:`` lines, or for cases that must succeed, the
fact that checks it (for example that the run was left untouched).

    python benchmarks/fault_cases.py            # writes benchmarks/results/fault_cases.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "fault_cases")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="polyrec-faults-"))
    os.environ["POLYREC_CACHE"] = str(work / "cache")
    from typer.testing import CliRunner

    import polyrec
    from polyrec.cli import app

    runner = CliRunner()

    def cli(*argv: str) -> dict[str, Any]:
        out = runner.invoke(app, [str(a) for a in argv])
        lines = out.output.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        warns = [line for line in lines if line.startswith("warning: ")]
        return {
            "exit": out.exit_code,
            "error": errors[0] if errors else "",
            "warnings": warns,
            "traceback": out.exit_code == 1 and out.exception is not None,
        }

    rng = np.random.default_rng(0)
    n = 1200
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 80, n),
            "item_id": rng.integers(0, 60, n),
            "price": rng.random(n).round(3),
            "label": rng.integers(0, 2, n),
            "domain": rng.choice(["home", "banner", "search"], n),
        }
    )
    frame.to_csv(work / "rows.csv", index=False)
    config = {
        "protocol": "faults",
        "data": {
            "source": {"kind": "csv", "path": str(work / "rows.csv")},
            "label": {"column": "label"},
            "domain": {"column": "domain"},
            "features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "price", "kind": "dense"}],
            "split": {"method": "stratified_domain", "ratios": [0.7, 0.15, 0.15], "seed": 0},
        },
        "model": {"embedding_dim": 4, "hidden_units": [8], "dropout": 0.2},
        "train": {"batch_size": 128, "max_epochs": 2, "patience": 0},
    }

    def write_config(name: str, cfg: dict) -> Path:
        path = work / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    base = write_config("base.yaml", config)
    train = ["train", "--config", base, "--model", "mlp"]
    run = work / "run"
    first = cli(*train, "--out", run)
    assert first["exit"] == 0, first

    def snapshot(d: Path) -> dict[str, bytes]:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    def copy_run(name: str) -> Path:
        dst = work / name
        shutil.copytree(run, dst)
        return dst

    cases: list[dict[str, Any]] = []

    def case(group: str, what: str, fn: Callable[[], dict[str, Any]]) -> None:
        result = fn()
        result.setdefault("note", "")
        cases.append({"group": group, "case": what, **result})

    # -- code execution on load
    marker = work / "pwned"

    def planted(name: str, argv_fn: Callable[[Path], list]) -> Callable[[], dict]:
        def go() -> dict:
            d = copy_run(f"planted-{name.replace('/', '_')}-{len(cases)}")
            targets = [p for p in d.glob(name)]
            for t in targets:
                t.write_bytes(pickle.dumps({"model": _Payload(str(marker))}))
            r = cli(*argv_fn(d))
            r["note"] = "code ran!" if marker.exists() else "no code ran"
            return r

        return go

    case(
        "code execution",
        "pickle in place of model.safetensors, `polyrec evaluate`",
        planted("model.safetensors", lambda d: ["evaluate", d]),
    )
    case(
        "code execution",
        "pickle in place of config.json, `polyrec evaluate`",
        planted("config.json", lambda d: ["evaluate", d]),
    )
    case(
        "code execution",
        "pickle in place of every checkpoint's state.safetensors, resume",
        planted("checkpoints/*/state.safetensors", lambda d: [*train, "--out", d]),
    )
    case(
        "code execution",
        "pickle in place of the newest checkpoint only, resume",
        planted("checkpoints/epoch-000002/state.json", lambda d: [*train, "--out", d]),
    )

    def legacy() -> dict:
        d = work / "legacy"
        d.mkdir()
        (d / "model.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
        r = cli("evaluate", d)
        r["note"] = "code ran!" if marker.exists() else "no code ran"
        return r

    case("code execution", "a polyrec 0.1 run (model.pt pickle), `polyrec evaluate`", legacy)

    # -- silent wrong records
    def changed(*sets: str) -> Callable[[], dict]:
        def go() -> dict:
            d = copy_run(f"changed-{len(cases)}")
            before = snapshot(d)
            r = cli(*train, "--out", d, *[x for s in sets for x in ("--set", s)])
            r["note"] = "run left untouched" if snapshot(d) == before else "run modified"
            return r

        return go

    case("wrong records", "`train --out` existing run with `--set train.seed=99`", changed("train.seed=99"))
    case("wrong records", "... with a new lr", changed("train.lr=0.01"))
    case("wrong records", "... with another architecture", changed("model.hidden_units=[16,8]"))

    def overwrite() -> dict:
        d = copy_run("overwrite")
        r = cli(*train, "--out", d, "--set", "train.seed=99", "--overwrite")
        r["note"] = f"seed in result.json: {json.loads((d / 'result.json').read_text())['seed']}"
        return r

    case("wrong records", "... with `--overwrite`", overwrite)

    def bench_reuse() -> dict:
        import polyrec.data.protocols as protocols

        protocols._PRESETS["faults"] = {
            **config,
            "description": "faults",
            "models": {},
            "model_defaults": config["model"],
        }
        out = work / "bench"
        cli("benchmark", "faults", "--models", "mlp", "--seeds", "1", "--out", out)
        return cli("benchmark", "faults", "--models", "mlp", "--seeds", "1", "--out", out, "--set", "train.lr=0.05")

    case("wrong records", "`polyrec benchmark` on records of another lr", bench_reuse)

    # -- silent corruption
    def npy_flip() -> dict:
        entries = [p for p in (work / "cache" / "datasets").iterdir() if p.is_dir() and not p.name.startswith(".")]
        label = next(p for e in entries for p in e.glob("label.npy"))
        data = bytearray(label.read_bytes())
        data[-1] ^= 0x3F  # same size
        label.write_bytes(bytes(data))
        r = cli("evaluate", run)
        r["note"] = "rebuilt; metrics as trained" if r["exit"] == 0 else ""
        return r

    case("corruption", "cached label.npy changed, same size, `polyrec evaluate`", npy_flip)

    def source_changed() -> dict:
        d = copy_run("source-changed")
        other = work / "rows2.csv"
        frame.assign(label=1 - frame.label).to_csv(other, index=False)
        shutil.copy(work / "rows.csv", work / "rows.bak")
        shutil.copy(other, work / "rows.csv")
        try:
            return cli("evaluate", d)
        finally:
            shutil.copy(work / "rows.bak", work / "rows.csv")

    case("corruption", "source file changed since training, `polyrec evaluate`", source_changed)

    def checkpoint_damage(kind: str) -> Callable[[], dict]:
        def go() -> dict:
            d = copy_run(f"ckpt-{kind}-{len(cases)}")
            for ckpt in (
                sorted((d / "checkpoints").iterdir())[-1:]
                if kind == "newest truncated"
                else sorted((d / "checkpoints").iterdir())
            ):
                f = ckpt / "state.safetensors"
                f.write_bytes(b"" if kind == "zero-byte" else f.read_bytes()[:100])
            (d / "run.json").unlink()  # an unfinished run: resume reads the checkpoints
            return cli(*train, "--out", d)

        return go

    case("corruption", "newest checkpoint truncated, resume", checkpoint_damage("newest truncated"))
    case("corruption", "every checkpoint truncated, resume", checkpoint_damage("truncated"))
    case("corruption", "every checkpoint zero bytes, resume", checkpoint_damage("zero-byte"))

    # -- data that passed silently
    def data_case(name: str, rows: pd.DataFrame, changes: dict, sets: tuple[str, ...] = ()) -> Callable[[], dict]:
        def go() -> dict:
            ext = changes.pop("_ext", "csv")
            path = work / f"{name}.{ext}"
            if ext == "parquet":
                rows.to_parquet(path, index=False)
            else:
                rows.to_csv(path, index=False, sep="\t" if ext == "tsv" else ",")
            cfg = json.loads(json.dumps(config))
            cfg["data"]["source"] = {"kind": "parquet" if ext == "parquet" else "csv", "path": str(path)}
            for key, value in changes.items():
                node = cfg
                *parents, last = key.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[last] = value
            out = work / f"run-{name}"
            r = cli(
                "train",
                "--config",
                write_config(f"{name}.yaml", cfg),
                "--model",
                "mlp",
                "--out",
                out,
                *[x for s in sets for x in ("--set", s)],
            )
            if r["exit"] == 0:
                rec = json.loads((out / "result.json").read_text())
                r["note"] = json.dumps({k: v for k, v in rec["data"].items() if k != "rows"})[:300]
            return r

        return go

    dup = pd.concat([frame, frame.sample(600, random_state=0)], ignore_index=True)
    case("data", "exact duplicate rows across splits", data_case("dups", dup, {}))
    case("data", "... with `split.dedupe: true`", data_case("dedupe", dup, {"data.split.dedupe": True}))
    late = frame.assign(timestamp=np.arange(n))
    late.loc[late.index[-30:], "domain"] = "late"  # a domain that only appears after the training period
    by_time = {"data.split.method": "time", "data.split.time_column": "timestamp"}
    case("data", "a domain with no training rows (time split)", data_case("untrained", late, dict(by_time)))
    case(
        "data",
        "... with `split.untrained_domains: drop`",
        data_case("untrained-drop", late, {**by_time, "data.split.untrained_domains": "drop"}),
    )
    big = frame.copy().astype({"user_id": object})
    big.loc[0, "user_id"] = 9007199254740993
    big.loc[1, "user_id"] = 9007199254740992
    big.loc[2, "user_id"] = None
    case("data", "ids above 2^53 with an empty cell (OOV counts shown)", data_case("bigids", big, {}))
    case("data", "Parquet through a config", data_case("parquet", frame, {"_ext": "parquet"}))
    case("data", "a .tsv under kind: csv", data_case("tsv", frame, {"_ext": "tsv"}))

    # -- values checked late or not at all
    for override in (
        "train.lr=-1",
        "train.batch_size=0",
        "model.dropout=1.5",
        "model.embedding_dim=0",
        "model.activation=swishy",
        "train.max_epochs=-5",
        "train.max_epochs=0",
        "data.split.ratios=[0.8,0.2,0]",
        "train.lr=1e6",
        "train.patience=-1",
        "train.grad_clip=-1",
        "train.device=cuda",
        "train.device=tpu",
        "train.lr=[1,",
        "train=5",
        "train.monitor=acc",
    ):
        case(
            "values",
            f"`--set {override}`",
            lambda o=override: cli(*train, "--out", work / f"v-{len(cases)}", "--set", o),
        )

    def out_of_range() -> dict:

        from polyrec.training.trainer import Trainer

        ds = polyrec.build_dataset(polyrec.make_config(config_file=str(base), model="mlp").data)
        ds.sparse[0, 0] = 10_000
        model = polyrec.create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])
        try:
            Trainer(model, ds, polyrec.TrainConfig(max_epochs=1))
        except ValueError as exc:
            return {
                "exit": 2,
                "error": f"error: {exc}",
                "warnings": [],
                "traceback": False,
                "note": "Python API: ValueError",
            }
        return {"exit": 0, "error": "", "warnings": [], "traceback": False, "note": "accepted!"}

    case("values", "an id outside its vocabulary (Python API)", out_of_range)

    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/fault_cases.py",
        "polyrec": polyrec.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
    lines = [
        "# What polyrec does with bad data, bad configs and faults",
        "",
        f"`{meta['command']}`; polyrec {meta['polyrec']}, Python {meta['python']}, {meta['machine']}.",
        "Every case through the CLI on generated data; exit 2 = a one-line user error, 1 = a traceback.",
        "",
        "| group | case | exit | what the user sees | note |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        seen = c["error"] or "; ".join(c["warnings"]) or "(no error)"
        if c["error"] and c["warnings"]:
            seen += " — " + "; ".join(c["warnings"])
        seen = seen.replace("|", "\\|")
        if len(seen) > 400:
            seen = seen[:397] + "..."
        lines.append(f"| {c['group']} | {c['case']} | {c['exit']} | {seen} | {c['note'].replace('|', '/')} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
