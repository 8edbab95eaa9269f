"""MLoRA attached to models: exactness at B = 0, targets, state_dict round trip, adding a domain, configs."""

import copy
import json

import pytest
import torch
import yaml
from builders import new_domain_csv_config
from test_all_models import tiny_batch, tiny_schema  # the registry test's tiny schema and batches
from typer.testing import CliRunner

from polyrec import ConfigError, TrainConfig, create_model
from polyrec.cli import app
from polyrec.config import from_dict
from polyrec.experiment import make_config, resolve_config
from polyrec.layers.lora import LoRALinear, LoRAStarLinear
from polyrec.models.adapters import AdapterConfig, MLoRAModel, add_domain, attach_mlora, find_targets, strip_adapters
from polyrec.training.strategies.two_phase import finetune_new_domains


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, tiny_schema(), **kw)


def randomize_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bank in model.banks():
            bank.B.copy_(torch.randn(bank.B.shape, generator=g) * 0.1)
            if bank.bias is not None:
                bank.bias.copy_(torch.randn(bank.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["mlp", "deepfm", "star"])
def test_zero_b_adapted_model_equals_backbone_exactly(name):
    model = build(name).eval()
    batch = tiny_batch()
    expected = model(batch).logits
    adapted = attach_mlora(model, alpha=4).eval()
    assert isinstance(adapted, MLoRAModel) and adapted.model_name == f"{name}+mlora"
    assert torch.equal(adapted(batch).logits, expected)
    single = tiny_batch(domain=1)
    adapted.set_adapters(enabled=False)
    off = adapted(single).logits
    adapted.set_adapters(enabled=True)
    assert torch.equal(adapted(single).logits, off)
    randomize_adapters(adapted)
    assert not torch.equal(adapted(batch).logits, expected)  # adapters do act once B moves


def test_default_targets_and_ranks():
    mlp = attach_mlora(build("mlp", hidden_units=[256, 128, 64]), alpha=16)
    assert mlp.adapter_config.targets == ("dnn",)
    assert mlp.adapted_layers == ("dnn.net.0", "dnn.net.2", "dnn.net.4")  # hidden layers; the logit layer stays shared
    assert [b.rank for b in mlp.banks()] == [16, 8, 4]
    star = attach_mlora(build("star", hidden_units=[256, 128, 64]), alpha=16)
    assert star.adapter_config.targets == ("star",)
    assert all(isinstance(star.backbone.layers[i], LoRAStarLinear) for i in range(3))
    assert not isinstance(star.backbone.layers[3], LoRAStarLinear)
    capped = attach_mlora(build("mlp", hidden_units=[256, 128, 64]), alpha=16, max_adapter_params=2000)
    for bank in capped.banks():
        assert bank.params_per_domain() <= 2000
    assert [b.rank for b in capped.banks()] == [6, 5, 4]  # 2000 // (65 + 256), 2000 // (256 + 128), uncapped
    biased = attach_mlora(
        build("mlp", hidden_units=[256, 128, 64]), alpha=16, max_adapter_params=2000, domain_bias=True
    )
    assert [b.rank for b in biased.banks()] == [5, 4, 4]  # (2000 - 256) // (65 + 256), (2000 - 128) // (256 + 128)


def test_other_targets():
    autoint = attach_mlora(build("autoint"), alpha=4, targets=("dnn", "interaction", "output"))
    names = autoint.adapted_layers
    assert "attention.0.query" in names and "dnn.net.6" in names  # attention projections, the logit layer
    assert all(isinstance(autoint.backbone.get_submodule(n), LoRALinear) for n in names)
    batch = tiny_batch()
    out = autoint(batch).logits
    assert out.shape == (48,) and torch.isfinite(out).all()
    star = attach_mlora(build("star"), alpha=4, targets=("star", "output"))
    assert len(star.adapted_layers) == len(star.backbone.layers)
    with pytest.raises(ValueError, match="no layers for adapter target 'star'.*'dnn'"):
        find_targets(build("mlp"), ["star"])
    with pytest.raises(ValueError, match="unknown adapter target 'towers'"):
        find_targets(build("mlp"), ["towers"])
    adapted = attach_mlora(build("mlp"))
    with pytest.raises(ValueError, match="already has adapters"):
        attach_mlora(adapted.backbone)


@pytest.mark.parametrize("name", ["mlp", "star"])
def test_state_dict_round_trip(name):
    adapted = attach_mlora(build(name, seed=0), alpha=4)
    randomize_adapters(adapted)
    adapted.eval()
    batch = tiny_batch()
    expected = adapted(batch).logits
    state = adapted.state_dict()
    assert any(k.endswith("lora.A") for k in state) and "backbone_domain" in state
    fresh = attach_mlora(build(name, seed=1), alpha=4).eval()
    assert not torch.equal(fresh(batch).logits, expected)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(batch).logits, expected)
    # The backbone keeps its own parameter names, so a plain checkpoint loads into the adapted model.
    plain = build(name, seed=2).eval()
    missing, unexpected = fresh.backbone.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("lora" in k for k in missing)
    stripped = strip_adapters(fresh)
    assert torch.equal(stripped(batch).logits, plain(batch).logits)


def test_adapter_gradient_only_from_its_domains_rows():
    adapted = attach_mlora(build("mlp"), alpha=4, domain_bias=True)
    randomize_adapters(adapted)
    batch = tiny_batch(domain=2)
    torch.nn.functional.binary_cross_entropy_with_logits(adapted(batch).logits, batch.label).backward()
    for bank in adapted.banks():
        for p in (bank.A, bank.B, bank.bias):
            assert p.grad[:2].abs().sum() == 0 and p.grad[2].abs().sum() > 0


@pytest.mark.parametrize("name", ["mlp", "star"])
def test_add_domain_keeps_existing_domains_bit_identical(name):
    adapted = attach_mlora(build(name), alpha=4)
    randomize_adapters(adapted)
    adapted.eval()
    batch = tiny_batch()
    before = adapted(batch).logits
    backbone_before = copy.deepcopy(adapted.backbone.state_dict())
    add_domain(adapted, "d3", backbone_domain="d1")
    assert adapted.schema.domain.values == ("d0", "d1", "d2", "d3") and adapted.num_domains == 4
    assert adapted.backbone.num_domains == 3 and adapted.backbone_domain.tolist() == [0, 1, 2, 1]
    assert torch.equal(adapted(batch).logits, before)
    # The new domain starts at the backbone's prediction for its backbone domain (its B is zero)...
    new = copy.deepcopy(batch)
    new.domain = torch.full_like(batch.domain, 3)
    as_d1 = copy.deepcopy(batch)
    as_d1.domain = torch.full_like(batch.domain, 1)
    adapted.set_adapters(enabled=False)
    backbone_only = adapted(as_d1).logits
    adapted.set_adapters(enabled=True)
    assert torch.equal(adapted(new).logits, backbone_only)
    # ... and a mixed batch of old and new domains leaves the old rows as they were.
    mixed = copy.deepcopy(batch)
    mixed.domain[::4] = 3
    keep = mixed.domain != 3
    assert torch.equal(adapted(mixed).logits[keep], before[keep])
    assert all(torch.equal(v, adapted.backbone.state_dict()[k]) for k, v in backbone_before.items() if "lora" not in k)
    with pytest.raises(ValueError, match="already exists"):
        add_domain(adapted, "d0")


def test_finetune_new_domain_trains_only_its_adapter(tiny_dataset):
    import dataclasses

    torch.manual_seed(0)
    adapted = attach_mlora(create_model("mlp", tiny_dataset.schema, embedding_dim=4, hidden_units=[16, 8]), alpha=4)
    randomize_adapters(adapted)
    params_before = {k: v.clone() for k, v in adapted.state_dict().items()}
    rows = tiny_dataset.splits["test"][:500]
    before = _predict(adapted, tiny_dataset, rows)
    add_domain(adapted, "late")
    # The new domain's rows: domain 2's rows relabelled (its schema gains "late").
    ds = dataclasses.replace(tiny_dataset, schema=adapted.schema, domain=torch.full_like(tiny_dataset.domain, 3))
    summary = finetune_new_domains(
        adapted, ds, from_dict(TrainConfig, {"batch_size": 256, "max_epochs": 2, "patience": 0, "lr": 1e-2}), first=3
    )
    assert summary["trainable_params"] == adapted.per_domain_adapter_parameters()
    assert torch.equal(_predict(adapted, tiny_dataset, rows), before)
    after = adapted.state_dict()
    for k, v in params_before.items():
        if k.endswith(("lora.A", "lora.B", "lora.bias")):
            assert torch.equal(after[k][:3], v), k  # other domains' adapter rows
        elif k != "backbone_domain":
            assert torch.equal(after[k], v), k  # the backbone, including buffers
    assert any(not torch.equal(b.B[3], torch.zeros_like(b.B[3])) for b in adapted.banks())  # the new one learned
    assert all(p.requires_grad for p in adapted.parameters())  # staging undone


def _predict(model, ds, rows):
    from polyrec.training.trainer import predict

    return predict(model, ds, rows)


def test_parameter_share_reported():
    adapted = attach_mlora(build("mlp", hidden_units=[256, 128, 64]), alpha=16)
    per_domain = 16 * (adapted.backbone.dnn.net[0].in_features + 256) + 8 * (256 + 128) + 4 * (128 + 64)
    assert adapted.per_domain_adapter_parameters() == per_domain
    biased = attach_mlora(build("mlp", hidden_units=[256, 128, 64]), alpha=16, domain_bias=True)
    assert biased.per_domain_adapter_parameters() == per_domain + 256 + 128 + 64
    assert adapted.num_adapter_parameters() == 3 * per_domain
    assert adapted.adapter_share() == pytest.approx(3 * per_domain / adapted.num_backbone_parameters())


# --------------------------------------------------------------------------------------------- configuration


def test_model_name_suffix_and_protocol_alpha():
    cfg = make_config("ml1m-gender", "deepfm+mlora")
    assert cfg.model_name == "deepfm" and cfg.display_name == "deepfm+mlora"
    assert cfg.adapter == AdapterConfig(kind="mlora", alpha=32, domain_bias=False, a_init="gaussian")
    assert cfg.model.embedding_dim == 8
    assert make_config("ml1m-gender", "mlp+mlora").adapter.alpha == 16
    assert make_config("ml1m-gender", "nfm+mlora").adapter.alpha == 4
    assert make_config("ml1m-gender", "star+mlora").adapter.alpha == 16
    assert make_config("ml1m-gender", "mlp+mlora", overrides=["adapter.alpha=8"]).adapter.alpha == 8
    assert make_config("ml1m-gender", "mlp", overrides=["adapter.kind=mlora"]).display_name == "mlp+mlora"
    plain = make_config("ml1m-gender", "mlp")
    assert plain.adapter.kind == "none" and "adapter" not in plain.to_dict()
    again = resolve_config(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    "adapter,message",
    [
        ({"kind": "mlora", "alpah": 4}, "unknown config key 'alpah' in adapter"),
        ({"kind": "mlora", "alpha": 0}, r"^adapter.alpha: 0 is not allowed; must be >= 1"),
        ({"kind": "mlora", "alpha": "big"}, "^adapter.alpha"),
        (
            {"kind": "mlora", "targets": ["dnn", "towers"]},
            r"^adapter.targets: item 1 \('towers'\) is not allowed; must be one of 'dnn', 'output'",
        ),
        ({"kind": "mlora", "targets": []}, r"^adapter.targets: \[\] is not allowed; name at least one"),
        ({"kind": "mlora", "targets": ["dnn", "dnn"]}, r"^adapter.targets: .* 'dnn' is listed twice"),
        ({"kind": "mlora", "max_adapter_params": -5}, r"^adapter.max_adapter_params: -5 is not allowed; must be >= 1"),
        ({"kind": "lora"}, "^adapter.kind"),
        ({"alpha": 16}, r"^adapter.alpha: 16 is not allowed; it is used only with adapters; set adapter.kind=mlora"),
    ],
)
def test_bad_adapter_config_names_the_key(adapter, message):
    data = {"protocol": "x", "model": {"name": "mlp"}, "adapter": adapter}
    with pytest.raises(ConfigError, match=message):
        resolve_config(data)


def test_suffix_conflicting_with_adapter_kind_is_an_error():
    with pytest.raises(ConfigError, match="asks for MLoRA but adapter.kind"):
        resolve_config({"model": {"name": "mlp+mlora"}, "adapter": {"kind": "none"}})


# ------------------------------------------------------------------------------------------ end to end (CLI)


def test_cli_train_mlora_then_add_domain(tmp_path):
    config = new_domain_csv_config(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    run, run2 = tmp_path / "run", tmp_path / "run2"
    out = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--model",
            "mlp+mlora",
            "--out",
            str(run),
            "--set",
            "model.embedding_dim=4",
            "--set",
            "model.hidden_units=[16, 8]",
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads((run / "result.json").read_text())
    assert result["model"] == "mlp+mlora" and result["backbone"] == "mlp" and result["adapter"] == "mlora"
    assert result["adapter_ranks"] == [4, 2] and 0 < result["adapter_share"] < 1
    assert result["adapter_params"] == 2 * ((16 // 4) * (3 * 4 + 1 + 16) + (8 // 4) * (16 + 8))
    out = runner.invoke(
        app,
        [
            "add-domain",
            str(run),
            "--domain",
            "2",
            "--out",
            str(run2),
            "--set",
            f"data.source.path={tmp_path / 'all.csv'}",
            "--set",
            "train.max_epochs=2",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "existing domains unchanged: True" in out.output
    record = json.loads((run2 / "result.json").read_text())
    assert record["existing_domains_unchanged"] and record["rows"]["train"] == 180
    assert record["added_params"] == result["adapter_params"] // 2 == record["trainable_params"]
    assert record["added_share"] == pytest.approx(result["adapter_share"] / 2)
    assert json.loads((run2 / "schema.json").read_text())["domain"]["values"] == ["0", "1", "2"]
    out = runner.invoke(app, ["evaluate", str(run2), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["auc_overall"] == pytest.approx(record["metrics"]["auc_overall"], abs=1e-9)
    out = runner.invoke(
        app,
        [
            "add-domain",
            str(run),
            "--domain",
            "7",
            "--out",
            str(tmp_path / "run3"),
            "--set",
            f"data.source.path={tmp_path / 'all.csv'}",
        ],
    )
    assert out.exit_code == 2 and "domain '7' is not in the new data" in out.output


def tiny_preset(monkeypatch, name, n_samples, seed, **extra):
    """Register a 2-domain synthetic protocol preset ``name`` for the duration of a test."""
    import polyrec.data.protocols as protocols

    data = {
        "source": {
            "kind": "synthetic",
            "options": {"n_domains": 2, "n_samples": n_samples, "n_users": 50, "n_items": 40, "seed": seed},
        },
        "label": {"column": "label"},
        "domain": {"column": "domain"},
        "features": [{"name": "user_id"}, {"name": "item_id"}],
        "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 0},
    }
    monkeypatch.setitem(
        protocols._PRESETS,
        name,
        {
            "description": "tiny",
            "data": data,
            "train": {"batch_size": 128, "max_epochs": 1, "patience": 0},
            "models": {},
            "model_defaults": {"embedding_dim": 4, "hidden_units": [8]},
            "primary_metric": "wauc",
            **extra,
        },
    )


def test_benchmark_keeps_mlora_runs_apart(tmp_path, monkeypatch):
    from polyrec.benchmark import run_benchmark

    tiny_preset(
        monkeypatch,
        "tiny-mlora",
        n_samples=600,
        seed=1,
        mlora_alpha={"mlp": 2},
        reference={"wauc": {"mlp": 0.6, "mlp+mlora": 0.61}},
    )
    runs = run_benchmark("tiny-mlora", ["mlp", "mlp+mlora"], seeds=1, out_dir=tmp_path)
    assert [(r["model"], r["adapter"]) for r in runs] == [("mlp", "none"), ("mlp+mlora", "mlora")]
    assert runs[1]["adapter_alpha"] == 2 and runs[1]["adapter_ranks"] == [4]
    assert runs[0]["adapter_share"] == 0 and runs[1]["adapter_share"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| tiny-mlora | mlp | joint | 1 |" in md and "| tiny-mlora | mlp+mlora | joint | 1 |" in md
    assert md.split("| tiny-mlora | mlp+mlora |")[1].split("\n")[0].rstrip().endswith("61.00 |")  # its paper value
    assert run_benchmark("tiny-mlora", ["mlp+mlora"], seeds=1, out_dir=tmp_path) == runs  # resumed, nothing rerun


def test_benchmark_jobs_run_in_worker_processes_with_the_same_records(tmp_path, monkeypatch):
    """--jobs 2: each run in its own spawned process, records (and their order) as a serial run gives."""
    from polyrec.benchmark import run_benchmark

    tiny_preset(monkeypatch, "tiny-jobs", n_samples=400, seed=2)
    models = ["mlp", "mlp@domain_negotiation"]
    serial = run_benchmark("tiny-jobs", models, seeds=2, out_dir=tmp_path / "serial", overrides=["train.num_threads=1"])
    parallel = run_benchmark(
        "tiny-jobs", models, seeds=2, out_dir=tmp_path / "jobs", jobs=2, overrides=["train.num_threads=1"]
    )
    key = [(r["model"], r["seed"]) for r in serial]
    assert key == [(r["model"], r["seed"]) for r in parallel] == [(m, s) for m in models for s in (0, 1)]
    for a, b in zip(serial, parallel):
        assert a["metrics"] == b["metrics"] and a["strategy"] == b["strategy"]
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_benchmark("tiny-jobs", models, seeds=1, jobs=0)


def test_adapter_layer_options_are_checked_when_read():
    with pytest.raises(ConfigError, match=r"adapter.a_init: 'xavier' is not allowed; must be one of"):
        make_config("ml1m-gender", "mlp+mlora", overrides=["adapter.a_init=xavier"])
    with pytest.raises(ConfigError, match=r"adapter.domain_bias"):
        make_config("ml1m-gender", "mlp+mlora", overrides=["adapter.domain_bias=maybe"])
    with pytest.raises(ConfigError, match=r"adapter.domain_bias: True is not allowed; it is used only with adapters"):
        make_config("ml1m-gender", "mlp", overrides=["adapter.domain_bias=true"])
    cfg = make_config("ml1m-gender", "mlp+mlora", overrides=["adapter.domain_bias=true", "adapter.a_init=uniform"])
    assert (cfg.adapter.domain_bias, cfg.adapter.a_init) == (True, "uniform")
