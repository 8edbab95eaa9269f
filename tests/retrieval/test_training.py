"""Training, evaluation, the run directory, retrieval and the CLI of the two-tower models, on a small
MovieLens-format data set with a known structure (each user likes the movies of its taste group)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from polyrec.models import create_model
from polyrec.models.retrieval.base import RetrievalSchema
from polyrec.retrieval import trainer as T
from polyrec.retrieval.data import build_retrieval_data, retrieval_config
from polyrec.retrieval.experiment import (
    evaluate_run,
    load_run,
    make_retrieval_config,
    parse_model_spec,
    retrieve,
    run_retrieval,
)
from polyrec.retrieval.metrics import recall_ndcg
from polyrec.safeio import ArtifactError

AGES = (1, 18, 25, 35, 45, 50, 56)
GENRES = ("Drama", "Comedy", "Action", "Romance")
N_USERS, N_MOVIES, TASTES = 90, 48, 4


def write_movielens(folder: Path, seed: int = 0) -> Path:
    """GroupLens ML-1M files: user u likes (rates 5) movies of taste u % 4 and rates a few others 1-2."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    users = [f"{u}::{'MF'[u % 2]}::{AGES[u % 7]}::{u % 5}::{10000 + u}" for u in range(1, N_USERS + 1)]
    movies = [
        f"{m}::Movie {m} ({1980 + m % 20})::{GENRES[m % 4]}|{GENRES[(m + 1) % 4]}" for m in range(1, N_MOVIES + 1)
    ]
    ratings = []
    for u in range(1, N_USERS + 1):
        liked = [m for m in range(1, N_MOVIES + 1) if m % TASTES == u % TASTES]
        others = [m for m in range(1, N_MOVIES + 1) if m % TASTES != u % TASTES]
        t = 978300000 + u * 1000
        for m in rng.sample(liked, 9):
            t += rng.randint(1, 50)
            ratings.append(f"{u}::{m}::5::{t}")
        for m in rng.sample(others, 3):
            t += rng.randint(1, 50)
            ratings.append(f"{u}::{m}::{rng.choice([1, 2])}::{t}")
    (folder / "users.dat").write_text("\n".join(users) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    return folder


@pytest.fixture(scope="module")
def ml(tmp_path_factory) -> Path:
    return write_movielens(tmp_path_factory.mktemp("ml") / "ml-1m")


@pytest.fixture(scope="module")
def data(ml):
    return build_retrieval_data(retrieval_config("ml1m-age3-retrieval", path=str(ml)))


FAST = ["train.batch_size=64", "train.max_epochs=12", "train.patience=0", "train.num_threads=1"]


def fit(data, name: str = "dnn", **train) -> tuple:
    torch.manual_seed(0)
    model = create_model(name, RetrievalSchema.from_data(data), hidden_units=[32], output_dim=16)
    cfg = T.RetrievalTrainConfig(**{"batch_size": 64, "max_epochs": 12, "patience": 0, **train})
    trainer = T.RetrievalTrainer(model, data, cfg, progress=False)
    return model, trainer, trainer.fit()


def test_training_learns_the_structure_and_beats_popularity(data) -> None:
    popularity = T.evaluate_retrieval(None, data, "val").mean["recall@10"]
    model, trainer, summary = fit(data)
    losses = [h["train_loss"] for h in trainer.history]
    assert losses[-1] < losses[0]
    learned = T.evaluate_retrieval(model, data, "val").mean["recall@10"]
    assert learned > popularity + 0.2, (learned, popularity)
    assert summary["best_epoch"] >= 0 and summary["epochs"] == 12 and summary["stopped_by"] == "max_epochs"


def test_early_stopping_restores_the_best_weights(data) -> None:
    model, trainer, summary = fit(data, lr=5e-2, patience=1, max_epochs=30)
    assert summary["stopped_by"] == "early_stopping"
    best = max(h["val_recall@50_mean"] for h in trainer.history)
    assert T.evaluate_retrieval(model, data, "val").value("recall@50_mean") == pytest.approx(best)


def test_evaluation_equals_a_brute_force_ranking(data) -> None:
    model, _, _ = fit(data, max_epochs=2)
    metrics = T.evaluate_retrieval(model, data, "test")
    model.eval()
    for d, name in enumerate(data.domains):
        q = data.queries("test", d)
        if not len(q):
            continue
        users, items = T.embed_users(model, data, q, d), T.embed_items(model, data, data.corpus[d], d)
        scores = users @ items.T
        q_idx, pos = data.exclude("test", d)
        ranks = []
        for j, target in enumerate(data.targets("test", d).tolist()):
            masked = set(pos[q_idx == j].tolist())
            ranks.append(
                sum(
                    1
                    for c in range(len(items))
                    if c != target and c not in masked and scores[j, c] >= scores[j, target]
                )
            )
        want = recall_ndcg(torch.tensor(ranks))
        for k, v in want.items():
            assert metrics.per_domain[name][k] == pytest.approx(v), (name, k)


def test_pseudo_share_grows_by_delta_p_up_to_its_cap() -> None:
    cfg = T.RetrievalTrainConfig(self_training_start=0.1, self_training_step=0.2, self_training_max=0.45)
    assert [cfg.pseudo_share(e) for e in range(4)] == pytest.approx([0.1, 0.3, 0.45, 0.45])


def test_self_training_labels_the_top_p_pairs_of_the_frozen_model_in_every_other_domain(data, monkeypatch) -> None:
    torch.manual_seed(0)
    model = create_model("adi", RetrievalSchema.from_data(data), hidden_units=[32], output_dim=16)
    trainer = T.RetrievalTrainer(model, data, T.RetrievalTrainConfig(strategy="self_training"), progress=False)
    rows = torch.nonzero((data.split == 0) & (data.domain == 1)).squeeze(1)[:40]
    user, item, ids = trainer._side(rows, 1)
    log_q = trainer.log_q[1].index_select(0, ids)
    calls = []
    real = T.sampled_softmax_loss

    def spy(u, v, i, q, **kw):
        calls.append((i.clone(), kw.get("extra_ids")))
        return real(u, v, i, q, **kw)

    monkeypatch.setattr(T, "sampled_softmax_loss", spy)
    norms = [m.running_mean.clone() for m in model.modules() if hasattr(m, "running_mean")]
    model.train()
    trainer._pseudo_loss_sum(user, item, ids, log_q, 1, p=0.25)
    assert len(calls) == 2  # domains 0 and 2
    for (chosen, rest), j in zip(calls, (0, 2)):
        model.eval()
        with torch.no_grad():
            scores = model.score(user.with_domain(j), item.with_domain(j))
        top = torch.topk(scores, 10).indices
        assert sorted(chosen.tolist()) == sorted(ids[top].tolist())  # ceil(0.25 * 40) = 10 pairs
        assert sorted(chosen.tolist() + rest.tolist()) == sorted(ids.tolist())  # every batch item a candidate
    after = [m.running_mean for m in model.modules() if hasattr(m, "running_mean")]
    assert all(torch.equal(a, b) for a, b in zip(norms, after))  # the pseudo pass leaves no statistics behind


def test_self_training_runs_end_to_end(data) -> None:
    model, trainer, _ = fit(data, name="adi", strategy="self_training", max_epochs=3)
    assert [h["pseudo_share"] for h in trainer.history] == pytest.approx([0.05, 0.10, 0.15])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_extra_negatives_from_the_corpus(data) -> None:
    _, trainer, _ = fit(data, extra_negatives=16, negative_sampling="frequency", max_epochs=2)
    assert trainer.samplers is not None and len(trainer.history) == 2


# ---------------------------------------------------------------------------------------- the run directory
def test_model_specs() -> None:
    assert parse_model_spec("dnn") == ("dnn", {}, None)
    assert parse_model_spec("adi[dsbn=false,num_shared=2]@self_training") == (
        "adi",
        {"dsbn": False, "num_shared": 2},
        "self_training",
    )
    with pytest.raises(ValueError, match="is not a retrieval model spec"):
        parse_model_spec("adi[fusion=sum")
    cfg = make_retrieval_config("ml1m-age3-retrieval", "mmoe")
    assert cfg.model == "mmoe_tt"
    with pytest.raises(KeyError, match="unknown retrieval model 'dnm'. Did you mean 'dnn'"):
        make_retrieval_config("ml1m-age3-retrieval", "dnm")
    with pytest.raises(ValueError, match="train.strategy: the model spec 'adi@self_training' names"):
        make_retrieval_config("ml1m-age3-retrieval", "adi@self_training", ["train.strategy=joint"])
    with pytest.raises(ValueError, match=r"model\.fusion"):
        make_retrieval_config("ml1m-age3-retrieval", "adi[fusion=product]")
    with pytest.raises(ValueError, match=r"train\.temperature"):
        make_retrieval_config("ml1m-age3-retrieval", "dnn", ["train.temperature=0"])


def test_run_directory_round_trip_reuse_and_refusals(ml, data, tmp_path) -> None:
    small = [f"data.path={ml}", *FAST, "train.max_epochs=2", "model.hidden_units=[32]", "model.output_dim=16"]
    cfg = make_retrieval_config("ml1m-age3-retrieval", "adi", small)
    out = tmp_path / "run"
    record = run_retrieval(cfg, out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "result.json", "manifest.json"}
    _, loaded, result = load_run(out)
    assert loaded.to_dict() == cfg.to_dict() and result["metrics"] == record["metrics"]
    assert evaluate_run(out, "test") == record["metrics"]
    assert run_retrieval(cfg, out) == json.loads(json.dumps(record))  # a finished run of this config is reused
    other = make_retrieval_config("ml1m-age3-retrieval", "adi", [*small, "train.lr=0.01"])
    with pytest.raises(ValueError, match=r"another config \(differs in train\.lr\)"):
        run_retrieval(other, out)
    # retrieval: faiss exact search equals the plain matmul; HNSW agrees on this small corpus
    exact = retrieve(out, "1", "5", k=10, index="exact", data=data)
    plain = retrieve(out, "1", "5", k=10, index="matmul", data=data)
    assert [r["item"] for r in exact] == [r["item"] for r in plain]
    assert [r["score"] for r in exact] == pytest.approx([r["score"] for r in plain], abs=1e-5)
    seen = {data.items[i] for i in data.item[data.user == 4].tolist()}  # user "5" is index 4
    assert not seen & {r["item"] for r in exact}
    assert (out / "index" / "exact" / "domains.json").exists()
    with pytest.raises(KeyError, match="unknown domain 'x'"):
        retrieve(out, "x", "5", data=data)
    with pytest.raises(KeyError, match="unknown user '99999'"):
        retrieve(out, "1", "99999", data=data)
    # --overwrite removes what polyrec wrote, and only that
    (out / "notes.txt").write_text("mine")
    run_retrieval(cfg, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "index").exists()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text('{"not": "a list"}')
    from polyrec.retrieval.benchmark import run_retrieval_benchmark

    with pytest.raises(ValueError, match="is not a list of retrieval run records"):
        run_retrieval_benchmark("ml1m-age3-retrieval", ["dnn"], 1, tmp_path / "bench", small)
    # a damaged file is refused before it is read
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError):
        load_run(out)


def test_popularity_baseline_run(ml) -> None:
    cfg = make_retrieval_config("ml1m-age3-retrieval", "popularity", [f"data.path={ml}"])
    record = run_retrieval(cfg)
    assert record["num_parameters"] == 0 and 0 <= record["metrics"]["mean"]["recall@50"] <= 1
    with pytest.raises(ValueError, match="the popularity baseline has no options"):
        make_retrieval_config("ml1m-age3-retrieval", "popularity[output_dim=3]")


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_train_evaluate_retrieve_benchmark(ml, tmp_path) -> None:
    from typer.testing import CliRunner

    from polyrec.cli import app

    runner = CliRunner()
    sets = [f"data.path={ml}", *FAST, "train.max_epochs=2", "model.hidden_units=[16]", "model.output_dim=8"]
    args = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "ml1m-genre3-retrieval", "--model", "ple", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "recall@50" in r.output and "drama" in r.output and "run written to" in r.output
    r = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["per_domain"].keys() == {
        "drama",
        "comedy_family",
        "action_thriller",
    }
    r = runner.invoke(app, ["retrieve", str(out), "--domain", "drama", "--user", "3", "--k", "5", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 5
    r = runner.invoke(app, ["retrieve", str(out), "--domain", "dram", "--user", "3"])
    assert r.exit_code == 2 and "Did you mean 'drama'" in r.output
    r = runner.invoke(app, ["train", "--preset", "ml1m-age3-retrieval", "--model", "adi", "--print-config"])
    assert r.exit_code == 0 and "kind: retrieval" in r.stdout
    bench = tmp_path / "bench"
    r = runner.invoke(
        app,
        [
            "benchmark",
            "ml1m-age3-retrieval",
            "--models",
            "popularity,dnn,adi",
            "--seeds",
            "2",
            *args,
            "--out",
            str(bench),
        ],
    )
    assert r.exit_code == 0, r.output
    text = (bench / "results.md").read_text()
    assert "`adi` − `dnn`" in text and "## Cost" in text and "Published" in text
    assert len(json.loads((bench / "results.json").read_text())) == 6
    r = runner.invoke(app, ["presets"])
    assert "ml1m-age3-retrieval" in r.stdout and "ml1m-genre3-retrieval" in r.stdout


def test_precise_norm_statistics_are_the_exact_moments_per_domain(data) -> None:
    torch.manual_seed(0)
    model = create_model("adi", RetrievalSchema.from_data(data), hidden_units=[32], output_dim=16)
    rows = torch.nonzero(data.split == 0).squeeze(1)
    norm = model.user_tower.shared.norms[0]  # DSBN: statistics per domain
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def grab(module, args, _out):
        x, local, groups = args
        seen.append((x.detach().clone(), groups.index_select(0, local)))

    model.eval()
    handle = norm.register_forward_hook(grab)
    with torch.no_grad():
        model.user_embedding(data.user_inputs(rows, data.domain[rows]))
    handle.remove()
    x, dom = seen[0]
    assert T.recompute_norm_statistics(model, data, rows, batch_size=97) > 0  # chunks of 97: sums, not means
    for d in range(len(data.domains)):
        torch.testing.assert_close(norm.running_mean[d], x[dom == d].mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(norm.running_var[d], x[dom == d].var(0), atol=1e-5, rtol=1e-4)
    plain = create_model("dnn", RetrievalSchema.from_data(data), hidden_units=[32], output_dim=16)
    T.recompute_norm_statistics(plain, data, rows)
    assert plain.user_tower.net.norms[0].running_mean.shape[0] == 1  # one group: over every row
