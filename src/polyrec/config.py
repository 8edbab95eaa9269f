"""Strict configuration: dataclasses are the source of truth, YAML and CLI flags only serialise them.

Every component owns a frozen dataclass config. :func:`from_dict` builds one from plain data and rejects
unknown keys and wrong types with a message naming the key, the value seen and the valid choices;
:func:`apply_overrides` applies dotted ``key.sub=value`` overrides (the CLI's ``--set``) to a nested
config.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-3
    ...     name: str = "adam"
    >>> from_dict(Opt, {"lr": 0.01})
    Opt(lr=0.01, name='adam')
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key, the value and the fix.

    ``key`` is set when the error was raised for one field of a config dataclass whose full dotted path
    was not known where it was raised (a ``__post_init__``); :func:`from_dict` prefixes the path.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def field_error(key: str, value: Any, allowed: str) -> ConfigError:
    """The error for field ``key`` (relative to its dataclass) holding ``value``; ``allowed`` says what may.

    Raise it from a config dataclass's ``__post_init__`` for checks that involve several fields;
    :func:`from_dict` turns the key into the full dotted path (``train.lr``).
    """
    return ConfigError(f"{key}: {value!r} is not allowed; {allowed}", key=key)


# ------------------------------------------------------------------------------------- declared checks


@dataclasses.dataclass(frozen=True)
class Check:
    """What values a config field allows: bounds, a closed set, a rule for each item of a list, or a
    function. ``None`` always passes (an optional field's "unset").

    ``choices`` may be a callable returning the allowed values (a set known only at run time, such as the
    devices of this machine); ``rule`` is a callable returning an error text, or None when the value is
    fine.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: Any = None
    items: Check | None = None
    rule: Any = None

    def describe(self) -> str:
        parts = []
        for op, bound in (("> ", self.gt), (">= ", self.ge), ("< ", self.lt), ("<= ", self.le)):
            if bound is not None:
                parts.append(f"{op}{bound:g}")
        text = "must be " + " and ".join(parts) if parts else ""
        if self.choices is not None:
            text = f"must be one of {', '.join(repr(c) for c in self._choices())}"
        if self.items is not None:
            text = "every item " + self.items.describe()
        return text

    def _choices(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def error(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if value is None:
            return None
        if self.items is not None:
            for i, item in enumerate(value):
                err = self.items.error(item)
                if err is not None:
                    return f"item {i} ({item!r}) is not allowed; {self.items.describe()}"
        if self.choices is not None and value not in self._choices():
            return f"{value!r} is not allowed; {self.describe()}"
        if any(b is not None for b in (self.gt, self.ge, self.lt, self.le)):
            bad = isinstance(value, float) and math.isnan(value)
            bad = bad or (self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
            bad = bad or (self.lt is not None and not value < self.lt) or (self.le is not None and not value <= self.le)
            if bad:
                return f"{value!r} is not allowed; {self.describe()}"
        if self.rule is not None:
            return self.rule(value)
        return None


CHECK_KEY = "polyrec_check"


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: Any = None,
    items: Check | None = None,
    rule: Any = None,
) -> Any:
    """A dataclass field with the values it allows declared next to its default.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Opt:
        ...     lr: float = param(1e-3, gt=0)
        >>> from_dict(Opt, {"lr": -1})
        Traceback (most recent call last):
        ...
        polyrec.config.ConfigError: lr: -1.0 is not allowed; must be > 0
    """
    check = Check(gt=gt, ge=ge, lt=lt, le=le, choices=choices, items=items, rule=rule)
    kwargs: dict[str, Any] = {"metadata": {CHECK_KEY: check}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def field_check(cls_or_obj: Any, name: str) -> Check | None:
    """The :class:`Check` declared for field ``name`` of a config dataclass (None: no declared check)."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get(CHECK_KEY)
    raise KeyError(name)


def validate(obj: Any, path: str = "") -> Any:
    """Check every declared field of the config dataclass ``obj`` (and of nested config dataclasses);
    the first value not allowed raises :class:`ConfigError` naming the dotted key, the value and what
    is allowed. Returns ``obj``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        check = f.metadata.get(CHECK_KEY)
        if check is not None:
            err = check.error(value)
            if err is not None:
                raise ConfigError(f"{key}: {err}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, key)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    validate(item, f"{key}[{i}]")
    return obj


def _close(name: str, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers (list -> tuple)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:  # try the next member of the union
                errors.append(str(exc))
        raise ConfigError(f"{path}: value {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: value {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path=path)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, f"{path}.key"): _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`.

    Args:
        cls: a dataclass type.
        data: plain mapping (from YAML, JSON or CLI overrides). Missing keys take the defaults.
        path: dotted prefix used in error messages.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"{path or cls.__name__}: expected a mapping of {cls.__name__} keys, got {data!r}"
            f"{'; set one key with --set ' + path + '.KEY=VALUE' if path else ''}"
        )
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key {unknown[0]!r}{where} ({cls.__name__}).{_close(unknown[0], fields)}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None
    except ConfigError as exc:
        if exc.key is not None and path:  # raised for one field by __post_init__: name its full path
            raise ConfigError(f"{path}.{exc}", key=None) from None
        raise
    return validate(obj, path)


def to_dict(obj: Any) -> Any:
    """Plain, JSON-serialisable data of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML (``1e-3`` -> float)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (for example train.lr=1e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(
            f"override {text!r}: the value {raw!r} is not valid YAML ({problem}); quote strings and "
            "close brackets, for example model.hidden_units=[64,32]"
        ) from None
    # YAML reads "1e-3" as a string (it wants "1.0e-3"); accept the common spelling.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested plain dict (copy); validation happens in :func:`from_dict`."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                node[k] = node.get(k, {})
                if not isinstance(node[k], dict):
                    raise ConfigError(f"override {text!r}: {k!r} is not a section")
            node = node[k]
        node[keys[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a plain dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data
