"""Files polyrec writes and reads back: atomic, checksummed, and never a pickle.

A run directory is shared between people, so every file in it is opened as if a stranger wrote it:
tensors are stored as safetensors (a JSON header and raw little-endian buffers; reading one cannot run
code), everything else as JSON. Nested training state (an optimiser's ``state_dict``, random-generator
states, a strategy's own optimisers) is split by :func:`flatten` into a JSON skeleton and a flat
``{name: tensor}`` map, and put back together by :func:`unflatten`.

Every write goes to a temporary file in the destination folder, is flushed to disk and renamed into
place, so a crash half-way leaves the previous file intact. :class:`ArtifactError` is the one error for
a file that is missing, unreadable, truncated, tampered with or of another format; its message names
the file and what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data.cache import atomic_write_bytes, sha256_file  # the one home of atomic writes and file hashes

__all__ = [
    "ArtifactError",
    "atomic_write_bytes",
    "atomic_write_text",
    "flatten",
    "load_tensors",
    "read_json",
    "save_tensors",
    "sha256_file",
    "unflatten",
    "verify_files",
    "write_json",
]


class ArtifactError(ValueError):
    """A file polyrec was asked to read is missing, corrupt, of another format or not what it should be."""


def verify_files(folder: Path, files: Any, what: str, error: type[ArtifactError] = ArtifactError) -> None:
    """Check that every ``{name: sha256}`` of a manifest is a file in ``folder`` with that digest; the first
    missing or changed one raises ``error`` naming it (``what``: "run file", "checkpoint file")."""
    if not isinstance(files, dict):
        raise error(f"the manifest in {str(folder)!r} does not list its files")
    for name, digest in files.items():
        path = folder / name
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise error(f"the manifest in {str(folder)!r} lists an unexpected file {name!r}")
        if not path.is_file():
            raise error(f"{what} {str(path)!r} is missing")
        if sha256_file(path) != digest:
            raise error(
                f"{what} {str(path)!r} does not match its manifest (sha256): it is truncated or was changed "
                "after it was written. Restore it, or rerun the step that wrote it"
            )


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (NaN and infinities as JSON's ``NaN``/``Infinity``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, binary or malformed one is an :class:`ArtifactError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{what} {str(path)!r} is not valid JSON ({exc.__class__.__name__}: {exc}); the file is "
            "damaged or was replaced: restore it or rerun the step that wrote it"
        ) from None


# ------------------------------------------------------------------------------------------- tensors


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``{name: tensor}`` as a safetensors file, atomically. Tensors are stored contiguous and on CPU."""
    from safetensors.torch import save

    flat, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        if v.numel() and v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            v = v.clone()
        if v.numel():
            seen.add(v.untyped_storage().data_ptr())
        flat[k] = v
    return atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: str | Path, what: str = "tensor file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """``({name: tensor}, metadata)`` of a safetensors file; anything else is an :class:`ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise ArtifactError(
            f"{what} {str(path)!r} is not a readable safetensors file ({exc}); it is truncated, "
            "damaged or of another format (polyrec never unpickles files)"
        ) from None
    return tensors, metadata


# ------------------------------------------------------------------------------- nested state <-> flat

_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"


def flatten(obj: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """Split nested state into a JSON skeleton and ``{path: tensor}``.

    Tensors become ``{"__tensor__": path}``; tuples ``{"__tuple__": [...]}``; dicts with non-string keys
    (an optimiser's state keyed by parameter index) ``{"__dict__": [[key, value], ...]}``; non-finite
    floats ``{"__float__": "nan"}``. Anything else must be JSON data (str, int, float, bool, None).
    """
    tensors: dict[str, Tensor] = {}

    def join(path: str, key: Any) -> str:
        return f"{path}.{key}" if path else str(key)

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            tensors[path] = x
            return {_TENSOR: path}
        if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {_FLOAT: repr(x)}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, join(path, i)) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, join(path, i)) for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, join(path, k)) for k, v in x.items()}
            return {
                _DICT: [[walk(k, join(path, f"key{i}")), walk(v, join(path, i))] for i, (k, v) in enumerate(x.items())]
            }
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy scalar
            return walk(x.item(), path)
        if hasattr(x, "dtype") and hasattr(x, "shape"):  # numpy array
            return walk(torch.from_numpy(x.copy()), path)
        raise TypeError(f"cannot store {type(x).__name__} at {path or '<root>'} (only tensors and JSON data)")

    return walk(obj, prefix), tensors


def unflatten(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten`; a skeleton naming a tensor that is absent is an :class:`ArtifactError`."""

    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            if _TENSOR in x:
                name = x[_TENSOR]
                if name not in tensors:
                    raise ArtifactError(f"state names tensor {name!r}, which the tensor file does not hold")
                return tensors[name]
            if _TUPLE in x:
                return tuple(walk(v) for v in x[_TUPLE])
            if _DICT in x:
                return {_hashable(walk(k)): walk(v) for k, v in x[_DICT]}
            if _FLOAT in x:
                return float(x[_FLOAT])
            return {k: walk(v) for k, v in x.items()}
        return x

    return walk(skeleton)


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, (list, tuple)) else k
