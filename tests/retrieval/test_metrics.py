"""Full-corpus retrieval metrics (polyrec.retrieval.metrics) against brute force and hand-made examples.

Embeddings in the property tests are small integers, so every score is exact in float32 and ties are
common; the brute force sorts each query's non-excluded items by score with the target placed after the
items it ties with (pessimistic) and reads off the target's position.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyrec.retrieval.metrics import (
    RETRIEVAL_CUTOFFS,
    RetrievalEvaluator,
    RetrievalMetrics,
    popularity_ranks,
    popularity_scores,
    ranks_from_scores,
    recall_ndcg,
    target_ranks,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_force_ranks(scores: list[list[float]], target: list[int], exclude: list[tuple[int, int]]) -> list[int]:
    ranks = []
    for q, row in enumerate(scores):
        removed = {c for qq, c in exclude if qq == q}
        kept = [c for c in range(len(row)) if c not in removed]
        # Highest score first; among equal scores the target goes last (pessimistic).
        ordered = sorted(kept, key=lambda c: (-row[c], c == target[q]))
        ranks.append(ordered.index(target[q]))
    return ranks


def as_exclude(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not pairs:
        return None
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


@st.composite
def ranking_problem(draw):
    q = draw(st.integers(1, 6))
    c = draw(st.integers(1, 9))
    e = draw(st.integers(1, 3))
    small = st.integers(-2, 2)
    user = draw(st.lists(st.lists(small, min_size=e, max_size=e), min_size=q, max_size=q))
    corpus = draw(st.lists(st.lists(small, min_size=e, max_size=e), min_size=c, max_size=c))
    target = draw(st.lists(st.integers(0, c - 1), min_size=q, max_size=q))
    candidates = [(qq, cc) for qq in range(q) for cc in range(c) if cc != target[qq]]
    if candidates:
        exclude = draw(st.lists(st.sampled_from(candidates), max_size=2 * len(candidates)))  # duplicates allowed
    else:
        exclude = []
    return (
        torch.tensor(user, dtype=torch.float32),
        torch.tensor(corpus, dtype=torch.float32),
        torch.tensor(target),
        exclude,
    )


# --------------------------------------------------------------------------- #
# ranks
# --------------------------------------------------------------------------- #
@FAST
@given(problem=ranking_problem(), chunk=st.integers(1, 7))
def test_target_ranks_match_brute_force(problem, chunk):
    user, corpus, target, exclude = problem
    scores = (user @ corpus.T).tolist()
    want = brute_force_ranks(scores, target.tolist(), exclude)
    got = target_ranks(user, corpus, target, as_exclude(exclude), chunk=chunk)
    assert got.dtype == torch.long
    assert got.tolist() == want
    assert ranks_from_scores(user @ corpus.T, target, as_exclude(exclude), chunk=chunk).tolist() == want


def test_chunking_gives_identical_ranks():
    g = torch.Generator().manual_seed(0)
    user = torch.randint(-3, 4, (137, 6), generator=g).float()
    corpus = torch.randint(-3, 4, (53, 6), generator=g).float()
    target = torch.randint(0, 53, (137,), generator=g)
    qi = torch.randint(0, 137, (400,), generator=g)
    ci = torch.randint(0, 53, (400,), generator=g)
    keep = ci != target[qi]
    exclude = (qi[keep], ci[keep])
    full = target_ranks(user, corpus, target, exclude, chunk=10_000)
    for chunk in (1, 7, 64, 136, 137):
        assert torch.equal(target_ranks(user, corpus, target, exclude, chunk=chunk), full)


def test_large_corpus_in_chunks():
    # The evaluation size of the paper's setting: 6000 queries against 4000 items, scored 1000 queries at a time.
    g = torch.Generator().manual_seed(1)
    corpus = torch.randn(4000, 16, generator=g)
    target = torch.randint(0, 4000, (6000,), generator=g)
    user = corpus[target] * 4 + torch.randn(6000, 16, generator=g)
    ranks = target_ranks(user, corpus, target, chunk=1000)
    assert ranks.shape == (6000,)
    assert torch.equal(ranks, target_ranks(user, corpus, target))
    assert int(ranks.min()) >= 0 and int(ranks.max()) <= 3999
    assert recall_ndcg(ranks)["recall@500"] > 0.5


def test_perfect_model_gets_recall_one():
    c = 30
    target = torch.tensor([0, 5, 29, 5, 17])
    corpus = torch.eye(c)
    user = corpus[target]
    exclude = (torch.tensor([0, 1, 1]), torch.tensor([3, 0, 6]))
    ranks = target_ranks(user, corpus, target, exclude)
    assert ranks.tolist() == [0] * 5
    m = recall_ndcg(ranks, cutoffs=(1, 10, 50))
    assert all(m[f"recall@{n}"] == 1.0 and m[f"ndcg@{n}"] == 1.0 for n in (1, 10, 50))


def test_constant_model_is_ranked_last():
    c = 12
    user = torch.zeros(4, 3)
    corpus = torch.randn(c, 3)
    target = torch.tensor([0, 3, 11, 3])
    # Query 1 excludes 2 distinct items (one given twice); query 3 excludes 1.
    exclude = (torch.tensor([1, 1, 1, 3]), torch.tensor([4, 5, 4, 0]))
    ranks = target_ranks(user, corpus, target, exclude)
    assert ranks.tolist() == [c - 1, c - 1 - 2, c - 1, c - 1 - 1]


def test_ranks_from_an_expanded_score_vector():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0])
    target = torch.tensor([1, 2, 3, 4])
    got = ranks_from_scores(scores.expand(4, 5), target)
    assert got.tolist() == [1, 1, 4, 2]


def test_rank_errors():
    user, corpus = torch.randn(3, 2), torch.randn(5, 2)
    target = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="removes the target of query 2"):
        target_ranks(user, corpus, target, (torch.tensor([0, 2]), torch.tensor([3, 2])))
    with pytest.raises(ValueError, match=r"target of query 1 is 5, outside the corpus positions 0..4"):
        target_ranks(user, corpus, torch.tensor([0, 5, 2]))
    with pytest.raises(ValueError, match="outside the corpus"):
        target_ranks(user, corpus, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="one corpus position per query"):
        target_ranks(user, corpus, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"corpus_pos\[0\] = 7"):
        target_ranks(user, corpus, target, (torch.tensor([0]), torch.tensor([7])))
    with pytest.raises(ValueError, match=r"query_idx\[0\] = 3"):
        target_ranks(user, corpus, target, (torch.tensor([3]), torch.tensor([1])))
    with pytest.raises(ValueError, match="same length"):
        target_ranks(user, corpus, target, (torch.tensor([0, 1]), torch.tensor([1])))
    with pytest.raises(ValueError, match="embedding size"):
        target_ranks(user, torch.randn(5, 3), target)
    with pytest.raises(ValueError, match="chunk"):
        target_ranks(user, corpus, target, chunk=0)
    with pytest.raises(ValueError, match="query 1 contain NaN"):
        target_ranks(torch.tensor([[1.0, 0.0], [math.nan, 0.0], [0.0, 1.0]]), corpus, target)
    with pytest.raises(TypeError, match="integer tensor"):
        target_ranks(user, corpus, target.float())


# --------------------------------------------------------------------------- #
# Recall@N, NDCG@N
# --------------------------------------------------------------------------- #
def test_recall_ndcg_hand_values():
    ranks = torch.tensor([0, 1, 9, 10, 49, 50, 499, 500, 1000])
    m = recall_ndcg(ranks)
    assert list(m) == [f"recall@{n}" for n in RETRIEVAL_CUTOFFS] + [f"ndcg@{n}" for n in RETRIEVAL_CUTOFFS]
    assert m["recall@10"] == pytest.approx(3 / 9)
    assert m["recall@50"] == pytest.approx(5 / 9)
    assert m["recall@100"] == pytest.approx(6 / 9)
    assert m["recall@500"] == pytest.approx(7 / 9)
    gain = [1 / math.log2(r + 2) for r in ranks.tolist()]
    assert m["ndcg@10"] == pytest.approx(sum(gain[:3]) / 9)
    assert m["ndcg@50"] == pytest.approx(sum(gain[:5]) / 9)
    assert m["ndcg@500"] == pytest.approx(sum(gain[:7]) / 9)
    assert recall_ndcg(torch.tensor([0]), (1,))["ndcg@1"] == 1.0
    assert recall_ndcg(torch.tensor([1]), (2,))["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert recall_ndcg(torch.tensor([1]), (1,)) == {"recall@1": 0.0, "ndcg@1": 0.0}


@FAST
@given(ranks=st.lists(st.integers(0, 700), min_size=1, max_size=50))
def test_recall_and_ndcg_are_monotone_in_n(ranks):
    cutoffs = (1, 5, 10, 50, 100, 500, 1000)
    m = recall_ndcg(torch.tensor(ranks), cutoffs)
    for a, b in zip(cutoffs, cutoffs[1:]):
        assert m[f"recall@{a}"] <= m[f"recall@{b}"]
        assert m[f"ndcg@{a}"] <= m[f"ndcg@{b}"]
    for n in cutoffs:
        assert 0.0 <= m[f"ndcg@{n}"] <= m[f"recall@{n}"] <= 1.0


def test_recall_ndcg_errors():
    with pytest.raises(ValueError, match="ranks is empty"):
        recall_ndcg(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="position 1 holds -1"):
        recall_ndcg(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="cutoffs"):
        recall_ndcg(torch.tensor([0]), cutoffs=(0, 10))
    with pytest.raises(ValueError, match="must not repeat"):
        recall_ndcg(torch.tensor([0]), cutoffs=(10, 10))
    with pytest.raises(ValueError, match="non-empty"):
        recall_ndcg(torch.tensor([0]), cutoffs=())


# --------------------------------------------------------------------------- #
# evaluator and result
# --------------------------------------------------------------------------- #
def hand_evaluator() -> RetrievalEvaluator:
    ev = RetrievalEvaluator(["a", "b", "c"], cutoffs=(1, 10))
    ev.update(0, torch.tensor([0, 5]))
    ev.update(0, torch.tensor([20]))
    ev.update(1, torch.tensor([0]))
    ev.update(2, torch.zeros(0, dtype=torch.long))  # nothing
    return ev


def test_evaluator_arithmetic():
    m = hand_evaluator().compute()
    assert m.cutoffs == (1, 10)
    assert m.queries == {"a": 3, "b": 1, "c": 0}
    g5 = 1 / math.log2(7)
    a = m.per_domain["a"]
    assert a["recall@1"] == pytest.approx(1 / 3) and a["recall@10"] == pytest.approx(2 / 3)
    assert a["ndcg@1"] == pytest.approx(1 / 3) and a["ndcg@10"] == pytest.approx((1 + g5) / 3)
    assert m.per_domain["b"] == {"recall@1": 1.0, "recall@10": 1.0, "ndcg@1": 1.0, "ndcg@10": 1.0}
    assert all(math.isnan(v) for v in m.per_domain["c"].values())
    # Pooled: 4 queries, each weighs 1.
    assert m.overall["recall@1"] == pytest.approx(2 / 4)
    assert m.overall["recall@10"] == pytest.approx(3 / 4)
    assert m.overall["ndcg@10"] == pytest.approx((1 + g5 + 1) / 4)
    # Mean over the domains with queries (a and b), each weighs 1.
    assert m.mean["recall@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert m.mean["ndcg@10"] == pytest.approx(((1 + g5) / 3 + 1) / 2)


def test_evaluator_without_queries_and_reset():
    ev = RetrievalEvaluator(["a"], cutoffs=(5,))
    m = ev.compute()
    assert m.queries == {"a": 0}
    assert all(math.isnan(v) for table in (m.overall, m.mean, m.per_domain["a"]) for v in table.values())
    ev.update(0, torch.tensor([3]))
    assert ev.compute().overall["recall@5"] == 1.0
    ev.reset()
    assert ev.compute().queries == {"a": 0}


def test_evaluator_errors():
    ev = RetrievalEvaluator(["a", "b"])
    for bad in (2, -1):
        with pytest.raises(ValueError, match=f"domain index {bad} is out of range; valid indices are 0..1"):
            ev.update(bad, torch.tensor([0]))
    with pytest.raises(TypeError, match="integer domain index"):
        ev.update(0.0, torch.tensor([0]))
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        ev.update(0, torch.tensor([-3]))
    with pytest.raises(ValueError, match="unique"):
        RetrievalEvaluator(["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        RetrievalEvaluator([])


def test_metrics_json_round_trip():
    m = hand_evaluator().compute()
    text = json.dumps(m.to_dict())
    back = RetrievalMetrics.from_dict(json.loads(text))
    assert json.dumps(back.to_dict()) == text
    assert back.cutoffs == m.cutoffs and back.queries == m.queries
    assert back.overall == m.overall and back.per_domain["a"] == m.per_domain["a"]
    with pytest.raises(ValueError, match="expected keys"):
        RetrievalMetrics.from_dict({"overall": {}})
    broken = json.loads(text)
    del broken["mean"]["ndcg@10"]
    with pytest.raises(ValueError, match="mean must hold exactly the metrics"):
        RetrievalMetrics.from_dict(broken)


def test_value_names():
    m = hand_evaluator().compute()
    assert m.value("recall@10_mean") == m.mean["recall@10"]
    assert m.value("recall@10_overall") == m.overall["recall@10"]
    assert m.value("ndcg@1/a") == m.per_domain["a"]["ndcg@1"]
    assert "recall@1/c" in m.names() and len(m.names()) == 4 * (2 + 3)
    for bad in ("recall@50_mean", "recall@10/zzz", "recall@10", "foo"):
        with pytest.raises(KeyError, match=r"valid names: recall@1_mean, recall@1_overall, recall@1/a"):
            m.value(bad)


# --------------------------------------------------------------------------- #
# popularity baseline
# --------------------------------------------------------------------------- #
@FAST
@given(data=st.data())
def test_popularity_ranks_match_brute_force(data):
    c = data.draw(st.integers(1, 10))
    q = data.draw(st.integers(1, 6))
    counts = data.draw(st.lists(st.integers(0, 3), min_size=c, max_size=c))  # many ties
    target = data.draw(st.lists(st.integers(0, c - 1), min_size=q, max_size=q))
    candidates = [(qq, cc) for qq in range(q) for cc in range(c) if cc != target[qq]]
    exclude = data.draw(st.lists(st.sampled_from(candidates), max_size=20)) if candidates else []
    counts_t, target_t = torch.tensor(counts), torch.tensor(target)
    want = brute_force_ranks([[float(x) for x in counts]] * q, target, exclude)
    got = popularity_ranks(counts_t, target_t, as_exclude(exclude))
    assert got.tolist() == want
    expanded = ranks_from_scores(popularity_scores(counts_t).expand(q, c), target_t, as_exclude(exclude))
    assert expanded.tolist() == want


def test_popularity_scores_and_errors():
    assert popularity_scores(torch.tensor([3, 0, 1])).tolist() == [3.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="position 1 holds -1"):
        popularity_scores(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="1-D"):
        popularity_scores(torch.ones(2, 2))
    with pytest.raises(ValueError, match="removes the target of query 0"):
        popularity_ranks(torch.tensor([1, 2]), torch.tensor([1]), (torch.tensor([0]), torch.tensor([1])))
