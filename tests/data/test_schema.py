"""DatasetSchema / FeatureSpec / DomainSpec: frozen, JSON round trip, fingerprint, compatibility errors."""

from __future__ import annotations

import dataclasses

import pytest

from polyrec.data.schema import OOV_INDEX, PAD_INDEX, DatasetSchema, DomainSpec, FeatureSpec


def make_schema(**overrides) -> DatasetSchema:
    fields = dict(
        features=(
            FeatureSpec("user_id", "sparse", vocab_size=10),
            FeatureSpec("item_id", "sparse", vocab_size=20),
            FeatureSpec("domain", "sparse", vocab_size=4),
            FeatureSpec("tags", "multi", vocab_size=8, max_len=3),
            FeatureSpec("price", "dense"),
        ),
        domain=DomainSpec("gender", ("F", "M")),
        label="clicked",
        user_feature="user_id",
        domain_feature="domain",
    )
    fields.update(overrides)
    return DatasetSchema(**fields)


def test_index_convention():
    assert (PAD_INDEX, OOV_INDEX) == (0, 1)


@pytest.mark.parametrize(
    "obj, attr",
    [
        (FeatureSpec("a", "sparse", vocab_size=3), "vocab_size"),
        (DomainSpec("g", ("x",)), "values"),
        (make_schema(), "label"),
    ],
)
def test_specs_are_frozen(obj, attr):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, getattr(obj, attr))


def test_schema_is_hashable_and_views_by_kind():
    s = make_schema()
    assert hash(s) == hash(make_schema())
    assert s.sparse_names == ["user_id", "item_id", "domain"]
    assert [f.name for f in s.multi] == ["tags"]
    assert [f.name for f in s.dense] == ["price"]
    assert s.num_domains == 2
    assert s.domain.index("M") == 1
    assert s.feature("tags").max_len == 3


def test_json_round_trip_is_equal():
    s = make_schema()
    back = DatasetSchema.from_json(s.to_json())
    assert back == s
    assert isinstance(back.domain.values, tuple) and isinstance(back.features, tuple)
    assert back.fingerprint() == s.fingerprint()


def test_list_arguments_are_stored_as_tuples():
    s = make_schema(features=list(make_schema().features), domain=DomainSpec("gender", ["F", "M"]))
    assert s == make_schema()
    hash(s)


def test_fingerprint_is_stable():
    """A golden value: the fingerprint is recorded in checkpoints, so it must not depend on the process
    (hash seed, dict order) and must only change on purpose (it would orphan every saved checkpoint)."""
    s = make_schema()
    assert s.fingerprint() == "4ad5cc90e1c44d07"
    assert make_schema().fingerprint() == s.fingerprint()
    # Independent of the order the keyword arguments were given in.
    again = DatasetSchema(
        domain_feature="domain", user_feature="user_id", label="clicked", domain=s.domain, features=s.features
    )
    assert again.fingerprint() == s.fingerprint()


def test_fingerprint_changes_with_content():
    s = make_schema()
    bigger = make_schema(features=(FeatureSpec("user_id", "sparse", vocab_size=11),) + s.features[1:])
    assert bigger.fingerprint() != s.fingerprint()
    assert make_schema(domain=DomainSpec("gender", ("M", "F"))).fingerprint() != s.fingerprint()


def test_check_compatible_accepts_equal_schemas():
    make_schema().check_compatible(DatasetSchema.from_json(make_schema().to_json()))


def test_check_compatible_names_the_feature():
    s = make_schema()
    other = make_schema(features=(s.features[0], FeatureSpec("item_id", "sparse", vocab_size=21)) + s.features[2:])
    with pytest.raises(ValueError, match=r"feature 'item_id'.*vocab_size=20.*vocab_size=21"):
        s.check_compatible(other, what="checkpoint")


def test_check_compatible_names_a_missing_feature():
    s = make_schema()
    fewer = make_schema(features=s.features[:-1])
    with pytest.raises(ValueError, match=r"feature 'price' is FeatureSpec.* in the model and None in the data"):
        s.check_compatible(fewer)


def test_check_compatible_names_feature_order_domains_and_label():
    s = make_schema()
    swapped = make_schema(features=(s.features[1], s.features[0]) + s.features[2:])
    with pytest.raises(ValueError, match="feature order"):
        s.check_compatible(swapped)
    with pytest.raises(ValueError, match=r"domains 'gender' \['F', 'M'\] vs 'gender' \['M', 'F'\]"):
        s.check_compatible(make_schema(domain=DomainSpec("gender", ("M", "F"))))
    with pytest.raises(ValueError, match="label is 'clicked' in the model and 'y'"):
        s.check_compatible(make_schema(label="y"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="x", kind="embedding"), "kind 'embedding' is not one of sparse, multi, dense"),
        (dict(name="x", kind="sparse", vocab_size=1), r"feature 'x': vocab_size 1 must be >= 2"),
        (dict(name="x", kind="sparse"), r"vocab_size 0 must be >= 2"),
        (dict(name="x", kind="multi", vocab_size=5), r"feature 'x': a multi-valued feature needs max_len >= 1"),
        (dict(name="x", kind="dense", vocab_size=5), r"feature 'x': a dense feature has no vocabulary"),
        (dict(name="x", kind="sparse", vocab_size=5, max_len=2), r"max_len applies to multi-valued features only"),
        (dict(name="", kind="dense"), "feature name must be a non-empty string"),
    ],
)
def test_bad_feature_spec_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureSpec(**kwargs)


def test_bad_domain_spec_and_schema_raise():
    with pytest.raises(ValueError, match="domain field 'g' has no domains"):
        DomainSpec("g", ())
    with pytest.raises(ValueError, match=r"duplicate domain names: \['a', 'a'\]"):
        DomainSpec("g", ("a", "a"))
    with pytest.raises(KeyError, match=r"unknown domain 'X'; the schema's domains are \['F', 'M'\]"):
        make_schema().domain.index("X")
    f = FeatureSpec("a", "sparse", vocab_size=3)
    with pytest.raises(ValueError, match=r"duplicate feature names in schema: \['a'\]"):
        DatasetSchema(features=(f, f), domain=DomainSpec("g", ("x",)))
    with pytest.raises(ValueError, match=r"user_feature 'price' is not a sparse feature"):
        make_schema(user_feature="price")
    with pytest.raises(KeyError, match="unknown feature 'nope'"):
        make_schema().feature("nope")
