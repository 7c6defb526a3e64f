"""Mutation fuzzers over printed ``.cimir`` programs and serialized ONNX models (``fuzz_mutants``): no
mutant may end in an internal error or a traceback, a refused one is one line with exit status 2, and
a mutant that runs is one the verifier accepts.

CI runs a bounded number of mutants (``CIMC_FUZZ_EXAMPLES`` and ``CIMC_FUZZ_ONNX_EXAMPLES`` raise it for
a long run by hand; ``CIMC_FUZZ_REPORT=path`` writes the tallies there as JSON, every 500 mutants and at
the end; ``CIMC_FUZZ_FAILURES=folder`` keeps failing mutants there instead of failing). Examples are drawn
deterministically (hypothesis ``derandomize``), so CI runs the same mutants every time; a long run split
over processes gives each its own ``CIMC_FUZZ_SEED=N``, so each draws other mutants, and runs under
``ulimit -v`` (a mutant that allocates gigabytes past the size limit then fails as out of memory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import onnx
import pytest
from fuzz_mutants import COUNTS, LIMIT, check, cimir_mutant, cimir_seeds, diff, onnx_mutant, onnx_seeds, onnx_text
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cimc.ir.opdef import all_ops
from cimc.ir.verifier import verify
from cimc.onnx_io import import_model
from cimc.targets import all_targets
from cimc.text import load_graph

CIMIR_EXAMPLES = int(os.environ.get("CIMC_FUZZ_EXAMPLES", "300"))
ONNX_EXAMPLES = int(os.environ.get("CIMC_FUZZ_ONNX_EXAMPLES", "200"))
SEED = os.environ.get("CIMC_FUZZ_SEED")
_SETTINGS = dict(deadline=None, derandomize=SEED is None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def seeds(folder: Path) -> dict[str, tuple[str, bytes | None]]:
    (folder / "seeds").mkdir()
    return cimir_seeds(folder / "seeds")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    write_report()


def write_report() -> None:
    if path := os.environ.get("CIMC_FUZZ_REPORT"):
        Path(path).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=2) + "\n")


def _seeded(test):
    """``test`` with the hypothesis seed ``CIMC_FUZZ_SEED`` when one is given."""
    return test if SEED is None else seed(int(SEED))(test)


def test_the_seeds_reach_every_integer_and_target_op(seeds: dict[str, tuple[str, bytes | None]]) -> None:
    """Every integer op (``q.*``), vector-unit op (``vec.*``) and built-in target's instruction is in some seed
    program, so that mutants reach its type rule, attribute checks and executor."""
    from cimc.targets import load_target

    used = {op for text, _ in seeds.values() for op in re.findall(r"= ([A-Za-z_][\w.]*)\(", text)}
    spaces = ["q.", "vec."]
    for name in all_targets():
        target = load_target(name)
        target.register_ops()
        spaces += target.capabilities().own_ops
    want = {op for op in all_ops() if any(op == s or (s.endswith(".") and op.startswith(s)) for s in spaces)}
    assert len(want) > 20 and want <= used, sorted(want - used)


def test_cimir_mutants(folder: Path, seeds: dict[str, tuple[str, bytes | None]]) -> None:
    names = sorted(seeds)

    @_seeded
    @settings(max_examples=CIMIR_EXAMPLES, **_SETTINGS)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(names), label="seed")
        text, sidecar = seeds[name]
        mutant = data.draw(cimir_mutant(text))
        path, side = folder / "mutant.cimir", folder / "mutant.npz"
        path.write_text(mutant, encoding="utf-8", errors="surrogateescape")
        side.unlink(missing_ok=True)
        if sidecar is not None:
            side.write_bytes(sidecar)

        def verified() -> None:
            verify(load_graph(path, verify=False))

        check("cimir", [*LIMIT, "run", str(path), "--random"], verified, lambda: diff(text, mutant))
        if COUNTS["cimir mutants"] % 500 == 0:
            write_report()

    one()


def test_onnx_mutants(folder: Path) -> None:
    seeds = onnx_seeds()
    names = sorted(seeds)
    path = folder / "mutant.onnx"

    @_seeded
    @settings(max_examples=ONNX_EXAMPLES, **_SETTINGS)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(names), label="seed")
        mutant = data.draw(onnx_mutant(seeds[name]), label="mutant")
        path.write_bytes(mutant)

        def verified() -> None:
            verify(import_model(onnx.load(str(path))))

        check("onnx", [*LIMIT, "run", str(path), "--random"], verified,
              lambda: diff(onnx_text(seeds[name]), onnx_text(mutant)))
        if COUNTS["onnx mutants"] % 500 == 0:
            write_report()

    one()
    shutil.rmtree(folder, ignore_errors=True)
