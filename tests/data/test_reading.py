"""Reading tables through a data config: Parquet and TSV sources, and ids read without float conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_dataset import assert_same_data

from polyrec.config import ConfigError, from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import build_dataset, id_columns, load_rows, load_source
from polyrec.data.schema import OOV_INDEX
from polyrec.data.sources import load_table
from polyrec.data.sources.tabular import _ids_from_text, default_sep

BIG = 2**53  # 9007199254740992: float64 cannot tell it from BIG + 1


def clicks(n: int = 240) -> pd.DataFrame:
    """Hand-made interactions; dense values are exact in binary so every file format reads them alike."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "uid": rng.integers(0, 30, n),
            "iid": rng.integers(100, 140, n),
            "page": rng.choice(["home", "search", "cart"], n),
            "tags": pd.Series(["a|b", "c", "b|c|d", ""])[rng.integers(0, 4, n)].to_numpy(),
            "price": rng.integers(0, 64, n) / 4.0,
            "clicked": rng.integers(0, 2, n),
        }
    )


def config(source: dict, **split) -> DataConfig:
    return from_dict(
        DataConfig,
        {
            "source": source,
            "label": {"column": "clicked"},
            "domain": {"column": "page"},
            "features": [
                {"name": "user_id", "column": "uid"},
                {"name": "item_id", "column": "iid"},
                {"name": "tags", "kind": "multi"},
                {"name": "price", "kind": "dense"},
            ],
            "user_feature": "user_id",
            "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 3, **split},
        },
        path="data",
    )


# ------------------------------------------------------------------------------ parquet and tsv sources


def test_parquet_and_tsv_sources_give_the_same_encoded_data_as_csv(tmp_path):
    frame = clicks()
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    frame.to_csv(tmp_path / "clicks.tsv", sep="\t", index=False)
    frame.to_csv(tmp_path / "clicks.tab", sep="\t", index=False)
    frame.to_csv(tmp_path / "clicks.tsv.gz", sep="\t", index=False)
    frame.to_parquet(tmp_path / "clicks.parquet")
    reference = build_dataset(config({"kind": "csv", "path": str(tmp_path / "clicks.csv")}))
    assert len(reference) == len(frame) and reference.schema.num_domains == 3
    for name, kind in [
        ("clicks.tsv", "csv"),
        ("clicks.tab", "csv"),
        ("clicks.tsv.gz", "csv"),
        ("clicks.parquet", "parquet"),
    ]:
        ds = build_dataset(config({"kind": kind, "path": str(tmp_path / name)}))
        assert ds.report["cache"] == "miss"
        assert_same_data(ds, reference)
        assert ds.split_hash == reference.split_hash, name


def test_an_explicit_sep_wins_over_the_extension(tmp_path):
    frame = clicks()
    frame.to_csv(tmp_path / "clicks.txt", sep=";", index=False)
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    a = build_dataset(config({"kind": "csv", "path": str(tmp_path / "clicks.txt"), "sep": ";"}))
    assert_same_data(a, build_dataset(config({"kind": "csv", "path": str(tmp_path / "clicks.csv")})))


def test_sep_given_for_parquet_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^data\.source\.sep: ',' is not allowed; data\.source\.sep applies to "
        r"csv files only; remove it for parquet",
    ):
        config({"kind": "parquet", "path": str(tmp_path / "clicks.parquet"), "sep": ","})


@pytest.mark.parametrize(
    "name, sep",
    [
        ("a.tsv", "\t"),
        ("a.TSV", "\t"),
        ("a.tab", "\t"),
        ("a.tsv.gz", "\t"),
        ("a.tab.bz2", "\t"),
        ("dir.v2/a.tsv.zst", "\t"),
        ("a.csv", ","),
        ("a.csv.gz", ","),
        ("a.txt", ","),
        ("a", ","),
    ],
)
def test_default_sep_from_the_file_name(name, sep):
    assert default_sep(name) == sep


# ---------------------------------------------------------------------------------- ids stay exact


def big_id_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": pd.array([BIG + 1, BIG, None, BIG + 1, BIG, 7, 7, BIG + 1, BIG, 7] * 6, dtype="Int64"),
            "iid": list(range(60)),
            "page": ["a", "b"] * 30,
            "tags": ["x|y", "y", None, "x", "z", "x", "y", "z", "x|z", "y"] * 6,
            "price": [0.5] * 60,
            "clicked": [0, 1, 1, 0, 1, 0, 1, 0, 0, 1] * 6,
        }
    )


def check_big_ids(ds, frame: pd.DataFrame) -> None:
    vocab = ds.processing.vocabularies["user_id"]
    assert str(BIG) in vocab.tokens and str(BIG + 1) in vocab.tokens and "7" in vocab.tokens
    assert len(vocab.tokens) == 3  # the missing cell is no vocabulary entry
    codes = ds.sparse[:, 0]
    big = torch.tensor((frame["uid"] == BIG).fillna(False).to_numpy())
    big1 = torch.tensor((frame["uid"] == BIG + 1).fillna(False).to_numpy())
    assert codes[big].unique().numel() == 1 and codes[big1].unique().numel() == 1
    assert codes[big][0] != codes[big1][0]
    assert (codes[torch.tensor(frame["uid"].isna().to_numpy())] == OOV_INDEX).all()
    # Two users for GAUC, not one.
    assert ds.user[big][0] != ds.user[big1][0]


def test_ids_above_2_53_with_a_missing_cell_stay_distinct_in_csv(tmp_path):
    frame = big_id_frame()
    frame.to_csv(tmp_path / "big.csv", index=False)
    assert pd.read_csv(tmp_path / "big.csv")["uid"].dtype == np.float64  # what pandas alone would do
    ds = build_dataset(config({"kind": "csv", "path": str(tmp_path / "big.csv")}))
    check_big_ids(ds, frame)


def test_ids_above_2_53_with_a_null_stay_distinct_in_parquet(tmp_path):
    frame = big_id_frame()
    # Written by pyarrow without pandas metadata (as Spark or DuckDB would): an int64 column with nulls.
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "big.parquet")
    assert pd.read_parquet(tmp_path / "big.parquet")["uid"].dtype == np.float64  # what pandas alone would do
    ds = build_dataset(config({"kind": "parquet", "path": str(tmp_path / "big.parquet")}))
    check_big_ids(ds, frame)
    csv = tmp_path / "big.csv"
    frame.to_csv(csv, index=False)
    assert_same_data(ds, build_dataset(config({"kind": "csv", "path": str(csv)})))


def test_id_columns_of_a_config():
    cfg = config({"kind": "csv", "path": "x.csv"})
    assert id_columns(cfg) == ("uid", "iid", "tags", "page")


def test_load_rows_reads_id_columns_exactly_and_the_rest_as_before(tmp_path):
    frame = big_id_frame()
    frame["score"] = [None, 1.5] * 30  # not an id: float64 as pandas reads it
    frame.to_csv(tmp_path / "big.csv", index=False)
    cfg = config({"kind": "csv", "path": str(tmp_path / "big.csv")})
    rows = load_rows(cfg)
    assert rows["uid"].dtype == "Int64" and rows["uid"].iloc[0] == BIG + 1 and rows["uid"].iloc[1] == BIG
    assert rows["iid"].dtype == np.int64
    assert rows["score"].dtype == np.float64 and rows["clicked"].dtype == np.int64
    assert rows["tags"].isna().sum() == 6
    plain = load_source(cfg.source)  # without id columns: what pandas infers
    assert plain["uid"].dtype == np.float64


@pytest.mark.parametrize(
    "cells, expected, dtype",
    [
        (["9007199254740993", "9007199254740992", None], [BIG + 1, BIG, None], "Int64"),
        (["+7", "007", "-3"], [7, 7, -3], "int64"),
        (["12.0", "13.00", None], [12, 13, None], "Int64"),  # integers written by a float column
        (["1.5", "2", None], [1.5, 2.0, None], "float64"),
        (["a", "7", None], ["a", "7", None], "str"),
        (["99999999999999999999", "1"], ["99999999999999999999", "1"], "str"),  # beyond int64: the text
        ([None, None], [None, None], "str"),
    ],
)
def test_ids_from_text(cells, expected, dtype):
    out = _ids_from_text(pd.Series(cells, dtype=str))
    if dtype == "str":
        assert pd.api.types.is_string_dtype(out) or out.dtype == object
    else:
        assert str(out.dtype) == dtype
    got = [None if pd.isna(v) else v for v in out.tolist()]
    assert got == expected


def test_load_table_id_columns_are_optional_and_ignore_unknown_names(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(load_table(tmp_path / "t.csv", id_columns=["a", "nope"]), frame)
    frame.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(load_table(tmp_path / "t.parquet", id_columns=["a", "nope"]), frame)
    with pytest.raises(TypeError, match="id_columns must be a list"):
        load_table(tmp_path / "t.csv", id_columns="a")
