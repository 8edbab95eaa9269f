"""Checkpoints: complete state, exact resume after kill -9, the last two kept, a damaged one falls back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from polyrec.config import from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import build_dataset
from polyrec.models import create_model
from polyrec.safeio import flatten, load_tensors, unflatten
from polyrec.training.checkpoint import (
    CheckpointError,
    check_optimizer_state,
    checkpoint_dirs,
    load_latest_checkpoint,
    save_checkpoint,
)
from polyrec.training.trainer import TrainConfig, Trainer

DATA = {
    "source": {
        "kind": "synthetic",
        "options": {"n_domains": 3, "n_samples": [900, 600, 300], "n_users": 120, "n_items": 90, "seed": 5},
    },
    "label": {"column": "label"},
    "domain": {"column": "domain"},
    "features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "dense_0", "kind": "dense"}],
    "split": {"method": "stratified_domain", "ratios": [0.7, 0.15, 0.15], "seed": 0},
}


@pytest.fixture(scope="module")
def ds():
    return build_dataset(from_dict(DataConfig, DATA), cache=False)


def _model(ds, name="star"):
    torch.manual_seed(0)
    return create_model(name, ds.schema, embedding_dim=4, hidden_units=[16, 8], dropout=0.3)


def _cfg(**kw):
    return TrainConfig(**{"batch_size": 64, "max_epochs": 4, "patience": 0, "seed": 3, **kw})


def test_flatten_round_trips_nested_state():
    state = {
        "a": torch.arange(3),
        "opt": {"state": {0: {"step": torch.tensor(2.0)}}, "groups": [{"betas": (0.9, 0.99)}]},
        "best": float("nan"),
        "none": None,
        "rng": (3, (1, 2), None),
    }
    skeleton, tensors = flatten(state)
    back = unflatten(skeleton, tensors)
    assert torch.equal(back["a"], state["a"]) and back["opt"]["state"][0]["step"] == 2.0
    assert back["opt"]["groups"][0]["betas"] == (0.9, 0.99) and back["rng"] == (3, (1, 2), None)
    assert back["best"] != back["best"] and back["none"] is None


def test_an_optimiser_state_paired_with_parameters_of_another_shape_is_refused():
    # Optimizer.load_state_dict pairs by position: a model that lists its parameters in another order than
    # the one that wrote the checkpoint (e.g. HiNet's shared experts before the banks were merged: every
    # weight, then every bias) gets each moment paired with the wrong parameter.
    w, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    written = torch.optim.Adam([w, b])
    (w.sum() + b.sum()).backward()
    written.step()
    same = torch.optim.Adam([w, b])
    same.load_state_dict(written.state_dict())
    check_optimizer_state(same, "runs/x/checkpoints")
    swapped = torch.optim.Adam([b, w])
    swapped.load_state_dict(written.state_dict())
    with pytest.raises(CheckpointError, match=r"runs/x/checkpoints.*another order"):
        check_optimizer_state(swapped, "runs/x/checkpoints")


def test_resume_in_process_is_bit_identical_with_dropout(ds, tmp_path):
    straight = _model(ds)
    Trainer(straight, ds, _cfg()).fit()
    first = _model(ds)
    Trainer(first, ds, _cfg(max_epochs=2), out_dir=tmp_path).fit()
    torch.manual_seed(12345)  # whatever the process did meanwhile: the checkpoint restores every generator
    resumed = _model(ds)
    trainer = Trainer(resumed, ds, _cfg(), out_dir=tmp_path, resume=True)
    trainer.fit()
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_only_the_last_two_checkpoints_are_kept_and_a_damaged_newest_falls_back(ds, tmp_path):
    Trainer(_model(ds), ds, _cfg(max_epochs=3), out_dir=tmp_path).fit()
    dirs = checkpoint_dirs(tmp_path / "checkpoints")
    assert [d.name for d in dirs] == ["epoch-000002", "epoch-000003"]
    path = dirs[-1] / "state.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # same size, one bit
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="resuming from .*epoch-000002"):
        state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["epoch"] == 2
    # and the resumed run redoes epoch 2 and ends where an uninterrupted run ends
    straight = _model(ds)
    Trainer(straight, ds, _cfg(max_epochs=3)).fit()
    resumed = _model(ds)
    with pytest.warns(UserWarning):
        trainer = Trainer(resumed, ds, _cfg(max_epochs=3), out_dir=tmp_path, resume=True)
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


@pytest.mark.parametrize("damage", ["truncate", "empty", "manifest"])
def test_no_usable_checkpoint_is_a_clear_error(ds, tmp_path, damage):
    Trainer(_model(ds), ds, _cfg(max_epochs=2), out_dir=tmp_path).fit()
    for d in checkpoint_dirs(tmp_path / "checkpoints"):
        target = d / ("manifest.json" if damage == "manifest" else "state.safetensors")
        data = target.read_bytes()
        target.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="no usable checkpoint.*epoch-000002.*epoch-000001"):
        Trainer(_model(ds), ds, _cfg(), out_dir=tmp_path, resume=True)


def test_a_crashed_checkpoint_writer_leaves_nothing_that_later_runs_trip_over(ds, tmp_path):
    root = tmp_path / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from polyrec.data.cache import temp_prefix

    stale = root / (temp_prefix("tmp").replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-", 1) + "abc")
    stale.mkdir(parents=True)
    (stale / "state.safetensors").write_bytes(b"partial")
    save_checkpoint(root, 1, {"x": torch.zeros(2)})
    assert not stale.exists() and [d.name for d in checkpoint_dirs(root)] == ["epoch-000001"]
    tensors, _ = load_tensors(root / "epoch-000001" / "state.safetensors")
    assert list(tensors) == ["x"]


# ------------------------------------------------------------------------------- kill -9, for real

CONFIG = {
    "protocol": "killed",
    "data": {
        **DATA,
        "source": {
            "kind": "synthetic",
            "options": {"n_domains": 3, "n_samples": [6000, 4000, 2000], "n_users": 300, "n_items": 200, "seed": 8},
        },
    },
    "train": {"batch_size": 32, "max_epochs": 4, "patience": 0, "seed": 1, "num_threads": 1},
}
TRAIN = [
    "-m",
    "polyrec.cli",
    "train",
    "--model",
    "star",
    "--set",
    "model.embedding_dim=4",
    "--set",
    "model.hidden_units=[16,8]",
    "--set",
    "model.dropout=0.3",
]


def _train_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, *TRAIN, "--config", str(config), "--out", str(out)]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "POLYREC_CACHE": str(tmp_path / "cache"), "POLYREC_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run / "model.safetensors")[0]


def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = _env(tmp_path)
    straight = tmp_path / "straight"
    done = subprocess.run(_train_cmd(config, straight), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    kills = 0
    for wait_for in ("epoch-000001", "epoch-000002"):  # twice: mid epoch 1, then mid epoch 2 (or later)
        proc = subprocess.Popen(
            _train_cmd(config, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / wait_for).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.15)  # well inside the next epoch
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not (killed / "run.json").exists() or proc.returncode == 0
    assert kills >= 1
    done = subprocess.run(_train_cmd(config, killed), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    import json

    ra = json.loads((straight / "result.json").read_text())
    rb = json.loads((killed / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["val_metrics"] == rb["val_metrics"]
    history_a = [json.loads(line)["val_auc_mean"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    history_b = [json.loads(line)["val_auc_mean"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert history_a == history_b and len(history_a) == 4
