"""Recurrent layers (LSTM, GRU, RNN) unroll over their static sequence length and quantize: the unrolled float
graph computes what onnxruntime computes for the ONNX op (every attribute the unroller reads), the quantized
program's gate matmuls run on the arrays and equal the integer reference on every target, and a layer that
cannot unroll is refused by name unless float is allowed. ``lstm_rows`` on sram-cim and the keyword-spotting
configuration (5-bit array inputs, 6-bit array outputs, 8-bit digital) are shown end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc import zoo
from cimc.driver import compile
from cimc.errors import InputError
from cimc.interpreter import run
from cimc.onnx_io import import_model
from cimc.onnx_io.runtime import run_onnxruntime
from cimc.quant.recurrent import unroll_recurrent
from cimc.report import report_text
from cimc.targets import all_targets

TARGETS = sorted(all_targets())
SPECS = {"memristor": {"ideal": True}}  # a device model's ideal device: its programs must equal the reference
SEQ, BATCH, IN, HID = 5, 3, 6, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent(op: str, *, direction: str = "forward", layout: int = 0, states: bool = False, peep: bool = False,
               seq_lens: list[int] | None = None, seed: int = 0, samples_first: bool = False,
               **attrs) -> onnx.ModelProto:
    """One ``op`` node reading ``x`` with seeded weights, every output it has as a graph output;
    ``samples_first``: the graph input is ``[batch, seq, input]`` (symbolic batch: samples on axis 0, as
    calibration and verification data hold them), transposed for the op, and ``Y`` is the only output."""
    rng = np.random.default_rng(seed)
    dirs, g = 2 if direction == "bidirectional" else 1, GATES[op]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (dirs, g * HID, IN)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (dirs, g * HID, HID)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.3, (dirs, 2 * g * HID)).astype(np.float32), "B")]
    names = ["x", "W", "R", "B", "", "", ""]
    x_shape = [BATCH, SEQ, IN] if layout else [SEQ, BATCH, IN]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if seq_lens is not None:
        inits.append(numpy_helper.from_array(np.asarray(seq_lens, np.int32), "lens"))
        names[4] = "lens"
    if states:
        state = [BATCH, dirs, HID] if layout else [dirs, BATCH, HID]
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, state).astype(np.float32), "h0"))
        names[5] = "h0"
        if op == "LSTM":
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, state).astype(np.float32), "c0"))
            names[6] = "c0"
    if peep:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 3 * HID)).astype(np.float32), "P"))
        names.append("P")
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    nodes = [helper.make_node(op, names, outs, name="rnn", hidden_size=HID, direction=direction, layout=layout,
                              **attrs)]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    if samples_first:
        assert not (layout or states), "samples first: a seq-first op without per-sample initial states"
        inputs = [helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["batch", SEQ, IN])]
        nodes.insert(0, helper.make_node("Transpose", ["xs"], ["x"], perm=[1, 0, 2]))
        outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [SEQ, dirs, "batch", HID])]
    graph = helper.make_graph(nodes, "rnn", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


VARIANTS = {
    "lstm": ("LSTM", {}),
    "lstm_reverse_states": ("LSTM", {"direction": "reverse", "states": True}),
    "lstm_bidirectional_peepholes": ("LSTM", {"direction": "bidirectional", "states": True, "peep": True}),
    "lstm_input_forget_clip_layout": ("LSTM", {"input_forget": 1, "clip": 1.5, "layout": 1, "states": True}),
    "lstm_full_sequence_lens": ("LSTM", {"seq_lens": [SEQ] * BATCH}),
    "gru": ("GRU", {}),
    "gru_linear_before_reset_bidirectional": ("GRU", {"linear_before_reset": 1, "direction": "bidirectional",
                                                      "states": True}),
    "gru_activations": ("GRU", {"activations": ["HardSigmoid", "Softsign"], "activation_alpha": [0.3],
                                "activation_beta": [0.4]}),
    "rnn_relu_reverse": ("RNN", {"activations": ["Relu"], "direction": "reverse", "states": True}),
    "rnn_bidirectional_layout": ("RNN", {"direction": "bidirectional", "layout": 1}),
}


def _x(model: onnx.ModelProto, n: int = 1, seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs: the static input's shape, or ``n`` samples of a samples-first one."""
    vi = model.graph.input[0]
    shape = [d.dim_value or n for d in vi.type.tensor_type.shape.dim]
    return {vi.name: np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_unrolled_graph_computes_what_onnxruntime_computes(variant):
    op, kw = VARIANTS[variant]
    model = _recurrent(op, **kw)
    g = import_model(model)
    assert unroll_recurrent(g) == {}
    assert op not in g.ops() and g.ops()["MatMul"] >= SEQ
    x = _x(model)
    # onnxruntime has no batch-first (layout = 1) kernels: there the oracle is the op itself, which ONNX's
    # node cases check (test_lstm_batchwise, test_simple_rnn_batchwise)
    got, want = run(g, x), run_onnxruntime(model, x) if not kw.get("layout") else run(import_model(model), x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_comparison_catches_a_broken_unroll():
    """The same comparison fails when one step's gate weights lose a sign, or the bias is dropped."""
    model = _recurrent("LSTM", direction="bidirectional", states=True, peep=True)
    x = _x(model)
    want = run_onnxruntime(model, x)
    for breaking in ("weight", "bias"):
        g = import_model(model)
        unroll_recurrent(g)
        consts = [v for v in g.constants.values() if v.name.endswith("weight" if breaking == "weight" else "bias")]
        assert consts, breaking
        v = consts[-1]
        v.const = -v.const if breaking == "weight" else np.zeros_like(v.const)
        got = run(g, x)
        assert not all(np.allclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in want), breaking


def test_a_layer_that_cannot_unroll_is_refused_by_name_unless_float_is_allowed():
    """Sequence lengths that vary mask steps: the layer stays one float op, compiling names it and why, and
    with allow_float it runs in float with the report's first line saying so."""
    model = _recurrent("LSTM", seq_lens=[SEQ, 2, 3])
    x = _x(model)
    for target in TARGETS:
        with pytest.raises(InputError, match=r"node 'rnn' \(LSTM\): its sequence_lens vary.*--allow-float"):
            compile(model, target, calibration=x, progress=False)
        c = compile(model, target, calibration=x, allow_float=True, progress=False)
        assert [f["layer"] for f in c.float_layers] == ["rnn"]
        assert report_text(c).splitlines()[0].startswith("FLOAT: 1 weight-carrying multiply-accumulate layer(s)")
        assert [p["float"] for p in c.placement if p["layer"] == "rnn"] == [True]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["lstm", "lstm_bidirectional_peepholes", "gru",
                                     "gru_linear_before_reset_bidirectional", "rnn_relu_reverse"])
def test_quantized_recurrent_layers_run_their_gate_matmuls_on_the_arrays(target, variant):
    op, kw = VARIANTS[variant]
    model = _recurrent(op, **{k: v for k, v in kw.items() if k != "states"}, samples_first=True)
    calib, x = _x(model, 16, seed=2), _x(model, 8, seed=3)
    c = compile(model, target, spec=SPECS.get(target), calibration=calib, inputs=x, verify=True, progress=False)
    assert op not in c.quantized.ops() and "MatMul" not in c.quantized.ops()
    steps = SEQ * (2 if kw.get("direction") == "bidirectional" else 1) * (2 if variant == "gru" else 1)
    assert c.quantized.ops()["q.matmul"] == steps
    assert not c.float_layers and not {"q.matmul", "MatMul", op} & set(c.program.ops())
    array = c.target.capabilities().array_name
    gates = [p for p in c.placement if p["op"] == "q.matmul"]
    assert len(gates) == steps and all(p["runs_on"] == array and not p["float"] for p in gates), c.placement
    v = c.verify
    assert v["reference_exact"] and v["exact_expected"], v
    assert v["cosine"] > 0.98, v


def test_lstm_rows_on_sram_cim():
    """The zoo's LSTM over the image rows: every gate matmul (one per step) is an sram.mvm reading the gate
    weights loaded once, the program equals the integer reference, top-1 is within 1 point of float, and the
    cost counts the LSTM's multiply-accumulates (steps x 4 gates x hidden x (input + hidden), plus the
    classifier), computed here from the ONNX model's own weight shapes."""
    m = zoo.load("lstm_rows")
    x, y = m.x_test[:400], m.y_test[:400]
    c = compile("zoo:lstm_rows", "sram-cim", verify=True, inputs=x, labels=y, progress=False)
    onnx_model = onnx.load(str(zoo.path("lstm_rows")))
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    lstm = next(n for n in onnx_model.graph.node if n.op_type == "LSTM")
    w, r = inits[lstm.input[1]], inits[lstm.input[2]]
    fc = next(n for n in onnx_model.graph.node if n.op_type == "Gemm")
    seq = m.x_test.shape[2]  # the image rows are the steps
    gates_macs = seq * w.shape[1] * (w.shape[2] + r.shape[2])
    assert gates_macs == seq * 4 * r.shape[2] * (w.shape[2] + r.shape[2])
    mvms = [n for n in c.program.nodes if n.op == "sram.mvm"]
    gate_layers = {n.attrs["cim.layer"] for n in mvms if "/gates_t" in n.attrs["cim.layer"]}
    assert len(gate_layers) == seq and len(mvms) == seq + 1, c.program.ops()
    assert "q.matmul" not in c.program.ops() and not c.float_layers
    assert c.program.ops()["sram.load"] == 2  # the gate weights once, the classifier once
    per = c.cost.to_dict()["per_inference"]
    assert per["macs"] == gates_macs + inits[fc.input[1]].size
    layers = {lay["name"]: lay for lay in per["layers"]}
    assert sum(lay["macs"] for name, lay in layers.items() if "/gates_t" in name) == gates_macs
    assert c.cost.to_dict()["one_time"]["cell_writes_total"] > 0  # loaded before inference, not per inference
    v = c.verify
    assert v["reference_exact"], v
    assert v["top1_program"] >= v["top1_float"] - 0.01, v


def test_the_keyword_spotting_configuration_is_three_quantize_options():
    """5-bit inputs to the arrays, 6-bit array outputs, 8-bit digital (the memristor LSTM keyword-spotting
    work): act-bits=5 out-bits=6 vector-bits=8. Every array op reads 5-bit codes, the gate matmuls' results
    are requantized to 6 bits for the vector unit, whose nonlinearities and state updates are 8-bit."""
    m = zoo.load("lstm_rows")
    x, y = m.x_test[:300], m.y_test[:300]
    pipe = "fold-constants,fuse-batchnorm,quantize{act-bits=5 out-bits=6 vector-bits=8},legalize-convs,tile"
    c = compile("zoo:lstm_rows", "sram-cim", pipeline=pipe, verify=True, inputs=x, labels=y, progress=False)
    q = c.quantized
    arrays = [n for n in q.nodes if n.op in ("q.matmul", "q.gemm")]
    assert arrays and all(n.inputs[0].type.quant.bits == 5 for n in arrays)
    gates = [n for n in arrays if "/gates_t" in n.name]
    outs = [u.outputs[0].type.quant.bits for n in gates for u, _ in n.outputs[0].uses if u.op == "q.requant"]
    assert len(outs) == len(gates) and set(outs) == {6}
    vector = [n for n in q.nodes if n.op in ("q.lut", "q.mul", "q.add")]
    # the new hidden state h_t = o * tanh(c_t) is the arrays' next input ([x_t+1; h_t]): made at 5 bits
    hidden = {n.name for n in vector if "/h_t" in n.name}
    assert len(hidden) == m.x_test.shape[2]
    assert {n.outputs[0].type.quant.bits for n in vector if n.name in hidden} == {5}
    assert {n.outputs[0].type.quant.bits for n in vector if n.name not in hidden} == {8}
    assert all(v.type.quant.bits == 5 for n in arrays for v in n.inputs[:1])
    v = c.verify
    assert v["reference_exact"], v
    assert v["top1_program"] >= v["top1_float"] - 0.03, v


def _node_cases() -> dict[str, object]:
    from test_onnx_conformance import cases

    return {name: case for name, case in cases().items()
            if {n.op_type for n in case.model.graph.node} & set(GATES)}


@pytest.mark.parametrize("name", sorted(_node_cases()))
def test_onnx_node_cases_hold_for_the_unrolled_graph(name):
    """ONNX's own node cases for LSTM, GRU and RNN (their expected outputs), run on the unrolled graph; the
    cases feed the weights as inputs, so each data set's W, R, B, sequence_lens and P become constants."""
    case = _node_cases()[name]
    node = next(n for n in case.model.graph.node if n.op_type in GATES)
    const_slots = {node.input[i] for i in (1, 2, 3, 4, 7) if i < len(node.input) and node.input[i]}
    names = [i.name for i in case.model.graph.input]
    for inputs, expected in case.data_sets:
        arrays = {k: numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)
                  for k, x in zip(names, inputs, strict=True)}
        model = onnx.ModelProto()
        model.CopyFrom(case.model)
        keep = [i for i in model.graph.input if i.name not in const_slots]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.graph.initializer.extend(numpy_helper.from_array(arrays[k], k) for k in sorted(const_slots))
        graph = import_model(model)
        left = unroll_recurrent(graph)
        if left:  # only masked steps stay: a sequence_lens shorter than the sequence somewhere
            assert all("sequence_lens" in why for why in left.values()), left
            pytest.skip(f"not unrolled: {left}")
        assert not set(GATES) & set(graph.ops())
        got = run(graph, {k: v for k, v in arrays.items() if k not in const_slots})
        for out, want in zip(case.model.graph.output, expected, strict=True):
            np.testing.assert_allclose(got[out.name], np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=out.name)


def test_a_layer_reading_tiles_it_does_not_share_is_caught():
    """The steps of lstm_rows read the gate weights loaded once, and the program is exact; a layer (the
    classifier) marked as sharing them reads arrays no load wrote, which the run refuses, naming it."""
    from cimc.interpreter import ExecutionError
    from cimc.passmanager import PassContext, PassManager
    from cimc.verify import check_exact

    target = all_targets()["sram-cim"]()
    m = zoo.load("lstm_rows")
    ctx = PassContext(target=target, calibration={"input": zoo.calibration_set()})
    g = import_model(onnx.load(str(zoo.path("lstm_rows"))))
    PassManager(target.default_pipeline(), ctx).run(g)
    steps = [n for n in g.nodes if "tile.shared" in n.attrs]
    assert len(steps) == m.x_test.shape[2] - 1 and {n.attrs["tile.shared"] for n in steps} == {"/lstm/LSTM/gates_t0"}
    x = {"input": m.x_test[:8]}
    target.register_ops()
    program = g.copy()
    PassManager("lower-sram-cim", ctx).run(program)
    assert program.ops()["sram.load"] == 2 and check_exact(program, g, x, machine=target.machine(0)).exact
    program = g.copy()
    next(n for n in program.nodes if n.op == "q.gemm").attrs["tile.shared"] = "/lstm/LSTM/gates_t0"
    PassManager("lower-sram-cim", ctx).run(program)
    with pytest.raises(ExecutionError, match=r"array 8 is read for tile 0 of layer '/fc/Gemm' but no load"):
        check_exact(program, g, x, machine=target.machine(0))
