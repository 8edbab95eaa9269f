"""Online training day after day (STAR §4.4): evaluate each day before training on it, a run per day."""

from __future__ import annotations

import pytest
import torch

from polyrec.data.sources.synthetic import make_synthetic
from polyrec.experiment import load_run, run_experiment
from polyrec.runconfig import make_config
from polyrec.training.online import _encoded, _evaluate, day_sources, train_online

SHRINK = [
    "data.source.options.n_domains=3",
    "data.source.options.n_samples.total=3000",
    "data.source.options.n_users=200",
    "data.source.options.n_items=120",
    "train.max_epochs=1",
    "train.batch_size=256",
    "model.dropout=0.3",  # continuing must replay dropout draws too
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    cfg = make_config("synthetic-zipf-10k", "star", overrides=SHRINK)
    run_experiment(cfg, root / "base")
    stream = root / "stream"
    stream.mkdir()
    for day in range(3):  # the same generator, new draws: a day's rows, written as that day's file
        make_synthetic(n_domains=3, n_samples=[700, 400, 200], n_users=200, n_items=120, seed=100 + day).to_parquet(
            stream / f"day-{day}.parquet", row_group_size=300
        )
    return root


def test_each_day_is_evaluated_before_training_and_written_as_a_run(base):
    out = base / "online"
    days = day_sources(base / "stream")
    assert [d.name for d in days] == ["day-0.parquet", "day-1.parquet", "day-2.parquet"]
    records = train_online(base / "base", days, out, window=600, batch_size=128)
    assert [r["day"] for r in records] == ["day-0", "day-1", "day-2"]
    assert all(r["trained_rows"] == 1300 and r["batches"] == 11 for r in records)
    assert (out / "latest").resolve() == (out / "days" / "day-2").resolve()
    for name in ("online.json", "online.md", "online.svg"):
        assert (out / name).stat().st_size > 0

    # day d's metrics are those of the model written after day d - 1 (the base run's for day 0)
    cfg, base_model = load_run(base / "base")
    from polyrec.data.processing import FittedProcessing
    from polyrec.safeio import read_json

    fitted = FittedProcessing.from_dict(read_json(base / "base" / "processing.json", "processing"))
    names = list(base_model.schema.domain.values)
    before = [base_model] + [load_run(out / "days" / f"day-{d}")[1] for d in range(2)]
    for d, model in enumerate(before):
        m = _evaluate(model, _encoded(days[d], cfg, fitted, names, 500), names, 1000)
        assert m["auc_overall"] == records[d]["metrics"]["auc_overall"]
    from polyrec.serving.predictor import Predictor

    served = Predictor.from_run(out / "latest")  # what `polyrec serve OUT/latest` loads
    row = {"user_id": 3, "item_id": 5, "user_group": 1, "item_cat": 2, "tags": "t1|t2", "dense_0": 0.1, "dense_1": 0.2}
    assert served.predict([{**row, "domain": 1}]).logits.shape == (1,)
    changed = load_run(out / "days" / "day-0")[1].state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in base_model.state_dict().items())


def test_a_day_with_a_domain_the_run_does_not_know_is_refused(base, tmp_path):
    make_synthetic(n_domains=4, n_samples=[50, 50, 50, 50], n_users=200, n_items=120, seed=7).to_parquet(
        tmp_path / "new.parquet"
    )
    with pytest.raises(ValueError, match=r"domain\(s\) \['3'\] that the fitted processing does not know"):
        train_online(base / "base", [tmp_path / "new.parquet"], tmp_path / "out", window=100, batch_size=50)
    with pytest.raises(FileNotFoundError, match="holds no day"):
        day_sources(tmp_path / "out")
    with pytest.raises(ValueError, match="no days given"):
        train_online(base / "base", [], tmp_path / "out2")


def test_continuing_with_new_days_equals_one_call_over_all_days(base, tmp_path):
    days = day_sources(base / "stream")
    whole = train_online(base / "base", days, tmp_path / "whole", window=600, batch_size=128)
    train_online(base / "base", days[:2], tmp_path / "parts", window=600, batch_size=128)
    again = train_online(None, days, tmp_path / "parts", window=600, batch_size=128)  # day-2 is new
    assert [r["day"] for r in again] == ["day-0", "day-1", "day-2"]
    for a, w in zip(again, whole, strict=True):
        assert a["metrics"]["auc_overall"] == w["metrics"]["auc_overall"] and a["loss"] == w["loss"]
    final_whole = load_run(tmp_path / "whole" / "latest")[1].state_dict()
    final_parts = load_run(tmp_path / "parts" / "latest")[1].state_dict()
    for k, v in final_whole.items():
        assert torch.equal(v, final_parts[k]), k
    assert train_online(None, days, tmp_path / "parts", window=600, batch_size=128) == again  # nothing new
    with pytest.raises(ValueError, match="holds online training from"):
        train_online(base / "base", days, tmp_path / "parts", window=600, batch_size=128)
    with pytest.raises(ValueError, match="holds no online training to continue"):
        train_online(None, days, tmp_path / "empty")


def test_polyrec_train_stream_starts_from_a_run_and_continues_its_output(base, tmp_path):
    from typer.testing import CliRunner

    from polyrec.cli import app

    runner = CliRunner()
    days = tmp_path / "days"
    days.mkdir()
    for name in ("day-0.parquet", "day-1.parquet"):
        (days / name).write_bytes((base / "stream" / name).read_bytes())
    out = tmp_path / "online"
    args = ["train", "--stream", str(days), "--out", str(out), "--window", "600"]
    first = runner.invoke(app, [*args, "--from-run", str(base / "base")])
    assert first.exit_code == 0, first.output
    assert "| day-0 |" in first.output and "| day-1 |" in first.output and "latest run:" in first.output
    (days / "day-2.parquet").write_bytes((base / "stream" / "day-2.parquet").read_bytes())
    second = runner.invoke(app, args)  # continues OUT: only day-2 is new
    assert second.exit_code == 0, second.output
    assert (out / "latest").resolve().name == "day-2"
    bad = runner.invoke(app, [*args, "--model", "mlp"])
    assert bad.exit_code == 2 and "drop --model" in bad.output
    alone = runner.invoke(app, ["train", "--model", "mlp", "--from-run", str(base / "base"), "--out", str(tmp_path)])
    assert alone.exit_code == 2 and "go with --stream" in alone.output
    missing = runner.invoke(app, ["train", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "give --model NAME" in missing.output
