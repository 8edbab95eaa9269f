"""Models: the registry, the contract, and every registered model (imported here to register them)."""

from ._registry import create_model, describe_model, get_model_class, list_models, model_config, register_model
from .base import Model, ModelOutput
from .ctr import mlp as _mlp  # noqa: F401  (registers "mlp")
from .multidomain import star as _star  # noqa: F401  (registers "star")

__all__ = ["Model", "ModelOutput", "create_model", "describe_model", "get_model_class", "list_models",
           "model_config", "register_model"]
