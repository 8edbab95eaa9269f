"""The run directory is safe to open from a stranger: a pickle planted in place of any file runs no code.

For every file a finished run directory (and its checkpoints) holds, the file is replaced by a pickle
whose unpickling would create a marker file; then every path that reads a run is taken — the CLI's
``evaluate``, ``train`` (resume) and ``add-domain``, and Python's ``load_run``, ``evaluate_run`` and
``Trainer(resume=True)`` — and the marker must never appear. Each path either ignores the file (it does
not read it) or ends in a clear error: exit code 2 and one line in the CLI, an ``ArtifactError`` (a
``ValueError``) in Python.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from builders import new_domain_csv_config
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.experiment import evaluate_run, load_run, make_config
from polyrec.safeio import ArtifactError

runner = CliRunner()


class Payload:
    """Unpickling this creates ``self.marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil(marker: Path) -> bytes:
    return pickle.dumps({"model": Payload(str(marker))})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished MLP+MLoRA run (two domains) and the data with a third domain for add-domain."""
    root = tmp_path_factory.mktemp("artifact")
    config = new_domain_csv_config(root, n_samples=(400, 300, 200), n_users=50, n_items=40, seed=2)
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    args = [
        "--config",
        str(root / "tiny.yaml"),
        "--model",
        "mlp+mlora",
        "--set",
        "model.embedding_dim=4",
        "--set",
        "model.hidden_units=[8]",
    ]
    import os

    os.environ["POLYREC_CACHE"] = str(root / "cache")
    out = runner.invoke(app, ["train", *args, "--out", str(root / "run")])
    assert out.exit_code == 0, out.output
    return root, args


def _files(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())


def test_the_run_directory_holds_only_json_and_safetensors(base):
    root, _ = base
    files = _files(root / "run")
    assert all(f.endswith((".json", ".jsonl", ".csv", ".safetensors")) for f in files), files
    assert sum(f.startswith("checkpoints/") for f in files) == 6  # two checkpoints of three files


def _paths(root: Path, args: list[str], run: Path, marker: Path):
    """Every way a user reads a run; each returns an exit code (0 or 2) or raises."""

    def cli(*argv):
        out = runner.invoke(app, list(argv))
        if out.exit_code not in (0, 2):
            raise AssertionError(f"{argv[0]}: exit {out.exit_code}: {out.output}\n{out.exception!r}")
        if out.exit_code == 2:
            assert out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
        return out.exit_code

    def python(fn):
        try:
            fn()
        except ValueError as exc:  # ArtifactError, RunMismatch, CheckpointError: clear errors
            assert str(exc) and "\n" not in str(exc)
            return 2
        return 0

    def trainer_resume():
        from polyrec.data.dataset import build_dataset
        from polyrec.experiment import build_model
        from polyrec.training.trainer import Trainer

        cfg = make_config(
            config_file=str(root / "tiny.yaml"),
            model="mlp+mlora",
            overrides=["model.embedding_dim=4", "model.hidden_units=[8]"],
        )
        ds = build_dataset(cfg.data)
        Trainer(build_model(cfg, ds.schema), ds, cfg.train, out_dir=run, resume=True)

    new = root / "added"
    shutil.rmtree(new, ignore_errors=True)
    return {
        "cli evaluate": lambda: cli("evaluate", str(run)),
        "cli train (resume)": lambda: cli("train", *args, "--out", str(run)),
        "cli add-domain": lambda: cli(
            "add-domain",
            str(run),
            "--domain",
            "2",
            "--out",
            str(new),
            "--set",
            f"data.source.path={root / 'all.csv'}",
            "--set",
            "train.max_epochs=1",
        ),
        "load_run": lambda: python(lambda: load_run(run)),
        "evaluate_run": lambda: python(lambda: evaluate_run(run)),
        "Trainer(resume=True)": lambda: python(trainer_resume),
    }


def _planted_cases(base):
    root, _ = base
    files = _files(root / "run")
    # Both checkpoints at once too: with one planted, resume falls back to the other (tested elsewhere).
    cases = [[f] for f in files]
    cases.append([f for f in files if f.startswith("checkpoints/") and f.endswith("state.safetensors")])
    cases.append([f for f in files if f.startswith("checkpoints/") and f.endswith("state.json")])
    return cases


def test_a_pickle_in_place_of_any_file_runs_no_code(base, tmp_path):
    root, args = base
    cases = _planted_cases(base)
    assert len(cases) >= 15
    errors = 0
    for planted in cases:
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(root / "run", run)
        marker = tmp_path / "pwned"
        for name in planted:
            (run / name).write_bytes(_evil(marker))
        for label, path in _paths(root, args, run, marker).items():
            code = path()
            assert not marker.exists(), f"{planted} via {label}: code ran"
            errors += code == 2
    assert errors >= len(cases)  # at least evaluate refuses every planted file it reads


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "schema.json", "run.json"])
def test_a_damaged_run_file_is_a_clear_error(base, tmp_path, name):
    root, _ = base
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    data = bytearray((run / name).read_bytes())
    data[len(data) // 2] ^= 0x20  # one flipped bit, same size
    (run / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        load_run(run)
    out = runner.invoke(app, ["evaluate", str(run)])
    assert out.exit_code == 2 and name in out.output


def test_a_polyrec_0_1_run_of_pickles_is_refused_unopened(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    marker = tmp_path / "pwned"
    (run / "model.pt").write_bytes(_evil(marker))
    (run / "checkpoint.pt").write_bytes(_evil(marker))
    with pytest.raises(ArtifactError, match="polyrec 0.1"):
        load_run(run)
    out = runner.invoke(app, ["evaluate", str(run)])
    assert out.exit_code == 2 and "pickle" in out.output
    assert not marker.exists()


def test_result_json_records_oov_counts_and_the_config_hash(base):
    root, _ = base
    record = json.loads((root / "run" / "result.json").read_text())
    assert set(record["data"]["oov"]) == {"train", "val", "test"}
    assert record["data"]["rows"]["train"] > 0
    assert len(record["config_hash"]) == 16
    manifest = json.loads((root / "run" / "run.json").read_text())
    assert manifest["config_hash"] == record["config_hash"]
    assert {"model.safetensors", "config.json", "schema.json", "processing.json", "data.json", "result.json"} <= set(
        manifest["files"]
    )


def test_an_added_domain_run_refuses_evaluation_when_its_new_rows_changed(base, tmp_path):
    root, _ = base
    added = tmp_path / "added"
    out = runner.invoke(
        app,
        [
            "add-domain",
            str(root / "run"),
            "--domain",
            "2",
            "--out",
            str(added),
            "--set",
            f"data.source.path={root / 'all.csv'}",
            "--set",
            "train.max_epochs=1",
        ],
    )
    assert out.exit_code == 0, out.output
    assert json.loads((added / "data.json").read_text())["rows"]["train"] == {"0": 0, "1": 0, "2": 120}
    original = (root / "all.csv").read_bytes()
    try:
        (root / "all.csv").write_bytes(original.replace(b"\n1,", b"\n2,", 1))  # one id changed
        out = runner.invoke(app, ["evaluate", str(added)])
        assert out.exit_code == 2 and "all.csv" in out.output and "changed since it was trained" in out.output
    finally:
        (root / "all.csv").write_bytes(original)
    assert runner.invoke(app, ["evaluate", str(added)]).exit_code == 0
