"""sram-cim instructions: ``sram.load`` and ``sram.mvm``, their definitions and executor implementations.

The instructions are the shared array model's (:mod:`cimc.cim.machine`, where their exact meaning is
written; ``docs/array-model.md`` for users). A layer's weights are one program constant, its *cells*:
the bit-sliced cells of the layer's ``[G, K, N]`` weight matrix, packed per weight (``u8 [G, K, N,
bytes]``, :meth:`cimc.cim.encoding.Encoding.pack`). The ``tiles`` attribute of both instructions is
part of the layer's tile map (:class:`cimc.cim.tilemap.TileMap`): which part of the matrix each
macro holds, and at which physical rows and columns.

``sram.load(cells) -> token: i32 []``  attrs ``tiles``, ``cell_bits``: writes each tile's cells into
    its macro at its placement (machine state, a side effect). The token (the number of tiles written)
    orders the ``sram.mvm`` reading them after the write.
``sram.mvm(x: u8, token, acc: i32?) -> i32``  attrs :data:`cimc.cim.ops.MVM_ATTRS`: the tiles'
    bit-serial MVMs on the cells their macros hold (inputs ``dac_bits`` at a time, ``rows_per_op``
    physical rows per conversion, every partial sum through the ADC of ``adc_bits`` with its range),
    shifted and added by slice significance, summed into ``acc``. With a lossless ADC and an ideal
    device the result is the exact integer product, whatever the placement.
"""

from __future__ import annotations

from cimc.cim.machine import load, mvm
from cimc.cim.ops import LOAD_ATTRS, MVM_ATTRS, load_problem, load_type, mvm_problem, mvm_type
from cimc.ir.opdef import op_def

__all__ = ["OPS", "sram_load", "sram_mvm"]


@op_def("sram.load", infer=load_type, side_effects=True, attrs=LOAD_ATTRS, verify=load_problem)
def sram_load(ctx, cells):
    """Write each tile's cells into its macro at its placement; the result is a token (tiles written)."""
    return load(ctx.state, cells, ctx.attrs)


@op_def("sram.mvm", inputs=(2, 3), infer=mvm_type, attrs=MVM_ATTRS, accumulator=2, verify=mvm_problem,
        partial_sums=True)
def sram_mvm(ctx, x, token, acc=None):
    """The tiles' bit-serial MVMs of x on the cells their macros hold, ADC, shift-add, summed into acc."""
    return mvm(ctx.state, ctx.rng, x, acc, ctx.attrs, ctx.donated, ctx.partial)


OPS = (sram_load, sram_mvm)
"""The sram-cim instructions, as the target lists them."""
