"""The retrieval data sets: split, history, corpus, masking and counts on a hand-made GroupLens folder (exact,
checked by hand and against a plain-Python reference), config errors, and the two real protocols."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polyrec.config import ConfigError, from_dict
from polyrec.data.protocols import UnknownPresetError
from polyrec.retrieval.data import (
    GENRE3_GROUPS,
    RESERVED,
    RETRIEVAL_PROTOCOLS,
    RetrievalData,
    RetrievalDataConfig,
    build_retrieval_data,
    list_retrieval_protocols,
    retrieval_config,
)
from polyrec.retrieval.inputs import ItemInputs, UserInputs

# UserID::Gender::Age::Occupation::Zip-code
USERS = [
    (1, "F", 1, 10, "48067"),
    (2, "M", 18, 16, "70072"),
    (3, "M", 25, 15, "55117"),
    (4, "F", 35, 7, "02460"),
    (5, "M", 56, 20, "55455-1234"),
]
# MovieID::Title::Genres. Item indices are the titles in string order (comment), first genre → genre3 domain.
MOVIES = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),  # 9, comedy_family
    (2, "Heat (1995)", "Action|Crime|Thriller"),  # 5, action_thriller
    (3, "Casino (1995)", "Drama|Thriller"),  # 2, drama
    (4, "Sabrina (1995)", "Comedy|Romance"),  # 7, comedy_family
    (5, "Braveheart (1995)", "Action|Drama|War"),  # 1, action_thriller
    (6, "Clueless (1995)", "Comedy|Romance"),  # 3, comedy_family
    (7, "Seven (1995)", "Crime|Thriller"),  # 8, action_thriller
    (8, "Babe (1995)", "Children's|Comedy|Drama"),  # 0, comedy_family
    (9, "Fargo (1996)", "Crime|Drama|Thriller"),  # 4, action_thriller
    (10, "Nixon (1995)", "Drama"),  # 6, drama
    (11, "Waiting (2000)", "Documentary"),  # 10, drama (rated only below the threshold)
]
TOY, HEAT, CASINO, SABRINA, BRAVE, CLUELESS, SEVEN, BABE, FARGO, NIXON, WAITING = 9, 5, 2, 7, 1, 3, 8, 0, 4, 6, 10
# UserID::MovieID::Rating::Timestamp, in no particular order (the builder sorts).
RATINGS = [
    # user 1 (age 1): Sabrina and Braveheart tie at t=300, Sabrina first in the file but Braveheart first in item
    # order (1 < 7), so file order and item order disagree; Casino is a negative.
    (1, 6, 4, 400),
    (1, 1, 5, 100),
    (1, 4, 4, 300),
    (1, 2, 4, 200),
    (1, 5, 5, 300),
    (1, 3, 2, 150),
    # user 2 (age 18): two positives only, one negative.
    (2, 1, 5, 50),
    (2, 7, 4, 60),
    (2, 8, 1, 70),
    # user 3 (age 25)
    (3, 2, 5, 10),
    (3, 9, 4, 20),
    (3, 10, 5, 30),
    (3, 1, 3, 40),
    (3, 11, 1, 50),
    # user 4 (age 35)
    (4, 5, 4, 5),
    (4, 6, 4, 6),
    (4, 7, 5, 7),
    (4, 8, 4, 8),
    (4, 2, 4, 9),
    # user 5 (age 56): Fargo is a negative.
    (5, 3, 4, 1),
    (5, 4, 5, 2),
    (5, 10, 4, 3),
    (5, 9, 1, 4),
]
AGE3, GENRE3 = "ml1m-age3-retrieval", "ml1m-genre3-retrieval"


def write_grouplens(folder: Path, ratings: list[tuple] = RATINGS) -> Path:
    folder.mkdir(parents=True)

    def write(name, rows):
        (folder / name).write_bytes(("\n".join("::".join(map(str, r)) for r in rows) + "\n").encode("latin-1"))

    write("ratings.dat", ratings)
    write("users.dat", USERS)
    write("movies.dat", MOVIES)
    return folder


def swap_tie(ratings: list[tuple]) -> list[tuple]:
    """The ratings with user 1's two lines tied at t=300 (Sabrina, Braveheart) swapped in the file."""
    out = list(ratings)
    sabrina, brave = out.index((1, 4, 4, 300)), out.index((1, 5, 5, 300))
    out[sabrina], out[brave] = out[brave], out[sabrina]
    return out


@pytest.fixture
def fake(tmp_path) -> str:
    return str(write_grouplens(tmp_path / "ml-1m"))


def build(name: str, path: str, **overrides) -> RetrievalData:
    return build_retrieval_data(retrieval_config(name, path=path, **overrides))


def rows_of(data: RetrievalData) -> list[tuple]:
    """(user id, title, timestamp, domain name, split) of every interaction row."""
    return [
        (data.users[u], data.items[i], t, data.domains[d], ("train", "val", "test")[s])
        for u, i, t, d, s in zip(
            data.user.tolist(), data.item.tolist(), data.timestamp.tolist(), data.domain.tolist(), data.split.tolist()
        )
    ]


# ------------------------------------------------------------------------------------- a reference build


def reference(data: RetrievalData, ratings: list[tuple] = RATINGS) -> dict:
    """Split, history, corpora, exclusions and counts recomputed row by row from the lists above (``ratings`` in
    the order of the file)."""
    cfg = data.config
    title = {m: t for m, t, _ in MOVIES}
    first_genre = {m: g.split("|")[0] for m, _, g in MOVIES}
    age = {u: a for u, _, a, *_ in USERS}
    item_of = {t: i for i, t in enumerate(data.items)}
    group_of = {str(v): d for d, vals in enumerate(cfg.domain_groups.values()) for v in vals}

    def domain(u, m):
        return group_of.get(str(age[u]) if cfg.domain_by == "user" else first_genre[m], -1)

    full = sorted(
        (u - 1, r_t, f, item_of[title[m]], domain(u, m))
        for f, (u, m, r, r_t) in enumerate(ratings)
        if r >= cfg.min_rating
    )  # user index = id - 1 here; sorted by (user, timestamp, position in the file)
    pos = [(u, t, i, d) for u, t, _, i, d in full]
    split = []
    for u, t, f, _, d in full:
        later = [p for p in full if p[0] == u and p[4] == d and (p[1], p[2]) > (t, f)]
        n = sum(1 for p in full if p[0] == u and p[4] == d)
        split.append(0 if n < cfg.min_positives or len(later) > 1 else 2 - len(later))
    history = []
    for u, t, _, _, _ in full:
        earlier = sorted(((p[1], p[2], p[3]) for p in full if p[0] == u and p[1] < t), reverse=True)
        h = [i + 1 for _, _, i in earlier][: cfg.history_len]
        history.append(h + [0] * (cfg.history_len - len(h)))
    if cfg.domain_by == "user":  # items shared: every domain ranks the whole catalogue
        corpus = [list(range(len(data.items))) for _ in data.domains]
    else:
        corpus = [
            sorted({item_of[title[m]] for u, m, _, _ in ratings if domain(u, m) == d}) for d in range(len(data.domains))
        ]
    counts = [[0.0] * len(data.items) for _ in data.domains]
    for (_, _, i, d), s in zip(pos, split):
        if s == 0:
            counts[d][i] += 1
    exclude = {}
    for s_name, s_code in (("val", 1), ("test", 2)):
        for d in range(len(data.domains)):
            queries = [k for k, p in enumerate(pos) if p[3] == d and split[k] == s_code]
            pairs = []
            for j, k in enumerate(queries):
                masked = [p[2] for q, p in enumerate(pos) if p[0] == pos[k][0] and p[3] == d and split[q] < s_code]
                pairs += sorted((j, corpus[d].index(i)) for i in masked)
            exclude[s_name, d] = pairs
    return {
        "user": [p[0] for p in pos],
        "item": [p[2] for p in pos],
        "timestamp": [p[1] for p in pos],
        "domain": [p[3] for p in pos],
        "split": split,
        "history": history,
        "corpus": corpus,
        "train_counts": counts,
        "exclude": exclude,
    }


@pytest.mark.parametrize("name", [AGE3, GENRE3])
@pytest.mark.parametrize("history_len", [2, 20])
@pytest.mark.parametrize("swapped", [False, True], ids=["file", "swapped"])
def test_matches_the_reference(tmp_path, name, history_len, swapped):
    ratings = swap_tie(RATINGS) if swapped else RATINGS
    data = build(name, str(write_grouplens(tmp_path / "ml-1m", ratings)), history_len=history_len)
    want = reference(data, ratings)
    for key in ("user", "item", "timestamp", "domain", "split", "history"):
        assert getattr(data, key).tolist() == want[key], key
    assert [c.tolist() for c in data.corpus] == want["corpus"]
    assert data.train_counts.tolist() == want["train_counts"]
    assert data.train_counts.dtype == torch.float32 and data.split.dtype == torch.int8
    for (split, d), pairs in want["exclude"].items():
        q_idx, pos = data.exclude(split, d)
        assert list(zip(q_idx.tolist(), pos.tolist())) == pairs, (split, d)


# ----------------------------------------------------------------------------------- the rules, by hand


def test_catalogue_vocabularies_and_features(fake):
    data = build(AGE3, fake)
    assert data.users == ["1", "2", "3", "4", "5"]
    assert data.items == sorted(t for _, t, _ in MOVIES) and data.items[TOY] == "Toy Story (1995)"
    assert data.vocab["age"] == [RESERVED, "1", "18", "25", "35", "56"]  # numeric order
    assert data.vocab["occupation"] == [RESERVED, "7", "10", "15", "16", "20"]
    assert data.vocab["zip_code"] == [RESERVED, "02460", "48067", "55117", "55455-1234", "70072"]
    assert data.vocab["release_year"] == [RESERVED, "1995", "1996", "2000"]
    assert data.vocab["genres"][0] == RESERVED and data.vocab["genres"][1:] == sorted(data.vocab["genres"][1:])
    assert data.vocab_sizes["user_id"] == 6 and data.vocab_sizes["item_id"] == 12
    # The id field indices are index + 1 (0 reserved), like the history's item + 1.
    assert torch.equal(data.user_sparse[:, 0], torch.arange(1, 6))
    assert torch.equal(data.item_sparse[:, 0], torch.arange(1, 12))
    assert data.user_sparse.shape == (5, 5) and data.item_sparse.shape == (11, 2)
    assert data.user_sparse[3].tolist() == [4, 1, 4, 1, 1]  # user 4: F, 35, occupation 7, zip 02460
    genres = data.vocab["genres"]
    assert [genres[g] for g in data.item_multi[TOY].tolist() if g] == ["Animation", "Children's", "Comedy"]
    assert data.item_multi.shape == (11, 3) and data.item_multi[NIXON, 1:].tolist() == [0, 0]


def test_split_last_is_test_second_last_is_val_ties_by_file_order(fake, tmp_path):
    data = build(AGE3, fake)
    user1 = [r for r in rows_of(data) if r[0] == "1"]
    # Sorted by (timestamp, position in the file); Sabrina (item 7, line 3) and Braveheart (item 1, line 5) tie
    # at t=300: Braveheart is later in the file, so it is the later one, although its item index is smaller.
    assert [(r[1], r[2], r[4]) for r in user1] == [
        ("Toy Story (1995)", 100, "train"),
        ("Heat (1995)", 200, "train"),
        ("Sabrina (1995)", 300, "train"),
        ("Braveheart (1995)", 300, "val"),
        ("Clueless (1995)", 400, "test"),
    ]
    assert all(r[3] == "0" for r in user1)
    # The same ratings with the two tied lines swapped in the file: the tie flips, nothing else changes.
    other = build(AGE3, str(write_grouplens(tmp_path / "swapped" / "ml-1m", swap_tie(RATINGS))))
    assert [(r[1], r[4]) for r in rows_of(other) if r[0] == "1"] == [
        ("Toy Story (1995)", "train"),
        ("Heat (1995)", "train"),
        ("Braveheart (1995)", "train"),
        ("Sabrina (1995)", "val"),
        ("Clueless (1995)", "test"),
    ]
    assert [r for r in rows_of(other) if r[0] != "1"] == [r for r in rows_of(data) if r[0] != "1"]
    assert other.fingerprint != data.fingerprint


def test_min_positives(fake):
    data = build(AGE3, fake)
    user2 = [r[4] for r in rows_of(data) if r[0] == "2"]
    assert user2 == ["train", "train"]  # two positives < 3
    loose = build(AGE3, fake, min_positives=2)
    assert [r[4] for r in rows_of(loose) if r[0] == "2"] == ["val", "test"]
    single = build(AGE3, fake, min_positives=1, min_rating=5.0)
    assert [r[4] for r in rows_of(single) if r[0] == "2"] == ["test"]  # one positive: a test query only
    # Genre domains: user 1 has 3 comedy/family positives (split) but 2 action ones (train only).
    genre = rows_of(build(GENRE3, fake))
    assert [(r[1], r[4]) for r in genre if r[0] == "1" and r[3] == "comedy_family"] == [
        ("Toy Story (1995)", "train"),
        ("Sabrina (1995)", "val"),
        ("Clueless (1995)", "test"),
    ]
    assert {r[4] for r in genre if r[0] == "1" and r[3] == "action_thriller"} == {"train"}


def test_history_strictly_earlier_most_recent_first_capped_all_domains(fake, tmp_path):
    data = build(GENRE3, fake, history_len=3)
    rows = rows_of(data)
    hist = {(r[0], r[1]): h for r, h in zip(rows, data.history.tolist())}
    # Toy@100, Heat@200, Sabrina@300 = Braveheart@300 (in file order), Clueless@400: ties are not history of
    # each other.
    assert hist["1", "Toy Story (1995)"] == [0, 0, 0]
    assert hist["1", "Heat (1995)"] == [TOY + 1, 0, 0]
    assert hist["1", "Braveheart (1995)"] == [HEAT + 1, TOY + 1, 0]
    assert hist["1", "Sabrina (1995)"] == [HEAT + 1, TOY + 1, 0]
    # Capped at L = 3, most recent first (the tie latest in file order first: Braveheart, though its item index
    # is smaller), other domains' positives included: Clueless (comedy/family) sees Braveheart and Heat (action).
    assert hist["1", "Clueless (1995)"] == [BRAVE + 1, SABRINA + 1, HEAT + 1]
    # With the two tied lines swapped in the file, the tie in the history flips with them.
    other = build(GENRE3, str(write_grouplens(tmp_path / "swapped" / "ml-1m", swap_tie(RATINGS))), history_len=3)
    other_hist = {(r[0], r[1]): h for r, h in zip(rows_of(other), other.history.tolist())}
    assert other_hist["1", "Clueless (1995)"] == [SABRINA + 1, BRAVE + 1, HEAT + 1]
    assert other_hist["1", "Braveheart (1995)"] == other_hist["1", "Sabrina (1995)"] == [HEAT + 1, TOY + 1, 0]
    # Another user's positives are never history; negatives neither (Casino, rated 2 at t=150).
    assert hist["2", "Toy Story (1995)"] == [0, 0, 0]
    assert CASINO + 1 not in data.history[data.user == 0]
    # A query never sees its own target.
    for split in ("val", "test"):
        for d in range(3):
            q = data.queries(split, d)
            assert not (data.history[q] == (data.item[q] + 1)[:, None]).any()


def test_corpus_per_domain(fake):
    age = build(AGE3, fake)
    # User-grouped domains share the items: every domain ranks the whole catalogue, all 11 items, also those
    # no user of the domain rated (domain 0: Fargo, Nixon, Waiting; domain 1: Casino, Sabrina, Braveheart, ...).
    assert len(age.items) == 11
    for d in range(3):
        assert age.corpus[d].dtype == torch.long and age.corpus[d].tolist() == list(range(11)), d
    assert {FARGO, NIXON, WAITING} <= set(age.corpus[0].tolist())
    assert not {FARGO, NIXON, WAITING} & set(age.item[age.domain == 0].tolist())  # no positive of domain 0
    genre = build(GENRE3, fake)
    assert genre.corpus[0].tolist() == sorted([CASINO, NIXON, WAITING])  # Waiting: only a negative rating
    assert genre.corpus[1].tolist() == sorted([TOY, SABRINA, CLUELESS, BABE])
    assert genre.corpus[2].tolist() == sorted([HEAT, BRAVE, SEVEN, FARGO])
    for data in (age, genre):
        for split in ("val", "test"):
            for d in range(3):
                assert torch.equal(data.corpus[d][data.targets(split, d)], data.item[data.queries(split, d)])


def test_exclusion_pairs(fake):
    data = build(AGE3, fake)
    c0 = data.corpus[0].tolist()  # user 1 is domain 0's only query user
    assert c0 == list(range(11))  # the whole catalogue: a corpus position is the item index
    q_val = data.queries("val", 0)
    assert data.item[q_val].tolist() == [BRAVE]  # the later of the tie at t=300 in file order
    assert data.targets("val", 0).tolist() == [BRAVE]
    q_idx, pos = data.exclude("val", 0)
    assert q_idx.tolist() == [0, 0, 0]
    assert pos.tolist() == sorted([TOY, HEAT, SABRINA])  # the training positives
    q_idx, pos = data.exclude("test", 0)
    assert q_idx.tolist() == [0, 0, 0, 0]
    assert pos.tolist() == sorted([TOY, HEAT, SABRINA, BRAVE])  # + the validation positive
    assert data.targets("test", 0).tolist() == [CLUELESS]
    # Domain 2 has two query users (4 and 5: 5 and 3 positives), pairs sorted by query, then position.
    q_idx, pos = data.exclude("test", 2)
    assert data.user[data.queries("test", 2)].tolist() == [3, 4]
    assert q_idx.tolist() == [0, 0, 0, 0, 1, 1]
    assert data.corpus[2].tolist() == list(range(11))
    assert pos.tolist() == sorted([BRAVE, CLUELESS, SEVEN, BABE]) + sorted([CASINO, SABRINA])
    assert data.targets("test", 2).tolist() == [HEAT, NIXON]
    with pytest.raises(ValueError, match="split 'train' is not one of"):
        data.exclude("train", 0)
    with pytest.raises(ValueError, match="domain 3 is out of range"):
        data.queries("test", 3)


def test_train_counts(fake):
    data = build(AGE3, fake)
    assert data.train_counts.shape == (3, 11)
    assert data.train_counts[0, TOY] == 2  # users 1 and 2
    assert data.train_counts[0, SEVEN] == 1 and data.train_counts[0, CLUELESS] == 0  # Clueless is a test target
    assert data.train_counts[0, SABRINA] == 1 and data.train_counts[0, BRAVE] == 0  # Braveheart: the val target
    assert data.train_counts.sum() == int((data.split == 0).sum())


def test_disjointness(fake):
    age, genre = build(AGE3, fake), build(GENRE3, fake)
    for data, key in ((age, "users"), (genre, "items")):
        overlap = data.stats()["overlap"][key]
        assert all(overlap[a][b] == 0 for a in range(3) for b in range(3) if a != b), key
    assert age.stats()["overlap"]["items"][0][2] > 0 and genre.stats()["overlap"]["users"][1][2] > 0
    users_per_domain = [set(age.user[age.domain == d].tolist()) for d in range(3)]
    assert users_per_domain == [{0, 1}, {2}, {3, 4}]
    corpora = [set(c.tolist()) for c in genre.corpus]
    assert not (corpora[0] & corpora[1] or corpora[0] & corpora[2] or corpora[1] & corpora[2])


def test_inputs_gather(fake):
    data = build(AGE3, fake)
    rows = data.queries("test", 2)
    users = data.user_inputs(rows)
    assert isinstance(users, UserInputs) and len(users) == 2
    assert torch.equal(users.sparse, data.user_sparse[data.user[rows]])
    assert torch.equal(users.history, data.history[rows]) and users.domain.tolist() == [2, 2]
    assert data.user_inputs(rows, torch.tensor([0, 1])).domain.tolist() == [0, 1]
    assert data.user_inputs(rows, 1).domain.tolist() == [1, 1]
    items = data.item_inputs(data.corpus[1], 1)
    assert isinstance(items, ItemInputs) and len(items) == len(data.corpus[1])
    assert torch.equal(items.sparse[:, 0], data.corpus[1] + 1)  # the item-id field index is item + 1
    assert torch.equal(items.multi, data.item_multi[data.corpus[1]]) and set(items.domain.tolist()) == {1}


def test_stats_and_schema(fake):
    data = build(AGE3, fake)
    stats = data.stats()
    assert stats["users"] == 5 and stats["items"] == 11 and stats["positives"]["all"] == len(data) == 18
    assert stats["domains"]["0"]["positives"] == {"train": 5, "val": 1, "test": 1, "all": 7}
    assert stats["domains"]["0"]["users"] == 2
    assert [stats["domains"][d]["corpus"] for d in ("0", "1", "2")] == [11, 11, 11]  # the whole catalogue
    assert stats["overlap"]["corpus"] == [[11] * 3] * 3
    schema = data.schema()
    assert schema["domains"] == ["0", "1", "2"] and schema["history_len"] == 20
    assert schema["corpus_sizes"] == [len(c) for c in data.corpus]
    assert schema["vocab_sizes"] == data.vocab_sizes and schema["fingerprint"] == data.fingerprint
    assert '"multi_field": "genres"' in data.to_json()


def test_deterministic(fake, tmp_path):
    a, b = build(GENRE3, fake), build(GENRE3, fake)
    for key in ("user_sparse", "item_sparse", "item_multi", "user", "item", "domain", "timestamp", "split"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert torch.equal(a.history, b.history) and torch.equal(a.train_counts, b.train_counts)
    assert a.vocab == b.vocab and len(a.fingerprint) == 64 and a.fingerprint == b.fingerprint
    # The same ratings from another folder: the same data; another config: another fingerprint.
    other = str(write_grouplens(tmp_path / "copy" / "ml-1m"))
    assert build(GENRE3, other).fingerprint == a.fingerprint
    assert build(GENRE3, fake, history_len=5).fingerprint != a.fingerprint
    assert build(AGE3, fake).fingerprint != a.fingerprint


# -------------------------------------------------------------------------------------------- the config


def test_groups_errors(fake):
    groups = {"young": [1, 18], "mid": [25], "old": [35, 45, 50]}  # 56 (user 5) is in no group
    with pytest.raises(ValueError, match=r"value\(s\) \['56'\] of column 'age' occur in 3 positive\(s\)"):
        build(AGE3, fake, domain_groups=groups)
    with pytest.raises(ConfigError, match=r"value '18' of 'age' is in two groups \('young' and 'mid'\)"):
        retrieval_config(AGE3, domain_groups={"young": [1, 18], "mid": ["18", 25], "old": [35, 45, 50, 56]})
    # A value among the ratings below the threshold only (Waiting's Documentary) may stay unassigned.
    genre = {name: [v for v in vals if v != "Documentary"] for name, vals in GENRE3_GROUPS.items()}
    data = build(GENRE3, fake, domain_groups=genre)
    assert WAITING not in torch.cat(data.corpus).tolist()
    with pytest.raises(ValueError, match=r"domain\(s\) \['none'\] hold no positive"):
        build(AGE3, fake, domain_groups={"none": [45, 50], "rest": [1, 18, 25, 35, 56]})


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'history_length'.*Did you mean 'history_len'"):
        from_dict(RetrievalDataConfig, {"history_length": 5})
    with pytest.raises(ConfigError, match="history_len: 0 is not allowed; must be >= 1"):
        from_dict(RetrievalDataConfig, {"history_len": 0})
    with pytest.raises(ConfigError, match="domain_column: 'first_genre' is not allowed.*set domain_by: item"):
        from_dict(RetrievalDataConfig, {"domain_column": "first_genre"})
    with pytest.raises(ConfigError, match="name: 'ml-20m' is not allowed"):
        from_dict(RetrievalDataConfig, {"name": "ml-20m"})
    with pytest.raises(ConfigError, match="domain_by"):
        from_dict(RetrievalDataConfig, {"domain_by": "both"})
    assert from_dict(RetrievalDataConfig, {"name": "movielens-1m"}).name == "ml-1m"


def test_protocols():
    assert list_retrieval_protocols() == [AGE3, GENRE3]
    age = retrieval_config(AGE3)
    assert (age.min_rating, age.domain_by, age.domain_column) == (4.0, "user", "age")
    assert age.domain_groups == {"0": [1, 18], "1": [25], "2": [35, 45, 50, 56]}  # P2's groups, in P2's order
    genre = retrieval_config(GENRE3)
    assert (genre.min_rating, genre.domain_by, genre.domain_column) == (4.0, "item", "first_genre")
    assert list(genre.domain_groups) == ["drama", "comedy_family", "action_thriller"]
    assert RETRIEVAL_PROTOCOLS[GENRE3]["domain_groups"] == GENRE3_GROUPS
    with pytest.raises(UnknownPresetError, match=r"Did you mean 'ml1m-age3-retrieval'"):
        retrieval_config("ml1m-age3-retreival")
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):
        retrieval_config(AGE3, lr=1e-3)


# ------------------------------------------------------------------------------------------ the real data


@pytest.mark.network
def test_real_ml1m_protocols():
    """Both protocols on the real ML-1M (the verified wheel from the default cache when there is one)."""
    from polyrec.data.sources import MOVIELENS_WHEEL, load_movielens

    local = Path.home() / ".cache" / "polyrec" / "wheels" / MOVIELENS_WHEEL["filename"]
    frame = load_movielens("ml-1m", str(local) if local.is_file() else None)
    age, genre = (build_retrieval_data(retrieval_config(n), frame) for n in (AGE3, GENRE3))
    for data in (age, genre):
        stats = data.stats()
        assert (stats["users"], stats["items"], stats["positives"]["all"]) == (6_040, 3_706, 575_281)
        for d, name in enumerate(data.domains):
            per = stats["domains"][name]["positives"]
            assert per["val"] == per["test"] > 0
            for split in ("val", "test"):
                q = data.queries(split, d)
                assert torch.equal(data.corpus[d][data.targets(split, d)], data.item[q])
                assert not (data.history[q] == (data.item[q] + 1)[:, None]).any()
                q_idx, pos = data.exclude(split, d)
                assert not (pos == data.targets(split, d)[q_idx]).any()
    # R1: every age domain ranks the whole catalogue; R2: the three genre corpora partition it.
    assert [c.tolist() for c in age.corpus] == [list(range(3_706))] * 3
    assert [len(c) for c in genre.corpus] == [1_245, 1_193, 1_268]
    assert torch.cat(genre.corpus).sort().values.tolist() == list(range(3_706))
    users, items = age.stats()["overlap"]["users"], genre.stats()["overlap"]["items"]
    assert all(users[a][b] == 0 and items[a][b] == 0 for a in range(3) for b in range(3) if a != b)
    shares = [s["positives"]["all"] / len(genre) for s in genre.stats()["domains"].values()]
    assert min(shares) >= 0.15, shares
