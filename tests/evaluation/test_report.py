"""Tests for polyrec.evaluation.report."""

import pytest

from polyrec.evaluation.report import (
    adapter_table,
    cost_table,
    metrics_table,
    per_domain_table,
    rank_table,
    results_table,
)


def _run(model, seed, wauc, strategy="joint", split="h1", **extra):
    metrics = {
        "wauc": wauc,
        "auc_overall": wauc + 0.01,
        "auc_mean": wauc - 0.01,
        "logloss_overall": 0.45 + seed * 0.01,
        "auc_per_domain": {"d0": wauc, "d1": wauc + 0.02},
    }
    metrics.update(extra)
    return {
        "protocol": "p1",
        "model": model,
        "strategy": strategy,
        "seed": seed,
        "split_hash": split,
        "metrics": metrics,
        "train_samples_per_s": 1000.0 + seed,
        "wall_s": 10.0,
    }


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def test_results_table_groups_and_formats():
    runs = [_run("STAR", 0, 0.70), _run("STAR", 1, 0.72), _run("MLP", 0, 0.65)]
    rows = _rows(results_table(runs, reference={"STAR": 0.7312}))
    assert rows[0] == [
        "protocol",
        "model",
        "strategy",
        "n",
        "wauc",
        "auc_overall",
        "auc_mean",
        "logloss_overall",
        "paper",
    ]
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
    ev.update(
        torch.tensor([0.5, -0.5, 1.0, 0.2]),
        torch.tensor([1.0, 0.0, 1.0, 1.0]),
        torch.tensor([0, 0, 1, 1]),
        users=torch.tensor([1, 1, 2, 2]),
    )
    table = metrics_table(ev.compute())
    rows = _rows(table)
    assert ["auc_overall", "100.00"] in rows and ["n", "4"] in rows
    assert rows[rows.index(["domain", "n", "pos", "auc", "logloss", "pcoc", "gauc"]) + 2][:4] == [
        "a",
        "2",
        "1",
        "100.00",
    ]
    assert rows[-1][:4] == ["b", "2", "2", "nan"]


def test_metrics_table_lists_the_largest_domains_when_told_to():
    names = [str(d) for d in range(8)]
    sizes = [5, 40, 7, 40, 1, 90, 3, 2]
    m = {
        "auc_overall": 0.7,
        "auc_per_domain": {n: 0.6 for n in names},
        "count_per_domain": {n: {"n": k, "pos": 1, "neg": k - 1} for n, k in zip(names, sizes)},
    }
    table = metrics_table(m, max_domains=3)
    shown = [r[0] for r in _rows(table) if r[0] in names]
    assert shown == ["1", "3", "5"]  # the three largest (a tie broken by domain order), in domain order
    assert table.endswith("3 largest domains shown; 5 more are in the full metrics")
    full = metrics_table(m)
    assert [r[0] for r in _rows(full) if r[0] in names] == names and "more are in" not in full
    assert metrics_table(m, max_domains=8) == full


def _adapter_runs():
    # mlp: base and +mlora on seeds 0..2 of one split; wdl: base only; a +mlora run on another split is not paired.
    runs = []
    for seed, (base, adapted) in enumerate([(0.800, 0.803), (0.801, 0.805), (0.799, 0.801)]):
        env = {"torch_threads": 1}
        runs.append(
            {
                "model": "mlp",
                "seed": seed,
                "split_hash": "s1",
                "metrics": {"wauc": base},
                "adapter_params": 0,
                "backbone_params": 1000,
                "train_samples_per_s": 200.0,
                "environment": env,
            }
        )
        runs.append(
            {
                "model": "mlp+mlora",
                "seed": seed,
                "split_hash": "s1",
                "metrics": {"wauc": adapted},
                "adapter_params": 100,
                "backbone_params": 1000,
                "train_samples_per_s": 150.0,
                "environment": env,
            }
        )
    runs.append({"model": "mlp+mlora", "seed": 3, "split_hash": "other", "metrics": {"wauc": 0.9}})
    runs.append({"model": "wdl", "seed": 0, "split_hash": "s1", "metrics": {"wauc": 0.8}})
    return runs


def test_adapter_table_pairs_by_seed_and_split():
    from polyrec.evaluation.metrics import paired_ttest

    table = adapter_table(_adapter_runs(), reference={"mlp": 0.8015, "mlp+mlora": 0.8039})
    lines = table.splitlines()
    assert len(lines) == 3  # header, rule, one backbone: wdl has no +mlora runs
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "mlp" and cells[1] == "3"
    assert cells[4] == "+0.30"  # mean of 0.3, 0.4, 0.2 points; the unpaired seed-3 run is left out of Δ
    expected_p = paired_ttest([0.803, 0.805, 0.801], [0.800, 0.801, 0.799])
    assert cells[5] == f"{expected_p:.2g}"
    assert cells[6:9] == ["80.15", "80.39", "+0.24"]
    assert cells[9:11] == ["100", "10.00%"]
    assert cells[11:] == ["200", "150"]


def test_adapter_table_marks_throughput_measured_with_different_threads():
    runs = _adapter_runs()[:6]
    for r in runs[1::2]:
        r["environment"] = {"torch_threads": 2}
    cells = [c.strip() for c in adapter_table(runs).splitlines()[2].strip("|").split("|")]
    assert cells[11:] == ["200 (1 thr)", "150 (2 thr)"]


def test_adapter_table_empty_without_pairs():
    assert adapter_table([{"model": "mlp", "seed": 0, "metrics": {"wauc": 0.8}}]) == ""


def test_per_domain_table_with_reference_and_cost_table():
    runs = [
        {
            "model": "star",
            "seed": s,
            "metrics": {"auc_per_domain": {"0": 0.81 + s / 100, "1": 0.8}},
            "num_parameters": 10,
            "train_samples_per_s": 1000.0 * (s + 1),
            "epochs": 4 + s,
            "best_epoch": s,
            "wall_s": 10.0,
            "environment": {"torch_threads": 2},
        }
        for s in range(2)
    ]
    table = per_domain_table(runs, group_by=["model"], reference={"STAR": {"0": 0.8137}})
    assert "81.50 ± 0.71 [81.37]" in table and "| 80.00 ± 0.00 |" in table  # domain 1 has no reference
    cost = cost_table(runs, group_by=["model"]).splitlines()[2]
    assert cost == "| star | 2 | 10 | 1,500 | excl. | 4.5 | 0.5 | 10 | 2 |"  # records without recalibration_s
    for r, recal in zip(runs, (1.0, 3.0)):
        r.update(train_s=10.0, recalibration_s=recal)
    assert (
        cost_table(runs, group_by=["model"]).splitlines()[2] == "| star | 2 | 10 | 1,500 | 20% | 4.5 | 0.5 | 10 | 2 |"
    )


def test_results_markdown_has_every_section():
    from polyrec.benchmark import results_markdown

    runs = _adapter_runs()[:6]
    for r in runs:
        r["metrics"].update({"auc_per_domain": {"F": 0.79, "M": 0.81}, "logloss_per_domain": {"F": 0.4, "M": 0.5}})
    md = results_markdown("ml1m-gender", runs)
    for heading in (
        "paper wauc",
        "Without and with MLoRA",
        "Per-domain test AUC",
        "average RANK",
        "Per-domain test logloss",
        "## Cost",
        "Environment:",
    ):
        assert heading in md, heading


def test_results_markdown_leaves_thousands_of_domains_to_results_json():
    from polyrec.benchmark import MARKDOWN_DOMAINS, results_markdown

    def runs(n_domains):
        per_domain = {str(d): 0.7 for d in range(n_domains)}
        return [
            {
                "model": m,
                "seed": 0,
                "metrics": {"auc_overall": 0.7, "auc_per_domain": per_domain, "logloss_per_domain": per_domain},
            }
            for m in ("mlp", "star")
        ]

    many = results_markdown("synthetic-zipf-10k", runs(MARKDOWN_DOMAINS + 1))
    assert "Per-domain test AUC" not in many and "average RANK" not in many and "## Cost" in many
    assert f"Per-domain tables: {MARKDOWN_DOMAINS + 1} domains" in many and "results.json" in many
    few = results_markdown("synthetic-zipf-10k", runs(MARKDOWN_DOMAINS))
    assert "Per-domain test AUC" in few and "average RANK" in few and "Per-domain tables:" not in few


def test_settings_table_reads_run_config_and_falls_back_to_the_preset():
    from polyrec.benchmark import settings_table

    recorded = {
        "model": "mlp",
        "metrics": {},
        "config": {
            "model": {"name": "mlp", "embedding_dim": 4, "hidden_units": [8]},
            "train": {"strategy": "joint", "lr": 0.01, "batch_size": 32},
            "adapter": {"kind": "mlora", "alpha": 16, "targets": None},
        },
    }
    older = {"model": "star", "metrics": {}}
    rows = settings_table("ml1m-gender", [recorded, older]).splitlines()
    assert rows[2] == (
        "| mlp | embedding_dim=4, hidden_units=[8], adapter={'kind': 'mlora', 'alpha': 16} | "
        "strategy=joint, lr=0.01, batch_size=32 |"
    )
    assert rows[3].startswith("| star | embedding_dim=128,") and "(preset)" in rows[3]
    assert "strategy=alternate" in rows[3]


def test_results_markdown_lists_run_notes():
    from polyrec.benchmark import results_markdown

    runs = [{"model": "mlp", "seed": s, "metrics": {"wauc": 0.8}} for s in range(2)]
    runs[1]["note"] = "stopped at the epoch cap"
    md = results_markdown("ml1m-gender", runs)
    assert "## Notes on individual runs" in md and "- mlp seed 1: stopped at the epoch cap" in md
    assert "Notes on individual runs" not in results_markdown("ml1m-gender", runs[:1])


def test_rank_table_averages_seeds_then_ranks_per_domain_with_ties():
    def run(model, seed, per_domain):
        return {"model": model, "strategy": "s", "seed": seed, "metrics": {"auc_per_domain": per_domain}}

    runs = [
        run("a", 0, {"x": 0.70, "y": 0.90, "z": 0.5}),
        run("a", 1, {"x": 0.72, "y": 0.90, "z": 0.6}),
        run("b", 0, {"x": 0.80, "y": 0.60, "z": 0.55}),
        run("c", 0, {"x": 0.80, "y": 0.50, "z": float("nan")}),
    ]  # z: c has no finite value: z is left out
    rows = {r[0]: r for r in _rows(rank_table(runs))[2:]}
    assert "average AUC (2 domains)" in rank_table(runs)
    # x: b and c tie for 1-2 (1.5 each), a (mean 0.71) is 3rd; y: a 1, b 2, c 3
    assert rows["a"][2:] == ["2", "80.50", "2.00"]
    assert rows["b"][2:] == ["1", "70.00", "1.75"]
    assert rows["c"][3:] == ["65.00", "2.25"]
    assert [r[0] for r in _rows(rank_table(runs))[2:]] == ["b", "a", "c"]  # best average rank first


def test_integer_domain_codes_are_listed_numerically_other_names_as_given():
    per = {"0": 0.7, "1": 0.71, "10": 0.72, "2": 0.73}
    runs = [{"model": "m", "metrics": {"auc_per_domain": per}}]
    header = per_domain_table(runs, group_by=["model"]).splitlines()[0]
    assert header == "| model | n | 0 | 1 | 2 | 10 |"
    m = {"auc_per_domain": per, "count_per_domain": {d: {"n": 1, "pos": 1} for d in per}}
    assert [line.split(" | ")[0].strip("| ") for line in metrics_table(m).split("\n\n")[1].splitlines()[2:]] == [
        "0",
        "1",
        "2",
        "10",
    ]
    runs = [{"model": "m", "metrics": {"auc_per_domain": {"M": 0.7, "F": 0.8}}}]
    assert per_domain_table(runs, group_by=["model"]).splitlines()[0] == "| model | n | M | F |"
