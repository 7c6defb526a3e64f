"""The nine ``light_*.onnx`` models onnx ships (ResNet-50, VGG-19, DenseNet-121, Inception v1/v2,
AlexNet, ZFNet-512, ShuffleNet, SqueezeNet at 224x224): import, fold-constants, verify, run in the
interpreter, export back to ONNX, and round trip through ``.cimir`` text, each checked against
onnxruntime on the original model.

Their weights are ``ConstantOfShape`` fills of 0.02, so every channel computes nearly the same
number; the pre-softmax logits are compared too, and a few models also run with the fills replaced
by seeded random weights, which checks channel order (ShuffleNet's channel shuffle) and
per-channel parameters as well. The softmax output is compared within what the logits' tolerance
allows: logits within ``d`` of each other give probabilities within a factor ``exp(2 d)``, which
for SqueezeNet's logits (about 7e9, where a float32 step is 512) allows anything, so there only
its being a distribution is checked.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from light_models import LIGHT, randomize
from onnx import helper

from cimc.interpreter import run
from cimc.ir import Graph, verify
from cimc.ir.equality import graph_difference
from cimc.onnx_io import export_model, import_model
from cimc.passmanager import PassManager
from cimc.text import parse_graph, print_graph

MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))
RUN_PARSED = {"squeezenet", "shufflenet", "resnet50"}
"""Models whose parsed-back graph is also run (for the rest, equality with the original implies it)."""
RANDOM_WEIGHTS = ["squeezenet", "shufflenet", "resnet50", "inception_v2"]
RTOL, ATOL = 1e-3, 1e-4


def _session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the models carry unused initializers onnxruntime warns about
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _ort(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str, scaled: float = 0.0,
             softmax: tuple[str, str] | None = None) -> None:
    """Outputs equal within RTOL, ATOL (plus ``scaled`` times the output's largest magnitude);
    ``softmax = (probabilities, logits)`` names a softmax output and the logits it is computed from,
    compared as the logits' tolerance allows (module doc)."""
    assert list(got) == list(want), f"{what}: outputs {list(got)} vs {list(want)}"
    tol = {name: ATOL + scaled * float(np.max(np.abs(w))) for name, w in want.items()}
    for name, w in want.items():
        assert got[name].shape == w.shape, f"{what} {name}: shape {got[name].shape} vs {w.shape}"
        if softmax is not None and name == softmax[0]:
            z = want[softmax[1]]
            d = tol[softmax[1]] + RTOL * float(np.max(np.abs(z)))
            sums = got[name].reshape(len(w), -1).sum(axis=1, dtype=np.float64)
            np.testing.assert_allclose(sums, 1.0, atol=1e-4, err_msg=f"{what} {name}: not a distribution")
            bound = np.maximum(np.minimum(1.0, w * np.expm1(min(2 * d, 700.0))), RTOL * np.abs(w)) + ATOL
            excess = np.abs(got[name] - w) - bound
            assert excess.max() <= 0, (f"{what} {name}: differs by {excess.max():.3g} more than logits within "
                                       f"{d:.3g} allow")
            continue
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=tol[name], err_msg=f"{what} {name}")


def _fold(graph: Graph) -> Graph:
    PassManager("fold-constants").run(graph)
    return graph


def _expose_logits(graph: Graph, model: onnx.ModelProto) -> tuple[str, str] | None:
    """Make the input of the model's last Softmax an output of both the graph and the model;
    return (softmax output, logits) when the softmax's result is an output too."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    outputs = [o.name for o in model.graph.output]
    if softmax and softmax[-1].input[0] not in outputs:
        name = softmax[-1].input[0]
        graph.outputs.append(graph.value(name))
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        if softmax[-1].output[0] in outputs:
            return softmax[-1].output[0], name
    return None


def _feeds(graph: Graph) -> dict[str, np.ndarray]:
    (x,) = graph.inputs
    return {x.name: np.random.default_rng(0).standard_normal(x.type.shape, dtype=np.float32)}


@dataclass
class Light:
    """One folded light model with its input and onnxruntime's outputs on the original."""

    name: str
    graph: Graph | None
    feeds: dict[str, np.ndarray]
    want: dict[str, np.ndarray]
    softmax: tuple[str, str] | None = None


@pytest.fixture(scope="module", params=MODELS)
def light(request: pytest.FixtureRequest) -> Light:
    """One model at a time (pytest groups the tests by it); VGG-19's weights alone are 550 MB."""
    name = request.param
    path = LIGHT / f"light_{name}.onnx"
    model = onnx.load(path)
    graph = _fold(import_model(model))
    softmax = _expose_logits(graph, model)
    feeds = _feeds(graph)
    case = Light(name, graph, feeds, _ort(model, feeds), softmax)
    del model
    yield case
    case.graph = None
    gc.collect()


def test_fold_and_verify(light: Light) -> None:
    verify(light.graph)
    ops = light.graph.ops()
    assert "ConstantOfShape" not in ops and ops.get("Conv", 0) >= 5, ops
    assert len(light.graph.inputs) == 1  # initializers listed as inputs (old IR) became constants


def test_interpreter_matches_onnxruntime(light: Light) -> None:
    _compare(run(light.graph, light.feeds), light.want, f"{light.name}: interpreter", softmax=light.softmax)


def test_export_runs_in_onnxruntime(light: Light) -> None:
    model = export_model(light.graph)
    assert [i.name for i in model.graph.input] == list(light.feeds)
    data = model.SerializeToString()  # once: VGG-19 is 550 MB
    del model
    onnx.checker.check_model(data, full_check=True)
    _compare(_ort(data, light.feeds), light.want, f"{light.name}: exported model in onnxruntime",
             softmax=light.softmax)


def test_text_round_trip(light: Light) -> None:
    resources: dict[str, np.ndarray] = {}
    text = print_graph(light.graph, resources=resources)
    parsed = parse_graph(text, resources=resources)
    again: dict[str, np.ndarray] = {}
    assert print_graph(parsed, resources=again) == text
    assert sorted(again) == sorted(resources)
    assert graph_difference(light.graph, parsed) is None, graph_difference(light.graph, parsed)
    verify(parsed)
    if light.name in RUN_PARSED:
        _compare(run(parsed, light.feeds), light.want, f"{light.name}: parsed graph", softmax=light.softmax)


@pytest.mark.parametrize("name", RANDOM_WEIGHTS)
def test_random_weights_match_onnxruntime(name: str) -> None:
    model = randomize(onnx.load(LIGHT / f"light_{name}.onnx"))
    graph = _fold(import_model(model))
    softmax = _expose_logits(graph, model)
    verify(graph)
    feeds = _feeds(graph)
    want = _ort(model, feeds)
    assert max(float(np.ptp(w)) for w in want.values()) > 1e-3  # the outputs are not uniform
    # logits of random deep nets reach 1e5 while some cancel to ~1: float32 sums in another
    # order differ there by far more than rtol, so errors are also measured against the largest
    _compare(run(graph, feeds), want, f"{name} (random weights): interpreter", scaled=1e-5, softmax=softmax)
    _compare(_ort(export_model(graph), feeds), want, f"{name} (random weights): exported model", scaled=1e-5,
             softmax=softmax)
