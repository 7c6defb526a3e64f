"""Which ONNX ops cimc imports, and why the others are not: the one table both the importer's
"unsupported" error and the generated operator table (``docs/onnx-ops.md``) read.

An op of the default domain is supported when cimc defines an op of that name (``cimc.ops``) or the
importer rewrites it (``IMPORT_REWRITES``: constants, and control flow it can resolve at import
time). The others belong to a category in ``UNSUPPORTED`` whose reason the error quotes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from cimc.ir.opdef import lookup

__all__ = ["IMPORT_REWRITES", "UNSUPPORTED", "OpStatus", "onnx_ops", "op_status"]

IMPORT_REWRITES: dict[str, str] = {
    "Constant": "becomes a graph constant",
    "If": "a condition known at import folds to the branch taken; otherwise unsupported",
    "Loop": "a trip count known at import unrolls; otherwise unsupported",
    "Scan": "unrolls over the static length of its scan inputs; otherwise unsupported",
    "Upsample": "becomes Resize (deprecated op of opsets 7 to 9)",
    "Scatter": "becomes ScatterElements (deprecated op of opsets 9 to 10)",
}
"""Default-domain ops the importer turns into other ops rather than running them as such."""

UNSUPPORTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "sequence": ("sequence values are not supported (cimc graphs carry tensors only)",
                 ("ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
                  "SequenceInsert", "SequenceLength", "SequenceMap", "SplitToSequence")),
    "optional": ("optional values are not supported (cimc graphs carry tensors only)",
                 ("Optional", "OptionalGetElement", "OptionalHasElement")),
    "string": ("string processing is not supported",
               ("RegexFullMatch", "StringConcat", "StringNormalizer", "StringSplit")),
    "decoding": ("decoding encoded images is not supported", ("ImageDecoder",)),
    "random": ("random ops are not supported (a compiled program is deterministic)",
               ("Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
                "RandomUniformLike")),
}
"""Categories of unsupported ops: category -> (reason, ops)."""

_CATEGORY_OF = {op: cat for cat, (_, ops) in UNSUPPORTED.items() for op in ops}


@dataclass(frozen=True)
class OpStatus:
    """How cimc imports one ONNX op: ``supported`` and, for rewritten or unsupported ops, why."""

    op: str
    supported: bool
    note: str = ""
    category: str = ""


def op_status(op: str) -> OpStatus:
    """The status of default-domain op ``op``."""
    if op in IMPORT_REWRITES:
        return OpStatus(op, True, IMPORT_REWRITES[op], "import")
    if op in _CATEGORY_OF:
        cat = _CATEGORY_OF[op]
        return OpStatus(op, False, UNSUPPORTED[cat][0], cat)
    if lookup(op) is not None and "." not in op:
        return OpStatus(op, True)
    return OpStatus(op, False, "not implemented in cimc", "other")


def onnx_ops() -> list[str]:
    """The default-domain ops of the installed onnx (deprecated ones included), sorted."""
    return sorted({s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")})
