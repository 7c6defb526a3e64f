"""The array instructions' schema: their attributes, type rules and checks (a target defines its load and
MVM instructions with these; :mod:`cimc.cim.machine` gives their meaning).

A load takes the layer's packed cells ``u8 [G, K, N, bytes]`` and yields an i32 token; an MVM takes
``x: u8`` (layout ``rows``: ``[..., K]``; layout ``cols``: ``[G, N, K, L]`` from ``vec.im2col``), the
token and an optional i32 accumulator, and yields i32 ``[..., channels]`` or ``[N, channels, L]``.
Beyond types, the checks: the ``tiles`` attribute is a tile map with one tile per array; an MVM's
significances match the map's slices, ``rows_per_op`` fits the physical rows, every ``skip`` pair
names one of its tiles and blocks, ``sense = pairs`` has a differential encoding with whole tiles (a pair's
columns complemented together),
and the ADC attributes are a valid :class:`cimc.cim.adc.Adc` for its tiles and columns.
"""

from __future__ import annotations

import numpy as np

from cimc.cim.adc import ROUNDINGS, Adc
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError, VerifyError
from cimc.ir.core import Node
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext
from cimc.ir.types import DType, TensorType

__all__ = ["FULL_SCALES", "LAYOUTS", "LOAD_ATTRS", "MVM_ATTRS", "SENSES", "load_problem", "load_type", "mvm_problem",
           "mvm_type"]

LAYOUTS = ("rows", "cols")
SENSES = ("columns", "pairs")
FULL_SCALES = ("cell", "layer", "column")

_TILES = AttrSpec("tiles", REQUIRED, "the tiles this op covers: part of the layer's tile map (cimc.cim.TileMap), "
                                     "with their placement")
LOAD_ATTRS = {"tiles": _TILES, "cell_bits": AttrSpec("int", 1, "bits per cell of the packed cells", lo=1, hi=8),
              "full_scale": AttrSpec("str", "cell", "the level a column's top device state stands for (an analog "
                                                    "device's conductance mapping): cell (2^cell_bits - 1), layer "
                                                    "(the layer's largest level of the column's slice) or column "
                                                    "(the column's largest level)", choices=FULL_SCALES)}
"""Attributes of a load instruction."""
MVM_ATTRS = {
    "tiles": _TILES,
    "layout": AttrSpec("str", "rows", "rows: x [..., K] -> [..., channels]; cols: x [G, N, K, L] -> [N, channels, L]",
                       choices=LAYOUTS),
    "channels": AttrSpec("int", REQUIRED, "output channels of the layer (all groups)", lo=1),
    "significance": AttrSpec("ints", REQUIRED, "signed significance of each slice of a weight", lo=-(1 << 31),
                             hi=1 << 31),
    "offset": AttrSpec("int", 0, "offset subtracted per weight (offset encoding): y -= offset * sum(x)", lo=0),
    "rows_per_op": AttrSpec("int", REQUIRED, "word lines on at once (a physical row block)", lo=1),
    "dac_bits": AttrSpec("int", 1, "input bits per pass", lo=1, hi=8),
    "act_bits": AttrSpec("int", 8, "bits of x", lo=1, hi=8),
    "cell_bits": AttrSpec("int", 1, "bits per cell", lo=1, hi=8),
    "adc_bits": AttrSpec("int", REQUIRED, "ADC resolution", lo=1, hi=24),
    "adc_step": AttrSpec("tensor", None, "ADC step (a power of two) per tile and column group, [] or [T, groups]; "
                                         "none: the worst-case range (cimc.cim.adc)"),
    "adc_offset": AttrSpec("tensor", None, "ADC range offset, shaped like adc_step; none: the worst-case range's"),
    "adc_group": AttrSpec("int", 0, "physical columns sharing one ADC range (0: the whole array)", lo=0),
    "adc_rounding": AttrSpec("str", "half-even", "ADC rounding: half-even or floor", choices=ROUNDINGS),
    "sense": AttrSpec("str", "columns", "columns: each column's partial sum is converted; pairs: a differential "
                                        "encoding's positive and negative column of each slice are sensed as one "
                                        "signed partial sum and converted once", choices=SENSES),
    "skip": AttrSpec("tensor", np.zeros((0, 2), np.int64), "(tile, physical row block) pairs not driven"),
}
"""Attributes of an MVM instruction (module docstring)."""


def _tiles_problem(node: Node) -> str | None:
    tiles = node.attrs.get("tiles")
    if not isinstance(tiles, TileMap):
        return f"attribute 'tiles' must be a tile map (tiles<...> [...]), is a {type(tiles).__name__}"
    if not len(tiles):
        return "its tile map holds no tiles"
    arrays = tiles.column("array")
    if len(np.unique(arrays)) != len(arrays):
        values, counts = np.unique(arrays, return_counts=True)
        return f"two of its tiles are on array {int(values[counts > 1][0])} (one tile per array per instruction)"
    return None


def load_problem(node: Node) -> str | None:
    """What is wrong with a load instruction beyond its types (its tile map's own checks run apart)."""
    return _tiles_problem(node)


def load_type(ctx: InferContext) -> list[TensorType]:
    """Type rule of a load: packed u8 cells ``[G, K, N, bytes]`` of the map's matrix -> an i32 token."""
    cells = ctx.types[0]
    tiles = ctx.attrs.get("tiles")
    if cells is None or cells.dtype is not DType.u8 or (cells.shape is not None and len(cells.shape) != 4):
        raise VerifyError(f"{ctx.node.op}: the cells must be packed u8 [G, K, N, bytes], are {cells}")
    if isinstance(tiles, TileMap) and cells.shape is not None and all(isinstance(d, int) for d in cells.shape[:3]) \
            and tuple(cells.shape[:3]) != tiles.matrix:
        raise VerifyError(f"{ctx.node.op}: the cells are {list(cells.shape)}, its tile map is of a "
                          f"{list(tiles.matrix)} weight matrix")
    return [TensorType(DType.i32, ())]


def mvm_problem(node: Node) -> str | None:
    """What is wrong with an MVM instruction's attributes (the tiles' skips, the ADC, the slices)."""
    why = _tiles_problem(node)
    if why:
        return why
    a, tiles = node.attrs, node.attrs["tiles"]
    if a.get("layout", "rows") not in LAYOUTS:
        return f"layout={a['layout']!r} is not one of {', '.join(LAYOUTS)}"
    if len(a["significance"]) != tiles.slices:
        return f"{len(a['significance'])} significances for the {tiles.slices} slices of its tile map"
    sense = a.get("sense", "columns")
    if sense not in SENSES:
        return f"sense={sense!r} is not one of {', '.join(SENSES)}"
    if sense == "pairs":
        sig, half = list(a["significance"]), tiles.slices // 2
        if tiles.slices % 2 or sig[half:] != [-v for v in sig[:half]]:
            return f"sense=pairs needs a differential encoding (slices s and s + S/2 of opposite significance), " \
                   f"the significances are {sig}"
        if (tiles.column("s0") != 0).any() or (tiles.column("s1") != tiles.slices).any():
            return "sense=pairs needs every tile to hold all slices of its channels (both columns of each pair)"
        for i, f in enumerate(tiles.flip):
            if f is not None:
                partner = np.where(f % tiles.slices < half, f + half, f - half)
                if not np.isin(partner, f).all():
                    c, d = (int(v[~np.isin(partner, f)][0]) for v in (f, partner))
                    return (f"tile {i} complements column {c} but not its differential partner {d} (sense=pairs "
                            f"reads them as one sum)")
    rpo = int(a["rows_per_op"])
    if not 1 <= rpo <= tiles.physical[0]:
        return f"rows_per_op={rpo} must be in 1..{tiles.physical[0]} (the physical rows of an array)"
    skip = np.asarray(a.get("skip", np.zeros((0, 2), np.int64)))
    if skip.size and (skip.ndim != 2 or skip.shape[1] != 2 or skip.dtype.kind not in "iu"):
        return f"skip must be integer pairs (tile, physical row block) [n, 2], is {skip.dtype} {list(skip.shape)}"
    blocks = -(-tiles.physical[0] // rpo)
    bad = skip[(skip[:, 0] < 0) | (skip[:, 0] >= len(tiles)) | (skip[:, 1] < 0) | (skip[:, 1] >= blocks)] \
        if skip.size else skip
    if len(bad):
        return (f"skip names ({int(bad[0, 0])}, {int(bad[0, 1])}), not one of its {len(tiles)} tiles and "
                f"{blocks} row blocks")
    try:
        adc = Adc.from_attrs({k: a[k] for k in a if k.startswith("adc_")} | {
            "rows_per_op": rpo, "dac_bits": a.get("dac_bits", 1), "cell_bits": a.get("cell_bits", 1), "sense": sense})
    except CimcError as e:
        return str(e)
    problems = adc.problems(len(tiles), tiles.physical[1])
    return "ADC: " + "; ".join(problems) if problems else None


def mvm_type(ctx: InferContext) -> list[TensorType]:
    """Type rule of an MVM: u8 ``x`` (layout rows ``[..., K]``, cols ``[G, N, K, L]``) -> i32 ``[..., channels]``
    or ``[N, channels, L]``, summed into an optional i32 accumulator of that type."""
    x, a, op = ctx.types[0], ctx.attrs, ctx.node.op
    if x is None or x.dtype is not DType.u8:
        raise VerifyError(f"{op}: x must be u8, is {x}")
    if x.shape is None:
        return [TensorType(DType.i32, None)]
    cols = a.get("layout") == "cols"
    if cols and len(x.shape) != 4:
        raise VerifyError(f"{op}: layout 'cols' takes x [G, N, K, L] (vec.im2col), is {x}")
    tiles = a.get("tiles")
    if isinstance(tiles, TileMap):
        G, K, N = tiles.matrix
        k, g = (x.shape[2], x.shape[0]) if cols else (x.shape[-1], 1)
        if isinstance(k, int) and k != K:
            raise VerifyError(f"{op}: x {x} has {k} rows (K), its tile map is of a {list(tiles.matrix)} matrix")
        if isinstance(g, int) and g != G:
            raise VerifyError(f"{op}: x {x} has {g} groups, its tile map is of a {list(tiles.matrix)} matrix")
        if a["channels"] != G * N:
            raise VerifyError(f"{op}: channels={a['channels']}, its tile map has {G} x {N}")
    shape = (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"])
    out = TensorType(DType.i32, shape)
    if ctx.has(2):
        acc = ctx.types[2]
        if acc is not None and (acc.dtype is not DType.i32
                                or (acc.shape is not None and len(acc.shape) != len(shape))):
            raise VerifyError(f"{op}: the accumulator must be i32 {list(shape)}, is {acc}")
    return [out]
