"""When does a domain-aware method beat the plain MLP? MovieLens-1M, varied in size and in its domains.

A grid of data sets built from MovieLens-1M the way P1 builds its own (label ``rating == 5``, user and item
ids plus the domain as features, a stratified 60/20/20 split with seed 2024):

- the domain attribute: ``gender`` (2 domains), ``age`` (7) or ``occupation`` (21);
- the size: a seeded random subset of the ratings (``data.sample.fraction`` 0.1, 0.3, 1.0: about 100k,
  300k and 1M rows).

In every cell each method is trained with 5 model seeds under the ``ml1m-age7`` preset's settings (the P1
models, Adam at 1e-3, batches of 1024, early stopping on validation ``auc_mean`` with patience 3;
MAMDR's β = γ = 0.1, k = 3) and compared with the MLP paired by seed, on test WAUC. Selection is on the
validation split only; nothing here looks at a test metric before the run ends.

    python benchmarks/when_domains_help.py                       # every cell; resumable
    python benchmarks/when_domains_help.py --domains gender --fractions 0.1 --methods mlp,star
    python benchmarks/when_domains_help.py --report              # tables and plot from the records only

Each cell's records are a ``polyrec benchmark`` folder under ``results/when_domains_help/<domain>-<fraction>/``
(resumed like any benchmark folder); the summary is ``results/when_domains_help.{json,md,svg}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "when_domains_help"
PROTOCOL = "ml1m-age7"
DOMAINS: dict[str, dict[str, Any]] = {
    "gender": {"column": "gender", "groups": {"F": ["F"], "M": ["M"]}},
    "age": {"column": "age", "groups": None},
    "occupation": {"column": "occupation", "groups": None},
}
FRACTIONS = (0.1, 0.3, 1.0)
BASELINE = "mlp"
# The domain-aware methods of the check on synthetic data, each with its paper's schedule.
METHODS = (
    "mlp",
    "star",
    "mlp+mlora@two_phase",
    "pepnet",
    "shared_bottom",
    "mmoe",
    "dfei",
    "mlp@mamdr",
    "mlp@domain_regularization",
)
# DFEI's Algorithm 1; MAMDR's k = 3 helper domains, or D - 1 where fewer exist (gender has 2 domains; null is
# min(3, D - 1), the preset's 3 on age and occupation).
MODEL_OVERRIDES = {
    "dfei": ["train.strategy=dfei_cyclic"],
    "mlp@mamdr": ["train.strategy_options.helper_domains=null"],
    "mlp@domain_regularization": ["train.strategy_options.helper_domains=null"],
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def cell_overrides(domain: str, fraction: float) -> list[str]:
    """The dotted overrides that turn the preset's data into one cell of the grid."""
    rule = DOMAINS[domain]
    return [
        f"data.domain.column={rule['column']}",
        f"data.domain.groups={json.dumps(rule['groups'])}",
        f"data.sample.fraction={fraction}",
        "data.sample.seed=0",
    ]


def cell_dir(domain: str, fraction: float) -> Path:
    return OUT / f"{domain}-{fraction:g}"


def paired(records: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """Test WAUC ×100 of ``method`` minus the MLP's, paired by seed: mean, sample std, seeds, per-seed."""
    mine = {r["seed"]: r["metrics"]["wauc"] * 100 for r in records if r["model"] == method}
    base = {r["seed"]: r["metrics"]["wauc"] * 100 for r in records if r["model"] == BASELINE}
    seeds = sorted(set(mine) & set(base))
    if not seeds:
        return None
    diffs = [mine[s] - base[s] for s in seeds]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    out = {
        "method": method,
        "n": len(seeds),
        "wauc": statistics.fmean(mine[s] for s in seeds),
        "diff": statistics.fmean(diffs),
        "diff_std": sd,
        "diffs": diffs,
    }
    out["verdict"] = (
        "n/a"
        if math.isnan(sd)
        else "gain"
        if out["diff"] > 2 * sd and out["diff"] > 0
        else "loss"
        if -out["diff"] > 2 * sd
        else "tie"
    )
    return out


def summarise(domains: list[str], fractions: list[float], methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for domain in domains:
        for fraction in fractions:
            path = cell_dir(domain, fraction) / "results.json"
            if not path.exists():
                continue
            records = json.loads(path.read_text())
            n_rows = next(
                (sum(r["data"]["rows"].values()) for r in records if "data" in r and "rows" in r["data"]), None
            )
            for method in methods:
                if method == BASELINE:
                    continue
                p = paired(records, method)
                if p is not None:
                    rows.append(
                        {
                            "domain": domain,
                            "domains": len(next(iter(records))["metrics"]["auc_per_domain"]),
                            "fraction": fraction,
                            "rows": n_rows,
                            **p,
                        }
                    )
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# When does a domain-aware method beat the MLP? (MovieLens-1M, by size and domain attribute)",
        "",
        f"Command: `{command}`",
        "",
        "Test WAUC ×100, method − MLP paired by model seed (mean ± sample std of the differences, n seeds); "
        "**gain** / **loss** when the difference passes 2 × its std, else tie. Each cell: preset "
        f"`{PROTOCOL}`, domain attribute and row fraction as given.",
        "",
    ]
    cells = sorted(
        {(r["domain"], r["domains"], r["fraction"], r["rows"]) for r in rows},
        key=lambda c: (list(DOMAINS).index(c[0]), c[2]),
    )
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines += ["| domain (D) | rows | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for domain, d, fraction, n_rows in cells:
        cells_txt = []
        for m in methods:
            r = next((x for x in rows if (x["domain"], x["fraction"], x["method"]) == (domain, fraction, m)), None)
            cells_txt.append(
                ""
                if r is None
                else f"{r['diff']:+.2f} ± {r['diff_std']:.2f} ({r['n']}) "
                + (f"**{r['verdict']}**" if r["verdict"] in ("gain", "loss") else r["verdict"])
            )
        lines.append(
            f"| {domain} ({d}) | {n_rows:,} | " + " | ".join(cells_txt) + " |"
            if n_rows
            else f"| {domain} ({d}) | {fraction:g} | " + " | ".join(cells_txt) + " |"
        )
    lines.append("")
    return "\n".join(lines)


def svg(rows: list[dict[str, Any]]) -> str:
    """One panel per domain attribute: Δ WAUC (method − MLP) against the number of rows (log scale)."""
    domains = [d for d in DOMAINS if any(r["domain"] == d for r in rows)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    if not domains:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    W, H, pad = 330, 260, 45
    spread = [2 * r["diff_std"] if not math.isnan(r["diff_std"]) else 0.0 for r in rows]
    diffs = [r["diff"] + s for r, s in zip(rows, spread)] + [r["diff"] - s for r, s in zip(rows, spread)] + [0.0]
    lo, hi = min(diffs) - 0.1, max(diffs) + 0.1
    xs = [math.log10(r["rows"]) for r in rows if r["rows"]] or [5.0, 6.0]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(domains) + 160}" height="{H + 40}" '
        'font-family="sans-serif" font-size="11">'
    ]
    for i, domain in enumerate(domains):
        ox = i * W

        def px(v: float, ox: float = ox) -> float:
            return ox + pad + (v - x0) / (x1 - x0) * (W - pad - 10)

        def py(v: float) -> float:
            return 20 + (hi - v) / (hi - lo) * (H - 40)

        d = next(r["domains"] for r in rows if r["domain"] == domain)
        parts.append(f'<text x="{ox + W / 2}" y="14" text-anchor="middle">{domain} ({d} domains)</text>')
        parts.append(
            f'<line x1="{px(x0)}" y1="{py(0)}" x2="{px(x1)}" y2="{py(0)}" stroke="#000" stroke-dasharray="3"/>'
        )
        parts.append(f'<line x1="{px(x0)}" y1="{py(lo)}" x2="{px(x0)}" y2="{py(hi)}" stroke="#000"/>')
        for t in (lo, 0.0, hi):
            parts.append(f'<text x="{px(x0) - 4}" y="{py(t) + 4}" text-anchor="end">{t:+.1f}</text>')
        for n in sorted({r["rows"] for r in rows if r["domain"] == domain and r["rows"]}):
            parts.append(f'<text x="{px(math.log10(n))}" y="{H - 5}" text-anchor="middle">{n / 1000:.0f}k</text>')
        for m, color in zip(methods, COLORS):
            pts = sorted(
                (r["rows"], r["diff"], r["diff_std"])
                for r in rows
                if r["domain"] == domain and r["method"] == m and r["rows"]
            )
            if not pts:
                continue
            path = " ".join(f"{px(math.log10(n)):.1f},{py(v):.1f}" for n, v, _ in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            for n, v, s in pts:
                parts.append(f'<circle cx="{px(math.log10(n)):.1f}" cy="{py(v):.1f}" r="2.5" fill="{color}"/>')
                if not math.isnan(s):
                    parts.append(
                        f'<line x1="{px(math.log10(n)):.1f}" y1="{py(v - 2 * s):.1f}" '
                        f'x2="{px(math.log10(n)):.1f}" y2="{py(v + 2 * s):.1f}" stroke="{color}"/>'
                    )
    lx = W * len(domains) + 5
    for j, (m, color) in enumerate(zip(methods, COLORS)):
        parts.append(
            f'<rect x="{lx}" y="{24 + 16 * j}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{33 + 16 * j}">{m}</text>'
        )
    parts.append(f'<text x="{lx}" y="{40 + 16 * len(methods)}">Δ test WAUC ×100 vs MLP</text>')
    parts.append(f'<text x="{lx}" y="{54 + 16 * len(methods)}">bars: ± 2 std (paired)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rebuild the summary from the records")
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    for d in domains:
        if d not in DOMAINS:
            parser.error(f"--domains: unknown {d!r}; valid: {', '.join(DOMAINS)}")
    fractions = [float(f) for f in args.fractions.split(",") if f]
    methods = [m for m in args.methods.split(",") if m]
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    command = "python benchmarks/when_domains_help.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report:
        from polyrec.benchmark import run_benchmark

        for fraction in fractions:  # the small cells first: they finish the grid's left side early
            for domain in domains:
                run_benchmark(
                    PROTOCOL,
                    methods,
                    seeds=args.seeds,
                    out_dir=cell_dir(domain, fraction),
                    overrides=cell_overrides(domain, fraction),
                    model_overrides={m: v for m, v in MODEL_OVERRIDES.items() if m in methods},
                    jobs=args.jobs,
                )
    rows = summarise(list(DOMAINS), sorted({*FRACTIONS, *fractions}), list(METHODS))
    stem = OUT.parent / "when_domains_help"
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "protocol": PROTOCOL, "cells": rows}, indent=1, default=float)
    )
    stem.with_suffix(".md").write_text(markdown(rows, command))
    stem.with_suffix(".svg").write_text(svg(rows))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
