"""ONNX operator test cases that exercise features cimc deliberately does not support.

One entry per case: the case name from ``onnx.backend.test.case.node.collect_testcases()`` and
the reason. ``tests/test_onnx_conformance.py`` skips exactly these and runs every other case of
every supported op.
"""

from __future__ import annotations

SKIPS: dict[str, str] = {
}
