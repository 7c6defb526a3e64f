"""The generated operator table (docs/onnx-ops.md) is current."""

from __future__ import annotations

import onnx_ops_table

from cimc.onnx_io.coverage import onnx_ops, op_status


def test_table_is_current() -> None:
    committed = onnx_ops_table.TABLE.read_text()
    if onnx_ops_table.header_version() in committed:
        assert committed == onnx_ops_table.render(), "run: python tests/onnx_ops_table.py --write"
        return
    # another onnx release (the lowest-versions CI run): every op it has is listed with its status
    rows = {line.split(" | ")[0].lstrip("| "): line for line in committed.splitlines() if line.startswith("| ")}
    for op in onnx_ops():
        assert op in rows, f"{op} is missing from {onnx_ops_table.TABLE}"
        assert rows[op].split(" | ")[1] == ("yes" if op_status(op).supported else "no"), rows[op]


def test_every_unsupported_op_has_a_reason() -> None:
    for op in onnx_ops():
        status = op_status(op)
        assert status.supported or status.note, op
