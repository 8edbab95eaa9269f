"""Sampled softmax with log Q correction (polyrec.retrieval.loss) against a loop-based eq. 5, and the
negative sampler.

The reference below is written from the paper's formulas with Python loops and ``math.exp`` / ``math.log``
over plain floats; it shares no code with the module.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyrec.retrieval.loss import (
    NegativeSampler,
    log_q_from_counts,
    sampled_softmax_logits,
    sampled_softmax_loss,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- #
# the reference: ADI eq. 4-5 with loops
# --------------------------------------------------------------------------- #
def reference_rows(
    user, item, ids, log_q, tau=1.0, extra_item=None, extra_ids=None, extra_log_q=None, correct=True
) -> list[float]:
    """Per-row loss: −f~(pos) + log(exp f~(pos) + Σ_negatives exp f~), accidental hits skipped."""
    user, item, ids, log_q = user.tolist(), item.tolist(), ids.tolist(), log_q.tolist()
    extras = []
    if extra_item is not None:
        extras = list(zip(extra_item.tolist(), extra_ids.tolist(), extra_log_q.tolist()))

    def f_tilde(u, v, lq):
        score = sum(a * b for a, b in zip(u, v)) / tau
        return score - lq if correct else score

    rows = []
    for b in range(len(user)):
        pos = f_tilde(user[b], item[b], log_q[b])
        terms = [pos]
        for c in range(len(user)):
            if c != b and ids[c] != ids[b]:
                terms.append(f_tilde(user[b], item[c], log_q[c]))
        for v, vid, lq in extras:
            if vid != ids[b]:
                terms.append(f_tilde(user[b], v, lq))
        top = max(terms)
        log_denominator = top + math.log(sum(math.exp(t - top) for t in terms))
        rows.append(log_denominator - pos)
    return rows


def reference_loss(*args, weight=None, **kwargs) -> float:
    rows = reference_rows(*args, **kwargs)
    w = [1.0] * len(rows) if weight is None else weight.tolist()
    return sum(wi * r for wi, r in zip(w, rows)) / sum(w)


def random_batch(seed: int, b: int, e: int, m: int, n_ids: int = 1000):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(b, e, generator=g, dtype=torch.float64)
    item = torch.randn(b, e, generator=g, dtype=torch.float64)
    ids = torch.randint(0, n_ids, (b,), generator=g)
    log_q = -torch.rand(b, generator=g, dtype=torch.float64) * 5
    extra = dict(
        extra_item=torch.randn(m, e, generator=g, dtype=torch.float64),
        extra_ids=torch.randint(0, n_ids, (m,), generator=g),
        extra_log_q=-torch.rand(m, generator=g, dtype=torch.float64) * 5,
    )
    return user, item, ids, log_q, extra


# --------------------------------------------------------------------------- #
# (1) the loss equals eq. 5
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("correct", [True, False])
@pytest.mark.parametrize("tau", [1.0, 0.05, 3.0])
@pytest.mark.parametrize("m", [0, 7])
def test_loss_matches_loop_reference(correct, tau, m):
    user, item, ids, log_q, extra = random_batch(seed=m + int(tau * 100), b=9, e=5, m=m)
    kw = extra if m else {}
    got = sampled_softmax_loss(user, item, ids, log_q, temperature=tau, correct=correct, **kw)
    want = reference_loss(user, item, ids, log_q, tau, correct=correct, **kw)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 7),
    e=st.integers(1, 4),
    m=st.integers(0, 5),
    n_ids=st.integers(1, 6),  # few ids: accidental hits are common
    tau=st.sampled_from([0.1, 0.5, 1.0, 2.0]),
    correct=st.booleans(),
    weighted=st.booleans(),
)
def test_loss_matches_loop_reference_property(seed, b, e, m, n_ids, tau, correct, weighted):
    user, item, ids, log_q, extra = random_batch(seed, b, e, m, n_ids)
    kw = extra if m else {}
    weight = torch.rand(b, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) + 0.1
    weight = weight if weighted else None
    got = sampled_softmax_loss(user, item, ids, log_q, temperature=tau, correct=correct, weight=weight, **kw)
    want = reference_loss(user, item, ids, log_q, tau, correct=correct, weight=weight, **kw)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_loss_is_cross_entropy_of_the_logit_matrix():
    user, item, ids, log_q, extra = random_batch(seed=3, b=6, e=4, m=5, n_ids=4)
    logits = sampled_softmax_logits(user, item, ids, log_q, temperature=0.5, **extra)
    assert logits.shape == (6, 11)
    rows = reference_rows(user, item, ids, log_q, 0.5, **extra)
    diag = logits.diagonal()
    lse = torch.logsumexp(logits, dim=1)
    assert torch.allclose(lse - diag, torch.tensor(rows, dtype=torch.float64))
    # Entry (b, c) is score / τ − log Q(c) where it is not masked.
    cand = torch.cat([item, extra["extra_item"]])
    cand_lq = torch.cat([log_q, extra["extra_log_q"]])
    expected = user @ cand.T / 0.5 - cand_lq
    finite = torch.isfinite(logits)
    assert torch.allclose(logits[finite], expected[finite])


# --------------------------------------------------------------------------- #
# (2) the correction term
# --------------------------------------------------------------------------- #
def test_correction_closed_form_with_equal_scores():
    # Every user and item is the same vector, so every score is the same s; then eq. 4-5 give
    # loss_b = −(s − q_b) + log Σ_c exp(s − q_c) = q_b + log Σ_c exp(−q_c), and log B without correction.
    b = 4
    v = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64).expand(b, 3)
    q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    ids = torch.arange(b)
    lse = math.log(sum(math.exp(-x) for x in q.tolist()))
    want = sum(x + lse for x in q.tolist()) / b
    assert sampled_softmax_loss(v, v, ids, q).item() == pytest.approx(want, rel=1e-12)
    assert sampled_softmax_loss(v, v, ids, q, correct=False).item() == pytest.approx(math.log(b), rel=1e-12)


def test_constant_shift_of_log_q_cancels_but_one_item_does_not():
    user, item, ids, log_q, extra = random_batch(seed=11, b=8, e=3, m=4)
    base = sampled_softmax_loss(user, item, ids, log_q, **extra)
    shifted = dict(extra, extra_log_q=extra["extra_log_q"] - 2.5)
    assert sampled_softmax_loss(user, item, ids, log_q - 2.5, **shifted).item() == pytest.approx(base.item(), rel=1e-12)

    # Lowering one in-batch item's log Q by δ raises its logit in every row by δ, as eq. 4 says.
    changed = log_q.clone()
    changed[2] -= 1.0
    got = sampled_softmax_loss(user, item, ids, changed, **extra).item()
    assert got != pytest.approx(base.item())
    assert got == pytest.approx(reference_loss(user, item, ids, changed, **extra), rel=1e-10)


# --------------------------------------------------------------------------- #
# (3) accidental hits
# --------------------------------------------------------------------------- #
def test_duplicate_in_batch_ids_are_masked():
    user, item, _, log_q, _ = random_batch(seed=5, b=4, e=3, m=0)
    ids = torch.tensor([3, 3, 5, 8])
    logits = sampled_softmax_logits(user, item, ids, log_q)
    assert logits[0, 1] == -math.inf and logits[1, 0] == -math.inf
    assert torch.isfinite(logits.diagonal()).all()
    assert torch.isfinite(logits[2:]).all() and torch.isfinite(logits[:2, 2:]).all()
    # Row 0's loss is the softmax over the candidates {0, 2, 3} alone.
    keep = [0, 2, 3]
    row0 = torch.logsumexp(logits[0, keep], 0) - logits[0, 0]
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(4), reduction="none")
    assert rows[0].item() == pytest.approx(row0.item())
    got = sampled_softmax_loss(user, item, ids, log_q).item()
    assert got == pytest.approx(reference_loss(user, item, ids, log_q), rel=1e-12)


def test_extra_negative_equal_to_the_positive_is_masked():
    user, item, _, log_q, extra = random_batch(seed=6, b=3, e=3, m=3)
    ids = torch.tensor([1, 2, 5])
    extra["extra_ids"] = torch.tensor([5, 9, 1])
    logits = sampled_softmax_logits(user, item, ids, log_q, **extra)
    assert logits[2, 3] == -math.inf and logits[0, 5] == -math.inf
    assert torch.isinf(logits).sum() == 2
    got = sampled_softmax_loss(user, item, ids, log_q, **extra).item()
    assert got == pytest.approx(reference_loss(user, item, ids, log_q, **extra), rel=1e-12)


def test_the_positive_is_never_masked():
    user, item, _, log_q, extra = random_batch(seed=7, b=5, e=2, m=2)
    ids = torch.zeros(5, dtype=torch.long)
    extra["extra_ids"] = torch.zeros(2, dtype=torch.long)
    logits = sampled_softmax_logits(user, item, ids, log_q, **extra)
    assert torch.isfinite(logits.diagonal()).all()
    assert torch.isinf(logits).sum() == 5 * 6  # everything else is a hit


@pytest.mark.parametrize("b,m", [(1, 0), (2, 0), (1, 3), (3, 2)])
def test_row_with_only_accidental_hits_has_zero_loss_and_finite_gradient(b, m):
    user, item, _, log_q, extra = random_batch(seed=8, b=b, e=3, m=m)
    user.requires_grad_(True)
    item.requires_grad_(True)
    ids = torch.full((b,), 4)
    kw = dict(extra, extra_ids=torch.full((m,), 4)) if m else {}
    loss = sampled_softmax_loss(user, item, ids, log_q, **kw)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(user.grad).all() and torch.isfinite(item.grad).all()


# --------------------------------------------------------------------------- #
# (4) gradients
# --------------------------------------------------------------------------- #
def test_gradient_flows_and_is_finite():
    user, item, _, log_q, extra = random_batch(seed=9, b=6, e=4, m=3)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])  # one accidental hit
    for t in (user, item, extra["extra_item"]):
        t.requires_grad_(True)
    loss = sampled_softmax_loss(user, item, ids, log_q, temperature=0.2, **extra)
    loss.backward()
    for t in (user, item, extra["extra_item"]):
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_gradient_matches_finite_differences():
    user, item, ids, log_q, extra = random_batch(seed=10, b=3, e=2, m=2, n_ids=2)
    user.requires_grad_(True)
    item.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u, v: sampled_softmax_loss(u, v, ids, log_q, temperature=0.7, **extra), (user, item)
    )


# --------------------------------------------------------------------------- #
# (5) weights
# --------------------------------------------------------------------------- #
def test_weighted_mean():
    user, item, ids, log_q, extra = random_batch(seed=12, b=5, e=3, m=2)
    rows = reference_rows(user, item, ids, log_q, **extra)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    want = sum(a * r for a, r in zip(w.tolist(), rows)) / w.sum().item()
    got = sampled_softmax_loss(user, item, ids, log_q, weight=w, **extra).item()
    assert got == pytest.approx(want, rel=1e-12)
    ones = sampled_softmax_loss(user, item, ids, log_q, weight=torch.ones(5), **extra)
    assert ones.item() == pytest.approx(sampled_softmax_loss(user, item, ids, log_q, **extra).item(), rel=1e-12)


@pytest.mark.parametrize(
    "weight,match",
    [
        (torch.zeros(3), "sums to 0"),
        (torch.tensor([1.0, -1.0, 1.0]), "non-negative"),
        (torch.tensor([1.0, math.nan, 1.0]), "finite"),
        (torch.ones(4), r"shape \(3,\)"),
    ],
)
def test_bad_weights(weight, match):
    user, item, ids, log_q, _ = random_batch(seed=13, b=3, e=2, m=0)
    with pytest.raises(ValueError, match=match):
        sampled_softmax_loss(user, item, ids, log_q, weight=weight)


# --------------------------------------------------------------------------- #
# argument checks
# --------------------------------------------------------------------------- #
def test_argument_errors():
    user, item, ids, log_q, extra = random_batch(seed=14, b=3, e=2, m=2)
    for tau in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            sampled_softmax_loss(user, item, ids, log_q, temperature=tau)
    with pytest.raises(ValueError, match="item must have the shape of user"):
        sampled_softmax_loss(user, item[:2], ids, log_q)
    with pytest.raises(TypeError, match="item_ids must be an integer"):
        sampled_softmax_loss(user, item, ids.double(), log_q)
    with pytest.raises(ValueError, match=r"item_ids must have shape \(3,\)"):
        sampled_softmax_loss(user, item, ids[:2], log_q)
    with pytest.raises(ValueError, match=r"log_q must have shape \(3,\)"):
        sampled_softmax_loss(user, item, ids, log_q[:1])
    with pytest.raises(TypeError, match="user must be a floating-point"):
        sampled_softmax_loss(user.long(), item, ids, log_q)
    with pytest.raises(ValueError, match="user is empty"):
        sampled_softmax_loss(user[:0], item[:0], ids[:0], log_q[:0])
    with pytest.raises(ValueError, match="extra_ids"):
        sampled_softmax_loss(user, item, ids, log_q, extra_item=extra["extra_item"])
    with pytest.raises(ValueError, match="embedding size 2"):
        sampled_softmax_loss(user, item, ids, log_q, **dict(extra, extra_item=torch.zeros(2, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"extra_log_q must have shape \(2,\)"):
        sampled_softmax_loss(user, item, ids, log_q, **dict(extra, extra_log_q=torch.zeros(3)))


# --------------------------------------------------------------------------- #
# log Q from counts
# --------------------------------------------------------------------------- #
def test_log_q_from_counts():
    got = log_q_from_counts(torch.tensor([6, 2, 0, 2]))
    assert got.dtype == torch.get_default_dtype()
    expected = [math.log(0.6), math.log(0.2), math.log(0.1), math.log(0.2)]  # count 0: floor 1 / 10
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert log_q_from_counts(torch.tensor([1.0, 3.0], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "counts,match",
    [
        (torch.tensor([1, -1, 2]), "position 1 holds -1"),
        (torch.zeros(3), "all zero"),
        (torch.zeros(0), "empty"),
        (torch.ones(2, 2), "1-D"),
        (torch.tensor([1.0, math.inf]), "finite"),
    ],
)
def test_log_q_from_counts_errors(counts, match):
    with pytest.raises(ValueError, match=match):
        log_q_from_counts(counts)


# --------------------------------------------------------------------------- #
# (6) NegativeSampler
# --------------------------------------------------------------------------- #
CORPUS = torch.tensor([10, 3, 42, 7, 99])
COUNTS = torch.tensor([0, 1, 5, 10, 3])


@pytest.mark.parametrize("mode", ["uniform", "frequency"])
def test_sampler_is_deterministic_for_a_seed(mode):
    s = NegativeSampler(CORPUS, COUNTS, mode=mode, num=50)
    a = s.sample(torch.Generator().manual_seed(123))
    b = s.sample(torch.Generator().manual_seed(123))
    c = s.sample(torch.Generator().manual_seed(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (50,) and a[0].dtype == torch.long and a[1].dtype == torch.float32


def test_uniform_draws_corpus_items_with_log_one_over_c():
    s = NegativeSampler(CORPUS, mode="uniform", num=2000)
    ids, log_q = s.sample(torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == set(CORPUS.tolist())
    assert torch.allclose(log_q, torch.full((2000,), -math.log(5)))


def test_frequency_draws_follow_smoothed_counts():
    n = 200_000
    s = NegativeSampler(CORPUS, COUNTS, mode="frequency", num=n)
    ids, log_q = s.sample(torch.Generator().manual_seed(1))
    smoothed = (COUNTS + 1).double()
    p = smoothed / smoothed.sum()
    observed = torch.tensor([(ids == i).sum().item() for i in CORPUS.tolist()], dtype=torch.float64)
    chi2 = (((observed - n * p) ** 2) / (n * p)).sum().item()
    assert chi2 < 30.0  # 4 degrees of freedom: P(chi2 > 30) < 1e-5
    # The item with count 0 is drawn too (the +1 smoothing).
    assert observed[0] > 0
    # Each draw's log Q is the log probability of its item.
    lookup = dict(zip(CORPUS.tolist(), torch.log(p).tolist()))
    assert torch.allclose(log_q.double(), torch.tensor([lookup[i] for i in ids.tolist()], dtype=torch.float64))


def test_sampler_feeds_the_loss():
    s = NegativeSampler(CORPUS, COUNTS, mode="frequency", num=4)
    ids, lq = s.sample(torch.Generator().manual_seed(2))
    table = torch.randn(100, 3, generator=torch.Generator().manual_seed(3))
    pos = torch.tensor([3, 42])
    loss = sampled_softmax_loss(
        table[:2],
        table[pos],
        pos,
        torch.log(torch.tensor([0.5, 0.5])),
        extra_item=table[ids],
        extra_ids=ids,
        extra_log_q=lq,
    )
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(corpus_items=CORPUS, mode="uniform", num=0), ValueError, "num must be an integer >= 1"),
        (
            dict(corpus_items=torch.zeros(0, dtype=torch.long), mode="uniform", num=1),
            ValueError,
            "corpus_items is empty",
        ),
        (
            dict(corpus_items=CORPUS, counts=COUNTS[:3], mode="frequency", num=1),
            ValueError,
            r"one entry per corpus item \(5\)",
        ),
        (dict(corpus_items=CORPUS, counts=COUNTS - 2, mode="frequency", num=1), ValueError, "non-negative"),
        (dict(corpus_items=CORPUS, counts=COUNTS, mode="popular", num=1), ValueError, "mode must be one of"),
        (dict(corpus_items=CORPUS, mode="frequency", num=1), ValueError, "needs counts"),
        (dict(corpus_items=torch.tensor([1, 2, 1]), mode="uniform", num=1), ValueError, "duplicate"),
        (dict(corpus_items=CORPUS.float(), mode="uniform", num=1), TypeError, "integer tensor"),
    ],
)
def test_sampler_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        NegativeSampler(**kwargs)
