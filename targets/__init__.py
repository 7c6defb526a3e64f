"""The target registry: target names to target classes, loaded lazily, and their descriptions.

Built-in targets are listed in ``BUILTIN`` as ``"module:ClassName"`` strings and imported on first
use. Users add targets with :func:`register_target` (usable as a class decorator), and other
packages through the ``cimc.targets`` entry-point group (entry name = target name, value =
``module:ClassName``), discovered on first lookup of a name that is not built in. A name
registered twice is an error that names both sources.

:func:`describe_targets` / :func:`describe_target` render ``cimc targets``; :func:`dump_spec` gives
a target's default spec as TOML (``cimc targets --dump NAME``); :func:`load_target` builds a
target from its name, an optional TOML spec and ``key=value`` overrides.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Iterable
from importlib.metadata import entry_points

from cimc.errors import CimcError
from cimc.target import Target

__all__ = ["BUILTIN", "all_targets", "describe_target", "describe_targets", "dump_spec", "get_target", "load_target",
           "register_target"]

BUILTIN: dict[str, str] = {
    "npu": "cimc.targets.npu:NpuTarget",
    "sram-cim": "cimc.targets.sram_cim:SramCimTarget",
}
"""Built-in target name -> ``module:ClassName``."""

_sources: dict[str, str] = dict(BUILTIN)  # name -> where it comes from, for duplicate messages
_loaded: dict[str, type[Target]] = {}
_plugins_scanned = False
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def register_target(cls: type[Target]) -> type[Target]:
    """Register a target class under ``cls.name``; returns it, so it also works as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise CimcError(f"register_target needs a Target subclass, got {cls!r}")
    if not _NAME.fullmatch(cls.name or ""):
        raise CimcError(f"target class {cls.__qualname__} has name {cls.name!r}; "
                        f"set `name: ClassVar[str]` to a kebab-case name such as 'my-target'")
    _scan_plugins()
    _add(cls.name, f"{cls.__module__}:{cls.__qualname__}")
    _loaded[cls.name] = cls
    return cls


def _add(name: str, source: str) -> None:
    if name in _sources and _sources[name] != source:
        raise CimcError(f"target name '{name}' is registered twice: by {_sources[name]} and by {source}; "
                        f"rename one of them")
    _sources[name] = source


def _scan_plugins() -> None:
    global _plugins_scanned
    if not _plugins_scanned:
        _plugins_scanned = True
        for ep in entry_points(group="cimc.targets"):
            dist = getattr(ep.dist, "name", "?")
            _add(ep.name, f"{ep.value} (entry point of {dist})")


def get_target(name: str) -> type[Target]:
    """The target class registered as ``name``; a ``CimcError`` with a did-you-mean if none is."""
    if name in _loaded:
        return _loaded[name]
    if name not in _sources:
        _scan_plugins()
    if name not in _sources:
        close = difflib.get_close_matches(name, list(_sources), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise CimcError(f"unknown target '{name}'{hint} (`cimc targets` lists them: {', '.join(sorted(_sources))})")
    module, _, attr = _sources[name].split(" ")[0].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CimcError(f"target '{name}' could not be loaded from {_sources[name]}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Target)) or cls.name != name:
        raise CimcError(f"{_sources[name]} should be a Target subclass named '{name}', "
                        f"found {cls!r} named {getattr(cls, 'name', None)!r}")
    _loaded[name] = cls
    return cls


def all_targets() -> dict[str, type[Target]]:
    """Every registered target (built in, registered, plugins) by name, sorted by name."""
    _scan_plugins()
    return {name: get_target(name) for name in sorted(_sources)}


def load_target(name: str, spec: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> Target:
    """The target ``name`` with its spec read from TOML (text or file; defaults if ``None``) and then
    ``key=value`` overrides applied (``["adc_bits=6"]``, as ``--spec-set`` gives them)."""
    cls = get_target(name)
    s = cls.Spec() if spec is None else cls.Spec.from_toml(spec)
    overrides = list(overrides)
    return cls(spec=s.with_overrides(overrides) if overrides else s)


def describe_target(name: str) -> str:
    """Plain text for one target with its default spec: name, description, every parameter's value, unit, doc."""
    return get_target(name)().describe()


def describe_targets() -> str:
    """Plain text for every registered target (``cimc targets``), separated by blank lines."""
    return "\n\n".join(cls().describe() for cls in all_targets().values())


def dump_spec(name: str) -> str:
    """The default spec of target ``name`` as commented TOML (``cimc targets --dump NAME``)."""
    return get_target(name).Spec().to_toml()
