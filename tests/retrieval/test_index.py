"""Item indexes: exact search equals brute force, HNSW recall, exclusions and padding, checksummed
atomic save/load, and errors that name the value."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")

import polyrec.retrieval.index as index_module  # noqa: E402
from polyrec.retrieval.index import DomainIndexes, ItemIndex, ItemIndexError, ann_recall  # noqa: E402


def _data(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _brute_force(emb: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ emb.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, top, axis=1), ids[top]


@pytest.fixture(scope="module")
def corpus():
    emb = _data(1000, 16, seed=0)
    ids = np.random.default_rng(1).permutation(5000)[:1000]  # arbitrary item numbers, not 0..C-1
    return emb, ids, _data(50, 16, seed=2)


def test_exact_search_equals_brute_force(corpus):
    emb, ids, queries = corpus
    index = ItemIndex(torch.from_numpy(emb), torch.from_numpy(ids), kind="exact")
    assert (len(index), index.dim, index.kind, index.options) == (1000, 16, "exact", {})
    scores, found = index.search(torch.from_numpy(queries), k=20)
    want_scores, want_ids = _brute_force(emb, ids, queries, 20)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, 20)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_hnsw_recall_against_exact():
    emb, queries = _data(5000, 32, seed=3), _data(200, 32, seed=4)
    ids = np.arange(5000)
    exact = ItemIndex(emb, ids, kind="exact")
    hnsw = ItemIndex(emb, ids, kind="hnsw")
    assert hnsw.options == {"m": 32, "ef_construction": 200, "ef_search": 128}
    recall = ann_recall(exact, hnsw, queries, k=10)
    assert recall >= 0.9, f"HNSW recall@10 against exact search is {recall:.3f}"
    assert ann_recall(exact, exact, queries, k=10) == 1.0
    # A narrow search finds less; the recall measure must see it (and never exceed 1).
    narrow = ItemIndex(emb, ids, kind="hnsw", m=4, ef_construction=8, ef_search=1)
    assert ann_recall(exact, narrow, queries, k=10) < recall


def test_exclusions_are_honoured(corpus):
    emb, ids, queries = corpus
    index = ItemIndex(emb, ids)
    _, top = index.search(queries[:3], k=5)
    exclude = [set(top[0, :3].tolist()), set(), {int(top[2, 0]), -7, 10**9}]  # ids outside the corpus are ignored
    scores, found = index.search(queries[:3], k=5, exclude=exclude)
    for q in range(3):
        keep = ~np.isin(ids, list(exclude[q]))
        want_scores, want_ids = _brute_force(emb[keep], ids[keep], queries[q : q + 1], 5)
        np.testing.assert_array_equal(found[q], want_ids[0])
        np.testing.assert_allclose(scores[q], want_scores[0], rtol=1e-5, atol=1e-5)
        assert not set(found[q].tolist()) & exclude[q]


def test_padding_when_fewer_than_k_remain():
    emb, ids = _data(5, 4, seed=5), np.array([10, 11, 12, 13, 14])
    index = ItemIndex(emb, ids)
    scores, found = index.search(emb[:2], k=8, exclude=[{10, 11}, set()])
    assert found.shape == scores.shape == (2, 8)
    assert sorted(found[0, :3].tolist()) == [12, 13, 14] and found[0, 3:].tolist() == [-1] * 5
    assert np.all(np.isneginf(scores[0, 3:])) and np.all(np.isfinite(scores[0, :3]))
    assert sorted(found[1, :5].tolist()) == ids.tolist() and found[1, 5:].tolist() == [-1] * 3
    everything = index.search(emb[:1], k=2, exclude=[set(ids.tolist())])
    assert everything[1].tolist() == [[-1, -1]] and np.all(np.isneginf(everything[0]))
    empty_scores, empty_ids = index.search(np.zeros((0, 4), np.float32), k=3)
    assert empty_scores.shape == empty_ids.shape == (0, 3)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_save_load_round_trip(tmp_path, corpus, kind):
    emb, ids, queries = corpus
    index = ItemIndex(emb, ids, kind=kind, **({"ef_search": 64} if kind == "hnsw" else {}))
    index.save(tmp_path / "idx")
    loaded = ItemIndex.load(tmp_path / "idx")
    assert (loaded.kind, loaded.options, loaded.dim, len(loaded)) == (kind, index.options, 16, 1000)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    exclude = [{int(i)} for i in ids[:50]]
    for got, want in zip(loaded.search(queries, 10, exclude), index.search(queries, 10, exclude)):
        np.testing.assert_array_equal(got, want)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["dim"] == 16 and manifest["count"] == 1000
    # Saving again replaces the index and leaves one set of data files.
    index.save(tmp_path / "idx")
    assert len(list((tmp_path / "idx").iterdir())) == 3


def test_corrupted_index_file_is_refused(tmp_path, corpus):
    emb, ids, _ = corpus
    folder = ItemIndex(emb, ids).save(tmp_path / "idx")
    (index_file,) = folder.glob("index-*.faiss")
    raw = bytearray(index_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    index_file.write_bytes(bytes(raw))
    with pytest.raises(ItemIndexError, match="does not match its manifest"):
        ItemIndex.load(folder)
    index_file.unlink()
    with pytest.raises(ItemIndexError, match="is missing"):
        ItemIndex.load(folder)


def test_load_refuses_unknown_kind_and_missing_files(tmp_path, corpus):
    emb, ids, _ = corpus
    folder = ItemIndex(emb, ids).save(tmp_path / "idx")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "kind": "ivf"}))
    with pytest.raises(ItemIndexError, match="unknown index kind 'ivf'"):
        ItemIndex.load(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "kind": "hnsw", "options": {}}))
    with pytest.raises(ItemIndexError, match="IndexFlatIP"):  # the file holds an exact index, not an HNSW one
        ItemIndex.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ItemIndexError, match="manifest.*does not exist"):
        ItemIndex.load(folder)
    with pytest.raises(ItemIndexError, match="does not exist"):
        ItemIndex.load(tmp_path / "nowhere")


def _boom(*args, **kwargs):
    raise OSError("disk full")


@pytest.mark.parametrize("where", ["write_index", "manifest"])
def test_failed_save_leaves_previous_index(tmp_path, monkeypatch, corpus, where):
    emb, ids, queries = corpus
    old = ItemIndex(emb, ids)
    folder = old.save(tmp_path / "idx")
    before = sorted(p.name for p in folder.iterdir())
    new = ItemIndex(emb[:500] * 2, ids[:500], kind="hnsw")
    if where == "write_index":
        monkeypatch.setattr(faiss, "write_index", _boom)
    else:  # the data files are written, the manifest is not
        monkeypatch.setattr(index_module, "write_json", _boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == before  # no leftovers either
    loaded = ItemIndex.load(folder)
    assert (loaded.kind, len(loaded)) == ("exact", 1000)
    for got, want in zip(loaded.search(queries, 10), old.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_build_errors_name_the_value():
    emb = _data(4, 3, seed=6)
    with pytest.raises(ValueError, match="item id 7 appears 2 times"):
        ItemIndex(emb, np.array([1, 7, 2, 7]))
    with pytest.raises(ValueError, match=r"non-negative.*-1"):
        ItemIndex(emb, np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"shape \[4\].*\[3\]"):
        ItemIndex(emb, np.arange(3))
    with pytest.raises(TypeError, match="integers"):
        ItemIndex(emb, np.arange(4.0))
    bad = emb.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="item id 12 \\(row 2\\)"):
        ItemIndex(bad, np.arange(10, 14))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        ItemIndex(bad, np.arange(4))
    with pytest.raises(ValueError, match=r"2-D.*\[12\]"):
        ItemIndex(emb.reshape(-1), np.arange(12))
    with pytest.raises(TypeError, match="floating-point"):
        ItemIndex(np.ones((4, 3), dtype=np.int64), np.arange(4))
    with pytest.raises(ValueError, match="unknown index kind 'ivf'; valid kinds: exact, hnsw"):
        ItemIndex(emb, np.arange(4), kind="ivf")
    with pytest.raises(ValueError, match="ef_search must be >= 1, got 0"):
        ItemIndex(emb, np.arange(4), kind="hnsw", ef_search=0)
    with pytest.raises(ValueError, match=r"m must be a positive int, got 2\.5"):
        ItemIndex(emb, np.arange(4), kind="hnsw", m=2.5)
    with pytest.raises(ValueError, match=r"exact index takes no options, got \['m'\]"):
        ItemIndex(emb, np.arange(4), kind="exact", m=16)


def test_search_errors_name_the_value():
    emb = _data(4, 3, seed=7)
    index = ItemIndex(emb, np.arange(4))
    with pytest.raises(ValueError, match="dimension 5 but the index holds embeddings of dimension 3"):
        index.search(_data(2, 5, seed=8), k=2)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(emb, k=0)
    with pytest.raises(ValueError, match="k must be a positive int, got True"):
        index.search(emb, k=True)
    with pytest.raises(ValueError, match=r"one set per query \(4\), got 1"):
        index.search(emb, k=2, exclude=[set()])
    bad = emb.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="query row 1"):
        index.search(bad, k=2)
    with pytest.raises(ValueError, match="at most the corpus size 4"):
        ann_recall(index, index, emb, k=5)
    with pytest.raises(ValueError, match="different items"):
        ann_recall(index, ItemIndex(emb, np.arange(1, 5)), emb, k=2)


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'polyrec\[faiss\]'"):
        ItemIndex(_data(4, 3, seed=9), np.arange(4))


def test_domain_indexes_round_trip(tmp_path, monkeypatch):
    data = {
        "a/b c": (_data(300, 8, seed=10), np.arange(300)),
        "../etc": (torch.from_numpy(_data(200, 8, seed=11)), torch.arange(1000, 1200)),
    }
    indexes = DomainIndexes.build(data, kind="hnsw", ef_search=64)
    assert list(indexes) == ["a/b c", "../etc"] and indexes["a/b c"].options["ef_search"] == 64
    root = indexes.save(tmp_path / "indexes")
    loaded = DomainIndexes.load(root)
    assert list(loaded) == ["a/b c", "../etc"]
    queries = _data(20, 8, seed=12)
    for name in data:
        exclude = [{1000, 1} for _ in range(20)]
        for got, want in zip(loaded.search(name, queries, 7, exclude), indexes.search(name, queries, 7, exclude)):
            np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "etc").exists() and sorted(p.name for p in root.iterdir())[-1] == "domains.json"

    with pytest.raises(KeyError, match=r"unknown domain 'a/b'.*Valid domains: a/b c, \.\./etc"):
        loaded.search("a/b", queries, 3)
    assert "a/b" not in loaded and loaded.get("a/b c") is not None

    # A second save replaces the first; a failing third one leaves the second whole.
    smaller = DomainIndexes.build({"x": (_data(10, 8, seed=13), np.arange(10))})
    smaller.save(root)
    assert len([p for p in root.iterdir() if p.is_dir()]) == 1
    monkeypatch.setattr(faiss, "write_index", _boom)
    with pytest.raises(OSError, match="disk full"):
        indexes.save(root)
    monkeypatch.undo()
    assert list(DomainIndexes.load(root)) == ["x"] and len([p for p in root.iterdir() if p.is_dir()]) == 1


def test_domain_indexes_errors(tmp_path):
    with pytest.raises(ValueError, match="domain 'b': ids must be unique, but item id 3"):
        DomainIndexes.build({"a": (_data(2, 3, seed=14), np.arange(2)), "b": (_data(2, 3, seed=15), np.array([3, 3]))})
    with pytest.raises(ValueError, match="unknown index option 'ef'"):
        DomainIndexes.build({"a": (_data(2, 3, seed=14), np.arange(2))}, kind="hnsw", ef=3)
    with pytest.raises(ValueError, match="non-empty"):
        DomainIndexes({})
    root = DomainIndexes.build({"a": (_data(5, 3, seed=16), np.arange(5))}).save(tmp_path / "d")
    (manifest,) = root.glob("domain-*/manifest.json")
    manifest.write_text(manifest.read_text().replace('"count": 5', '"count": 6'))
    with pytest.raises(ItemIndexError, match="domain 'a'.*does not match"):
        DomainIndexes.load(root)
    with pytest.raises(ItemIndexError, match="domains.json.*does not exist"):
        DomainIndexes.load(tmp_path / "elsewhere")
