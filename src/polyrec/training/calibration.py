"""Exact ("precise") normalisation statistics after an epoch, for the layers that are still training.

The Trainer calls :func:`recompute_norm_statistics` after every epoch when ``train.precise_norm_stats`` is
on: each layer that keeps per-domain running statistics and can calibrate them (it has
``begin_calibration`` / ``end_calibration``, and optionally ``abort_calibration``, as STAR's
:class:`~polyrec.layers.norm.PartitionedNorm`) gets the exact per-domain moments of its inputs over the
training rows under the current weights, in place of the lagging moving averages.

Frozen layers are left alone. A frozen layer's statistics are part of the function the rest of the model
was trained against; recalibrating them on the current rows changes that function even though none of
its weights may move. Two cases did exactly that:

- adding a domain to a trained STAR + MLoRA model (:func:`polyrec.models.adapters.add_domain`, then
  :func:`polyrec.training.strategies.two_phase.finetune_new_domains`): the new domain's rows are routed
  through an existing backbone domain, so recalibrating on them rewrote that domain's statistics and moved
  the predictions of domains that were meant to stay exactly as they were;
- ``two_phase`` on STAR with ``norm_hidden=True``: in phase 2 the adapters change the inputs of the hidden
  partitioned norms, so recalibrating rewrote the statistics of a backbone that is frozen "bit for bit".

A layer counts as frozen when

- it has parameters and none of them requires grad (its affine part is frozen, so its statistics are
  too), or
- a module of the model lists it among the normalisation layers it keeps in eval mode while training
  (``_frozen_norms``, as :meth:`polyrec.models.adapters.MLoRAModel.freeze_backbone` does with
  ``freeze_norm_stats``).

A layer with no parameters at all is not frozen by the first rule: nothing says it is, so it is
recalibrated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .scoring import score_rows

if TYPE_CHECKING:  # only for annotations: the dataset module does not need to load here
    from ..data.dataset import EncodedDataset


def _kept_frozen(model: nn.Module) -> set[int]:
    """Ids of the modules that some module of ``model`` keeps in eval mode as frozen norms."""
    ids: set[int] = set()
    for m in model.modules():
        for frozen in getattr(m, "_frozen_norms", None) or ():
            ids.add(id(frozen))
    return ids


def is_frozen(layer: nn.Module, kept_frozen: set[int] | frozenset[int] = frozenset()) -> bool:
    """Whether recalibration must skip ``layer``: every parameter it has is frozen, or its id is in
    ``kept_frozen`` (the norms a model keeps in eval mode, see the module docstring)."""
    if id(layer) in kept_frozen:
        return True
    params = list(layer.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def calibration_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that :func:`recompute_norm_statistics` recalibrates, in module order: those
    with ``begin_calibration``, frozen ones left out."""
    kept = _kept_frozen(model)
    return [m for m in model.modules() if hasattr(m, "begin_calibration") and not is_frozen(m, kept)]


@torch.no_grad()
def recompute_norm_statistics(
    model: nn.Module,
    dataset: EncodedDataset,
    rows: torch.Tensor,
    batch_size: int = 32768,
    device: torch.device | str = "cpu",
) -> int:
    """Replace the moving statistics of every unfrozen layer with ``begin_calibration`` by exact ones
    over ``rows``.

    Moving averages lag behind the weights; when training alternates between domains (the Alternate
    regime), a domain's statistics are a whole pass of the other domains old at evaluation time, and the
    predictions drift off calibration. One no-grad pass in eval mode (the evaluation loop,
    :func:`~polyrec.training.scoring.score_rows`) per normalisation layer (in module order, so a later layer
    sees inputs normalised with the earlier layers' exact statistics) gives the exact per-domain moments
    under the current weights. Frozen layers (see the module docstring) keep the
    statistics they have, so a frozen part of the model computes exactly what it computed before.

    Args:
        model: the model (any ``nn.Module`` whose forward takes a batch and returns ``logits``); left in
            the mode it was in.
        dataset: where the rows come from: anything with ``batch(index_tensor)`` returning a batch (with
            ``.to(device)``, ``label``, ``domain``, ``user``).
        rows: indices of the rows to compute the statistics over (the training rows).
        batch_size: rows per forward pass.
        device: where the batches go.

    Returns:
        The number of layers recalibrated (0 when there is none: then no forward pass runs).
    """
    layers = calibration_layers(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            layer.begin_calibration()
            try:
                score_rows(model, dataset, rows, batch_size, device)
            except BaseException:
                # Leave no half-filled accumulator behind: the layer would keep accumulating later passes.
                abort = getattr(layer, "abort_calibration", None)
                if abort is not None:
                    abort()
                raise
            layer.end_calibration()
    finally:
        model.train(was_training)
    return len(layers)
