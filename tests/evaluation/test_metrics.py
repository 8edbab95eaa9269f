"""Tests for polyrec.evaluation.metrics against sklearn / scipy / brute force."""

import dataclasses
import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from polyrec.evaluation import metrics as M
from polyrec.evaluation.metrics import (
    DomainCount,
    MultiDomainEvaluator,
    MultiDomainMetrics,
    StreamingAUC,
    auc,
    gauc,
    logloss,
    paired_ttest,
    summarize_runs,
)

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled_scores(draw, min_size=2, max_size=200):
    """Labels with both classes and scores that are often heavily tied."""
    n = draw(st.integers(min_size, max_size))
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    assume(0 < labels.sum() < n)
    if draw(st.booleans()):
        # few distinct values -> many ties, including ties across classes
        pool = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=4))
        scores = np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)))
    else:
        scores = np.array(draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n)))
    return labels, scores


def _chunks(draw, n):
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0] + cuts + [n]
    return list(zip(bounds[:-1], bounds[1:]))


# ----------------------------------------------------------------------------- auc
@FAST
@given(labelled_scores())
def test_auc_matches_sklearn(data):
    labels, scores = data
    assert abs(auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-12


def test_auc_hand_computed_with_tie():
    # pairs (pos, neg): (0.5 vs 0.5) tie = 1/2, (0.5 vs 0.1) win, (0.9 vs both) wins -> 3.5/4
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(0.875, abs=1e-15)


def test_auc_accepts_torch_tensors_with_grad():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8], requires_grad=True)
    assert auc(torch.tensor([0, 0, 1, 1]), scores) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_auc_single_class_is_nan(labels):
    assert math.isnan(auc(labels, np.arange(len(labels), dtype=float)))


@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_auc_rejects_non_binary_labels(bad):
    with pytest.raises(ValueError, match=rf"only 0 and 1.*holds {bad}"):
        auc([0, 1, bad], [0.1, 0.2, 0.3])


def test_auc_rejects_nan_scores_and_size_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="same number of elements"):
        auc([0, 1, 1], [0.1, 0.2])


# ---------------------------------------------------------------- StreamingAUC
@FAST
@given(st.data())
def test_streaming_auc_in_random_chunks_matches_sklearn(data):
    labels, scores = data.draw(labelled_scores())
    m = StreamingAUC()
    for lo, hi in _chunks(data.draw, len(labels)):
        m.update(labels[lo:hi], scores[lo:hi])
    assert abs(m.compute() - roc_auc_score(labels, scores)) < 1e-12
    assert (m.n_pos, m.n_neg) == (int(labels.sum()), int((labels == 0).sum()))


@FAST
@given(st.data())
def test_streaming_auc_merge_equals_single_stream(data):
    labels, scores = data.draw(labelled_scores())
    single = StreamingAUC()
    single.update(labels, scores)
    parts = []
    for lo, hi in _chunks(data.draw, len(labels)):
        p = StreamingAUC()
        p.update(labels[lo:hi], scores[lo:hi])
        parts.append(p)
    merged = StreamingAUC()
    for p in parts:
        # round-trip through the plain-array state as a rank gather would
        merged.merge(StreamingAUC.from_state(pickle.loads(pickle.dumps(p.state_dict()))))
    assert merged.compute() == pytest.approx(single.compute(), abs=1e-12)
    for key, value in single.state_dict().items():
        np.testing.assert_array_equal(merged.state_dict()[key], value)


def test_streaming_auc_compaction_across_many_batches():
    # enough rows to trigger several lazy compactions
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300_000)
    scores = np.round(rng.normal(size=labels.size) + 0.3 * labels, 3)
    m = StreamingAUC()
    for lo in range(0, labels.size, 7_000):
        m.update(labels[lo : lo + 7_000], scores[lo : lo + 7_000])
    assert m.compute() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    state = m.state_dict()
    assert np.all(np.diff(state["scores"]) > 0)
    assert state["scores"].size == np.unique(scores).size


def test_streaming_auc_merge_leaves_other_unchanged():
    a, b = StreamingAUC(), StreamingAUC()
    a.update([0, 1], [0.1, 0.9])
    b.update([1, 0], [0.2, 0.3])
    a.merge(b)
    assert (b.n_pos, b.n_neg) == (1, 1) and b.compute() == 0.0
    assert a.compute() == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.1, 0.9, 0.2, 0.3]))


def test_streaming_auc_single_class_nan_and_bad_labels():
    m = StreamingAUC()
    assert math.isnan(m.compute())
    m.update([1, 1], [0.3, 0.4])
    assert math.isnan(m.compute())
    with pytest.raises(ValueError, match="holds 3"):
        m.update([0, 3], [0.1, 0.2])


def test_streaming_auc_from_state_unsorted_and_missing_keys():
    m = StreamingAUC.from_state({"scores": [0.5, 0.1, 0.5], "pos": [1, 0, 1], "neg": [0, 1, 1]})
    assert m.compute() == pytest.approx(auc([1, 0, 1, 0], [0.5, 0.1, 0.5, 0.5]))
    with pytest.raises(KeyError, match="neg"):
        StreamingAUC.from_state({"scores": [0.1], "pos": [1]})


# ------------------------------------------------------------------------- logloss
def test_logloss_from_logits_and_probs_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    logits = rng.normal(scale=3, size=1000)
    probs = 1 / (1 + np.exp(-logits))
    expected = log_loss(labels, probs, labels=[0, 1])
    assert logloss(labels, logits) == pytest.approx(expected, rel=1e-9)
    assert logloss(labels, probs, from_logits=False) == pytest.approx(expected, rel=1e-9)


def test_logloss_stable_for_extreme_logits():
    # confidently wrong: loss = |logit|, exactly, without overflow
    assert logloss([0, 1], [800.0, -800.0]) == pytest.approx(800.0)
    assert logloss([1, 0], [800.0, -800.0]) == pytest.approx(0.0, abs=1e-300)


def test_logloss_clips_probabilities_and_rejects_logits_as_probs():
    assert logloss([1], [0.0], from_logits=False) == pytest.approx(-math.log(1e-7))
    with pytest.raises(ValueError, match="from_logits=True"):
        logloss([1, 0], [2.5, -1.0], from_logits=False)


# ---------------------------------------------------------------------------- gauc
def _gauc_bruteforce(users, labels, scores):
    df = pd.DataFrame({"u": users, "y": labels, "s": scores})
    num = den = 0.0
    for _, g in df.groupby("u"):
        if g["y"].nunique() == 2:
            num += len(g) * roc_auc_score(g["y"], g["s"])
            den += len(g)
    return num / den if den else float("nan")


@FAST
@given(st.data())
def test_gauc_matches_pandas_groupby(data):
    n = data.draw(st.integers(1, 150))
    users = np.array(data.draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)))
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    scores = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, 3.5]), min_size=n, max_size=n)))
    got, want = gauc(users, labels, scores), _gauc_bruteforce(users, labels, scores)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_gauc_skips_single_class_users_and_accepts_string_ids():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [0, 1, 1, 0, 1, 1, 1]  # user c has only positives -> skipped
    scores = [0.2, 0.9, 0.1, 0.3, 0.4, 0.0, 0.0]
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 2 * 1.0) / 5)
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))


# ------------------------------------------------------------ MultiDomainEvaluator
def _random_batches(rng, n, n_domains, n_users=20):
    logits = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    domains = rng.integers(0, n_domains, n)
    users = rng.integers(0, n_users, n)
    return logits, labels, domains, users


def test_evaluator_matches_sklearn_per_domain_and_formulas():
    rng = np.random.default_rng(2)
    names = ["search", "feed", "ads"]
    logits, labels, domains, users = _random_batches(rng, 3000, 3)
    logits = np.round(logits, 1)  # create ties
    ev = MultiDomainEvaluator(names)
    for lo in range(0, 3000, 256):
        sl = slice(lo, lo + 256)
        ev.update(
            torch.tensor(logits[sl]), torch.tensor(labels[sl]), torch.tensor(domains[sl]), users=torch.tensor(users[sl])
        )
    out = ev.compute()

    probs = 1 / (1 + np.exp(-logits))
    aucs, ns = [], []
    for d, name in enumerate(names):
        m = domains == d
        a = roc_auc_score(labels[m], logits[m])
        aucs.append(a)
        ns.append(m.sum())
        assert out["auc_per_domain"][name] == pytest.approx(a, abs=1e-12)
        assert out["logloss_per_domain"][name] == pytest.approx(log_loss(labels[m], probs[m]), rel=1e-9)
        pcoc = probs[m].mean() / labels[m].astype(np.float64).mean()
        assert out["pcoc_per_domain"][name] == pytest.approx(pcoc, rel=1e-9)
        assert out["count_per_domain"][name] == {
            "n": int(m.sum()),
            "pos": int(labels[m].sum()),
            "neg": int((labels[m] == 0).sum()),
        }
        assert out["gauc_per_domain"][name] == pytest.approx(
            _gauc_bruteforce(users[m], labels[m], logits[m]), abs=1e-12
        )
    assert out["auc_overall"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    assert out["logloss_overall"] == pytest.approx(log_loss(labels, probs), rel=1e-9)
    assert out["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert out["wauc"] == pytest.approx(np.dot(ns, aucs) / np.sum(ns), abs=1e-12)
    assert out["gauc"] == pytest.approx(_gauc_bruteforce(users, labels, logits), abs=1e-12)
    assert out["n"] == 3000


def test_evaluator_empty_and_single_class_domains():
    ev = MultiDomainEvaluator(["a", "b", "c"])
    out = ev.compute()
    assert out["n"] == 0 and math.isnan(out["auc_overall"]) and math.isnan(out["wauc"])
    assert "gauc" not in out

    # domain a: both classes; b: only negatives; c: never seen
    ev.update(torch.tensor([0.5, -0.5, 1.0, 0.2, -2.0]), torch.tensor([1, 0, 0, 0, 0]), torch.tensor([0, 0, 0, 1, 1]))
    out = ev.compute()
    assert out["auc_per_domain"]["a"] == pytest.approx(0.5)
    assert math.isnan(out["auc_per_domain"]["b"]) and math.isnan(out["auc_per_domain"]["c"])
    assert out["count_per_domain"]["b"] == {"n": 2, "pos": 0, "neg": 2}
    assert out["count_per_domain"]["c"] == {"n": 0, "pos": 0, "neg": 0}
    assert math.isnan(out["pcoc_per_domain"]["b"]) and math.isnan(out["logloss_per_domain"]["c"])
    assert not math.isnan(out["logloss_per_domain"]["b"])
    # only the finite-AUC domain enters the mean and the weighted mean
    assert out["auc_mean"] == pytest.approx(0.5) and out["wauc"] == pytest.approx(0.5)


def test_evaluator_merge_equals_single_and_pickles():
    rng = np.random.default_rng(3)
    logits, labels, domains, users = _random_batches(rng, 1000, 4)
    names = ["w", "x", "y", "z"]
    full = MultiDomainEvaluator(names)
    full.update(logits, labels, domains, users)
    ranks = [MultiDomainEvaluator(names) for _ in range(3)]
    for r, idx in zip(ranks, np.array_split(np.arange(1000), 3)):
        r.update(logits[idx], labels[idx], domains[idx], users[idx])
    merged = MultiDomainEvaluator(names)
    for r in ranks:
        merged.merge(pickle.loads(pickle.dumps(r)))  # as all_gather_object would
    a, b = full.compute(), merged.compute()
    for key in ("auc_overall", "wauc", "auc_mean", "logloss_overall", "gauc"):
        assert b[key] == pytest.approx(a[key], abs=1e-12)
    assert a["auc_per_domain"] == pytest.approx(b["auc_per_domain"], abs=1e-12)
    assert a["count_per_domain"] == b["count_per_domain"]

    merged.reset()
    assert merged.compute()["n"] == 0


def test_evaluator_input_errors():
    ev = MultiDomainEvaluator(["a", "b"])
    with pytest.raises(ValueError, match=r"domain index 2 .*0\.\.1"):
        ev.update(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"domain index -1"):
        ev.update(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        ev.update(torch.zeros(2), torch.tensor([0.0, 0.7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        ev.update(torch.tensor([0.0, float("inf")]), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        ev.update(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="same number of elements"):
        ev.update(torch.zeros(3), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    assert ev.compute()["n"] == 0  # rejected batches leave no trace

    ev.update(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), users=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="users"):
        ev.update(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="different domains"):
        ev.merge(MultiDomainEvaluator(["a", "c"]))
    with pytest.raises(ValueError, match="unique"):
        MultiDomainEvaluator(["a", "a"])


# ------------------------------------------------------------ MultiDomainMetrics
# Pinned: the JSON form of the metrics is what result.json, metrics.jsonl, `polyrec evaluate --json` and the
# committed benchmark records hold. A change here changes every artifact; it must be deliberate.
JSON_KEYS = [
    "auc_per_domain",
    "logloss_per_domain",
    "pcoc_per_domain",
    "count_per_domain",
    "auc_overall",
    "logloss_overall",
    "auc_mean",
    "wauc",
    "n",
    "gauc",
    "gauc_per_domain",
]
RECORD_KEYS = [
    "wauc",
    "auc_overall",
    "auc_mean",
    "logloss_overall",
    "gauc",
    "auc_per_domain",
    "logloss_per_domain",
    "pcoc_per_domain",
    "count_per_domain",
]


def _computed(users: bool = True) -> MultiDomainMetrics:
    rng = np.random.default_rng(5)
    logits, labels, domains, u = _random_batches(rng, 600, 3)
    ev = MultiDomainEvaluator(["a", "b", "c"])
    for lo in range(0, 600, 128):
        sl = slice(lo, lo + 128)
        ev.update(logits[sl], labels[sl], domains[sl], u[sl] if users else None)
    return ev.compute()


def test_metrics_json_keys_and_order_are_pinned():
    m = _computed()
    assert list(m.to_dict()) == JSON_KEYS
    assert list(m.to_record()) == RECORD_KEYS
    assert list(_computed(users=False).to_dict()) == [k for k in JSON_KEYS if not k.startswith("gauc")]
    assert list(_computed(users=False).to_record()) == [k for k in RECORD_KEYS if k != "gauc"]
    assert list(M.METRIC_KEYS) == JSON_KEYS and list(M.RECORD_KEYS) == RECORD_KEYS
    d = m.to_dict()
    assert list(d["count_per_domain"]["a"]) == ["n", "pos", "neg"]
    assert all(type(d[k]) is float for k in ("auc_overall", "logloss_overall", "auc_mean", "wauc", "gauc"))
    assert type(d["n"]) is int and d["n"] == 600
    for key in ("auc_per_domain", "logloss_per_domain", "pcoc_per_domain", "gauc_per_domain"):
        assert list(d[key]) == ["a", "b", "c"] and all(type(v) is float for v in d[key].values())


def test_metric_name_constants_are_the_fields():
    fields = [f.name for f in dataclasses.fields(MultiDomainMetrics)]
    assert sorted(fields + ["n"]) == sorted(JSON_KEYS)
    for key in JSON_KEYS:
        assert getattr(M, key.upper()) == key


def test_metrics_from_dict_round_trips_both_forms():
    for m in (_computed(), _computed(users=False)):
        full, record = m.to_dict(), m.to_record()
        assert json.dumps(MultiDomainMetrics.from_dict(full).to_dict()) == json.dumps(full)
        assert json.dumps(MultiDomainMetrics.from_dict(json.loads(json.dumps(record))).to_record()) == json.dumps(
            record
        )
    m = MultiDomainMetrics.from_dict(_computed().to_record())  # a run record's metrics: no n, no gauc_per_domain
    assert (
        m.n == 600
        and m.gauc_per_domain is None
        and m.count_per_domain["b"] == DomainCount(**m["count_per_domain"]["b"])
    )


def test_metrics_read_like_their_dict():
    m = _computed(users=False)
    assert json.dumps(dict(m)) == json.dumps(m.to_dict())
    assert m["wauc"] == m.wauc and m["n"] == m.n and m.get("gauc") is None and "gauc" not in m
    assert m["count_per_domain"]["a"] == m.count_per_domain["a"].to_dict()
    with pytest.raises(KeyError, match="'gauc' is not a metric of this result; its metrics: auc_per_domain"):
        m["gauc"]
    m.to_dict()["auc_per_domain"]["a"] = 2.0  # the JSON form is a copy
    assert m.auc_per_domain["a"] != 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.wauc = 1.0


def test_metrics_from_dict_errors():
    d = _computed().to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['acc'\]; valid keys: auc_per_domain"):
        MultiDomainMetrics.from_dict({**d, "acc": 1.0})
    with pytest.raises(ValueError, match=r"missing keys \['wauc'\]"):
        MultiDomainMetrics.from_dict({k: v for k, v in d.items() if k != "wauc"})
    with pytest.raises(ValueError, match="says n=5, but its domain counts sum to 600"):
        MultiDomainMetrics.from_dict({**d, "n": 5})
    with pytest.raises(ValueError, match="a domain count is"):
        MultiDomainMetrics.from_dict({**d, "count_per_domain": {"a": {"n": 1}}})


# ------------------------------------------------------------------ statistics
def test_summarize_runs():
    assert summarize_runs([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert summarize_runs([0.7]) == (0.7, 0.0)
    mean, std = summarize_runs([])
    assert math.isnan(mean) and math.isnan(std)


def test_paired_ttest_closed_forms():
    # d = [1, 2, 3]: t = 2*sqrt(3), df = 2, where P(|T|>=t) = 1 - t/sqrt(t^2+2)
    t = 2 * math.sqrt(3)
    assert paired_ttest([3, 4, 5], [2, 2, 2]) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-12)
    # d = [1, 3]: t = 2, df = 1 (Cauchy), P(|T|>=t) = 1 - 2/pi * atan(t)
    assert paired_ttest([1, 3], [0, 0]) == pytest.approx(1 - 2 / math.pi * math.atan(2), rel=1e-12)
    assert math.isnan(paired_ttest([1, 2], [1, 2]))
    assert paired_ttest([2, 3], [1, 2]) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        paired_ttest([1.0], [2.0])


def test_paired_ttest_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    for n in (2, 3, 5, 10, 30, 200, 5000):
        for shift in (0.0, 0.05, 0.3, 2.0):
            a = rng.normal(size=n)
            b = a - shift + rng.normal(scale=0.5, size=n)
            want = stats.ttest_rel(a, b).pvalue
            got = paired_ttest(a, b)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-300), (n, shift)
