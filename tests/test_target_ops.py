"""Which ops a target runs comes from one table (its capabilities: array ops, vector-unit ops, its own
instructions): every op the importer supports runs on each target, or is one of the few ``NOT_RUN`` ops,
whose reason the target's instruction page gives."""

from __future__ import annotations

import pytest

from cimc.onnx_io.coverage import IMPORT_REWRITES, onnx_ops, op_status
from cimc.opref import target_reference
from cimc.target import NOT_RUN, VECTOR_OPS
from cimc.targets import all_targets

TARGETS = sorted(all_targets())
IMPORTED = [op for op in onnx_ops() if op not in IMPORT_REWRITES and op_status(op).supported]


def test_the_importer_supports_the_ops_not_run():
    assert set(NOT_RUN) <= set(IMPORTED), set(NOT_RUN) - set(IMPORTED)
    assert not set(NOT_RUN) & set(VECTOR_OPS)


@pytest.mark.parametrize("target", TARGETS)
def test_every_imported_op_runs_or_the_page_says_why_not(target):
    caps = all_targets()[target]().capabilities()
    page = target_reference(target, "markdown")
    missing = [op for op in IMPORTED if caps.unit_of(op) is None]
    unexplained = [op for op in missing if op not in NOT_RUN or f"- `{op}`: {NOT_RUN[op]}" not in page]
    assert not unexplained, unexplained
    for op in ("Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Erf", "Gelu", "LayerNormalization",
               "GroupNormalization", "RMSNormalization", "InstanceNormalization", "Softmax", "Where", "Mod"):
        if op in IMPORTED:
            assert caps.unit_of(op) is not None, op


def test_the_check_catches_an_op_a_target_forgot():
    """The same check fails for a target whose vector unit drops an elementwise op the importer supports."""
    import dataclasses

    caps = all_targets()["sram-cim"]().capabilities()
    broken = dataclasses.replace(caps, vector_ops=tuple(o for o in caps.vector_ops if o != "Erf"))
    assert [op for op in IMPORTED if broken.unit_of(op) is None and op not in NOT_RUN] == ["Erf"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_page_says_where_attention_matmuls_run(target):
    page = target_reference(target, "markdown")
    caps = all_targets()[target]().capabilities()
    where = f"on its {caps.array_name}" if caps.unit_of("q.act_matmul") == "array" else "on its vector unit"
    assert f"(attention's `q.act_matmul`) run {where}" in page
