"""The target registry: target names to target classes, loaded lazily, and their descriptions.

Each built-in target is one package here with the same modules: ``__init__.py`` (its
:class:`~cimc.target.Target` subclass, which declares the rest to the driver), ``spec.py`` (its frozen
``Spec``), ``ops.py`` (its instruction ops with their executor implementations), ``lowering.py`` (its
lowering pass classes) and ``cost.py`` (``op_cost``). A new target starts as a copy of one folder.

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

import os
from collections.abc import Iterable
from pathlib import Path

from cimc.registry import Registry
from cimc.target import Target

__all__ = ["BUILTIN", "all_targets", "describe_target", "describe_targets", "dump_spec", "get_target", "load_target",
           "register_target"]

BUILTIN: dict[str, str] = {
    "memristor": "cimc.targets.memristor:MemristorTarget",
    "npu": "cimc.targets.npu:NpuTarget",
    "racetrack": "cimc.targets.racetrack:RacetrackTarget",
    "sram-cim": "cimc.targets.sram_cim:SramCimTarget",
}
"""Built-in target name -> ``module:ClassName``."""

_REGISTRY: Registry[Target] = Registry("target", Target, "cimc.targets", BUILTIN, lister="cimc targets",
                                      list_names=True, cutoff=0.5)


def register_target(cls: type[Target]) -> type[Target]:
    """Register a target class under ``cls.name``; returns it, so it also works as a decorator."""
    return _REGISTRY.register(cls)


def get_target(name: str) -> type[Target]:
    """The target class registered as ``name``; a ``CimcError`` with a did-you-mean if none is."""
    return _REGISTRY.get(name)


def all_targets() -> dict[str, type[Target]]:
    """Every registered target (built in, registered, plugins) by name, sorted by name."""
    return _REGISTRY.all()


def load_target(name: str, spec: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> Target:
    """The target ``name`` with its spec read from the TOML file ``spec`` (a path, whatever characters
    it holds; defaults if ``None``) and then ``key=value`` overrides applied (``["adc_bits=6"]``, as
    ``--spec-set`` gives them)."""
    cls = get_target(name)
    s = cls.Spec() if spec is None else cls.Spec.from_toml(Path(spec))
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
