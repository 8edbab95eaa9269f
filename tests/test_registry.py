"""The generic registry (polyrec.registry) and its two users: models (with tags) and strategies; the P2 zoo
that the tags define; a model file dropped into a package is registered without another edit."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from polyrec.models import MODELS, create_model, get_model_class, list_models, model_tags, models_by_tag, register_model
from polyrec.models._registry import FAMILIES
from polyrec.registry import Registry, UnknownNameError, import_submodules
from polyrec.training.strategies import STRATEGIES, Strategy, create_strategy, list_strategies, register_strategy

ROOT = Path(__file__).resolve().parents[1]
# The P2 zoo as the benchmark script listed it by hand before the tags (published ones first).
HAND_ZOO = [
    "mlp",
    "star",
    "shared_bottom",
    "mmoe",
    "ple",
    "sarnet",
    "m2m",
    "adasparse",
    "adaptdhm",
    "epnet",
    "ppnet",
    "pepnet",
    "cross_stitch",
    "mulann",
    "hmoe",
    "aitm",
    "hinet",
    "hamur",
    "m3oe",
    "dfei",
]


@pytest.fixture
def widgets():
    return Registry("widget", tags={"round": "round ones", "square": "square ones"})


# ---------------------------------------------------------------------------------------------- Registry
def test_register_look_up_and_list_by_tag(widgets):
    @widgets.register("wheel", tags=("round", "round"))
    class Wheel:
        """A round widget.

        More text."""

    @widgets.register("tile", tags=["square"])
    class Tile:
        pass

    assert widgets["wheel"] is Wheel and widgets.get("nope") is None and "tile" in widgets and len(widgets) == 2
    assert list(widgets) == widgets.names() == ["tile", "wheel"]
    assert widgets.names(tag="round") == ["wheel"] and widgets.names("square") == ["tile"]
    entry = widgets.entry("wheel")
    assert (entry.name, entry.tags, entry.summary, entry.definition) == (
        "wheel",
        ("round",),
        "A round widget.",
        f"{__name__}.test_register_look_up_and_list_by_tag.<locals>.Wheel",
    )
    assert widgets.entry("tile").summary == ""
    assert widgets.tags == {"round": "round ones", "square": "square ones"}
    assert widgets.add("disc", object, tags=("round",)) is object and widgets.names("round") == ["disc", "wheel"]


def test_a_taken_name_is_refused_naming_both_definitions(widgets):
    @widgets.register("wheel")
    class Wheel:
        pass

    where = f"{__name__}.test_a_taken_name_is_refused_naming_both_definitions.<locals>"
    with pytest.raises(
        ValueError,
        match=rf"^widget name 'wheel' is already registered by {where}\.Wheel; "
        rf"register {where}\.Other under another name$",
    ):

        @widgets.register("wheel")
        class Other:
            pass

    assert widgets["wheel"] is Wheel


def test_the_same_definition_again_replaces_itself(widgets):
    # What reloading a module does: a new class object with the same module and qualified name.
    first = type("Wheel", (), {"__module__": "somewhere"})
    again = type("Wheel", (), {"__module__": "somewhere"})
    widgets.add("wheel", first)
    widgets.add("wheel", again, tags=("round",))
    assert widgets["wheel"] is again and widgets.names("round") == ["wheel"]


def test_unknown_names_raise_with_close_matches_and_the_valid_names(widgets):
    for name in ("wheel", "tile"):
        widgets.add(name, type(name, (), {}))
    with pytest.raises(UnknownNameError) as info:
        widgets["whele"]
    assert str(info.value) == "unknown widget 'whele'. Did you mean 'wheel'? Valid widgets: tile, wheel"
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError, match=r"^unknown widget 'zzz'\. Valid widgets: tile, wheel$"):
        widgets.entry("zzz")
    with pytest.raises(KeyError, match=r"unknown widget \['wheel'\]"):
        widgets[["wheel"]]
    with pytest.raises(KeyError, match=r"^unknown strategy 'x'\. Valid strategies: \(none registered\)$"):
        Registry("strategy")["x"]


def test_tags_are_checked_at_registration_and_at_lookup(widgets):
    with pytest.raises(
        ValueError,
        match=r"unknown widget tag 'rund'\. Did you mean 'round'\? Valid widget tags: "
        r"round, square \(widget 'wheel'\)",
    ):
        widgets.add("wheel", object, tags=("rund",))
    assert "wheel" not in widgets
    with pytest.raises(TypeError, match=r"not the string 'round' \(write tags=\('round',\)\)"):
        widgets.add("wheel", object, tags="round")
    with pytest.raises(KeyError, match="unknown widget tag 'sqare'. Did you mean 'square'"):
        widgets.names("sqare")
    with pytest.raises(ValueError, match="non-empty string"):
        widgets.add(" wheel", object)
    free = Registry("thing")  # no declared tags: any tag goes, and lists itself
    free.add("a", object, tags=("x",))
    assert free.names("x") == ["a"] and free.names("y") == [] and free.tags == {"x": ""}


def test_unregister_and_hook(widgets):
    seen = []
    hooked = Registry("gadget", on_register=lambda name, obj: seen.append((name, obj)))
    hooked.add("g", int)
    assert seen == [("g", int)]
    assert hooked.unregister("g").obj is int and "g" not in hooked
    with pytest.raises(KeyError, match="unknown gadget 'g'"):
        hooked.unregister("g")


def test_import_submodules_is_sorted_and_skips_private_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "polyrec_tmp_order"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("zeta", "alpha", "_private", "mid"):
        (pkg / f"{name}.py").write_text(f"import {pkg.name} as p\np.__dict__.setdefault('seen', []).append({name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        package = importlib.import_module(pkg.name)
        names = import_submodules(pkg.name, package.__path__)
        assert names == [f"{pkg.name}.alpha", f"{pkg.name}.mid", f"{pkg.name}.zeta"] and package.seen == [
            "alpha",
            "mid",
            "zeta",
        ]
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == pkg.name]:
            del sys.modules[key]


# ---------------------------------------------------------------------------------------------- models
def test_every_built_in_model_has_one_family_tag_matching_its_package():
    for name in list_models():
        families = [t for t in model_tags(name) if t in FAMILIES]
        assert len(families) == 1, (name, model_tags(name))
        package = get_model_class(name).__module__.split(".")[2]
        assert package == families[0], (name, package, families)
    assert list_models("baseline") == ["mlp"] and {"adi", "dnn", "dnn_single"} <= set(list_models("retrieval"))
    assert set(list_models("ctr")) | set(list_models("multidomain")) | set(list_models("retrieval")) == set(
        list_models()
    )
    assert models_by_tag() == {
        "ctr": list_models("ctr"),
        "multidomain": list_models("multidomain"),
        "retrieval": list_models("retrieval"),
    }


def test_model_names_are_checked_like_before():
    with pytest.raises(KeyError, match=r"^unknown model 'mpl'\. Did you mean [^?]*'mlp'\? Valid models: adaptdhm, "):
        get_model_class("mpl")
    with pytest.raises(KeyError, match="unknown model 'stra'. Did you mean 'star'"):
        create_model("stra", None)
    with pytest.raises(
        ValueError,
        match=r"^model name 'mlp' is already registered by polyrec\.models\.ctr\.mlp\.MLPModel; "
        r"register .*Impostor under another name$",
    ):

        @register_model("mlp")
        class Impostor:
            Config = object

    with pytest.raises(TypeError, match="must define a Config dataclass"):

        @register_model("polyrec_tmp_no_config")
        class NoConfig:
            pass

    assert "polyrec_tmp_no_config" not in MODELS and get_model_class("mlp").__name__ == "MLPModel"
    with pytest.raises(ValueError, match="unknown model tag 'multidomian'. Did you mean 'multidomain'"):
        register_model("polyrec_tmp_typo", tags=("multidomian",))(get_model_class("mlp"))
    assert "polyrec_tmp_typo" not in MODELS


def test_strategy_names_are_checked_like_before():
    assert list_strategies() == STRATEGIES.names() and {"joint", "alternate", "mamdr"} <= set(STRATEGIES)
    with pytest.raises(KeyError, match=r"^unknown strategy 'altrenate'\. Did you mean 'alternate'.*Valid strategies: "):
        create_strategy("altrenate")
    with pytest.raises(
        ValueError,
        match=r"strategy name 'joint' is already registered by "
        r"polyrec\.training\.strategies\.basic\.Joint; register .*Mine under",
    ):

        @register_strategy("joint")
        class Mine(Strategy):
            pass

    assert STRATEGIES["joint"].name == "joint" and STRATEGIES["joint"].__name__ == "Joint"


# ---------------------------------------------------------------------------------------------- the P2 zoo
def _p2_script():
    spec = importlib.util.spec_from_file_location("p2_ml1m_age3_script", ROOT / "benchmarks" / "p2_ml1m_age3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_zoo_from_the_tags_is_the_hand_kept_list_and_the_committed_records():
    p2 = _p2_script()
    assert p2.zoo() == HAND_ZOO
    records = json.loads((ROOT / "benchmarks" / "results" / "p2_ml1m_age3_zoo" / "results.json").read_text())
    assert {r["model"] for r in records} == set(p2.zoo())
    # The order list holds zoo members only (no stale names), none of them with a published number.
    from polyrec.data.protocols import preset

    published = preset(p2.PROTOCOL)["reference"]["auc_overall"]
    assert set(p2.FIRST_RUN_ORDER) <= set(p2.zoo()) and not set(p2.FIRST_RUN_ORDER) & set(published)


def test_a_new_model_file_in_a_package_joins_the_registry_and_the_zoo(tmp_path, monkeypatch):
    # A package whose __init__ is the multidomain package's own, and one new model file in it.
    pkg = tmp_path / "polyrec_tmp_models"
    pkg.mkdir()
    init = (ROOT / "src" / "polyrec" / "models" / "multidomain" / "__init__.py").read_text()
    (pkg / "__init__.py").write_text(init.replace("from ...registry import", "from polyrec.registry import"))
    (pkg / "tmp_tower.py").write_text(
        "from polyrec.models import register_model\n"
        "from polyrec.models.ctr.mlp import MLPModel\n\n\n"
        "@register_model('polyrec_tmp_tower', tags=('multidomain',))\n"
        "class TmpTower(MLPModel):\n"
        "    '''A model added as one file.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module(pkg.name)
        assert "polyrec_tmp_tower" in list_models("multidomain")
        assert get_model_class("polyrec_tmp_tower").model_name == "polyrec_tmp_tower"
        assert _p2_script().zoo() == [*HAND_ZOO, "polyrec_tmp_tower"]  # a model added since runs last
    finally:
        if "polyrec_tmp_tower" in MODELS:
            MODELS.unregister("polyrec_tmp_tower")
        for key in [k for k in sys.modules if k.split(".")[0] == pkg.name]:
            del sys.modules[key]
    assert "polyrec_tmp_tower" not in list_models()
