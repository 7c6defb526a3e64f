"""Interpreter.run_lockstep: every node runs for each input before the next node; each run's results are those of
the run alone, bit for bit (a Conv converts a constant float weight to float64 once for all runs); calibration runs
its min/max observers' batches so, with the same ranges."""

from __future__ import annotations

import numpy as np
import pytest

from cimc import zoo
from cimc.driver import load_source
from cimc.interpreter import Interpreter
from cimc.ir.core import Graph
from cimc.ir.types import DType, TensorType
from cimc.passmanager import PassManager
from cimc.quant import calibrate as cal

F32 = DType.f32


def _float_graph(name: str = "resnet_tiny") -> Graph:
    g = load_source(f"zoo:{name}").graph
    PassManager("fold-constants,fuse-batchnorm").run(g)
    return g


def _inputs(g: Graph, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    data = np.asarray(zoo.calibration_set(), np.float32)
    (name,) = [v.name for v in g.inputs]
    return [{name: (data[i:i + 1] + rng.standard_normal(data[i:i + 1].shape).astype(np.float32))}
            for i in range(n)]


@pytest.mark.parametrize("reproducible", [True, False])
def test_lockstep_runs_equal_separate_runs(reproducible: bool) -> None:
    g = _float_graph()
    feeds = _inputs(g, 3)
    interp = Interpreter(g, reproducible=reproducible)
    alone = [interp.run(f) for f in feeds]
    seen_alone: list[tuple[str, bytes]] = []
    for f in feeds:
        interp.run(f, observe=lambda v, a: seen_alone.append((v.name, np.asarray(a).tobytes())))
    seen: list[tuple[str, bytes]] = []
    together = interp.run_lockstep(feeds, observe=lambda v, a: seen.append((v.name, np.asarray(a).tobytes())))
    assert len(together) == 3
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes()
    # every value's arrays in the order of the inputs
    by_value = lambda obs: {n: [b for m, b in obs if m == n] for n, _ in obs}  # noqa: E731
    assert by_value(seen) == by_value(seen_alone)


def _conv_of_inputs() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 2, 5, 5)))
    w = g.add_input("w", TensorType(F32, (3, 2, 3, 3)))
    g.outputs.append(g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]}).output)
    return g


def test_a_read_only_weight_that_differs_between_runs_is_not_reused() -> None:
    """The memo keeps a weight's float64 copy for the same array only: weights given as inputs, read-only and
    different in each run, each give their own product."""
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(2):
        w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        w.flags.writeable = False
        feeds.append({"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32), "w": w})
    interp = Interpreter(_conv_of_inputs(), reproducible=True)
    alone = [interp.run(f)[interp.graph.outputs[0].name] for f in feeds]
    together = [r[interp.graph.outputs[0].name] for r in interp.run_lockstep(feeds)]
    for a, b in zip(alone, together, strict=True):
        assert a.tobytes() == b.tobytes()


def test_calibration_ranges_are_those_of_separate_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _float_graph()
    feeds = _inputs(g, 5)
    data = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    watch = [v for v in g.values() if v.const is None and v.type.dtype is F32]
    runs: list[int] = []
    real = Interpreter.run_lockstep

    def counted(self: Interpreter, inputs: list, **kw: object) -> list:
        runs.append(len(inputs))
        return real(self, inputs, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Interpreter, "run_lockstep", counted)
    monkeypatch.setattr(cal, "BATCH", 1)  # the zoo graph's batch is symbolic: one sample per run
    together = cal.calibrate(g, data, watch)
    assert runs == [4, 1]  # LOCKSTEP runs at most, then the rest
    monkeypatch.setattr(cal, "LOCKSTEP", 1)
    runs.clear()
    alone = cal.calibrate(g, data, watch)
    assert runs == [1] * 5
    assert {k: (o.lo, o.hi) for k, o in together.items()} == {k: (o.lo, o.hi) for k, o in alone.items()}
