"""A model name combined with a preset or a config file: the name's parts win, a file's strategy options
go with the file's strategy, and ``--set`` may not contradict the name."""

from pathlib import Path

import pytest
import yaml
from conftest import SYNTHETIC_DATA

from polyrec.config import ConfigError
from polyrec.data.config import DataConfig, SourceConfig
from polyrec.experiment import data_config, make_config, resolve_config
from polyrec.rundir import config_hash
from polyrec.training.strategies import list_strategies, strategy_options

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ml1m_occupation.yaml"
MAMDR_DEFAULTS = {
    "outer_lr": 0.1,
    "inner_batches": None,
    "specific_lr": 0.1,
    "helper_domains": None,
    "helper_batches": None,
    "target_batches": None,
    "add_target_domain": False,
    "specific_parameters": "all",
    "regularize": True,
}


def _file(tmp_path, train, model=None):
    doc = {
        "protocol": "mine",
        "data": SYNTHETIC_DATA,
        "model": model or {"embedding_dim": 4, "hidden_units": [8]},
        "train": train,
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_every_model_at_strategy_works_on_the_bundled_example_config():
    assert yaml.safe_load(EXAMPLE.read_text())["train"]["strategy"] == "domain_batched"  # it names one
    for strategy in list_strategies():
        cfg = make_config(config_file=str(EXAMPLE), model=f"mlp@{strategy}")
        assert cfg.train.strategy == strategy and cfg.display_name == f"mlp@{strategy}"
    assert make_config(config_file=str(EXAMPLE), model="mlp").train.strategy == "domain_batched"


def test_the_file_strategy_options_are_dropped_with_a_warning_when_the_name_names_another_strategy(tmp_path):
    path = _file(tmp_path, {"strategy": "domain_negotiation", "strategy_options": {"outer_lr": 0.5}})
    with pytest.warns(
        UserWarning,
        match=r"train.strategy_options \{'outer_lr': 0.5\} dropped: they are for "
        r"train.strategy 'domain_negotiation', which the model name 'mlp@mamdr' "
        r"replaces with 'mamdr'",
    ):
        cfg = make_config(config_file=path, model="mlp@mamdr")
    assert cfg.train.strategy == "mamdr" and cfg.train.strategy_options == MAMDR_DEFAULTS


@pytest.mark.parametrize(
    "train", [{"strategy": "mamdr", "strategy_options": {"outer_lr": 0.5}}, {"strategy_options": {"outer_lr": 0.5}}]
)
def test_the_file_strategy_options_apply_when_its_strategy_is_the_named_one_or_unset(tmp_path, recwarn, train):
    cfg = make_config(config_file=_file(tmp_path, train), model="mlp@mamdr")
    assert cfg.train.strategy_options == {**MAMDR_DEFAULTS, "outer_lr": 0.5}
    assert not [w for w in recwarn if "dropped" in str(w.message)]


def test_a_preset_under_a_file_keeps_its_settings_for_the_named_strategy(tmp_path):
    path = _file(tmp_path, {"strategy": "alternate", "strategy_options": {}})
    cfg = make_config("ml1m-age7", "mlp@mamdr", config_file=path)
    assert cfg.train.strategy_options == {**MAMDR_DEFAULTS, "helper_domains": 3}  # the preset's k for MAMDR


def test_file_model_options_for_another_model_are_dropped_with_a_warning(tmp_path):
    path = _file(tmp_path, {}, model={"name": "star", "embedding_dim": 4})
    with pytest.warns(UserWarning, match=r"model options \{'embedding_dim': 4\} dropped: they are for model 'star'"):
        cfg = make_config(config_file=path, model="mlp")
    assert cfg.model_name == "mlp" and cfg.model.embedding_dim != 4


def test_an_override_or_a_document_that_contradicts_the_name_is_an_error(tmp_path):
    path = _file(tmp_path, {"strategy": "alternate"})
    with pytest.raises(
        ConfigError,
        match="model.name 'mlp@mamdr' asks for strategy 'mamdr' but train.strategy is 'joint'; drop one of them",
    ):
        make_config(config_file=path, model="mlp@mamdr", overrides=["train.strategy=joint"])
    with pytest.raises(ConfigError, match="model.name 'mlp\\+mlora' asks for MLoRA but adapter.kind is 'none'"):
        make_config(config_file=path, model="mlp+mlora", overrides=["adapter.kind=none"])
    doc = {"data": SYNTHETIC_DATA, "model": {"name": "mlp@mamdr"}, "train": {"strategy": "joint"}}
    with pytest.raises(ConfigError, match="asks for strategy 'mamdr' but train.strategy is 'joint'"):
        resolve_config(doc)


def test_the_resolved_config_holds_every_strategy_option_and_reloads_as_the_same_config(tmp_path):
    cfg = make_config(config_file=str(EXAMPLE), model="mlp+mlora@mamdr")
    saved = cfg.to_dict()
    assert saved["train"]["strategy_options"] == MAMDR_DEFAULTS
    assert set(saved["train"]["strategy_options"]) == set(vars(strategy_options("mamdr")))
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(saved, sort_keys=False))
    again = make_config(config_file=str(printed), model="mlp")
    assert config_hash(again.to_dict()) == config_hash(saved) and again.adapter.kind == "mlora"


def test_movielens_names_have_one_spelling_and_the_aliases_read_as_it():
    for alias, name in (("movielens-1m", "ml-1m"), ("MovieLens-100K", "ml-100k"), ("ml-1m", "ml-1m")):
        assert SourceConfig(kind="movielens", name=alias).name == name
    a = make_config("ml1m-gender", "mlp", overrides=["data.source.name=movielens-1m"])
    assert config_hash(a.to_dict()) == config_hash(make_config("ml1m-gender", "mlp").to_dict())
    with pytest.raises(
        ConfigError,
        match="data.source.name: 'ml-2m' is not allowed; must be one of 'ml-1m', "
        "'ml-100k' \\(also spelt 'movielens-1m', 'movielens-100k'\\)",
    ):
        make_config("ml1m-gender", "mlp", overrides=["data.source.name=ml-2m"])


def test_data_config_reads_the_data_section_of_a_preset_or_a_file(tmp_path):
    assert data_config("ml1m-gender") == make_config("ml1m-gender", "mlp").data
    assert isinstance(data_config(config_file=str(EXAMPLE)), DataConfig)
    assert data_config(config_file=_file(tmp_path, {}), overrides=["data.split.seed=3"]).split.seed == 3
    with pytest.raises(ConfigError, match="override 'train.lr=1': only data.\\* keys change the data set"):
        data_config("ml1m-gender", overrides=["train.lr=1"])
