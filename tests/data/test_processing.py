"""Processing: vocabularies, OOV, dense scaling, multi-valued padding, label and domain rules.

Everything is fitted on the training rows only. The frames here are hand-written so every expected
index can be checked by eye; the ``time`` split with timestamps 0..N-1 puts the first 60% of rows in
train, the next 20% in val and the last 20% in test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from polyrec.config import from_dict
from polyrec.data.config import DataConfig, FeatureConfig, LabelRule
from polyrec.data.dataset import derive_domain, derive_label, encode_frame, encode_rows
from polyrec.data.processing import DenseScaler, FittedProcessing, Vocabulary, encode_multi, fit_processing
from polyrec.data.schema import OOV_INDEX, PAD_INDEX


def cfg_for(features, *, label=None, domain=None, split=None, user_feature=None) -> DataConfig:
    return from_dict(
        DataConfig,
        {
            "source": {"kind": "csv", "path": "unused.csv"},
            "label": label or {"column": "label", "op": "identity"},
            "domain": domain or {"column": "domain"},
            "features": features,
            "user_feature": user_feature,
            "split": split or {"method": "time", "ratios": [0.6, 0.2, 0.2], "time_column": "ts"},
        },
    )


def frame_of(n: int, **columns) -> pd.DataFrame:
    base = {"ts": np.arange(n), "label": np.arange(n) % 2, "domain": np.where(np.arange(n) % 3 == 0, "a", "b")}
    base.update(columns)
    return pd.DataFrame(base)


# ----------------------------------------------------------------------------------------- vocabulary


def test_vocab_order_is_count_desc_then_string():
    v = Vocabulary.fit("x", pd.Series(["c", "b", "a", "b", "a", "d", "b"]))
    assert v.tokens == ["b", "a", "c", "d"]
    codes, oov = v.encode(pd.Series(["b", "a", "c", "d"]))
    assert codes.tolist() == [2, 3, 4, 5] and oov == 0
    assert v.size == 6  # padding + OOV + 4 ids
    # Ties broken by the string value ("10" < "9"), not the number.
    assert Vocabulary.fit("x", pd.Series([9, 10, 10, 9, 2])).tokens == ["10", "9", "2"]


def test_vocab_is_independent_of_row_order():
    values = pd.Series(np.random.default_rng(0).integers(0, 50, 2000))
    a = Vocabulary.fit("x", values)
    b = Vocabulary.fit("x", values.sample(frac=1.0, random_state=1).reset_index(drop=True))
    assert a.tokens == b.tokens


def test_min_count_sends_rare_ids_to_oov():
    v = Vocabulary.fit("x", pd.Series(["a", "a", "a", "b", "b", "c"]), min_count=2)
    assert v.tokens == ["a", "b"]
    codes, oov = v.encode(pd.Series(["a", "b", "c", "never-seen"]))
    assert codes.tolist() == [2, 3, OOV_INDEX, OOV_INDEX]
    assert oov == 2
    with pytest.raises(ValueError, match=r"feature 'x': min_count must be >= 1, got 0"):
        Vocabulary.fit("x", pd.Series(["a"]), min_count=0)


def test_ids_compare_as_strings_across_dtypes():
    # An integral float and an int name the same id, whatever else is in the column.
    v = Vocabulary.fit("x", pd.Series([1.0, 2.0, 2.0]))
    assert v.tokens == ["2", "1"]
    codes, _ = v.encode(pd.Series([2, 1.5, 1.0]))
    assert codes.tolist() == [2, OOV_INDEX, 3]
    assert v.encode(pd.Series(["1", "2"]))[0].tolist() == [3, 2]
    assert v.encode(pd.Series([1, 2], dtype=np.int32))[0].tolist() == [3, 2]
    # Train subset all-integral, full column not: the integral values still match.
    codes, _ = v.encode(pd.Series([1.0, 2.0, 2.5]))
    assert codes.tolist() == [3, 2, OOV_INDEX]


def test_missing_ids_map_to_oov_and_are_not_in_the_vocabulary():
    v = Vocabulary.fit("x", pd.Series(["a", None, "a", None, None]))
    assert v.tokens == ["a"]
    codes, oov = v.encode(pd.Series(["a", None]))
    assert codes.tolist() == [2, OOV_INDEX] and oov == 1


def test_sparse_feature_fitted_on_train_rows_only_and_oov_reported_per_split():
    n = 10  # rows 0-5 train, 6-7 val, 8-9 test
    items = ["a", "a", "b", "b", "c", "a", "b", "val-only", "test-only", "test-only"]
    ds = encode_frame(frame_of(n, item=items), cfg_for([{"name": "item"}]))
    assert ds.splits["train"].tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.processing.vocabularies["item"].tokens == ["a", "b", "c"]
    assert ds.sparse[:, 0].tolist() == [2, 2, 3, 3, 4, 2, 3, OOV_INDEX, OOV_INDEX, OOV_INDEX]
    assert ds.report["oov"] == {"train": {}, "val": {"item": 1}, "test": {"item": 2}}
    assert ds.schema.feature("item").vocab_size == 5
    assert "OOV rows" in ds.summary()


def test_min_count_counts_training_rows_only():
    # "b" appears 3 times overall but once in train: with min_count 2 it is OOV everywhere.
    items = ["a", "a", "b", "a", "c", "c", "b", "b", "a", "a"]
    ds = encode_frame(frame_of(10, item=items), cfg_for([{"name": "item", "min_count": 2}]))
    assert ds.processing.vocabularies["item"].tokens == ["a", "c"]
    assert (ds.sparse[[2, 6, 7], 0] == OOV_INDEX).all()
    assert ds.report["oov"] == {"train": {"item": 1}, "val": {"item": 2}, "test": {}}


# ----------------------------------------------------------------------------------------------- dense


def test_dense_minmax_uses_train_min_max_only():
    values = [0.0, 5.0, 10.0, 2.0, 4.0, 6.0, -10.0, 20.0, 30.0, 7.5]  # train rows 0-5: min 0, max 10
    ds = encode_frame(frame_of(10, price=values), cfg_for([{"name": "price", "kind": "dense"}]))
    s = ds.processing.scalers["price"]
    assert (s.a, s.b) == (0.0, 10.0)
    np.testing.assert_allclose(ds.dense[:, 0].numpy(), np.array(values) / 10.0, rtol=1e-6)
    assert ds.dense.dtype.is_floating_point and ds.dense.shape == (10, 1)


@pytest.mark.parametrize(
    "transform, train, expected",
    [
        ("standard", [1.0, 3.0], [-1.0, 1.0]),
        ("none", [1.0, 3.0], [1.0, 3.0]),
        ("log1p_minmax", [0.0, np.e - 1.0], [0.0, 1.0]),
        ("minmax", [4.0, 4.0], [0.0, 0.0]),  # constant column: scale 1, no division by zero
    ],
)
def test_dense_transforms(transform, train, expected):
    s = DenseScaler.fit("x", np.array(train), transform)
    np.testing.assert_allclose(s.transform_values(np.array(train)), expected, atol=1e-6)


@pytest.mark.parametrize("bad, count", [([1.0, np.nan, 2.0, np.nan], 2), ([np.inf, 1.0, 2.0, 3.0], 1)])
def test_nan_or_inf_dense_raises_naming_feature_and_count(bad, count):
    n = 10
    values = np.linspace(0, 1, n)
    values[-len(bad) :] = bad  # in the test rows: caught at encoding, not only at fitting
    with pytest.raises(ValueError, match=rf"dense feature 'price' has {count} NaN/inf value\(s\)"):
        encode_frame(frame_of(n, price=values), cfg_for([{"name": "price", "kind": "dense"}]))
    with pytest.raises(ValueError, match=rf"dense feature 'p' has {count} NaN/inf"):
        DenseScaler.fit("p", np.array(bad), "minmax")


def test_log1p_rejects_negative_values_at_fit_and_transform():
    with pytest.raises(ValueError, match=r"dense feature 'x': log1p_minmax needs values >= 0"):
        DenseScaler.fit("x", np.array([-1.0, 2.0]), "log1p_minmax")
    s = DenseScaler.fit("x", np.array([0.0, 2.0]), "log1p_minmax")
    with pytest.raises(ValueError, match=r"dense feature 'x': log1p_minmax needs values >= 0, but 1 value"):
        s.transform_values(np.array([-3.0, 1.0]))


def test_unknown_transform_raises():
    with pytest.raises(ValueError, match="dense feature 'x': unknown transform 'zscore'"):
        DenseScaler.fit("x", np.array([1.0]), "zscore")


# ------------------------------------------------------------------------------------ multi-valued


def test_multi_padding_and_truncation():
    v = Vocabulary.fit("tags", pd.Series(["a", "b", "c", "d"]))  # all count 1: order a, b, c, d
    values = pd.Series(["a|b|c|d", "b", "", None, "d|zz"])
    out, oov, cut = encode_multi(v, values, "|", max_len=2, return_truncated=True)
    assert out.tolist() == [[2, 3], [3, PAD_INDEX], [PAD_INDEX, PAD_INDEX], [PAD_INDEX, PAD_INDEX], [5, OOV_INDEX]]
    assert oov == 1
    assert cut.tolist() == [True, False, False, False, False]
    out2, _oov2 = encode_multi(v, values, "|", max_len=4)
    assert out2[0].tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        encode_multi(v, values, "|", max_len=0)


def test_multi_max_len_from_train_and_truncation_reported():
    tags = ["a", "a|b", "b", "a|b", "c", "a", "a|b|c", "b", "a|b|c|a", "c|c|c"]  # longest in train: 2
    ds = encode_frame(frame_of(10, tags=tags), cfg_for([{"name": "tags", "kind": "multi"}]))
    assert ds.schema.feature("tags").max_len == 2
    assert ds.multi["tags"].shape == (10, 2)
    assert ds.multi["tags"][0].tolist() == [2, PAD_INDEX]  # "a" is the most frequent id in train
    assert ds.report["truncated"] == {"train": {}, "val": {"tags": 1}, "test": {"tags": 2}}
    fixed = encode_frame(frame_of(10, tags=tags), cfg_for([{"name": "tags", "kind": "multi", "max_len": 4}]))
    assert fixed.multi["tags"].shape == (10, 4)
    assert fixed.report["truncated"] == {"train": {}, "val": {}, "test": {}}
    assert fixed.multi["tags"][8].tolist() == [2, 3, 4, 2]


# --------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "op, threshold, expected",
    [
        ("eq", 5, [0, 0, 0, 0, 1]),
        ("gt", 3, [0, 0, 0, 1, 1]),
        ("ge", 3, [0, 0, 1, 1, 1]),
        ("lt", 2, [1, 0, 0, 0, 0]),
        ("le", 2, [1, 1, 0, 0, 0]),
    ],
)
def test_label_ops(op, threshold, expected):
    frame = pd.DataFrame({"rating": np.array([1, 2, 3, 4, 5], dtype=np.float32)})
    y = derive_label(frame, LabelRule("rating", op, threshold))
    assert y.dtype == np.float32 and y.tolist() == expected


def test_identity_label_accepts_0_1_and_bools():
    assert derive_label(pd.DataFrame({"y": [0, 1, 1]}), LabelRule("y")).tolist() == [0, 1, 1]
    assert derive_label(pd.DataFrame({"y": [True, False]}), LabelRule("y")).tolist() == [1, 0]


def test_identity_label_outside_0_1_raises_naming_values_and_fix():
    frame = pd.DataFrame({"rating": [0, 1, 5, 2, 5, 1]})
    with pytest.raises(
        ValueError, match=r"'rating' has 3 value\(s\) outside \{0, 1\} \(values seen: \[2\.0, 5\.0\]\).*op: gt"
    ):
        derive_label(frame, LabelRule("rating", "identity"))


def test_label_errors():
    with pytest.raises(KeyError, match=r"data.label.column 'y' is not a column; columns: \['x'\]"):
        derive_label(pd.DataFrame({"x": [1]}), LabelRule("y"))
    with pytest.raises(ValueError, match=r"label column 'y' has 1 missing value"):
        derive_label(pd.DataFrame({"y": [1.0, np.nan]}), LabelRule("y", "gt", 0))
    with pytest.raises(ValueError, match="label column 'y' has dtype .* not numeric"):
        derive_label(pd.DataFrame({"y": ["yes", "no"]}), LabelRule("y", "eq", 1))
    with pytest.raises(ValueError, match="data.label.op 'ne' is not one of identity, eq, gt"):
        derive_label(pd.DataFrame({"y": [1]}), LabelRule("y", "ne", 1))  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- domains


def test_domain_groups_map_values_in_group_order():
    frame = pd.DataFrame({"age": [1, 18, 25, 35, 56, 25]})
    codes, names = derive_domain(
        frame,
        cfg_for(
            [{"name": "x"}],
            domain={"column": "age", "groups": {"young": [1, 18], "mid": [25], "old": [35, 45, 50, 56]}},
        ).domain,
    )
    assert names == ("young", "mid", "old")
    assert codes.tolist() == [0, 0, 1, 2, 2, 1]
    # Float column, int group values: the same ids.
    codes_f, _ = derive_domain(
        frame.astype(float),
        cfg_for(
            [{"name": "x"}],
            domain={"column": "age", "groups": {"young": [1, 18], "mid": [25], "old": [35, 45, 50, 56]}},
        ).domain,
    )
    assert codes_f.tolist() == codes.tolist()


def test_domain_without_groups_sorts_numbers_numerically():
    codes, names = derive_domain(
        pd.DataFrame({"d": [10, 2, 2, 1]}), cfg_for([{"name": "x"}], domain={"column": "d"}).domain
    )
    assert names == ("1", "2", "10")
    assert codes.tolist() == [2, 1, 1, 0]
    codes, names = derive_domain(
        pd.DataFrame({"d": ["b", "a", "b"]}), cfg_for([{"name": "x"}], domain={"column": "d"}).domain
    )
    assert names == ("a", "b") and codes.tolist() == [1, 0, 1]


def test_unknown_domain_value_raises_naming_it():
    rule = cfg_for([{"name": "x"}], domain={"column": "g", "groups": {"F": ["F"], "M": ["M"]}}).domain
    with pytest.raises(ValueError, match=r"domain column 'g' has 2 row\(s\) with values in no group: \['X'\]"):
        derive_domain(pd.DataFrame({"g": ["F", "M", "X", "X"]}), rule)


def test_domain_rule_errors():
    def rule(**d):
        return cfg_for([{"name": "x"}], domain=d).domain

    with pytest.raises(ValueError, match=r"domain\(s\) \['M'\] of data.domain.groups have no rows"):
        derive_domain(pd.DataFrame({"g": ["F", "F"]}), rule(column="g", groups={"F": ["F"], "M": ["M"]}))
    with pytest.raises(ValueError, match=r"raw value '1' is in two domains \('a' and 'b'\)"):
        derive_domain(pd.DataFrame({"g": [1]}), rule(column="g", groups={"a": [1], "b": [1.0]}))
    with pytest.raises(ValueError, match=r"domain column 'g' has 1 missing value"):
        derive_domain(pd.DataFrame({"g": ["F", None]}), rule(column="g"))
    with pytest.raises(KeyError, match=r"data.domain.column 'nope' is not a column"):
        derive_domain(pd.DataFrame({"g": ["F"]}), rule(column="nope"))


# ------------------------------------------------------------------------------- fitted state, guards


def test_fitted_processing_json_round_trip_reencodes_identically():
    rng = np.random.default_rng(0)
    n = 200
    frame = frame_of(
        n,
        user=rng.integers(0, 30, n),
        tags=pd.Series(["a|b", "c", "b|c|d", ""])[rng.integers(0, 4, n)].to_numpy(),
        price=rng.normal(size=n),
    )
    cfg = cfg_for(
        [
            {"name": "user", "min_count": 2},
            {"name": "tags", "kind": "multi"},
            {"name": "price", "kind": "dense", "transform": "standard"},
        ]
    )
    fitted = fit_processing(frame, cfg.features, np.arange(120))
    again = FittedProcessing.from_dict(json.loads(json.dumps(fitted.to_dict())))
    a, oov_a = encode_rows(frame, cfg, fitted)
    b, oov_b = encode_rows(frame, cfg, again)
    assert a.keys() == b.keys() and oov_a.keys() == oov_b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for k in oov_a:
        np.testing.assert_array_equal(oov_a[k], oov_b[k])


def test_missing_feature_column_raises_naming_it():
    with pytest.raises(KeyError, match=r"feature 'item': column 'item_id' is not in the data"):
        encode_frame(frame_of(10), cfg_for([{"name": "item", "column": "item_id"}]))


@pytest.mark.parametrize(
    "features, user_feature, match",
    [
        ([], None, "data.features is empty"),
        ([{"name": "a"}, {"name": "a"}], None, r"duplicate names \['a'\]"),
        (
            [{"name": "a", "kind": "dense"}],
            "a",
            "user_feature: 'a' is not allowed; data.user_feature must name a sparse",
        ),
    ],
)
def test_bad_feature_config_raises(features, user_feature, match):
    with pytest.raises(ValueError, match=match):
        encode_frame(frame_of(10, a=np.arange(10.0)), cfg_for(features, user_feature=user_feature))


def test_encoding_has_no_per_row_python(monkeypatch):
    """Guard: the encoder must not fall back to per-row Python (Series.apply, np.vectorize, iterrows)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("per-row Python in the encoder")

    rng = np.random.default_rng(0)
    n = 500
    frame = frame_of(
        n,
        user=rng.integers(0, 30, n).astype(float),  # float ids take the integral-float path
        tags=pd.Series(["a|b", "c", "b|c|d", ""])[rng.integers(0, 4, n)].to_numpy(),
        price=rng.normal(size=n),
    )
    for target in ("apply", "iterrows", "itertuples", "agg", "transform"):
        monkeypatch.setattr(pd.Series, target, forbidden, raising=False)
        monkeypatch.setattr(pd.DataFrame, target, forbidden, raising=False)
    monkeypatch.setattr(np, "vectorize", forbidden)
    cfg = cfg_for(
        [{"name": "user"}, {"name": "tags", "kind": "multi"}, {"name": "price", "kind": "dense"}],
        domain={"column": "domain", "groups": {"A": ["a"], "B": ["b"]}},
        split={"method": "user", "ratios": [0.6, 0.2, 0.2]},
        user_feature="user",
    )
    ds = encode_frame(frame, cfg)
    assert len(ds) == n


def test_feature_config_source_column():
    assert FeatureConfig("a").source_column == "a"
    assert FeatureConfig("a", column="b").source_column == "b"


def test_split_multi_is_the_per_row_split_of_every_cell():
    """The Arrow split gives what splitting each cell in Python gives: ids in order, empty ids dropped,
    missing cells empty, each id indexed by its row's position (any index of the input)."""
    import random

    from polyrec.data.processing import split_multi

    rng = random.Random(0)
    alphabet = ["a", "b", "é", "7", "|", "||", " ", ""]
    cells = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(400)]
    cells[::37] = [None] * len(cells[::37])
    series = pd.Series(cells, index=np.arange(400) * 3 + 5)  # not the row positions
    got = split_multi(series, "|")
    expected = [(row, tok) for row, cell in enumerate(cells) for tok in (cell or "").split("|") if tok]
    assert list(zip(got.index.tolist(), got.tolist(), strict=True)) == expected
    ints = split_multi(pd.Series([3, None, 12], dtype="Int64"), "|")
    assert list(zip(ints.index.tolist(), ints.tolist(), strict=True)) == [(0, "3"), (2, "12")]
    assert split_multi(pd.Series([], dtype=object), "|").empty
