"""Model registry: ``@register_model(name)`` and the one factory, :func:`create_model`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from ..config import ConfigError, from_dict, to_dict
from ..data.schema import DatasetSchema

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator that registers a model under ``name``.

    The class must define a ``Config`` dataclass and take ``(schema, config)``. Variants are separate
    registered entries, never copied files.
    """

    def deco(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        if not hasattr(cls, "Config"):
            raise TypeError(f"model {cls.__qualname__} must define a Config dataclass")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def get_model_class(name: str) -> type:
    """The class registered as ``name``; unknown names raise with close matches and the valid names."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}")
    return _MODELS[name]


def model_config(name: str, **overrides: Any):
    """The validated config dataclass of model ``name`` with ``overrides`` applied.

    Errors name the key as the user wrote it in the ``model`` section (``model.dropout: 1.5 is not
    allowed; must be >= 0 and < 1``) and end with the model's name, whose config rejected it.
    """
    cls = get_model_class(name)
    try:
        return from_dict(cls.Config, overrides, path="model")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (model {name!r})") from None


def create_model(name: str, schema: DatasetSchema, **overrides: Any):
    """Build model ``name`` for ``schema``; keyword overrides are checked against the model's config.

    Example:
        >>> model = create_model("star", schema, embedding_dim=16, hidden_units=[128, 64, 32])  # doctest: +SKIP
    """
    cls = get_model_class(name)
    return cls(schema, model_config(name, **overrides))


def describe_model(name: str) -> dict[str, Any]:
    """Name, one-line summary and default config of a registered model."""
    cls = get_model_class(name)
    doc = (cls.__doc__ or "").strip().splitlines()
    return {"name": name, "summary": doc[0] if doc else "", "defaults": to_dict(cls.Config())}
