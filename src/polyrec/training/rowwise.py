"""Row-wise optimiser steps for domain banks (``train.bank_update: rowwise``).

A domain bank (:func:`polyrec.layers.bank.mark_domain_bank`: STAR's domain weights, MLoRA's A/B, routed
per-domain towers and gates, Partitioned Normalization's per-domain affine) holds one row, or k rows, per
domain. A step on a batch of a few domains gives the other rows no gradient, but a dense ``Adam`` still
moves them through their moments. :func:`rowwise_step` steps the optimiser on every other parameter as
usual and, for the banks, gathers the rows of the domains present, updates them and their moments
(``exp_avg``, ``exp_avg_sq``) with Adam's or AdamW's rule, and writes them back: the rows of absent domains,
and their moments, stay bit-unchanged. Each row keeps its own step count (``row_step`` in the optimiser
state, shape ``[rows]``) for the bias corrections: lazy Adam. With every domain present at every step it is
dense Adam (equal up to rounding).

Weight decay: AdamW's decoupled decay, and Adam's L2 term, act on the present rows only.

The gradient is either the dense one back-propagation computes (zero on absent rows) or, where the
forward pass gathered the bank's rows with :func:`polyrec.layers.domain.gather_rows` under
:func:`~polyrec.layers.domain.bank_row_gradients` (the trainer's standard step does), a sparse one holding
the gathered rows only, so that no tensor the size of the whole bank is written in the step; either way
only the present rows are read. Clipping measures the same norm in both forms
(:func:`clip_grad_norm`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..layers.bank import DomainBank

#: The values of ``train.bank_update``.
BANK_UPDATES = ("dense", "rowwise")
#: The optimisers (``train.optimizer``) a row-wise update supports.
ROWWISE_OPTIMIZERS = ("adam", "adamw")
#: The optimiser-state key of a bank's per-row step counts (Adam's own key, which its loading code requires).
ROW_STEP = "step"


def _present(domains: Tensor | Iterable[int], device: torch.device) -> Tensor:
    if not isinstance(domains, Tensor):
        domains = torch.tensor(sorted(set(int(d) for d in domains)), dtype=torch.long)
    return torch.unique(domains.to(device=device, dtype=torch.long))


def _hyper(optimizer: torch.optim.Optimizer, group: dict) -> tuple[float, float, float, float, float, bool]:
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise TypeError(
            f"a row-wise bank update needs an Adam or AdamW optimiser, got {type(optimizer).__name__} "
            "(set train.bank_update: dense)"
        )
    for flag in ("amsgrad", "maximize", "capturable", "differentiable"):  # fused: only the other parameters
        if group.get(flag):
            raise ValueError(f"a row-wise bank update does not support the optimiser option {flag}=True")
    lr = group["lr"]
    lr = float(lr) if not isinstance(lr, Tensor) else float(lr.item())
    beta1, beta2 = group["betas"]
    decoupled = bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
    return lr, float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]), decoupled


def _sparse_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(row indices, their gradient rows) of a sparse bank gradient, each row once: as it is when no row
    repeats (a gather of distinct domains; no copy), else coalesced (repeated rows summed)."""
    if not grad.is_coalesced():
        index = grad._indices()[0]
        if torch.unique(index).numel() == index.numel():
            return index, grad._values()
        grad = grad.coalesce()
    return grad.indices()[0], grad.values()


def _grad_rows(grad: Tensor, rows: Tensor) -> Tensor:
    """Rows ``rows`` (ascending) of a bank's gradient, dense or sparse (a sparse one's other rows, which a
    gather of clamped indices may hold as zeros, are not read)."""
    if not grad.is_sparse:
        return grad.index_select(0, rows)
    index, values = _sparse_rows(grad)
    out = values.new_zeros((len(rows), *values.shape[1:]))
    if len(index) and len(rows):
        at = torch.searchsorted(rows, index).clamp_(max=len(rows) - 1)
        hit = rows.index_select(0, at) == index
        out.index_copy_(0, at[hit], values[hit])
    return out


#: Rows smaller than this (elements) are gathered into blocks of equal step count for the fused kernel
#: (:func:`_update_rows_gathered`) rather than given a view each: a view per row costs about 7 us, which a
#: small row's update does not repay (measured: MLP+MLoRA at 10,000 domains, mixed batches, 128 -> 312 ms
#: with a view per row; gathered blocks 95 -> 79 ms against the unfused rule; STAR's rows of 12k elements
#: gain 2x in place).
FUSED_MIN_ROW = 1024
#: The dtypes torch's fused Adam kernels take.
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _fused_kernel(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, hyper: tuple) -> None:
    """torch's fused Adam / AdamW kernel on tensors of equal dtype, each with its own (already advanced) step."""
    lr, beta1, beta2, eps, weight_decay, decoupled = hyper
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )


@torch.no_grad()
def _update_rows(p: Tensor, grad: Tensor, state: dict, rows: Tensor, hyper: tuple) -> None:
    """Lazy Adam / AdamW on ``rows`` of ``p``, with a step count per row.

    Each present row (of at least :data:`FUSED_MIN_ROW` elements) is handed to torch's fused Adam (AdamW)
    kernel as a tensor of its own, a view into the bank, with its own step count: the rows are updated in
    place, in one kernel call, without gathering them and writing them back (measured: 0.83 s -> 0.06 s for
    3,380 rows of 97 x 128 on one thread). The kernel rounds as ``optimizer_impl: fused`` does (within
    1.2e-7 of the unfused rule). Smaller rows go through the same kernel gathered
    (:func:`_update_rows_gathered`); dtypes the kernel does not take run the same rule unfused
    (:func:`_update_rows_unfused`).
    """
    if not state:
        state[ROW_STEP] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if rows.numel() == 0:
        return
    if p.dtype not in _FUSED_DTYPES or not hasattr(torch, "_fused_adam_"):
        _update_rows_unfused(p, grad, state, rows, hyper)
        return
    if p[0].numel() < FUSED_MIN_ROW:
        _update_rows_gathered(p, grad, state, rows, hyper)
        return
    ids = rows.tolist()
    steps = state[ROW_STEP]
    steps.index_add_(0, rows, torch.ones(len(ids), dtype=steps.dtype, device=steps.device))  # rows are distinct
    if grad.is_sparse:
        index, values = _sparse_rows(grad)
        at = {r: k for k, r in enumerate(index.tolist())}
        grads = [values[at[i]] if i in at else p.new_zeros(p.shape[1:]) for i in ids]
    else:
        grads = [grad[i] for i in ids]
    data, exp_avg, exp_avg_sq = p.detach(), state["exp_avg"], state["exp_avg_sq"]
    _fused_kernel(
        [data[i] for i in ids],
        grads,
        [exp_avg[i] for i in ids],
        [exp_avg_sq[i] for i in ids],
        [steps[i] for i in ids],
        hyper,
    )


@torch.no_grad()
def _update_rows_gathered(p: Tensor, grad: Tensor, state: dict, rows: Tensor, hyper: tuple) -> None:
    """Lazy Adam / AdamW on small ``rows`` of ``p`` by torch's fused kernel on gathered rows.

    The rows are gathered in the order of their step counts, so that the rows of each count are one
    contiguous block; the kernel then updates every block (one tensor per distinct count, each with its own
    bias corrections) in one call, and the blocks are written back. A step of a mixed batch holds a few
    dozen distinct counts where it holds thousands of rows, so this replaces the unfused rule's ten passes
    over the rows by one, without a tensor per row.
    """
    steps = state[ROW_STEP]
    t = steps.index_select(0, rows) + 1
    order = torch.argsort(t, stable=True)
    t, ordered = t.index_select(0, order), rows.index_select(0, order)
    counts, sizes = torch.unique_consecutive(t, return_counts=True)
    sizes = sizes.tolist()
    param = p.detach().index_select(0, ordered)
    g = _grad_rows(grad, rows).index_select(0, order)
    exp_avg = state["exp_avg"].index_select(0, ordered)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, ordered)
    _fused_kernel(
        list(param.split(sizes)),
        list(g.split(sizes)),
        list(exp_avg.split(sizes)),
        list(exp_avg_sq.split(sizes)),
        list(counts.unbind()),
        hyper,
    )
    p.detach().index_copy_(0, ordered, param)
    state["exp_avg"].index_copy_(0, ordered, exp_avg)
    state["exp_avg_sq"].index_copy_(0, ordered, exp_avg_sq)
    steps.index_copy_(0, ordered, t)


@torch.no_grad()
def _update_rows_unfused(p: Tensor, grad: Tensor, state: dict, rows: Tensor, hyper: tuple) -> None:
    """Lazy Adam / AdamW on ``rows`` of ``p`` in plain tensor operations (the rule of ``torch.optim.Adam``'s
    single-tensor step, with a step count per row): rows gathered, updated and written back."""
    lr, beta1, beta2, eps, weight_decay, decoupled = hyper
    param = p.index_select(0, rows)
    g = _grad_rows(grad, rows)
    exp_avg = state["exp_avg"].index_select(0, rows)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)
    step = state[ROW_STEP].index_select(0, rows) + 1
    if weight_decay != 0:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            g = g.add(param, alpha=weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    t = step.to(torch.float64)
    shape = (-1,) + (1,) * (p.dim() - 1)
    step_size = (lr / (1 - beta1**t)).to(p.dtype).view(shape)
    bias_correction2_sqrt = (1 - beta2**t).sqrt().to(p.dtype).view(shape)
    # In place where the order of operations allows (the same values: negation and a product by -1 are exact).
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg.mul(step_size), denom, value=-1.0)
    p.index_copy_(0, rows, param)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    state[ROW_STEP].index_copy_(0, rows, step)


def rowwise_step(
    optimizer: torch.optim.Optimizer,
    banks: dict[nn.Parameter, DomainBank],
    domains: Tensor | Iterable[int] | None,
) -> None:
    """One step of ``optimizer`` with the domain ``banks`` among its parameters updated row-wise.

    Every parameter that is not a bank (or that has no gradient) steps through ``optimizer`` itself; the
    banks' rows of ``domains`` (the domains of the rows whose gradient this step applies) are updated by
    lazy Adam / AdamW with the group's hyper-parameters, their other rows left as they are. ``domains`` None
    treats every domain as present (every row updated: dense Adam).
    """
    held: list[tuple[nn.Parameter, Tensor, dict]] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None or p not in banks:
                continue
            held.append((p, p.grad, group))
            p.grad = None  # torch's Adam skips a parameter without a gradient
    try:
        optimizer.step()
    finally:
        for p, grad, _ in held:
            p.grad = grad
    present: dict[torch.device, Tensor] = {}
    for p, grad, group in held:
        bank = banks[p]
        if domains is None:
            rows = torch.arange(p.shape[0], device=p.device)
        else:
            if p.device not in present:
                present[p.device] = _present(domains, p.device)
            rows = bank.rows(present[p.device], p.shape[0])
        _update_rows(p, grad, optimizer.state[p], rows, _hyper(optimizer, group))


@torch.no_grad()
def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for gradients of which some are sparse (a bank's rows).

    The norm is the 2-norm of every gradient, a sparse one's coalesced values counted once (its rows
    summed, as the dense gradient holds them); every gradient is then scaled by ``max_norm / (norm + 1e-6)``
    clamped at 1, as PyTorch's function scales them. Dense-only lists go to PyTorch's function itself.
    """
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.linalg.vector_norm(_sparse_rows(p.grad)[1] if p.grad.is_sparse else p.grad) for p in params]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad * coef  # a product keeps repeated rows as they are: their sum is scaled alike
        else:
            p.grad.mul_(coef)
    return total
