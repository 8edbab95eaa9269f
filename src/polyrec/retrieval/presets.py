"""The retrieval presets: a data protocol (:data:`polyrec.retrieval.data.RETRIEVAL_PROTOCOLS`), the training
settings every model of the preset shares, the models of its benchmark and the paper's published numbers.

ADI publishes no hyper-parameters; the settings here are the library's (Adam at 1e-3, batches of 1,024 one
domain's positives each, temperature 0.05 on L2-normalised embeddings, early stopping on validation
Recall@50 averaged over the domains with patience 3) and are the same for every model, so the methods differ
only in their towers and strategy. The published numbers are ADI's Tables 2, 6, 7 and 8 on the Alibaba
production data (Recall@500 per domain): another data set, so what a benchmark compares is orderings and
gains, never values.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from ..data.protocols import UnknownPresetError
from .data import RETRIEVAL_PROTOCOLS

_TRAIN = {
    "lr": 1e-3,
    "batch_size": 1024,
    "temperature": 0.05,
    "max_epochs": 100,
    "patience": 3,
    "monitor": "recall@50_mean",
}

#: The methods of ADI's Table 2 and the popularity floor; the ADI variants compared without self-training
#: (it triples an epoch's cost), ADI-SE also with it (benchmarks/adi_retrieval.py says why).
TABLE2_MODELS = (
    "popularity",
    "dnn",
    "adi",
    "adi@self_training",
    "ple",
    "mmoe",
    "shared_bottom",
    "cross_stitch",
    "dnn_single",
    "adi_lt",
    "adi_va",
    "adi_se_max",
)
#: Tables 6, 7 and 8 as model specs of the retrieval benchmark (``name[option=value,...]@strategy``).
ABLATION_MODELS = (
    "adi[fusion=sum]",
    "adi[fusion=network_mul]",
    "adi[adaptation=none]",
    "adi[adaptation=none,dsbn=false]",
    "adi[adaptation_placement=global]",
    "adi[adaptation_placement=network]",
)

#: ADI Table 2 (Recall@500 per domain, Alibaba production data) and Tables 6-8, as published.
PUBLISHED = {
    "source": "ADI (Jiang et al.) Tables 2, 6, 7, 8: Recall@500 per domain on the Alibaba production data",
    "table2_r500": {
        "dnn_single": [0.3934, 0.2653, 0.2401],
        "dnn": [0.3877, 0.3354, 0.2606],
        "shared_bottom": [0.3330, 0.2980, 0.2196],
        "cross_stitch": [0.3245, 0.2901, 0.2054],
        "mmoe": [0.3988, 0.3549, 0.2609],
        "ple": [0.4076, 0.3799, 0.2693],
        "adi_lt": [0.4086, 0.3627, 0.2483],
        "adi_va": [0.4292, 0.3905, 0.2712],
        "adi_se": [0.4683, 0.4222, 0.2982],
        "adi_se_max": [0.4849, 0.4429, 0.3292],
    },
    "table6_fusion_r500": {
        "sum": [0.4567, 0.4105, 0.2686],
        "network_mul": [0.4619, 0.4023, 0.2706],
        "concat": [0.4683, 0.4222, 0.2982],
    },
    "table7_ablation_r500": {
        "adi_se": [0.4683, 0.4222, 0.2982],
        "without_st": [0.4462, 0.4022, 0.2744],
        "without_st_dial": [0.4164, 0.3784, 0.2576],
        "without_st_dial_dsbn": [0.3964, 0.3555, 0.2399],
    },
    "table8_se_r500": {
        "1-se": [0.4415, 0.3922, 0.2804],
        "3-se": [0.4683, 0.4222, 0.2982],
        "4-se": [0.4516, 0.4041, 0.2917],
    },
    "ordering": "ADI-SE (MAX) > ADI-SE > ADI-VA > PLE > MMoE ≈ DNN ≈ ADI-LT > DNN-Single; Shared-Bottom and Cross-Stitch last",
}

RETRIEVAL_PRESETS: dict[str, dict[str, Any]] = {
    "ml1m-age3-retrieval": {
        "description": "R1: MovieLens-1M retrieval, ratings >= 4, P2's 3 age groups (users disjoint, items shared)",
        "data": "ml1m-age3-retrieval",
        "train": _TRAIN,
        "models": TABLE2_MODELS,
        "ablations": ABLATION_MODELS,
        "published": PUBLISHED,
    },
    "ml1m-genre3-retrieval": {
        "description": "R2: MovieLens-1M retrieval, ratings >= 4, 3 groups of the first genre (items disjoint, users shared)",
        "data": "ml1m-genre3-retrieval",
        "train": _TRAIN,
        "models": TABLE2_MODELS,
        "ablations": ABLATION_MODELS,
        "published": PUBLISHED,
    },
}
assert set(RETRIEVAL_PRESETS) == set(RETRIEVAL_PROTOCOLS)


def list_retrieval_presets() -> list[str]:
    return sorted(RETRIEVAL_PRESETS)


def retrieval_preset(name: str) -> dict[str, Any]:
    """A copy of retrieval preset ``name``; an unknown name raises with the close matches."""
    if name not in RETRIEVAL_PRESETS:
        close = difflib.get_close_matches(name, RETRIEVAL_PRESETS, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPresetError(
            f"unknown retrieval preset {name!r}.{hint} Valid presets: {', '.join(list_retrieval_presets())}"
        )
    return copy.deepcopy(RETRIEVAL_PRESETS[name])
