"""A run's name, ``<model>[+<adapter>][@<strategy>]``: parsed once, composed once, bad names refused clearly."""

import typing

import pytest

from polyrec.config import ConfigError
from polyrec.models.adapters import AdapterConfig
from polyrec.runspec import ADAPTERS, RunSpec


@pytest.mark.parametrize(
    "name,parts",
    [
        ("mlp", ("mlp", None, None)),
        ("deepfm+mlora", ("deepfm", "mlora", None)),
        ("mlp@mamdr", ("mlp", None, "mamdr")),
        ("deepfm+mlora@two_phase", ("deepfm", "mlora", "two_phase")),
        ("shared_bottom@domain_negotiation", ("shared_bottom", None, "domain_negotiation")),
    ],
)
def test_a_name_parses_into_its_parts_and_composes_back(name, parts):
    spec = RunSpec.parse(name)
    assert (spec.model, spec.adapter, spec.strategy) == parts
    assert str(spec) == name and RunSpec.parse(str(spec)) == spec
    assert str(spec.with_strategy(None)) == name.split("@")[0]


@pytest.mark.parametrize(
    "name,message",
    [
        ("", "is empty"),
        (None, "is empty or not a string"),
        ("mlp@", "no strategy after '@'"),
        ("@mamdr", "no model before '@'"),
        ("+mlora", "no model before '\\+'"),
        ("mlp+", "no adapter after '\\+'"),
        ("mlp@mamdr@joint", "more than one '@'"),
        ("mlp+mlora+mlora", "more than one '\\+'"),
        ("mlp@mamdr+mlora", "the adapter goes before the strategy \\('mlp\\+mlora@mamdr'\\)"),
        ("mlp+lora", "unknown adapter 'lora' after '\\+'; valid: mlora"),
        ("ml p", "white space"),
        ("mlp@ma/mdr", "the strategy part 'ma/mdr' is not a name"),
    ],
)
def test_a_malformed_name_is_a_clear_error_naming_it_and_the_form(name, message):
    with pytest.raises(ConfigError, match=message) as info:
        RunSpec.parse(name)
    assert "<model>[+<adapter>][@<strategy>]" in str(info.value)


def test_the_name_adapters_are_the_adapter_kinds_of_the_config():
    kinds = typing.get_args(typing.get_type_hints(AdapterConfig)["kind"])
    assert set(ADAPTERS) == set(kinds) - {"none"}


def test_an_experiment_config_names_itself_with_its_spec():
    from polyrec.experiment import make_config

    c = make_config("ml1m-gender", "deepfm+mlora@two_phase")
    assert c.spec == RunSpec("deepfm", "mlora", "two_phase") and c.display_name == "deepfm+mlora@two_phase"
    plain = make_config("ml1m-gender", "deepfm", overrides=["adapter.kind=mlora"])
    assert plain.spec == RunSpec("deepfm", "mlora") and plain.to_dict()["model"]["name"] == "deepfm"
