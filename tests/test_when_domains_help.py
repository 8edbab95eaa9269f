"""The data-size / domain-count study's grid and summary (benchmarks/when_domains_help.py), on fake records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "when_domains_help.py"


def _study():
    spec = importlib.util.spec_from_file_location("when_domains_help", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["when_domains_help"] = module
    spec.loader.exec_module(module)
    return module


def _record(model, seed, wauc, domains=("F", "M")):
    return {
        "model": model,
        "seed": seed,
        "metrics": {"wauc": wauc, "auc_per_domain": {d: 0.5 for d in domains}},
        "data": {"rows": {"train": 600, "val": 200, "test": 200}},
    }


def test_cell_overrides_make_valid_configs_of_each_domain_attribute():
    from polyrec.experiment import make_config

    study = _study()
    for domain in study.DOMAINS:
        cfg = make_config(study.PROTOCOL, "mlp", overrides=study.cell_overrides(domain, 0.1))
        assert cfg.data.domain.column == study.DOMAINS[domain]["column"] and cfg.data.sample.fraction == 0.1
        assert cfg.data.domain.as_feature  # the MLP sees the domain too
    assert make_config(study.PROTOCOL, "mlp", overrides=study.cell_overrides("age", 1.0)).data.domain.groups is None


def test_summary_pairs_by_seed_and_calls_gains_losses_and_ties(tmp_path, monkeypatch):
    study = _study()
    monkeypatch.setattr(study, "OUT", tmp_path / "when")
    records = [_record("mlp", s, 0.80 + 0.001 * s) for s in range(3)]
    records += [_record("star", s, 0.81 + 0.001 * s + 0.0001 * (s % 2)) for s in range(3)]  # +1.0 every seed
    records += [_record("pepnet", s, 0.80 + 0.001 * s + (0.002 if s == 1 else -0.002)) for s in range(3)]
    cell = study.cell_dir("gender", 0.1)
    cell.mkdir(parents=True)
    (cell / "results.json").write_text(json.dumps(records))
    rows = study.summarise(["gender"], [0.1], ["mlp", "star", "pepnet"])
    star = next(r for r in rows if r["method"] == "star")
    assert star["n"] == 3 and abs(star["diff"] - 1.0) < 0.01 and star["verdict"] == "gain" and star["rows"] == 1000
    assert next(r for r in rows if r["method"] == "pepnet")["verdict"] == "tie"
    text = study.markdown(rows, "cmd")
    assert "| gender (2) | 1,000 |" in text and "**gain**" in text
    assert study.svg(rows).startswith("<svg") and "polyline" in study.svg(rows)
