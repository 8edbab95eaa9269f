"""The domain machinery must win where the data need it and not lose where they do not.

A small version of ``benchmarks/domain_machinery.py`` (same scenarios and settings, 16k rows, one torch
thread, about 45 s of CPU): STAR and MLP+MLoRA against the MLP on synthetic data whose domains conflict
(``conflict_blind``: the domain is not a feature, so only the machinery can use it; ``conflict``: the MLP
sees the domain as a feature), and on identical domains (nothing to gain, nothing may be lost).

Measured at this size (test WAUC ×100, seeds 0 and 1): MLP 66.5 / 65.5 on conflict_blind, 83.5 / 82.7 on
conflict, 82.2 / 82.7 on identical; the per-seed differences method − MLP have a std of at most 1.2. Mean
gains: conflict_blind STAR +20.2, MLP+MLoRA +17.1; conflict STAR +3.8, and +1.5 over STAR routed as one
domain; identical STAR +0.5, MLP+MLoRA −2.2 trained jointly (its adapters overfit next to the backbone), while with the
paper's two-phase schedule (§3.3, each phase ended by early stopping) it keeps the backbone's weights where
the adapters do not help on validation. The margins below are fixed from that noise: 5 points for the
machinery alone (more than 4 std of one seed's difference below what STAR and MLoRA reach, far above what
a model without domain machinery gets: STAR routed as one domain +0.3, MLoRA routed so +0.0), 1 point for
STAR over the MLP that sees the domain and 0.5 for STAR's routing over its own one-domain control (each
more than 3 standard errors of a 2-seed mean below the measured gain), and a loss of at most 0.5 on
identical domains (about 2 standard errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "domain_machinery.py"
SIZE = "test"
SEEDS = (0, 1)
BLIND_MARGIN = 5.0  # WAUC ×100: gain of the machinery alone (conflict_blind) over the domain-blind MLP
CONFLICT_MARGIN = 1.0  # gain over the MLP that sees the domain as a feature (conflict)
IDENTICAL_SLACK = 0.5  # largest loss allowed on identical domains
ROUTING_MARGIN = 0.5  # gain of STAR over STAR routed as one domain (conflict)


ONE_DOMAIN_STAR = "star (every row routed as domain 0)"


@contextlib.contextmanager
def _star_routed_as_one_domain():
    """STAR with its domain machinery switched off: every batch reaches it with domain 0, so partitioned
    normalization, the star weights and the auxiliary network see one domain. The rest of STAR (the input
    normalization, the topology) is unchanged, which makes it the control for what the routing adds."""
    from polyrec.models.multidomain.star import StarModel

    forward = StarModel.forward

    def one_domain(self, batch):
        return forward(self, dataclasses.replace(batch, domain=batch.domain.new_zeros(batch.domain.shape)))

    StarModel.forward = one_domain
    try:
        yield
    finally:
        StarModel.forward = forward


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("domain_machinery_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


@pytest.fixture(scope="module")
def wauc(bench, tmp_path_factory):
    """``wauc(scenario, method, seed)`` -> test WAUC ×100, each run trained once per module."""
    import os

    import torch

    from polyrec.data.dataset import build_dataset

    cache = tmp_path_factory.mktemp("cache")
    old_env = {k: os.environ.get(k) for k in ("POLYREC_CACHE", "POLYREC_QUIET")}
    os.environ["POLYREC_CACHE"], os.environ["POLYREC_QUIET"] = str(cache), "1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    datasets, runs = {}, {}

    def run(scenario: str, method: str, seed: int) -> float:
        key = (scenario, method, seed)
        if key not in runs:
            if scenario not in datasets:
                datasets[scenario] = build_dataset(bench.experiment_config(scenario, "mlp", 0, SIZE).data)
            if method == ONE_DOMAIN_STAR:
                with _star_routed_as_one_domain():
                    record = bench.run_one(scenario, "star", seed, SIZE, dataset=datasets[scenario])
            else:
                record = bench.run_one(scenario, method, seed, SIZE, dataset=datasets[scenario])
            runs[key] = record["metrics"]["wauc"] * 100
        return runs[key]

    yield run
    torch.set_num_threads(threads)
    for k, v in old_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _gain(wauc, scenario: str, method: str, seeds=SEEDS) -> float:
    """Mean over seeds of (method − MLP) WAUC ×100, paired by seed."""
    return statistics.fmean(wauc(scenario, method, s) - wauc(scenario, "mlp", s) for s in seeds)


@pytest.mark.parametrize("method", ["star", "mlp+mlora", "mlp+mlora@two_phase"])
def test_the_machinery_alone_recovers_conflicting_domains(wauc, method):
    # conflict_blind: the domain is not a feature, so the MLP pools domains whose signal has opposite signs.
    gain = _gain(wauc, "conflict_blind", method, seeds=SEEDS[:1])
    assert gain > BLIND_MARGIN, f"{method} gains {gain:+.2f} WAUC over the domain-blind MLP; needs > {BLIND_MARGIN}"


def test_star_beats_the_mlp_that_sees_the_domain_on_conflicting_domains(wauc):
    gain = _gain(wauc, "conflict", "star")
    assert gain > CONFLICT_MARGIN, f"STAR gains {gain:+.2f} WAUC over the MLP; needs > {CONFLICT_MARGIN}"
    # The gain over the MLP mixes the routing with STAR's input normalization, which helps without domains
    # too (STAR routed as one domain gains +2.3 here): the routing itself must add on top of that control.
    routing = statistics.fmean(wauc("conflict", "star", s) - wauc("conflict", ONE_DOMAIN_STAR, s) for s in SEEDS)
    assert routing > ROUTING_MARGIN, (
        f"STAR's domain routing adds {routing:+.2f} WAUC over STAR routed as one domain; needs > {ROUTING_MARGIN}"
    )


def test_star_does_not_lose_on_identical_domains(wauc):
    gain = _gain(wauc, "identical", "star")
    assert gain > -IDENTICAL_SLACK, f"STAR loses {-gain:.2f} WAUC on identical domains; allowed {IDENTICAL_SLACK}"


def test_mlora_with_its_two_phase_schedule_does_not_lose_on_identical_domains(wauc):
    # MLoRA §3.3: the backbone first, then the adapters, each phase ended by early stopping on validation.
    gain = _gain(wauc, "identical", "mlp+mlora@two_phase")
    assert gain > -IDENTICAL_SLACK, f"MLP+MLoRA (two-phase) loses {-gain:.2f} WAUC on identical domains"


@pytest.mark.xfail(
    strict=True,
    reason="measured: MLP+MLoRA trained jointly from the first step (not the paper's "
    "two-phase schedule) loses about 2 WAUC on identical domains at this size: "
    "the per-domain adapters overfit alongside the backbone",
)
def test_mlora_trained_jointly_does_not_lose_on_identical_domains(wauc):
    gain = _gain(wauc, "identical", "mlp+mlora", seeds=SEEDS[:1])
    assert gain > -IDENTICAL_SLACK, f"MLP+MLoRA loses {-gain:.2f} WAUC on identical domains"


def test_the_blind_check_fails_for_star_without_its_domain_machinery(wauc):
    # The negative control: STAR routed as one domain has no domain machinery left; the check must reject it.
    gain = _gain(wauc, "conflict_blind", ONE_DOMAIN_STAR, seeds=SEEDS[:1])
    assert gain < BLIND_MARGIN, f"STAR routed as one domain still gains {gain:+.2f}; the check could not fail"
