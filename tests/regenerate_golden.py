"""Golden outputs of every zoo model: compute them, and (run as a script) write ``tests/golden/``.

For each model in ``cimc.zoo.NAMES`` and the first ``N_INPUTS`` digits test images:

- the reference interpreter's outputs of the quantized graph after each pipeline in ``PIPELINES``
  (``fold-constants,fuse-batchnorm,quantize{weight-bits=W act-bits=8}``, W = 8 and 4), and
- the compiled program's outputs for each configuration in ``TARGETS`` (``cimc.compile("zoo:NAME",
  target=T, spec=S)``: default specs (a lossless ADC on sram-cim, no shift faults on racetrack), and the ideal
  memristor crossbar), run by the interpreter with the target's ops: each equals the W8A8 reference;
- for each configuration in ``LOSSY`` (a target with spec overrides that make its program differ from the integer
  reference on purpose), the outputs run with seed 0;
- the compiled program's outputs for each configuration in ``NOISY`` (the memristor with its default noise and
  stuck-cell rates of 1 % SA0 and 0.2 % SA1, compile seed ``NOISY_SEED``), run on the target's machine for that
  seed (its chip 0 and read noise): seeded, so bit for bit reproducible, but not the reference's.

Next to each float output ``<config>/<output>`` it stores the integer tensors that determine it,
``<config>/<output>.int<i>``: the integer operands of the node producing that output (for the zoo,
the int32 accumulators feeding the final ``q.dequantize``). The float output is a fixed function of
those integers and the graph's constant dequantize scales, so exact integers give bit-identical
floats; both are compared exactly. One ``.npz`` per model (``cimc.npzio.write_npz``, byte-for-byte
deterministic) plus ``inputs.npz``, the input images as ``uint8`` (pixel * 16, exact).

Regenerate (the one documented command)::

    python tests/regenerate_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The installed package, never the checkout's cimc/ folder: that folder alone lacks cimc.passes, cimc.targets
# and cimc.zoo (pyproject maps them from passes/, targets/ and examples/zoo/).
try:
    import cimc
except ModuleNotFoundError:
    raise ModuleNotFoundError("cimc is not installed: run `pip install -e '.[test]'` in the checkout first") from None
from cimc import zoo
from cimc.interpreter import Interpreter
from cimc.ir.core import Graph
from cimc.npzio import write_npz
from cimc.onnx_io import import_model
from cimc.passmanager import PassContext, PassManager

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = ROOT / "tests" / "golden"
COMMAND = "python tests/regenerate_golden.py"
N_INPUTS = 32
PIPELINES = {
    "w8a8": "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8}",
    "w4a8": "fold-constants,fuse-batchnorm,quantize{weight-bits=4 act-bits=8}",
}
TARGETS: dict[str, tuple[str, dict]] = {
    "npu": ("npu", {}), "sram-cim": ("sram-cim", {}), "racetrack": ("racetrack", {}),
    "memristor-ideal": ("memristor", {"ideal": True}),
}
"""Lossless configurations: key prefix -> (target, spec overrides)."""
LOSSY: dict[str, tuple[str, dict]] = {"racetrack-faults": ("racetrack", {"shift_fault_rate": 0.01})}
"""Golden configurations whose programs are not exact on purpose, run with seed 0: name -> (target, spec overrides)."""
NOISY: dict[str, tuple[str, dict]] = {"memristor-noisy": ("memristor", {"p_sa0": 0.01, "p_sa1": 0.002})}
"""Seeded noisy configurations, compiled and run with ``NOISY_SEED`` on the target's machine for it: key prefix ->
(target, spec overrides)."""
NOISY_SEED = 1


def golden_inputs() -> np.ndarray:
    """The fixed input set: the first ``N_INPUTS`` digits test images, float32 ``(N, 1, 8, 8)``."""
    return np.array(zoo.test_set()[0][:N_INPUTS])


def encode_inputs(x: np.ndarray) -> np.ndarray:
    """The images as ``uint8`` pixel * 16 (the zoo's pixels are raw 0..16 values / 16, so this is exact)."""
    q = np.rint(x * 16)
    if not np.array_equal(q / 16, x):
        raise ValueError("zoo test images are no longer multiples of 1/16; store them another way")
    return q.astype(np.uint8)


def run_with_integers(graph: Graph, inputs: dict[str, np.ndarray], prefix: str, *, seed: int = 0,
                      machine: dict | None = None) -> dict[str, np.ndarray]:
    """Outputs ``<prefix>/<name>`` of ``graph`` on ``inputs`` and, as ``<prefix>/<name>.int<i>``, the
    integer operands (non-constant) of each output's producer: the integers the float output is made of (run with
    ``seed`` on ``machine``)."""
    want = {}
    for out in graph.outputs:
        node = out.producer
        for i, v in enumerate(node.inputs if node is not None else ()):
            if v is not None and v.const is None and v.type.dtype.is_int:
                want[id(v)] = f"{prefix}/{out.name}.int{i}"
    seen: dict[str, np.ndarray] = {}

    def observe(value, array) -> None:
        if id(value) in want:
            seen[want[id(value)]] = np.array(array)

    outs = Interpreter(graph, seed=seed, machine=machine).run(inputs, observe=observe)
    return {**{f"{prefix}/{k}": np.array(v) for k, v in outs.items()}, **seen}


def compute(name: str) -> dict[str, np.ndarray]:
    """Every golden array of zoo model ``name``, by key (``<config>/<output>[.int<i>]``), sorted."""
    m = zoo.load(name)
    inputs = {m.input_name: golden_inputs()}
    arrays: dict[str, np.ndarray] = {}
    for config, text in PIPELINES.items():
        graph = import_model(m.onnx())
        PassManager(text, PassContext(calibration={m.input_name: zoo.calibration_set()})).run(graph)
        arrays |= run_with_integers(graph, inputs, config)
    for key, (target, spec) in {**TARGETS, **LOSSY}.items():
        c = cimc.compile(f"zoo:{name}", target=target, spec=spec)
        c.target.register_ops()
        arrays |= run_with_integers(c.program, inputs, key)
    for key, (target, spec) in NOISY.items():
        c = cimc.compile(f"zoo:{name}", target=target, spec=spec, seed=NOISY_SEED)
        c.target.register_ops()
        arrays |= run_with_integers(c.program, inputs, key, seed=NOISY_SEED, machine=c.target.machine(NOISY_SEED))
    return dict(sorted(arrays.items()))


def path(name: str) -> Path:
    """The golden file of zoo model ``name``."""
    return GOLDEN_DIR / f"{name}.npz"


def main() -> None:
    """Recompute every golden file and write it (unchanged results rewrite identical bytes)."""
    GOLDEN_DIR.mkdir(exist_ok=True)
    files = {GOLDEN_DIR / "inputs.npz": {"x16": encode_inputs(golden_inputs())}}
    files |= {path(name): compute(name) for name in zoo.NAMES}
    for p, arrays in files.items():
        with open(p, "wb") as f:
            write_npz(f, arrays)
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
