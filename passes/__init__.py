"""The pass registry: pipeline names to pass classes, loaded lazily.

Built-in passes are listed in ``BUILTIN`` as ``"module:ClassName"`` strings and imported on
first use. Users add passes with :func:`register_pass` (usable as a class decorator), and other
packages through the ``cimc.passes`` entry-point group (entry name = pass name, value =
``module:ClassName``), discovered on first lookup of a name that is not built in. A name
registered twice is an error that names both sources. A target's lowering passes are not listed
here: each target declares its own (``Target.lowering_passes``), and a name not found otherwise is
looked up among the registered targets' lowering passes.
"""

from __future__ import annotations

from cimc.passmanager import Pass
from cimc.registry import Registry

__all__ = ["BUILTIN", "all_passes", "get_pass", "register_pass"]

BUILTIN: dict[str, str] = {
    "calibrate-adc": "cimc.passes.calibrate_adc:CalibrateAdcPass",
    "fold-constants": "cimc.passes.fold_constants:FoldConstantsPass",
    "fuse-batchnorm": "cimc.passes.fuse_batchnorm:FuseBatchNormPass",
    "legalize-convs": "cimc.passes.legalize_convs:LegalizeConvsPass",
    "map-errors": "cimc.passes.map_errors:MapErrorsPass",
    "quantize": "cimc.passes.quantize:QuantizePass",
    "sparsify": "cimc.passes.sparsify:SparsifyPass",
    "tile": "cimc.passes.tile:TilePass",
}
"""Built-in pass name -> ``module:ClassName``."""



def _lowering_passes() -> list[type[Pass]]:
    """The lowering passes every registered target declares."""
    from cimc.targets import all_targets

    return [p for target in all_targets().values() for p in target.lowering_passes]


_REGISTRY: Registry[Pass] = Registry("pass", Pass, "cimc.passes", BUILTIN, lister="cimc passes",
                                    declared=_lowering_passes)


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register a pass class under ``cls.name``; returns it, so it also works as a decorator."""
    return _REGISTRY.register(cls)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; a ``CimcError`` with a did-you-mean if none is."""
    return _REGISTRY.get(name)


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass (built in, registered, plugins, targets' lowerings) by name, sorted by name."""
    return _REGISTRY.all()
