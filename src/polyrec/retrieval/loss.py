"""Sampled softmax with log Q correction, the training loss of the two-tower retrieval models.

A pair's score is the inner product ``f(v|u,d) = <u, v>`` of the user and item embeddings (both computed
for domain ``d``). The ADI paper (Jiang et al., eq. 4-5) trains with a sampled softmax whose logits are
corrected for the probability ``Q(v)`` that item ``v`` shows up as a candidate::

    f~(v|u,d) = f(v|u,d) / τ − log Q(v)
    loss(u)   = −f~(v+|u,d) + log( exp f~(v+|u,d) + Σ_{v' negative} exp f~(v'|u,d) )

Candidates. Row ``b`` of a batch has its own item as the positive; its negatives are the other rows'
items (in-batch negatives) plus any extra items drawn from the domain's corpus by a
:class:`NegativeSampler`. Mixing the two ("mixed negative sampling") is nothing more than passing both to
the loss: every candidate column is corrected by the log probability of the distribution it came from,
``log_q[c]`` for in-batch column ``c`` (the frequency of ``v`` among training positives,
:func:`log_q_from_counts`) and ``extra_log_q[m]`` for extra column ``m`` (the sampler's own distribution).
Choices made:

- ``log Q`` is a per-draw probability (the chance that one in-batch slot, or one sampler draw, is ``v``),
  not an expected count. Every corrected column ``exp f~`` is then an importance-sampling estimate of the
  same full-corpus softmax denominator, whichever source it came from, so the sources mix without
  reweighting. A constant added to every candidate's log Q (a factor such as the batch size applied to
  every column, or another normalisation of the counts) shifts every logit of a row by the same amount
  and cancels in the softmax. A constant added to one source only does not cancel: scaling in-batch
  probabilities by B and sampled ones by M (expected counts) would tilt the loss unless B = M.
- The positive's logit is corrected too (eq. 4 applies to every candidate, the positive included); the
  positive of row ``b`` is in-batch column ``b``, so it gets ``log_q[b]``.
- Accidental hits are masked: an in-batch column ``c != b`` holding the same item id as row ``b``'s
  positive, and an extra column holding that id, get ``−inf`` and leave the denominator. The positive
  itself is never masked, so every row stays finite; a row whose negatives are all accidental hits has
  loss ``0``.
- The loss is the cross-entropy of the ``[B, B+M]`` logit matrix (:func:`sampled_softmax_logits`) with
  target ``b`` in row ``b``, averaged over rows, optionally weighted.

Public API: :func:`sampled_softmax_logits`, :func:`sampled_softmax_loss`, :func:`log_q_from_counts`,
:class:`NegativeSampler`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NegativeSampler",
    "log_q_from_counts",
    "sampled_softmax_logits",
    "sampled_softmax_loss",
]

SAMPLER_MODES = ("uniform", "frequency")


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    return x


def _check_float(x: Tensor, name: str, ndim: int) -> None:
    _check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}. Convert it with .float().")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}.")


def _check_ids(x: Tensor, name: str, n: int) -> None:
    _check_tensor(x, name)
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor of item ids, got dtype {x.dtype}. Convert it with .long().")
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one id per candidate), got {tuple(x.shape)}.")


def _check_log_q(x: Tensor, name: str, n: int) -> None:
    _check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}. Convert it with .float().")
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one log probability per candidate), got {tuple(x.shape)}.")


# --------------------------------------------------------------------------- #
# the loss
# --------------------------------------------------------------------------- #
def sampled_softmax_logits(
    user: Tensor,
    item: Tensor,
    item_ids: Tensor,
    log_q: Tensor,
    *,
    temperature: float = 1.0,
    extra_item: Tensor | None = None,
    extra_ids: Tensor | None = None,
    extra_log_q: Tensor | None = None,
    correct: bool = True,
) -> Tensor:
    """The masked, log-Q-corrected logits of a batch against its candidates.

    Column ``c < B`` is in-batch item ``item[c]``, column ``B + m`` is extra item ``extra_item[m]``; row
    ``b``'s positive is column ``b`` (the diagonal of the first ``B`` columns). Entry ``(b, c)`` is
    ``<user[b], candidate[c]> / temperature − log Q(c)`` (the correction only when ``correct``), or
    ``−inf`` when ``c`` is an accidental hit of row ``b``: a column other than ``b`` whose item id equals
    ``item_ids[b]``.

    Args:
        user: user embeddings.
        item: item embeddings of each row's positive; row ``b``'s in-batch negatives are the other rows.
        item_ids: the id of each row's positive (used to find accidental hits).
        log_q: log probability of each in-batch item as a candidate (:func:`log_q_from_counts`); finite.
        temperature: τ > 0; the scores are divided by it before the correction.
        extra_item: embeddings of extra negatives sampled from the corpus (e.g. by
            :class:`NegativeSampler`); shared by every row.
        extra_ids: their item ids; required with ``extra_item``.
        extra_log_q: their log probability under the sampler; required with ``extra_item``.
        correct: subtract log Q (eq. 4); False gives the plain sampled softmax.

    Shape:
        user, item ``[B, E]``; item_ids, log_q ``[B]``; extra_item ``[M, E]``; extra_ids, extra_log_q
        ``[M]``; returns ``[B, B + M]`` (``M = 0`` without extra negatives).

    Raises:
        ValueError, TypeError: a shape, dtype or argument that does not fit (named in the message).
    """
    _check_float(user, "user", 2)
    _check_float(item, "item", 2)
    b, e = user.shape
    if b == 0:
        raise ValueError("user is empty (shape (0, E)); a batch needs at least one row.")
    if item.shape != user.shape:
        raise ValueError(
            f"item must have the shape of user, {tuple(user.shape)} (one positive per row, same embedding "
            f"size), got {tuple(item.shape)}."
        )
    if item.dtype != user.dtype:
        raise TypeError(f"item must have the dtype of user ({user.dtype}), got {item.dtype}.")
    _check_ids(item_ids, "item_ids", b)
    _check_log_q(log_q, "log_q", b)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}. Use 1.0 for no scaling.")

    extras = {"extra_item": extra_item, "extra_ids": extra_ids, "extra_log_q": extra_log_q}
    given = [k for k, v in extras.items() if v is not None]
    if given and len(given) != len(extras):
        missing = [k for k in extras if k not in given]
        raise ValueError(
            f"extra negatives need extra_item, extra_ids and extra_log_q together, but {missing} "
            f"{'is' if len(missing) == 1 else 'are'} None while {given} {'is' if len(given) == 1 else 'are'} given."
        )

    candidates, cand_ids, cand_log_q = item, item_ids, log_q
    if extra_item is not None:
        assert extra_ids is not None and extra_log_q is not None
        _check_float(extra_item, "extra_item", 2)
        m = extra_item.shape[0]
        if extra_item.shape[1] != e:
            raise ValueError(f"extra_item must have embedding size {e} like user, got shape {tuple(extra_item.shape)}.")
        _check_ids(extra_ids, "extra_ids", m)
        _check_log_q(extra_log_q, "extra_log_q", m)
        candidates = torch.cat([item, extra_item.to(item.dtype)], dim=0)
        cand_ids = torch.cat([item_ids.long(), extra_ids.to(item_ids.device).long()])
        cand_log_q = torch.cat([log_q, extra_log_q.to(log_q.device, log_q.dtype)])

    logits = user @ candidates.T / temperature
    if correct:
        logits = logits - cand_log_q.to(logits.dtype).unsqueeze(0)
    hits = item_ids.long().unsqueeze(1) == cand_ids.long().unsqueeze(0)
    # The positive (column b of row b) is never a hit of its own row.
    hits[:, :b].fill_diagonal_(False)
    return logits.masked_fill(hits, float("-inf"))


def sampled_softmax_loss(
    user: Tensor,
    item: Tensor,
    item_ids: Tensor,
    log_q: Tensor,
    *,
    temperature: float = 1.0,
    extra_item: Tensor | None = None,
    extra_ids: Tensor | None = None,
    extra_log_q: Tensor | None = None,
    weight: Tensor | None = None,
    correct: bool = True,
) -> Tensor:
    """Sampled softmax loss with log Q correction (ADI eq. 4-5), averaged over the rows.

    Row ``b``'s loss is the cross-entropy of row ``b`` of :func:`sampled_softmax_logits` with target
    ``b``: ``−f~(pos) + log(exp f~(pos) + Σ_negatives exp f~(v'))``, accidental hits left out.

    Args:
        user, item, item_ids, log_q, temperature, extra_item, extra_ids, extra_log_q, correct: as in
            :func:`sampled_softmax_logits`.
        weight: non-negative weight of each row; the result is ``Σ w_b loss_b / Σ w_b``. None: the plain
            mean.

    Shape:
        as :func:`sampled_softmax_logits`; weight ``[B]``; returns a scalar.

    Raises:
        ValueError, TypeError: as :func:`sampled_softmax_logits`; a weight of the wrong shape, a negative
            or non-finite weight, or weights summing to 0.

    Example:
        >>> u = torch.eye(2)
        >>> loss = sampled_softmax_loss(u, u, torch.tensor([0, 1]), torch.zeros(2))
        >>> round(loss.item(), 4)  # log(1 + e^-1) for each row
        0.3133
    """
    logits = sampled_softmax_logits(
        user,
        item,
        item_ids,
        log_q,
        temperature=temperature,
        extra_item=extra_item,
        extra_ids=extra_ids,
        extra_log_q=extra_log_q,
        correct=correct,
    )
    b = logits.shape[0]
    target = torch.arange(b, device=logits.device)
    if weight is None:
        return F.cross_entropy(logits, target)
    _check_tensor(weight, "weight")
    if weight.shape != (b,):
        raise ValueError(f"weight must have shape ({b},) (one weight per row), got {tuple(weight.shape)}.")
    w = weight.to(logits.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weight must be finite and non-negative, got {weight.tolist()}.")
    total = w.sum()
    if float(total) <= 0:
        raise ValueError(
            f"weight sums to {float(total)}; at least one row needs a positive weight (pass weight=None for "
            f"the plain mean)."
        )
    rows = F.cross_entropy(logits, target, reduction="none")
    return (rows * w).sum() / total


# --------------------------------------------------------------------------- #
# log Q of in-batch candidates
# --------------------------------------------------------------------------- #
def _check_counts(counts: object, name: str) -> Tensor:
    x = _check_tensor(counts, name)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real-valued tensor of counts, got dtype {x.dtype}.")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one count per item), got shape {tuple(x.shape)}.")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty; pass one count per item.")
    xd = x.double()
    if not bool(torch.isfinite(xd).all()):
        raise ValueError(f"{name} contains NaN or infinite values; counts must be finite.")
    if bool((xd < 0).any()):
        first = int(torch.nonzero(xd < 0)[0, 0])
        raise ValueError(
            f"{name} must be non-negative, but position {first} holds {xd[first].item()}. Counts are training "
            f"frequencies."
        )
    return xd


def log_q_from_counts(counts: Tensor) -> Tensor:
    """Log probability of each item as an in-batch candidate: ``log(count / total)``.

    In-batch candidates are the training positives of the batch, so an item's chance of filling one
    in-batch slot is its share of the training positives. Items never seen in training (count 0) cannot be
    in-batch candidates, but they may still reach the loss as extra negatives or be looked up by mistake;
    they get the floor ``log(1 / total)``, i.e. they are treated as if seen once (``min_count = 1``), so the
    result is always finite.

    Args:
        counts: how often each item is a positive in the training rows (integers or floats).

    Shape:
        counts ``[I]``; returns ``[I]``, of the dtype of ``counts`` when it is floating, else the default
        float dtype.

    Raises:
        ValueError: counts that are not 1-D, empty, negative, non-finite, or all zero.

    Example:
        >>> log_q_from_counts(torch.tensor([3, 1, 0])).exp()
        tensor([0.7500, 0.2500, 0.2500])
    """
    xd = _check_counts(counts, "counts")
    total = xd.sum()
    if float(total) <= 0:
        raise ValueError("counts are all zero; log Q needs at least one training positive.")
    out = torch.log(xd.clamp(min=1.0) / total)
    dtype = counts.dtype if counts.is_floating_point() else torch.get_default_dtype()
    return out.to(dtype)


# --------------------------------------------------------------------------- #
# extra negatives from the corpus
# --------------------------------------------------------------------------- #
class NegativeSampler:
    """Draws extra negatives (with replacement) from one domain's corpus, with their log Q.

    Modes:

    - ``"uniform"``: every corpus item with probability ``1 / C``.
    - ``"frequency"``: item ``i`` with probability ``(counts[i] + 1) / Σ (counts + 1)``. The ``+1``
      smoothing lets every corpus item be drawn, including those never seen in training, so the sampled
      negatives cover the whole corpus the metrics rank against.

    The returned log Q is the log probability of one draw under this distribution, which is what
    :func:`sampled_softmax_loss` expects as ``extra_log_q``. Draws use the generator passed to
    :meth:`sample`, so a seeded generator gives the same negatives; the generator must live on the device
    of ``corpus_items``.

    Args:
        corpus_items: item ids of the corpus, unique.
        counts: training frequency of each corpus item, aligned with ``corpus_items``; required by
            ``"frequency"``, ignored (but checked) by ``"uniform"``.
        mode: ``"uniform"`` or ``"frequency"``.
        num: how many negatives each :meth:`sample` call draws (≥ 1).

    Shape:
        corpus_items ``[C]`` long; counts ``[C]``; :meth:`sample` returns ids ``[num]`` long and log_q
        ``[num]`` float32.

    Example:
        >>> s = NegativeSampler(torch.tensor([4, 7]), mode="uniform", num=3)
        >>> ids, log_q = s.sample(torch.Generator().manual_seed(0))
        >>> ids.shape, bool(torch.allclose(log_q, torch.full((3,), -math.log(2))))
        (torch.Size([3]), True)
    """

    def __init__(self, corpus_items: Tensor, counts: Tensor | None = None, *, mode: str = "uniform", num: int) -> None:
        _check_tensor(corpus_items, "corpus_items")
        if corpus_items.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(
                f"corpus_items must be an integer tensor of item ids, got dtype {corpus_items.dtype}. "
                f"Convert it with .long()."
            )
        if corpus_items.dim() != 1:
            raise ValueError(f"corpus_items must be 1-D, got shape {tuple(corpus_items.shape)}.")
        c = corpus_items.numel()
        if c == 0:
            raise ValueError("corpus_items is empty; a domain's corpus needs at least one item to sample from.")
        if torch.unique(corpus_items).numel() != c:
            raise ValueError(
                f"corpus_items has duplicate ids ({c - torch.unique(corpus_items).numel()} repeated); each "
                f"corpus item must appear once, or its log Q would be wrong."
            )
        if mode not in SAMPLER_MODES:
            raise ValueError(f"mode must be one of {SAMPLER_MODES}, got {mode!r}.")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an integer >= 1 (negatives per draw), got {num!r}.")
        if counts is not None:
            xd = _check_counts(counts, "counts")
            if xd.numel() != c:
                raise ValueError(
                    f"counts must have one entry per corpus item ({c}), got {xd.numel()}; align counts with "
                    f"corpus_items."
                )
        elif mode == "frequency":
            raise ValueError("mode 'frequency' needs counts (the training frequency of each corpus item).")

        self.corpus_items = corpus_items.long()
        self.mode = mode
        self.num = num
        device = self.corpus_items.device
        if mode == "uniform":
            self.probs = torch.full((c,), 1.0 / c, dtype=torch.float64, device=device)
        else:
            smoothed = xd.to(device) + 1.0
            self.probs = smoothed / smoothed.sum()
        self.log_probs = torch.log(self.probs).float()

    @property
    def corpus_size(self) -> int:
        return int(self.corpus_items.numel())

    def sample(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``num`` negatives with replacement.

        Args:
            generator: the random source (seed it for reproducible draws).

        Returns:
            ``(ids, log_q)``: the item ids drawn and the log probability of each under this sampler.

        Shape:
            ids ``[num]`` long; log_q ``[num]`` float32.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
        if self.mode == "uniform":
            pos = torch.randint(0, self.corpus_size, (self.num,), generator=generator, device=self.corpus_items.device)
        else:
            pos = torch.multinomial(self.probs, self.num, replacement=True, generator=generator)
        return self.corpus_items[pos], self.log_probs[pos]

    def __repr__(self) -> str:
        return f"NegativeSampler(mode={self.mode!r}, corpus_size={self.corpus_size}, num={self.num})"
