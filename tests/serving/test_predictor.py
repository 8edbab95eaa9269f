"""The predictor on raw feature values: parity with the evaluation, the encoding rules (ids, OOV, domains,
fallback), every error class naming its field, rank(), backends, damaged and foreign runs, retrieval."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from polyrec.data.dataset import build_dataset, load_rows
from polyrec.evaluation.metrics import MultiDomainEvaluator
from polyrec.experiment import evaluate_run, load_run
from polyrec.safeio import ArtifactError
from polyrec.serving.predictor import InputError, Predictor, RetrievalPredictor, load_predictor
from polyrec.training.trainer import predict


@pytest.fixture(scope="module")
def predictor(ranking_run) -> Predictor:
    return Predictor.from_run(ranking_run)


@pytest.fixture(scope="module")
def fallback_predictor(ranking_run) -> Predictor:
    return Predictor.from_run(ranking_run, fallback_domain="app")


@pytest.fixture(scope="module")
def test_rows(ranking_run, tmp_path_factory):
    """(raw test rows of the run's data with only the columns the predictor reads, the encoded data set)."""
    cfg, _ = load_run(ranking_run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(tmp_path_factory.mktemp("cache")))
        ds = build_dataset(cfg.data)
        frame = load_rows(cfg.data)  # no dedupe, no dropped domain: encoded row i is raw row i
    test = ds.splits["test"]
    columns = ["user_id", "item_id", "tags", "dense_0", "domain"]
    return frame.iloc[test.numpy()][columns].reset_index(drop=True), ds


def one_row(**changes):
    row = {"user_id": 3, "item_id": 7, "tags": "t1|t2", "dense_0": 0.25}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def test_scores_of_raw_test_rows_are_the_evaluations(ranking_run, predictor, test_rows) -> None:
    raw, ds = test_rows
    _, model = load_run(ranking_run)
    want = predict(model, ds, ds.splits["test"])
    from_frame = predictor.predict(raw)
    from_dicts = predictor.predict(raw.to_dict("records"))
    assert torch.equal(torch.from_numpy(from_frame.logits), want)
    assert torch.equal(torch.from_numpy(from_dicts.logits), want)
    assert np.allclose(from_frame.probabilities, torch.sigmoid(want).numpy())
    # OOV rows per feature are the encoding's own count of the test split (0 for features without any)
    assert from_frame.oov == {f: ds.report["oov"]["test"].get(f, 0) for f in ("user_id", "item_id", "tags")}
    assert from_dicts.oov == from_frame.oov and from_frame.fallback == 0
    names = ds.schema.domain.values
    assert from_frame.domain == tuple(names[d] for d in ds.domain[ds.splits["test"]].tolist())
    # and the metrics of those scores are evaluate_run's
    evaluator = MultiDomainEvaluator(list(names))
    batch = ds.batch(ds.splits["test"])
    evaluator.update(torch.from_numpy(from_frame.logits), batch.label, batch.domain, batch.user)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(ranking_run.parent / "cache"))
        evaluated = evaluate_run(ranking_run)
    mine = evaluator.compute().to_dict()
    assert {k: evaluated[k] for k in mine} == mine


def test_ids_are_read_as_training_reads_them(predictor) -> None:
    a = predictor.predict([one_row(user_id=3, item_id=7)], domain="web")
    b = predictor.predict([one_row(user_id="3", item_id=7.0)], domain="web")
    c = predictor.predict(pd.DataFrame([one_row(user_id="3", item_id="7")]), domain="web")
    assert a.logits == b.logits == c.logits  # one row each: the same computation
    # a multi-valued feature as a list is its sep-joined string
    d = predictor.predict([one_row(tags=["t1", "t2"])], domain="web")
    assert d.logits == a.logits
    # unseen ids go to the OOV bucket and are counted per feature
    r = predictor.predict([one_row(item_id="never-seen"), one_row(tags="t1|nope"), one_row()], domain="web")
    assert r.oov == {"user_id": 0, "item_id": 1, "tags": 1}


def test_domains_by_raw_value_by_name_and_fallback(predictor, fallback_predictor) -> None:
    # raw domain values 1 and 2 are both the group 'app'; the call's domain is a domain name
    by_value = predictor.predict([one_row(domain=1), one_row(domain="2"), one_row(domain=0)])
    assert by_value.domain == ("app", "app", "web")
    by_name = predictor.predict([one_row()] * 2, domain="app")
    # (rows of batches of other sizes agree to float rounding: a batch's size can change the sums' order)
    assert by_name.logits[0] == pytest.approx(by_value.logits[0], abs=1e-6) == by_value.logits[1]
    assert by_name.domain == ("app", "app")
    mixed = predictor.predict([one_row(domain=2), one_row()], domain="app")  # the row without one takes the call's
    assert mixed.domain == ("app", "app")
    with pytest.raises(InputError, match="unknown domain 'shop'") as e:
        predictor.predict([one_row()], domain="shop")
    assert (e.value.field, e.value.kind) == ("domain", "unknown_domain")
    with pytest.raises(InputError, match="unknown domain value 7 of column 'domain'") as e:
        predictor.predict([one_row(domain=0), one_row(domain=7)])
    assert e.value.field == "rows[1].domain"
    with pytest.raises(InputError, match="no domain given") as e:
        predictor.predict([one_row()])
    with pytest.raises(InputError, match="is of domain 'web' by its 'domain' 0, but the call's domain is 'app'") as e:
        predictor.predict([one_row(domain=0)], domain="app")
    assert (e.value.field, e.value.kind) == ("rows[0].domain", "domain_conflict")
    # with a fallback domain, unknown domains are scored as it and counted
    r = fallback_predictor.predict([one_row(domain=7), one_row(domain=1)])
    assert r.domain == ("app", "app") and r.fallback == 1 and r.logits[0] == r.logits[1]
    r = fallback_predictor.predict([one_row()], domain="shop")
    assert r.fallback == 1 and r.logits[0] == pytest.approx(by_name.logits[0], abs=1e-6)
    assert fallback_predictor.describe()["fallback_domain"] == "app"
    with pytest.raises(ValueError, match="fallback_domain 'x' is not a domain of the run"):
        Predictor.from_run(predictor.run_dir, fallback_domain="x")


@pytest.mark.parametrize(
    ("row", "field", "kind", "message"),
    [
        (one_row(item_id=...), "rows[0].item_id", "missing_feature", r"lacks column\(s\) \['item_id'\]"),
        (one_row(price=3), "rows[0].price", "extra_feature", r"column\(s\) \['price'\] that the run does not read"),
        (one_row(user_id=None), "rows[0].user_id", "wrong_type", "got null"),
        (one_row(user_id=True), "rows[0].user_id", "wrong_type", "got bool True"),
        (one_row(item_id=[1, 2]), "rows[0].item_id", "wrong_type", "must be a string or a number"),
        (one_row(item_id=float("nan")), "rows[0].item_id", "wrong_type", "finite"),
        (one_row(dense_0="0.5"), "rows[0].dense_0", "wrong_type", "dense column 'dense_0' must be a number"),
        (one_row(dense_0=float("inf")), "rows[0].dense_0", "wrong_type", "finite number"),
        (one_row(dense_0=10**400), "rows[0].dense_0", "wrong_type", "finite number"),
        (one_row(tags=5), "rows[0].tags", "wrong_type", "'|'-joined string or a list of ids"),
        (one_row(tags=["a|b"]), "rows[0].tags[0]", "wrong_type", "holds the separator"),
        (one_row(tags=[None]), "rows[0].tags[0]", "wrong_type", "got null"),
        (one_row(domain=None), "rows[0].domain", "wrong_type", "got null"),
    ],
)
def test_bad_rows_are_errors_naming_the_field(predictor, row, field, kind, message) -> None:
    with pytest.raises(InputError, match=message) as e:
        predictor.predict([row], domain="web")
    assert (e.value.field, e.value.kind) == (field, kind)


def test_frames_are_checked_too(predictor) -> None:
    frame = pd.DataFrame([one_row()])
    with pytest.raises(InputError, match=r"lacks column\(s\) \['dense_0'\]") as e:
        predictor.predict(frame.drop(columns="dense_0"), domain="web")
    assert e.value.field == "dense_0"
    with pytest.raises(InputError, match=r"\['label'\] that the run does not read"):
        predictor.predict(frame.assign(label=1), domain="web")
    with pytest.raises(InputError, match="NaN/inf") as e:
        predictor.predict(frame.assign(dense_0=np.nan), domain="web")
    with pytest.raises(InputError, match="a row must be a dict") as e:
        predictor.predict([["user_id", 3]], domain="web")
    assert e.value.field == "rows[0]"
    assert len(predictor.predict([], domain="web")) == 0


def test_rank_merges_user_and_context_into_each_candidate(predictor) -> None:
    candidates = [{"item_id": i, "tags": "t1", "dense_0": 0.1 * i} for i in range(5)]
    ranked = predictor.rank("app", {"user_id": 3}, {}, candidates)
    rows = [{"user_id": 3, **c} for c in candidates]
    assert np.array_equal(ranked.logits, predictor.predict(rows, domain="app").logits)
    with pytest.raises(InputError, match="given in both user and candidates\\[1\\]") as e:
        predictor.rank("app", {"user_id": 3}, {}, [candidates[0], {**candidates[1], "user_id": 4}])
    assert (e.value.field, e.value.kind) == ("candidates[1].user_id", "duplicate_feature")
    with pytest.raises(InputError) as e:
        predictor.rank("app", {"user_id": None}, {}, candidates)
    assert e.value.field == "user.user_id"
    with pytest.raises(InputError) as e:
        predictor.rank("app", {"user_id": 3}, {"hour": 5}, candidates)
    assert (e.value.field, e.value.kind) == ("context.hour", "extra_feature")
    with pytest.raises(InputError) as e:
        predictor.rank("app", {"user_id": 3}, {}, [candidates[0], {"item_id": 1, "tags": "t1"}])
    assert (e.value.field, e.value.kind) == ("candidates[1].dense_0", "missing_feature")


def _same_batch(a, b) -> None:
    assert torch.equal(a.sparse, b.sparse) and torch.equal(a.dense, b.dense) and torch.equal(a.domain, b.domain)
    assert a.multi.keys() == b.multi.keys() and all(torch.equal(a.multi[k], b.multi[k]) for k in a.multi)


@pytest.mark.parametrize("seed", range(6))
def test_dict_rows_are_encoded_as_training_encodes_a_frame(predictor, seed) -> None:
    """Rows given as dicts (encoded value by value) and as a DataFrame (training's encode_rows) give the same
    batch and OOV counts: seen and unseen ids, ids as ints, digit strings and integral floats, multi-valued
    cells with empty and unseen ids and longer than the padded length, dense values of any size."""
    rng = np.random.default_rng(seed)
    vocab = predictor.processing.vocabularies
    width = predictor.processing.max_lens["tags"]
    tags = [*vocab["tags"].tokens, "never", "x-y"]
    n = int(rng.integers(1, 40))
    as_int = bool(rng.integers(2))
    users = [int(u) if as_int else str(u) for u in rng.integers(0, 120, n)]  # 80 users: some unseen
    items = [float(i) for i in rng.integers(0, 90, n)]  # integral floats: read as the int's id
    cells = ["|".join(str(t) for t in rng.choice(tags, int(rng.integers(0, width + 3)))) for _ in range(n)]
    cells = [c.replace("|", "||", 1) if k % 3 == 0 else c for k, c in enumerate(cells)]  # an empty id
    dense = (rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n)).tolist()
    domains = [int(d) for d in rng.integers(0, 3, n)]
    rows = [
        {"user_id": u, "item_id": i, "tags": t, "dense_0": x, "domain": d}
        for u, i, t, x, d in zip(users, items, cells, dense, domains)
    ]
    from_dicts = predictor.encode(rows)
    from_frame = predictor.encode(pd.DataFrame(rows))
    _same_batch(from_dicts.batch, from_frame.batch)
    assert from_dicts.oov == from_frame.oov and from_dicts.domain == from_frame.domain
    # a multi-valued cell as a list of ids is its joined string
    listed = [{**r, "tags": [t for t in r["tags"].split("|")]} for r in rows]
    _same_batch(predictor.encode(listed).batch, from_dicts.batch)
    # one user's values given once (rank) are those values in every row
    user = {"user_id": users[0], "domain": domains[0]}
    cands = [{k: r[k] for k in ("item_id", "tags", "dense_0")} for r in rows]
    ranked = predictor.rank(None, user, {}, cands)
    merged = predictor.predict([{**user, **c} for c in cands])
    assert np.array_equal(ranked.logits, merged.logits) and ranked.oov == merged.oov


def test_the_onnx_backend_scores_as_eager(ranking_run, predictor, test_rows, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "cache"))
    raw, _ = test_rows
    onnx = Predictor.from_run(ranking_run, backend="onnx")
    exports = list((tmp_path / "cache" / "exports").glob("*/onnx/manifest.json"))
    assert len(exports) == 1  # exported once, into the cache, under the run's manifest checksum
    eager, exported = predictor.predict(raw), onnx.predict(raw)
    np.testing.assert_allclose(exported.logits, eager.logits, atol=1e-5, rtol=0)
    assert exported.oov == eager.oov and exported.domain == eager.domain
    again = Predictor.from_run(ranking_run, backend="onnx")  # reused, not exported again
    np.testing.assert_allclose(again.predict(raw.iloc[:5]).logits, exported.logits[:5], atol=1e-6, rtol=0)
    assert list((tmp_path / "cache" / "exports").glob("*/onnx/manifest.json")) == exports


def test_backends_and_foreign_or_damaged_runs(ranking_run, retrieval_run, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tvm'; valid backends: eager, onnx"):
        Predictor.from_run(ranking_run, backend="tvm")
    with pytest.raises(ArtifactError, match="is a retrieval run"):
        Predictor.from_run(retrieval_run)
    with pytest.raises(ArtifactError, match="not a finished run directory"):
        Predictor.from_run(tmp_path)
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ranking_run, copy)
    processing = json.loads((copy / "processing.json").read_text())
    processing["vocabularies"]["item_id"]["tokens"].reverse()
    (copy / "processing.json").write_text(json.dumps(processing))
    with pytest.raises(ArtifactError, match="processing.json"):
        Predictor.from_run(copy)


def test_retrieval_predictor_is_retrieve(retrieval_run) -> None:
    from polyrec.retrieval.experiment import retrieve

    p = load_predictor(retrieval_run)
    assert isinstance(p, RetrievalPredictor) and p.describe()["kind"] == "retrieval"
    domain = p.domains[0]
    got = p.retrieve(domain, 5, k=6)
    want = retrieve(retrieval_run, domain, "5", k=6, index="matmul", data=p.data)
    assert [(i.rank, i.item, i.item_index) for i in got] == [(w["rank"], w["item"], w["item_index"]) for w in want]
    assert [i.score for i in got] == pytest.approx([w["score"] for w in want], abs=1e-6)
    everything = p.retrieve(domain, "5", k=1000, exclude_seen=False)
    assert len(everything) == len(p.data.corpus[0]) and [i.rank for i in everything[:3]] == [1, 2, 3]
    with pytest.raises(InputError, match="unknown user '99999'") as e:
        p.retrieve(domain, "99999")
    assert (e.value.field, e.value.kind) == ("user", "unknown_user")
    with pytest.raises(InputError, match="unknown domain 'x'"):
        p.retrieve("x", "5")
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        p.retrieve(domain, "5", k=0)
    fallback = RetrievalPredictor(p.model, p.data, fallback_domain=domain)
    assert fallback.domain_index("x") == (0, True)


@pytest.fixture(scope="module")
def added_domain_run(tmp_path_factory):
    """An MLP+MLoRA run on domains 0 and 1 of a csv, and the run that adds domain 2 to it."""
    import yaml
    from builders import new_domain_csv_config

    from polyrec.experiment import add_domain_run, run_experiment
    from polyrec.runconfig import make_config

    root = tmp_path_factory.mktemp("added")
    config = new_domain_csv_config(root, n_samples=(300, 200, 200), n_users=40, n_items=30, seed=2)
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    small = ["model.embedding_dim=4", "model.hidden_units=[8]", "train.max_epochs=1", "train.num_threads=1"]
    cfg = make_config(model="mlp+mlora", config_file=str(root / "tiny.yaml"), overrides=small)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(root / "cache"))
        run_experiment(cfg, root / "base", progress=False)
        new = [f"data.source.path={root / 'all.csv'}", "train.max_epochs=1"]
        add_domain_run(root / "base", "2", root / "added", overrides=new, progress=False)
    return root


def test_a_domain_added_to_an_mlora_run_is_scored_as_its_evaluation(added_domain_run) -> None:
    from polyrec.config import from_dict
    from polyrec.data.config import DataConfig
    from polyrec.data.dataset import derive_domain, id_columns, load_source, new_domain_dataset
    from polyrec.rundir import read_add_domain_info

    root = added_domain_run
    cfg, model = load_run(root / "added")
    new_data = from_dict(DataConfig, read_add_domain_info(root / "added")["data"], path="data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYREC_CACHE", str(root / "cache"))
        base = build_dataset(cfg.data)
        ds = new_domain_dataset(cfg.data, base, model.schema, new_data, "2", int(model.backbone_domain[-1]))
    frame = load_source(new_data.source, id_columns(cfg.data))
    codes, names = derive_domain(frame, new_data.domain)
    frame = frame[codes == names.index("2")].reset_index(drop=True)
    raw = frame.iloc[ds.splits["test"].numpy()][["user_id", "item_id", "dense_0", "domain"]]
    added = Predictor.from_run(root / "added")
    assert added.domains == ("0", "1", "2")
    got = added.predict(raw)
    assert torch.equal(torch.from_numpy(got.logits), predict(model, ds, ds.splits["test"]))
    assert set(got.domain) == {"2"}
    # the run's own domains score as in the run it was added to
    rows = raw.drop(columns="domain").to_dict("records")
    before = Predictor.from_run(root / "base").predict(rows, domain="1")
    assert np.array_equal(added.predict(rows, domain="1").logits, before.logits)


def test_an_onnx_export_is_served_as_its_run(ranking_run, predictor, test_rows, tmp_path) -> None:
    from polyrec.serving.export import export_run
    from polyrec.serving.predictor import is_export, load_predictor

    raw, _ = test_rows
    export_run(ranking_run, tmp_path / "onnx")
    assert is_export(tmp_path / "onnx") and not is_export(ranking_run)
    served = load_predictor(tmp_path / "onnx", backend="onnx")
    eager = predictor.predict(raw)
    got = served.predict(raw)
    np.testing.assert_allclose(got.logits, eager.logits, atol=1e-5, rtol=0)
    assert got.oov == eager.oov and got.domain == eager.domain
    with pytest.raises(ValueError, match="is an export: serve it with backend 'onnx'"):
        load_predictor(tmp_path / "onnx")
    export_run(ranking_run, tmp_path / "pt2", format="pt2")
    with pytest.raises(ValueError, match="is a torch.export archive"):
        Predictor.from_export(tmp_path / "pt2")
