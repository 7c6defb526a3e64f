"""memristor instructions: ``xbar.load`` and ``xbar.mvm``, their definitions and executor implementations.

The instructions are the shared array model's (:mod:`cimc.cim.machine`, where their exact meaning is written;
``docs/array-model.md`` for users). A layer's weights are one program constant, its *cells*: the sliced cells of
the layer's ``[G, K, N]`` weight matrix, packed per weight (``u8 [G, K, N, bytes]``). The ``tiles`` attribute of
both instructions is part of the layer's tile map: which part of the matrix each crossbar holds, and at which
physical rows and columns.

``xbar.load(cells) -> token: i32 []``  attrs ``tiles``, ``cell_bits``, ``full_scale``: programs each tile's cells
    into its crossbar at its placement, as the device holds them (conductance mapping, programming variation,
    stuck cells, drift, IR drop). The token orders the ``xbar.mvm`` reading them after the write.
``xbar.mvm(x: u8, token, acc: i32?) -> i32``  attrs :data:`cimc.cim.ops.MVM_ATTRS`: the tiles' analog MVMs (inputs
    ``dac_bits`` at a time, ``rows_per_op`` rows per conversion, a differential pair's currents subtracted and
    converted once with ``sense = pairs``, read noise per cell read, every partial sum through the ADC), shifted
    and added by slice significance, summed into ``acc``. With an ideal crossbar and a lossless ADC the result is
    the exact integer product.
"""

from __future__ import annotations

from cimc.cim.machine import load, mvm
from cimc.cim.ops import LOAD_ATTRS, MVM_ATTRS, load_problem, load_type, mvm_problem, mvm_type
from cimc.ir.opdef import op_def

__all__ = ["OPS", "xbar_load", "xbar_mvm"]


@op_def("xbar.load", infer=load_type, side_effects=True, attrs=LOAD_ATTRS, verify=load_problem)
def xbar_load(ctx, cells):
    """Program each tile's cells into its crossbar at its placement; the result is a token (tiles written)."""
    return load(ctx.state, cells, ctx.attrs)


@op_def("xbar.mvm", inputs=(2, 3), infer=mvm_type, attrs=MVM_ATTRS, accumulator=2, verify=mvm_problem,
        partial_sums=True)
def xbar_mvm(ctx, x, token, acc=None):
    """The tiles' analog MVMs of x on the cells their crossbars hold, ADC, shift-add, summed into acc."""
    return mvm(ctx.state, ctx.rng, x, acc, ctx.attrs, ctx.donated, ctx.partial)


OPS = (xbar_load, xbar_mvm)
"""The memristor instructions, as the target lists them."""
