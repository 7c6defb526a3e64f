"""onnx light models compile for every target (a cheap subset; benchmarks/bench_compile.py does all 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import cimc

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _calibration(path: Path) -> np.ndarray:
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal((2, *shape[1:]), dtype=np.float32)


@pytest.mark.parametrize("target", ["sram-cim", "npu", "racetrack", "memristor"])
def test_squeezenet_compiles(target: str) -> None:
    path = LIGHT / "light_squeezenet.onnx"
    if not path.is_file():
        pytest.skip("onnx light models not installed")
    r = cimc.compile(path, target=target, calibration=_calibration(path), progress=False)
    assert r.program.nodes and not any(n.op.startswith("q.conv") for n in r.program.nodes)
    assert r.cost is not None and r.cost.per_inference.cycles > 0 and r.cost.per_inference.energy_pj > 0
    prefix = {"sram-cim": "sram.", "npu": "npu.", "racetrack": "rt.", "memristor": "xbar."}[target]
    assert any(n.op.startswith(prefix) for n in r.program.nodes)
