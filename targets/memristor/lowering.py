"""The memristor lowering pass ``lower-memristor``: tiled matrix ops to ``xbar.load`` / ``xbar.mvm`` rounds.

The rounds are the shared array lowering's (:mod:`cimc.cim.lowering`): each node with ``tile.map`` becomes
``vec.im2col`` (q.conv) -> per round of tiles on distinct crossbars one ``xbar.load`` (with the spec's
``full_scale``: which level a column's ``g_max`` stands for) and one ``xbar.mvm`` summing into the previous
round's result -> ``Add`` bias -> ``vec.col2im`` (q.conv); layers sharing a weight's tiles (``tile.shared``)
read the first one's loads. Signed weights are the spec's choice: ``differential``
tiles (each tile all slices of its channels) are sensed as pairs, one signed conversion per pair; ``offset``
tiles are read column by column. A tile map in another encoding is an error naming the fix. The ADC of every
``xbar.mvm`` is the worst-case range at the resolved ``adc_bits`` (lossless when 0 or ideal). With
``allow_reload = false`` a model whose tiles outnumber the crossbars is rejected. A lossy ADC, or a device that
is not ideal, is recorded in ``graph.metadata[LOSSY]``; a chip that does not fit the program's crossbars is
an error here, before any run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cimc.cim.lowering import Instructions, check_fits, lower_nodes, tiled_nodes
from cimc.cim.machine import DEVICE
from cimc.errors import PassError
from cimc.ir.core import Graph
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import LOSSY, Spec, Target, lossless_adc_bits
from cimc.targets.memristor.spec import MemristorSpec

__all__ = ["LowerMemristorPass"]


@dataclass(frozen=True)
class LowerMemristorPass(Pass):
    """Lower every tiled matrix op to crossbar load/MVM rounds (module docstring)."""

    name: ClassVar[str] = "lower-memristor"
    spec_type: ClassVar[type[Spec]] = MemristorSpec
    adc_bits: int | None = option(None, "ADC resolution of every xbar.mvm, 1 to 24; none = the spec's (lossless when "
                                        "0).")

    def check(self, target: Target | None) -> None:
        """A memristor target, and ``adc-bits`` 1 to 24."""
        super().check(target)
        self.option_limit("adc_bits", self.adc_bits, 1, 24, "ADC resolution")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Lower each tiled node; record lossy ADCs and a non-ideal device."""
        from cimc.targets.memristor import resolved_adc_bits

        target = ctx.require_target(self)
        target.register_ops()  # the instructions it emits
        spec = target.spec
        assert isinstance(spec, MemristorSpec)
        if self.adc_bits is not None and spec.ideal:
            raise PassError(f"{self.name}{{adc-bits={self.adc_bits}}} with ideal = true: the ideal crossbar's ADC is "
                            f"lossless; drop the option or set --spec-set ideal=false")
        adc_bits = resolved_adc_bits(spec) if self.adc_bits is None else self.adc_bits
        pairs = spec.signed == "differential"
        nodes = tiled_nodes(graph, self.name, "crossbars")
        for n in nodes:
            enc = n.attrs["tile.encoding"]
            if enc != spec.signed:
                other = enc if enc in ("differential", "offset") else "offset"
                raise PassError(f"{n.op} {n.name!r} is tiled in {enc} encoding, the memristor spec holds signed "
                                f"weights as {spec.signed}: run tile{{encoding={spec.signed}}} (the default "
                                f"pipeline does), or set --spec-set signed={other}")
            t = n.attrs["tile.map"]
            if pairs and ((t.column("s0") != 0).any() or (t.column("s1") != t.slices).any()):
                raise PassError(f"{n.op} {n.name!r}: a differential pair needs both its columns in one crossbar, "
                                f"but its {t.slices} slices per weight are split over tiles (cols = {spec.cols}); "
                                f"use wider cells (--spec-set cell_bits=...) or signed=offset")
        if not spec.allow_reload:
            check_fits(graph, nodes, "memristor", spec.crossbars, spec.rows, spec.cols, "crossbars")
        isa = Instructions("xbar.load", "xbar.mvm", spec.dac_bits, "pairs" if pairs else "columns",
                           {"full_scale": spec.full_scale}, self.name)
        lossy = set()
        for node in nodes:
            a = node.attrs
            need = lossless_adc_bits(int(a["tile.rows_per_op"]), spec.dac_bits, int(a["tile.cell_bits"])) + pairs
            if adc_bits < need:
                lossy.add(f"adc_bits = {adc_bits} < {need}")
        lower_nodes(graph, nodes, isa, adc_bits)
        notes = ["ADC: " + ", ".join(sorted(lossy)) + " bits (lossless)"] if lossy else []
        device = target.machine(ctx.seed).get(DEVICE)
        if device is not None and nodes:
            maps = [n.attrs["tiles"] for n in graph.nodes if n.op == "xbar.load"]
            device.check(max(t.arrays for t in maps), *maps[0].physical)
            notes.append(f"device: {_describe(spec)}")
        if notes:
            graph.metadata[LOSSY] = "memristor " + "; ".join(notes)
        graph.remove_dead()
        return PassResult(bool(nodes))


def _describe(s: Spec) -> str:
    """The non-idealities a memristor spec switches on, in a few words."""
    assert isinstance(s, MemristorSpec)
    parts = []
    if s.noise:
        parts.append(f"programming variation {s.prog_model} x {s.prog_scale:g}" if s.prog_scale else "")
        parts.append(f"read noise {s.read_noise:g} g_max" if s.read_noise else "")
        parts.append(f"drift {s.drift} at {s.t_inference:g} s" + (" compensated" if s.drift_compensation else "")
                     if s.drift != "none" and s.t_inference > 0 else "")
    parts.append(f"stuck cells p_sa0 = {s.p_sa0:g}, p_sa1 = {s.p_sa1:g}" if s.p_sa0 or s.p_sa1 else "")
    parts.append(f"IR drop r_wire = {s.r_wire:g} ohm" if s.r_wire else "")
    parts.append(f"chip file {s.chip}" if s.chip else "")
    return ", ".join(p for p in parts if p) or "ideal"
