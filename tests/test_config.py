"""Strict configuration: unknown keys, wrong types and overrides."""

from dataclasses import dataclass, field

import pytest

from polyrec.config import ConfigError, apply_overrides, from_dict, parse_override, to_dict
from polyrec.experiment import make_config


@dataclass(frozen=True)
class Inner:
    units: tuple[int, ...] = (8,)
    kind: str = "a"


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-3
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_from_dict_builds_nested_and_converts_lists():
    cfg = from_dict(Outer, {"lr": 1, "inner": {"units": [4, 2]}, "maybe": 3})
    assert cfg == Outer(lr=1.0, inner=Inner(units=(4, 2)), maybe=3)
    assert to_dict(cfg)["inner"]["units"] == [4, 2]


@pytest.mark.parametrize(
    "data,message",
    [
        ({"lrr": 1}, r"unknown config key 'lrr'.*Did you mean 'lr'"),
        ({"lr": "x"}, r"lr: expected a number, got 'x'"),
        ({"flag": 1}, r"flag: expected true or false"),
        ({"inner": {"units": "8"}}, r"inner.units: expected a list"),
        ({"inner": {"unit": [1]}}, r"unknown config key 'unit' in inner"),
        ({"maybe": "no"}, r"maybe: value 'no' matches none"),
    ],
)
def test_from_dict_rejects_bad_input(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("model.hidden_units=[64, 32]") == (["model", "hidden_units"], [64, 32])
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=x"]) == {"a": {"b": 2, "c": "x"}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("nonsense")


def test_preset_overrides_validate():
    cfg = make_config("ml1m-gender", "star", overrides=["train.lr=0.01", "model.dropout=0.1"])
    assert cfg.train.lr == 0.01 and cfg.model.dropout == 0.1 and cfg.model.embedding_dim == 128
    assert cfg.train.strategy == "alternate" and cfg.data.split.ratios == (0.6, 0.2, 0.2)
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        make_config("ml1m-gender", "star", overrides=["data.split.bogus=1"])
    with pytest.raises(KeyError, match="unknown preset 'ml1m-gendr'.*ml1m-gender"):
        make_config("ml1m-gendr", "star")


def test_preset_can_set_a_models_training_strategy():
    assert make_config("ml1m-age3", "dfei").train.strategy == "dfei_cyclic"
    assert make_config("ml1m-age3", "star").train.strategy == "joint"
    assert make_config("ml1m-age3", "dfei", overrides=["train.strategy=joint"]).train.strategy == "joint"
