"""Configs gain keys and change defaults; records and run directories made before must compare (and load)
as what they computed: equal when a config reproduces them, different when it does not."""

import json
from pathlib import Path

import pytest
from conftest import SYNTHETIC_DATA

from polyrec.benchmark import check_reuse
from polyrec.config import ConfigError, from_dict, to_dict
from polyrec.data.config import DataConfig
from polyrec.experiment import make_config, resolve_config
from polyrec.rundir import LEGACY_VALUES, RunMismatch, comparable, config_diff, config_hash, with_legacy_values


def _config(model="mlp", train=None, adapter=None):
    doc = {
        "protocol": "custom",
        "data": SYNTHETIC_DATA,
        "model": {"name": model, "embedding_dim": 4, "hidden_units": [8]},
        "train": {"batch_size": 64, **(train or {})},
    }
    if adapter is not None:
        doc["adapter"] = adapter
    return resolve_config(doc)


def _legacy(config: dict, drop: list[str]) -> dict:
    """``config`` as a record made before the keys ``drop`` existed (and with the options it was given)."""
    out = {k: v for k, v in config.items() if k != "data"}
    for key in drop:
        section, leaf = key.split(".", 1)
        out[section] = {k: v for k, v in out[section].items() if k != leaf}
    return out


def _record(stored: dict) -> dict:
    return {"model": "m", "seed": 0, "split_hash": "s", "config": stored, "config_hash": "0" * 16}


def test_new_adapter_keys_at_their_legacy_value_match_old_records_and_the_new_defaults_do_not():
    new = _config("mlp+mlora")
    assert (new.adapter.domain_bias, new.adapter.a_init) == (False, "gaussian")  # MLoRA eq. 9, §3.2
    old_way = _config("mlp+mlora", adapter={"domain_bias": True, "a_init": "uniform"})
    record = _record(_legacy(old_way.to_dict(), ["adapter.domain_bias", "adapter.a_init"]))
    check_reuse(record, old_way, "s", None)  # the same layer: reused
    with pytest.raises(
        RunMismatch,
        match=r"adapter.a_init: <unset> -> 'gaussian'; adapter.domain_bias: <unset> -> "
        r"false",
    ):
        check_reuse(record, new, "s", None)
    assert (
        comparable(old_way.to_dict()).keys()
        == comparable(record["config"] | {"data": old_way.to_dict()["data"]}).keys()
    )


def test_strategy_options_compare_as_the_options_that_differ_from_the_defaults():
    given = _config(train={"strategy": "mamdr", "strategy_options": {"outer_lr": 0.3}})
    assert given.train.strategy_options["specific_lr"] == 0.1  # held resolved, defaults included
    record = _record(
        {**_legacy(given.to_dict(), []), "train": {**given.to_dict()["train"], "strategy_options": {"outer_lr": 0.3}}}
    )
    check_reuse(record, given, "s", None)  # an old record stored only the option it was given
    other = _config(train={"strategy": "mamdr", "strategy_options": {"outer_lr": 0.2}})
    with pytest.raises(RunMismatch, match="outer_lr: 0.3 -> 0.2"):
        check_reuse(record, other, "s", None)


def test_a_changed_strategy_default_refuses_the_records_of_the_old_default():
    # alternate_finetune's Alternate stage was 5 epochs by default; it now ends by early stopping
    now = _config(train={"strategy": "alternate_finetune"})
    old = {**_legacy(now.to_dict(), []), "train": {**now.to_dict()["train"], "strategy_options": {}}}
    with pytest.raises(RunMismatch, match="alternate_epochs: <unset> -> null"):
        check_reuse(_record(old), now, "s", None)
    five = _config(train={"strategy": "alternate_finetune", "strategy_options": {"alternate_epochs": 5}})
    check_reuse(_record(old), five, "s", None)
    assert config_diff(old | {"data": five.to_dict()["data"]}, five.to_dict()) == []


def test_data_hash_guards_reuse_of_records_whose_config_hash_changed():
    cfg = _config()
    record = {**_record(_legacy(cfg.to_dict(), [])), "data_hash": config_hash({"data": {"other": 1}})}
    with pytest.raises(RunMismatch, match="data"):
        check_reuse(record, cfg, "s", None)
    check_reuse({**record, "data_hash": config_hash({"data": cfg.to_dict()["data"]})}, cfg, "s", None)


def test_stored_configs_load_with_the_values_they_ran_with():
    stored = _legacy(
        _config("mlp+mlora", train={"strategy": "two_phase"}).to_dict(), ["adapter.domain_bias", "adapter.a_init"]
    )
    stored["train"]["strategy_options"] = {}
    stored["data"] = {k: v for k, v in SYNTHETIC_DATA.items()}
    filled = with_legacy_values(stored)
    assert filled["adapter"]["domain_bias"] is True and filled["adapter"]["a_init"] == "uniform"
    assert filled["train"]["strategy_options"] == {"pretrain_epochs": 1}
    assert filled["data"]["domain"]["describing"] == []
    cfg = resolve_config(filled)
    assert cfg.adapter.domain_bias and cfg.train.strategy_options["pretrain_epochs"] == 1
    assert "adapter" not in with_legacy_values({"model": {"name": "mlp"}})  # only sections that exist
    assert set(LEGACY_VALUES) >= {"adapter.domain_bias", "adapter.a_init", "data.domain.describing"}


def test_domain_describing_features_are_checked_and_reach_the_schema_and_star(tiny_dataset):
    doc = {**SYNTHETIC_DATA, "domain": {**SYNTHETIC_DATA["domain"], "describing": ["dense_0"]}}
    with pytest.raises(
        ConfigError,
        match=r"data.domain.describing: \['dense_0'\] is not allowed; 'dense_0' is not a "
        "sparse or multi-valued feature",
    ):
        from_dict(DataConfig, doc, path="data")
    with pytest.raises(ConfigError, match="listed more than once"):
        from_dict(DataConfig, {**doc, "domain": {**doc["domain"], "describing": ["tags", "tags"]}}, path="data")
    ok = from_dict(DataConfig, {**doc, "domain": {**doc["domain"], "describing": ["tags"]}}, path="data")
    star = resolve_config({"data": to_dict(ok), "model": {"name": "star"}})
    assert star.model.aux_features == ("tags",)  # resolved into the config the run saves
    assert _config("star").model.aux_features == ()  # data without them: the indicator alone, as before
    assert tiny_dataset.schema.domain_features == () and "domain_features" not in tiny_dataset.schema.to_dict()


def test_a_record_that_early_stopping_ended_before_either_bound_is_reused_under_another_bound():
    cfg = _config(train={"max_epochs": 100})
    stored = _legacy(_config(train={"max_epochs": 30}).to_dict(), [])
    check_reuse({**_record(stored), "epochs": 12}, cfg, "s", None)  # stopped at 12 < 30: the same run
    with pytest.raises(RunMismatch, match="train.max_epochs: 30 -> 100"):
        check_reuse({**_record(stored), "epochs": 30}, cfg, "s", None)  # the old bound ended it
    with pytest.raises(RunMismatch, match="train.max_epochs: 30 -> 100"):
        check_reuse({**_record(stored), "epochs": 12, "stopped_by": "max_epochs"}, cfg, "s", None)
    with pytest.raises(RunMismatch, match="train.lr"):  # any other difference still refuses
        check_reuse({**_record(stored), "epochs": 12}, _config(train={"max_epochs": 100, "lr": 0.01}), "s", None)
    with pytest.raises(RunMismatch, match="train.max_epochs: 30 -> 10"):
        check_reuse({**_record(stored), "epochs": 12}, _config(train={"max_epochs": 10}), "s", None)


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("folder,protocol", [("p3_mamdr", "ml1m-age7"), ("p1_mlora", "ml1m-gender")])
def test_committed_benchmark_records_are_reused_with_or_without_their_resolved_strategy_options(folder, protocol):
    """The records under benchmarks/results/ stored the strategy options they were given (``{}``, or
    MAMDR's β, γ, k); configs now hold every option, defaults included. A rerun of the benchmark must
    reuse those records, not train them again; and a record holding the resolved options must equal one
    without them."""
    runs = [r for r in json.loads((COMMITTED / folder / "results.json").read_text()) if r.get("config")]
    assert len(runs) >= 50
    partial = 0
    for record in runs:
        cfg = make_config(protocol, record["model"], overrides=[f"train.seed={record['seed']}"])
        check_reuse(record, cfg, record["split_hash"], None)  # what run_benchmark does before training
        resolved = cfg.to_dict()["train"]["strategy_options"]
        stored = record["config"]["train"].get("strategy_options") or {}
        partial += stored != resolved
        full = {**record["config"], "train": {**record["config"]["train"], "strategy_options": resolved}}
        check_reuse({**record, "config": full, "config_hash": None}, cfg, record["split_hash"], None)
        data = {"data": cfg.to_dict()["data"]}
        assert config_hash({**record["config"], **data}) == config_hash({**full, **data})
    assert partial > 0 or folder != "p3_mamdr"  # MAMDR's records store fewer options than a config resolves
    mamdr = next((r for r in runs if r["model"] == "mlp@mamdr"), None)
    if mamdr is not None:  # and a record is still told apart from a config that changes an option
        other = make_config(
            protocol, "mlp@mamdr", overrides=[f"train.seed={mamdr['seed']}", "train.strategy_options.outer_lr=0.2"]
        )
        with pytest.raises(RunMismatch, match="train.strategy_options.outer_lr: <unset> -> 0.2"):
            check_reuse(mamdr, other, mamdr["split_hash"], None)
