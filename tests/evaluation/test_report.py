"""Tests for polyrec.evaluation.report."""

import pytest

from polyrec.evaluation.report import metrics_table, per_domain_table, results_table


def _run(model, seed, wauc, strategy="joint", split="h1", **extra):
    metrics = {"wauc": wauc, "auc_overall": wauc + 0.01, "auc_mean": wauc - 0.01,
               "logloss_overall": 0.45 + seed * 0.01,
               "auc_per_domain": {"d0": wauc, "d1": wauc + 0.02}}
    metrics.update(extra)
    return {"protocol": "p1", "model": model, "strategy": strategy, "seed": seed,
            "split_hash": split, "metrics": metrics, "train_samples_per_s": 1000.0 + seed, "wall_s": 10.0}


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def test_results_table_groups_and_formats():
    runs = [_run("STAR", 0, 0.70), _run("STAR", 1, 0.72), _run("MLP", 0, 0.65)]
    rows = _rows(results_table(runs, reference={"STAR": 0.7312}))
    assert rows[0] == ["protocol", "model", "strategy", "n", "wauc", "auc_overall", "auc_mean",
                       "logloss_overall", "paper"]
    assert rows[1] == ["---"] * 9
    star, mlp = rows[2], rows[3]
    assert star[:4] == ["p1", "STAR", "joint", "2"]
    assert star[4] == "71.00 ± 1.41"  # x100, sample std of 0.70/0.72
    assert star[7] == "0.4550 ± 0.0071"  # logloss unscaled, 4 decimals
    assert star[8] == "0.7312"
    assert mlp[3] == "1" and mlp[4] == "65.00 ± 0.00" and mlp[8] == "-"


def test_results_table_top_level_keys_partial_metrics_and_split_note():
    runs = [_run("STAR", 0, 0.70, gauc=0.6), _run("STAR", 1, 0.72, split="h2")]
    table = results_table(runs, metric_keys=["gauc", "train_samples_per_s"])
    rows = _rows(table)
    assert rows[2][4] == "60.00 ± 0.00 (n=1)"
    assert rows[2][5] == "1000.5000 ± 0.7071"
    assert "mixes split_hash" in table


def test_results_table_separates_strategies_and_escapes_pipes():
    runs = [_run("A|B", 0, 0.7, strategy="joint"), _run("A|B", 0, 0.7, strategy="finetune")]
    table = results_table(runs, metric_keys=["wauc"])
    assert "A\\|B" in table
    assert len(_rows(table)) == 4  # header, rule, two groups


def test_results_table_rejects_single_dict():
    with pytest.raises(TypeError, match="list"):
        results_table(_run("STAR", 0, 0.7))


def test_per_domain_table():
    runs = [_run("STAR", 0, 0.70), _run("STAR", 1, 0.72)]
    rows = _rows(per_domain_table(runs, group_by=["model"]))
    assert rows[0] == ["model", "n", "d0", "d1"]
    assert rows[2] == ["STAR", "2", "71.00 ± 1.41", "73.00 ± 1.41"]
    with pytest.raises(TypeError, match="per-domain"):
        per_domain_table(runs, key="wauc")


def test_results_table_reference_metric_is_scaled_and_case_insensitive():
    runs = [_run("STAR", 0, 0.70), _run("mlp", 0, 0.65)]
    rows = _rows(results_table(runs, metric_keys=["wauc"], reference={"star": 0.8018}, reference_metric="wauc"))
    assert rows[0][-1] == "paper wauc"
    assert rows[2][-1] == "80.18" and rows[3][-1] == "-"


def test_metrics_table_from_evaluator_output():
    import torch

    from polyrec.evaluation.metrics import MultiDomainEvaluator

    ev = MultiDomainEvaluator(["a", "b"])
    ev.update(torch.tensor([0.5, -0.5, 1.0, 0.2]), torch.tensor([1.0, 0.0, 1.0, 1.0]),
              torch.tensor([0, 0, 1, 1]), users=torch.tensor([1, 1, 2, 2]))
    table = metrics_table(ev.compute())
    rows = _rows(table)
    assert ["auc_overall", "100.00"] in rows and ["n", "4"] in rows
    assert rows[rows.index(["domain", "n", "pos", "auc", "logloss", "pcoc", "gauc"]) + 2][:4] == [
        "a", "2", "1", "100.00"]
    assert ["b", "2", "2", "nan"] == rows[-1][:4]
