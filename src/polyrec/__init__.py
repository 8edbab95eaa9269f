"""polyrec: multi-domain recommendation in PyTorch.

The public API is the user's nouns: data (schema, batches, data sets, presets), models (registry and
factory), training (trainer, strategies), metrics and experiments. Plumbing stays in submodules.
"""

from .config import ConfigError
from .data.batch import Batch
from .data.config import DataConfig, DomainRule, FeatureConfig, LabelRule, SourceConfig, SplitConfig
from .data.dataset import EncodedDataset, build_dataset
from .data.protocols import list_presets, preset
from .data.schema import DatasetSchema, DomainSpec, FeatureSpec
from .evaluation.metrics import MultiDomainEvaluator, MultiDomainMetrics, auc, gauc
from .experiment import ExperimentConfig, evaluate_run, make_config, run_experiment
from .models import Model, ModelOutput, create_model, list_models, register_model
from .models.adapters import AdapterConfig, MLoRAModel, add_domain, attach_mlora
from .training.strategies import Strategy, create_strategy, list_strategies, register_strategy
from .training.trainer import TrainConfig, Trainer, evaluate

load_dataset = build_dataset

__version__ = "0.3.0"

__all__ = [
    "AdapterConfig",
    "Batch",
    "ConfigError",
    "DataConfig",
    "DatasetSchema",
    "DomainRule",
    "DomainSpec",
    "EncodedDataset",
    "ExperimentConfig",
    "FeatureConfig",
    "FeatureSpec",
    "LabelRule",
    "MLoRAModel",
    "Model",
    "ModelOutput",
    "MultiDomainEvaluator",
    "MultiDomainMetrics",
    "SourceConfig",
    "SplitConfig",
    "Strategy",
    "TrainConfig",
    "Trainer",
    "add_domain",
    "attach_mlora",
    "auc",
    "build_dataset",
    "create_model",
    "create_strategy",
    "evaluate",
    "evaluate_run",
    "gauc",
    "list_models",
    "list_presets",
    "list_strategies",
    "load_dataset",
    "make_config",
    "preset",
    "register_model",
    "register_strategy",
    "run_experiment",
]
