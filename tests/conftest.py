"""Shared tiny fixtures for the whole test suite.

- Every test gets its own empty ``POLYREC_CACHE`` (nothing is read from or written to ``~/.cache``).
- ``synthetic_cfg``: a :class:`~polyrec.data.config.DataConfig` on the ``synthetic`` source: 3 domains of
  unequal size (2,500 rows in all), sparse ``user_id`` / ``item_id``, the multi-valued ``tags``, the dense
  ``dense_0``, the domain exposed as a sparse feature, ``user_id`` as the user field, a seeded
  stratified 60/20/20 split.
- ``tiny_dataset``: ``build_dataset(synthetic_cfg)``, built once per session. It is shared: do not modify
  its tensors in place (copy with ``.clone()`` first).

Variants are one ``dataclasses.replace`` away, e.g. ``replace(synthetic_cfg, domain=DomainRule("domain"))``.
"""

from __future__ import annotations

import pytest

from polyrec.config import from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import EncodedDataset, build_dataset

SYNTHETIC_DATA = {
    "source": {
        "kind": "synthetic",
        "options": {
            "n_domains": 3,
            "n_samples": [1200, 800, 500],
            "n_users": 200,
            "n_items": 150,
            "ctr": [0.2, 0.3, 0.4],
            "n_dense": 1,
            "seed": 0,
        },
    },
    "label": {"column": "label", "op": "identity"},
    "domain": {"column": "domain", "as_feature": True},
    "features": [
        {"name": "user_id"},
        {"name": "item_id"},
        {"name": "tags", "kind": "multi", "sep": "|"},
        {"name": "dense_0", "kind": "dense", "transform": "minmax"},
    ],
    "user_feature": "user_id",
    "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 7},
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Point the polyrec cache at a fresh folder for every test."""
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "polyrec-cache"))


@pytest.fixture(autouse=True)
def _subnormals_restored():
    """A Trainer flushes subnormal floats process-wide (``train.flush_denormal``); every test starts with
    the process default (subnormals kept), whatever ran before it (hypothesis refuses to draw floats
    otherwise)."""
    yield
    import torch

    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def synthetic_cfg() -> DataConfig:
    """Tiny 3-domain synthetic data config (frozen, safe to share)."""
    return from_dict(DataConfig, SYNTHETIC_DATA, path="data")


@pytest.fixture(scope="session")
def tiny_dataset(synthetic_cfg, tmp_path_factory) -> EncodedDataset:
    """``build_dataset(synthetic_cfg)``, once per session, cached in a session temp folder."""
    return build_dataset(synthetic_cfg, cache_root=tmp_path_factory.mktemp("tiny-dataset-cache"))
