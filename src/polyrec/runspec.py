"""The name of a run's model: ``<model>[+<adapter>][@<strategy>]``, parsed once into a :class:`RunSpec`.

``deepfm`` is the registered model; ``deepfm+mlora`` the same model with MLoRA adapters
(``adapter.kind: mlora``); ``mlp@mamdr`` the MLP trained with the ``mamdr`` strategy
(``train.strategy: mamdr``); ``deepfm+mlora@two_phase`` both. Results tables, run records and benchmark
resumes key runs by this name, so it is composed in one place (:meth:`RunSpec.__str__`) and parsed in
one place (:meth:`RunSpec.parse`).

Example:
    >>> spec = RunSpec.parse("deepfm+mlora@two_phase")
    >>> spec.model, spec.adapter, spec.strategy
    ('deepfm', 'mlora', 'two_phase')
    >>> str(spec.with_strategy(None))
    'deepfm+mlora'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .config import ConfigError

ADAPTER_SEP = "+"
STRATEGY_SEP = "@"
#: Adapter kinds a name may carry after ``+`` (the non-``none`` kinds of ``adapter.kind``).
ADAPTERS = ("mlora",)
#: What a model, adapter or strategy name is made of (registered names are lowercase words and digits).
_PART = re.compile(r"[A-Za-z0-9_.\-]+")
_FORM = "'<model>[+<adapter>][@<strategy>]', e.g. 'deepfm', 'deepfm+mlora', 'mlp@mamdr', 'mlp+mlora@two_phase'"


@dataclass(frozen=True)
class RunSpec:
    """What a model name asks for: the registered model, an adapter kind (or None), a strategy (or None).

    A strategy of None means "the config's ``train.strategy``"; an adapter of None means "the config's
    ``adapter`` section". Registry names are checked where the config is resolved (with the close
    matches); :meth:`parse` checks the form.
    """

    model: str
    adapter: str | None = None
    strategy: str | None = None

    def __post_init__(self) -> None:
        parts = (("model", self.model), ("adapter", self.adapter), ("strategy", self.strategy))
        for field, value in parts:
            if value is None and field != "model":
                continue
            if not isinstance(value, str) or not _PART.fullmatch(value):
                shown = "".join(
                    p if isinstance(p, str) else "?"
                    for p in (
                        self.model,
                        self.adapter and ADAPTER_SEP + str(self.adapter),
                        self.strategy and STRATEGY_SEP + str(self.strategy),
                    )
                )
                raise ConfigError(
                    f"model name {shown!r}: the {field} part {value!r} is not a name (letters, digits, "
                    f"'_', '-', '.'); a model name is {_FORM}"
                )
        if self.adapter is not None and self.adapter not in ADAPTERS:
            raise ConfigError(
                f"model name {str(self)!r}: unknown adapter {self.adapter!r} after '{ADAPTER_SEP}'; "
                f"valid: {', '.join(ADAPTERS)}; a model name is {_FORM}"
            )

    @classmethod
    def parse(cls, name: str) -> RunSpec:
        """``"deepfm+mlora@two_phase"`` -> ``RunSpec("deepfm", "mlora", "two_phase")``; a malformed name raises
        :class:`~polyrec.config.ConfigError` naming it and the expected form."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"model name {name!r} is empty or not a string; a model name is {_FORM}")
        if any(c.isspace() for c in name):
            raise ConfigError(f"model name {name!r} holds white space; a model name is {_FORM}")
        rest, sep, strategy = name.partition(STRATEGY_SEP)
        if sep and STRATEGY_SEP in strategy:
            raise ConfigError(f"model name {name!r} has more than one '{STRATEGY_SEP}'; a model name is {_FORM}")
        if sep and ADAPTER_SEP in strategy:
            named, _, adapter = strategy.partition(ADAPTER_SEP)
            raise ConfigError(
                f"model name {name!r}: the adapter goes before the strategy "
                f"('{rest}{ADAPTER_SEP}{adapter}{STRATEGY_SEP}{named}'); a model name is {_FORM}"
            )
        if sep and not strategy:
            raise ConfigError(f"model name {name!r} has no strategy after '{STRATEGY_SEP}'; a model name is {_FORM}")
        model, plus, adapter = rest.partition(ADAPTER_SEP)
        if plus and ADAPTER_SEP in adapter:
            raise ConfigError(f"model name {name!r} has more than one '{ADAPTER_SEP}'; a model name is {_FORM}")
        if not model:
            raise ConfigError(f"model name {name!r} has no model before '{plus or sep}'; a model name is {_FORM}")
        if plus and not adapter:
            raise ConfigError(f"model name {name!r} has no adapter after '{ADAPTER_SEP}'; a model name is {_FORM}")
        return cls(model, adapter or None, strategy or None)

    def __str__(self) -> str:
        """The canonical name: ``parse(str(spec)) == spec``."""
        return (
            self.model
            + (ADAPTER_SEP + self.adapter if self.adapter else "")
            + (STRATEGY_SEP + self.strategy if self.strategy else "")
        )

    def with_adapter(self, adapter: str | None) -> RunSpec:
        return dataclasses.replace(self, adapter=adapter)

    def with_strategy(self, strategy: str | None) -> RunSpec:
        return dataclasses.replace(self, strategy=strategy)
