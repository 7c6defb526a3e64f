"""The pass registry: pipeline names to pass classes, loaded lazily.

Built-in passes are listed in ``BUILTIN`` as ``"module:ClassName"`` strings and imported on
first use. Users add passes with :func:`register_pass` (usable as a class decorator), and other
packages through the ``cimc.passes`` entry-point group (entry name = pass name, value =
``module:ClassName``), discovered on first lookup of a name that is not built in. A name
registered twice is an error that names both sources.
"""

from __future__ import annotations

import difflib
import importlib
import re
from importlib.metadata import entry_points

from cimc.errors import CimcError
from cimc.passmanager import Pass

__all__ = ["BUILTIN", "all_passes", "get_pass", "register_pass"]

BUILTIN: dict[str, str] = {
    "fold-constants": "cimc.passes.fold_constants:FoldConstantsPass",
    "fuse-batchnorm": "cimc.passes.fuse_batchnorm:FuseBatchNormPass",
    "quantize": "cimc.passes.quantize:QuantizePass",
    "sparsify": "cimc.passes.sparsify:SparsifyPass",
    "tile": "cimc.passes.tile:TilePass",
    "lower-npu": "cimc.targets.npu_ops:LowerNpuPass",
    "lower-sram-cim": "cimc.targets.sram_cim_ops:LowerSramCimPass",
}
"""Built-in pass name -> ``module:ClassName``."""

_sources: dict[str, str] = dict(BUILTIN)  # name -> where it comes from, for duplicate messages
_loaded: dict[str, type[Pass]] = {}
_plugins_scanned = False
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class under ``cls.name``; returns it, so it also works as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise CimcError(f"register_pass needs a Pass subclass, got {cls!r}")
    if not _NAME.fullmatch(cls.name or ""):
        raise CimcError(f"pass class {cls.__qualname__} has name {cls.name!r}; "
                        f"set `name: ClassVar[str]` to a kebab-case name such as 'my-pass'")
    _scan_plugins()
    _add(cls.name, f"{cls.__module__}:{cls.__qualname__}")
    _loaded[cls.name] = cls
    return cls


def _add(name: str, source: str) -> None:
    if name in _sources and _sources[name] != source:
        raise CimcError(f"pass name '{name}' is registered twice: by {_sources[name]} and by {source}; "
                        f"rename one of them")
    _sources[name] = source


def _scan_plugins() -> None:
    global _plugins_scanned
    if not _plugins_scanned:
        _plugins_scanned = True
        for ep in entry_points(group="cimc.passes"):
            dist = getattr(ep.dist, "name", "?")
            _add(ep.name, f"{ep.value} (entry point of {dist})")


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; a ``CimcError`` with a did-you-mean if none is."""
    if name in _loaded:
        return _loaded[name]
    if name not in _sources:
        _scan_plugins()
    if name not in _sources:
        close = difflib.get_close_matches(name, list(_sources), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise CimcError(f"unknown pass '{name}'{hint} (`cimc passes` lists them)")
    module, _, attr = _sources[name].split(" ")[0].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CimcError(f"pass '{name}' could not be loaded from {_sources[name]}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Pass)) or cls.name != name:
        raise CimcError(f"{_sources[name]} should be a Pass subclass named '{name}', "
                        f"found {cls!r} named {getattr(cls, 'name', None)!r}")
    _loaded[name] = cls
    return cls


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass (built in, registered, plugins) by name, sorted by name."""
    _scan_plugins()
    return {name: get_pass(name) for name in sorted(_sources)}
