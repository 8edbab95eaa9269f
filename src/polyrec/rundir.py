"""The run directory: what a training run leaves behind, self-describing and safe to open from a stranger.

A finished run directory holds::

    run.json            the manifest, written last: format, polyrec version, config hash, and the sha256
                        of every file below (a run without it is unfinished: ``polyrec train`` resumes it)
    config.json         the resolved experiment config (every default filled in)
    schema.json         the encoded features and domains the model reads
    processing.json     the vocabularies and scalers fitted on the training split (to encode new rows)
    data.json           the data fingerprint: source files' sha256, split hash, rows per split and domain
    model.safetensors   the best weights
    result.json         the run record (test and validation metrics, OOV counts, cost, environment)
    metrics.jsonl/.csv  one record per epoch
    checkpoints/        the last two complete training states (:mod:`polyrec.training.checkpoint`)

This module writes (:func:`write_run_inputs`, :func:`write_run_outputs`, :func:`write_manifest`) and reads
(:func:`read_manifest`, :func:`read_run_config`, :func:`read_run_schemas`, :func:`read_run_weights`) those
files, and holds the checks a run directory is opened under. Only JSON and safetensors are ever read back;
nothing is unpickled. A run directory written by polyrec 0.1 (``model.pt``, ``checkpoint.pt``: pickles) is
refused with a message, never opened.

Resuming is exact and guarded: ``polyrec train --out DIR`` on an existing DIR continues it only when the
resolved config and the data fingerprint are those of the run in DIR; otherwise :class:`RunMismatch`
names the keys that differ and DIR is left untouched. ``overwrite=True`` (``--overwrite``) removes the
files polyrec wrote there (and only those) and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .safeio import ArtifactError, read_json, sha256_file, verify_files, write_json

RUN_FORMAT = "polyrec-run"
RUN_VERSION = 1
#: Files and folders polyrec writes into a run directory (what ``--overwrite`` removes; nothing else).
OWNED = (
    "run.json",
    "config.json",
    "schema.json",
    "processing.json",
    "data.json",
    "model.safetensors",
    "result.json",
    "metrics.jsonl",
    "metrics.csv",
    "add_domain.json",
    "checkpoints",
)
#: Files of polyrec 0.1 run directories (pickles), refused on sight.
LEGACY = ("model.pt", "checkpoint.pt")
#: Config keys that do not change what a run computes in principle (threads only change the order of
#: floating-point sums); they are left out of the config hash and of resume / reuse comparisons.
NEUTRAL_KEYS = ("train.num_threads",)


class RunMismatch(ValueError):
    """A run directory or a benchmark record was made with another config or other data."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v and key not in ("data.domain.groups",):
                out.update(_flat(v, key))
            else:
                out[key] = v
        return out
    return {prefix: d}


#: Keys that configs gained after runs were recorded without them, each with the value that computes what
#: those runs computed. A key at that value is left out of comparisons and hashes, so a record that predates
#: the key still matches a config that reproduces it, and one at any other value does not.
LEGACY_VALUES: dict[str, Any] = {
    "adapter.domain_bias": True,  # MLoRA's per-domain bias b_d, always present before 0.3
    "adapter.a_init": "uniform",  # MLoRA's A drawn uniform in ±1/sqrt(d_in) before 0.3
    "data.domain.describing": [],  # no domain-describing features before 0.3
    "data.sample.fraction": 1.0,  # every source row before 0.3
    "data.sample.seed": 0,
    "train.bank_update": "dense",  # every parameter updated densely before the row-wise bank update
    "train.optimizer_impl": "default",  # torch's own Adam implementation before the fused option
    "train.compile": "none",  # eager before the torch.compile option
}
#: Strategy options whose default changed, with the default that records made before the change ran with.
#: Records store the options a config gave (older ones) or all of them, resolved (0.3 on); both are
#: compared as the options that differ from these defaults.
LEGACY_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "two_phase": {"pretrain_epochs": 1},
    "alternate_finetune": {"alternate_epochs": 5},
}


def with_legacy_values(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a stored run's) with every :data:`LEGACY_VALUES` key it lacks set to that value, where the
    key's section exists: what a run made before the key existed computed. Strategy options need nothing:
    a stored run's options are given back as they were saved, and :data:`LEGACY_STRATEGY_DEFAULTS` fill in."""
    out = json.loads(json.dumps(config, default=str))
    for key, value in LEGACY_VALUES.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    train = out.get("train")
    if isinstance(train, dict) and train.get("strategy") in LEGACY_STRATEGY_DEFAULTS:
        given = train.get("strategy_options") or {}
        train["strategy_options"] = {**LEGACY_STRATEGY_DEFAULTS[train["strategy"]], **given}
    return out


def _strategy_defaults(name: Any) -> dict[str, Any]:
    """The option defaults of strategy ``name`` that comparisons hold as 'unset' ({} for an unknown name)."""
    import dataclasses

    from .training.strategies import base as strategies

    cls = strategies.STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        return {}
    out = {
        f.name: json.loads(json.dumps(f.default, default=str))
        for f in dataclasses.fields(cls.Config)
        if f.default is not dataclasses.MISSING
    }
    return {**out, **LEGACY_STRATEGY_DEFAULTS.get(name, {})}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as flat dotted keys, without the neutral ones (JSON round trip: tuples become lists), keys at
    their :data:`LEGACY_VALUES` value, and strategy options at their default (held as unset)."""
    plain = json.loads(json.dumps(config, default=str))
    flat = _flat(plain)
    defaults = _strategy_defaults((plain.get("train") or {}).get("strategy"))
    prefix = "train.strategy_options."
    out = {}
    for k, v in flat.items():
        if k in NEUTRAL_KEYS or (k in LEGACY_VALUES and v == LEGACY_VALUES[k]):
            continue
        if k.startswith(prefix) and k[len(prefix) :] in defaults and v == defaults[k[len(prefix) :]]:
            continue
        if k == "train.strategy_options" and v == {}:
            continue
        out[k] = v
    return out


def config_hash(config: dict[str, Any]) -> str:
    """Identity of a resolved config (neutral keys left out): equal hashes, the same experiment."""
    payload = json.dumps(comparable(config), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (in the form :func:`comparable` gives), each as ``key: old -> new``."""
    a, b = comparable(old), comparable(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {_short(a.get(key, '<unset>'))} -> {_short(b.get(key, '<unset>'))}")
    return out


def _short(v: Any) -> str:
    text = v if v == "<unset>" else repr(v) if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two data fingerprints: source files, split hash, row counts."""
    out = []
    old_files = (old.get("source") or {}).get("files") or {}
    new_files = (new.get("source") or {}).get("files") or {}
    for name in sorted(set(old_files) | set(new_files)):
        if old_files.get(name) != new_files.get(name):
            before = (old_files.get(name) or "absent")[:12]
            after = (new_files.get(name) or "absent")[:12]
            out.append(f"source file {name!r}: sha256 {before}… -> {after}…")
    if old.get("split_hash") != new.get("split_hash"):
        out.append(f"split hash: {old.get('split_hash')} -> {new.get('split_hash')}")
    if old.get("rows") != new.get("rows"):
        out.append(f"rows per split and domain: {old.get('rows')} -> {new.get('rows')}")
    return out


# ------------------------------------------------------------------------------------------- state


def inspect(run_dir: str | Path) -> str:
    """``"absent"`` (no folder or nothing of polyrec's in it), ``"legacy"`` (a polyrec 0.1 run of pickles),
    ``"unfinished"`` (started, no manifest yet) or ``"finished"``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return "absent"
    if any((run_dir / f).exists() for f in LEGACY):
        return "legacy"
    if (run_dir / "run.json").exists():
        return "finished"
    if any((run_dir / f).exists() for f in OWNED):
        return "unfinished"
    return "absent"


def clear(run_dir: str | Path) -> None:
    """Remove what polyrec wrote into ``run_dir`` (``OWNED`` and the legacy pickles), nothing else."""
    run_dir = Path(run_dir)
    for name in OWNED + LEGACY:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def legacy_error(run_dir: Path) -> ArtifactError:
    found = [f for f in LEGACY if (run_dir / f).exists()]
    return ArtifactError(
        f"{str(run_dir)!r} holds a run written by polyrec 0.1 ({', '.join(found)}: pickle files, which can run code "
        "when opened); polyrec no longer opens them. Retrain the run (polyrec train ... --overwrite) or use another "
        "directory"
    )


def check_resumable(run_dir: Path, config: dict[str, Any]) -> None:
    """Raise :class:`RunMismatch` when ``run_dir`` holds a run of another config (before any data work)."""
    state = inspect(run_dir)
    if state == "legacy":
        raise legacy_error(run_dir)
    if state == "absent":
        return
    if not (run_dir / "config.json").exists():
        raise RunMismatch(
            f"{str(run_dir)!r} holds an incomplete run without config.json; use --overwrite to start "
            "afresh or another --out"
        )
    old = read_json(run_dir / "config.json", "run config")
    diff = config_diff(old, config)
    if diff:
        raise RunMismatch(
            f"{str(run_dir)!r} holds a run with a different config ({'; '.join(diff)}); it was left "
            "untouched. Use --overwrite to replace it, or another --out"
        )


def check_data(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Raise :class:`RunMismatch` when ``run_dir``'s run was trained on other data than ``fingerprint``."""
    path = run_dir / "data.json"
    if inspect(run_dir) in ("absent",) or not path.exists():
        return
    diff = fingerprint_diff(read_json(path, "run data fingerprint"), fingerprint)
    if diff:
        raise RunMismatch(
            f"{str(run_dir)!r} holds a run trained on other data ({'; '.join(diff)}); it was left "
            "untouched. Use --overwrite to replace it, or another --out"
        )


def write_manifest(
    run_dir: Path, config: dict[str, Any], model: dict[str, Any] | None = None, version: str = ""
) -> None:
    """Write ``run.json`` (last): it lists every file of the run with its sha256."""
    files = {
        name: sha256_file(run_dir / name)
        for name in OWNED
        if name not in ("run.json", "checkpoints") and (run_dir / name).is_file()
    }
    manifest = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "polyrec": version,
        "config_hash": config_hash(config),
        "files": files,
        "model": model or {},
    }
    write_json(run_dir / "run.json", {**manifest, "manifest_sha256": _self_hash(manifest)})


def _self_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished run after checking every file it lists against its sha256."""
    run_dir = Path(run_dir)
    state = inspect(run_dir)
    if state == "legacy":
        raise legacy_error(run_dir)
    if state != "finished":
        raise ArtifactError(
            f"{str(run_dir)!r} is not a finished run directory (no run.json); a run that was "
            "interrupted is finished by running the same `polyrec train` again"
        )
    manifest = read_json(run_dir / "run.json", "run manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT:
        raise ArtifactError(f"{str(run_dir / 'run.json')!r} is not a polyrec run manifest")
    if manifest.get("manifest_sha256") != _self_hash(manifest):
        raise ArtifactError(
            f"run manifest {str(run_dir / 'run.json')!r} was changed after the run was written (its "
            "own sha256 does not match); restore it, or retrain the run"
        )
    if manifest.get("version") != RUN_VERSION:
        raise ArtifactError(
            f"run {str(run_dir)!r} has format version {manifest.get('version')!r}; this polyrec "
            f"reads version {RUN_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files or "config.json" not in files:
        raise ArtifactError(f"{str(run_dir / 'run.json')!r} does not list the run's files")
    unexpected = sorted(set(files) - set(OWNED))
    if unexpected:
        raise ArtifactError(f"{str(run_dir / 'run.json')!r} lists unexpected files {unexpected}")
    verify_files(run_dir, files, "run file")
    return manifest


# ------------------------------------------------------------------------------------------- reading and writing


def write_run_inputs(
    run_dir: Path,
    config: dict[str, Any],
    schema: dict[str, Any],
    processing: dict[str, Any],
    fingerprint: dict[str, Any],
) -> None:
    """Write what a run starts from: ``config.json`` (the resolved config), ``schema.json``,
    ``processing.json`` (vocabularies and scalers) and ``data.json`` (the data fingerprint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "schema.json", schema)
    write_json(run_dir / "processing.json", processing)
    write_json(run_dir / "data.json", fingerprint)


def write_run_outputs(
    run_dir: Path,
    weights: dict[str, Any],
    record: dict[str, Any],
    config: dict[str, Any],
    version: str,
    model: dict[str, Any] | None = None,
) -> None:
    """Write what a run ends with: ``model.safetensors``, ``result.json`` (the run record), and last the
    manifest ``run.json`` (which makes the run directory finished)."""
    from .safeio import save_tensors

    save_tensors(run_dir / "model.safetensors", weights)
    write_json(run_dir / "result.json", record)
    write_manifest(run_dir, config, model=model, version=version)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The stored config of a run, with :func:`with_legacy_values` filled in (what the run computed)."""
    return with_legacy_values(read_json(run_dir / "config.json", "run config"))


def read_run_schemas(run_dir: Path, manifest: dict[str, Any]):
    """(schema of the model, schema its backbone was built for) of a run: the two differ for a run made by
    ``add_domain_run`` (the backbone knows fewer domains); a malformed schema is an ArtifactError."""
    from .data.schema import DatasetSchema

    try:
        schema = DatasetSchema.from_dict(read_json(run_dir / "schema.json", "run schema"))
        backbone = manifest.get("model", {}).get("backbone_schema")
        return schema, (DatasetSchema.from_dict(backbone) if backbone else schema)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"run schema of {str(run_dir)!r} is malformed ({exc})") from None


def read_run_weights(run_dir: Path) -> dict[str, Any]:
    """The run's best weights (safetensors; nothing is unpickled)."""
    from .safeio import load_tensors

    tensors, _ = load_tensors(run_dir / "model.safetensors", "run weights")
    return tensors


def read_add_domain_info(run_dir: Path) -> dict[str, Any] | None:
    """``add_domain.json`` of a run made by ``add_domain_run`` (base run, domain, its data), else None."""
    path = run_dir / "add_domain.json"
    return read_json(path, "add-domain record") if path.exists() else None


def check_run_data(run_dir: str | Path, data: Any, ds: Any = None) -> None:
    """Raise :class:`RunMismatch` when the run's data changed since it was trained: a source file's sha256
    (before anything is encoded: ``ds`` None), then the split hash and the rows per split and domain of the
    data set the data config ``data`` gives now (``ds``)."""
    from .data import data_fingerprint, source_files

    run_dir = Path(run_dir)
    stored = read_json(run_dir / "data.json", "run data fingerprint")
    now = {
        "source": {"files": source_files(data.source)},
        "split_hash": stored.get("split_hash"),
        "rows": stored.get("rows"),
    }
    if ds is not None:
        now = data_fingerprint(data, ds)
    diff = fingerprint_diff(stored, now)
    if diff:
        raise RunMismatch(
            f"the data of run {str(run_dir)!r} changed since it was trained ({'; '.join(diff)}); "
            "evaluating it would report on other rows. Restore the data it was trained on, or "
            "retrain the run"
        )
