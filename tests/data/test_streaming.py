"""STAR's sliding-window shuffle buffer and its per-domain variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polyrec.data.streaming import DomainWindowShuffle, SlidingWindowShuffle


def stream(n: int, chunk: int, domains: int = 3, seed: int = 0):
    """Rows 0..n-1 in chunks: an ``id`` (the arrival position), a domain, a 2-wide feature."""
    rng = np.random.default_rng(seed)
    dom = rng.integers(0, domains, n)
    for s in range(0, n, chunk):
        ids = np.arange(s, min(s + chunk, n))
        yield {"id": ids, "domain": dom[ids], "x": np.stack([ids, -ids], 1).astype(np.float32)}


@pytest.mark.parametrize(
    ("n", "chunk", "cap", "b"), [(1000, 64, 200, 32), (1000, 1000, 100, 100), (37, 5, 20, 7), (10, 3, 50, 4)]
)
def test_every_row_once_and_never_before_it_arrived(n, chunk, cap, b):
    batches = list(SlidingWindowShuffle(cap, b, seed=1).batches(stream(n, chunk)))
    domain_of = np.concatenate([c["domain"] for c in stream(n, chunk)])
    ids = np.concatenate([x["id"] for x in batches])
    assert sorted(ids.tolist()) == list(range(n))
    for k, x in enumerate(batches):
        assert x["id"].max() < cap + b * k  # the k-th batch draws from the first cap + k·b arrivals
        np.testing.assert_array_equal(x["x"][:, 0], x["id"])  # the columns of a row stay together
        np.testing.assert_array_equal(x["domain"], domain_of[x["id"]])
    assert all(len(x["id"]) == b for x in batches[:-1]) and 0 < len(batches[-1]["id"]) <= b


def test_batches_mix_the_window_and_follow_the_seed():
    first = [next(SlidingWindowShuffle(1000, 100, seed=s).batches(stream(5000, 128)))["id"] for s in range(20)]
    # drawn uniformly from the first 1,000 rows: mean position ~500, spread across the window
    assert 400 < np.mean([f.mean() for f in first]) < 600
    assert min(f.min() for f in first) < 50 and max(f.max() for f in first) > 950
    again = next(SlidingWindowShuffle(1000, 100, seed=3).batches(stream(5000, 128)))["id"]
    np.testing.assert_array_equal(again, first[3])
    assert not np.array_equal(first[0], first[1])
    # the window slides: a row waits a geometric number of batches (mean capacity / batch = 10), so a late
    # batch holds mostly recent rows (4,000 have arrived by batch 30)
    late = list(SlidingWindowShuffle(1000, 100, seed=0).batches(stream(5000, 128)))[30]["id"]
    assert late.mean() > 2500 and np.mean(late < 1000) < 0.2


def test_drop_last_drops_only_the_short_drain_batch():
    full = list(SlidingWindowShuffle(50, 16, seed=0).batches(stream(100, 10)))
    dropped = list(SlidingWindowShuffle(50, 16, seed=0, drop_last=True).batches(stream(100, 10)))
    assert len(full[-1]["id"]) == 100 % 16 and len(dropped) == len(full) - 1
    assert all(len(x["id"]) == 16 for x in dropped)


def test_bad_sizes_and_chunks_are_named():
    with pytest.raises(ValueError, match=r"capacity \(8\) must be at least batch_size \(16\)"):
        SlidingWindowShuffle(8, 16)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        SlidingWindowShuffle(8, 0)
    bad = [{"id": np.arange(4)}, {"id": np.arange(4), "y": np.arange(4)}]
    with pytest.raises(ValueError, match=r"stream chunk 1 has the columns \['id', 'y'\]"):
        list(SlidingWindowShuffle(4, 2).batches(bad))
    with pytest.raises(ValueError, match=r"chunk 1, column 'id': dtype float64"):
        list(SlidingWindowShuffle(4, 2).batches([{"id": np.arange(4)}, {"id": np.arange(4.0)}]))
    with pytest.raises(ValueError, match="lengths differ"):
        list(SlidingWindowShuffle(4, 2).batches([{"id": np.arange(4), "y": np.arange(3)}]))
    assert list(SlidingWindowShuffle(4, 2).batches([])) == []


def test_domain_windows_emit_single_domain_batches_every_row_once():
    n, cap, b = 3000, 120, 40
    batches = list(DomainWindowShuffle(cap, b, seed=2).batches(stream(n, 256, domains=5)))
    assert sorted(np.concatenate([x["id"] for x in batches]).tolist()) == list(range(n))
    for x in batches:
        assert len(set(x["domain"].tolist())) == 1 and len(x["id"]) <= b
    # causality per domain: the k-th batch of a domain draws from its first cap + k·b rows
    dom = np.concatenate([c["domain"] for c in stream(n, 256, domains=5)])
    rank = {d: np.flatnonzero(dom == d) for d in range(5)}
    seen: dict[int, int] = {}
    for x in batches:
        d = int(x["domain"][0])
        k = seen.get(d, 0)
        position = np.searchsorted(rank[d], x["id"])  # each row's rank among its domain's rows
        assert position.max() < cap + b * k
        seen[d] = k + 1
    again = list(DomainWindowShuffle(cap, b, seed=2).batches(stream(n, 256, domains=5)))
    assert all(np.array_equal(a["id"], c["id"]) for a, c in zip(batches, again, strict=True))
    with pytest.raises(ValueError, match="no column 'dom'"):
        list(DomainWindowShuffle(cap, b, domain="dom").batches(stream(10, 5)))


def test_domain_windows_emit_in_arrival_order_of_the_rows_that_found_them_full():
    # one chunk holding two domains' rows interleaved: the emissions follow the rows, not the domains
    dom = np.array([0, 1] * 6 + [1, 0])
    chunk = {"id": np.arange(len(dom)), "domain": dom}
    batches = list(DomainWindowShuffle(4, 2, seed=0).batches([chunk]))
    firsts = [int(x["domain"][0]) for x in batches[:4]]
    assert firsts[:2] == [0, 1]  # domain 0's window is full at row 8 (its 5th row), domain 1's at row 9


# ------------------------------------------------------------------ Parquet streams, one-pass fitting, encoding
def _data_cfg(**domain):
    from polyrec.config import from_dict
    from polyrec.data.config import DataConfig

    return from_dict(
        DataConfig,
        {
            "source": {"kind": "parquet", "path": "unused.parquet"},
            "label": {"column": "label"},
            "domain": {"column": "domain", "as_feature": True, **domain},
            "features": [
                {"name": "user_id"},
                {"name": "item_id", "min_count": 2},
                {"name": "tags", "kind": "multi"},
                {"name": "dense_0", "kind": "dense", "transform": "standard"},
                {"name": "dense_1", "kind": "dense", "transform": "minmax"},
            ],
            "user_feature": "user_id",
            "split": {"method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0},
        },
        path="data",
    )


@pytest.fixture(scope="module")
def frame():
    from polyrec.data.sources.synthetic import make_synthetic

    df = make_synthetic(n_domains=4, n_samples=[900, 500, 300, 77], n_users=120, n_items=90, seed=5)
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[df.index[::97], "user_id"] = pd.NA  # ids with missing cells stay exact integers
    return df


@pytest.mark.parametrize("merge_every", [None, 1])  # counts merged at the end, or after every chunk
def test_fitting_chunk_by_chunk_is_fitting_the_whole(frame, merge_every, monkeypatch):
    import polyrec.data.streaming as streaming
    from polyrec.data.dataset import derive_domain
    from polyrec.data.processing import fit_processing
    from polyrec.data.streaming import StreamingFitter

    if merge_every is not None:
        monkeypatch.setattr(streaming, "_MERGE_ENTRIES", merge_every)
    cfg = _data_cfg()
    whole = fit_processing(frame, cfg.features, np.arange(len(frame)))
    fitter = StreamingFitter(cfg)
    for s in range(0, len(frame), 250):
        fitter.update(frame.iloc[s : s + 250])
    fitted, names = fitter.finish()
    for name, vocab in whole.vocabularies.items():
        assert fitted.vocabularies[name].tokens == vocab.tokens, name
    assert fitted.max_lens == whole.max_lens
    assert fitted.scalers["dense_1"] == whole.scalers["dense_1"]
    assert fitted.scalers["dense_0"].a == pytest.approx(whole.scalers["dense_0"].a, abs=1e-12)
    assert fitted.scalers["dense_0"].b == pytest.approx(whole.scalers["dense_0"].b, rel=1e-12)
    assert names == derive_domain(frame, cfg.domain)[1]
    with pytest.raises(ValueError, match="no rows were fed"):
        StreamingFitter(cfg).finish()


def test_parquet_streams_in_bounded_frames_and_encodes_as_the_whole_frame(frame, tmp_path):
    from polyrec.data.dataset import encode_rows
    from polyrec.data.processing import fit_processing
    from polyrec.data.schema import FIRST_INDEX
    from polyrec.data.streaming import StreamingFitter, encode_chunks, parquet_chunks

    folder = tmp_path / "days"
    folder.mkdir()
    for day, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[part].to_parquet(folder / f"day={day}.parquet", row_group_size=200)
    chunks = list(parquet_chunks(folder, id_columns=["user_id"], rows=128))
    assert max(len(c) for c in chunks) == 128 and sum(len(c) for c in chunks) == len(frame)
    back = pd.concat(chunks, ignore_index=True)
    assert str(back["user_id"].dtype) == "Int64" or back["user_id"].isna().sum() == 0
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True), check_dtype=False)
    assert sum(len(c) for c in parquet_chunks(str(folder / "day=*.parquet"), rows=10_000)) == len(frame)

    cfg = _data_cfg()
    fitter = StreamingFitter(cfg)
    for c in parquet_chunks(folder, id_columns=["user_id"], rows=300):
        fitter.update(c)
    fitted, names = fitter.finish()
    encoded = list(encode_chunks(parquet_chunks(folder, id_columns=["user_id"], rows=128), cfg, fitted, names))
    whole, _ = encode_rows(frame, cfg, fit_processing(frame, cfg.features, np.arange(len(frame))))
    joined = {k: np.concatenate([e[k] for e in encoded]) for k in encoded[0]}
    np.testing.assert_array_equal(joined["sparse"][:, :-1], whole["sparse"])
    np.testing.assert_array_equal(joined["sparse"][:, -1], joined["domain"] + FIRST_INDEX)
    np.testing.assert_allclose(joined["dense"], whole["dense"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(joined["multi.tags"], whole["multi.tags"])
    np.testing.assert_array_equal(joined["label"], frame["label"].to_numpy(np.float32))
    np.testing.assert_array_equal(joined["user"], joined["sparse"][:, 0])

    # the encoded chunks feed the window buffer: every row once
    batches = list(SlidingWindowShuffle(500, 64, seed=0).batches(encoded))
    assert sum(len(b["label"]) for b in batches) == len(frame)


def test_stream_errors_name_the_file_the_column_and_the_domain(frame, tmp_path):
    from polyrec.data.streaming import StreamingFitter, encode_chunks, parquet_chunks

    path = tmp_path / "a.parquet"
    frame.to_parquet(path)
    with pytest.raises(KeyError, match=r"a.parquet' has no column\(s\) \['nope'\]"):
        next(parquet_chunks(path, columns=["label", "nope"]))
    with pytest.raises(FileNotFoundError, match="no such file, folder or glob match"):
        next(parquet_chunks(tmp_path / "missing-*.parquet"))
    cfg = _data_cfg()
    fitter = StreamingFitter(cfg)
    fitter.update(frame[frame["domain"] < 3])
    fitted, names = fitter.finish()
    with pytest.raises(ValueError, match=r"domain\(s\) \['3'\] that the fitted processing does not know"):
        list(encode_chunks([frame], cfg, fitted, names))
