"""The numbers every registered model computes, pinned so that a refactor can prove it changed none of them.

For every registered model on small synthetic schemas (3 domains; 1 domain; 20 domains, more than the
16 segments :func:`~polyrec.layers.domain.segment_linear` runs as a loop), with the default config, with
dropout, and with the variants that take other paths through the expert, tower and gate banks, a case
records from a fixed seed:

- the initial ``state_dict``: the SHA-256 of every tensor's bytes (so ``torch.manual_seed(s);
  create_model(...)`` must draw the same values), and the order of ``named_parameters()``;
- train mode: the logits, auxiliary losses and every parameter's gradient of one forward and backward
  on a mixed-domain batch (dropout draws from a seeded generator), then the train-mode logits after one
  Adam step;
- eval mode (after that step): the logits of the mixed batch (also as 6-digit values, to read a diff) and
  of a single-domain batch.

``bank_legacy_state.safetensors`` holds the state dicts of a few small models whose bank parameters were
named ``weights.<i>`` / ``biases.<i>`` (HiNet, M3oE, M2M, SAR-Net; HiNet under MLoRA; SAR-Net under the
MAMDR wrapper), as a run directory written before the banks were merged holds them, with their eval
logits in the JSON: loading those files must reproduce those logits.

Written by ``PYTHONPATH=src:tests python tests/layers/bank_reference.py`` from the code whose numbers are
pinned (the commit before the banks were merged); ``tests/layers/test_bank.py`` recomputes every case and
compares bit for bit. CPU, one thread. Rewrite the files only for a change meant to alter the numbers, and
say so in its commit. On another CPU kind or torch version (``environment`` in the JSON) matmul rounding
may differ: the bit-for-bit test is then skipped and the eval logits are compared within rounding.
"""

from __future__ import annotations

import hashlib
import json
import platform
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from builders import make_batch, make_schema
from torch import nn

import polyrec
from polyrec import Batch, DatasetSchema, create_model

HERE = Path(__file__).parent
REFERENCE = HERE / "bank_reference.json"
LEGACY_STATE = HERE / "bank_legacy_state.safetensors"
SEED = 2024


@dataclass(frozen=True)
class Case:
    model: str
    schema: str = "d3"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.model}@{self.schema}" + (f"[{extra}]" if extra else "")


# Variants that take other paths through the banks: routed vs dense experts, several layers (the order the
# initial weights are drawn in), no shared / no specific experts, PLE's intermediate levels, the padded
# segment path (20 domains), a single domain (one segment, no permutation).
EXTRA: list[Case] = [
    Case("hinet", "d3", {"san": False}),
    Case("hinet", "d3", {"san": False, "dropout": 0.3}),
    Case("hinet", "d3", {"expert_units": (24, 16, 8), "dropout": 0.2}),
    Case("hinet", "d20", {"san": False, "dropout": 0.2}),
    Case("m3oe", "d3", {"expert_units": (24, 16, 8), "dropout": 0.2}),
    Case("m3oe", "d1", {"dropout": 0.3}),
    Case("m2m", "d3", {"expert_units": (24, 16, 8), "dropout": 0.2}),
    Case("sarnet", "d3", {"shared_experts": 0}),
    Case("sarnet", "d3", {"specific_experts": 0, "dropout": 0.3}),
    Case("sarnet", "d20", {"dropout": 0.3}),
    Case("ple", "d3", {"num_levels": 1}),
    Case("ple", "d3", {"num_levels": 3, "dropout": 0.2}),
    Case("ple", "d3", {"num_shared_experts": 0}),
    Case("ple", "d3", {"num_specific_experts": 0, "num_levels": 3}),
    Case("ple", "d3", {"expert_units": (16, 8), "dropout": 0.2}),
    Case("ple", "d20", {"num_levels": 1, "dropout": 0.2}),
    Case("mmoe", "d3", {"expert_units": (32, 16), "tower_units": (8, 4), "dropout": 0.2}),
    Case("mmoe", "d20", {"dropout": 0.2}),
    Case("hmoe", "d3", {"stop_gradient": False, "tower_units": (), "dropout": 0.2}),
    Case("dfei", "d3", {"domain_head": False}),
    Case("mulann", "d3", {"domain_heads": False}),
    Case("aitm", "d3", {"domain_order": ("d2", "d0", "d1"), "dropout": 0.2}),
    Case("shared_bottom", "d3", {"bottom_units": (), "tower_units": ()}),
    Case("shared_bottom", "d20", {"dropout": 0.3}),
    Case("cross_stitch", "d3", {"hidden_units": (16,)}),
    Case("cross_stitch", "d20", {"dropout": 0.2}),
    Case("hamur", "d20", {"dropout": 0.2}),
]

# Small models whose bank parameters had the legacy names, saved as a run would have saved them.
LEGACY: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "hinet": ("hinet", {"embedding_dim": 4, "expert_units": (8, 6), "tower_units": (8,)}, None),
    "m3oe": ("m3oe", {"embedding_dim": 4, "expert_units": (8, 6), "tower_units": (8,)}, None),
    "m2m": ("m2m", {"embedding_dim": 4, "expert_units": (8, 6), "scenario_dim": 8, "tower_units": (8,)}, None),
    "sarnet": (
        "sarnet",
        {"embedding_dim": 4, "shared_experts": 2, "specific_experts": 3, "expert_dim": 6, "tower_units": (8,)},
        None,
    ),
    "hinet+mlora": ("hinet", {"embedding_dim": 4, "expert_units": (8, 6), "tower_units": (8,)}, "mlora"),
    "sarnet+specific": (
        "sarnet",
        {"embedding_dim": 4, "shared_experts": 2, "specific_experts": 3, "expert_dim": 6, "tower_units": (8,)},
        "specific",
    ),
}


def cases() -> list[Case]:
    out = []
    for name in polyrec.list_models("ctr") + polyrec.list_models("multidomain"):
        out += [Case(name, "d3"), Case(name, "d3", {"dropout": 0.3}), Case(name, "d1"), Case(name, "d20")]
    return out + EXTRA


def schemas() -> dict[str, DatasetSchema]:
    return {f"d{n}": make_schema(n, domain_name="scenario", user_feature="user") for n in (1, 3, 20)}


def batches(schema: DatasetSchema) -> tuple[Batch, Batch]:
    """A mixed batch with every domain present (interleaved) and a batch of the last domain alone."""
    D = schema.num_domains
    return (
        make_batch(schema, max(48, 4 * D), seed=0, every_domain=True),
        make_batch(schema, 16, seed=5, domains=D - 1),
    )


def digest(t: torch.Tensor | None) -> str | None:
    """The first 80 bits of the SHA-256 of the tensor's bytes (row-major): a reshape keeps it."""
    if t is None:
        return None
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:20]


@contextmanager
def single_thread():
    """One intra-op thread: the summation order of a matmul must not depend on the machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def environment() -> dict[str, str]:
    """What decides matmul rounding: torch, the instruction set, MKL and the CPU model (two CPUs of the same
    instruction set, an Intel and an AMD one, were measured to round differently)."""
    from polyrec.experiment import cpu_model

    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "mkl": str(torch.backends.mkl.is_available()),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
    }


def build(case: Case, schema: DatasetSchema) -> nn.Module:
    torch.manual_seed(SEED)
    return create_model(case.model, schema, **case.overrides)


def loss_of(out, batch: Batch) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(out.logits, batch.label)
    return loss + sum(out.aux_losses.values())


def record(model: nn.Module, mixed: Batch, single: Batch) -> dict[str, Any]:
    """What a case pins (see the module docstring) of a freshly built ``model``."""
    rec: dict[str, Any] = {
        "parameters": [n for n, _ in model.named_parameters()],
        "state": {k: digest(v) for k, v in model.state_dict().items()},
    }
    model.train()
    torch.manual_seed(SEED + 1)
    out = model(mixed)
    loss_of(out, mixed).backward()
    rec["train_logits"] = digest(out.logits)
    rec["aux_losses"] = {k: digest(v) for k, v in out.aux_losses.items()}
    rec["grads"] = {n: digest(p.grad) for n, p in model.named_parameters()}
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    model.zero_grad()
    torch.manual_seed(SEED + 2)
    with torch.no_grad():
        rec["train_logits_after_step"] = digest(model(mixed).logits)
        model.eval()
        logits = model(mixed).logits
        rec["eval_logits"] = digest(logits)
        rec["eval_logits_values"] = [float(f"{v:.6g}") for v in logits.tolist()]  # to read a diff
        rec["eval_single_logits"] = digest(model(single).logits)
    return rec


def compute(selected: list[Case] | None = None) -> dict[str, dict[str, Any]]:
    all_schemas = schemas()
    out = {}
    with single_thread():
        for case in selected if selected is not None else cases():
            schema = all_schemas[case.schema]
            out[case.id] = record(build(case, schema), *batches(schema))
    return out


def legacy_model(key: str) -> nn.Module:
    """The small model of ``LEGACY[key]`` (wrapped as the entry says), built from the fixed seed."""
    from polyrec.models.adapters import attach_mlora
    from polyrec.models.specific import DomainSpecificModel

    name, overrides, wrap = LEGACY[key]
    torch.manual_seed(SEED)
    model = create_model(name, schemas()["d3"], **overrides)
    if wrap == "mlora":
        model = attach_mlora(model, alpha=2)
    elif wrap == "specific":
        model = DomainSpecificModel(model, include="dense")
    return model


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Every floating-point tensor of the state moved off its initial value (adapters' zero B included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in sorted(model.state_dict(keep_vars=True).items()):
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.2)
    return model


def legacy_logits(model: nn.Module) -> torch.Tensor:
    mixed, _ = batches(schemas()["d3"])
    model.eval()
    with torch.no_grad():
        return model(mixed).logits


def write() -> None:
    from safetensors.torch import save_file

    legacy_tensors, legacy = {}, {}
    with single_thread():
        for i, key in enumerate(LEGACY):
            model = perturbed(legacy_model(key), seed=i)
            for k, v in model.state_dict().items():
                legacy_tensors[f"{key}/{k}"] = v.detach().contiguous().clone()
            legacy[key] = {"eval_logits": digest(legacy_logits(model)), "keys": list(model.state_dict())}
    save_file(legacy_tensors, str(LEGACY_STATE))
    ref = {"environment": environment(), "seed": SEED, "cases": compute(), "legacy": legacy}
    REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(ref['cases'])} cases to {REFERENCE} and {len(legacy)} legacy states to {LEGACY_STATE}")


if __name__ == "__main__":
    write()
