"""The worked examples of docs/architecture.md run as written.

Every fenced block whose info string is ``python test=<name>`` is code of example ``<name>``; the
``setup`` blocks run first (the tiny synthetic data set), then each example's blocks in order, as one
module, in a scratch folder. The examples add a model, a strategy and a data source; each must register
(where it is a registry entry) and train for an epoch. Whatever an example registers is removed afterwards,
so no other test sees it.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from polyrec.models import MODELS
from polyrec.training.strategies import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
FENCE = re.compile(r"^```python test=(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, code in FENCE.findall(DOC.read_text()):
        out.setdefault(name, []).append(code)
    return out


def test_the_doc_has_the_three_worked_examples_and_the_setup():
    assert set(blocks()) == {"setup", "model", "strategy", "source"}
    assert all(len(codes) == 2 for name, codes in blocks().items() if name != "setup")


@pytest.fixture
def clean_registries():
    """Unregister whatever a test adds to the model and strategy registries."""
    before = {registry: set(registry) for registry in (MODELS, STRATEGIES)}
    yield
    for registry, names in before.items():
        for name in set(registry) - names:
            registry.unregister(name)


def run_example(name: str) -> dict:
    """Run the setup blocks and the blocks of example ``name`` as the module ``polyrec_doc_<name>``; its
    namespace."""
    module = types.ModuleType(f"polyrec_doc_{name}")
    sys.modules[module.__name__] = module  # dataclasses and type hints look the module up
    try:
        for i, code in enumerate(blocks()["setup"] + blocks()[name]):
            exec(compile(code, f"{DOC.name}[{name}:{i}]", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYREC_QUIET", "1")
    return tmp_path


def test_adding_a_model(scratch, clean_registries):
    from polyrec.models import describe_model, get_model_class, list_models

    ns = run_example("model")
    assert (
        "domain_scaled_mlp" in list_models("multidomain")
        and get_model_class("domain_scaled_mlp") is ns["DomainScaledMLP"]
    )
    assert describe_model("domain_scaled_mlp")["tags"] == ["multidomain"]
    assert ns["summary"]["epochs"] == 1 and ns["summary"]["best_epoch"] == 0
    # The contract's essentials on a mixed-domain batch: logits [B], finite, every parameter reached.
    model, ds = ns["model"], ns["ds"]
    batch = ds.batch(ds.splits["val"])
    logits = model(batch).logits
    assert logits.shape == (len(batch),) and bool(logits.isfinite().all())
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_adding_a_strategy(scratch, clean_registries):
    from polyrec.training.strategies import create_strategy, list_strategies

    ns = run_example("strategy")
    assert "domain_round_robin" in list_strategies()
    record = ns["record"]
    assert record["strategy"] == "domain_round_robin" and record["metrics"]
    # 3 rounds of one batch from each of the 3 domains: 9 steps of at most 128 rows.
    ctx_rows = []
    strategy = create_strategy("domain_round_robin", {"rounds": 3})

    class Counting:
        def __init__(self, ctx):
            self.ctx = ctx

        def __getattr__(self, key):
            return getattr(self.ctx, key)

        def step(self, batch):
            ctx_rows.append(set(batch.domain.tolist()))
            return {"loss": 0.0}

    import torch

    from polyrec import create_model
    from polyrec.training.strategies import TrainContext
    from polyrec.training.task import BinaryTask

    ds = ns["ds"]
    model = create_model("mlp", ds.schema, embedding_dim=4, hidden_units=[8])
    ctx = TrainContext(
        model,
        torch.optim.Adam(model.parameters()),
        BinaryTask(),
        ds,
        ds.splits["train"],
        batch_size=128,
        sampler="mixed",
        seed=0,
        device=torch.device("cpu"),
    )
    strategy.run_epoch(Counting(ctx), 0)
    assert len(ctx_rows) == 9 and all(len(domains) == 1 for domains in ctx_rows)
    assert sorted(d for domains in ctx_rows for d in domains) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_adding_a_data_source(scratch, clean_registries):
    ns = run_example("source")
    clicks = ns["clicks"]
    assert (scratch / "clicks.parquet").is_file() and 1000 < len(clicks) <= 1200
    assert clicks.schema.domain.values == ("cart", "home", "search") and clicks.schema.num_domains == 3
    assert clicks.report["cache"] == "miss" and ns["summary"]["epochs"] == 1
    # The file is a source like any other: a second build is a cache hit with the same rows and split.
    import torch

    from polyrec import build_dataset

    again = build_dataset(ns["data"])
    assert again.report["cache"] == "hit"
    assert all(torch.equal(torch.as_tensor(again.splits[s]), torch.as_tensor(clicks.splits[s])) for s in clicks.splits)
