"""Training checkpoints: complete state, written atomically, the last two kept, each checksummed.

A checkpoint is a folder ``checkpoints/epoch-NNNNNN/`` holding

- ``state.safetensors``: every tensor of the training state (model, best weights, optimiser moments,
  the strategy's own tensors, random-generator states);
- ``state.json``: the rest of it (epoch, history, best value, hyper-parameters of the optimiser, ...)
  with references to the tensors by name;
- ``manifest.json``: the sha256 of the two files and the checkpoint format.

The folder is written under a temporary name and renamed into place, so a checkpoint either exists
whole or not at all; then all but the newest ``keep`` are removed. On resume the newest checkpoint whose
files match their manifest is used; a damaged newest one (a truncated file, a flipped byte, a
hand-edited state) falls back to the one before with a warning, and when none is usable the error
names each checkpoint and what is wrong with it. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..data.cache import remove_abandoned, temp_prefix
from ..safeio import (
    ArtifactError,
    flatten,
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    unflatten,
    verify_files,
    write_json,
)

FORMAT = "polyrec-checkpoint"
VERSION = 1
KEEP = 2
_NAME = re.compile(r"^epoch-(\d{6,})$")


class CheckpointError(ArtifactError):
    """No usable checkpoint (all damaged), or a checkpoint that does not belong to this run."""


def check_optimizer_state(optimizer: torch.optim.Optimizer, where: str) -> None:
    """Refuse a resumed optimiser state whose tensors do not fit the parameters they were paired with.

    ``Optimizer.load_state_dict`` pairs saved states with parameters by position. A checkpoint written by a
    polyrec whose model listed its parameters in another order (HiNet's, M3oE's and M2M's shared experts,
    before the expert banks were merged) pairs them wrongly; without this check the next step fails with a
    bare shape error.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                # A domain bank's step counts (train.bank_update: rowwise) are per row, [rows].
                shape = p.shape[:1] if name == "step" else p.shape
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shape:
                    raise CheckpointError(
                        f"the optimiser state of the checkpoint under {where!r} does not fit the model's parameters "
                        f"(its {name!r} of shape {list(value.shape)} is paired with a parameter of shape "
                        f"{list(shape)}): it was written by a polyrec whose model listed its parameters in "
                        "another order; resume with the polyrec that wrote it, or start afresh"
                    )


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """The checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``state`` as checkpoint ``step`` under ``root``; keep the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = flatten(state)
    remove_abandoned(root)  # folders of a writer killed mid-write
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix("tmp"), dir=root))
    target = root / f"epoch-{step:06d}"
    try:
        save_tensors(tmp / "state.safetensors", tensors)
        write_json(tmp / "state.json", skeleton)
        write_json(
            tmp / "manifest.json",
            {
                "format": FORMAT,
                "version": VERSION,
                "step": step,
                "files": {name: sha256_file(tmp / name) for name in ("state.safetensors", "state.json")},
            },
        )
        if target.exists():  # a rerun of the same epoch after a resume: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state of one checkpoint folder, after checking its files against the manifest."""
    path = Path(path)
    manifest = read_json(path / "manifest.json", "checkpoint manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a polyrec checkpoint (manifest format "
            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r})"
        )
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {manifest.get('version')!r}; this "
            f"polyrec reads version {VERSION}: resume with the polyrec that wrote it"
        )
    verify_files(path, manifest.get("files"), "checkpoint file", CheckpointError)
    if set(manifest.get("files") or {}) != {"state.safetensors", "state.json"}:
        raise CheckpointError(
            f"checkpoint manifest {str(path / 'manifest.json')!r} lists "
            f"{sorted(manifest.get('files') or {})}, not state.safetensors and state.json"
        )
    tensors, _ = load_tensors(path / "state.safetensors", "checkpoint tensors")
    return unflatten(read_json(path / "state.json", "checkpoint state"), tensors)


def load_latest_checkpoint(root: str | Path) -> dict[str, Any] | None:
    """The newest usable checkpoint's state under ``root`` (None when there is no checkpoint at all).

    A damaged newest checkpoint falls back to the previous one with a warning; when every checkpoint is
    damaged the :class:`CheckpointError` lists them all.
    """
    problems = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            state = read_checkpoint(path)
        except ArtifactError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if problems:
            warnings.warn(
                f"newest checkpoint(s) unusable, resuming from {str(path)!r}: " + "; ".join(problems), stacklevel=2
            )
        return state
    if problems:
        raise CheckpointError(
            f"no usable checkpoint under {str(root)!r}: "
            + "; ".join(problems)
            + ". Start afresh (polyrec train ... --overwrite) or restore a checkpoint"
        )
    return None
