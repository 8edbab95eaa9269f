"""Export a trained run for serving: an ONNX graph or a torch.export archive, with a checksummed manifest.

:func:`export_run` reads a finished ranking run directory (:func:`polyrec.experiment.load_run`, every file
checked against the run's manifest), wraps the model in an
:class:`~polyrec.serving.inference.InferenceModule` (plain tensor inputs, dynamic batch size, one domain per
call, per-domain parameters folded) and writes an export folder::

    manifest.json     format, inputs (names, dtypes, shapes, the features of each column), output, feature
                      order, domains, model name and config, what was folded, the parity check, polyrec /
                      torch / onnx versions, and the sha256 of every file below
    model.onnx        format="onnx": torch.onnx.export(..., dynamo=True), batch dimension dynamic
    model.pt2         format="pt2": torch.export.save of the exported program, batch dimension dynamic
    config.json       the run's resolved config (its data section: the label and domain rules, transforms)
    schema.json       the run's schema (features, vocabulary sizes, domain names in index order)
    processing.json   the vocabularies and scalers fitted on the training split (to encode raw rows)

:func:`load_export` opens one again, checking every file against the manifest first, and returns a
:class:`LoadedExport` that scores encoded inputs (:meth:`LoadedExport.run`, one domain per call, and
:meth:`LoadedExport.predict` for any mix of domains). :func:`export_retrieval_run` exports a two-tower
retrieval run (``user_tower.onnx``, ``item_embeddings.safetensors`` with every domain's corpus embedded
for that domain, ``items.json``, the run's config and schema, ``manifest.json``) and
:func:`load_retrieval_export` opens it.

Every registered ranking model exports (:data:`NOT_EXPORTABLE` is empty; a model that could not would be
listed there with the reason, and refused with it).

Choices made here:

- **Checked before it is written.** The exported graph is run (ONNX Runtime, or the exported program) on a
  probe batch of every domain and compared with the trained model's eval-mode logits; a difference above
  :data:`PARITY_TOLERANCE` (relative to the logits' scale) is an :class:`ExportError` and nothing is
  written. The largest difference is recorded in the manifest.
- **Atomic.** Everything is written to a temporary folder beside ``out_dir`` and renamed into place at the
  end; a failed export leaves a previous export in ``out_dir`` intact. ``out_dir`` may hold a previous
  polyrec export (replaced) or nothing; a folder with other files is refused, never emptied.
- **ONNX is the format to share.** An ONNX file is a protobuf: reading one runs no code. A ``.pt2`` archive
  is torch's own format, and ``torch.export.load`` unpickles parts of it (tensors marked ``use_pickle``,
  custom objects, the sample inputs, older archive layouts): torch's documentation says never to load one
  from an untrusted source. polyrec writes its archives without any pickled part (no sample inputs, plain
  tensors only) and :func:`load_export` refuses an archive that holds anything that would be unpickled
  or is compiled code, before torch reads it. Treat a ``.pt2`` export as your own file all the same: the
  scan keeps polyrec's loader away from torch's unpickling paths, it does not make torch's deserialiser a
  reviewed parser of hostile input.
- **Encoded inputs.** The graph takes encoded ids and scaled dense values; ``processing.json`` and
  ``schema.json`` (copied, checksummed) say how raw values become them (0 padding, 1 OOV, 2.. the
  vocabulary). :meth:`LoadedExport.run` checks names, dtypes, shapes, the domain and every id against the
  vocabulary sizes, and names the input and the value it refuses.
- The ONNX opset is the exporter's default for the installed torch (recorded in the manifest); weights
  above ONNX's 2 GB limit go to an external data file next to ``model.onnx``, listed and checksummed like
  the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.schema import OOV_INDEX, PAD_INDEX, DatasetSchema
from ..safeio import ArtifactError, read_json, sha256_file, verify_files, write_json
from .inference import BATCH, InferenceModule, UserTowerModule, export_program, predict_mixed

EXPORT_FORMAT = "polyrec-export"
EXPORT_VERSION = 1
#: The artifact formats of :func:`export_run`, with the model file each writes.
FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
#: Files of the run directory copied into a ranking export.
COPIED = ("config.json", "schema.json", "processing.json")
#: Largest accepted |exported − eager| of a probe logit, relative to max(1, |logit|) (float32 rounding of a
#: different kernel order is ~1e-6; a wrong graph is off by far more).
PARITY_TOLERANCE = 1e-4
#: Rows of the probe batch of each domain.
PROBE_ROWS = 5
#: Registered ranking models that cannot be exported, each with the precise reason; :func:`export_run`
#: refuses them with it. Empty: every registered ranking model exports (``tests/serving/test_export.py``
#: holds every model, new ones included, to "exports or is listed here").
NOT_EXPORTABLE: dict[str, str] = {}


class ExportError(ValueError):
    """An export could not be made, or did not reproduce the model; nothing was written."""


# ------------------------------------------------------------------------------------------- helpers


def _self_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    from .. import __version__

    out = {"polyrec": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


def _require(module: str, why: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(
            f"{why} needs the package {module!r}, which is not installed; install polyrec's export extra: "
            "pip install 'polyrec[export]'"
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the ONNX exporter's progress lines and torchvision notices out of the user's terminal."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
            # The batch dimension is one Dim shared by every input; the exporter notes that it names it once.
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*|copyreg")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"export folder {str(out)!r} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise FileExistsError(
            f"{str(out)!r} holds files that are not a polyrec export; it was left untouched. Choose another "
            "--out, or an empty folder"
        )


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out``, renamed to ``out`` when the block succeeds (a previous export
    there is replaced only then), removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.iterdir():  # on disk before the rename makes them visible
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "manifest.json"}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = {**manifest, "files": _files(folder)}
    manifest["manifest_sha256"] = _self_hash(manifest)
    write_json(folder / "manifest.json", manifest)
    return manifest


def _probe(module: InferenceModule, domain: int, rows: int, seed: int) -> tuple[Tensor, ...]:
    """Random valid encoded inputs of ``rows`` rows of ``domain`` (ids within each vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    schema = module.schema
    vocab = {f.name: f.vocab_size for f in schema.features}
    out = []
    for spec in module.specs:
        if spec.name == "domain":
            out.append(torch.full((rows,), domain, dtype=torch.long))
        elif spec.dtype == "float32":
            out.append(torch.rand(rows, spec.shape[1], generator=g))
        elif spec.name == "sparse":
            out.append(torch.stack([torch.randint(0, vocab[f], (rows,), generator=g) for f in spec.features], 1))
        else:
            out.append(torch.randint(0, vocab[spec.features[0]], (rows, spec.shape[1]), generator=g))
    return tuple(out)


def _parity(module: InferenceModule, reference: Any, exported: Any, num_domains: int) -> dict[str, Any]:
    """Run ``exported`` (inputs tuple -> logits array) on a probe batch of every domain (and a single row) and
    compare with ``reference`` (inputs tuple -> logits tensor); raise ExportError beyond the tolerance."""
    worst, checked = 0.0, 0
    for d in range(num_domains):
        for rows in (PROBE_ROWS, 1):
            inputs = _probe(module, d, rows, seed=1000 * d + rows)
            with torch.no_grad():
                ref = reference(inputs).detach().cpu().numpy().astype(np.float64)
            got = np.asarray(exported(inputs), dtype=np.float64).reshape(-1)
            diff = np.abs(got - ref)
            bad = ~(diff <= PARITY_TOLERANCE * np.maximum(1.0, np.abs(ref)))  # NaN counts as bad
            if bad.any():
                raise ExportError(
                    f"the exported graph does not reproduce the model on domain {d}: logit {got[bad][0]!r} "
                    f"where the model gives {ref[bad][0]!r} (tolerance {PARITY_TOLERANCE} relative); nothing "
                    "was written. Export with fold=False, or report the model"
                )
            worst = max(worst, float(diff.max()))
            checked += rows
    return {"max_abs_diff": worst, "rows": checked, "domains": num_domains, "tolerance": PARITY_TOLERANCE}


def _reference(model: torch.nn.Module, module: InferenceModule):
    """The trained model's eval-mode logits on an inputs tuple (what the export must reproduce)."""

    def run(inputs: tuple[Tensor, ...]) -> Tensor:
        was = model.training
        model.eval()
        try:
            return model(module._batch(inputs)).logits
        finally:
            model.train(was)

    return run


def _write_onnx(module: InferenceModule | UserTowerModule, path: Path, output: str = "logits") -> dict[str, Any]:
    _require("onnx", "an ONNX export")
    _require("onnxscript", "an ONNX export")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                module.example_inputs(),
                dynamo=True,
                dynamic_shapes=module.dynamic_shapes(),
                input_names=module.input_names,
                output_names=[output],
            )
        program.save(str(path))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed for model {module.model_name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was written"
        ) from exc
    opsets = {op.domain or "ai.onnx": op.version for op in program.model_proto.opset_import}
    return {"kind": "onnx", "file": path.name, "opset": opsets}


def _onnx_runner(path: Path, names: list[str]):
    ort = _require("onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As many threads as torch uses in this process (a server sets 1): ONNX Runtime's default pool takes
    # every core and spins, which doubled a one-core server's CPU time in benchmarks/serving.py.
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: tuple[Tensor, ...] | Mapping[str, Any]) -> np.ndarray:
        feed = inputs if isinstance(inputs, Mapping) else dict(zip(names, inputs))
        feed = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else v) for k, v in feed.items()}
        return session.run(None, feed)[0]

    return run


def _write_pt2(module: InferenceModule, path: Path) -> dict[str, Any]:
    try:
        program = export_program(module)
    except Exception as exc:
        raise ExportError(
            f"torch.export failed for model {module.model_name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was written"
        ) from exc
    program.example_inputs = None  # torch pickles the sample inputs: an archive without them has no pickle
    torch.export.save(program, str(path))
    check_pt2_archive(path)  # what load_export will require of it
    return {
        "kind": "pt2",
        "file": path.name,
        "loading": "torch.export.load; no pickled parts (checked); load only your own .pt2 files, share ONNX",
    }


def _pt2_runner(path: Path, names: list[str]):
    check_pt2_archive(path)
    program = torch.export.load(str(path)).module()

    def run(inputs: tuple[Tensor, ...] | Mapping[str, Any]) -> np.ndarray:
        if isinstance(inputs, Mapping):
            inputs = tuple(inputs[n] for n in names)
        tensors = tuple(torch.as_tensor(v) for v in inputs)
        with torch.no_grad():
            return program(*tensors).detach().cpu().numpy()

    return run


#: Entries a polyrec .pt2 archive may hold (path after the archive's root folder): everything else would be
#: unpickled or loaded as compiled code by torch.export.load, or is unknown.
_PT2_PLAIN = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")


def check_pt2_archive(path: str | Path) -> None:
    """Raise :class:`~polyrec.safeio.ArtifactError` unless the .pt2 archive ``path`` holds only parts that
    ``torch.export.load`` reads without unpickling: the JSON graph and configs, raw tensor payloads (none
    marked ``use_pickle``), empty sample inputs. Compiled code (AOTInductor), custom and opaque objects,
    pickled tensors, older archive layouts and unknown entries are refused, naming the entry."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{str(path)!r} is not a .pt2 archive ({exc})") from None
    with archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise ArtifactError(f"{str(path)!r} is not a .pt2 archive of one exported program (entries {names[:5]})")
        for name in names:
            info = archive.getinfo(name)
            rest = name.split("/", 1)[1]
            if info.is_dir() or rest in _PT2_PLAIN or rest.startswith("extra/"):
                continue
            if rest.startswith("models/") and rest.endswith(".json") and rest.count("/") == 1:
                continue
            if rest.startswith("data/sample_inputs/") and info.file_size == 0:
                continue
            if rest.startswith("data/weights/weight_") or rest.startswith("data/constants/tensor_"):
                continue
            if rest.startswith(("data/weights/", "data/constants/")) and rest.endswith("_config.json"):
                config = json.loads(archive.read(name)).get("config", {})
                for fqn, payload in config.items():
                    pname = str(payload.get("path_name", ""))
                    if payload.get("use_pickle") or not pname.startswith(("weight_", "tensor_")):
                        raise ArtifactError(
                            f"{str(path)!r} holds {fqn!r} as {pname!r}, which torch.export.load would unpickle; "
                            "polyrec does not open such archives (export again with polyrec, or use ONNX)"
                        )
                continue
            raise ArtifactError(
                f"{str(path)!r} holds {rest!r}, which torch.export.load would unpickle or load as code (or "
                "which polyrec does not know); polyrec does not open such archives (export again with "
                "polyrec, or use ONNX)"
            )


# ------------------------------------------------------------------------------------------- ranking runs


def _features(schema: DatasetSchema, module: InferenceModule) -> dict[str, Any]:
    multi_inputs = {s.features[0]: s.name for s in module.specs if s.name.startswith("multi_")}
    return {
        "order": [f.name for f in schema.features],
        "sparse": [{"name": f.name, "vocab_size": f.vocab_size} for f in schema.sparse],
        "dense": [f.name for f in schema.dense],
        "multi": [
            {"name": f.name, "vocab_size": f.vocab_size, "max_len": f.max_len, "input": multi_inputs[f.name]}
            for f in schema.multi
        ],
        "padding_index": PAD_INDEX,
        "oov_index": OOV_INDEX,
        "domain_feature": schema.domain_feature,
    }


def export_run(run_dir: str | Path, out_dir: str | Path, format: str = "onnx", fold: bool = True) -> Path:
    """Export the trained model of ranking run ``run_dir`` into ``out_dir``; returns ``out_dir``.

    Args:
        run_dir: a finished ranking run directory (``polyrec train --out``).
        out_dir: the export folder: absent, empty or a previous polyrec export (replaced atomically).
        format: ``onnx`` (``model.onnx``, ``torch.onnx.export(..., dynamo=True)``; needs the ``export``
            extra) or ``pt2`` (``model.pt2``, ``torch.export.save``; load only your own, see the module
            docstring).
        fold: fold per-domain parameters (STAR, MLoRA, MAMDR, DFEI; :mod:`polyrec.serving.inference`).

    Raises:
        ValueError: an unknown ``format``.
        FileExistsError: ``out_dir`` holds files that are not a polyrec export.
        ArtifactError: ``run_dir`` is not a finished run, or a file of it fails its checksum.
        ExportError: the model cannot be exported, or the exported graph does not reproduce it.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not allowed; must be one of {', '.join(FORMATS)}")
    from ..experiment import load_run
    from ..retrieval.experiment import is_retrieval_run
    from ..rundir import read_manifest

    run_dir, out = Path(run_dir), Path(out_dir)
    if is_retrieval_run(run_dir):
        raise ValueError(f"{str(run_dir)!r} is a retrieval run; export it with export_retrieval_run")
    _check_out_dir(out)
    run_manifest = read_manifest(run_dir)
    cfg, model = load_run(run_dir)
    if cfg.model_name in NOT_EXPORTABLE:
        raise ExportError(f"model {cfg.model_name!r} cannot be exported: {NOT_EXPORTABLE[cfg.model_name]}")
    model.eval()
    if format == "onnx":
        _require("onnxruntime", "checking an ONNX export")
    module = InferenceModule(model, fold=fold)
    schema, config = module.schema, cfg.to_dict()
    with _staging(out) as tmp:
        path = tmp / FORMATS[format]
        artifact = _write_onnx(module, path) if format == "onnx" else _write_pt2(module, path)
        runner = _onnx_runner if format == "onnx" else _pt2_runner
        parity = _parity(module, _reference(model, module), runner(path, module.input_names), schema.num_domains)
        for name in COPIED:
            shutil.copyfile(run_dir / name, tmp / name)
        _write_manifest(
            tmp,
            {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "kind": "ranking",
                "artifact": artifact,
                "inputs": [s.to_dict() for s in module.specs],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [BATCH], "meaning": "one logit per row"}],
                "one_domain_per_call": True,
                "features": _features(schema, module),
                "domains": {"name": schema.domain.name, "values": list(schema.domain.values)},
                "model": {
                    "name": cfg.display_name,
                    "backbone": cfg.model_name,
                    "config": config["model"],
                    "adapter": config.get("adapter", {"kind": "none"}),
                    "strategy": cfg.train.strategy,
                    "folded": module.folded,
                },
                "encoding": {"config": "config.json", "schema": "schema.json", "processing": "processing.json"},
                "source_run": {
                    "path": str(run_dir),
                    "config_hash": run_manifest.get("config_hash"),
                    "manifest_sha256": run_manifest.get("manifest_sha256"),
                },
                "parity": parity,
                "versions": _versions(),
            },
        )
    return out


# ------------------------------------------------------------------------------------------- retrieval runs

#: Files of a retrieval run directory copied into its export.
RETRIEVAL_COPIED = ("config.json", "schema.json")


def _user_probe(module: UserTowerModule, domain: int, rows: int, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    schema = module.model.schema
    sparse = torch.stack([torch.randint(0, size, (rows,), generator=g) for _, size in schema.user_fields], 1)
    history = torch.randint(0, schema.num_items + 1, (rows, schema.history_len), generator=g)
    return sparse, history, torch.full((rows,), domain, dtype=torch.long)


def export_retrieval_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Export a two-tower retrieval run: its user tower as ONNX and every domain's item embeddings.

    Writes into ``out_dir`` (absent, empty or a previous export; replaced atomically):

    - ``user_tower.onnx``: inputs ``user_sparse`` ``[B, F_u]``, ``history`` ``[B, L]`` (``item + 1``, 0
      padding), ``domain`` ``[B]`` (one domain per call, as the ranking exports), output ``user_embedding``
      ``[B, O]``; checked against the model on a probe batch of every domain before anything is written;
    - ``item_embeddings.safetensors``: for domain index d, ``domain_<d>.items`` ``[N_d]`` (the item indices of
      its corpus) and ``domain_<d>.embeddings`` ``[N_d, O]`` (each embedded for d); a user's scores in d
      are ``embeddings @ user_embedding``;
    - ``items.json``: the item title of every item index (what the scores rank);
    - ``config.json`` and ``schema.json`` of the run; ``manifest.json`` with the sha256 of every file.

    The item embeddings need the run's data (:func:`polyrec.retrieval.experiment.load_data`, checked against
    the run's fingerprint). The popularity baseline has no towers and is refused.
    """
    from ..retrieval.experiment import check_data, load_data, load_run
    from ..retrieval.trainer import embed_items
    from ..safeio import save_tensors

    run_dir, out = Path(run_dir), Path(out_dir)
    _check_out_dir(out)
    model, cfg, _ = load_run(run_dir)  # every file checked against the run's manifest
    if model is None:
        raise ValueError(f"{str(run_dir)!r} is the popularity baseline, which has no towers to export")
    _require("onnxruntime", "checking an ONNX export")
    data = load_data(cfg)
    check_data(run_dir, data)
    module = UserTowerModule(model)
    schema = model.schema
    with _staging(out) as tmp:
        path = tmp / "user_tower.onnx"
        artifact = _write_onnx(module, path, output="user_embedding")
        run = _onnx_runner(path, module.input_names)
        worst = 0.0
        for d in range(schema.num_domains):
            for rows in (PROBE_ROWS, 1):
                inputs = _user_probe(module, d, rows, seed=1000 * d + rows)
                with torch.no_grad():
                    ref = model.user_embedding(module._inputs(*inputs)).numpy().astype(np.float64)
                diff = np.abs(np.asarray(run(inputs), dtype=np.float64) - ref)
                if not (diff <= PARITY_TOLERANCE * np.maximum(1.0, np.abs(ref))).all():
                    raise ExportError(
                        f"the exported user tower does not reproduce the model on domain {d} (largest difference "
                        f"{float(np.nanmax(diff)) if np.isfinite(diff).any() else float('nan')}); nothing was written"
                    )
                worst = max(worst, float(diff.max()))
        tensors, corpora = {}, []
        with torch.no_grad():
            for d, name in enumerate(schema.domains):
                items = data.corpus[d]
                tensors[f"domain_{d}.items"] = items.to(torch.long)
                tensors[f"domain_{d}.embeddings"] = embed_items(model, data, items, d)
                corpora.append({"index": d, "name": name, "items": len(items)})
        save_tensors(tmp / "item_embeddings.safetensors", tensors)
        write_json(tmp / "items.json", {"items": list(data.items)})
        for name in RETRIEVAL_COPIED:
            shutil.copyfile(run_dir / name, tmp / name)
        _write_manifest(
            tmp,
            {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "kind": "retrieval",
                "artifact": artifact,
                "inputs": [s.to_dict() for s in module.specs],
                "outputs": [{"name": "user_embedding", "dtype": "float32", "shape": [BATCH, model.config.output_dim]}],
                "one_domain_per_call": True,
                "domains": {"values": list(schema.domains), "corpora": corpora},
                "history": {"length": schema.history_len, "encoding": "item index + 1, 0 padding, most recent first"},
                "item_embeddings": {
                    "file": "item_embeddings.safetensors",
                    "keys": "domain_<d>.items [N_d] int64, domain_<d>.embeddings [N_d, O] float32",
                    "normalized": bool(model.config.normalize),
                },
                "model": {"name": cfg.model, "config": cfg.to_dict()["model"]},
                "source_run": {"path": str(run_dir), "config_hash": cfg.hash()},
                "parity": {"max_abs_diff": worst, "tolerance": PARITY_TOLERANCE},
                "versions": _versions(),
            },
        )
    return out


@dataclass
class LoadedRetrievalExport:
    """A retrieval export opened by :func:`load_retrieval_export` (every file checked against its manifest).

    Attributes:
        folder: the export folder.
        manifest: ``manifest.json``.
        domains: the domain names, in index order.
        items: the item title of every item index.
    """

    folder: Path
    manifest: dict[str, Any]
    domains: list[str]
    items: list[str]
    _runner: Any = field(repr=False)
    _tensors: dict[str, Tensor] = field(repr=False)

    def user_embedding(self, user_sparse: Any, history: Any, domain: Any) -> np.ndarray:
        """``[B, O]`` user embeddings of one domain's users (rows of another domain come back NaN)."""
        feed = {"user_sparse": user_sparse, "history": history, "domain": domain}
        feed = {
            k: np.asarray(v.detach().cpu().numpy() if isinstance(v, Tensor) else v, dtype=np.int64)
            for k, v in feed.items()
        }
        d, n = feed["domain"], len(self.domains)
        if d.size and (d.min() < 0 or d.max() >= n):
            bad = int(d.min() if d.min() < 0 else d.max())
            raise ValueError(f"domain index {bad} is outside the export's domains 0..{n - 1} {self.domains}")
        return self._runner(feed)

    def item_embeddings(self, domain: int | str) -> tuple[np.ndarray, np.ndarray]:
        """``(item indices [N_d], embeddings [N_d, O])`` of ``domain``'s corpus (an index or a name)."""
        d = self.domains.index(domain) if isinstance(domain, str) and domain in self.domains else domain
        if not isinstance(d, int) or not 0 <= d < len(self.domains):
            raise ValueError(
                f"domain {domain!r} is not one of the export's domains {self.domains} (or 0..{len(self.domains) - 1})"
            )
        return self._tensors[f"domain_{d}.items"].numpy(), self._tensors[f"domain_{d}.embeddings"].numpy()


def load_retrieval_export(folder: str | Path) -> LoadedRetrievalExport:
    """Open a retrieval export made by :func:`export_retrieval_run` (manifest and every file checked first)."""
    from ..safeio import load_tensors

    folder = Path(folder)
    manifest = _read_export_manifest(folder)
    if manifest.get("kind") != "retrieval":
        raise ArtifactError(
            f"export {str(folder)!r} is a {manifest.get('kind')!r} export; load_retrieval_export opens retrieval exports"
        )
    names = [s["name"] for s in manifest["inputs"]]
    runner = _onnx_runner(folder / manifest["artifact"]["file"], names)
    tensors, _ = load_tensors(folder / manifest["item_embeddings"]["file"], "export item embeddings")
    items = read_json(folder / "items.json", "export items")["items"]
    return LoadedRetrievalExport(folder, manifest, list(manifest["domains"]["values"]), items, runner, tensors)


# ------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedExport:
    """An export folder opened by :func:`load_export` (every file checked against its manifest).

    Attributes:
        folder: the export folder.
        manifest: ``manifest.json``.
        input_names: the graph's inputs, in call order.
        domains: the domain names, in index order (the ``domain`` input's values).
    """

    folder: Path
    manifest: dict[str, Any]
    input_names: list[str]
    domains: list[str]
    _runner: Any = field(repr=False)

    @property
    def schema(self) -> DatasetSchema:
        """The run's schema (``schema.json``): features, vocabulary sizes, domains."""
        return DatasetSchema.from_dict(read_json(self.folder / "schema.json", "export schema"))

    @property
    def processing(self):
        """The fitted vocabularies and scalers (``processing.json``), to encode raw rows."""
        from ..data.processing import FittedProcessing

        return FittedProcessing.from_dict(read_json(self.folder / "processing.json", "export processing"))

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``inputs`` as the graph's feed (numpy, the declared dtypes), after checking names, shapes, the domain
        and every id against its vocabulary; a ValueError or KeyError names the input and the value."""
        specs = {s["name"]: s for s in self.manifest["inputs"]}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise KeyError(f"unknown input(s) {unknown}; the export's inputs are {self.input_names}")
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; the export's inputs are {self.input_names}")
        features = self.manifest["features"]
        vocab = {f["name"]: f["vocab_size"] for f in features["sparse"] + features["multi"]}
        feed, rows = {}, None
        for name in self.input_names:
            spec, value = specs[name], inputs[name]
            array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            if array.dtype.kind not in ("i", "u", "f") or (spec["dtype"] == "int64" and array.dtype.kind == "f"):
                raise ValueError(f"input {name!r} has dtype {array.dtype}; it must be {spec['dtype']}")
            array = array.astype(spec["dtype"], copy=False)
            want = [None if d == BATCH else d for d in spec["shape"]]
            if array.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, array.shape)):
                raise ValueError(f"input {name!r} has shape {list(array.shape)}; it must be {spec['shape']}")
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise ValueError(f"input {name!r} has {array.shape[0]} rows; {self.input_names[0]!r} has {rows}")
            if name == "domain" and array.size and (array.min() < 0 or array.max() >= len(self.domains)):
                bad = int(array.min() if array.min() < 0 else array.max())
                raise ValueError(
                    f"input 'domain' has index {bad}; the export's domains are 0..{len(self.domains) - 1} {self.domains}"
                )
            if name != "domain" and spec["dtype"] == "int64" and array.size:
                columns = spec["features"] if name == "sparse" else spec["features"] * array.shape[1]
                for feature, column in zip(columns, array.T):
                    low, high = int(column.min()), int(column.max())
                    if low < 0 or high >= vocab[feature]:
                        raise ValueError(
                            f"input {name!r}: feature {feature!r} has id {low if low < 0 else high}, outside its "
                            f"vocabulary 0..{vocab[feature] - 1} (encode raw values with processing.json; unknown "
                            f"ones are {OOV_INDEX})"
                        )
            feed[name] = array
        return feed

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """``[B]`` float32 logits of a batch of ONE domain (``{input name: array}``; rows of another domain than
        the first row's come back NaN: use :meth:`predict` for a mixed batch)."""
        return np.asarray(self._runner(self.check_inputs(inputs)), dtype=np.float32)

    def predict(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """``[B]`` float32 logits of a batch of any mix of domains (one :meth:`run` per domain present)."""
        feed = self.check_inputs(inputs)
        return predict_mixed(lambda f: self._runner(f), feed)


def _read_export_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ArtifactError(f"export folder {str(folder)!r} does not exist")
    manifest = read_json(folder / "manifest.json", "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ArtifactError(f"{str(folder / 'manifest.json')!r} is not a polyrec export manifest")
    if manifest.get("manifest_sha256") != _self_hash(manifest):
        raise ArtifactError(
            f"export manifest {str(folder / 'manifest.json')!r} was changed after it was written (its own sha256 "
            "does not match); export the run again"
        )
    if manifest.get("version") != EXPORT_VERSION:
        raise ArtifactError(
            f"export {str(folder)!r} has format version {manifest.get('version')!r}; this polyrec reads version "
            f"{EXPORT_VERSION}"
        )
    verify_files(folder, manifest.get("files"), "export file")
    return manifest


def load_export(folder: str | Path) -> LoadedExport:
    """Open a ranking export made by :func:`export_run`: the manifest's own hash and every file's sha256 are
    checked first (a missing, changed or unexpected file is an :class:`~polyrec.safeio.ArtifactError`); a
    ``.pt2`` archive is also scanned for parts that would be unpickled (:func:`check_pt2_archive`)."""
    folder = Path(folder)
    manifest = _read_export_manifest(folder)
    if manifest.get("kind") != "ranking":
        raise ArtifactError(
            f"export {str(folder)!r} is a {manifest.get('kind')!r} export; load_export opens ranking exports"
        )
    artifact = manifest["artifact"]
    names = [s["name"] for s in manifest["inputs"]]
    path = folder / artifact["file"]
    if artifact["kind"] == "onnx":
        runner = _onnx_runner(path, names)
    elif artifact["kind"] == "pt2":
        runner = _pt2_runner(path, names)
    else:
        raise ArtifactError(f"export {str(folder)!r} has an unknown artifact kind {artifact['kind']!r}")
    return LoadedExport(folder, manifest, names, list(manifest["domains"]["values"]), runner)


__all__ = [
    "COPIED",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FORMATS",
    "NOT_EXPORTABLE",
    "PARITY_TOLERANCE",
    "ExportError",
    "LoadedExport",
    "LoadedRetrievalExport",
    "check_pt2_archive",
    "export_retrieval_run",
    "export_run",
    "load_export",
    "load_retrieval_export",
]
