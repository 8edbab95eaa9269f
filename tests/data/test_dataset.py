"""EncodedDataset: seeded splits, the on-disk cache, batches and the user field."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polyrec.data import dataset as dataset_mod
from polyrec.data.config import DomainRule
from polyrec.data.dataset import (
    SPLITS,
    EncodedDataset,
    build_dataset,
    dataset_key,
    encode_frame,
    load_dataset_dir,
    make_splits,
    save_dataset,
    split_hash,
)
from polyrec.data.schema import OOV_INDEX
from polyrec.data.sources import make_synthetic


def assert_same_data(a: EncodedDataset, b: EncodedDataset) -> None:
    assert a.schema == b.schema
    for name in ("sparse", "dense", "label", "domain", "user"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.multi.keys() == b.multi.keys()
    for k in a.multi:
        assert torch.equal(a.multi[k], b.multi[k]), k
    for s in SPLITS:
        assert torch.equal(a.splits[s], b.splits[s]), s
    assert a.processing.to_dict() == b.processing.to_dict()


def assert_partition(splits: dict, n: int) -> None:
    """Disjoint, sorted, and together every row exactly once."""
    parts = [np.asarray(splits[s]) for s in SPLITS]
    for p in parts:
        assert np.all(np.diff(p) > 0), "split indices must be sorted and unique"
    allrows = np.concatenate(parts)
    assert len(allrows) == n
    assert np.array_equal(np.sort(allrows), np.arange(n))


def with_split(cfg, **kw):
    return dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, **kw))


# ------------------------------------------------------------------------------------------------ splits


def test_tiny_dataset_shape(tiny_dataset):
    ds = tiny_dataset
    assert len(ds) == 2500
    assert ds.schema.num_domains == 3 and ds.schema.domain.values == ("0", "1", "2")
    assert ds.schema.sparse_names == ["user_id", "item_id", "domain"]
    assert ds.sparse.shape == (2500, 3) and ds.sparse.dtype == torch.int64
    assert ds.dense.shape == (2500, 1) and ds.dense.dtype == torch.float32
    assert ds.multi["tags"].shape == (2500, ds.schema.feature("tags").max_len)
    assert ds.label.dtype == torch.float32 and set(ds.label.unique().tolist()) <= {0.0, 1.0}
    # The domain feature column is the domain index shifted past padding and OOV.
    assert torch.equal(ds.sparse[:, 2], ds.domain + 2)
    assert_partition(ds.splits, len(ds))


def test_stratified_domain_honours_ratios_per_domain_and_label(tiny_dataset):
    ds = tiny_dataset
    ratios = (0.6, 0.2, 0.2)
    for d in range(3):
        for y in (0.0, 1.0):
            group = ((ds.domain == d) & (ds.label == y)).sum().item()
            for s, r in zip(SPLITS, ratios):
                idx = ds.splits[s]
                got = ((ds.domain[idx] == d) & (ds.label[idx] == y)).sum().item()
                assert abs(got - r * group) <= 1, (d, y, s, got, group)


def test_stratified_split_rounding_on_small_groups():
    label = np.array([0] * 7 + [1] * 3)
    domain = np.zeros(10, dtype=np.int64)
    sp = make_splits("stratified_domain", (0.6, 0.2, 0.2), 0, label, domain)
    assert_partition(sp, 10)
    assert [int(label[sp[s]].sum()) for s in SPLITS] == [2, 1, 0]  # round(1.8), round(0.6), rest
    assert [len(sp[s]) for s in SPLITS] == [6, 2, 2]  # 4+2, 1+1, 2+0


def test_random_split():
    n = 1000
    sp = make_splits("random", (0.8, 0.1, 0.1), 3, np.zeros(n), np.zeros(n, np.int64))
    assert [len(sp[s]) for s in SPLITS] == [800, 100, 100]
    assert_partition(sp, n)
    # A random split is not a block of consecutive rows.
    assert sp["test"].max() - sp["test"].min() > 500


def test_user_split_keeps_each_user_in_one_split(synthetic_cfg):
    ds = encode_frame(make_synthetic(**synthetic_cfg.source.options), with_split(synthetic_cfg, method="user"))
    assert_partition(ds.splits, len(ds))
    users = {s: set(ds.user[ds.splits[s]].tolist()) for s in SPLITS}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]
    n_users = len(set(ds.user.tolist()))
    assert abs(len(users["train"]) - 0.6 * n_users) <= 1
    # Users outside train are OOV in the embedding table but keep their own identity for GAUC.
    assert (ds.sparse[ds.splits["test"], 0] == OOV_INDEX).all()
    assert len(users["test"]) > 1


def test_user_split_needs_user_feature(synthetic_cfg):
    cfg = dataclasses.replace(with_split(synthetic_cfg, method="user"), user_feature=None)
    with pytest.raises(ValueError, match="split.method 'user' needs data.user_feature"):
        encode_frame(make_synthetic(**synthetic_cfg.source.options), cfg)


def test_time_split_puts_older_rows_in_train():
    rng = np.random.default_rng(0)
    n = 300
    times = rng.integers(0, 50, n)  # many ties
    sp = make_splits("time", (0.6, 0.2, 0.2), 0, np.zeros(n), np.zeros(n, np.int64), times=times)
    assert_partition(sp, n)
    assert times[sp["train"]].max() <= times[sp["val"]].min()
    assert times[sp["val"]].max() <= times[sp["test"]].min()
    assert times[sp["train"]].max() <= times[sp["test"]].min()
    with pytest.raises(ValueError, match="split.method 'time' needs split.time_column"):
        make_splits("time", (0.6, 0.2, 0.2), 0, np.zeros(n), np.zeros(n, np.int64))


def test_time_split_through_encode_frame(synthetic_cfg):
    frame = make_synthetic(**synthetic_cfg.source.options)
    frame["ts"] = np.random.default_rng(1).integers(0, 10_000, len(frame))
    ds = encode_frame(frame, with_split(synthetic_cfg, method="time", time_column="ts"))
    ts = frame["ts"].to_numpy()
    assert ts[ds.splits["train"].numpy()].max() <= ts[ds.splits["test"].numpy()].min()
    with pytest.raises(KeyError, match="split.time_column 'when' is not a column"):
        encode_frame(frame, with_split(synthetic_cfg, method="time", time_column="when"))


def test_same_split_seed_gives_identical_split_whatever_the_global_seeds(synthetic_cfg):
    frame = make_synthetic(**synthetic_cfg.source.options)
    torch.manual_seed(1)
    np.random.seed(1)
    a = encode_frame(frame, synthetic_cfg)
    torch.manual_seed(12345)
    np.random.seed(999)
    np.random.random(17)  # advance the legacy global state too
    b = encode_frame(frame, synthetic_cfg)
    for s in SPLITS:
        assert torch.equal(a.splits[s], b.splits[s])
    assert a.split_hash == b.split_hash == a.report["split_hash"]


def test_different_split_seed_gives_different_split_hash(synthetic_cfg):
    frame = make_synthetic(**synthetic_cfg.source.options)
    a = encode_frame(frame, synthetic_cfg)
    b = encode_frame(frame, with_split(synthetic_cfg, seed=synthetic_cfg.split.seed + 1))
    assert a.split_hash != b.split_hash
    assert not torch.equal(a.splits["test"], b.splits["test"])
    # Same sizes per domain: only which rows, not how many.
    assert a.domain_counts("test") == b.domain_counts("test")


@pytest.mark.parametrize("method", ["stratified_domain", "random", "user", "time"])
def test_every_method_is_a_partition_and_deterministic(method):
    rng = np.random.default_rng(5)
    n = 500
    label, domain = rng.integers(0, 2, n), rng.integers(0, 3, n)
    users, times = rng.integers(0, 40, n), rng.integers(0, 100, n)
    a = make_splits(method, (0.7, 0.15, 0.15), 11, label, domain, users, times)
    b = make_splits(method, (0.7, 0.15, 0.15), 11, label, domain, users, times)
    assert_partition(a, n)
    assert split_hash(a) == split_hash(b)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 4),
    train=st.integers(1, 10),
    val=st.integers(0, 10),
    test=st.integers(0, 10),
    seed=st.integers(0, 2**32 - 1),
    method=st.sampled_from(["stratified_domain", "random", "user", "time"]),
)
def test_splits_partition_property(n, d, train, val, test, seed, method):
    total = train + val + test
    ratios = (train / total, val / total, 1.0 - train / total - val / total)
    rng = np.random.default_rng(seed)
    sp = make_splits(
        method,
        ratios,
        seed,
        rng.integers(0, 2, n),
        rng.integers(0, d, n),
        rng.integers(0, 20, n),
        rng.integers(0, 5, n),
    )
    assert_partition(sp, n)


@pytest.mark.parametrize(
    "ratios",
    [(0.5, 0.2, 0.2), (0.8, 0.3, -0.1), (float("nan"), 0.5, 0.5), (0.5, 0.5), (0.6, 0.2, 0.1, 0.1)],
)
def test_bad_ratios_raise(ratios):
    with pytest.raises(ValueError, match=r"split.ratios .* must be three non-negative fractions summing to 1"):
        make_splits("random", ratios, 0, np.zeros(10), np.zeros(10, np.int64))


def test_zero_train_ratio_and_unknown_method_raise():
    with pytest.raises(ValueError, match="the training fraction must be > 0"):
        make_splits("random", (0.0, 0.5, 0.5), 0, np.zeros(10), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="split.method 'rows' is not one of stratified_domain, random, user, time"):
        make_splits("rows", (0.8, 0.1, 0.1), 0, np.zeros(10), np.zeros(10, np.int64))


def test_empty_split_raises(synthetic_cfg):
    frame = make_synthetic(**{**synthetic_cfg.source.options, "n_samples": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"split 'test' is empty \(3 rows"):
        encode_frame(frame, with_split(synthetic_cfg, method="random"))


def test_split_hash_is_order_and_content_sensitive():
    a = {"train": np.array([0, 1]), "val": np.array([2]), "test": np.array([3])}
    b = {"train": np.array([0, 2]), "val": np.array([1]), "test": np.array([3])}
    assert split_hash(a) != split_hash(b)
    assert split_hash(a) == split_hash({k: torch.as_tensor(v) for k, v in a.items()})


# -------------------------------------------------------------------------------------- batch, user


def test_batch_is_an_index_gather(tiny_dataset):
    ds = tiny_dataset
    idx = torch.tensor([5, 0, 2499, 5])
    b = ds.batch(idx)
    assert len(b) == 4
    assert torch.equal(b.sparse, ds.sparse[idx]) and torch.equal(b.dense, ds.dense[idx])
    assert torch.equal(b.label, ds.label[idx]) and torch.equal(b.domain, ds.domain[idx])
    assert torch.equal(b.multi["tags"], ds.multi["tags"][idx]) and torch.equal(b.user, ds.user[idx])


def test_user_field_is_the_raw_identity_not_the_vocab_index(synthetic_cfg):
    """Users unseen in train (or rarer than min_count) share the OOV embedding but stay distinct users."""
    feats = tuple(dataclasses.replace(f, min_count=10**6) if f.name == "user_id" else f for f in synthetic_cfg.features)
    cfg = dataclasses.replace(synthetic_cfg, features=feats)
    frame = make_synthetic(**synthetic_cfg.source.options)
    ds = encode_frame(frame, cfg)
    assert (ds.sparse[:, 0] == OOV_INDEX).all()
    raw = frame["user_id"].to_numpy()
    assert len(ds.user.unique()) == len(np.unique(raw))
    # Same raw user <-> same user index.
    pairs = set(zip(raw.tolist(), ds.user.tolist()))
    assert len(pairs) == len(np.unique(raw))


def test_summary_mentions_rows_domains_and_split(tiny_dataset):
    text = tiny_dataset.summary()
    assert "2,500 rows, 3 domains" in text and tiny_dataset.split_hash in text
    assert sum(tiny_dataset.domain_counts("train").values()) == len(tiny_dataset.splits["train"])


def test_integer_domain_codes_are_listed_numerically_and_encoded_as_before(synthetic_cfg):
    """MovieLens' occupation codes are strings ("0".."20"): their index order (the encoding every cached data
    set and trained model relies on) stays the sorted strings, and listings show them numerically."""
    frame = make_synthetic(**synthetic_cfg.source.options)
    frame["domain"] = (frame["user_id"].astype(str).str.len() + frame.index % 12).astype(str)  # "1".."13"
    ds = encode_frame(frame, synthetic_cfg)
    names = list(ds.schema.domain.values)
    assert names == sorted(names) and names.index("10") < names.index("2")  # the encoding is unchanged
    listed = ds.summary().splitlines()[1].split("per domain ")[1]
    assert list(ast.literal_eval(listed)) == sorted(names, key=int)


# ------------------------------------------------------------------------------------------------ cache


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "datasets").iterdir()) if (root / "datasets").exists() else []


def test_second_build_is_a_cache_hit_with_equal_tensors(synthetic_cfg):
    root = Path(os.environ["POLYREC_CACHE"])
    a = build_dataset(synthetic_cfg)
    assert a.report["cache"] == "miss"
    assert cache_entries(root) == [a.report["cache_key"]]
    b = build_dataset(synthetic_cfg)
    assert b.report["cache"] == "hit" and b.report["cache_key"] == a.report["cache_key"]
    assert_same_data(a, b)
    assert b.split_hash == a.split_hash
    assert b.report["oov"] == a.report["oov"]


def test_build_without_cache_writes_nothing(synthetic_cfg):
    root = Path(os.environ["POLYREC_CACHE"])
    ds = build_dataset(synthetic_cfg, cache=False)
    assert "cache" not in ds.report
    assert cache_entries(root) == []


def test_changed_config_gives_a_different_key(synthetic_cfg):
    base = dataset_key(synthetic_cfg)
    assert dataset_key(synthetic_cfg) == base
    changed = [
        with_split(synthetic_cfg, seed=1),
        with_split(synthetic_cfg, ratios=(0.8, 0.1, 0.1)),
        dataclasses.replace(synthetic_cfg, features=synthetic_cfg.features[:-1]),
        dataclasses.replace(
            synthetic_cfg,
            source=dataclasses.replace(synthetic_cfg.source, options={**synthetic_cfg.source.options, "seed": 1}),
        ),
        dataclasses.replace(synthetic_cfg, domain=DomainRule("domain", as_feature=False)),
    ]
    keys = {dataset_key(c) for c in changed}
    assert base not in keys and len(keys) == len(changed)


def test_domain_group_order_is_part_of_the_key(synthetic_cfg):
    """{a, b} and {b, a} number the domains differently; they must not share a cache entry."""
    ab = dataclasses.replace(synthetic_cfg, domain=DomainRule("domain", {"a": [0], "b": [1, 2]}))
    ba = dataclasses.replace(synthetic_cfg, domain=DomainRule("domain", {"b": [1, 2], "a": [0]}))
    assert dataset_key(ab) != dataset_key(ba)
    ds_ab, ds_ba = build_dataset(ab), build_dataset(ba)
    assert ds_ba.report["cache"] == "miss"
    assert ds_ab.schema.domain.values == ("a", "b") and ds_ba.schema.domain.values == ("b", "a")
    assert torch.equal(ds_ab.domain, 1 - ds_ba.domain)


def test_source_file_content_is_part_of_the_key(tmp_path, synthetic_cfg):
    path = tmp_path / "clicks.csv"
    make_synthetic(**synthetic_cfg.source.options).to_csv(path, index=False)
    cfg = dataclasses.replace(
        synthetic_cfg, source=dataclasses.replace(synthetic_cfg.source, kind="csv", path=str(path))
    )
    k1 = dataset_key(cfg)
    a = build_dataset(cfg)
    frame = pd.read_csv(path)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_csv(path, index=False)
    assert dataset_key(cfg) != k1
    b = build_dataset(cfg)
    assert b.report["cache"] == "miss" and b.label[0] != a.label[0]


def _failing_np_save(monkeypatch, after: int):
    real = np.save
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_mod.np, "save", flaky)
    return calls


def test_failed_save_leaves_no_partial_directory(synthetic_cfg, monkeypatch):
    root = Path(os.environ["POLYREC_CACHE"])
    calls = _failing_np_save(monkeypatch, after=2)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(synthetic_cfg)
    assert calls["n"] == 3  # failed mid-way, after writing two arrays
    assert cache_entries(root) == []  # no entry, no temporary folder
    monkeypatch.undo()
    monkeypatch.setenv("POLYREC_CACHE", str(root))
    assert build_dataset(synthetic_cfg).report["cache"] == "miss"


def test_failed_save_keeps_an_existing_entry_intact(synthetic_cfg, monkeypatch):
    root = Path(os.environ["POLYREC_CACHE"])
    good = build_dataset(synthetic_cfg)
    entry = root / "datasets" / good.report["cache_key"]
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    other = encode_frame(make_synthetic(**{**synthetic_cfg.source.options, "seed": 5}), synthetic_cfg)
    _failing_np_save(monkeypatch, after=3)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(other, entry)
    monkeypatch.undo()
    assert cache_entries(root) == [entry.name]
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    assert_same_data(load_dataset_dir(entry), good)


def test_save_replaces_an_existing_entry(synthetic_cfg, tmp_path):
    a = encode_frame(make_synthetic(**synthetic_cfg.source.options), synthetic_cfg)
    b = encode_frame(make_synthetic(**{**synthetic_cfg.source.options, "seed": 5}), synthetic_cfg)
    target = tmp_path / "entry"
    save_dataset(a, target)
    save_dataset(b, target)
    assert_same_data(load_dataset_dir(target), b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_damaged_cache_entry_is_rebuilt(synthetic_cfg):
    root = Path(os.environ["POLYREC_CACHE"])
    a = build_dataset(synthetic_cfg)
    (root / "datasets" / a.report["cache_key"] / "split.train.npy").unlink()
    with pytest.warns(UserWarning, match="is unreadable"):
        b = build_dataset(synthetic_cfg)
    assert b.report["cache"] == "miss"
    assert_same_data(a, b)
    assert build_dataset(synthetic_cfg).report["cache"] == "hit"
