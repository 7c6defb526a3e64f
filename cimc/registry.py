"""A lazy name -> class registry with entry-point plugins: what the pass and target registries share.

Built-in entries are ``"module:ClassName"`` strings imported on first use; ``register`` adds a class
(usable as a decorator); other packages add entries through an entry-point group (entry name =
registered name, value = ``module:ClassName``), scanned on the first lookup of a name that is not
built in. A name registered twice from different places is an error naming both.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from cimc.errors import CimcError, quote

__all__ = ["Registry"]

T = TypeVar("T")
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


class Registry(Generic[T]):
    """Classes of one kind (passes, targets) by kebab-case ``name``."""

    def __init__(self, kind: str, base: type[T], group: str, builtin: Mapping[str, str], *,
                 lister: str, list_names: bool = False, cutoff: float = 0.6,
                 declared: Callable[[], Iterable[type[T]]] | None = None) -> None:
        self.kind, self.base, self.group, self.lister = kind, base, group, lister
        self.list_names, self.cutoff, self.declared = list_names, cutoff, declared
        self._sources: dict[str, str] = dict(builtin)  # name -> where it comes from
        self._loaded: dict[str, type[T]] = {}
        self._scanned = False

    def register(self, cls: type[T]) -> type[T]:
        """Register ``cls`` under ``cls.name``; returns it, so it also works as a decorator."""
        kind, base = self.kind, self.base.__name__
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise CimcError(f"register_{kind} needs a {base} subclass, got {cls!r}")
        name = getattr(cls, "name", "")
        if not _NAME.fullmatch(name or ""):
            raise CimcError(f"{kind} class {cls.__qualname__} has name {name!r}; "
                            f"set `name: ClassVar[str]` to a kebab-case name such as 'my-{kind}'")
        self._scan()
        self._add(name, f"{cls.__module__}:{cls.__qualname__}")
        self._loaded[name] = cls
        return cls

    def _add(self, name: str, source: str) -> None:
        if name in self._sources and self._sources[name] != source:
            raise CimcError(f"{self.kind} name '{name}' is registered twice: by {self._sources[name]} and by "
                            f"{source}; rename one of them")
        self._sources[name] = source

    def _scan(self) -> None:
        if not self._scanned:
            self._scanned = True
            for ep in entry_points(group=self.group):
                self._add(ep.name, f"{ep.value} (entry point of {getattr(ep.dist, 'name', '?')})")

    def _declare(self) -> None:
        for cls in self.declared() if self.declared is not None else ():
            if self._loaded.get(getattr(cls, "name", "")) is not cls:
                self.register(cls)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; a ``CimcError`` with a did-you-mean if none is."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._sources:
            self._scan()
        if name not in self._sources:
            self._declare()
        if name not in self._sources:
            close = difflib.get_close_matches(name, list(self._sources), n=1, cutoff=self.cutoff)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            names = f": {', '.join(sorted(self._sources))}" if self.list_names else ""
            raise CimcError(f"unknown {self.kind} {quote(name)}{hint} (`{self.lister}` lists them{names})")
        source = self._sources[name]
        module, _, attr = source.split(" ")[0].partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CimcError(f"{self.kind} '{name}' could not be loaded from {source}: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or getattr(cls, "name", None) != name:
            raise CimcError(f"{source} should be a {self.base.__name__} subclass named '{name}', "
                            f"found {cls!r} named {getattr(cls, 'name', None)!r}")
        self._loaded[name] = cls
        return cls

    def all(self) -> dict[str, type[T]]:
        """Every registered class (built in, registered, plugins, declared) by name, sorted by name."""
        self._scan()
        self._declare()
        return {name: self.get(name) for name in sorted(self._sources)}
