"""Scoring raw feature values with a trained run: the ranking :class:`Predictor` and the :class:`RetrievalPredictor`.

A caller of a trained model holds rows as its own source data has them (MovieLens: ``user_id "1"``,
``item_id "1193"``, ``gender "F"``, dense numbers), not the encoded indices a model reads. The
:class:`Predictor` turns such rows into a :class:`~polyrec.data.batch.Batch` exactly as training encoded the
run's data and scores it.

Choices made:

- **Loading.** :meth:`Predictor.from_run` reads a finished ranking run directory through
  :func:`polyrec.experiment.load_run` (every file is checked against the run's manifest, sha256, before it
  is read; only JSON and safetensors are read, nothing is unpickled). ``processing.json`` (the vocabularies
  and scalers fitted on the training split) is read once as bytes, checked against the manifest's sha256,
  and parsed from those bytes, so what is used is what was checked. A run whose processing does not give
  the run's schema (another feature list, another vocabulary size) is refused when it is loaded.
- **Encoding is training's.** The features are encoded with the run's
  :class:`~polyrec.data.processing.FittedProcessing`: the same id strings (``1``, ``"1"`` and ``1.0`` are
  one id), the same vocabulary lookup, the same scaling, the same multi-valued padding and truncation. A
  DataFrame goes through :func:`polyrec.data.dataset.encode_rows`, as training's frames do; rows given as
  dicts (the server's case) are encoded value by value against a lookup table built once per vocabulary
  when the predictor is made, and :meth:`Predictor.rank` checks and encodes the user's and the context's
  values once per request, not once per candidate (a test holds the two paths to the same batches).
  An id the vocabulary does not hold (unseen in training, or rarer than ``min_count``) maps to the counted
  OOV bucket, and :attr:`PredictResult.oov` reports, per sparse and multi-valued feature, how many rows had
  one (every such feature is listed, 0 included), as training's ``report["oov"]`` counts them. The domain
  indicator feature (``data.domain.as_feature``) is the domain's index + 2, as training builds it; for a
  domain added to an MLoRA run (:func:`polyrec.experiment.add_domain_run`) it is the backbone domain the
  new one is computed with, as :func:`~polyrec.data.dataset.new_domain_dataset` does.
- **Input columns.** A row is keyed by the *raw* column names of the data config (a feature's ``column``,
  default its name), since those are the names of the caller's source data: :attr:`Predictor.input_columns`
  lists them. A row may also hold the domain column (``data.domain.column``). A missing column, or a key
  that is neither, is an :class:`InputError` naming it. A column that a feature reads is required even
  when it is the domain column.
- **Value types** (rows given as dicts). A sparse value is a string, an integer or a finite float (an
  integral float is the integer's id, as training reads ids); a multi-valued one is a ``sep``-joined string
  (as in the source) or a list of strings and integers (joined with the feature's ``sep``; an element that
  holds the separator is refused, it would become two ids); a dense one is an integer or a finite float.
  ``None``, booleans, NaN and infinities are refused, naming the row and the column: an unknown id is better
  sent as itself (it maps to the OOV bucket and is counted) than as a null whose id form would be guessed.
  A :class:`pandas.DataFrame` is encoded as training encodes a source frame, dtypes included, after the
  same column checks.
- **Domains.** A row's domain column holds the raw value (``gender "F"``, an age ``25`` that
  ``data.domain.groups`` puts in a group), mapped by the run's domain rule exactly as training maps it; the
  call's ``domain`` is a domain *name* (one of :attr:`Predictor.domains`) for the rows that carry none. A row
  whose own domain disagrees with the call's is an error. An unknown domain is an error, unless the
  predictor was loaded with ``fallback_domain``: those rows are scored as that domain, and
  :attr:`PredictResult.fallback` counts them (the server counts them too).
- **Backends.** A :class:`Backend` turns an encoded batch into logits. ``eager`` runs the run's torch
  model in eval mode under ``torch.no_grad`` through :func:`polyrec.training.scoring.score_rows`, the same
  loop :func:`polyrec.experiment.evaluate_run` scores with, so a predictor's logits are the evaluation's.
  ``onnx`` scores with ONNX Runtime over an export of the run, made on first use into polyrec's cache
  (:class:`OnnxBackend`).
- **Errors.** Bad input is an :class:`InputError` (a ``ValueError``) with ``field`` (a path such as
  ``rows[3].item_id`` or ``candidates[0].dense_0``), ``message`` (what is wrong, the value, and the fix)
  and ``kind`` (``missing_feature``, ``extra_feature``, ``wrong_type``, ``unknown_domain``, ...), which the
  server returns as a 4xx answer. A damaged or foreign run directory is an
  :class:`~polyrec.safeio.ArtifactError`.
- **Retrieval runs** are served by :class:`RetrievalPredictor` (:func:`load_predictor` picks the class):
  the run's model, its data (rebuilt from the source and checked against the run's fingerprint) and each
  domain's item embeddings, computed once when the run is loaded; a query is the user's features and most
  recent positives (:func:`polyrec.retrieval.experiment.serving_user`) scored against the whole corpus of
  the domain exactly (one matrix product, no approximate index).

Example:
    >>> p = Predictor.from_run("runs/mlp")                                     # doctest: +SKIP
    >>> r = p.predict([{"user_id": "1", "item_id": "1193", "gender": "F"}])   # doctest: +SKIP
    >>> r.probabilities, r.oov                                                 # doctest: +SKIP
    (array([0.31], dtype=float32), {'user_id': 0, 'item_id': 0})
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..data.batch import Batch
from ..data.config import DataConfig, FeatureConfig
from ..data.processing import FittedProcessing, _as_str
from ..data.schema import FIRST_INDEX, OOV_INDEX, PAD_INDEX, DatasetSchema
from ..safeio import ArtifactError

__all__ = [
    "BACKENDS",
    "Backend",
    "EagerBackend",
    "EncodedRows",
    "InputError",
    "OnnxBackend",
    "PredictResult",
    "Predictor",
    "RetrievalPredictor",
    "RetrievedItem",
    "is_export",
    "load_predictor",
    "make_backend",
]

#: The backends a predictor runs its model with.
BACKENDS = ("eager", "onnx")


class InputError(ValueError):
    """Rows or a request that cannot be scored: ``field`` names where (``rows[3].item_id``), ``message`` what
    is wrong and how to fix it, ``kind`` the class of error (for counting)."""

    def __init__(self, field: str | None, message: str, kind: str = "invalid_input") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.kind = kind


# ----------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """What a predictor scores an encoded batch with."""

    name: str

    def logits(self, batch: Batch) -> Tensor:
        """Logits ``[B]`` (float32, CPU) of ``batch``'s rows, in their order."""
        ...


class _BatchRows:
    """A batch seen as a data set (``batch(index)``), so that :func:`score_rows` can run over it."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch

    def batch(self, index: Tensor) -> Batch:
        return self._batch.select(index)


class EagerBackend:
    """The run's torch model in eval mode under ``torch.no_grad``, ``batch_size`` rows per forward pass.

    Scoring goes through :func:`polyrec.training.scoring.score_rows`, the loop evaluation uses."""

    name = "eager"

    def __init__(self, model: nn.Module, batch_size: int = 32768) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.batch_size = int(batch_size)

    def logits(self, batch: Batch) -> Tensor:
        from ..training.scoring import score_rows

        rows = torch.arange(len(batch))
        with torch.inference_mode():  # the kernels of no_grad, without autograd's version counting
            return score_rows(self.model, _BatchRows(batch), rows, self.batch_size).logits


class ExportBackend:
    """ONNX Runtime (or the exported program) over an opened export (:func:`polyrec.serving.export.load_export`);
    a batch of several domains is split by domain (the exported graph serves one domain per call)."""

    name = "onnx"

    def __init__(self, export: Any) -> None:
        from .inference import input_specs

        self.export = export
        self.specs = input_specs(export.schema)

    def logits(self, batch: Batch) -> Tensor:
        from .inference import batch_inputs

        feed = {s.name: t.numpy() for s, t in zip(self.specs, batch_inputs(self.specs, batch))}
        return torch.from_numpy(np.asarray(self.export.predict(feed), dtype=np.float32))


class OnnxBackend(ExportBackend):
    """ONNX Runtime over an export of the run (:func:`polyrec.serving.export.export_run`).

    The export is made on first use into polyrec's cache folder, under the sha256 of the run's manifest
    (``<cache>/exports/<sha256>/onnx``), so a retrained run gets a fresh one and the run directory is never
    written to; an export there is checked (checksums, the source run's manifest) before it is used.
    """

    def __init__(self, model: nn.Module, run_dir: Path, batch_size: int = 32768) -> None:
        from ..data.cache import cache_dir
        from ..rundir import read_manifest
        from .export import export_run, load_export

        sha = read_manifest(run_dir).get("manifest_sha256")
        if not sha:
            raise ValueError(f"run {str(run_dir)!r} has no manifest checksum; retrain it with this polyrec")
        where = Path(cache_dir()) / "exports" / str(sha) / "onnx"
        export = None
        if (where / "manifest.json").exists():
            export = load_export(where)
            if export.manifest.get("source_run", {}).get("manifest_sha256") != sha:
                export = None
        if export is None:
            export_run(run_dir, where, "onnx")
            export = load_export(where)
        super().__init__(export)


def make_backend(name: str, model: nn.Module, run_dir: Path, batch_size: int = 32768) -> Backend:
    """The backend ``name`` for ``model`` (loaded from ``run_dir``): ``eager`` or ``onnx``.

    Raises:
        ValueError: an unknown name.
    """
    if name == "eager":
        return EagerBackend(model, batch_size)
    if name == "onnx":
        return OnnxBackend(model, run_dir, batch_size)
    raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PredictResult:
    """Scores of some rows, in their order.

    Args:
        logits: the model's logits ``[N]`` (float32).
        probabilities: ``sigmoid(logits)`` ``[N]`` (float32).
        oov: per sparse and multi-valued feature, the number of rows with an id mapped to the OOV bucket.
        domain: the domain name each row was scored as (the fallback domain for a row whose domain is
            unknown).
        fallback: how many rows were scored as the fallback domain.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    oov: dict[str, int]
    domain: tuple[str, ...]
    fallback: int = 0

    def __len__(self) -> int:
        return len(self.logits)


@dataclass(frozen=True)
class EncodedRows:
    """Rows encoded for the model (:meth:`Predictor.encode`): the batch, OOV rows per feature, each row's
    domain name and the rows that took the fallback domain."""

    batch: Batch
    oov: dict[str, int]
    domain: tuple[str, ...]
    fallback: int


# ----------------------------------------------------------------------------------------------- values

#: A row without the domain column (its value there is not ``None``, which is refused as a value).
_ABSENT: Any = object()

#: Where a row's value sits, for error messages: (row position, column) -> a field path.
Locate = Callable[[int, str], str]


def _rows_path(i: int, key: str) -> str:
    return f"rows[{i}].{key}"


def _describe(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A value for a message: ``null``, or its type and repr (``str 'a'``)."""
    return "null" if value is None else f"{type(value).__name__} {_describe(value)}"


def _check_id(value: Any, where: str, what: str) -> Any:
    """``value`` if it can be an id (str, int, finite float), else an InputError."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(
            where,
            f"{what} must be a string or a number (an id as in the source data), got {_shown(value)}",
            "wrong_type",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(where, f"{what} must be a finite number or a string, got {value!r}", "wrong_type")
    if isinstance(value, str):
        _check_text(value, where, what)
    return value


def _check_text(value: str, where: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            where,
            f"{what} holds a lone surrogate ({_describe(value)}), which is not text; send valid Unicode",
            "wrong_type",
        ) from None


def _id_strings(values: list[Any]) -> list[str]:
    """Ids as training writes them (:func:`polyrec.data.processing._as_str`): a string as itself, an int as
    its decimal digits, a float as an int when integral, else as numpy writes it."""
    out: list[str | None] = [None] * len(values)
    floats: list[int] = []
    for j, v in enumerate(values):
        if isinstance(v, str):
            out[j] = v
        elif isinstance(v, int):
            out[j] = str(v)
        else:
            floats.append(j)
    if floats:
        text = _as_str(pd.Series([float(values[j]) for j in floats], dtype=np.float64)).tolist()
        for j, t in zip(floats, text):
            out[j] = t
    return out  # type: ignore[return-value]


def _sparse_values(values: list[Any], col: str, locate: Locate) -> list[str]:
    """A sparse column's values checked (:func:`_check_id`) and as training's id strings."""
    for i, v in enumerate(values):
        t = type(v)
        if t is int or (t is str and v.isascii()):  # the common cases: nothing to check further
            continue
        if t is str:
            _check_text(v, locate(i, col), f"column {col!r}")
        else:
            _check_id(v, locate(i, col), f"column {col!r}")
    return _id_strings(values)


def _multi_values(values: list[Any], col: str, sep: str, locate: Locate) -> list[list[str]]:
    """A multi-valued column's values checked and as lists of id strings, empty ids dropped (as
    :func:`polyrec.data.processing.split_multi` drops them from a ``sep``-joined source cell)."""
    out: list[list[str]] = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            _check_text(v, locate(i, col), f"column {col!r}")
            out.append([t for t in v.split(sep) if t])
            continue
        if not isinstance(v, (list, tuple)):
            raise InputError(
                locate(i, col),
                f"multi-valued column {col!r} must be a {sep!r}-joined string or a list of ids, got {_shown(v)}",
                "wrong_type",
            )
        ids = [_check_id(x, f"{locate(i, col)}[{k}]", f"an id of column {col!r}") for k, x in enumerate(v)]
        text = _id_strings(ids)
        for k, t in enumerate(text):
            if sep in t:
                raise InputError(
                    f"{locate(i, col)}[{k}]",
                    f"id {t!r} holds the separator {sep!r} of column {col!r}, so it would be read as "
                    "several ids; give the ids one by one",
                    "wrong_type",
                )
        out.append([t for t in text if t])
    return out


def _dense_array(values: list[Any], col: str, locate: Locate) -> np.ndarray:
    """A dense column's values checked (finite numbers, not booleans) as float64."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if type(v) is float and math.isfinite(v):  # the common case
            out[i] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(
                locate(i, col),
                f"dense column {col!r} must be a number, got {_shown(v)}",
                "wrong_type",
            )
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise InputError(
                locate(i, col), f"dense column {col!r} must be a finite number, got {_describe(v)}", "wrong_type"
            )
        out[i] = x
    return out


# ----------------------------------------------------------------------------------------------- the predictor


def _read_processing(run_dir: Path) -> FittedProcessing:
    """The run's fitted processing, its bytes checked against the manifest's sha256 before they are parsed."""
    from ..safeio import read_json

    manifest = read_json(run_dir / "run.json", "run manifest")
    want = (manifest.get("files") or {}).get("processing.json") if isinstance(manifest, dict) else None
    path = run_dir / "processing.json"
    if not want or not path.is_file():
        raise ArtifactError(f"run {str(run_dir)!r} has no processing.json in its manifest; retrain the run")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != want:
        raise ArtifactError(
            f"run file {str(path)!r} does not match its manifest (sha256): it was changed after the run was "
            "written. Restore it, or retrain the run"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
        if not data:
            raise ArtifactError(
                f"run {str(run_dir)!r} holds no fitted vocabularies or scalers (processing.json is empty), so raw "
                "rows cannot be encoded the way its data was; retrain the run"
            )
        return FittedProcessing.from_dict(data)
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"run file {str(path)!r} is not valid processing ({exc})") from None


class Predictor:
    """A trained ranking run that scores rows of raw feature values; build it with :meth:`from_run`.

    Thread-safe for concurrent :meth:`predict` calls (the model is only read). See the module docstring for
    every rule the encoding follows.
    """

    def __init__(
        self,
        *,
        data: DataConfig,
        schema: DatasetSchema,
        processing: FittedProcessing,
        backend: Backend,
        indicator: Sequence[int] | None = None,
        extra_domain_values: Mapping[str, int] | None = None,
        fallback_domain: str | None = None,
        run_dir: str | Path | None = None,
        model_name: str = "",
    ) -> None:
        self.data = data
        self.schema = schema
        self.processing = processing
        self.backend = backend
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_name = model_name
        self._check_processing()
        features: list[FeatureConfig] = list(data.features)
        self._features = features
        self.input_columns: tuple[str, ...] = tuple(dict.fromkeys(f.source_column for f in features))
        self.domain_column: str = data.domain.column
        self.domains: tuple[str, ...] = tuple(schema.domain.values)
        self._allowed = frozenset(self.input_columns) | {self.domain_column}
        self._kinds: dict[str, set[str]] = {}
        for f in features:
            self._kinds.setdefault(f.source_column, set()).add(f.kind)
        self._seps = {f.source_column: f.sep for f in features if f.kind == "multi"}
        self._oov_features = [f.name for f in features if f.kind in ("sparse", "multi")]
        # Id string -> index, per sparse and multi-valued feature: the vocabulary's lookup, built once (a row
        # given as a dict is encoded value by value; a DataFrame through encode_rows, as training does).
        self._lookups: dict[str, dict[str, int]] = {
            name: {t: i for i, t in enumerate(processing.vocabularies[name].tokens, FIRST_INDEX)}
            for name in self._oov_features
        }
        # Raw domain value (as its id string) -> domain index, as derive_domain maps it.
        self._domain_of = self._domain_mapping(extra_domain_values or {})
        # Domain index -> the value of the domain indicator feature.
        n = len(self.domains)
        ind = list(indicator) if indicator is not None else list(range(n))
        if len(ind) != n:
            raise ArtifactError(f"run schema has {n} domains but the model routes {len(ind)}")
        self._indicator = np.asarray(ind, dtype=np.int64) + FIRST_INDEX
        if fallback_domain is not None and fallback_domain not in self.domains:
            raise ValueError(
                f"fallback_domain {fallback_domain!r} is not a domain of the run; its domains are {list(self.domains)}"
            )
        self.fallback_domain = fallback_domain

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        backend: str = "eager",
        fallback_domain: str | None = None,
        batch_size: int | None = None,
    ) -> Predictor:
        """The predictor of a finished ranking run directory (checked file by file against its manifest).

        Args:
            run_dir: a run written by :func:`~polyrec.experiment.run_experiment` or
                :func:`~polyrec.experiment.add_domain_run`.
            backend: ``eager`` (the torch model) or ``onnx`` (ONNX Runtime over an export, :class:`OnnxBackend`).
            fallback_domain: the domain a row of an unknown domain is scored as (default: such a row is an
                error).
            batch_size: rows per forward pass (default: the run's ``train.eval_batch_size``).

        Raises:
            ArtifactError: the folder is not a finished run, a file is damaged, or it is a retrieval run.
            ValueError: an unknown backend or fallback domain.
        """
        from ..experiment import load_run
        from ..retrieval.experiment import is_retrieval_run
        from ..rundir import read_add_domain_info

        run_dir = Path(run_dir)
        if is_retrieval_run(run_dir):
            raise ArtifactError(
                f"{str(run_dir)!r} is a retrieval run; load it with RetrievalPredictor.from_run (or load_predictor)"
            )
        cfg, model = load_run(run_dir)
        processing = _read_processing(run_dir)
        info = read_add_domain_info(run_dir)
        indicator, extra = None, {}
        if info is not None:
            # Domains added after training are computed as a backbone domain (MLoRAModel.backbone_domain);
            # their raw values come from the added data's domain rule.
            indicator = [int(d) for d in model.backbone_domain.tolist()]
            from ..config import from_dict

            new_data = from_dict(DataConfig, info["data"], path="data")
            name = str(info["domain"])
            index = list(model.schema.domain.values).index(name)
            groups = new_data.domain.groups
            values = [name] if groups is None else list(groups.get(name, []))
            extra = {key: index for key in _as_str(pd.Series(values)).tolist()}
        size = batch_size if batch_size is not None else cfg.train.eval_batch_size
        return cls(
            data=cfg.data,
            schema=model.schema,
            processing=processing,
            backend=make_backend(backend, model, run_dir, size),
            indicator=indicator,
            extra_domain_values=extra,
            fallback_domain=fallback_domain,
            run_dir=run_dir,
            model_name=cfg.display_name,
        )

    @classmethod
    def from_export(
        cls, folder: str | Path, *, fallback_domain: str | None = None, batch_size: int = 32768
    ) -> Predictor:
        """The predictor of an ONNX export (``polyrec export RUN --out DIR``), scored with ONNX Runtime.

        The export carries the run's config, schema and processing (checked against its manifest), so raw
        rows are encoded exactly as for the run. The raw values of a domain added to an MLoRA run after
        training (``polyrec add-domain``) are not in an export: such a domain is reached by its name.

        Raises:
            ArtifactError: the folder is not an export, or a file fails its checksum.
            ValueError: a torch.export (``.pt2``) folder (serve the run, or export it as ONNX), an unknown
                fallback domain.
        """
        from ..config import from_dict
        from ..safeio import read_json
        from .export import load_export

        folder = Path(folder)
        export = load_export(folder)
        if export.manifest.get("artifact", {}).get("kind") != "onnx":
            raise ValueError(f"{str(folder)!r} is a torch.export archive; serve an ONNX export or the run itself")
        config = read_json(folder / "config.json", "export config")
        return cls(
            data=from_dict(DataConfig, config["data"], path="data"),
            schema=export.schema,
            processing=export.processing,
            backend=ExportBackend(export),
            indicator=None,
            extra_domain_values={},
            fallback_domain=fallback_domain,
            run_dir=folder,
            model_name=str(export.manifest.get("model", {}).get("name", "?")),
        )

    def _check_processing(self) -> None:
        """The fitted processing must give the run's schema: the same features, vocabulary sizes, lengths."""
        from ..data.dataset import schema_from

        missing = [
            f.name
            for f in self.data.features
            if (f.kind in ("sparse", "multi") and f.name not in self.processing.vocabularies)
            or (f.kind == "multi" and f.name not in self.processing.max_lens)
            or (f.kind == "dense" and f.name not in self.processing.scalers)
        ]
        if missing:
            raise ArtifactError(
                f"the run's processing.json has no fitted state for feature(s) {missing}; retrain the run"
            )
        built = schema_from(self.data, self.processing, tuple(self.schema.domain.values))
        mine = {f.name: f for f in self.schema.features if f.name != "domain"}
        theirs = {f.name: f for f in built.features if f.name != "domain"}
        if mine != theirs:
            bad = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
            raise ArtifactError(
                f"the run's processing.json does not give its schema (feature(s) {bad} differ); the run directory "
                "mixes files of two runs: retrain it"
            )

    def _domain_mapping(self, extra: Mapping[str, int]) -> dict[str, int]:
        rule = self.data.domain
        if rule.groups is None:
            mapping = {name: i for i, name in enumerate(self.domains)}
        else:
            mapping = {}
            for name, values in rule.groups.items():
                if name not in self.domains:
                    continue
                for key in _as_str(pd.Series(list(values))).tolist():
                    mapping[key] = self.domains.index(name)
        for key, index in extra.items():
            mapping.setdefault(key, index)
        return mapping

    # ------------------------------------------------------------------------------------------- facts
    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def oov_features(self) -> tuple[str, ...]:
        """The features whose OOV rows :attr:`PredictResult.oov` counts (sparse and multi-valued)."""
        return tuple(self._oov_features)

    def describe(self) -> dict[str, Any]:
        """What is loaded, as plain JSON: run, model, backend, domains, the fallback, the input columns."""
        return {
            "kind": "ranking",
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "model": self.model_name,
            "backend": self.backend_name,
            "domains": list(self.domains),
            "domain_column": self.domain_column,
            "fallback_domain": self.fallback_domain,
            "input_columns": list(self.input_columns),
        }

    # ------------------------------------------------------------------------------------------- scoring
    def predict(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, domain: str | None = None) -> PredictResult:
        """Score ``rows`` (dicts keyed by raw column, or a DataFrame) in their order.

        Args:
            rows: the rows; each holds every column of :attr:`input_columns` and optionally the domain column.
            domain: the domain name of the rows that do not hold the domain column.

        Raises:
            InputError: a missing or extra column, a value of the wrong type, an unknown domain (without a
                fallback domain), a row without a domain.
        """
        return self._score(rows, domain, _rows_path)

    def rank(
        self,
        domain: str | None,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
    ) -> PredictResult:
        """Score ``candidates`` for one user in one context: each row is ``user`` + ``context`` + a candidate.

        A key given in two of the three is an error (which value to use would be a guess). Errors name the
        field where the value was given: ``user.user_id``, ``context.hour``, ``candidates[3].item_id`` (a
        missing column is named in the first candidate that lacks it). The user's and the context's values
        are checked and encoded once, not once per candidate; the scores are those of :meth:`predict` on the
        merged rows.
        """
        shared: dict[str, tuple[str, Any]] = {}
        for part, values in (("user", user), ("context", context)):
            if not isinstance(values, Mapping):
                raise InputError(
                    part, f"{part} must be a dict of column -> value, got {_type_name(values)}", "wrong_type"
                )
            for key, value in values.items():
                if key in shared:
                    raise InputError(
                        f"{part}.{key}",
                        f"{key!r} is given in both {shared[key][0]} and {part}; give it once",
                        "duplicate_feature",
                    )
                shared[key] = (part, value)
        base = {k: v for k, (_, v) in shared.items()}
        self._check_partial(base, lambda key: f"{shared[key][0]}.{key}")  # checked even without candidates
        if isinstance(candidates, Mapping) or not isinstance(candidates, Sequence):
            raise InputError(
                "candidates", f"candidates must be a list of dicts, got {_type_name(candidates)}", "wrong_type"
            )

        def locate(i: int, key: str) -> str:
            return f"{shared[key][0]}.{key}" if key in shared else f"candidates[{i}].{key}"

        own = [c for c in self.input_columns if c not in shared]  # the columns every candidate gives
        allowed = self._allowed
        own_set = frozenset(own)
        for i, cand in enumerate(candidates):
            if not isinstance(cand, Mapping):
                raise InputError(
                    f"candidates[{i}]",
                    f"a candidate must be a dict of column -> value, got {_type_name(cand)}",
                    "wrong_type",
                )
            keys = cand.keys()
            if shared and not keys.isdisjoint(shared):
                key = next(k for k in cand if k in shared)
                raise InputError(
                    f"candidates[{i}].{key}",
                    f"{key!r} is given in both {shared[key][0]} and candidates[{i}]; give it once",
                    "duplicate_feature",
                )
            if not (keys <= allowed and own_set <= keys):
                self._check_row(cand, base, lambda k, i=i: locate(i, k), f"candidates[{i}]")
        n = len(candidates)
        columns = {c: [base[c]] if c in shared else [cand[c] for cand in candidates] for c in self.input_columns}
        col = self.domain_column
        if col in shared:
            given: list[Any] | None = [base[col]] * n
        elif any(col in cand for cand in candidates):
            given = [cand.get(col, _ABSENT) for cand in candidates]
        else:
            given = None
        enc = self._encode_columns(columns, frozenset(shared), n, given, domain, locate)
        return self._scored(enc)

    def _score(self, rows: Any, domain: str | None, locate: Locate) -> PredictResult:
        return self._scored(self.encode(rows, domain, locate))

    def _scored(self, enc: EncodedRows) -> PredictResult:
        if len(enc.batch) == 0:
            logits = torch.zeros(0)
        else:
            logits = self.backend.logits(enc.batch).float()
        return PredictResult(
            logits=logits.numpy().astype(np.float32, copy=False),
            probabilities=torch.sigmoid(logits).numpy().astype(np.float32, copy=False),
            oov=enc.oov,
            domain=enc.domain,
            fallback=enc.fallback,
        )

    # ------------------------------------------------------------------------------------------- encoding
    def encode(self, rows: Any, domain: str | None = None, locate: Locate = _rows_path) -> EncodedRows:
        """The batch ``rows`` give (see :meth:`predict`), with their OOV counts and domains."""
        if not isinstance(rows, pd.DataFrame):
            columns, given = self._dict_columns(rows, locate)
            return self._encode_columns(columns, frozenset(), len(rows), given, domain, locate)
        frame, column = self._frame_input(rows)
        raw: list[str | None] | None = None
        if column is not None:
            present = column.notna().to_numpy()
            raw = [None] * len(column)
            for i, text in zip(np.flatnonzero(present).tolist(), _as_str(column[present]).tolist()):
                raw[i] = text
        codes, fallback = self._domains(raw, domain, locate, len(frame), lambda i: column[i])
        from ..data.dataset import encode_rows

        try:
            arrays, oov_rows = encode_rows(frame, self.data, self.processing)
        except (ValueError, TypeError) as exc:  # a DataFrame column training could not encode either
            raise InputError(None, str(exc), "wrong_type") from None
        oov = {name: int(oov_rows[name].sum()) for name in self._oov_features}
        multi = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("multi.")}
        return self._encoded(arrays["sparse"], arrays["dense"], multi, oov, codes, fallback)

    def _encoded(
        self,
        sparse: np.ndarray,
        dense: np.ndarray,
        multi: dict[str, np.ndarray],
        oov: dict[str, int],
        codes: np.ndarray,
        fallback: int,
    ) -> EncodedRows:
        if self.data.domain.as_feature:
            sparse = np.concatenate([sparse, self._indicator[codes][:, None]], axis=1)
        batch = Batch(
            sparse=torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64)),
            dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
            label=torch.zeros(len(codes)),
            domain=torch.from_numpy(codes),
            multi={k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in multi.items()},
        )
        return EncodedRows(batch, oov, tuple(self.domains[c] for c in codes.tolist()), fallback)

    def _encode_columns(
        self,
        columns: Mapping[str, list[Any]],
        shared: frozenset[str],
        n: int,
        given: list[Any] | None,
        domain: str | None,
        locate: Locate,
    ) -> EncodedRows:
        """Encode raw values column by column, as :func:`polyrec.data.dataset.encode_rows` encodes a frame.

        ``columns[c]`` holds column c's value of each of the ``n`` rows, or, for a column in ``shared``, the
        one value every row has (checked and looked up once, then repeated). ``given``: each row's raw
        domain value as sent (``None`` where a row has none), or ``None`` when no row has one.
        """
        checked: dict[tuple[str, str], Any] = {}
        for col in self.input_columns:  # every value checked, column by column, before anything is scored
            values, kinds = columns[col], self._kinds[col]
            if "dense" in kinds:
                checked[col, "dense"] = _dense_array(values, col, locate)
            if "multi" in kinds:
                checked[col, "multi"] = _multi_values(values, col, self._seps[col], locate)
            if "sparse" in kinds:
                checked[col, "sparse"] = _sparse_values(values, col, locate)
        raw: list[str | None] | None = None
        if given is not None:
            at = [i for i, v in enumerate(given) if v is not _ABSENT]
            texts = _id_strings(
                [
                    _check_id(given[i], locate(i, self.domain_column), f"domain column {self.domain_column!r}")
                    for i in at
                ]
            )
            raw = [None] * n
            for i, text in zip(at, texts):
                raw[i] = text
        codes, fallback = self._domains(raw, domain, locate, n, lambda i: given[i] if given is not None else None)
        sparse, dense, multi, oov = [], [], {}, {}
        for f in self._features:
            col = f.source_column
            repeat = n if col in shared else 1
            if f.kind == "sparse":
                table = self._lookups[f.name]
                ids = checked[col, "sparse"]
                arr = np.fromiter((table.get(t, OOV_INDEX) for t in ids), dtype=np.int64, count=len(ids))
                if repeat != 1:
                    arr = np.repeat(arr, repeat)
                sparse.append(arr)
                oov[f.name] = int((arr == OOV_INDEX).sum())
            elif f.kind == "multi":
                table, width = self._lookups[f.name], self.processing.max_lens[f.name]
                lists = checked[col, "multi"]
                out = np.full((len(lists), width), PAD_INDEX, dtype=np.int64)
                for r, tokens in enumerate(lists):
                    if tokens:
                        kept = tokens[:width]
                        out[r, : len(kept)] = [table.get(t, OOV_INDEX) for t in kept]
                if repeat != 1:
                    out = np.repeat(out, repeat, axis=0)
                multi[f.name] = out
                oov[f.name] = int((out == OOV_INDEX).any(axis=1).sum())
            else:
                try:
                    values = self.processing.scalers[f.name].transform_values(checked[col, "dense"])
                except ValueError as exc:  # a value the scaler's transform cannot take (log1p of a negative)
                    raise InputError(None, str(exc), "wrong_type") from None
                dense.append(np.repeat(values, repeat) if repeat != 1 else values)
        sparse_arr = np.stack(sparse, axis=1) if sparse else np.zeros((n, 0), np.int64)
        dense_arr = np.stack(dense, axis=1).astype(np.float32) if dense else np.zeros((n, 0), np.float32)
        oov = {name: oov[name] for name in self._oov_features}
        return self._encoded(sparse_arr, dense_arr, multi, oov, codes, fallback)

    def _check_row(self, row: Mapping[str, Any], base: Mapping[str, Any], where: Callable[[str], str], at: str) -> None:
        """Raise the InputError of a row (``base`` + ``row``) whose keys are not the run's columns."""
        bad = [k for k in row if not isinstance(k, str)]
        if bad:
            raise InputError(at, f"column names must be strings, got {bad[0]!r}", "wrong_type")
        self._check_keys([*base, *row], where, "the row")

    def _check_keys(self, keys: Sequence[str], where: Callable[[str], str], what: str) -> None:
        extra = [k for k in keys if k not in self._allowed]
        if extra:
            raise InputError(
                where(extra[0]),
                f"{what} has column(s) {extra} that the run does not read; its input columns are "
                f"{list(self.input_columns)} (and the domain column {self.domain_column!r}): remove the others",
                "extra_feature",
            )
        present = set(keys)
        missing = [c for c in self.input_columns if c not in present]
        if missing:
            features = [f.name for f in self._features if f.source_column in missing]
            raise InputError(
                where(missing[0]),
                f"{what} lacks column(s) {missing} (feature(s) {features}); every row needs {list(self.input_columns)}",
                "missing_feature",
            )

    def _check_partial(self, row: Mapping[str, Any], where: Callable[[str], str]) -> None:
        """The keys and values of part of a row (a user's, a context's): each key known, each value of its kind."""
        for key, value in row.items():
            if not isinstance(key, str) or key not in self._allowed:
                raise InputError(
                    where(key),
                    f"column {key!r} is not read by the run; its input columns are {list(self.input_columns)} "
                    f"(and the domain column {self.domain_column!r}): remove it",
                    "extra_feature",
                )
            locate = lambda i, col: where(col)  # noqa: E731
            kinds = self._kinds.get(key, set())
            if "dense" in kinds:
                _dense_array([value], key, locate)
            if "multi" in kinds:
                _multi_values([value], key, self._seps[key], locate)
            if "sparse" in kinds or key == self.domain_column:
                _check_id(value, where(key), f"column {key!r}")

    def _frame_input(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
        keys = [str(c) for c in frame.columns]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise InputError(dup[0], f"the frame has duplicate column(s) {dup}", "extra_feature")
        self._check_keys(keys, lambda k: k, "the frame")
        frame = frame.reset_index(drop=True)
        raw = frame[self.domain_column] if self.domain_column in frame.columns else None
        return frame, raw

    def _dict_columns(self, rows: Any, locate: Locate) -> tuple[dict[str, list[Any]], list[Any] | None]:
        """(each input column's values, each row's raw domain value or ``_ABSENT``, or None when no row has one) of rows given as dicts."""
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
            raise InputError(
                "rows", f"rows must be a list of dicts or a DataFrame, got {_type_name(rows)}", "wrong_type"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InputError(
                    f"rows[{i}]", f"a row must be a dict of column -> value, got {_type_name(row)}", "wrong_type"
                )
            bad = [k for k in row if not isinstance(k, str)]
            if bad:
                raise InputError(f"rows[{i}]", f"column names must be strings, got {bad[0]!r}", "wrong_type")
            self._check_keys(list(row), lambda k, i=i: locate(i, k), "the row")
        columns = {c: [row[c] for row in rows] for c in self.input_columns}
        col = self.domain_column
        given = [row.get(col, _ABSENT) for row in rows] if any(col in row for row in rows) else None
        return columns, given

    def _domains(
        self, raw: list[str | None] | None, domain: str | None, locate: Locate, n: int, given: Callable[[int], Any]
    ) -> tuple[np.ndarray, int]:
        """(domain index of every row, rows scored as the fallback domain).

        ``raw``: each row's domain value as its id string (``None`` where the row has none), or ``None`` when
        no row has one; ``given(i)``: row i's value as sent."""
        fallback_index = self.domains.index(self.fallback_domain) if self.fallback_domain is not None else None
        call = None
        if domain is not None:
            if not isinstance(domain, str):
                raise InputError(
                    "domain", f"domain must be a domain name (a string), got {_describe(domain)}", "wrong_type"
                )
            if domain in self.domains:
                call = self.domains.index(domain)
            elif fallback_index is not None:
                call = -1  # unknown: scored as the fallback domain, counted below
            else:
                raise InputError(
                    "domain",
                    f"unknown domain {domain!r}; the run's domains are {list(self.domains)}",
                    "unknown_domain",
                )
        if raw is None:
            if call is None and n:
                raise InputError(
                    "domain",
                    f"no domain given: pass the call's domain (one of {list(self.domains)}) or give each row "
                    f"its domain column {self.domain_column!r}",
                    "missing_domain",
                )
            codes = np.full(n, call if call is not None else 0, dtype=np.int64)
        else:
            present = np.fromiter((v is not None for v in raw), dtype=bool, count=len(raw))
            get = self._domain_of.get
            mapped = np.fromiter((get(v, -1) for v in raw if v is not None), dtype=np.int64)
            codes = np.empty(len(raw), dtype=np.int64)
            codes[present] = mapped
            if (~present).any():
                if call is None:
                    i = int(np.flatnonzero(~present)[0])
                    raise InputError(
                        locate(i, self.domain_column),
                        f"the row has no domain: give its domain column {self.domain_column!r} or the call's domain",
                        "missing_domain",
                    )
                codes[~present] = call
            if call is not None and call >= 0:
                positions = np.flatnonzero(present)
                clash = positions[(mapped >= 0) & (mapped != call)]
                if len(clash):
                    i = int(clash[0])
                    raise InputError(
                        locate(i, self.domain_column),
                        f"the row is of domain {self.domains[codes[i]]!r} by its {self.domain_column!r} "
                        f"{_describe(given(i))}, but the call's domain is {self.domains[call]!r}; give one of them",
                        "domain_conflict",
                    )
            unknown = np.flatnonzero(present)[mapped < 0]
            if len(unknown) and fallback_index is None:
                i = int(unknown[0])
                values = sorted(self._domain_of)
                known = values if len(values) <= 20 else [*values[:20], "..."]
                raise InputError(
                    locate(i, self.domain_column),
                    f"unknown domain value {_describe(given(i))} of column {self.domain_column!r}; the run's "
                    f"domain rule knows {known} (domains {list(self.domains)})",
                    "unknown_domain",
                )
        unknown_rows = codes < 0
        fallback = int(unknown_rows.sum())
        if fallback:
            codes[unknown_rows] = fallback_index
        return codes, fallback


# ----------------------------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievedItem:
    """One item of a retrieval answer: its place (1 = best), raw id, catalogue index and score (a logit)."""

    rank: int
    item: str
    item_index: int
    score: float


class RetrievalPredictor:
    """A trained two-tower retrieval run that answers "the top ``k`` items of a domain for a user".

    Built with :meth:`from_run`: the run's model (eval mode), its data rebuilt from the source and checked
    against the run's fingerprint, and each domain's item embeddings, computed once. A query scores the
    whole corpus of the domain exactly (the inner product of the user and item embeddings), as
    :func:`polyrec.retrieval.experiment.retrieve` does with ``index='matmul'``.
    """

    kind = "retrieval"

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        run_dir: str | Path | None = None,
        model_name: str = "",
        fallback_domain: str | None = None,
    ) -> None:
        from ..retrieval.trainer import embed_items

        self.model = model.eval()
        self.data = data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_name = model_name
        self.domains: tuple[str, ...] = tuple(data.domains)
        if fallback_domain is not None and fallback_domain not in self.domains:
            raise ValueError(
                f"fallback_domain {fallback_domain!r} is not a domain of the run; its domains are {list(self.domains)}"
            )
        self.fallback_domain = fallback_domain
        self._users = {u: i for i, u in enumerate(data.users)}
        with torch.no_grad():
            self._items = [embed_items(self.model, data, data.corpus[d], d) for d in range(len(self.domains))]

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, backend: str = "eager", fallback_domain: str | None = None, data: Any = None
    ) -> RetrievalPredictor:
        """The predictor of a retrieval run directory (every file checked against its manifest).

        Args:
            backend: ``eager`` only (a retrieval model is not exported).
            data: the run's data when the caller has it (checked against the run's fingerprint).

        Raises:
            ArtifactError: a damaged run, or the popularity baseline (it has no model).
        """
        from ..retrieval.experiment import check_data, load_data, load_run

        if backend != "eager":
            if backend == "onnx":
                raise NotImplementedError("backend 'onnx' is not available for retrieval runs; use backend='eager'")
            raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
        run_dir = Path(run_dir)
        model, cfg, _ = load_run(run_dir)
        if model is None:
            raise ArtifactError(f"{str(run_dir)!r} is the popularity baseline, which has no model to serve")
        data = data if data is not None else load_data(cfg)
        check_data(run_dir, data)
        return cls(model, data, run_dir=run_dir, model_name=cfg.model, fallback_domain=fallback_domain)

    @property
    def backend_name(self) -> str:
        return "eager"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "retrieval",
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "model": self.model_name,
            "backend": self.backend_name,
            "domains": list(self.domains),
            "fallback_domain": self.fallback_domain,
        }

    def domain_index(self, domain: str) -> tuple[int, bool]:
        """(index of ``domain``, whether it is the fallback for an unknown name)."""
        if domain in self.domains:
            return self.domains.index(domain), False
        if self.fallback_domain is not None:
            return self.domains.index(self.fallback_domain), True
        raise InputError(
            "domain", f"unknown domain {domain!r}; the run's domains are {list(self.domains)}", "unknown_domain"
        )

    def retrieve(self, domain: str, user: str | int, k: int = 100, exclude_seen: bool = True) -> list[RetrievedItem]:
        """The ``k`` best items of ``domain``'s corpus for ``user`` (its raw id), best first.

        ``exclude_seen`` leaves out the items the user has a positive for. Fewer than ``k`` items come back
        when the corpus (less the excluded items) is smaller.

        Raises:
            InputError: an unknown domain (without a fallback), an unknown user, ``k < 1``.
        """
        from ..retrieval.experiment import serving_user

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError("k", f"k must be an integer >= 1, got {_describe(k)}", "wrong_type")
        d, _ = self.domain_index(domain)
        key = _id_strings([_check_id(user, "user", "user")])[0]
        if key not in self._users:
            raise InputError(
                "user", f"unknown user {key!r}: the run's data has no positive of this user", "unknown_user"
            )
        query, seen = serving_user(self.data, key, d)
        with torch.no_grad():
            q = self.model.user_embedding(query)[0]
        corpus = self.data.corpus[d]
        scores = (self._items[d] @ q).clone()
        if exclude_seen and len(seen):
            scores[torch.isin(corpus, seen)] = -math.inf
        top = torch.topk(scores, min(k, len(corpus)))
        out = []
        for s, i in zip(top.values.tolist(), top.indices.tolist()):
            if s == -math.inf:
                break
            item = int(corpus[i])
            out.append(RetrievedItem(len(out) + 1, str(self.data.items[item]), item, float(s)))
        return out


def load_predictor(
    run_dir: str | Path, *, backend: str = "eager", fallback_domain: str | None = None
) -> Predictor | RetrievalPredictor:
    """The predictor of any run directory: a :class:`RetrievalPredictor` for a retrieval run, else a
    :class:`Predictor`."""
    from ..retrieval.experiment import is_retrieval_run

    if is_retrieval_run(run_dir):
        return RetrievalPredictor.from_run(run_dir, backend=backend, fallback_domain=fallback_domain)
    if is_export(run_dir):
        if backend != "onnx":
            raise ValueError(f"{str(run_dir)!r} is an export: serve it with backend 'onnx', or serve its run")
        return Predictor.from_export(run_dir, fallback_domain=fallback_domain)
    return Predictor.from_run(run_dir, backend=backend, fallback_domain=fallback_domain)


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ranking export (``polyrec export``) rather than a run directory."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == "ranking" and "artifact" in manifest
