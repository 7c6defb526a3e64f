"""The sram-cim lowering pass ``lower-sram-cim``: tiled matrix ops to ``sram.load`` / ``sram.mvm`` rounds.

The rounds are the shared array lowering's (:mod:`cimc.cim.lowering`): each node with ``tile.map`` becomes
``vec.im2col`` (q.conv) -> per round of tiles on distinct macros one ``sram.load`` and one ``sram.mvm``
summing into the previous round's result -> ``Add`` bias -> ``vec.col2im`` (q.conv); layers sharing a weight's
tiles (``tile.shared``) read the first one's loads. With
``allow_reload = false`` a model whose tiles outnumber the macros is rejected, naming its weight cells and
the capacity. The ADC of every ``sram.mvm`` is the worst-case range at the pass's ``adc-bits``. A lossy ADC
or a device that is not ideal (stuck cells, read noise) is recorded in ``graph.metadata[LOSSY]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cimc.cim.lowering import Instructions, check_fits, lower_nodes, tiled_nodes
from cimc.ir.core import Graph
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import LOSSY, Spec, Target, lossless_adc_bits
from cimc.targets.sram_cim.spec import SramCimSpec

__all__ = ["LowerSramCimPass"]


@dataclass(frozen=True)
class LowerSramCimPass(Pass):
    """Lower tiled q.conv/q.gemm/q.matmul nodes into sram.load/sram.mvm rounds and vec ops."""

    name: ClassVar[str] = "lower-sram-cim"
    spec_type: ClassVar[type[Spec]] = SramCimSpec
    adc_bits: int | None = option(None, "ADC resolution, 1 up to the target's adc_bits (a coarser conversion "
                                        "of the same ADC); none = the target's.")

    def check(self, target: Target | None) -> None:
        """An sram-cim target, and an ``adc-bits`` its ADCs can give."""
        super().check(target)  # so the target is an sram-cim one
        spec = target.spec if target is not None else None
        if isinstance(spec, SramCimSpec):
            self.option_limit("adc_bits", self.adc_bits, 1, spec.adc_bits,
                              f"the target's ADCs have adc_bits = {spec.adc_bits}; a finer ADC is a different "
                              f"spec: --spec-set adc_bits=N")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Replace every tiled node of ``graph`` by its instruction sequence; an array op with a constant
        weight but no tile map is an error (``tile`` must run first). A lossy ADC, stuck cells or read
        noise are recorded in ``graph.metadata[LOSSY]``."""
        target = ctx.require_target(self)
        target.register_ops()  # the instructions it emits
        spec = target.spec
        assert isinstance(spec, SramCimSpec)
        adc_bits = spec.adc_bits if self.adc_bits is None else self.adc_bits
        nodes = tiled_nodes(graph, self.name, "macros")
        if not spec.allow_reload:
            check_fits(graph, nodes, "sram-cim", spec.macros, spec.rows, spec.cols, "macros")
        lossy = set()
        for node in nodes:
            a = node.attrs
            need = lossless_adc_bits(int(a["tile.rows_per_op"]), spec.dac_bits, int(a["tile.cell_bits"]))
            if adc_bits < need:
                lossy.add(f"adc_bits = {adc_bits} < {need}")
        lower_nodes(graph, nodes, Instructions("sram.load", "sram.mvm", spec.dac_bits, pass_name=self.name), adc_bits)
        notes = ["ADC: " + ", ".join(sorted(lossy)) + " bits (lossless)"] if lossy else []
        chip = target.chip(ctx.seed)
        if chip is not None and chip.stuck.any():
            rates = chip.rates()
            notes.append(f"stuck cells: {100 * rates['sa0']:.3g} % at 0, {100 * rates['sa1']:.3g} % at 1")
        if spec.read_noise:
            notes.append(f"read noise {spec.read_noise} LSB")
        if notes:
            graph.metadata[LOSSY] = "sram-cim " + "; ".join(notes)
        graph.remove_dead()
        return PassResult(bool(nodes))
