"""Named components: one :class:`Registry` per kind (models, training strategies; retrieval models later).

A registry maps a name to a class (or any object) and a few tags. It refuses a second definition under a
taken name, naming both; an unknown name raises with the close matches and the valid names; tags select a
group (``names(tag="multidomain")``: the benchmark zoo, the sections of ``polyrec models``). A component
registers itself where it is defined, with a decorator, and :func:`import_submodules` imports every module
of a package, so adding a component is adding one file.

This module imports nothing from polyrec: every layer may use it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Entry", "Registry", "UnknownNameError", "import_submodules"]


class UnknownNameError(KeyError):
    """An unknown name (a KeyError whose message prints as written, without KeyError's quoting)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def definition(obj: Any) -> str:
    """Where ``obj`` is defined, as ``module.qualname`` (``polyrec.models.ctr.mlp.MLPModel``)."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{qualname}"


def unknown_name(what: str, name: Any, valid: Iterable[str]) -> UnknownNameError:
    """The error for an unknown ``what`` (``"model"``) called ``name``: the close matches, then every valid
    name (``valid``, listed in the order given)."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listed = ", ".join(valid) if valid else "(none registered)"
    return UnknownNameError(f"unknown {what} {name!r}.{hint} Valid {_plural(what)}: {listed}")


def _plural(word: str) -> str:
    if word.endswith("y") and not word.endswith(("ay", "ey", "oy", "uy")):
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    Attributes:
        name: the name it is registered under (what configs and the command line spell).
        obj: the registered class (or object).
        tags: its tags, in the order given at registration (duplicates dropped).
    """

    name: str
    obj: T
    tags: tuple[str, ...] = ()

    @property
    def definition(self) -> str:
        """``module.qualname`` of :attr:`obj`."""
        return definition(self.obj)

    @property
    def summary(self) -> str:
        """The first line of :attr:`obj`'s docstring ('' without one)."""
        doc = (getattr(self.obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry(Mapping[str, T]):
    """A registry of named components of one kind.

    A read-only mapping from name to the registered object (iterating gives the names, sorted); components
    join with the :meth:`register` decorator.

    Args:
        kind: the kind of component, singular (``"model"``), as messages name it.
        tags: the tags entries may carry, each with a one-line description (``polyrec models`` prints it as
            the heading of the tag's section). A tag outside them is an error, at registration and at lookup,
            so that a misspelt tag cannot silently leave a component out of a group. ``None``: any tag.
        on_register: called as ``on_register(name, obj)`` before an entry is stored (after the duplicate and
            tag checks): to check the object (a model must define ``Config``) or to tell it its name.

    Example:
        >>> widgets = Registry("widget", tags={"round": "round widgets", "square": "square widgets"})
        >>> @widgets.register("wheel", tags=("round",))
        ... class Wheel:
        ...     '''A round widget.'''
        >>> @widgets.register("tile", tags=("square",))
        ... class Tile:
        ...     pass
        >>> widgets["wheel"] is Wheel, widgets.names(), widgets.names(tag="round")
        (True, ['tile', 'wheel'], ['wheel'])
        >>> widgets.entry("wheel").summary
        'A round widget.'
        >>> widgets["whel"]
        Traceback (most recent call last):
        ...
        polyrec.registry.UnknownNameError: unknown widget 'whel'. Did you mean 'wheel'? Valid widgets: tile, wheel
        >>> @widgets.register("wheel")
        ... class Wheel2:
        ...     pass
        Traceback (most recent call last):
        ...
        ValueError: widget name 'wheel' is already registered by polyrec.registry.Wheel; register polyrec.registry.Wheel2 under another name
        >>> widgets.unregister("tile").obj is Tile, "tile" in widgets
        (True, False)
    """

    def __init__(
        self, kind: str, *, tags: Mapping[str, str] | None = None, on_register: Callable[[str, T], None] | None = None
    ) -> None:
        self.kind = kind
        self._tags = dict(tags) if tags is not None else None
        self._on_register = on_register
        self._entries: dict[str, Entry[T]] = {}

    # ------------------------------------------------------------------------------------------ joining
    def register(self, name: str, *, tags: Iterable[str] = ()) -> Callable[[T], T]:
        """Decorator: register the decorated class (or function) as ``name`` with ``tags``; returns it as is.

        A name names one definition: another object under a taken name raises ``ValueError`` naming both.
        The same definition again (its module reloaded: same module and qualified name) replaces itself.
        """

        def deco(obj: T) -> T:
            self.add(name, obj, tags=tags)
            return obj

        return deco

    def add(self, name: str, obj: T, *, tags: Iterable[str] = ()) -> T:
        """Register ``obj`` as ``name`` (what :meth:`register` does, without the decorator); returns ``obj``."""
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding spaces, not {name!r}")
        if isinstance(tags, str):
            raise TypeError(
                f"tags of {self.kind} {name!r} must be a sequence of strings, not the string {tags!r} "
                f"(write tags=({tags!r},))"
            )
        tags = tuple(dict.fromkeys(tags))
        taken = self._entries.get(name)
        if taken is not None and taken.definition != definition(obj):
            raise ValueError(
                f"{self.kind} name {name!r} is already registered by {taken.definition}; register "
                f"{definition(obj)} under another name"
            )
        for tag in tags:
            self._check_tag(tag, error=ValueError, where=f" ({self.kind} {name!r})")
        if self._on_register is not None:
            self._on_register(name, obj)
        self._entries[name] = Entry(name, obj, tags)
        return obj

    def unregister(self, name: str) -> Entry[T]:
        """Remove ``name`` and return its entry (tests that register components clean up with this)."""
        self.entry(name)
        return self._entries.pop(name)

    # ------------------------------------------------------------------------------------------ lookup
    def __getitem__(self, name: str) -> T:
        """The object registered as ``name``; an unknown name raises :class:`UnknownNameError` (a KeyError)
        with the close matches and the valid names."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` of ``name`` (errors as :meth:`__getitem__`)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, sorted(self._entries)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self, tag: str | None = None) -> list[str]:
        """The registered names, sorted; with ``tag``, only those that carry it (an unknown tag raises)."""
        if tag is None:
            return sorted(self._entries)
        self._check_tag(tag)
        return sorted(n for n, e in self._entries.items() if tag in e.tags)

    @property
    def tags(self) -> dict[str, str]:
        """The tags entries may carry with their descriptions (declared ones first, then any other in use,
        with an empty description)."""
        out = dict(self._tags or {})
        for e in self._entries.values():
            for tag in e.tags:
                out.setdefault(tag, "")
        return out

    def _check_tag(self, tag: Any, error: type[Exception] = UnknownNameError, where: str = "") -> None:
        if not isinstance(tag, str) or not tag:
            raise error(f"a {self.kind} tag must be a non-empty string, not {tag!r}{where}")
        if self._tags is not None and tag not in self._tags:
            raise error(str(unknown_name(f"{self.kind} tag", tag, self._tags)) + where)

    # A registry is one place, not a value: equal only to itself (not to a mapping of the same entries),
    # and hashable.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def import_submodules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module and subpackage of ``package`` (its ``__path__``) whose name does not start with
    ``_``, sorted by name, so that each registers itself; returns their full names.

    A package's ``__init__`` calls ``import_submodules(__name__, __path__)``: a component added as a new
    file is registered without editing anything else, in the same order on every machine.
    """
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return [f"{package}.{name}" for name in names]
