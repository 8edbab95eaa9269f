"""Models: the registry, the contract, and every registered model (imported here to register them)."""

from . import ctr as _ctr  # noqa: F401  (registers the single-domain backbones)
from . import multidomain as _multidomain  # noqa: F401  (registers the multi-domain models)
from . import retrieval as _retrieval  # noqa: F401  (registers the two-tower retrieval models)
from ._registry import (
    MODELS,
    create_model,
    describe_model,
    get_model_class,
    list_models,
    model_config,
    model_tags,
    models_by_tag,
    register_model,
)
from .base import Model, ModelConfig, ModelOutput

__all__ = [
    "MODELS",
    "Model",
    "ModelConfig",
    "ModelOutput",
    "create_model",
    "describe_model",
    "get_model_class",
    "list_models",
    "model_config",
    "model_tags",
    "models_by_tag",
    "register_model",
]
