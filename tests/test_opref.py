"""The op reference (``cimc.opref``, ``cimc ops``): read from the op definitions, for every target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import cimc.targets
from cimc import opref
from cimc.cli import main
from cimc.ir import opdef
from cimc.ir.opdef import REQUIRED, AttrSpec, lookup, op_def
from cimc.ir.types import DType, TensorType
from cimc.target import Capabilities, Spec, Target, param

DOCS = Path(__file__).resolve().parent.parent / "docs" / "instructions"


def test_signature_names_operands_from_the_implementation():
    assert opref.signature(lookup("q.conv")) == "q.conv(x, w, bias?) -> 1 result"
    assert opref.signature(lookup("Concat")) == "Concat(xs...) -> 1 result"
    assert opref.operands(lookup("Clip")) == [("x", "required"), ("lo", "optional"), ("hi", "optional")]
    opref.target_ops("sram-cim")
    assert opref.signature(lookup("sram.mvm")) == "sram.mvm(x, token, acc?) -> 1 result"


@pytest.mark.parametrize("name", sorted(cimc.targets.BUILTIN))
def test_every_builtin_target_documents_every_instruction_and_attribute(name):
    ops = opref.target_ops(name)
    assert ops, f"target {name} has no instructions"
    caps = cimc.targets.get_target(name)().capabilities()
    page = opref.target_reference(name, "markdown")
    text = opref.target_reference(name)
    for d in ops:
        assert caps.unit_of(d.name) == "own"
        assert f"### `{d.name}`" in page and opref.signature(d) in text
        for key, spec in d.attrs.items():
            row = next(line for line in page.splitlines() if line.startswith(f"| `{key}` |")
                       and line in opref.describe_op(d, "markdown"))
            assert f"| {spec.kind} |" in row
            assert ("required" in row) == (spec.default is REQUIRED)


def test_describe_op_shows_defaults_in_cimir_syntax_and_the_docstring():
    opref.target_ops("sram-cim")
    text = opref.describe_op(lookup("sram.mvm"))
    assert 'layout        str, default "rows"' in text
    assert "skip          tensor, default tensor<i64[0,2]: []>" in text
    assert "sums into its accumulator operand `acc`" in text
    assert lookup("sram.mvm").impl.__doc__.strip() in text
    assert "has side effects" in opref.describe_op(lookup("sram.load"))


# ---- a target added later is picked up with no change ------------------------------------------------

@dataclass(frozen=True)
class ToySpec(Spec):
    """A one-parameter spec."""

    target: ClassVar[str] = "toy-cim"
    rows: int = param(8, "Rows.", unit="rows", source="a test", ge=1)


def _toy_type(ctx):
    return [TensorType(DType.i32, ctx.types[0].shape)]


@op_def("toy.scale", infer=_toy_type, attrs={"factor": AttrSpec("int", 2, "the factor | a pipe")})
def toy_scale(ctx, x, bias=None):
    """``x * factor`` as int32.

    A second paragraph the reference keeps."""
    return (x * ctx.attrs["factor"]).astype(np.int32)


@dataclass(frozen=True)
class ToyTarget(Target):
    """A target defined by a test."""

    name: ClassVar[str] = "toy-cim"
    Spec: ClassVar[type[Spec]] = ToySpec
    description: ClassVar[str] = "A toy array for the op reference tests."
    ops = (toy_scale,)

    def capabilities(self) -> Capabilities:
        """Tiny arrays; instructions in ``toy.``."""
        return Capabilities(rows=self.spec.rows, cols=8, cell_bits=1, weight_bits_max=8, act_bits_max=8,
                            dac_bits=1, adc_bits=None, rows_per_op=8, arrays=1, own_ops=("toy.",))


@pytest.fixture
def toy_target(monkeypatch):
    monkeypatch.setattr(opdef, "_REGISTRY", dict(opdef._REGISTRY))  # the toy op leaves with the test
    monkeypatch.setitem(cimc.targets.BUILTIN, "toy-cim", f"{__name__}:ToyTarget")
    monkeypatch.setitem(cimc.targets._REGISTRY._sources, "toy-cim", f"{__name__}:ToyTarget")
    return "toy-cim"


def test_a_new_builtin_target_gets_a_page_with_no_change(toy_target):
    pages = opref.reference_pages()
    assert "toy-cim.md" in pages and "[toy-cim.md](toy-cim.md)" in pages["README.md"]
    page = pages["toy-cim.md"]
    assert "### `toy.scale`" in page and "`toy.scale(x, bias?) -> 1 result`" in page
    assert "| `factor` | int | `2` | the factor \\| a pipe |" in page
    assert "A second paragraph the reference keeps." in page
    assert "toy.scale" not in pages["sram-cim.md"] and "toy.scale" not in pages["shared.md"]


def test_cli_ops_target_equals_the_generated_page(capsys):
    assert main(["ops", "--target", "sram-cim", "--markdown"]) == 0
    assert capsys.readouterr().out == (DOCS / "sram-cim.md").read_text(encoding="utf-8")


def test_cli_ops_lists_every_op_and_documents_named_ones(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    for name in ("Conv(x, w, b?)", "q.requant(acc)", "sram.mvm(x, token, acc?)", "npu.gemm(", "vec.im2col("):
        assert name in out
    assert main(["ops", "q.requant", "vec.col2im"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("q.requant(acc) -> 1 result") and "vec.col2im(y) -> 1 result" in out


@pytest.mark.parametrize("argv, message", [
    (["ops", "q.requnt"], "no op is called 'q.requnt'; did you mean 'q.requant'?"),
    (["ops", "--target", "sram"], "unknown target 'sram'"),
    (["ops", "q.add", "--target", "npu"], "give op names or --target, not both"),
])
def test_cli_ops_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
