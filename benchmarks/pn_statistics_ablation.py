"""Ablation: STAR's Partitioned Normalization statistics, moving averages vs exact per-epoch statistics.

Trains STAR on ml1m-gender (model seed 1, Alternate regime, 9 epochs, no early stopping) twice: with the
moving averages of eq. 4 (``train.precise_norm_stats=false``) and with exact per-domain statistics
recomputed after each epoch (the default). After every epoch it prints validation mean AUC, overall
logloss and PCOC per domain.

    python benchmarks/pn_statistics_ablation.py   # writes results/p1_ml1m_gender/pn_stats_diagnostic.txt
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from polyrec.config import to_dict
from polyrec.data.dataset import build_dataset
from polyrec.experiment import make_config
from polyrec.models import create_model
from polyrec.training.trainer import Trainer, evaluate

OUT = Path(__file__).resolve().parent / "results" / "p1_ml1m_gender" / "pn_stats_diagnostic.txt"


def run(precise: bool) -> list[str]:
    cfg = make_config(
        "ml1m-gender",
        "star",
        overrides=[
            "train.max_epochs=9",
            "train.patience=0",
            "train.seed=1",
            f"train.precise_norm_stats={str(precise).lower()}",
        ],
    )
    ds = build_dataset(cfg.data)
    torch.manual_seed(1)
    model = create_model("star", ds.schema, **to_dict(cfg.model))
    lines = []

    def after_epoch(record: dict) -> None:
        r = evaluate(model, ds, "val")
        pcoc = {k: round(v, 3) for k, v in r.pcoc_per_domain.items()}
        lines.append(
            f"{'precise' if precise else 'moving'} {record['epoch']} {r.auc_mean:.4f} {r.logloss_overall:.4f} {pcoc}"
        )
        print(lines[-1], flush=True)

    Trainer(model, ds, cfg.train, progress=False, callbacks=(after_epoch,)).fit()
    return lines


def main() -> None:
    os.environ["POLYREC_QUIET"] = "1"
    lines = [
        "# STAR on ml1m-gender, model seed 1, 9 epochs without early stopping.",
        "# Per epoch: variant, epoch, validation auc_mean, logloss_overall, PCOC per domain.",
        "# Command: python benchmarks/pn_statistics_ablation.py",
    ]
    lines += run(False) + run(True)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
