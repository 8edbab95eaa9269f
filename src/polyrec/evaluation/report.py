"""Markdown tables summarising experiment runs across seeds.

A *run* is one training + evaluation, recorded as a dict like::

    {"protocol": "star-10", "model": "STAR", "strategy": "joint", "seed": 0,
     "split_hash": "a1b2c3", "train_samples_per_s": 51234.0, "wall_s": 812.5,
     "metrics": {"wauc": 0.7312, "auc_overall": 0.7401,
                 "auc_per_domain": {"d0": 0.72, "d1": 0.75}, ...}}

Runs sharing the ``group_by`` keys (e.g. the same model under the same
protocol and training strategy, different seeds) become one table row showing
``mean ± std`` (sample std) over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import ConfigError
from ..data.schema import display_order
from ..runspec import ADAPTER_SEP, RunSpec
from .metrics import (
    AUC_MEAN,
    AUC_OVERALL,
    AUC_PER_DOMAIN,
    COUNT_PER_DOMAIN,
    GAUC,
    GAUC_PER_DOMAIN,
    LOGLOSS_OVERALL,
    LOGLOSS_PER_DOMAIN,
    PCOC_PER_DOMAIN,
    WAUC,
    N,
    paired_ttest,
    summarize_runs,
)

__all__ = [
    "adapter_table",
    "cost_table",
    "metrics_table",
    "per_domain_table",
    "rank_table",
    "results_table",
]

_MISSING = "-"


def _is_auc_like(key: str) -> bool:
    # AUC-type metrics (auc_*, wauc, gauc, ...) are conventionally shown x100.
    return "auc" in key.lower()


def _cell(text: Any) -> str:
    # A literal '|' would split a Markdown cell.
    return str(text).replace("|", "\\|")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _group_runs(
    runs: Sequence[Mapping[str, Any]], group_by: Sequence[str]
) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    if isinstance(runs, Mapping):
        raise TypeError("runs must be a list of run dicts, got a single dict; wrap it in a list: [run].")
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise TypeError(f"runs[{i}] is a {type(run).__name__}; expected a dict describing one run.")
        key = tuple(run.get(k, _MISSING) for k in group_by)
        groups.setdefault(key, []).append(run)  # dicts keep first-seen group order
    return groups


def _lookup(run: Mapping[str, Any], key: str) -> float | None:
    """Metric ``key`` from ``run["metrics"]``, falling back to a top-level run field."""
    metrics = run.get("metrics") or {}
    value = metrics.get(key, run.get(key))
    if value is None or isinstance(value, Mapping):
        return None
    return float(value)


def _mean_std(values: Sequence[float], n_runs: int, scale: float, decimals: int) -> str:
    if not values:
        return _MISSING
    mean, std = summarize_runs(values)
    text = f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}"
    if len(values) < n_runs:
        # Make partial coverage visible instead of silently averaging fewer seeds.
        text += f" (n={len(values)})"
    return text


def _format_reference(value: Any, scale: float, decimals: int | None) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value) * scale
        if decimals is not None and math.isfinite(value):
            return f"{value:.{decimals}f}"
        return f"{value:g}"
    return str(value)


def _reference_value(reference: Mapping[str, Any], model: Any) -> Any:
    # Presets key references by registry name ("star"); runs may carry "STAR".
    if model in reference:
        return reference[model]
    lowered = {str(k).lower(): v for k, v in reference.items()}
    return lowered.get(str(model).lower())


def _fmt(value: Any, decimals: int) -> str:
    if value is None:
        return _MISSING
    value = float(value)
    return f"{value:.{decimals}f}" if math.isfinite(value) else "nan"


def results_table(
    runs: Sequence[Mapping[str, Any]],
    metric_keys: Sequence[str] = (WAUC, AUC_OVERALL, AUC_MEAN, LOGLOSS_OVERALL),
    group_by: Sequence[str] = ("protocol", "model", "strategy"),
    reference: Mapping[str, Any] | None = None,
    scale: float = 100.0,
    decimals: int | None = None,
    reference_metric: str | None = None,
) -> str:
    """Markdown table with one row per group of runs and mean ± std per metric.

    Args:
        runs: run dicts (see module docstring). A metric is read from
            ``run["metrics"]`` or, failing that, from the run itself, so
            top-level fields such as ``"train_samples_per_s"`` can be listed
            in ``metric_keys`` too.
        metric_keys: metrics to show, one column each.
        group_by: run fields that identify a row; runs missing a field are
            grouped under ``-``.
        reference: optional ``{model name: published number}``; adds a
            ``paper`` column (model names match case-insensitively).
        reference_metric: which metric the published numbers are; the column
            is then headed ``paper <metric>`` and scaled like that metric.
            Without it the numbers are printed as given.
        scale: multiplier for AUC-like metrics (any key containing "auc");
            other metrics are printed unscaled.
        decimals: digits after the point; default 2 for scaled AUC-like
            metrics and 4 otherwise.

    Returns:
        The table as a Markdown string. A cell averaged over fewer runs than
        the row has is suffixed ``(n=k)``; groups that mix different
        ``split_hash`` values get a note under the table, since their seeds
        were not evaluated on the same data split.

    Example:
        >>> runs = [{"model": "STAR", "seed": s, "metrics": {"wauc": w}}
        ...         for s, w in enumerate([0.70, 0.72])]
        >>> print(results_table(runs, metric_keys=["wauc"], group_by=["model"]))
        | model | n | wauc |
        |---|---|---|
        | STAR | 2 | 71.00 ± 1.41 |
    """
    groups = _group_runs(runs, group_by)
    header = list(group_by) + ["n"] + list(metric_keys)
    ref_scale, ref_dec = 1.0, None
    if reference is not None:
        header.append("paper" if reference_metric is None else f"paper {reference_metric}")
        if reference_metric is not None:
            auc_like = _is_auc_like(reference_metric)
            ref_scale = scale if auc_like else 1.0
            ref_dec = decimals if decimals is not None else (2 if auc_like and scale != 1 else 4)

    rows, notes = [], []
    for key, members in groups.items():
        row: list[Any] = list(key) + [len(members)]
        for metric in metric_keys:
            values = [v for v in (_lookup(r, metric) for r in members) if v is not None]
            auc_like = _is_auc_like(metric)
            k_scale = scale if auc_like else 1.0
            k_dec = decimals if decimals is not None else (2 if auc_like and scale != 1 else 4)
            row.append(_mean_std(values, len(members), k_scale, k_dec))
        if reference is not None:
            model = key[list(group_by).index("model")] if "model" in group_by else None
            value = _reference_value(reference, model) if model is not None else None
            row.append(_format_reference(value, ref_scale, ref_dec))
        rows.append(row)

        hashes = {r.get("split_hash") for r in members if r.get("split_hash") is not None}
        if len(hashes) > 1:
            label = ", ".join(f"{k}={v}" for k, v in zip(group_by, key))
            notes.append(f"- note: {label} mixes split_hash values {sorted(map(str, hashes))}")

    table = _markdown(header, rows)
    return table + ("\n\n" + "\n".join(notes) if notes else "")


def per_domain_table(
    runs: Sequence[Mapping[str, Any]],
    key: str = AUC_PER_DOMAIN,
    group_by: Sequence[str] = ("protocol", "model", "strategy"),
    scale: float | None = None,
    decimals: int | None = None,
    reference: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Markdown table of a per-domain metric: one row per group, one column per domain.

    Args:
        runs: run dicts whose ``metrics[key]`` is ``{domain name: float}``.
        key: which per-domain metric to show (e.g. ``"auc_per_domain"``,
            ``"logloss_per_domain"``, ``"pcoc_per_domain"``).
        group_by: run fields that identify a row (model, and by default also
            protocol and strategy so different setups are never pooled).
        scale: multiplier; default 100 for AUC-like keys and 1 otherwise.
        decimals: digits after the point; default 2 when scaled, else 4.
        reference: optional ``{model name: {domain: published value}}``; a row whose model has one shows
            the published value in brackets after its own (``81.55 ± 0.12 [81.37]``).

    Returns:
        The table as a Markdown string; domains appear in first-seen order, or numerically when every
        domain name is an integer code (:func:`~polyrec.data.schema.display_order`).

    Example:
        >>> runs = [{"model": "STAR", "metrics": {"auc_per_domain": {"a": 0.7, "b": 0.8}}}]
        >>> print(per_domain_table(runs, group_by=["model"]))
        | model | n | a | b |
        |---|---|---|---|
        | STAR | 1 | 70.00 ± 0.00 | 80.00 ± 0.00 |
    """
    if scale is None:
        scale = 100.0 if _is_auc_like(key) else 1.0
    if decimals is None:
        decimals = 2 if scale != 1 else 4
    groups = _group_runs(runs, group_by)

    seen: dict[str, None] = {}  # first-seen order, without a quadratic membership test at many domains
    for members in groups.values():
        for run in members:
            per_domain = (run.get("metrics") or {}).get(key) or {}
            if not isinstance(per_domain, Mapping):
                raise TypeError(
                    f"metrics[{key!r}] must map domain name -> value, got {type(per_domain).__name__}. "
                    f"Pass the key of a per-domain metric such as 'auc_per_domain'."
                )
            seen.update(dict.fromkeys(per_domain))
    domains = display_order(list(seen))

    header = list(group_by) + ["n"] + domains
    rows = []
    for group_key, members in groups.items():
        row: list[Any] = list(group_key) + [len(members)]
        published: Mapping[str, Any] = {}
        if reference is not None and "model" in group_by:
            published = _reference_value(reference, group_key[list(group_by).index("model")]) or {}
        for domain in domains:
            values = []
            for run in members:
                value = ((run.get("metrics") or {}).get(key) or {}).get(domain)
                if value is not None:
                    values.append(float(value))
            cell = _mean_std(values, len(members), scale, decimals)
            if published.get(domain) is not None:
                cell += f" [{float(published[domain]) * scale:.{decimals}f}]"
            row.append(cell)
        rows.append(row)
    return _markdown(header, rows)


def metrics_table(metrics: Mapping[str, Any], scale: float = 100.0, max_domains: int | None = None) -> str:
    """Markdown summary of one :meth:`MultiDomainEvaluator.compute` result.

    Args:
        metrics: a :class:`~polyrec.evaluation.metrics.MultiDomainMetrics` or its dict form (``to_dict()``,
            a run record's ``metrics``; keys may be missing).
        scale: multiplier for AUC-like numbers (100 shows them as percent).
        max_domains: show at most this many domains, the largest by evaluated rows (ties in domain
            order), followed by a line that counts the rest; ``None`` shows every domain.

    Returns:
        A table of the overall metrics followed by a per-domain table
        (rows, positives, AUC, logloss, PCOC and GAUC when present).

    Example:
        >>> m = {"auc_overall": 0.75, "logloss_overall": 0.5, "n": 4,
        ...      "auc_per_domain": {"a": 0.75}, "count_per_domain": {"a": {"n": 4, "pos": 2, "neg": 2}}}
        >>> print(metrics_table(m).splitlines()[2])
        | auc_overall | 75.00 |
    """
    dec_auc = 2 if scale != 1 else 4
    scalar_keys = [k for k in (AUC_OVERALL, WAUC, AUC_MEAN, GAUC, LOGLOSS_OVERALL, N) if k in metrics]
    rows = []
    for key in scalar_keys:
        if key == N:
            rows.append([key, int(metrics[key])])
        elif _is_auc_like(key):
            value = metrics[key]
            rows.append([key, _fmt(None if value is None else float(value) * scale, dec_auc)])
        else:
            rows.append([key, _fmt(metrics[key], 4)])
    parts = [_markdown(["metric", "value"], rows)]

    per_auc = metrics.get(AUC_PER_DOMAIN) or {}
    counts = metrics.get(COUNT_PER_DOMAIN) or {}
    names = display_order(dict.fromkeys(list(counts) + list(per_auc)))
    hidden = 0
    if max_domains is not None and len(names) > max_domains:
        rank = {n: i for i, n in enumerate(names)}
        largest = sorted(names, key=lambda n: (-int((counts.get(n) or {}).get("n") or 0), rank[n]))[:max_domains]
        hidden = len(names) - max_domains
        names = display_order(largest)
    if names:
        columns = [
            (AUC_PER_DOMAIN, "auc", scale, dec_auc),
            (LOGLOSS_PER_DOMAIN, "logloss", 1.0, 4),
            (PCOC_PER_DOMAIN, "pcoc", 1.0, 4),
            (GAUC_PER_DOMAIN, "gauc", scale, dec_auc),
        ]
        columns = [c for c in columns if c[0] in metrics]
        header = ["domain", "n", "pos"] + [c[1] for c in columns]
        domain_rows = []
        for name in names:
            count = counts.get(name, {})
            row: list[Any] = [name, count.get("n", _MISSING), count.get("pos", _MISSING)]
            for key, _, col_scale, col_dec in columns:
                value = metrics[key].get(name)
                row.append(_fmt(None if value is None else float(value) * col_scale, col_dec))
            domain_rows.append(row)
        table = _markdown(header, domain_rows)
        if hidden:
            table += f"\n\n{len(names)} largest domains shown; {hidden:,} more are in the full metrics"
        parts.append(table)
    return "\n\n".join(parts)


def _runs_by_model(runs: Sequence[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    return {key[0]: members for key, members in _group_runs(runs, ("model",)).items()}


def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _with_adapter(model: Any, suffix: str) -> str | None:
    """The name of the run ``model`` with the adapter of ``suffix`` (``mlp`` -> ``mlp+mlora``, ``mlp@two_phase``
    -> ``mlp+mlora@two_phase``); None when ``model`` has an adapter already or is not a run name."""
    try:
        spec = RunSpec.parse(str(model))
        return None if spec.adapter else str(spec.with_adapter(suffix.removeprefix(ADAPTER_SEP)))
    except ConfigError:
        return None


def adapter_table(
    runs: Sequence[Mapping[str, Any]],
    metric: str = WAUC,
    reference: Mapping[str, Any] | None = None,
    suffix: str = "+mlora",
    scale: float = 100.0,
    decimals: int = 2,
) -> str:
    """Markdown table of each backbone without and with an adapter, paired by seed.

    For every model ``m`` that has runs both without and with the adapter (``deepfm`` and ``deepfm+mlora``,
    ``mlp@two_phase`` and ``mlp+mlora@two_phase``), one row: both means ± std of ``metric``, the mean paired difference, the two-sided
    paired t-test p-value over the seeds both have (runs are paired on ``(seed, split_hash)``, so only runs
    on the same split are compared), the published base / adapted numbers when ``reference`` has them, the
    adapter's parameters and their share of the backbone's, and the training throughput of both (with
    the thread counts when the two were measured with different ones).

    Args:
        runs: run dicts as :func:`results_table` takes them (``adapter_params``, ``backbone_params``,
            ``train_samples_per_s`` read from the run).
        metric: the compared metric.
        reference: ``{model name: published value}`` with keys ``m`` and the adapted model's name.
        suffix: the adapter part of the adapted model's name (``+mlora``, see :mod:`polyrec.runspec`).
        scale, decimals: display of AUC-like values (differences use the same scale).

    Returns:
        The table as Markdown; an empty string when no backbone has both variants.

    Example:
        >>> runs = [{"model": m, "seed": s, "metrics": {"wauc": w}}
        ...         for m, ws in (("mlp", [0.80, 0.81]), ("mlp+mlora", [0.81, 0.83])) for s, w in enumerate(ws)]
        >>> print(adapter_table(runs).splitlines()[2])
        | mlp | 2 | 80.50 ± 0.71 | 82.00 ± 1.41 | +1.50 | 0.2 | - | - | - | - | - | - | - |
    """
    by_model = _runs_by_model(runs)
    k_scale = scale if _is_auc_like(metric) else 1.0
    header = [
        "backbone",
        "pairs",
        metric,
        f"{metric} {suffix}",
        "Δ",
        "p (paired t)",
        "paper",
        f"paper {suffix}",
        "paper Δ",
        "adapter params",
        "share of backbone",
        "rows/s",
        f"rows/s {suffix}",
    ]
    rows = []
    for model, base_runs in by_model.items():
        adapted_name = _with_adapter(model, suffix)
        adapted_runs = by_model.get(adapted_name) if adapted_name is not None else None
        if not adapted_runs:
            continue
        base = {(r.get("seed"), r.get("split_hash")): _lookup(r, metric) for r in base_runs}
        adapted = {(r.get("seed"), r.get("split_hash")): _lookup(r, metric) for r in adapted_runs}
        keys = [k for k in base if k in adapted and base[k] is not None and adapted[k] is not None]
        a = [adapted[k] for k in keys]
        b = [base[k] for k in keys]
        delta = f"{(sum(a) - sum(b)) / len(keys) * k_scale:+.{decimals}f}" if keys else _MISSING
        p = paired_ttest(a, b) if len(keys) >= 2 else None
        ref_base = _reference_value(reference, model) if reference else None
        ref_adapted = _reference_value(reference, adapted_name) if reference else None
        ref_delta = (
            f"{(float(ref_adapted) - float(ref_base)) * k_scale:+.{decimals}f}"
            if ref_base is not None and ref_adapted is not None
            else _MISSING
        )
        adapter_params = _mean([r.get("adapter_params") for r in adapted_runs])
        backbone_params = _mean([r.get("backbone_params") for r in adapted_runs])
        share = (
            f"{adapter_params / backbone_params * 100:.2f}%"
            if adapter_params is not None and backbone_params
            else _MISSING
        )
        speed = [_mean([r.get("train_samples_per_s") for r in rs]) for rs in (base_runs, adapted_runs)]
        threads = [
            sorted({(r.get("environment") or {}).get("torch_threads") for r in rs} - {None})
            for rs in (base_runs, adapted_runs)
        ]
        speed_cells = [_MISSING if v is None else f"{v:,.0f}" for v in speed]
        if threads[0] != threads[1]:  # throughput is only comparable at equal thread counts: say so
            speed_cells = [
                c if c == _MISSING or not t else f"{c} ({'/'.join(map(str, t))} thr)"
                for c, t in zip(speed_cells, threads)
            ]
        rows.append(
            [
                model,
                len(keys),
                _mean_std([v for v in base.values() if v is not None], len(base_runs), k_scale, decimals),
                _mean_std([v for v in adapted.values() if v is not None], len(adapted_runs), k_scale, decimals),
                delta,
                _MISSING if p is None else f"{p:.2g}",
                _format_reference(ref_base, k_scale, decimals),
                _format_reference(ref_adapted, k_scale, decimals),
                ref_delta,
                _MISSING if adapter_params is None else f"{adapter_params:,.0f}",
                share,
                *speed_cells,
            ]
        )
    return _markdown(header, rows) if rows else ""


def cost_table(
    runs: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = ("model", "strategy"),
) -> str:
    """Markdown table of what each group of runs cost: parameters, training rows/s, epochs, wall time.

    Values are means over the group's runs; ``threads`` lists the torch intra-op thread counts the runs
    used (``environment.torch_threads``), since throughput is only comparable at equal thread counts.
    Training time (and so rows/s) includes the per-epoch recalibration of normalisation statistics;
    ``recal.`` is its share of the training time. Records made before that pass was counted (no
    ``recalibration_s``) show ``excl.``: their rows/s leave it out and are not comparable with the others.

    Example:
        >>> runs = [{"model": "mlp", "num_parameters": 10, "train_samples_per_s": 5e5, "epochs": 7,
        ...          "best_epoch": 3, "wall_s": 30.0, "train_s": 20.0, "recalibration_s": 0.0,
        ...          "environment": {"torch_threads": 2}}]
        >>> print(cost_table(runs, group_by=["model"]).splitlines()[2])
        | mlp | 1 | 10 | 500,000 | 0% | 7.0 | 3.0 | 30 | 2 |
    """
    header = list(group_by) + ["n", "params", "train rows/s", "recal.", "epochs", "best epoch", "wall s", "threads"]
    rows = []
    for key, members in _group_runs(runs, group_by).items():

        def m(field: str, members: Sequence[Mapping[str, Any]] = members) -> float | None:
            return _mean([r.get(field) for r in members])

        params, speed, epochs, best, wall = (
            m(f) for f in ("num_parameters", "train_samples_per_s", "epochs", "best_epoch", "wall_s")
        )
        threads = sorted({(r.get("environment") or {}).get("torch_threads") for r in members} - {None})
        if any(r.get("recalibration_s") is None for r in members):
            recal = "excl."
        else:
            shares = [r["recalibration_s"] / r["train_s"] for r in members if r.get("train_s")]
            recal = f"{100 * sum(shares) / len(shares):.0f}%" if shares else _MISSING
        rows.append(
            list(key)
            + [
                len(members),
                _MISSING if params is None else f"{params:,.0f}",
                _MISSING if speed is None else f"{speed:,.0f}",
                recal,
                _MISSING if epochs is None else f"{epochs:.1f}",
                _MISSING if best is None else f"{best:.1f}",
                _MISSING if wall is None else f"{wall:,.0f}",
                ", ".join(str(t) for t in threads) or _MISSING,
            ]
        )
    return _markdown(header, rows)


def rank_table(
    runs: Sequence[Mapping[str, Any]],
    key: str = AUC_PER_DOMAIN,
    group_by: Sequence[str] = ("model", "strategy"),
    scale: float = 100.0,
    decimals: int = 2,
) -> str:
    """Average AUC and average RANK over domains (MAMDR's Table V metrics), best first.

    Each group's per-domain metric is first averaged over its runs (seeds); on every domain the groups
    are ranked (1 = highest, ties share the mean of their ranks); a group's RANK is the mean of its ranks
    over the domains, and its average AUC the unweighted mean over the domains. Only domains that every
    group has a finite value for are used; their number is in the header.

    Example:
        >>> runs = [{"model": "a", "metrics": {"auc_per_domain": {"x": 0.7, "y": 0.9}}},
        ...         {"model": "b", "metrics": {"auc_per_domain": {"x": 0.8, "y": 0.6}}}]
        >>> print(rank_table(runs, group_by=["model"]).splitlines()[2])
        | a | 1 | 80.00 | 1.50 |
    """
    means: dict[tuple[Any, ...], dict[str, float]] = {}
    counts: dict[tuple[Any, ...], int] = {}
    for group_key, members in _group_runs(runs, group_by).items():
        per: dict[str, list[float]] = {}
        for run in members:
            for domain, value in ((run.get("metrics") or {}).get(key) or {}).items():
                if value is not None and math.isfinite(float(value)):
                    per.setdefault(domain, []).append(float(value))
        means[group_key] = {d: sum(v) / len(v) for d, v in per.items()}
        counts[group_key] = len(members)
    domains = [d for d in dict.fromkeys(d for m in means.values() for d in m) if all(d in m for m in means.values())]
    ranks: dict[tuple[Any, ...], list[float]] = {g: [] for g in means}
    for d in domains:
        values = sorted((means[g][d] for g in means), reverse=True)
        for g in means:
            v = means[g][d]
            first = values.index(v)  # ties: the mean of the positions they share
            ranks[g].append(first + (values.count(v) + 1) / 2)
    header = list(group_by) + ["n", f"average AUC ({len(domains)} domains)", "average RANK"]
    rows = []
    for g in sorted(means, key=lambda g: (sum(ranks[g]) / len(domains)) if domains else 0.0):
        avg = sum(means[g][d] for d in domains) / len(domains) if domains else None
        rank = sum(ranks[g]) / len(domains) if domains else None
        rows.append(list(g) + [counts[g], _fmt(None if avg is None else avg * scale, decimals), _fmt(rank, 2)])
    return _markdown(header, rows)
