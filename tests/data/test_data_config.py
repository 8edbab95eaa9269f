"""Data config values are checked when the config is read, and the error starts with the dotted key."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from polyrec.config import ConfigError, from_dict, to_dict
from polyrec.data.config import DataConfig, SourceConfig, SplitConfig

VALID = {
    "source": {"kind": "csv", "path": "clicks.csv"},
    "label": {"column": "rating", "op": "gt", "threshold": 3},
    "domain": {"column": "page", "groups": {"home": ["h"], "other": ["s", "c"]}},
    "features": [
        {"name": "user_id"},
        {"name": "item_id", "column": "iid", "min_count": 2},
        {"name": "tags", "kind": "multi", "sep": "|", "max_len": 5},
        {"name": "price", "kind": "dense", "transform": "standard"},
    ],
    "user_feature": "user_id",
    "split": {"method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0, "dedupe": True, "untrained_domains": "drop"},
}


def with_value(path: str, value):
    """VALID with the dotted ``path`` (``features.1.min_count``) set to ``value``."""
    data = copy.deepcopy(VALID)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


def test_the_valid_config_reads_and_the_new_fields_have_their_defaults():
    cfg = from_dict(DataConfig, VALID, path="data")
    assert cfg.split.dedupe is True and cfg.split.untrained_domains == "drop"
    assert SplitConfig().dedupe is False and SplitConfig().untrained_domains == "error"
    assert SourceConfig().sep is None
    assert from_dict(DataConfig, with_value("source.sep", "\t"), path="data").source.sep == "\t"


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "path, value, key",
    [
        ("split.ratios", [0.5, 0.2, 0.2], "data.split.ratios"),
        ("split.ratios", [0.0, 0.5, 0.5], "data.split.ratios"),
        ("split.ratios", [1.2, -0.1, -0.1], "data.split.ratios"),
        ("split.ratios", [NAN, 0.5, 0.5], "data.split.ratios"),
        ("split.ratios", [INF, 0.0, 0.0], "data.split.ratios"),
        ("split.ratios", [0.8, 0.2], "data.split.ratios"),
        ("split.seed", -1, "data.split.seed"),
        ("split.time_column", "", "data.split.time_column"),
        ("split.untrained_domains", "keep", "data.split.untrained_domains"),
        ("split.dedupe", "yes", "data.split.dedupe"),
        ("features.1.min_count", 0, "data.features[1].min_count"),
        ("features.2.max_len", -1, "data.features[2].max_len"),
        ("features.0.name", "", "data.features[0].name"),
        ("features.1.column", "", "data.features[1].column"),
        ("features.2.sep", "", "data.features[2].sep"),
        ("features.3.transform", "log", "data.features[3].transform"),
        ("label.threshold", NAN, "data.label.threshold"),
        ("label.threshold", INF, "data.label.threshold"),
        ("label.column", "", "data.label.column"),
        ("label.op", "ne", "data.label.op"),
        ("domain.column", "", "data.domain.column"),
        ("domain.groups", {}, "data.domain.groups"),
        ("domain.groups", {"home": []}, "data.domain.groups"),
        ("source.name", "", "data.source.name"),
        ("source.path", "", "data.source.path"),
        ("source.path", None, "data.source.path"),
        ("source.sep", "", "data.source.sep"),
        ("source.kind", "excel", "data.source.kind"),
        ("user_feature", "price", "data.user_feature"),
        ("user_feature", "nobody", "data.user_feature"),
        ("features", [{"name": "user_id"}, {"name": "user_id"}], "data.features"),
    ],
)
def test_a_bad_value_is_refused_naming_its_dotted_key(path, value, key):
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, with_value(path, value), path="data")
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert "not allowed" in message or "not one of" in message or "expected" in message, message


def test_ratio_error_says_what_is_allowed():
    with pytest.raises(
        ConfigError,
        match=r"^data\.split\.ratios: \[0\.5, 0\.2, 0\.2\] is not allowed; must be "
        r"three finite non-negative fractions .* summing to 1 with train > 0",
    ):
        from_dict(DataConfig, with_value("split.ratios", [0.5, 0.2, 0.2]), path="data")
    # Float noise is no error: 1 - 0.8 - 0.1 is not exactly 0.1.
    assert from_dict(DataConfig, with_value("split.ratios", [0.8, 0.1, 1 - 0.8 - 0.1]), path="data")


def test_parquet_with_a_sep_and_a_domain_feature_clash_are_refused():
    data = with_value("source", {"kind": "parquet", "path": "x.parquet", "sep": ";"})
    with pytest.raises(
        ConfigError,
        match=r"^data\.source\.sep: ';' is not allowed; data\.source\.sep applies to "
        r"csv files only; remove it for parquet",
    ):
        from_dict(DataConfig, data, path="data")
    clash = with_value("features.0.name", "domain")
    clash["user_feature"] = None
    clash["domain"]["as_feature"] = True
    with pytest.raises(ConfigError, match=r"^data\.features: .*as_feature adds a feature named 'domain'"):
        from_dict(DataConfig, clash, path="data")


def test_constructing_in_code_checks_the_cross_field_rules_too():
    """Library callers get the __post_init__ checks (ratios, sep, user_feature) without from_dict."""
    with pytest.raises(ConfigError, match=r"^ratios: "):
        SplitConfig(ratios=(0.9, 0.2, 0.1))
    with pytest.raises(ConfigError, match=r"^sep: "):
        SourceConfig(kind="parquet", path="x.parquet", sep=",")
    cfg = from_dict(DataConfig, VALID, path="data")
    with pytest.raises(ConfigError, match=r"^user_feature: 'price' is not allowed"):
        dataclasses.replace(cfg, user_feature="price")


def test_sample_keeps_a_seeded_subset_of_the_rows_in_order(synthetic_cfg):
    import dataclasses

    from polyrec.data.config import SampleConfig
    from polyrec.data.dataset import _key_payload, load_rows

    full = load_rows(synthetic_cfg)
    part_cfg = dataclasses.replace(synthetic_cfg, sample=SampleConfig(fraction=0.25, seed=3))
    part = load_rows(part_cfg)
    assert len(part) == round(0.25 * len(full))
    again = load_rows(part_cfg)
    assert part.equals(again)  # the same draw every time
    other = load_rows(dataclasses.replace(synthetic_cfg, sample=SampleConfig(fraction=0.25, seed=4)))
    assert not part.equals(other)
    merged = part.merge(full.reset_index(), on=list(full.columns), how="left")
    assert merged["index"].is_monotonic_increasing  # rows of the source, in its order
    assert "sample" not in _key_payload(synthetic_cfg, {})["config"]  # an unused sample keys as before
    assert "sample" in _key_payload(part_cfg, {})["config"]
    with pytest.raises(ConfigError, match=r"data.sample.fraction: 0.0 is not allowed; must be > 0 and <= 1"):
        from_dict(DataConfig, {**to_dict(synthetic_cfg), "sample": {"fraction": 0.0}}, path="data")
