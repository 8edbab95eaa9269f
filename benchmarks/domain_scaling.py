"""Training step time and memory as the number of domains grows: dense against row-wise bank updates.

For each model (STAR: embedding 16, FCN [128, 64, 32], auxiliary network; MLP + MLoRA on the same FCN;
Shared-Bottom, a per-domain-tower model) and each number of domains D (3, 30, 300, 3,000, 10,000, and
69,102, MAMDR's industrial count, where the model fits in memory), one training step
(:meth:`polyrec.training.strategies.TrainContext.step`: forward, loss, backward, optimiser update) on
batches of 4,096 rows of three kinds:

- ``domain-batched``: every row of a batch from one domain (the batches rotate over 8 domains);
- ``mixed-uniform``: each row's domain drawn uniformly from the D domains;
- ``mixed-zipf``: each row's domain drawn from a Zipf law over the D domains (p(d) ∝ 1 / (d + 1)^1.1,
  the long tail of a platform's mini-apps).

Each update variant: ``dense`` (``train.bank_update: dense``, torch's default Adam: every parameter
updated, absent domains moved through their moments), ``rowwise`` (``train.bank_update: rowwise``: banks
receive the present rows' gradient only and a lazy Adam updates those rows), and ``rowwise+fused``
(``train.optimizer_impl: fused`` for the other parameters). Each (model, D, variant) runs in its own
process (one torch thread), so its peak RSS is its own. The ids are random (the step's cost does not
depend on their values); every step of a kind sees a new batch (4 batches in turn).

    python benchmarks/domain_scaling.py                    # writes benchmarks/results/domain_scaling.{json,md}
    python benchmarks/domain_scaling.py --domains 3,300 --models star --reps 3 --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
DOMAINS = (3, 30, 300, 3000, 10_000, 69_102)
MODELS = ("star", "mlp+mlora", "shared_bottom", "mlp@mamdr")
VARIANTS = ("dense", "rowwise", "rowwise+fused")
KINDS = ("domain-batched", "mixed-uniform", "mixed-zipf")
BATCH = 4096
HIDDEN = [128, 64, 32]
#: (model, D) pairs not run: their parameters and Adam moments alone exceed this machine's memory.
TOO_BIG = {("star", 69_102): "STAR's banks at 69,102 domains are 1.6 G parameters (6.3 GB), 19 GB with Adam's moments"}
#: Models whose per-domain state no optimiser updates, so the update variants do not apply: run "dense" only.
NO_BANK_UPDATE = {"mlp@mamdr"}


def _schema(num_domains: int):
    from polyrec.data.schema import DatasetSchema, DomainSpec, FeatureSpec

    sparse = (("user_id", 5000), ("item_id", 3000), ("user_group", 50), ("item_cat", 100))
    features = [FeatureSpec(n, "sparse", vocab_size=v) for n, v in sparse]
    features += [FeatureSpec(f"dense_{i}", "dense") for i in range(2)]
    return DatasetSchema(
        features=tuple(features), domain=DomainSpec("domain", tuple(f"d{i}" for i in range(num_domains)))
    )


def _batches(schema, kind: str, n_batches: int, seed: int) -> list:
    import torch

    from polyrec.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    D = schema.num_domains
    out = []
    rotation = torch.randperm(D, generator=g)[:8]
    zipf = 1.0 / torch.arange(1, D + 1, dtype=torch.float64) ** 1.1
    for i in range(n_batches):
        if kind == "domain-batched":
            domain = torch.full((BATCH,), int(rotation[i % len(rotation)]), dtype=torch.long)
        elif kind == "mixed-uniform":
            domain = torch.randint(0, D, (BATCH,), generator=g)
        else:
            domain = torch.multinomial(zipf, BATCH, replacement=True, generator=g)
        sparse = torch.stack([torch.randint(2, f.vocab_size, (BATCH,), generator=g) for f in schema.sparse], 1)
        out.append(
            Batch(
                sparse=sparse,
                dense=torch.rand(BATCH, len(schema.dense), generator=g),
                label=torch.randint(0, 2, (BATCH,), generator=g).float(),
                domain=domain,
            )
        )
    return out


def _model(name: str, schema):
    import torch

    from polyrec.models import create_model
    from polyrec.models.adapters import attach_mlora

    torch.manual_seed(0)
    if name == "star":
        return create_model("star", schema, embedding_dim=16, hidden_units=HIDDEN)
    if name == "mlp+mlora":
        return attach_mlora(create_model("mlp", schema, embedding_dim=16, hidden_units=HIDDEN))
    if name == "shared_bottom":
        return create_model("shared_bottom", schema, embedding_dim=16)
    if name == "mlp@mamdr":  # the offsets θ^d of the dense layers (the synthetic-zipf presets' choice)
        from polyrec.models.specific import DomainSpecificModel

        return DomainSpecificModel(create_model("mlp", schema, embedding_dim=16, hidden_units=HIDDEN), include="dense")
    raise ValueError(f"unknown model {name!r}")


def run_one(name: str, num_domains: int, variant: str, reps: int) -> dict[str, Any]:
    """Time the steps of one (model, D, variant) in this process; its peak RSS included."""
    import torch

    from polyrec.layers.bank import domain_banks
    from polyrec.training.strategies import TrainContext
    from polyrec.training.task import BinaryTask
    from polyrec.training.trainer import TrainConfig, make_optimizer

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the Trainer does
    schema = _schema(num_domains)
    model = _model(name, schema)
    model.train()
    update = "dense" if variant == "dense" else "rowwise"
    cfg = TrainConfig(lr=1e-3, bank_update=update, optimizer_impl="fused" if variant.endswith("fused") else "default")
    ctx = TrainContext(
        model,
        make_optimizer(model, cfg),
        BinaryTask(),
        None,  # type: ignore[arg-type]  (step() reads only the batch)
        rows=torch.zeros(0, dtype=torch.long),
        batch_size=BATCH,
        sampler="mixed",
        seed=0,
        device=torch.device("cpu"),
        bank_update=update,
    )
    banks = domain_banks(model)
    row: dict[str, Any] = {
        "model": name,
        "domains": num_domains,
        "variant": variant,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bank_parameters": sum(p.numel() for p in banks),
    }
    row["bank parameters per domain"] = round(row["bank_parameters"] / num_domains)
    step = ctx.step
    if name == "mlp@mamdr":
        row["bank parameters per domain"] = model.num_specific_parameters()
        step = _mamdr_step(model, ctx)
    for i, kind in enumerate(KINDS):
        batches = _batches(schema, kind, 4, seed=i)
        row[f"{kind} domains present"] = round(sum(int(b.domain.unique().numel()) for b in batches) / len(batches))
        for b in batches[:2]:  # warm-up (the optimiser's state is created here)
            step(b)
        times = []
        for r in range(reps):
            t0 = time.perf_counter()
            step(batches[r % len(batches)])
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        row[f"{kind} ms"] = round(times[len(times) // 2], 2)  # the median step
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def _mamdr_step(model, ctx):
    """MAMDR's unit of work on a batch. A single-domain batch: one Domain Regularization step of its domain
    (θ^S + θ^d into the model, a training step, the change kept as θ^d: ``train_specific``, entered per step
    here where DR enters it once per pass, so an upper bound). A mixed batch, which MAMDR never trains on:
    scoring it (no gradient; the wrapped model runs once per domain present, on that domain's rows)."""
    import torch

    def step(batch):
        domains = batch.domain.unique()
        if domains.numel() == 1:
            model.train()
            with model.train_specific(int(domains[0]), 0.1):
                ctx.step(batch)
            return
        model.eval()
        with torch.no_grad():
            model(batch)

    return step


def _fmt(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def write(rows: list[dict], skipped: list[dict], args: argparse.Namespace, out: Path) -> None:
    from polyrec.experiment import cpu_model, environment

    env = environment()
    machine = f"{cpu_model()}, {env.get('cpus', '?')} logical CPUs, one torch thread per process"
    command = "python benchmarks/domain_scaling.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    base = {(r["model"], r["variant"]): r for r in rows if r["domains"] == min(a["domains"] for a in rows)}
    ratios = []
    for r in rows:
        b = base.get((r["model"], r["variant"]))
        if b is not None:
            ratios.append(
                {
                    "model": r["model"],
                    "variant": r["variant"],
                    "domains": r["domains"],
                    **{f"{k} vs D={b['domains']}": round(r[f"{k} ms"] / b[f"{k} ms"], 2) for k in KINDS},
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "machine": machine,
        "environment": env,
        "batch_size": BATCH,
        "reps": args.reps,
        "rows": rows,
        "ratios": ratios,
        "skipped": skipped,
    }
    tmp = out / "domain_scaling.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out / "domain_scaling.json")
    lines = [
        "# Training step vs number of domains: dense and row-wise bank updates",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; python {platform.python_version()}, torch {env.get('torch')}  ",
        f"Batches of {BATCH:,}; a cell is the median of {args.reps} steps (forward, backward, optimiser update) "
        "after 2 warm-up steps; each (model, D, variant) in its own process.",
        "",
        "`mlp@mamdr` (an MLP wrapped with MAMDR's domain-specific offsets θ^d on its dense layers, the "
        "synthetic-zipf presets' choice): its domain-batched cell is one Domain Regularization step "
        "(θ^S + θ^d into the model, a training step, the change kept as θ^d), and its mixed cells are the "
        "time to score the mixed batch (no gradient), since MAMDR trains on single-domain batches only; the "
        "update variants do not apply to it (the offsets are written by DR, not by an optimiser). "
        "Per-domain memory: the bank parameters each domain adds, at 4 bytes each (optimiser moments of "
        "STAR's and MLoRA's banks add twice that under Adam).",
        "",
        "| model | D | variant | parameters | bank parameters per domain (KB) | domains per batch (batched / "
        "uniform / Zipf) | domain-batched ms | mixed-uniform ms | mixed-Zipf ms | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        present = " / ".join(_fmt(r[f"{k} domains present"]) for k in KINDS)
        lines.append(
            f"| {r['model']} | {r['domains']:,} | {r['variant']} | {r['parameters']:,} | "
            f"{r['bank parameters per domain']:,} ({r['bank parameters per domain'] * 4 / 1024:.1f}) | {present} | "
            f"{r['domain-batched ms']} | {r['mixed-uniform ms']} | {r['mixed-zipf ms']} | {r['peak_rss_mb']:,} |"
        )
    if ratios:
        first = min(a["domains"] for a in rows)
        lines += [
            "",
            f"## Step time relative to D = {first} (same model, variant and batch kind)",
            "",
            "| model | variant | D | domain-batched | mixed-uniform | mixed-Zipf |",
            "|---|---|---|---|---|---|",
        ]
        for a in ratios:
            cells = " | ".join(f"{a[f'{k} vs D={first}']}×" for k in KINDS)
            lines.append(f"| {a['model']} | {a['variant']} | {a['domains']:,} | {cells} |")
    if skipped:
        lines += ["", "Not run:", *[f"- {s['model']} at D = {s['domains']:,}: {s['why']}" for s in skipped]]
    tmp = out / "domain_scaling.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "domain_scaling.md")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--domains", default=",".join(map(str, DOMAINS)))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=5, help="timed steps per batch kind")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--merge", action="store_true", help="keep the rows of --out's domain_scaling.json that this run does not redo"
    )
    ap.add_argument("--render", action="store_true", help="rewrite the Markdown from --out's JSON, measuring nothing")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "D", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, d, variant = args.one
        print(json.dumps(run_one(name, int(d), variant, args.reps)))
        return
    if args.render:
        old = json.loads((args.out / "domain_scaling.json").read_text())
        args.reps = old["reps"]
        sys.argv = [sys.argv[0], *old["command"].split()[2:]]  # the measuring run's command
        write(old["rows"], old["skipped"], args, args.out)
        return
    rows, skipped = [], []
    for name in args.models.split(","):
        for d in map(int, args.domains.split(",")):
            if (name, d) in TOO_BIG:
                skipped.append({"model": name, "domains": d, "why": TOO_BIG[(name, d)]})
                continue
            for variant in args.variants.split(","):
                if name in NO_BANK_UPDATE and variant != "dense":
                    continue
                cmd = [sys.executable, __file__, "--one", name, str(d), variant, "--reps", str(args.reps)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    tail = " ".join(done.stderr.strip().splitlines()[-1:])
                    skipped.append({"model": name, "domains": d, "variant": variant, "why": f"failed: {tail}"})
                    print(f"{name} D={d} {variant}: failed: {tail}", file=sys.stderr)
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1], file=sys.stderr, flush=True)
    if args.merge and (args.out / "domain_scaling.json").exists():
        old = json.loads((args.out / "domain_scaling.json").read_text())
        redone = {(r["model"], r["domains"], r["variant"]) for r in rows}
        redone_pairs = {(r["model"], r["domains"]) for r in rows} | {(s["model"], s["domains"]) for s in skipped}
        kept = [r for r in old["rows"] if (r["model"], r["domains"], r["variant"]) not in redone]
        order = {m: i for i, m in enumerate(MODELS)}
        rows = sorted(
            kept + rows, key=lambda r: (order.get(r["model"], 99), r["domains"], VARIANTS.index(r["variant"]))
        )
        skipped = [s for s in old.get("skipped", []) if (s["model"], s["domains"]) not in redone_pairs] + skipped
    write(rows, skipped, args, args.out)


if __name__ == "__main__":
    main()
