"""Trained runs shared by the serving tests, each trained once per session (one epoch, one thread).

- ``ranking_run``: a STAR run on a synthetic data set of three raw domain values (0, 1, 2) that
  ``data.domain.groups`` makes two domains (``web`` = 0, ``app`` = 1 and 2), the domain also a feature;
  sparse ``user_id`` / ``item_id``, the multi-valued ``tags``, the dense ``dense_0``. Its data config is
  ``RANKING_DATA``.
- ``retrieval_run``: a two-tower ``dnn`` run on a tiny MovieLens-format folder (40 users, 30 films),
  with the data it was trained on.

The runs are written under session temp folders, with the polyrec cache pointed at one of them while they
are trained (the suite's per-test cache fixture does not reach session fixtures).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

RANKING_DATA = {
    "source": {
        "kind": "synthetic",
        "options": {
            "n_domains": 3,
            "n_samples": [500, 300, 200],
            "n_users": 80,
            "n_items": 60,
            "n_dense": 1,
            "seed": 3,
        },
    },
    "label": {"column": "label"},
    "domain": {"column": "domain", "groups": {"web": [0], "app": [1, 2]}, "as_feature": True},
    "features": [
        {"name": "user_id"},
        {"name": "item_id"},
        {"name": "tags", "kind": "multi", "sep": "|"},
        {"name": "dense_0", "kind": "dense", "transform": "standard"},
    ],
    "user_feature": "user_id",
    "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 1},
}
FAST_TRAIN = {"max_epochs": 1, "patience": 0, "batch_size": 128, "num_threads": 1}


@pytest.fixture(scope="session")
def ranking_run(tmp_path_factory) -> Path:
    from polyrec.experiment import run_experiment
    from polyrec.runconfig import resolve_config

    root = tmp_path_factory.mktemp("ranking")
    cfg = resolve_config(
        {
            "protocol": "tiny",
            "data": RANKING_DATA,
            "model": {"name": "star", "embedding_dim": 4, "hidden_units": [8]},
            "train": FAST_TRAIN,
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(root / "cache"))
        run_experiment(cfg, root / "run", progress=False)
    return root / "run"


def write_movielens(folder: Path, users: int = 40, films: int = 30, seed: int = 0) -> Path:
    """GroupLens ML-1M files (``users.dat``, ``movies.dat``, ``ratings.dat``): 8 ratings per user."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ages = (1, 18, 25, 35, 45, 50, 56)
    genres = ("Drama", "Comedy", "Action")
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'FM'[u % 2]}::{ages[u % 7]}::{u % 4}::{20000 + u}\n" for u in range(1, users + 1)),
        encoding="latin-1",
    )
    (folder / "movies.dat").write_text(
        "".join(f"{m}::Film {m} ({1970 + m})::{genres[m % 3]}\n" for m in range(1, films + 1)), encoding="latin-1"
    )
    lines = []
    for u in range(1, users + 1):
        t = 970_000_000 + 500 * u
        for m in rng.sample(range(1, films + 1), 8):
            t += 7
            lines.append(f"{u}::{m}::{5 if (m + u) % 3 else 2}::{t}\n")
    (folder / "ratings.dat").write_text("".join(lines), encoding="latin-1")
    return folder


@pytest.fixture(scope="session")
def retrieval_run(tmp_path_factory) -> Path:
    from polyrec.retrieval.experiment import make_retrieval_config, run_retrieval

    root = tmp_path_factory.mktemp("retrieval")
    ml = write_movielens(root / "ml-1m")
    overrides = [f"data.path={ml}", "model.hidden_units=[16]", "model.output_dim=8"]
    overrides += [f"train.{k}={v}" for k, v in {**FAST_TRAIN, "batch_size": 64}.items()]
    cfg = make_retrieval_config("ml1m-age3-retrieval", "dnn", overrides)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(root / "cache"))
        run_retrieval(cfg, root / "run")
    return root / "run"
