"""Every model config declares what its values may be, and rejects the rest when it is read.

Walks the registry (``polyrec.list_models()``): a model that joins it is held to this from that moment.

- Every numeric field (int, float, optional or not, and tuples of them) and every free-text field (a
  ``str`` that is not a ``Literal``, a tuple of names) declares a :class:`polyrec.config.Check`, unless it
  is listed in :data:`EXEMPT` with the reason.
- Each declared bound is enforced: a value just outside it raises a ConfigError that starts with
  ``model.<field>:`` (the key as the user writes it in the ``model`` section).
- The common fields reject the usual mistakes the same way.
- No preset's values are rejected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

import pytest
from builders import make_schema

import polyrec
from polyrec.config import Check, ConfigError, field_check, from_dict
from polyrec.data.protocols import list_presets, preset
from polyrec.experiment import make_config
from polyrec.layers.mlp import ACTIVATIONS
from polyrec.models import create_model, get_model_class, model_config
from polyrec.models.adapters import AdapterConfig

# The ranking models (the two-tower retrieval models have their own contract: tests/retrieval/test_models.py).
MODELS = [m for m in polyrec.list_models() if "retrieval" not in polyrec.models.model_tags(m)]

#: (model, field) pairs allowed to declare no check, each with the reason. Empty: every numeric and
#: free-text field of every registered model declares one. A field belongs here only when no value of its
#: type is wrong (NaN and infinities included) and it says why in a comment.
EXEMPT: frozenset[tuple[str, str]] = frozenset()


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _kind(tp: Any) -> str | None:
    """``number``, ``numbers`` (a tuple of numbers), ``text``, ``names`` (a tuple of str), or None (a type
    that coercion checks completely: bool, Literal, nested configs)."""
    tp = _strip_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float):
        return "number"
    if tp is str:
        return "text"
    if origin is tuple and args:
        items = {a for a in args if a is not Ellipsis}
        if items <= {int, float}:
            return "numbers"
        if items == {str}:
            return "names"
    return None  # bool, Literal and nested configs: type coercion already rejects every other value


def _fields(cls: type) -> list[tuple[str, str, Any, Check | None]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = _kind(hints[f.name])
        if kind is not None:
            out.append((f.name, kind, hints[f.name], field_check(cls, f.name)))
    return out


CHECKED = [
    (name, field, kind, tp, check)
    for name in MODELS
    for field, kind, tp, check in _fields(get_model_class(name).Config)
]


def _outside(check: Check, integer: bool) -> list[Any]:
    """Values just outside each declared bound of ``check``."""
    step = 1 if integer else 0.5
    bad = []
    if check.ge is not None:
        bad.append(check.ge - step)
    if check.gt is not None:
        bad.append(check.gt)
    if check.le is not None:
        bad.append(check.le + step)
    if check.lt is not None:
        bad.append(check.lt)
    if integer:
        return [int(v) for v in bad]
    if bad:
        bad.append(math.nan)  # NaN compares false with every bound
    return [float(v) for v in bad]


def _is_int(tp: Any) -> bool:
    tp = _strip_optional(tp)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return tp is int or (bool(args) and set(args) == {int})


def _bad_values(field: str, kind: str, tp: Any, check: Check, default: Any) -> list[Any]:
    """Values of ``field`` that ``check`` must reject (each built to break only this field)."""
    integer = _is_int(tp)
    if kind == "number":
        bad = _outside(check, integer)
        if check.rule is not None and not integer:
            bad += [math.nan, math.inf, -math.inf]  # the finite-number rule
        return bad
    if kind == "numbers":
        base = list(default) if default else [1]
        bad = [[v, *base[1:]] for v in _outside(check.items, integer)] if check.items is not None else []
        variable_length = typing.get_args(_strip_optional(tp))[-1] is Ellipsis
        if check.rule is not None and variable_length:
            bad.append([])  # a size list that needs at least one size
        return bad
    if kind == "names":
        return [[""], ["a", "a"]]
    if kind == "text" and check.choices is not None:
        return ["not-a-choice"]
    return []


# ------------------------------------------------------------------------------------------ declared checks


@pytest.mark.parametrize("name", MODELS)
def test_every_numeric_and_text_field_declares_a_check(name: str) -> None:
    missing = [
        field
        for field, _, _, check in _fields(get_model_class(name).Config)
        if check is None and (name, field) not in EXEMPT
    ]
    assert not missing, (
        f"{name}: fields without a declared check: {missing}; declare one with "
        "polyrec.config.param(...) or add them to EXEMPT with the reason"
    )


def test_exemptions_name_real_fields() -> None:
    for name, field in EXEMPT:
        assert field in {f.name for f in dataclasses.fields(get_model_class(name).Config)}, (name, field)


@pytest.mark.parametrize(
    "name,field,kind,tp,check",
    [c for c in CHECKED if c[4] is not None],
    ids=[f"{c[0]}.{c[1]}" for c in CHECKED if c[4] is not None],
)
def test_each_declared_check_rejects_values_outside_it(name, field, kind, tp, check) -> None:
    default = getattr(get_model_class(name).Config(), field)
    assert check.error(default) is None, f"{name}.{field}: the default {default!r} fails its own check"
    bad = _bad_values(field, kind, tp, check, default)
    assert bad, f"{name}.{field}: the test has no value outside the declared check {check}"
    for value in bad:
        with pytest.raises(ConfigError) as info:
            model_config(name, **{field: value})
        assert str(info.value).startswith(f"model.{field}: "), str(info.value)
        assert "is not allowed" in str(info.value), str(info.value)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "field,value",
    [
        ("embedding_dim", 0),
        ("dropout", 1.5),
        ("dropout", -0.1),
        ("dropout", 1.0),
        ("activation", "swishy"),
        ("hidden_units", [0]),
        ("hidden_units", [64, -8]),
        ("aux_hidden", [0]),
    ],
)
def test_common_fields_reject_the_usual_mistakes_naming_the_key(name: str, field: str, value: Any) -> None:
    fields = {f.name for f in dataclasses.fields(get_model_class(name).Config)}
    if field not in fields:
        pytest.skip(f"{name} has no {field}")
    with pytest.raises(ConfigError, match=rf"^model\.{field}: .* is not allowed; .*\(model '{name}'\)$"):
        create_model(name, make_schema(), **{field: value})


def test_activation_choices_are_the_activation_registry() -> None:
    for name in MODELS:
        check = field_check(get_model_class(name).Config, "activation")
        assert callable(check.choices) and set(check.choices()) == set(ACTIVATIONS), name
    with pytest.raises(ConfigError) as err:
        model_config("mlp", activation="swishy")
    message = str(err.value)
    assert message.startswith("model.activation: 'swishy' is not allowed; must be one of")
    assert all(repr(a) in message for a in ACTIVATIONS)


def test_the_experiment_config_reports_the_key_of_the_model_section() -> None:
    with pytest.raises(ConfigError, match=r"^model\.dropout: 1\.5 is not allowed; must be >= 0 and < 1"):
        make_config("ml1m-gender", "star", overrides=["model.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"^model\.hidden_units: item 0 \(0\) is not allowed; must be >= 1"):
        make_config("ml1m-age3", "mlp", overrides=["model.hidden_units=[0]"])
    with pytest.raises(ConfigError, match=r"^model\.pn_eps: 0\.0 is not allowed; must be > 0"):
        make_config("ml1m-gender", "star", overrides=["model.pn_eps=0"])


def test_a_config_built_directly_is_checked_when_the_model_is_built() -> None:
    cls = get_model_class("star")
    with pytest.raises(ConfigError, match=r"^model\.dropout: 1\.5 is not allowed"):
        cls(make_schema(), cls.Config(dropout=1.5))


@pytest.mark.parametrize(
    "name,bad,message",
    [
        ("adasparse", {"sparsity_range": [0.6, 0.2]}, r"^model\.sparsity_range: \[0\.6, 0\.2\] is not allowed; r_min"),
        (
            "ple",
            {"num_shared_experts": 0, "num_specific_experts": 0},
            r"^model\.num_specific_experts: 0 .*at least one",
        ),
        ("sarnet", {"shared_experts": 0, "specific_experts": 0}, r"^model\.specific_experts: 0 .*at least one"),
        ("xdeepfm", {"cin_layer_sizes": [3, 4]}, r"^model\.cin_layer_sizes: \[3, 4\] .*even"),
        (
            "aitm",
            {"domain_order": ["d0", "d1"]},
            r"^model\.domain_order: \['d0', 'd1'\] is not allowed; list every domain",
        ),
        ("star", {"aux_features": ["nope"]}, r"^model\.aux_features: 'nope' is not allowed; .*embedded feature"),
        ("ppnet", {"prior_features": ["user", "tags"]}, r"^model\.prior_features: 'tags' is not allowed; .*sparse"),
    ],
)
def test_checks_across_fields_and_against_the_schema_name_the_key(name: str, bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model(name, make_schema(), **bad)


def test_zero_means_the_default_where_documented() -> None:
    schema = make_schema()
    assert create_model("autoint", schema, attention_dim=0).attention[0].attention_dim == 16
    assert create_model("star", schema, aux_embedding_dim=0).aux.embedding.embedding_dim == 16
    assert create_model("m2m", schema, meta_tower_layers=0).tower_layers.__len__() == 0
    create_model("mulann", schema, adversarial_weight=0.0, reversal_scale=0.0)
    create_model("adasparse", schema, sparsity_weight=0.0, alpha_step=0.0)
    create_model("ple", schema, num_shared_experts=0)
    create_model("sarnet", schema, specific_experts=0)


# ------------------------------------------------------------------------------------------------ presets


PRESET_MODELS = [(p, m) for p in list_presets() for m in preset(p)["models"]]


@pytest.mark.parametrize("protocol,model", PRESET_MODELS, ids=[f"{p}:{m}" for p, m in PRESET_MODELS])
def test_no_preset_value_is_rejected(protocol: str, model: str) -> None:
    cfg = make_config(protocol, model)
    for key, value in preset(protocol)["models"][model].items():
        got = getattr(cfg.model, key)
        assert got == (tuple(value) if isinstance(value, list) else value), (protocol, model, key)


@pytest.mark.parametrize("protocol", list_presets())
def test_every_registered_model_reads_with_every_preset(protocol: str) -> None:
    # Models a preset does not name take its model_defaults where they have the field.
    for name in MODELS:
        make_config(protocol, name)


# -------------------------------------------------------------------------------------------- the adapter


def test_adapter_config_declares_its_checks() -> None:
    missing = [f for f, _, _, check in _fields(AdapterConfig) if check is None]
    assert not missing
    for field, value, message in [
        ("alpha", 0, r"^adapter\.alpha: 0 is not allowed; must be >= 1$"),
        ("max_adapter_params", 0, r"^adapter\.max_adapter_params: 0 is not allowed; must be >= 1$"),
        ("targets", ["dnn", "tower"], r"^adapter\.targets: item 1 \('tower'\) is not allowed; must be one of"),
        ("targets", [], r"^adapter\.targets: \[\] is not allowed; name at least one"),
        ("targets", ["star", "star"], r"^adapter\.targets: \['star', 'star'\] is not allowed; 'star' is listed twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_dict(AdapterConfig, {"kind": "mlora", field: value}, path="adapter")
    with pytest.raises(ConfigError, match=r"^adapter\.targets: \['dnn'\] is not allowed; it is used only with"):
        from_dict(AdapterConfig, {"targets": ["dnn"]}, path="adapter")
    ok = from_dict(AdapterConfig, {"kind": "mlora", "alpha": 1, "targets": ["dnn", "output"]}, path="adapter")
    assert ok.targets == ("dnn", "output")
