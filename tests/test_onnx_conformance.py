"""ONNX's own operator test cases, run through the importer and the reference interpreter.

Every case from ``collect_testcases()`` whose nodes all use supported ops runs, except those
``tests/conformance_skips.py`` names (each with a reason) and those carrying a type cimc does not
have, which must fail to import with one clear ``UnsupportedOpError``. Cases of unsupported ops
must fail to import naming the op. Run as a script for a per-op table:
``python tests/test_onnx_conformance.py``.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from functools import cache

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cimc.errors import UnsupportedOpError
from cimc.interpreter import run
from cimc.onnx_io import import_model
from cimc.onnx_io.coverage import onnx_ops, op_status

try:
    from conformance_skips import REFUSED, SKIPS, unsupported_types
except ImportError:  # run as a module from the repo root
    from tests.conformance_skips import REFUSED, SKIPS, unsupported_types

def _supported_ops() -> frozenset[str]:
    """Every default-domain ONNX op the importer takes: those cimc defines, and those it rewrites."""
    return frozenset(op for op in onnx_ops() if op_status(op).supported)


SUPPORTED_OPS = _supported_ops()
"""The default-domain ops cimc imports; each one's node cases are the conformance target."""


def collect_node_cases() -> list:
    """``collect_testcases()`` of the installed onnx (before 1.17 it takes an op filter, "" = all)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return collect_testcases()
        except TypeError:
            return collect_testcases("")


@cache
def cases() -> dict[str, object]:
    """Node test cases whose model uses only supported ops (plus Constant), by name."""
    out = {}
    for case in collect_node_cases():
        ops = {n.op_type for n in case.model.graph.node} - {"Constant"}
        if case.kind == "node" and ops and ops <= SUPPORTED_OPS and _primary_op(case) in SUPPORTED_OPS:
            out[case.name] = case
    return dict(sorted(out.items()))


def _primary_op(case) -> str:
    ops = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"]
    return ops[-1] if len(set(ops)) > 1 else ops[0]


def _array(x) -> np.ndarray:
    """A test-data item as an array cimc stores (TensorProto decoded; int4 widened to int8)."""
    if isinstance(x, onnx.TensorProto):
        x = numpy_helper.to_array(x)
    x = np.asarray(x)
    if x.dtype.name in ("int4", "uint4"):
        x = x.astype(np.int8 if x.dtype.name == "int4" else np.uint8)
    return x


def _undefined(case, x: np.ndarray | None, index: int) -> np.ndarray | None:
    """Where the ONNX spec leaves output ``index`` undefined, so any value conforms: a float cast
    to a fixed-point type out of its range ("fixed point: undefined if OOR", Cast since opset 1).
    ``None`` when every element is defined."""
    ops = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"]
    if ops not in (["Cast"], ["CastLike"]) or x is None or x.dtype.kind != "f":
        return None
    code = case.model.graph.output[index].type.tensor_type.elem_type
    if code in _FOUR_BIT:
        lo, hi = _FOUR_BIT[code]
    else:
        to = np.dtype(helper.tensor_dtype_to_np_dtype(code))
        if to.kind not in "iu":
            return None
        lo, hi = np.iinfo(to).min, np.iinfo(to).max
    t = np.trunc(x.astype(np.float64))
    return ~np.isfinite(t) | (t < lo) | (t > hi)


_FOUR_BIT = {onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}


def check_case(case) -> None:
    """Import the case's model, run every data set, compare with the expected outputs (elements
    the spec leaves undefined excepted)."""
    graph = import_model(case.model)
    names = [i.name for i in case.model.graph.input]
    out_names = [o.name for o in case.model.graph.output]
    rtol = max(1e-4, case.rtol if case.rtol is not None else 0.0)
    atol = max(1e-5, case.atol if case.atol is not None else 0.0)
    for inputs, expected in case.data_sets:
        arrays = [_array(x) for x in inputs]
        got = run(graph, dict(zip(names, arrays, strict=True)))
        for name, raw in zip(out_names, expected, strict=True):
            want, have = _array(raw), np.asarray(got[name])
            assert have.shape == want.shape, f"{name}: shape {have.shape} != {want.shape}"
            undefined = _undefined(case, arrays[0] if arrays else None, out_names.index(name))
            if undefined is not None:
                want, have = want[~undefined], have[~undefined]
            if want.dtype.kind in "fc" or want.dtype.name == "bfloat16":
                np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64),
                                           rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
            else:
                np.testing.assert_array_equal(have, want, err_msg=name)
            assert have.dtype == want.dtype, f"{name}: dtype {have.dtype} != {want.dtype}"


def skip_reason(name: str) -> str | None:
    """Why case ``name`` is not run, or ``None``."""
    return SKIPS.get(name) or REFUSED.get(name) or unsupported_types(cases()[name].model)


@pytest.mark.parametrize("name", list(cases()))
def test_onnx_node_case(name: str) -> None:
    if name in SKIPS:
        pytest.skip(SKIPS[name])
    if name in REFUSED or unsupported_types(cases()[name].model) is not None:  # must be refused, clearly
        with pytest.raises(UnsupportedOpError, match="supported"):
            import_model(cases()[name].model)
        return
    check_case(cases()[name])


def test_skip_list_names_real_cases() -> None:
    unknown = sorted((set(SKIPS) | set(REFUSED)) - set(cases()))
    assert not unknown, f"skip list names cases that do not exist or use unsupported ops: {unknown}"


@cache
def unsupported_cases() -> dict[str, tuple[str, object]]:
    """Node cases of ops cimc does not import, by name, with the first such op."""
    out = {}
    for case in collect_node_cases():
        if case.kind != "node":
            continue
        bad = [n.op_type for n in case.model.graph.node if n.op_type not in SUPPORTED_OPS and n.op_type != "Constant"]
        if bad and unsupported_types(case.model) is None:
            out[case.name] = (bad[0], case)
    return dict(sorted(out.items()))


@pytest.mark.parametrize("name", list(unsupported_cases()))
def test_unsupported_op_is_one_clear_error(name: str) -> None:
    op, case = unsupported_cases()[name]
    with pytest.raises(UnsupportedOpError, match=rf"unsupported ops?: .*\b{op} \((opset|domain) "):
        import_model(case.model)


def main() -> int:
    """Print passed / total per op and overall."""
    total, passed, skipped = Counter(), Counter(), Counter()
    failures = []
    for name, case in cases().items():
        op = _primary_op(case)
        total[op] += 1
        if skip_reason(name) is not None:
            skipped[op] += 1
            continue
        try:
            check_case(case)
            passed[op] += 1
        except Exception as e:  # report, keep going
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    for op in sorted(SUPPORTED_OPS):
        print(f"{op:20s} {passed[op]:3d} passed / {total[op]:3d} cases ({skipped[op]} skipped)")
    print(f"{'all':20s} {sum(passed.values())} passed / {sum(total.values())} cases "
          f"({sum(skipped.values())} skipped, {len(failures)} failed)")
    for f in failures:
        print("FAIL", f[:300])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    sys.exit(main())
