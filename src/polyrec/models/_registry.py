"""Model registry: ``@register_model(name, tags=...)`` and the one factory, :func:`create_model`.

:data:`MODELS` is a :class:`polyrec.registry.Registry`; the functions here are its public face (and were
the API before it). Tags group the models: every built-in model carries one family tag (:data:`FAMILIES`),
and the MLP also ``baseline``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..config import ConfigError, from_dict, to_dict
from ..data.schema import DatasetSchema
from ..registry import Registry

#: The family tags, each with the heading ``polyrec models`` prints above its models. A model carries one.
FAMILIES = {
    "ctr": "single-domain CTR backbones (the domain enters only as a feature)",
    "multidomain": "multi-domain models (per-domain parameters, routed by each row's domain)",
    "retrieval": "two-tower retrieval models",
}
#: The other tags.
ROLES = {
    "baseline": "the single-domain baseline every multi-domain model is compared with (in the P2 zoo)",
}


def _prepare(name: str, cls: type) -> None:
    if not hasattr(cls, "Config"):
        raise TypeError(f"model {cls.__qualname__} must define a Config dataclass")
    cls.model_name = name


MODELS: Registry[type] = Registry("model", tags={**FAMILIES, **ROLES}, on_register=_prepare)


def register_model(name: str, *, tags: Iterable[str] = ()) -> Callable[[type], type]:
    """Class decorator that registers a model under ``name`` with ``tags`` (see :data:`FAMILIES` and
    :data:`ROLES`; a model that names no family is listed as untagged).

    The class must define a ``Config`` dataclass and take ``(schema, config)``; it gets ``model_name``.
    Variants are separate registered entries, never copied files. A name taken by another class raises,
    naming both (``model name 'mlp' is already registered by polyrec.models.ctr.mlp.MLPModel; register
    ... under another name``). docs/architecture.md adds a model step by step.
    """
    return MODELS.register(name, tags=tags)


def list_models(tag: str | None = None) -> list[str]:
    """Names of the registered models, sorted; with ``tag`` (``"multidomain"``), those that carry it.

    Example:
        >>> "star" in list_models("multidomain") and "mlp" in list_models("baseline")
        True
    """
    return MODELS.names(tag)


def models_by_tag(tag: str | None = None) -> dict[str, list[str]]:
    """The models grouped as ``polyrec models`` lists them: ``{family tag: names}`` in :data:`FAMILIES` order
    (families without models left out), then ``"untagged"`` for models that name no family; with ``tag``,
    only ``{tag: names}``.

    Example:
        >>> groups = models_by_tag()
        >>> list(groups)[:2], "mlp" in groups["ctr"], "star" in groups["multidomain"]
        (['ctr', 'multidomain'], True, True)
    """
    if tag is not None:
        return {tag: MODELS.names(tag)}
    groups = {family: MODELS.names(family) for family in FAMILIES}
    groups["untagged"] = [n for n in MODELS if not set(MODELS.entry(n).tags) & set(FAMILIES)]
    return {k: v for k, v in groups.items() if v}


def model_tags(name: str) -> tuple[str, ...]:
    """The tags model ``name`` was registered with."""
    return MODELS.entry(name).tags


def get_model_class(name: str) -> type:
    """The class registered as ``name``; unknown names raise with close matches and the valid names.

    Example:
        >>> get_model_class("stra")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polyrec.registry.UnknownNameError: unknown model 'stra'. Did you mean 'star'? Valid models: ...
    """
    return MODELS[name]


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
    """Name, one-line summary, tags and default config of a registered model."""
    entry = MODELS.entry(name)
    return {"name": name, "summary": entry.summary, "tags": list(entry.tags), "defaults": to_dict(entry.obj.Config())}
