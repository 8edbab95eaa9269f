"""MLoRA's two-phase training (Yang et al. 2024, §3.3), and training the adapter of a domain added later.

Phase 1 trains the backbone on all domains with the adapters off and frozen: with ``B = 0`` they contribute
nothing, so switching them off only skips their cost. Phase 2 freezes the backbone (``requires_grad=False``,
and by default its normalisation statistics) and trains only the domain-specific adapters.

Each phase ends as the paper's training does, by early stopping: when the validation metric has not
improved for ``train.patience`` epochs in phase 1, the Trainer restores the best backbone and phase 2
starts from it (adapters at ``B = 0``, the patience counter afresh); phase 2 ends the run the same way. The
best validation value carries over, so the adapters' weights are kept only if they beat the backbone alone
(otherwise the best weights are the backbone's, with ``B = 0``). ``pretrain_epochs`` fixes phase 1's length
instead (epochs ``0 .. pretrain_epochs-1``; the patience counter then runs through the phase change, and a
run may stop before phase 2). The epoch phase 2 started at is the strategy's checkpointed state, so a
resumed run continues in the right phase.

The Trainer's optimiser is kept across the phases: a frozen parameter gets no gradient, and the optimisers
skip parameters without one, so the backbone stays bit-for-bit unchanged in phase 2 and the adapters in
phase 1 (weight decay included), and the optimiser the Trainer checkpoints is the one in use.

:func:`finetune_new_domains` trains only the adapters of domains added with
:func:`polyrec.models.adapters.add_domain`: every other parameter is frozen (``requires_grad=False``), the
other domains' adapter rows are not among the optimiser's parameters at all, and their predictions stay
exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import param
from ...models.adapters import MLoRAModel, merge_new_domains, stage_new_domains
from .base import Strategy, TrainContext, TwoStages, flag, mean_stats, register_strategy


@register_strategy("two_phase")
class TwoPhase(TwoStages, Strategy):
    """Pretrain the backbone (adapters off), then train only the adapters (backbone frozen). MLoRA §3.3.

    Steps are ordinary steps on the configured sampler's batches (``mixed`` by default; set
    ``train.sampler`` to ``domain_sequential`` for the paper's domain-by-domain order). Needs a model with
    adapters (``adapter.kind: mlora``).

    Options (``train.strategy_options``):
        pretrain_epochs: epochs of phase 1; ``None`` (the default, the paper's): phase 1 lasts until early
            stopping, then phase 2 starts from the best backbone; 0: adapters only from the first epoch, for
            a backbone whose weights were loaded beforehand.
        freeze_norm_stats: in phase 2, keep the backbone's batch/partitioned-norm statistics fixed too.
    """

    default_sampler = "mixed"

    @dataclass(frozen=True)
    class Config:
        pretrain_epochs: int | None = param(None, ge=0)
        freeze_norm_stats: bool = flag(True)

    def setup(self, ctx: TrainContext) -> None:
        if not isinstance(ctx.model, MLoRAModel):
            raise ValueError(
                f"strategy two_phase trains a backbone and then its adapters, but the model "
                f"{getattr(ctx.model, 'model_name', type(ctx.model).__name__)!r} has none; set adapter.kind=mlora "
                "(or use a '<model>+mlora' model name)"
            )

    def first_stage_epochs(self) -> int | None:
        return self.config.pretrain_epochs

    def phase(self, epoch: int) -> int:
        return 2 if self.in_second_stage(epoch) else 1

    def state_dict(self) -> dict[str, Any]:
        return {} if self.switch_epoch is None else {"switch_epoch": self.switch_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"switch_epoch"}
        if unknown:
            raise ValueError(f"strategy two_phase keeps only switch_epoch, but the checkpoint holds {sorted(unknown)}")
        self.switch_epoch = None if state.get("switch_epoch") is None else int(state["switch_epoch"])

    def enter_phase(self, model: MLoRAModel, phase: int) -> None:
        if phase == 1:
            model.unfreeze_backbone()
            model.set_adapters(enabled=False, trainable=False)
        else:
            if not model.backbone_frozen:
                model.freeze_backbone(self.config.freeze_norm_stats)
            model.set_adapters(enabled=True, trainable=True)

    def run_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        phase = self.phase(epoch)
        self.enter_phase(ctx.model, phase)
        stats = mean_stats([ctx.step(b) for b in ctx.batches(epoch)])
        return {**stats, "phase": float(phase)}


def finetune_new_domains(
    model: MLoRAModel, dataset, config, first: int, out_dir: str | Path | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Train only the adapters of domains ``first..D-1`` (added with ``add_domain``) on ``dataset``.

    Everything else is frozen: the backbone (parameters and normalisation statistics) and the adapter rows
    of domains ``0..first-1``, which are held apart from the optimiser's parameters while training
    (:func:`polyrec.models.adapters.stage_new_domains`), so no optimiser option can move them. The Trainer
    runs as usual (early stopping on the validation split, best weights restored, checkpoints in
    ``out_dir``) with ``config``'s strategy forced to ``joint``.

    Args:
        model: the adapted model, already extended with the new domain(s).
        dataset: encoded rows of the new domain(s) (its schema equal to ``model.schema``).
        config: a :class:`~polyrec.training.trainer.TrainConfig`.
        first: index of the first new domain.
        out_dir: the Trainer's output folder (metrics, checkpoint), or None.

    Returns:
        The Trainer's fit summary plus ``trainable_params`` (the new adapters' parameter count).
    """
    from ..trainer import Trainer

    staged = stage_new_domains(model, first)
    try:
        cfg = replace(config, strategy="joint", strategy_options={})
        trainer = Trainer(model, dataset, cfg, out_dir=out_dir, progress=progress)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if {id(p) for p in trainable} != {id(p) for p in staged}:
            raise RuntimeError("internal: parameters other than the new domains' adapters are trainable")
        summary = trainer.fit()
    finally:
        merge_new_domains(model)
    return {**summary, "trainable_params": sum(p.numel() for p in staged)}
