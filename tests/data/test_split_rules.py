"""Split trust rules: exact duplicates across splits, domains without training rows, the OOV table."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from test_dataset import assert_partition, with_split

from polyrec.config import from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import (
    SPLITS,
    _key_payload,
    build_dataset,
    dataset_key,
    duplicate_columns,
    encode_frame,
    make_splits,
    row_groups,
)
from polyrec.data.sources import make_synthetic


def config(split: dict | None = None, groups: dict | None = None) -> DataConfig:
    return from_dict(
        DataConfig,
        {
            "source": {"kind": "csv", "path": "unused.csv"},
            "label": {"column": "label"},
            "domain": {"column": "page", **({"groups": groups} if groups else {})},
            "features": [{"name": "user"}, {"name": "item"}, {"name": "price", "kind": "dense"}],
            "user_feature": "user",
            "split": split or {"method": "random", "ratios": [0.6, 0.2, 0.2], "seed": 5},
        },
        path="data",
    )


def quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


# ------------------------------------------------------------------------------------------ duplicates


def frame_with_copies() -> tuple[pd.DataFrame, int]:
    """200 distinct rows, then 20 of them copied once more and 5 a third time (25 extra copies)."""
    rng = np.random.default_rng(1)
    n = 200
    base = pd.DataFrame(
        {
            "user": rng.integers(0, 20, n),
            "item": np.arange(n),
            "price": rng.integers(0, 8, n) / 2.0,
            "label": rng.integers(0, 2, n),
            "page": rng.choice(["a", "b"], n),
            "unused": np.arange(n),  # not read by the config: copies may differ here
        }
    )
    copies = pd.concat([base.iloc[:20], base.iloc[:5]], ignore_index=True)
    copies["unused"] = -1
    frame = pd.concat([base, copies], ignore_index=True).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return frame, 25


def brute_force_duplicates(frame: pd.DataFrame, cols, splits) -> dict[str, int]:
    rows = [tuple(r) for r in frame[list(cols)].itertuples(index=False)]
    train = {rows[i] for i in splits["train"]}
    counts: dict[tuple, int] = {}
    for r in rows:
        counts[r] = counts.get(r, 0) + 1
    return {
        "val_in_train": sum(rows[i] in train for i in splits["val"]),
        "test_in_train": sum(rows[i] in train for i in splits["test"]),
        "rows_with_copies": sum(counts[r] > 1 for r in rows),
    }


def test_duplicates_across_splits_are_counted_and_warned_about():
    frame, _ = frame_with_copies()
    cfg = config()
    with pytest.warns(
        UserWarning,
        match=r"\d+ validation and \d+ test row\(s\) have an exact duplicate in the "
        r"training split .*data\.split\.dedupe: true",
    ):
        ds = encode_frame(frame, cfg)
    dup = ds.report["duplicates"]
    splits = {s: ds.splits[s].numpy() for s in SPLITS}
    want = brute_force_duplicates(frame, duplicate_columns(cfg), splits)
    assert {k: dup[k] for k in want} == want
    assert dup["rows_with_copies"] == 45  # 15 rows twice, 5 rows three times
    assert dup["val_in_train"] + dup["test_in_train"] > 0
    assert dup["removed"] == 0
    assert dup["columns"] == ["user", "item", "price", "label", "page"]


def test_the_cached_report_keeps_the_counts_and_a_hit_warns_again(tmp_path):
    frame, _ = frame_with_copies()
    frame.to_csv(tmp_path / "f.csv", index=False)
    cfg = dataclasses.replace(config(), source=dataclasses.replace(config().source, path=str(tmp_path / "f.csv")))
    with pytest.warns(UserWarning, match="exact duplicate"):
        a = build_dataset(cfg)
    with pytest.warns(UserWarning, match="exact duplicate"):
        b = build_dataset(cfg)
    assert b.report["cache"] == "hit" and b.report["duplicates"] == a.report["duplicates"]


def test_dedupe_removes_exact_copies_before_splitting():
    frame, extra = frame_with_copies()
    cfg = config({"method": "random", "ratios": [0.6, 0.2, 0.2], "seed": 5, "dedupe": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks, nothing to warn about
        ds = encode_frame(frame, cfg)
    assert len(ds) == len(frame) - extra == 200
    assert ds.report["rows"] == 200
    assert ds.report["duplicates"] | {"columns": None} == {
        "val_in_train": 0,
        "test_in_train": 0,
        "rows_with_copies": 0,
        "removed": extra,
        "columns": None,
    }
    assert_partition(ds.splits, len(ds))
    # The first occurrence is kept: the encoded rows are the frame's first copies, in order.
    first = ~frame[list(duplicate_columns(cfg))].duplicated(keep="first").to_numpy()
    assert np.array_equal(ds.label.numpy(), frame["label"].to_numpy()[first].astype(np.float32))
    plain = quiet(encode_frame, frame, config())
    assert plain.split_hash != ds.split_hash


def test_a_time_split_compares_the_time_column_too():
    frame = pd.DataFrame(
        {
            "user": [1, 1, 2, 2] * 10,
            "item": [5, 5, 6, 6] * 10,
            "price": 0.0,
            "label": [0, 1] * 20,
            "page": "a",
            "ts": np.arange(40),
        }
    )
    timed = config({"method": "time", "ratios": [0.6, 0.2, 0.2], "time_column": "ts", "dedupe": True})
    assert duplicate_columns(timed)[-1] == "ts"
    assert encode_frame(frame, timed).report["duplicates"]["removed"] == 0  # every row has its own time
    untimed = config({"method": "random", "ratios": [0.6, 0.2, 0.2], "dedupe": True})
    assert "ts" not in duplicate_columns(untimed)
    assert quiet(encode_frame, frame, untimed).report["duplicates"]["removed"] == 36


def test_row_groups_are_exact_and_treat_missing_as_a_value():
    frame = pd.DataFrame({"a": [2**53, 2**53 + 1, 2**53, None, None], "b": ["x", "x", "x", None, None]})
    frame["a"] = pd.array([2**53, 2**53 + 1, 2**53, None, None], dtype="Int64")
    assert row_groups(frame, ["a", "b"]).tolist() == [0, 1, 0, 2, 2]
    # Many columns of high cardinality: the combined key is compressed, never overflows.
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({f"c{i}": rng.integers(0, 1 << 20, 500) for i in range(8)})
    wide = pd.concat([wide, wide.iloc[:7]], ignore_index=True)
    groups = row_groups(wide, list(wide.columns))
    assert groups.max() + 1 == 500 and (groups[500:] == groups[:7]).all()


# ----------------------------------------------------------------- identical splits when dedupe is off


def pinned_frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 60
    return pd.DataFrame(
        {
            "user": rng.integers(0, 12, n),
            "item": rng.integers(0, 9, n),
            "label": rng.integers(0, 2, n),
            "page": rng.choice(["a", "b", "c"], n),
        }
    )


def test_split_hashes_are_the_ones_published_before_the_trust_rules(synthetic_cfg):
    """Values computed with the code before dedupe / untrained_domains existed: with both at their
    defaults, every existing preset splits (and so trains and scores) exactly as before."""
    frame = pinned_frame()
    cfg = from_dict(
        DataConfig,
        {
            "source": {"kind": "csv", "path": "x.csv"},
            "label": {"column": "label"},
            "domain": {"column": "page"},
            "features": [{"name": "user"}, {"name": "item"}],
            "user_feature": "user",
            "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 11},
        },
        path="data",
    )
    ds = quiet(encode_frame, frame, cfg)
    assert ds.split_hash == "095bcbf13c77bb77"
    assert [len(ds.splits[s]) for s in SPLITS] == [36, 13, 11]
    synthetic = quiet(encode_frame, make_synthetic(**synthetic_cfg.source.options), synthetic_cfg)
    assert synthetic.split_hash == "649fe21bdb9c3eff"


def test_the_cache_key_changes_only_when_the_new_split_options_are_used(synthetic_cfg):
    files = {"options.json": "0" * 64}
    split = _key_payload(synthetic_cfg, files)["config"]["split"]
    assert sorted(split) == ["method", "ratios", "seed", "time_column"]  # as before the options existed
    base = dataset_key(synthetic_cfg)
    assert dataset_key(with_split(synthetic_cfg, dedupe=False, untrained_domains="error")) == base
    deduped = with_split(synthetic_cfg, dedupe=True)
    dropping = with_split(synthetic_cfg, untrained_domains="drop")
    assert _key_payload(deduped, files)["config"]["split"]["dedupe"] is True
    assert len({base, dataset_key(deduped), dataset_key(dropping)}) == 3


# ------------------------------------------------------------------------- domains without training rows


def late_domain_frame(late: slice = slice(70, None), n: int = 100) -> pd.DataFrame:
    """Pages a/b, and page 'late' on rows ``late`` only (from row 60 on, a time split never trains it)."""
    page = np.where(np.arange(n) % 2 == 0, "a", "b").astype(object)
    page[late] = "late"
    return pd.DataFrame(
        {
            "user": np.arange(n) % 13,
            "item": np.arange(n),
            "price": 1.0,
            "label": (np.arange(n) // 3) % 2,
            "page": page,
            "ts": np.arange(n),
        }
    )


TIME = {"method": "time", "ratios": [0.6, 0.2, 0.2], "time_column": "ts"}


def test_a_domain_without_training_rows_is_an_error_naming_it_and_the_fix():
    with pytest.raises(
        ValueError,
        match=r"domain\(s\) 'late' \(10 validation, 20 test rows\) have no training "
        r"rows under split\.method 'time'.*untrained parameters.*"
        r"data\.split\.untrained_domains: drop",
    ):
        encode_frame(late_domain_frame(), config(TIME))


def test_drop_removes_the_untrained_domains_val_and_test_rows():
    frame = late_domain_frame(slice(70, None, 2))
    ds = encode_frame(frame, config({**TIME, "untrained_domains": "drop"}))
    assert ds.report["dropped_untrained"] == {"late": {"val": 5, "test": 10}}
    assert ds.schema.domain.values == ("a", "b", "late")  # the domain stays in the schema
    assert len(ds) == 85 and ds.report["rows"] == 85
    assert_partition(ds.splits, len(ds))
    assert [len(ds.splits[s]) for s in SPLITS] == [60, 15, 10]
    kept = (frame["page"] != "late").to_numpy()
    assert np.array_equal(ds.label.numpy(), frame["label"].to_numpy()[kept].astype(np.float32))
    for s in SPLITS:
        assert ds.domain_counts(s)["late"] == 0
    # Training rows are untouched: the 60 oldest rows, labels and items as in the frame.
    assert np.array_equal(ds.label[ds.splits["train"]].numpy(), frame["label"].to_numpy()[:60].astype(np.float32))
    assert ds.processing.vocabularies["item"].tokens == sorted(map(str, range(60)))
    # The user field stays a factorised identity 0..U-1 over the kept rows.
    assert sorted(ds.user.unique().tolist()) == list(range(13))


def test_drop_with_domain_groups_and_no_untrained_domain_reports_nothing():
    ds = encode_frame(
        late_domain_frame(slice(0, 0)), config({**TIME, "untrained_domains": "drop"}, groups={"A": ["a"], "B": ["b"]})
    )
    assert ds.report["dropped_untrained"] == {} and len(ds) == 100


def test_drop_that_empties_a_split_says_so():
    with pytest.raises(
        ValueError,
        match=r"split 'val' is empty \(60 rows.*after dropping the untrained "
        r"domain\(s\) \['late'\]",
    ):
        encode_frame(late_domain_frame(slice(60, None)), config({**TIME, "untrained_domains": "drop"}))


def test_make_splits_itself_has_no_untrained_domain_rule():
    """The new-domain path splits a domain no model was trained on; make_splits must allow it."""
    frame = late_domain_frame()
    domain = (frame["page"] == "late").to_numpy().astype(np.int64)
    sp = make_splits("time", (0.6, 0.2, 0.2), 0, frame["label"].to_numpy(), domain, times=frame["ts"].to_numpy())
    assert not domain[sp["train"]].any() and domain[sp["test"]].all()


# ---------------------------------------------------------------------------------------------- OOV


def test_oov_table_lists_features_per_split(tiny_dataset):
    oov = tiny_dataset.report["oov"]
    assert set(oov) == set(SPLITS) and all(isinstance(v, dict) for v in oov.values())  # format unchanged
    table = tiny_dataset.oov_table()
    lines = table.splitlines()
    assert lines[0].split() == ["OOV", "rows", "train", "val", "test"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    features = {k for d in oov.values() for k in d}
    assert set(by_name) == features and features
    for name, line in by_name.items():
        for s in SPLITS:
            n = oov[s].get(name, 0)
            share = f"{n:,} ({100 * n / len(tiny_dataset.splits[s]):.1f}%)"
            assert (share if n else " 0") in line, (name, s, line)
    widths = {len(line) for line in lines}
    assert len(widths) <= 2  # aligned columns


def test_oov_table_is_empty_without_oov(tiny_dataset):
    empty = dataclasses.replace(tiny_dataset, report={"oov": {"train": {}, "val": {}, "test": {}}})
    assert empty.oov_table() == ""
    assert dataclasses.replace(tiny_dataset, report={}).oov_table() == ""
