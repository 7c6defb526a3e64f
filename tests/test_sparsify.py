"""sparsify and cimc.sparsity: block geometry, weight views, the pruning rule, the metadata (a
hypothesis property: it lists exactly the all-zero units), refit, options and their errors, and
accuracy on the zoo."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc import zoo
from cimc.errors import CimcError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference
from cimc.ir.types import DType, TensorType
from cimc.ir.verifier import verify
from cimc.onnx_io import load_model
from cimc.passes import get_pass
from cimc.passes.sparsify import SparsifyPass, parse_per_layer
from cimc.passmanager import PassContext, PassManager
from cimc.pipeline import Pipeline, PipelineError
from cimc.report import pass_report_lines, pass_reports
from cimc.sparsity import (
    Geometry,
    input_rows,
    prune,
    prune_mask,
    refit,
    unit_stats,
    weight_view,
    zero_blocks,
    zero_channels,
    zero_count,
)
from cimc.text import parse_graph, print_graph

F32 = DType.f32


# ---- independent reference of the block definition --------------------------------------------
def ref_blocks(K: int, geom: Geometry) -> list[range]:
    """Row ranges of the row blocks, numbered tile by tile, written out from the definition."""
    out = []
    for t0 in range(0, K, geom.array_rows):
        t1 = min(t0 + geom.array_rows, K)
        out += [range(r, min(r + geom.rows_per_op, t1)) for r in range(t0, t1, geom.rows_per_op)]
    return out


def ref_zero_blocks(m: np.ndarray, geom: Geometry) -> set[tuple[int, int, int]]:
    G, K, N = m.shape
    cgs = [range(c, min(c + geom.group_channels, N)) for c in range(0, N, geom.group_channels)]
    return {(g, b, c) for g in range(G) for b, rows in enumerate(ref_blocks(K, geom))
            for c, cols in enumerate(cgs) if not m[g][np.ix_(rows, cols)].any()}


def test_block_numbering_by_tiles():
    geom = Geometry(rows_per_op=6, array_rows=16, group_channels=4)
    assert geom.row_starts(40).tolist() == [0, 6, 12, 16, 22, 28, 32, 38]
    assert [geom.block_rows(b, 40) for b in range(8)] == [
        (0, 6), (6, 12), (12, 16), (16, 22), (22, 28), (28, 32), (32, 38), (38, 40)]
    assert [range(*geom.block_rows(b, 40)) for b in range(8)] == ref_blocks(40, geom)
    assert geom.col_starts(10).tolist() == [0, 4, 8]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rows_per_op": 0}, "rows-per-op=0"), ({"rows_per_op": 300}, "rows-per-op=300"),
    ({"array_rows": 0}, "array-rows=0"), ({"group_channels": 0}, "group-channels=0")])
def test_bad_geometry(kwargs, words):
    with pytest.raises(CimcError, match=words):
        Geometry(**{"rows_per_op": 16, "array_rows": 256, "group_channels": 32, **kwargs})


# ---- weight views: the matrix times the input rows is the op ----------------------------------
def _node(op: str, x_shape, w: np.ndarray, attrs=None, bias=None):
    g = Graph()
    x = g.add_input("x", TensorType(F32, tuple(x_shape)))
    ins = [x, g.add_constant(w, "w")] + ([g.add_constant(bias, "b")] if bias is not None else [])
    return g, g.add_node(op, ins, attrs or {}, name="layer")


VIEW_CASES = [
    ("Conv", (2, 4, 5, 5), (6, 2, 3, 3), {"group": 2, "pads": (1, 0, 1, 2), "strides": (2, 1)}),
    ("Conv", (2, 3, 4, 4), (3, 1, 2, 2), {"group": 3, "dilations": (2, 1)}),
    ("ConvTranspose", (2, 4, 3, 3), (4, 3, 3, 2), {"group": 2, "strides": (2, 1), "pads": (1, 0, 0, 1)}),
    ("Gemm", (5, 7), (3, 7), {"transB": 1}),
    ("Gemm", (7, 5), (7, 3), {"transA": 1}),
    ("MatMul", (2, 5, 7), (7, 3), {}),
]


@pytest.mark.parametrize(("op", "x_shape", "w_shape", "attrs"), VIEW_CASES)
def test_view_is_what_the_op_multiplies(op, x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    g, node = _node(op, x_shape, w, attrs)
    g.outputs.append(node.output)
    view = weight_view(node)
    m = view.to_matrix(w)
    assert m.shape == (view.groups, view.rows, view.cols)
    assert np.array_equal(view.from_matrix(m), w)
    rows = input_rows(node, view, x)  # [G, M, K]
    y = run(g, {"x": x})["layer"]
    if op in ("Conv", "ConvTranspose"):  # y: [n, G*N, *O] -> [G, n*O, N]
        y = y.reshape(len(x), view.groups, view.cols, -1).transpose(1, 0, 3, 2).reshape(view.groups, -1, view.cols)
    np.testing.assert_allclose(rows @ m, y.reshape(view.groups, -1, view.cols), rtol=1e-4, atol=1e-4)


def test_views_of_nodes_without_a_constant_weight():
    g = Graph()
    a = g.add_input("a", TensorType(F32, (2, 3)))
    b = g.add_input("b", TensorType(F32, (3, 4)))
    assert "not a constant" in weight_view(g.add_node("MatMul", [a, b]))
    assert "no weight" in weight_view(g.add_node("Relu", [a]))


# ---- the pruning rule and the zero lists: a property over shapes, geometries and ratios --------
@st.composite
def cases(draw):
    G, K, N = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 20))
    array_rows = draw(st.integers(1, 24))
    geom = Geometry(draw(st.integers(1, array_rows)), array_rows, draw(st.integers(1, 8)))
    m = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((G, K, N)).astype(np.float32)
    return m, geom, draw(st.floats(0, 0.99)), draw(st.sampled_from(["block", "channel"]))


@settings(max_examples=150, deadline=None)
@given(cases(), st.booleans())
def test_prune_meets_ratio_and_lists_exactly_the_zero_units(case, prezero):
    m, geom, ratio, gran = case
    if prezero:  # a block (and maybe a channel) already all zero: it must be listed too
        m = m.copy()
        b0, b1 = geom.block_rows(0, m.shape[1])
        m[0, b0:b1, :geom.group_channels] = 0
    p = prune(m, ratio, geom, gran)
    size, _, _ = unit_stats(m, geom, gran)
    count = zero_count(p, geom, gran)
    # kept weights are untouched, pruned units exactly zero
    changed = p != m
    assert np.all(p[changed] == 0)
    assert (np.signbit(p) & (p == 0)).sum() <= (np.signbit(m) & (m == 0)).sum()  # no -0.0 made
    # the ratio is met within one unit (units already zero may push it further)
    need = math.ceil(ratio * m.size - 1e-9 * m.size)
    assert count >= need
    if not prezero:
        assert count < need + size.max() or (need == 0 and count == 0)
    # the metadata lists exactly the all-zero units of the result
    assert {tuple(b) for b in zero_blocks(p, geom).tolist()} == ref_zero_blocks(p, geom)
    assert zero_blocks(p, geom).tolist() == [list(b) for b in sorted(ref_zero_blocks(p, geom))]
    G, K, N = p.shape
    assert zero_channels(p).tolist() == [g * N + n for g in range(G) for n in range(N) if not p[g, :, n].any()]
    if gran == "block":  # what the target skips is what the ratio counts
        assert count == sum(len(ref_blocks(K, geom)[b]) * len(range(c * geom.group_channels,
                            min((c + 1) * geom.group_channels, N))) for _, b, c in ref_zero_blocks(p, geom))
    # lowest mean square first: every pruned unit scores no higher than every kept nonzero one
    mask = prune_mask(m, ratio, geom, gran)
    _, sq, nz = unit_stats(m, geom, gran)
    score = sq / size
    if mask.any() and (~mask & (nz > 0)).any():
        assert score[mask].max() <= score[~mask & (nz > 0)].min()


@settings(max_examples=60, deadline=None)
@given(cases())
def test_refit_keeps_pruned_units_zero_and_never_worsens_the_output(case):
    m, geom, ratio, gran = case
    G, K, _ = m.shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((G, 64, K)) + rng.standard_normal((G, 1, K))  # correlated rows
    x[..., 0] = 1.0  # a constant row, as a bias
    gram = x.transpose(0, 2, 1) @ x / 64
    mask = prune_mask(m, ratio, geom, gran)
    r, _ = refit(m, mask, gram, geom, gran)
    plain = prune(m, ratio, geom, gran)
    assert np.array_equal(r == 0, (plain == 0) | (r == 0)) and np.all(r[plain == 0] == 0)
    assert {tuple(b) for b in zero_blocks(r, geom).tolist()} >= {tuple(b) for b in zero_blocks(plain, geom).tolist()}
    err = lambda w: float(np.sum((x @ w.astype(np.float64) - x @ m.astype(np.float64)) ** 2))  # noqa: E731
    assert err(r) <= err(plain) * (1 + 1e-6) + 1e-6


@st.composite
def layers(draw):
    """A graph of one Conv (maybe grouped) or Gemm (maybe transB) with a random weight."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        group, cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
        k = draw(st.integers(1, 3))
        w = rng.standard_normal((group * cout_g, cin_g, k, k)).astype(np.float32)
        return _node("Conv", (1, group * cin_g, 4, 4), w, {"group": group})
    k, n, t = draw(st.integers(1, 50)), draw(st.integers(1, 20)), draw(st.booleans())
    w = rng.standard_normal((n, k) if t else (k, n)).astype(np.float32)
    return _node("Gemm", (2, k), w, {"transB": int(t)})


@settings(max_examples=80, deadline=None)
@given(layers(), st.integers(1, 24), st.integers(1, 24), st.integers(1, 8), st.floats(0.01, 0.95),
       st.sampled_from(["block", "channel"]))
def test_pass_annotations_are_exactly_the_zero_units(layer, rpo, rows, gc, ratio, gran):
    g, node = layer
    g.outputs.append(node.output)
    rpo = min(rpo, rows)
    SparsifyPass(granularity=gran, per_layer=f"layer={ratio}", rows_per_op=rpo, array_rows=rows,
                 group_channels=gc).run(g, PassContext())
    verify(g)
    geom, view = Geometry(rpo, rows, gc), weight_view(node)
    m = view.to_matrix(node.inputs[1].const)
    a = node.attrs
    assert {tuple(b) for b in a["sparsity.blocks"].tolist()} == ref_zero_blocks(m, geom)
    assert a["sparsity.channels"].tolist() == [i for i in range(view.groups * view.cols)
                                               if not m[i // view.cols, :, i % view.cols].any()]
    size, _, _ = unit_stats(m, geom, gran)
    # prune_mask reaches ceil(ratio * size) less a 1e-9 relative allowance for float noise in ratio
    assert ratio - 1e-9 <= a["sparsity.ratio"] < ratio + size.max() / view.size + 1e-12
    assert a["sparsity.ratio"] == zero_count(m, geom, gran) / view.size


# ---- the pass on small graphs ------------------------------------------------------------------
def two_layers(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("N", 4, 6, 6)))
    c = g.add_node("Conv", [x, g.add_constant(rng.standard_normal((40, 4, 3, 3)).astype(np.float32), "cw"),
                            g.add_constant(rng.standard_normal(40).astype(np.float32), "cb")],
                   {"pads": (1, 1, 1, 1)}, name="conv")
    r = g.add_node("Relu", [c.output], name="relu")
    f = g.add_node("Flatten", [r.output], name="flat")
    fc = g.add_node("Gemm", [f.output, g.add_constant(rng.standard_normal((10, 1440)).astype(np.float32) / 30, "fw"),
                             g.add_constant(np.zeros(10, np.float32), "fb")], {"transB": 1}, name="fc")
    g.outputs.append(fc.output)
    return g


X = np.random.default_rng(5).random((16, 4, 6, 6)).astype(np.float32)
GEOM = {"rows_per_op": 16, "array_rows": 256, "group_channels": 32}
"""A block geometry given in full (16-row blocks of 256-row arrays, 32 channels per column group), for
tests without a target."""
GEOM_TEXT = "rows-per-op=16 array-rows=256 group-channels=32"


def test_pass_prunes_annotates_and_runs():
    g = two_layers()
    before = {n: g.constants[n].const.copy() for n in ("cw", "fw")}
    res = SparsifyPass(ratio=0.4, rows_per_op=8, array_rows=32, group_channels=16).run(g, PassContext())
    assert res.modified
    verify(g)
    run(g, {"x": X})
    geom = Geometry(8, 32, 16)
    for name, wname, size in (("conv", "cw", 1440), ("fc", "fw", 14400)):
        node = g.node(name)
        w = node.inputs[1]
        assert w.name == wname and not w.const.flags.writeable
        m = weight_view(node).to_matrix(w.const)
        a = node.attrs
        assert (a["sparsity.rows_per_op"], a["sparsity.array_rows"], a["sparsity.group_channels"]) == (8, 32, 16)
        assert a["sparsity.granularity"] == "block"
        assert a["sparsity.blocks"].dtype == np.int64 and a["sparsity.blocks"].shape[1] == 3
        assert {tuple(b) for b in a["sparsity.blocks"].tolist()} == ref_zero_blocks(m, geom)
        assert a["sparsity.channels"].dtype == np.int64
        assert a["sparsity.ratio"] == zero_count(m, geom, "block") / size
        assert 0.4 <= a["sparsity.ratio"] < 0.4 + 8 * 16 / size
        kept = w.const != 0
        assert np.array_equal(w.const[kept], before[wname][kept])  # magnitude mode, no data: no refit
    assert g.constants["cb"].const is not None  # the bias is untouched without refit
    meta = json.loads(g.metadata["sparsity"])
    assert meta["ratio"] == 0.4 and set(meta["layers"]) == {"conv", "fc"} and meta["refit"] is False
    assert meta["rows_per_op"] == 8


def test_channel_granularity_lists_channels():
    g = two_layers()
    SparsifyPass(ratio=0.25, granularity="channel", **GEOM).run(g, PassContext())
    node = g.node("conv")
    w = node.inputs[1].const
    zero = [c for c in range(40) if not w[c].any()]
    assert node.attrs["sparsity.channels"].tolist() == zero and len(zero) == 10
    assert node.attrs["sparsity.ratio"] == 0.25 and node.attrs["sparsity.granularity"] == "channel"


def test_grouped_conv_blocks_are_per_group():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)  # 2 groups: K=27, N=4 each
    g, node = _node("Conv", (1, 6, 5, 5), w, {"group": 2})
    g.outputs.append(node.output)
    SparsifyPass(ratio=0.5, rows_per_op=9, array_rows=27, group_channels=2).run(g, PassContext())
    m = weight_view(node).to_matrix(node.inputs[1].const)
    assert m.shape == (2, 27, 4)
    blocks = node.attrs["sparsity.blocks"]
    assert {tuple(b) for b in blocks.tolist()} == ref_zero_blocks(m, Geometry(9, 27, 2))
    assert len(blocks) == 6 and set(blocks[:, 0].tolist()) <= {0, 1}  # 6 of 12 blocks of 18 weights


def test_block_already_zero_is_listed():
    g = two_layers()
    w = g.constants["fw"].const.copy()
    w[:16, :8] = 0  # rows 0..7 of the matrix (transB), channels 0..15: block (0, 0, 0)
    g.node("fc").set_input(1, g.add_constant(w, "fw0"))
    g.remove_dead()
    SparsifyPass(ratio=0.1, rows_per_op=8, array_rows=32, group_channels=16, per_layer="conv=0").run(g, PassContext())
    assert [0, 0, 0] in g.node("fc").attrs["sparsity.blocks"].tolist()
    assert "sparsity.blocks" not in g.node("conv").attrs


def test_whole_layer_never_pruned_in_magnitude_mode():
    g = two_layers()  # conv: K=36, N=40 -> with 64-row blocks and 64 channels one single block
    SparsifyPass(ratio=0.3, rows_per_op=64, array_rows=64, group_channels=64).run(g, PassContext())
    meta = json.loads(g.metadata["sparsity"])
    assert "conv" in meta["skipped"] and "zero all its blocks" in meta["skipped"]["conv"]
    assert g.node("conv").inputs[1].const.all()
    SparsifyPass(ratio=0.3, rows_per_op=64, array_rows=64, group_channels=64, per_layer="conv=0.3").run(
        g, PassContext())  # unless asked by name
    assert not g.node("conv").inputs[1].const.any()


def test_skips_per_layer_and_weight_names():
    g = two_layers()
    SparsifyPass(ratio=0.5, skip_first=True, per_layer="fw=0.2", **GEOM).run(g, PassContext())
    meta = json.loads(g.metadata["sparsity"])
    assert meta["skipped"] == {"conv": "skip-first"} and list(meta["layers"]) == ["fc"]
    assert 0.2 <= meta["layers"]["fc"] < 0.3
    g = two_layers()
    assert not SparsifyPass(min_params=10**6, **GEOM).run(g, PassContext()).modified
    assert "sparsity" not in g.metadata


def test_nothing_prunable_is_unmodified():
    g = parse_graph("""graph @main(%x: f32[2]) {
      %y: f32[2] = Relu(%x) loc("relu")
      return %y
    }""")
    assert not SparsifyPass(**GEOM).run(g, PassContext()).modified


def test_refit_with_calibration_keeps_zeros_and_improves_outputs():
    calib = {"x": X}
    ref = run(two_layers(), calib)["fc"]
    outs = {}
    for refit_ in (False, True):
        g = two_layers()
        SparsifyPass(ratio=0.5, rows_per_op=8, array_rows=32, group_channels=16, refit=refit_).run(
            g, PassContext(calibration=calib))
        verify(g)
        for name in ("conv", "fc"):
            node = g.node(name)
            m = weight_view(node).to_matrix(node.inputs[1].const)
            assert {tuple(b) for b in node.attrs["sparsity.blocks"].tolist()} == ref_zero_blocks(m, Geometry(8, 32, 16))
        outs[refit_] = run(g, calib)["fc"]
    assert np.mean((outs[True] - ref) ** 2) < 0.5 * np.mean((outs[False] - ref) ** 2)


def test_refit_max_rows_prunes_larger_layers_without_refit_and_says_so(caplog: pytest.LogCaptureFixture):
    """A layer of more input rows than refit-max-rows gets the magnitude-pruned weights (refit=false's), the
    others their refit ones; the warning and the pass report name it; refit=true with such a layer fails."""
    calib, geom = {"x": X}, {"rows_per_op": 8, "array_rows": 32, "group_channels": 16}
    runs = {}
    for key, kw in (("none", {"refit": False}), ("all", {"refit": True}), ("capped", {"refit_max_rows": 100})):
        g = two_layers()
        with caplog.at_level("WARNING"):
            SparsifyPass(ratio=0.5, **geom, **kw).run(g, PassContext(calibration=calib))
        runs[key] = g
    weight = {k: {n: g.node(n).inputs[1].const for n in ("conv", "fc")} for k, g in runs.items()}
    assert np.array_equal(weight["capped"]["fc"], weight["none"]["fc"])  # fc: 1440 rows > 100
    assert not np.array_equal(weight["capped"]["fc"], weight["all"]["fc"])
    assert np.array_equal(weight["capped"]["conv"], weight["all"]["conv"])  # conv: 36 rows, refit
    assert not np.array_equal(weight["capped"]["conv"], weight["none"]["conv"])
    note = json.loads(runs["capped"].metadata["report.sparsify"])
    assert list(note["layers"]) == ["fc"] and "1440 input rows" in note["layers"]["fc"]["why"]
    lines = pass_report_lines(pass_reports(runs["capped"])["sparsify"])  # as report.txt shows it
    assert "1 layer(s) pruned without refit" in lines[0] and lines[1].startswith("  fc: refit none")
    assert "'fc' pruned without refit" in caplog.text and "'conv'" not in caplog.text
    assert "report.sparsify" not in runs["all"].metadata
    with pytest.raises(CimcError, match=r"Gemm 'fc': its 1440 input rows are more than refit-max-rows=100"):
        SparsifyPass(ratio=0.5, **geom, refit=True, refit_max_rows=100).run(two_layers(),
                                                                            PassContext(calibration=calib))


def test_refit_max_rows_reaches_the_compile_report():
    """The capped layers are in report.json's passes and report.txt of a whole compile."""
    from cimc.driver import compile as compile_model
    from cimc.report import report_text

    c = compile_model("zoo:mlp", "sram-cim", pipeline="fold-constants,fuse-batchnorm,sparsify{ratio=0.5 "
                      "refit-max-rows=32},quantize,legalize-convs,tile")
    assert "pruned without refit" in c.report["passes"]["sparsify"]["note"]
    assert "pruned without refit (refit-max-rows)" in report_text(c)


def test_sensitivity_respects_per_layer_and_spends_the_rest():
    g = two_layers()
    SparsifyPass(ratio=0.5, mode="sensitivity", per_layer="conv=0.2", rows_per_op=8, array_rows=32,
                 group_channels=16).run(g, PassContext(calibration={"x": X}))
    meta = json.loads(g.metadata["sparsity"])
    assert 0.2 <= meta["layers"]["conv"] < 0.2 + 8 * 16 / 1440
    assert 0.5 <= meta["layers"]["fc"] < 0.5 + 8 * 10 / 14400  # the only free layer takes it all


def test_target_geometry_is_the_default():
    from cimc.targets import load_target

    target = load_target("sram-cim")
    caps = target.capabilities()
    g = two_layers()
    SparsifyPass(ratio=0.3, mode="magnitude").run(g, PassContext(target=target))
    a = g.node("fc").attrs
    assert a["sparsity.rows_per_op"] == caps.rows_per_op and a["sparsity.array_rows"] == caps.rows
    assert a["sparsity.group_channels"] == caps.cols // 8 == 16  # 8-bit weights in 1-bit cells
    g = two_layers()
    SparsifyPass(ratio=0.3, rows_per_op=4).run(g, PassContext(target=target))
    assert g.node("fc").attrs["sparsity.rows_per_op"] == 4


def test_blocks_are_the_row_blocks_tile_skips():
    """With the target's geometry, sparsify's blocks are exactly the array row blocks that the
    tile pass finds all zero after quantization (it may find more: weights rounding to zero)."""
    from cimc.targets import load_target

    m = zoo.load("resnet_tiny")
    g = load_model(m.path)
    ctx = PassContext(calibration={m.input_name: zoo.calibration_set()}, target=load_target("sram-cim"))
    PassManager("fold-constants,sparsify{ratio=0.3 refit=false},quantize,tile", ctx).run(g)
    checked = 0
    for node in g.nodes:
        if "sparsity.blocks" in node.attrs and "tile.skip" in node.attrs:
            a = node.attrs
            tiles = a["tile.map"]  # identity placement: physical blocks are the tile's own row blocks
            rows = tiles.shape[0]
            assert rows == a["sparsity.array_rows"] and a["tile.rows_per_op"] == a["sparsity.rows_per_op"]
            per_tile = -(-rows // a["tile.rows_per_op"])
            per = int((tiles.column("ch1") - tiles.column("ch0")).max())
            skipped = {(tiles[t].group, tiles[t].k0 // rows * per_tile + b, tiles[t].ch0 // per)
                       for t, b in a["tile.skip"].tolist()}
            blocks = {tuple(b) for b in a["sparsity.blocks"].tolist()}
            assert blocks <= skipped
            checked += len(blocks)
    assert checked > 0


def test_text_round_trip_and_determinism():
    g = two_layers()
    SparsifyPass(ratio=0.5, rows_per_op=8, array_rows=32, group_channels=16).run(g, PassContext(calibration={"x": X}))
    assert graph_difference(parse_graph(print_graph(g)), g) is None
    h = two_layers()
    SparsifyPass(ratio=0.5, rows_per_op=8, array_rows=32, group_channels=16).run(h, PassContext(calibration={"x": X}))
    assert graph_difference(g, h) is None


# ---- options and errors ------------------------------------------------------------------------
def test_registered_and_pipeline_round_trip():
    assert get_pass("sparsify") is SparsifyPass
    p = Pipeline.parse('sparsify{ratio=0.3 mode=sensitivity per-layer="conv=0.1,fc=0" rows-per-op=8}')
    assert Pipeline.parse(str(p)) == p
    assert p.passes[0].per_layer == "conv=0.1,fc=0" and p.passes[0].rows_per_op == 8


@pytest.mark.parametrize(("text", "words"), [
    ("sparsify{ratio=1}", "ratio=1.0 must be in [0, 1)"),
    ("sparsify{ratio=-0.1}", "ratio=-0.1 must be in [0, 1)"),
    ("sparsify{rows-per-op=0}", "rows-per-op=0 must be >= 1"),
    ("sparsify{rows-per-op=32 array-rows=16}", "rows-per-op=32 must be between 1 and array-rows=16"),
    ("sparsify{group-channels=0}", "group-channels=0"),
    ("sparsify{min-params=-1}", "min-params=-1"),
    ('sparsify{per-layer="conv=1.5"}', "per-layer: item 'conv=1.5'"),
    ('sparsify{per-layer="conv"}', "per-layer: item 'conv' should be name=ratio"),
    ("sparsify{granularity=row}", "granularity"),
])
def test_bad_options(text, words):
    with pytest.raises(PipelineError) as e:
        Pipeline.parse(text)
    assert words in str(e.value)


def test_needs_a_target_or_every_geometry_option():
    with pytest.raises(CimcError, match=r"pass 'sparsify' needs a target to align its blocks to \(or every "
                                        r"geometry option; array-rows not given\): name one with --target NAME"):
        SparsifyPass(rows_per_op=8, group_channels=8).run(two_layers(), PassContext())
    with pytest.raises(CimcError, match=r"pass 'sparsify' needs a target"):
        PassManager("sparsify").run(two_layers())


def test_options_beyond_the_target_are_errors():
    from cimc.targets import load_target

    target = load_target("sram-cim")
    for text, msg in [("sparsify{rows-per-op=65}", r"option rows-per-op=65 is out of range: expected 1\.\.64 "
                                                     r"\(the target 'sram-cim' has rows_per_op = 64"),
                      ("sparsify{group-channels=129}", r"option group-channels=129 is out of range: expected "
                                                        r"1\.\.128 \(the target 'sram-cim' has cols = 128"),
                      ("sparsify{array-rows=256}", r"option array-rows=256 is out of range: expected 1\.\.128 "
                                                   r"\(the target 'sram-cim' has rows = 128")]:
        with pytest.raises(CimcError, match=rf"^pass 'sparsify': {msg}"):
            PassManager(text, PassContext(target=target)).run(two_layers())


def test_unknown_per_layer_name():
    with pytest.raises(CimcError, match=r"per-layer: 'fcc' names no prunable node; did you mean 'fc'\?.*conv, fc"):
        SparsifyPass(per_layer="fcc=0.2", **GEOM).run(two_layers(), PassContext())


def test_geometry_from_target_is_checked_with_the_options():
    class Tiny:
        name = "tiny"

        def capabilities(self):
            from types import SimpleNamespace
            return SimpleNamespace(rows_per_op=8, rows=4, cols=8, weight_bits_max=8, cell_bits=1)

    with pytest.raises(CimcError, match="rows-per-op=8 must be between 1 and array-rows=4"):
        SparsifyPass().run(two_layers(), PassContext(target=Tiny()))


def test_sensitivity_needs_calibration():
    with pytest.raises(CimcError, match=r"mode=sensitivity.*PassContext.calibration"):
        SparsifyPass(mode="sensitivity", **GEOM).run(two_layers(), PassContext())
    with pytest.raises(CimcError, match=r"refit=true.*PassContext.calibration"):
        SparsifyPass(refit=True, **GEOM).run(two_layers(), PassContext())


def test_parse_per_layer():
    assert parse_per_layer(" a=0.5, /x/y=0 ,") == {"a": 0.5, "/x/y": 0.0}


# ---- the zoo -----------------------------------------------------------------------------------
def _accuracy(g: Graph, m) -> float:
    return float(np.mean(run(g, {m.input_name: m.x_test})[m.output_name].argmax(-1) == m.y_test))


@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_magnitude_runs_and_meets_the_ratio_per_layer(name):
    m = zoo.load(name)
    g = load_model(m.path)
    PassManager("sparsify{ratio=0.3 rows-per-op=8 array-rows=256 group-channels=8 refit=false}",
                PassContext(verify_each=True)).run(g)
    meta = json.loads(g.metadata["sparsity"])
    for node in g.nodes:
        if "sparsity.ratio" in node.attrs:
            view = weight_view(node)
            geom = Geometry(8, 256, 8)
            unit = max(len(r) for r in ref_blocks(view.rows, geom)) * min(8, view.cols)
            assert 0.3 <= node.attrs["sparsity.ratio"] < 0.3 + unit / view.size
            assert meta["layers"][node.name] == round(node.attrs["sparsity.ratio"], 6)
    assert _accuracy(g, m) > 0.1


def test_zoo_sensitivity_meets_global_ratio_and_the_accuracy_goal():
    """The issue's goal: 30% structured sparsity within 1 point of float with mode=sensitivity
    (resnet_tiny, default geometry: 16 rows x 32 channels)."""
    m = zoo.load("resnet_tiny")
    g = load_model(m.path)
    float_top1 = _accuracy(g, m)
    ctx = PassContext(calibration={m.input_name: zoo.calibration_set()}, verify_each=True)
    PassManager(f"sparsify{{ratio=0.3 mode=sensitivity {GEOM_TEXT}}}", ctx).run(g)
    sizes = {n.name: weight_view(n).size for n in g.nodes if "sparsity.ratio" in n.attrs}
    pruned = sum(g.node(k).attrs["sparsity.ratio"] * v for k, v in sizes.items())
    total = sum(sizes.values())
    assert math.ceil(0.3 * total) <= round(pruned) < math.ceil(0.3 * total) + 16 * 32  # within one block
    assert _accuracy(g, m) >= float_top1 - 0.01


def _sensitivity(name: str, ratio: float):
    m = zoo.load(name)
    g = load_model(m.path)
    ctx = PassContext(calibration={m.input_name: zoo.calibration_set()})
    PassManager(f"fold-constants,fuse-batchnorm,sparsify{{ratio={ratio} mode=sensitivity {GEOM_TEXT}}}", ctx).run(g)
    return m, g, {n.name: n for n in g.nodes if "sparsity.ratio" in n.attrs}


@pytest.mark.parametrize("name", ["lenet_bn", "mobilenet_tiny"])
def test_sensitivity_overshoot_is_less_than_one_unit_of_every_pruned_layer(name):
    """The walk ends on the budget: giving back the last unit of any layer it pruned would miss it
    (before the fix, 30% asked gave 40% on these small models)."""
    _, g, nodes = _sensitivity(name, 0.3)
    geom, total, pruned = Geometry(16, 256, 32), 0, 0
    for node in nodes.values():
        view = weight_view(node)
        total, pruned = total + view.size, pruned + round(node.attrs["sparsity.ratio"] * view.size)
    budget = math.ceil(0.3 * total)
    assert budget <= pruned < 0.33 * total
    for node in nodes.values():
        view = weight_view(node)
        size, _, nz = unit_stats(view.to_matrix(node.inputs[1].const), geom, "block")
        if (nz == 0).any():
            assert pruned - budget < size[nz == 0].min()
    assert json.loads(g.metadata["sparsity"])["achieved"] == round(pruned / total, 6)


def test_sensitivity_never_zeroes_or_disconnects_a_layer():
    """50% of mobilenet_tiny in 16x32 blocks is out of reach without cutting the network: the walk
    stops short (a warning) instead of collapsing to one class."""
    m, g, nodes = _sensitivity("mobilenet_tiny", 0.5)
    for node in nodes.values():
        assert node.attrs["sparsity.ratio"] <= 0.9
        assert node.inputs[1].const.any()
    out = run(g, {m.input_name: m.x_test})[m.output_name]
    assert len(np.unique(out.argmax(-1))) == 10 and _accuracy(g, m) > 0.3


def test_max_layer_ratio_caps_the_walk():
    g = two_layers()
    SparsifyPass(ratio=0.6, mode="sensitivity", max_layer_ratio=0.5, rows_per_op=8, array_rows=32,
                 group_channels=16).run(g, PassContext(calibration={"x": X}))
    meta = json.loads(g.metadata["sparsity"])
    assert all(r <= 0.5 for r in meta["layers"].values()) and meta["achieved"] < 0.6
    with pytest.raises(PipelineError, match=r"max-layer-ratio=1\.0 must be in"):
        Pipeline.parse("sparsify{max-layer-ratio=1}")


def test_refit_with_fewer_rows_than_weights_is_ridge_regularised():
    """With fewer calibration rows than rows of the matrix (a Gemm after 64 images), least squares
    alone has no unique answer; the damped update moves the kept weights only in directions the
    rows span and by a bounded amount, so it cannot fit the calibration set with invented weights."""
    rng = np.random.default_rng(0)
    K, N, M = 64, 10, 20
    m = rng.standard_normal((1, K, N))
    x = rng.standard_normal((M, K))
    gram = (x.T @ x / M)[None]
    geom = Geometry(16, 64, 16)
    mask = prune_mask(m, 0.5, geom, "block")
    new, _ = refit(m, mask, gram, geom, "block")  # one column group: every column keeps rows S
    s_rows = np.flatnonzero(np.repeat(~mask[0, :, 0], 16))
    assert mask.sum() == 2 and s_rows.size == 32 > M and not new[0, np.setdiff1d(np.arange(K), s_rows)].any()
    delta = (new - m)[0, s_rows]
    null = np.linalg.svd(x[:, s_rows])[2][M:]  # kept-row directions the calibration rows never take
    assert np.isfinite(new).all() and np.abs(null @ delta).max() < 1e-8
    old_err = np.linalg.norm(x[:, s_rows] @ m[0, s_rows] - x @ m[0])
    assert np.linalg.norm(x[:, s_rows] @ delta) <= old_err + 1e-9  # never overshoots the error it corrects
