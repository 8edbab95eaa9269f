"""Export of trained runs (polyrec.serving.export), for every registered ranking model.

Every registered ranking model (``list_models("ctr") + list_models("multidomain")``, new ones included)
either exports to ONNX and reproduces its eval-mode logits in ONNX Runtime on a single-domain batch of
every domain, or is listed in ``NOT_EXPORTABLE`` with the reason. Nothing is trained for that: a run
directory is written from a model with perturbed random weights (so that per-domain parameters differ and
folding has something to fold) over the real tiny encoded data set of ``conftest.py``; one test trains a
run for an epoch, through the real ``run_experiment``.

The all-models ONNX test runs by default: 1-5 s a model (export, the export's own parity check, ONNX
Runtime), about a minute for the 29 registered ranking models on one busy core. Should it grow past two
minutes, mark ``test_onnx_export_of_every_model`` ``slow`` and keep a fast subset (STAR, MLP, MMoE, PLE,
DFEI, PEPNet and the MLP+MLoRA case below) in the default run.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import perturb
from conftest import SYNTHETIC_DATA

import polyrec
from polyrec.data import data_fingerprint
from polyrec.experiment import build_model, load_run, polyrec_version, run_experiment
from polyrec.models.adapters import add_domain
from polyrec.runconfig import resolve_config
from polyrec.rundir import write_run_inputs, write_run_outputs
from polyrec.safeio import ArtifactError
from polyrec.serving import export as E
from polyrec.serving.export import NOT_EXPORTABLE, check_pt2_archive, export_run, load_export

pytest.importorskip("onnxruntime")

RANKING = polyrec.list_models("ctr") + polyrec.list_models("multidomain")
EXPORTABLE = [m for m in RANKING if m not in NOT_EXPORTABLE]
#: abs + rel tolerance of an exported logit against the model's (float32; the graphs measure ~1e-7).
ATOL = RTOL = 1e-5


# ------------------------------------------------------------------------------------------- helpers


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturbed weights and normalisation statistics, and DFEI-style domain features, all per domain apart."""
    perturb(model, seed=seed, scale=0.05)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif leaf in ("running_mean", "v"):
                buf.add_(torch.randn(buf.shape, generator=g) * 0.1)
    return model


def write_run(folder: Path, ds, name: str, adapter: bool = False, strategy: str | None = None, new_domain=False):
    """A finished run directory of ``name`` (random weights, nothing trained) over ``ds``; returns the model."""
    raw = {"protocol": "tiny", "data": SYNTHETIC_DATA, "model": {"name": name}, "train": {"max_epochs": 1}}
    if adapter:
        raw["adapter"] = {"kind": "mlora", "alpha": 4}
    if strategy:
        raw["train"]["strategy"] = strategy
    cfg = resolve_config(raw)
    torch.manual_seed(0)
    model = build_model(cfg, ds.schema)
    extra = None
    if new_domain:  # an MLoRA run grown by add-domain: domain 3 rides on the backbone's domain 1
        add_domain(model, "new", 1)
        extra = {"backbone_schema": model.backbone.schema.to_dict()}
    randomize(model).eval()
    config = cfg.to_dict()
    write_run_inputs(folder, config, model.schema.to_dict(), ds.processing.to_dict(), data_fingerprint(cfg.data, ds))
    write_run_outputs(folder, model.state_dict(), {"untrained": True}, config, polyrec_version(), model=extra)
    return model


def domain_batch(ds, domain: int, n: int = 40):
    """Up to ``n`` test rows of ``domain`` (real encoded rows), as a Batch; rows of domain 0 relabelled for an
    added domain (which has no rows of its own)."""
    src = domain if domain < ds.schema.num_domains else 0
    rows = ds.splits["test"][ds.domain[ds.splits["test"]] == src][:n]
    batch = ds.batch(rows)
    batch.domain = torch.full_like(batch.domain, domain)
    return batch


def feed(loaded, batch) -> dict[str, np.ndarray]:
    out = {}
    for spec in loaded.manifest["inputs"]:
        name = spec["name"]
        if name in ("sparse", "dense", "domain"):
            out[name] = getattr(batch, name).numpy()
        else:
            out[name] = batch.multi[spec["features"][0]].numpy()
    return out


def check_export(loaded, model, ds) -> float:
    """Max |exported − eager| over a single-domain batch of every domain (asserting the tolerance)."""
    worst = 0.0
    for d in range(len(loaded.domains)):
        batch = domain_batch(ds, d)
        with torch.no_grad():
            ref = model.eval()(batch).logits.numpy()
        got = loaded.run(feed(loaded, batch))
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL, err_msg=f"domain {d}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def roundtrip(tmp_path: Path, ds, name: str, fmt: str = "onnx", **kw) -> float:
    model = write_run(tmp_path / "run", ds, name, **kw)
    out = export_run(tmp_path / "run", tmp_path / "export", format=fmt)
    loaded = load_export(out)
    assert loaded.manifest["artifact"]["kind"] == fmt
    return check_export(loaded, model, ds)


# ------------------------------------------------------------------------------------------- coverage


def test_every_ranking_model_exports_or_is_listed_with_a_reason() -> None:
    assert {"star", "mlp", "aitm", "dfei"} <= set(RANKING)
    for name, reason in NOT_EXPORTABLE.items():
        assert name in RANKING, f"NOT_EXPORTABLE lists {name!r}, which is not a registered ranking model"
        assert isinstance(reason, str) and len(reason) > 20, name
    # Every other registered ranking model is a case of test_onnx_export_of_every_model (no list to join).
    assert set(EXPORTABLE) | set(NOT_EXPORTABLE) == set(RANKING)


@pytest.mark.parametrize("name", sorted(NOT_EXPORTABLE) or [pytest.param("none", marks=pytest.mark.skip)])
def test_a_listed_model_is_refused_with_its_reason(name, tiny_dataset, tmp_path) -> None:
    write_run(tmp_path / "run", tiny_dataset, name)
    with pytest.raises(E.ExportError, match="cannot be exported"):
        export_run(tmp_path / "run", tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_export_of_every_model(name, tiny_dataset, tmp_path) -> None:
    roundtrip(tmp_path, tiny_dataset, name)  # ONNX Runtime's logits on every domain within ATOL + RTOL


@pytest.mark.parametrize(
    "name, kw",
    [
        ("mlp", {"adapter": True}),
        ("star", {"adapter": True}),
        ("mlp", {"strategy": "mamdr"}),
        ("star", {"adapter": True, "new_domain": True}),
        ("aitm", {}),
    ],
    ids=["mlp+mlora", "star+mlora", "mlp@mamdr", "star+mlora+added-domain", "aitm"],
)
def test_onnx_export_of_adapters_mamdr_added_domains_and_aitm(name, kw, tiny_dataset, tmp_path) -> None:
    roundtrip(tmp_path, tiny_dataset, name, **kw)


@pytest.mark.parametrize(
    "name, kw",
    [("star", {}), ("mlp", {"adapter": True}), ("mlp", {"strategy": "mamdr"}), ("aitm", {})],
    ids=["star", "mlp+mlora", "mlp@mamdr", "aitm"],
)
def test_pt2_round_trip(name, kw, tiny_dataset, tmp_path) -> None:
    roundtrip(tmp_path, tiny_dataset, name, fmt="pt2", **kw)
    check_pt2_archive(tmp_path / "export" / "model.pt2")


def test_a_trained_run_exports_with_its_encoding(tiny_dataset, tmp_path) -> None:
    cfg = resolve_config(
        {
            "protocol": "tiny",
            "data": SYNTHETIC_DATA,
            "model": {"name": "star", "embedding_dim": 8, "hidden_units": [16]},
            "train": {"max_epochs": 1, "patience": 0, "batch_size": 256},
        }
    )
    run_experiment(cfg, tmp_path / "run", dataset=tiny_dataset)
    out = export_run(tmp_path / "run", tmp_path / "export")
    loaded = load_export(out)
    _, model = load_run(tmp_path / "run")
    check_export(loaded, model, tiny_dataset)
    m = loaded.manifest
    assert sorted(m["files"]) == ["config.json", "model.onnx", "processing.json", "schema.json"]
    assert m["model"]["name"] == "star" and m["model"]["folded"] and m["one_domain_per_call"]
    assert [s["name"] for s in m["inputs"]] == ["sparse", "dense", "multi_tags", "domain"]
    assert m["inputs"][0] == {
        "name": "sparse",
        "dtype": "int64",
        "shape": ["batch", 3],
        "features": ["user_id", "item_id", "domain"],
    }
    assert m["features"]["order"] == [f.name for f in tiny_dataset.schema.features]
    assert m["domains"]["values"] == list(tiny_dataset.schema.domain.values)
    assert {"polyrec", "torch", "onnx", "onnxruntime", "onnxscript"} <= set(m["versions"])
    assert m["parity"]["max_abs_diff"] <= 1e-5
    assert loaded.schema == tiny_dataset.schema
    assert loaded.processing.to_dict() == tiny_dataset.processing.to_dict()


# ------------------------------------------------------------------------------------------- mixed batches and inputs


def test_a_mixed_batch_is_split_by_domain_and_checked(tiny_dataset, tmp_path) -> None:
    model = write_run(tmp_path / "run", tiny_dataset, "star")
    loaded = load_export(export_run(tmp_path / "run", tmp_path / "export"))
    rows = tiny_dataset.splits["test"][:60]
    batch = tiny_dataset.batch(rows)
    assert len(batch.domain.unique()) == 3
    with torch.no_grad():
        ref = model.eval()(batch).logits.numpy()
    np.testing.assert_allclose(loaded.predict(feed(loaded, batch)), ref, atol=ATOL, rtol=RTOL)
    one_call = loaded.run(feed(loaded, batch))  # one call: rows not of the first row's domain are NaN
    assert np.array_equal(np.isnan(one_call), (batch.domain != batch.domain[0]).numpy())

    good = feed(loaded, batch)
    with pytest.raises(KeyError, match="missing input"):
        loaded.run({k: v for k, v in good.items() if k != "dense"})
    with pytest.raises(KeyError, match="unknown input"):
        loaded.run({**good, "user": good["domain"]})
    with pytest.raises(ValueError, match="'domain' has index 7"):
        loaded.run({**good, "domain": np.full_like(good["domain"], 7)})
    bad = good["sparse"].copy()
    bad[0, 1] = 10_000
    with pytest.raises(ValueError, match="feature 'item_id' has id 10000, outside its vocabulary"):
        loaded.run({**good, "sparse": bad})
    with pytest.raises(ValueError, match=r"'sparse' has shape \[60, 2\]"):
        loaded.run({**good, "sparse": good["sparse"][:, :2]})


# ------------------------------------------------------------------------------------------- files


def test_a_failed_export_leaves_the_previous_one_intact(tiny_dataset, tmp_path, monkeypatch) -> None:
    write_run(tmp_path / "run", tiny_dataset, "mlp")
    out = export_run(tmp_path / "run", tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(module, path, output="logits"):
        path.write_bytes(b"half a model")
        raise E.ExportError("simulated failure")

    monkeypatch.setattr(E, "_write_onnx", broken)
    with pytest.raises(E.ExportError, match="simulated"):
        export_run(tmp_path / "run", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    monkeypatch.undo()
    export_run(tmp_path / "run", out, format="pt2")  # a successful export replaces the previous one
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.pt2",
        "processing.json",
        "schema.json",
    ]


def test_a_folder_of_other_files_is_refused_untouched(tiny_dataset, tmp_path) -> None:
    write_run(tmp_path / "run", tiny_dataset, "mlp")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a polyrec export"):
        export_run(tmp_path / "run", tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="format 'tflite' is not allowed; must be one of onnx, pt2"):
        export_run(tmp_path / "run", tmp_path / "x", format="tflite")


def test_load_export_checks_every_file(tiny_dataset, tmp_path) -> None:
    write_run(tmp_path / "run", tiny_dataset, "mlp")
    out = export_run(tmp_path / "run", tmp_path / "export")
    for name in ("model.onnx", "processing.json"):
        copy = tmp_path / f"copy-{name}"
        shutil.copytree(out, copy)
        with open(copy / name, "ab") as fh:
            fh.write(b" ")
        with pytest.raises(ArtifactError, match=f"{name}.*does not match its manifest"):
            load_export(copy)
    copy = tmp_path / "copy-manifest"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["domains"]["values"][0] = "other"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="was changed after it was written"):
        load_export(copy)


class Payload:
    """Unpickling this creates ``self.marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pt2_with_pickled_parts_is_refused_before_torch_reads_it(tiny_dataset, tmp_path) -> None:
    write_run(tmp_path / "run", tiny_dataset, "mlp")
    out = export_run(tmp_path / "run", tmp_path / "export", format="pt2")
    marker = tmp_path / "pwned"
    archive = out / "model.pt2"
    forged = tmp_path / "forged.pt2"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/sample_inputs/" in info.filename:
                data = pickle.dumps((Payload(str(marker)),))
            dst.writestr(info, data)
    shutil.copyfile(forged, archive)
    # A stranger rewrites the manifest to match (checksums prove integrity, not trust).
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = E._files(out)
    manifest["manifest_sha256"] = E._self_hash(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="sample_inputs.*would unpickle"):
        load_export(out)
    assert not marker.exists()
    with pytest.raises(ArtifactError, match="not a .pt2 archive"):
        check_pt2_archive(tmp_path / "run" / "config.json")


# ------------------------------------------------------------------------------------------- retrieval


def test_retrieval_run_exports_its_user_tower_and_item_embeddings(tmp_path, monkeypatch) -> None:
    from retrieval.test_training import write_movielens

    from polyrec.retrieval.experiment import load_data, make_retrieval_config, run_retrieval
    from polyrec.retrieval.experiment import load_run as load_retrieval_run
    from polyrec.retrieval.trainer import embed_items
    from polyrec.serving.export import export_retrieval_run, load_retrieval_export

    ml = write_movielens(tmp_path / "ml-1m")
    sets = [f"data.path={ml}", "train.batch_size=64", "train.max_epochs=1", "train.patience=0"]
    sets += ["train.num_threads=1", "model.hidden_units=[16]", "model.output_dim=8"]
    cfg = make_retrieval_config("ml1m-age3-retrieval", "adi", sets)
    run_retrieval(cfg, tmp_path / "run")
    out = export_retrieval_run(tmp_path / "run", tmp_path / "export")
    loaded = load_retrieval_export(out)
    model, cfg, _ = load_retrieval_run(tmp_path / "run")
    data = load_data(cfg)
    assert loaded.domains == list(data.domains) and loaded.items == list(data.items)
    for d in range(len(data.domains)):
        rows = data.queries("test", d)[:7]
        user = data.user_inputs(rows)
        with torch.no_grad():
            ref = model.user_embedding(user).numpy()
            items = embed_items(model, data, data.corpus[d], d).numpy()
        got = loaded.user_embedding(user.sparse, user.history, user.domain)
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)
        ids, emb = loaded.item_embeddings(loaded.domains[d])
        assert np.array_equal(ids, data.corpus[d].numpy())
        np.testing.assert_array_equal(emb, items)
    assert {"user_tower.onnx", "item_embeddings.safetensors", "items.json"} <= set(loaded.manifest["files"])
    with pytest.raises(ValueError, match="outside the export's domains"):
        loaded.user_embedding(user.sparse, user.history, torch.full_like(user.domain, 5))
    with pytest.raises(ArtifactError, match="is a 'retrieval' export"):
        load_export(out)


def test_cli_export_ranking_and_retrieval_runs(ranking_run, retrieval_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from polyrec.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", str(ranking_run), "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    assert "largest difference from the trained model" in r.output
    assert {"model.onnx", "manifest.json", "processing.json"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    r = runner.invoke(app, ["export", str(retrieval_run), "--out", str(tmp_path / "tower")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(retrieval_run), "--out", str(tmp_path / "t2"), "--format", "pt2"])
    assert r.exit_code == 2 and "exports as onnx only" in r.output
    r = runner.invoke(app, ["export", str(ranking_run), "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert r.exit_code == 2 and "format 'tflite' is not allowed" in r.output
