"""What the retrieval models cost on ml1m-age3-retrieval: training rows/s, epoch time, full-corpus
evaluation time; and what the item indexes cost: build and query time, and HNSW's recall against exact search.

Each model trains ``--steps`` batches of 1,024 positives on one thread (after ``--warmup`` batches), from the
same seed; the epoch time is the training split's rows over the measured rate. Evaluation is the test
split's full-corpus ranking of every domain. The indexes are built on the item embeddings of a DNN trained
for one epoch (3,706 items per domain) and on a synthetic corpus of ``--synthetic`` random unit vectors of
the same width (the size where an approximate index starts to matter); queries are the test users.
Run it alone on the machine: the rates are only comparable within one run.

    python benchmarks/retrieval_cost.py                  # writes results/retrieval_cost.{json,md}
    python benchmarks/retrieval_cost.py --steps 20 --models dnn,adi --synthetic 20000 --out /tmp/cost
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from polyrec.experiment import cpu_model
from polyrec.models import create_model
from polyrec.models.retrieval.base import RetrievalSchema
from polyrec.retrieval.data import build_retrieval_data, retrieval_config
from polyrec.retrieval.experiment import parse_model_spec, retrieval_model_name
from polyrec.retrieval.index import ItemIndex, ann_recall
from polyrec.retrieval.trainer import (
    RetrievalTrainConfig,
    RetrievalTrainer,
    embed_items,
    embed_users,
    evaluate_retrieval,
)

HERE = Path(__file__).resolve().parent
MODELS = (
    "dnn",
    "dnn_single",
    "shared_bottom",
    "cross_stitch",
    "mmoe",
    "ple",
    "adi",
    "adi@self_training",
    "adi_se_max",
    "adi[fusion=network_mul]",
)


def time_training(data, spec: str, steps: int, warmup: int) -> dict:
    raw, options, strategy = parse_model_spec(spec)
    torch.manual_seed(0)
    model = create_model(retrieval_model_name(raw), RetrievalSchema.from_data(data), **options)
    cfg = RetrievalTrainConfig(strategy=strategy or "joint", self_training_start=0.05)
    trainer = RetrievalTrainer(model, data, cfg, progress=False)
    train_rows = torch.nonzero(data.split == 0).squeeze(1)
    # The first steps + warmup batches of epoch 0's domain batches, through the trainer's own step.
    from polyrec.data.samplers import epoch_batches, stream_generator

    batches = epoch_batches("domain_batched", train_rows, data.domain, len(data.domains), cfg.batch_size, 0, 0)
    batches = [b for b in batches if len(b) == cfg.batch_size][: warmup + steps]
    g = stream_generator(0, 0, "negatives")
    p = cfg.pseudo_share(0) if cfg.strategy == "self_training" else 0.0

    def step(rows):
        d = int(data.domain[rows[0]])
        user, item, ids = trainer._side(rows, d)
        log_q = trainer.log_q[d].index_select(0, ids)
        loss = trainer._loss_sum(user, item, ids, log_q, d, g)
        if p > 0:
            loss = loss + trainer._pseudo_loss_sum(user, item, ids, log_q, d, p)
        trainer.optimizer.zero_grad(set_to_none=True)
        (loss / len(rows)).backward()
        trainer.optimizer.step()

    model.train()
    for rows in batches[:warmup]:
        step(rows)
    t0 = time.perf_counter()
    for rows in batches[warmup:]:
        step(rows)
    dt = time.perf_counter() - t0
    rate = steps * cfg.batch_size / dt
    t1 = time.perf_counter()
    evaluate_retrieval(model, data, "test")
    eval_s = time.perf_counter() - t1
    return {
        "model": spec,
        "parameters": model.num_parameters(),
        "train_rows_per_s": round(rate, 1),
        "epoch_s": round(len(train_rows) / rate, 1),
        "test_eval_s": round(eval_s, 3),
    }


def time_index(vectors: np.ndarray, queries: np.ndarray, k: int) -> dict:
    ids = np.arange(len(vectors), dtype=np.int64)
    out = {"items": len(vectors), "queries": len(queries), "k": k}
    built = {}
    for kind in ("exact", "hnsw"):
        t0 = time.perf_counter()
        built[kind] = ItemIndex(vectors, ids, kind=kind)
        out[f"{kind}_build_s"] = round(time.perf_counter() - t0, 3)
        built[kind].search(queries[:10], k)  # warm
        t0 = time.perf_counter()
        built[kind].search(queries, k)
        out[f"{kind}_query_ms"] = round((time.perf_counter() - t0) / len(queries) * 1e3, 4)
    out["hnsw_recall"] = round(ann_recall(built["exact"], built["hnsw"], queries, k), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--synthetic", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    data = build_retrieval_data(retrieval_config("ml1m-age3-retrieval"))
    training = [time_training(data, m, args.steps, args.warmup) for m in args.models.split(",") if m]
    for row in training:
        print(row)
    # Index cost on real item embeddings (a DNN after one epoch) and on a large synthetic corpus.
    torch.manual_seed(0)
    model = create_model("dnn", RetrievalSchema.from_data(data))
    RetrievalTrainer(model, data, RetrievalTrainConfig(max_epochs=1, patience=0), progress=False).fit()
    model.eval()
    items = embed_items(model, data, data.corpus[0], 0).numpy()
    users = embed_users(model, data, data.queries("test", 0), 0).numpy()
    indexes = [dict(corpus="ml1m-age3 domain 0 (DNN, 1 epoch)", **time_index(items, users, 100))]
    rng = np.random.default_rng(0)
    synth = rng.standard_normal((args.synthetic, items.shape[1])).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    queries = rng.standard_normal((1000, items.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    indexes.append(dict(corpus=f"synthetic {args.synthetic:,} unit vectors", **time_index(synth, queries, 100)))
    for row in indexes:
        print(row)
    env = {
        "cpu": cpu_model(),
        "threads": 1,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
    }
    command = "python benchmarks/retrieval_cost.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrieval_cost.json").write_text(
        json.dumps({"command": command, "environment": env, "training": training, "indexes": indexes}, indent=2)
    )
    lines = [
        "# Retrieval cost (ml1m-age3-retrieval)",
        "",
        f"`{command}` on {env['cpu']}, one thread, torch {env['torch']}, faiss {env['faiss']}. Training: "
        f"{args.steps} batches of 1,024 after {args.warmup} warm-up batches; epoch = training rows / rate; "
        "evaluation: the test split's full-corpus ranking over the three domains.",
        "",
        "| model | parameters | train rows/s | epoch s | test eval s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['model']}` | {r['parameters']:,} | {r['train_rows_per_s']:,.0f} | {r['epoch_s']:,.1f} | "
        f"{r['test_eval_s']:.2f} |"
        for r in training
    ]
    lines += [
        "",
        "Item indexes (faiss, inner product, top-100; HNSW m=32, efConstruction=200, efSearch=128):",
        "",
        "| corpus | items | exact build s | exact query ms | HNSW build s | HNSW query ms | HNSW recall@100 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['corpus']} | {r['items']:,} | {r['exact_build_s']} | {r['exact_query_ms']} | {r['hnsw_build_s']} | "
        f"{r['hnsw_query_ms']} | {r['hnsw_recall']} |"
        for r in indexes
    ]
    (args.out / "retrieval_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
