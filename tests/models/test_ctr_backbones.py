"""The single-domain CTR backbones and LinearPart: each model's equation checked against its parts or a hand
computation, plus the configuration options that change the architecture."""

from __future__ import annotations

import pytest
import torch
from builders import make_batch, perturb
from torch import nn

import polyrec
from polyrec import Batch, ConfigError, DatasetSchema, DomainSpec, FeatureSpec, create_model
from polyrec.layers.interaction import BiInteractionPooling, CrossNetworkV2, FMInteraction, InnerProduct
from polyrec.layers.linear import LinearPart

BACKBONES = ["wdl", "deepfm", "nfm", "autoint", "pnn", "dcn", "dcnv2", "fibinet", "xdeepfm"]
# Models whose output adds LinearPart (the paper's first-order term).
WITH_LINEAR = ["wdl", "deepfm", "nfm", "fibinet", "xdeepfm"]
SMALL = dict(embedding_dim=4, hidden_units=(8, 4))


def make_schema(dense: int = 2, multi: int = 2) -> DatasetSchema:
    features = [
        FeatureSpec("user", "sparse", vocab_size=11),
        FeatureSpec("item", "sparse", vocab_size=7),
        FeatureSpec("city", "sparse", vocab_size=5),
    ]
    features += [FeatureSpec(f"tags{i}", "multi", vocab_size=6 + i, max_len=3) for i in range(multi)]
    features += [FeatureSpec(f"x{i}", "dense") for i in range(dense)]
    return DatasetSchema(features=tuple(features), domain=DomainSpec("d", ("a", "b", "c")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------ registry


def test_all_nine_backbones_are_registered() -> None:
    assert set(BACKBONES) <= set(polyrec.list_models())


@pytest.mark.parametrize("name", BACKBONES)
def test_config_rejects_unknown_keys(name: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        create_model(name, make_schema(), bogus=1)


@pytest.mark.parametrize("name", BACKBONES)
def test_common_config_defaults(name: str) -> None:
    cfg = polyrec.models.model_config(name)
    assert (cfg.embedding_dim, cfg.hidden_units, cfg.activation, cfg.dropout) == (16, (256, 128, 64), "relu", 0.0)
    assert (cfg.aux_network, cfg.aux_hidden) == (False, (32,))


@pytest.mark.parametrize("name", BACKBONES)
def test_wrong_config_types_and_choices_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="hidden_units"):
        create_model(name, make_schema(), hidden_units="256,128")
    with pytest.raises(ConfigError, match="embedding_dim"):
        create_model(name, make_schema(), embedding_dim=2.5)


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("pnn", "product_type", "kernel"),
        ("pnn", "kernel_type", "full"),
        ("dcnv2", "structure", "serial"),
        ("fibinet", "bilinear_type", "all"),
    ],
)
def test_literal_options_reject_unknown_choices(name: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        create_model(name, make_schema(), **{key: value})


# ------------------------------------------------------------------------------------------------ LinearPart


def test_linear_part_equals_a_hand_computation() -> None:
    schema = make_schema(dense=2, multi=2)
    linear = perturb(LinearPart(schema), seed=1)
    batch = make_batch(schema, n=9, seed=2)
    w = linear.table.weight.detach().squeeze(-1)
    # Rows of the shared table: user (11), item (7), city (5), tags0 (6), tags1 (7).
    starts = {"user": 0, "item": 11, "city": 18, "tags0": 23, "tags1": 29}
    expected = []
    for r in range(len(batch)):
        total = float(linear.bias.detach())
        for c, name in enumerate(["user", "item", "city"]):
            total += float(w[starts[name] + batch.sparse[r, c]])
        for name in ("tags0", "tags1"):
            total += sum(float(w[starts[name] + i]) for i in batch.multi[name][r].tolist() if i != 0)
        total += float(batch.dense[r] @ linear.dense.weight.detach().squeeze(0))
        expected.append(total)
    torch.testing.assert_close(linear(batch), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_linear_part_ignores_padding_and_starts_at_zero() -> None:
    schema = make_schema()
    linear = LinearPart(schema)
    batch = make_batch(schema, n=6)
    assert torch.equal(linear(batch), torch.zeros(6))
    perturb(linear)
    before = linear(batch)
    with torch.no_grad():  # the padding row of every multi-valued field: must not matter
        linear.table.weight[23] += 100.0
        linear.table.weight[29] += 100.0
    torch.testing.assert_close(linear(batch), before)
    all_pad = Batch(
        batch.sparse, batch.dense, batch.label, batch.domain, {k: torch.zeros_like(v) for k, v in batch.multi.items()}
    )
    w = linear.table.weight.detach().squeeze(-1)
    expected = (
        linear.bias.detach()
        + w[batch.sparse + torch.tensor([0, 11, 18])].sum(1)
        + batch.dense @ linear.dense.weight.detach().squeeze(0)
    )
    torch.testing.assert_close(linear(all_pad), expected)


def test_linear_part_without_dense_features() -> None:
    schema = make_schema(dense=0)
    linear = perturb(LinearPart(schema))
    assert linear.dense is None
    assert linear(make_batch(schema, n=20)).shape == (20,)


# ------------------------------------------------------------------------------------------------ per model


def test_deepfm_without_dnn_and_zero_embeddings_is_the_linear_part() -> None:
    schema = make_schema()
    model = perturb(create_model("deepfm", schema, embedding_dim=4, hidden_units=()))
    assert model.dnn is None
    with torch.no_grad():
        model.embeddings.table.weight.zero_()
        for m in model.embeddings.multi.values():
            m.weight.zero_()
    batch = make_batch(schema)
    torch.testing.assert_close(model(batch).logits, model.linear(batch))


def test_deepfm_fm_term_is_the_pairwise_interaction_of_its_embeddings() -> None:
    schema = make_schema()
    model = perturb(create_model("deepfm", schema, **SMALL)).eval()
    batch = make_batch(schema)
    emb = model.embeddings(batch)
    deep = model.dnn(torch.cat([emb.flatten(1), batch.dense], 1)).squeeze(-1)
    fm = model(batch).logits - model.linear(batch) - deep
    torch.testing.assert_close(fm, FMInteraction()(emb).squeeze(-1), atol=1e-5, rtol=1e-5)
    F = emb.shape[1]
    brute = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(F) for j in range(i + 1, F))
    torch.testing.assert_close(fm, brute, atol=1e-5, rtol=1e-5)


def test_wdl_is_wide_plus_deep_and_wide_only_without_hidden_units() -> None:
    schema = make_schema()
    model = perturb(create_model("wdl", schema, **SMALL)).eval()
    batch = make_batch(schema)
    deep = model.dnn(torch.cat([model.embeddings(batch).flatten(1), batch.dense], 1)).squeeze(-1)
    torch.testing.assert_close(model(batch).logits, model.linear(batch) + deep)
    wide = perturb(create_model("wdl", schema, hidden_units=()))
    assert wide.dnn is None
    torch.testing.assert_close(wide(batch).logits, wide.linear(batch))


def test_nfm_is_linear_plus_mlp_of_normalised_bi_interaction() -> None:
    schema = make_schema()
    model = perturb(create_model("nfm", schema, **SMALL, bi_dropout=0.5))
    assert isinstance(model.bi_norm, nn.BatchNorm1d) and isinstance(model.bi_dropout, nn.Dropout)
    model.train()
    model(make_batch(schema, 64, seed=5))  # give the batch norm non-trivial running statistics
    model.eval()
    batch = make_batch(schema)
    emb = model.embeddings(batch)
    pooled = model.bi_norm(BiInteractionPooling()(emb))
    expected = model.linear(batch) + model.dnn(torch.cat([pooled, batch.dense], 1)).squeeze(-1)
    torch.testing.assert_close(model(batch).logits, expected)
    plain = create_model("nfm", schema, bi_batch_norm=False)
    assert isinstance(plain.bi_norm, nn.Identity) and isinstance(plain.bi_dropout, nn.Identity)
    assert plain.dnn.net[0].in_features == 16 + 2  # E + dense
    with pytest.raises(ValueError, match="bi_dropout"):
        create_model("nfm", schema, bi_dropout=1.0)


def test_autoint_defaults_and_plain_variant() -> None:
    schema = make_schema()
    model = create_model("autoint", schema)
    assert len(model.attention) == 3
    assert all(layer.num_heads == 2 and layer.attention_dim == 16 for layer in model.attention)
    assert model.attention[1].embed_dim == 32  # stacked: input of layer 2 is H·d of layer 1
    F = 5
    assert model.attention_out.in_features == F * 32 + 2
    assert model.dnn is not None  # AutoInt+ by default
    plain = perturb(
        create_model(
            "autoint", schema, embedding_dim=4, hidden_units=(), num_heads=3, attention_dim=5, num_attention_layers=2
        )
    ).eval()
    assert plain.dnn is None and plain.attention[-1].output_dim == 15
    batch = make_batch(schema)
    flat = plain.attention(plain.embeddings(batch)).flatten(1)
    torch.testing.assert_close(plain(batch).logits, plain.attention_out(torch.cat([flat, batch.dense], 1)).squeeze(-1))
    with pytest.raises(ValueError, match="num_attention_layers"):
        create_model("autoint", schema, num_attention_layers=0)


@pytest.mark.parametrize("product_type, pair_signals", [("inner", 1), ("outer", 1), ("both", 2)])
def test_pnn_product_layer_width(product_type: str, pair_signals: int) -> None:
    schema = make_schema()
    model = create_model("pnn", schema, embedding_dim=4, product_type=product_type)
    F, P = 5, 10
    assert model.dnn.net[0].in_features == F * 4 + pair_signals * P + 2
    assert model(make_batch(schema, n=20)).logits.shape == (20,)


def test_ipnn_feeds_embeddings_and_inner_products_to_its_mlp() -> None:
    schema = make_schema()
    model = perturb(create_model("pnn", schema, embedding_dim=4, hidden_units=())).eval()
    batch = make_batch(schema)
    emb = model.embeddings(batch)
    z = torch.cat([emb.flatten(1), InnerProduct(5)(emb), batch.dense], 1)
    lin = model.dnn.net[0]
    torch.testing.assert_close(model(batch).logits, (z @ lin.weight.T + lin.bias).squeeze(-1))


@pytest.mark.parametrize("name", ["pnn", "fibinet"])
def test_pairwise_models_need_two_fields(name: str) -> None:
    one_field = DatasetSchema(
        features=(FeatureSpec("user", "sparse", vocab_size=5), FeatureSpec("x", "dense")),
        domain=DomainSpec("d", ("a",)),
    )
    with pytest.raises(ValueError, match="at least 2 embedded fields"):
        create_model(name, one_field)


def test_dcn_combines_cross_and_deep_outputs() -> None:
    schema = make_schema()
    model = perturb(create_model("dcn", schema, **SMALL, num_cross_layers=2)).eval()
    D = 5 * 4 + 2
    assert model.out.in_features == D + 4 and model.cross.num_layers == 2
    batch = make_batch(schema)
    x0 = torch.cat([model.embeddings(batch).flatten(1), batch.dense], 1)
    expected = model.out(torch.cat([model.cross(x0), model.dnn(x0)], 1)).squeeze(-1)
    torch.testing.assert_close(model(batch).logits, expected)
    assert create_model("dcn", schema, embedding_dim=4, hidden_units=()).out.in_features == D


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcnv2_structures(structure: str) -> None:
    schema = make_schema()
    model = perturb(create_model("dcnv2", schema, **SMALL, structure=structure, low_rank=3, num_experts=2)).eval()
    assert isinstance(model.cross, CrossNetworkV2) and model.cross.low_rank == 3 and model.cross.num_experts == 2
    batch = make_batch(schema)
    x0 = torch.cat([model.embeddings(batch).flatten(1), batch.dense], 1)
    crossed = model.cross(x0)
    h = model.dnn(crossed) if structure == "stacked" else torch.cat([crossed, model.dnn(x0)], 1)
    torch.testing.assert_close(model(batch).logits, model.out(h).squeeze(-1))
    assert create_model("dcnv2", schema).cross.low_rank is None  # full rank by default


def test_fibinet_uses_original_and_senet_embeddings() -> None:
    schema = make_schema()
    model = perturb(create_model("fibinet", schema, **SMALL, bilinear_type="field_each")).eval()
    assert model.bilinear.bilinear_type == "field_each"
    assert model.bilinear.weight is not model.bilinear_senet.weight
    batch = make_batch(schema)
    emb = model.embeddings(batch)
    p, q = model.bilinear(emb).flatten(1), model.bilinear_senet(model.senet(emb)).flatten(1)
    expected = model.linear(batch) + model.dnn(torch.cat([p, q, batch.dense], 1)).squeeze(-1)
    torch.testing.assert_close(model(batch).logits, expected)
    assert model.dnn.net[0].in_features == 2 * 10 * 4 + 2


def test_xdeepfm_is_linear_plus_cin_plus_dnn() -> None:
    schema = make_schema()
    model = perturb(create_model("xdeepfm", schema, **SMALL, cin_layer_sizes=(6, 4)), scale=0.1).eval()
    assert model.cin.output_dim == 3 + 4
    batch = make_batch(schema)
    emb = model.embeddings(batch)
    expected = (
        model.linear(batch)
        + model.cin_out(model.cin(emb)).squeeze(-1)
        + model.dnn(torch.cat([emb.flatten(1), batch.dense], 1)).squeeze(-1)
    )
    torch.testing.assert_close(model(batch).logits, expected, atol=1e-5, rtol=1e-5)
    assert create_model("xdeepfm", schema, hidden_units=()).dnn is None
    with pytest.raises(ValueError, match="even"):
        create_model("xdeepfm", schema, cin_layer_sizes=(5, 4))


# ------------------------------------------------------------------------------------------------ all nine


@pytest.mark.parametrize("name", BACKBONES)
def test_auxiliary_network_adds_a_domain_logit(name: str) -> None:
    schema = make_schema()
    assert create_model(name, schema, **SMALL).aux is None
    model = perturb(create_model(name, schema, **SMALL, aux_network=True, aux_hidden=(5,))).eval()
    batch = make_batch(schema)
    with_aux = model(batch).logits
    aux = model.aux(batch.domain)
    model.aux = None
    torch.testing.assert_close(with_aux, model(batch).logits + aux)
    assert not torch.allclose(aux, aux[0].expand_as(aux))  # the domain shifts the logit


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("part", ["dense", "multi", "sparse"])
def test_every_kind_of_feature_reaches_the_logit(name: str, part: str) -> None:
    schema = make_schema()
    model = perturb(create_model(name, schema, **SMALL)).eval()
    batch = make_batch(schema)
    changed = make_batch(schema)
    if part == "dense":
        changed.dense = changed.dense + 1.0
    elif part == "multi":
        changed.multi = {k: torch.where(v > 0, (v % 3) + 2, v) for k, v in changed.multi.items()}
    else:
        changed.sparse = changed.sparse.clone()
        changed.sparse[:, 1] = (changed.sparse[:, 1] % 5) + 1
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits, model(changed).logits), f"{name} ignores {part} features"


@pytest.mark.parametrize("name", WITH_LINEAR)
def test_models_with_a_first_order_term_hold_a_linear_part(name: str) -> None:
    assert isinstance(create_model(name, make_schema()).linear, LinearPart)


@pytest.mark.parametrize("name", BACKBONES)
def test_summary_line_names_the_model(name: str) -> None:
    summary = polyrec.models.describe_model(name)["summary"]
    assert summary and len(summary) < 110
