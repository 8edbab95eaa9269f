"""An experiment's config: assembled from a preset, a YAML file, a model name and ``--set`` overrides.

The plain-dict form (what YAML files, presets and ``--set`` overrides edit) is::

    {"protocol": "ml1m-gender", "data": {...}, "model": {"name": "star", <model options>}, "train": {...},
     "adapter": {"kind": "mlora", "alpha": 16, "targets": ["dnn"], "max_adapter_params": null}}

``adapter`` is optional (default ``kind: none``). :func:`resolve_config` validates it into an
:class:`ExperimentConfig`; :func:`make_config` assembles it first.

**A model name with a config.** The model name (:class:`~polyrec.runspec.RunSpec`,
``<model>[+<adapter>][@<strategy>]``) is applied on top of the preset and the config file, and its parts
replace theirs:

- ``<model>``: the file's ``model`` options apply when the file names that model or none; a file written
  for another model has its options dropped (with a warning). The preset's sizes for the model apply.
- ``+mlora``: ``adapter.kind: mlora``; the file's other ``adapter`` keys (``alpha``, ...) still apply. With
  ``adapter.alpha`` unset, α is the preset's ``mlora_alpha`` for the model (the MLoRA authors' per-model
  values for ``ml1m-gender``), else 32.
- ``@<strategy>``: ``train.strategy: <strategy>``, with the preset's settings for that strategy
  (``strategy_train``). The file's ``train.strategy_options`` go with the file's ``train.strategy``: they
  apply to the named strategy when the file's strategy is that one or unset, and are dropped with a
  warning otherwise (options of one strategy mean nothing to another).

``--set`` overrides edit the result and must not contradict the name: ``--model mlp@mamdr --set
train.strategy=joint`` (or ``--model mlp+mlora --set adapter.kind=none``) is an error, and so is a
single document whose ``model.name`` and ``train.strategy`` disagree.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, apply_overrides, from_dict, load_yaml, parse_override, to_dict
from .data.config import DataConfig
from .data.protocols import preset as get_preset
from .models import get_model_class
from .models.adapters import DEFAULT_ALPHA, AdapterConfig
from .runspec import ADAPTER_SEP, STRATEGY_SEP, RunSpec
from .training.trainer import TrainConfig

#: The name part that adds MLoRA adapters (``deepfm+mlora``).
ADAPTER_SUFFIX = ADAPTER_SEP + "mlora"
SECTIONS = ("protocol", "data", "model", "train", "adapter")


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: protocol name, data, model name and options, training, adapter.

    What :func:`polyrec.experiment.run_experiment` runs and a run directory's ``config.json`` holds (as
    :meth:`to_dict`). Build it with :func:`make_config` (preset, YAML file, model name, ``--set``
    overrides) or :func:`resolve_config` (a plain dict); both validate every section strictly.

    Attributes:
        protocol: the preset's name (``ml1m-age3``), or the config's own (``custom`` by default).
        data: the :class:`~polyrec.data.config.DataConfig` (source, label, domains, features, split).
        model_name: a registered model (:func:`polyrec.models.list_models`).
        model: that model's validated ``Config`` dataclass (its options, the preset's sizes applied).
        train: the :class:`~polyrec.training.trainer.TrainConfig` (optimiser, early stopping, strategy and
            its resolved options).
        adapter: the :class:`~polyrec.models.adapters.AdapterConfig` (``kind: none`` or ``mlora``).
        strategy_in_name: the strategy was asked for by name (``mlp@mamdr``), so results keep ``mlp`` and
            ``mlp@mamdr`` apart even where ``mlp``'s preset strategy is the same. Not part of
            :meth:`to_dict` (a saved config is the same training either way).

    Example:
        >>> cfg = make_config("ml1m-age3", "mlp@alternate", overrides=["train.max_epochs=2"])
        >>> cfg.model_name, cfg.train.strategy, cfg.train.max_epochs, cfg.model.embedding_dim, cfg.display_name
        ('mlp', 'alternate', 2, 16, 'mlp@alternate')
        >>> again = resolve_config(cfg.to_dict())  # what a run directory's config.json rebuilds
        >>> again.train == cfg.train and again.model == cfg.model and again.data == cfg.data
        True
    """

    protocol: str
    data: DataConfig
    model_name: str
    model: Any
    train: TrainConfig
    adapter: AdapterConfig = AdapterConfig()
    strategy_in_name: bool = False

    @property
    def spec(self) -> RunSpec:
        """The run's name as a :class:`~polyrec.runspec.RunSpec`: the model, its adapter, and the strategy
        when it was asked for by name."""
        return RunSpec(
            self.model_name,
            None if self.adapter.kind == "none" else self.adapter.kind,
            self.train.strategy if self.strategy_in_name else None,
        )

    @property
    def display_name(self) -> str:
        """The model's name in results: ``deepfm``, ``deepfm+mlora``, or with the strategy it was asked for
        by name (``mlp@mamdr``): ``str(self.spec)``."""
        return str(self.spec)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (every default filled in, strategy options included): what
        ``config.json`` holds and the config hash is computed from."""
        out = {
            "protocol": self.protocol,
            "data": to_dict(self.data),
            "model": {"name": self.model_name, **to_dict(self.model)},
            "train": to_dict(self.train),
        }
        if self.adapter.kind != "none":
            out["adapter"] = to_dict(self.adapter)
        return out


def split_model_name(name: str) -> tuple[str, bool]:
    """``"deepfm+mlora"`` -> ``("deepfm", True)``; ``"deepfm"`` -> ``("deepfm", False)`` (see
    :meth:`RunSpec.parse <polyrec.runspec.RunSpec.parse>`, which this reads)."""
    spec = RunSpec.parse(name)
    return str(spec.with_adapter(None)), spec.adapter is not None


def split_strategy(name: str) -> tuple[str, str | None]:
    """``"mlp@mamdr"`` -> ``("mlp", "mamdr")`` (the model trained with that strategy); ``"mlp"`` ->
    ``("mlp", None)`` (see :meth:`RunSpec.parse <polyrec.runspec.RunSpec.parse>`)."""
    spec = RunSpec.parse(name)
    return str(spec.with_strategy(None)), spec.strategy


def _warn_dropped(where: str, what: str, dropped: Any, why: str) -> None:
    warnings.warn(f"{where}: {what} {dropped} dropped: {why}", stacklevel=4)


def _file_under_name(file_cfg: dict[str, Any], spec: RunSpec, where: str) -> dict[str, Any]:
    """The config file's sections with the model name's parts applied (the rule in the module docstring)."""
    out = dict(file_cfg)
    model = out.get("model")
    if isinstance(model, dict) and model.get("name") not in (None, spec.model):
        options = {k: v for k, v in model.items() if k != "name"}
        if options:
            _warn_dropped(
                where,
                "model options",
                options,
                f"they are for model {model['name']!r}, and the model name {str(spec)!r} asks for {spec.model!r}",
            )
        out["model"] = {}
    train = out.get("train")
    if spec.strategy and isinstance(train, dict) and train.get("strategy") not in (None, spec.strategy):
        train = dict(train)
        options = train.pop("strategy_options", None)
        if options:
            _warn_dropped(
                where,
                "train.strategy_options",
                options,
                f"they are for train.strategy {train['strategy']!r}, which the model name {str(spec)!r} "
                f"replaces with {spec.strategy!r}; set options for it with --set "
                "train.strategy_options.KEY=VALUE",
            )
        train["strategy"] = spec.strategy
        out["train"] = train
    return out


def base_config(preset: str | None = None, model: str | None = None, config_file: str | None = None) -> dict:
    """The plain-dict config from a preset and/or a YAML file (the file's keys win) under a model name
    (its parts win over both; see the module docstring)."""
    data: dict[str, Any] = {"protocol": "custom", "data": {}, "model": {}, "train": {}}
    spec = RunSpec.parse(model) if model else None
    if preset:
        p = get_preset(preset)
        data = {"protocol": preset, "data": p["data"], "train": p["train"], "model": {}}
        if spec:
            params = p["models"].get(spec.model)
            if params is None:
                fields = {f.name for f in dataclasses.fields(get_model_class(spec.model).Config)}
                params = {k: v for k, v in p.get("model_defaults", {}).items() if k in fields}
            data["model"] = {"name": spec.model, **params}
            # A model whose paper trains it with its own strategy (DFEI's cyclic schedule) says so here.
            data["train"] = {**data["train"], **p.get("model_train", {}).get(spec.model, {})}
            if spec.strategy:  # a strategy asked for by name gets the preset's settings for it (no others')
                data["train"] = {
                    **data["train"],
                    "strategy_options": {},
                    "strategy": spec.strategy,
                    **p.get("strategy_train", {}).get(spec.strategy, {}),
                }
    if config_file:
        file_cfg = load_yaml(config_file)
        if spec:
            file_cfg = _file_under_name(file_cfg, spec, f"config file {str(config_file)!r}")
        for key, value in file_cfg.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    if spec:
        if not isinstance(data.get("model"), dict) or data["model"].get("name") not in (None, spec.model):
            data["model"] = {"name": spec.model}
        # The whole name, so that resolve_config sets train.strategy and the adapter from it and refuses an
        # override that contradicts it.
        data["model"] = {**data["model"], "name": str(spec)}
        if spec.strategy and isinstance(data.get("train"), dict):
            data["train"] = {**data["train"], "strategy": spec.strategy}
        if spec.adapter:
            data["adapter"] = {
                **(data.get("adapter") if isinstance(data.get("adapter"), dict) else {}),
                "kind": spec.adapter,
            }
    return data


def _resolve_adapter(raw: Any, protocol: str, model_name: str) -> AdapterConfig:
    adapter = from_dict(AdapterConfig, raw or {}, path="adapter")
    if adapter.kind == "mlora" and adapter.alpha is None:
        try:
            alpha = get_preset(protocol).get("mlora_alpha", {}).get(model_name, DEFAULT_ALPHA)
        except KeyError:  # not a preset (a custom protocol name)
            alpha = DEFAULT_ALPHA
        adapter = dataclasses.replace(adapter, alpha=alpha)
    if adapter.kind == "mlora":  # held resolved, so a saved config says which layer the run had
        adapter = dataclasses.replace(
            adapter, domain_bias=bool(adapter.domain_bias), a_init=adapter.a_init or "gaussian"
        )
    return adapter


def resolve_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain-dict experiment config (unknown keys and bad types raise ConfigError)."""
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment config is a mapping with sections data, model, train; got {data!r}")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    for section in ("data", "model", "train", "adapter"):
        value = data.get(section)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(
                f"{section}: expected a mapping of {section} keys, got {value!r}; set one key with "
                f"--set {section}.KEY=VALUE"
            )
    model = dict(data.get("model") or {})
    name = model.pop("name", None)
    if not name:
        raise ConfigError("model.name is required (see `polyrec models` for the registered names)")
    spec = RunSpec.parse(name)
    train = dict(data.get("train") or {})
    if spec.strategy:
        if train.get("strategy", spec.strategy) != spec.strategy:
            raise ConfigError(
                f"model.name {name!r} asks for strategy {spec.strategy!r} but train.strategy is "
                f"{train['strategy']!r}; drop one of them (a --model name replaces the strategy of "
                "the preset and the config file, but not a --set train.strategy)"
            )
        train["strategy"] = spec.strategy
    raw_adapter = data.get("adapter")
    if spec.adapter:
        if isinstance(raw_adapter, dict) and raw_adapter.get("kind", spec.adapter) != spec.adapter:
            label = {"mlora": "MLoRA"}.get(spec.adapter, spec.adapter)
            raise ConfigError(
                f"model.name {name!r} asks for {label} but adapter.kind is {raw_adapter['kind']!r}; "
                "drop one of them (a --model name replaces the adapter.kind of the preset and the "
                "config file, but not a --set adapter.kind)"
            )
        raw_adapter = {**(raw_adapter if isinstance(raw_adapter, dict) else {}), "kind": spec.adapter}
    cls = get_model_class(spec.model)
    protocol = str(data.get("protocol", "custom"))
    data_cfg = from_dict(DataConfig, data.get("data") or {}, path="data")
    model_cfg = from_dict(cls.Config, model, path="model")
    if getattr(model_cfg, "aux_features", ()) is None:
        # STAR's auxiliary network: the data's domain-describing features, held resolved in the config.
        model_cfg = dataclasses.replace(model_cfg, aux_features=tuple(data_cfg.domain.describing))
    return ExperimentConfig(
        protocol=protocol,
        data=data_cfg,
        model_name=spec.model,
        model=model_cfg,
        train=from_dict(TrainConfig, train, path="train"),
        adapter=_resolve_adapter(raw_adapter, protocol, spec.model),
        strategy_in_name=spec.strategy is not None,
    )


def make_config(
    preset: str | None = None, model: str | None = None, config_file: str | None = None, overrides: Iterable[str] = ()
) -> ExperimentConfig:
    """Preset and/or YAML file, under the model name ``model``, then dotted overrides -> validated config.

    How ``model`` combines with the preset and the file is the rule in this module's docstring: its
    model, adapter and strategy replace theirs, and the file's ``train.strategy_options`` apply only when
    the file's ``train.strategy`` is the named one (or unset). Overrides must not contradict the name.

    Example:
        >>> cfg = make_config("ml1m-age7", "mlp@mamdr", overrides=["train.seed=1"])
        >>> cfg.display_name, cfg.train.strategy_options["outer_lr"]
        ('mlp@mamdr', 0.1)
    """
    return resolve_config(apply_overrides(base_config(preset, model, config_file), list(overrides)))


def data_config(preset: str | None = None, config_file: str | None = None, overrides: Iterable[str] = ()) -> DataConfig:
    """The validated ``data`` section of a preset and/or a YAML file with ``data.*`` overrides (no model
    needed: what ``polyrec data prepare`` encodes)."""
    overrides = list(overrides)
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] != "data":
            raise ConfigError(
                f"override {text!r}: only data.* keys change the data set; drop it (it would have no effect here)"
            )
    raw = apply_overrides(base_config(preset, None, config_file), overrides)
    return from_dict(DataConfig, raw.get("data") or {}, path="data")


__all__ = [
    "ADAPTER_SUFFIX",
    "STRATEGY_SEP",
    "ExperimentConfig",
    "base_config",
    "data_config",
    "make_config",
    "resolve_config",
    "split_model_name",
    "split_strategy",
]
