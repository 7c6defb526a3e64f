"""Compiled programs through the ``.cimir`` text, on every zoo model for every built-in target: print
(large constants, the array images among them, into a resources dict), parse, print again gives the
same text, and the parsed program (and one saved and loaded from disk) runs to bit-identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cimc import zoo
from cimc.driver import CompiledModel, compile
from cimc.interpreter import run
from cimc.text import load_graph, parse_graph, print_graph, save_graph

TARGETS = ("sram-cim", "npu", "racetrack")
IMAGES = 64


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, str], CompiledModel]:
    """Every zoo model compiled for every target once, shared by the tests of this module."""
    return {(m, t): compile(f"zoo:{m}", t) for m in zoo.NAMES for t in TARGETS}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical (NaN == NaN)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", zoo.NAMES)
def test_program_round_trips_through_text_and_disk(compiled: dict, tmp_path: Path, model: str, target: str) -> None:
    c = compiled[(model, target)]
    c.target.register_ops()
    resources: dict[str, np.ndarray] = {}
    text = print_graph(c.program, resources=resources)
    assert resources  # the array images and weight tiles go to the sidecar, not into the text
    parsed = parse_graph(text, resources=resources, source=f"{model}.{target}.cimir")
    assert print_graph(parsed, resources={}) == text
    assert [n.op for n in parsed.nodes] == [n.op for n in c.program.nodes]

    z = zoo.load(model)
    x = {z.input_name: np.asarray(z.x_test[:IMAGES])}
    want = run(c.program, x, seed=c.seed)
    _same(want, run(parsed, x, seed=c.seed))

    save_graph(c.program, tmp_path / "program.cimir")
    loaded = load_graph(tmp_path / "program.cimir")
    assert print_graph(loaded, resources={}) == text
    _same(want, run(loaded, x, seed=c.seed))
