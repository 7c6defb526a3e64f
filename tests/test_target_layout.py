"""Every target has the same shape: one package under ``targets/`` with the same modules, a ``Target``
class declaring its ops, lowering pass classes and ``op_cost``; the driver composes them (lowering
passes are nameable in pipelines through the target), and a pipeline that leaves array ops unlowered
is an error naming the target's lowering."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from cimc.cost import Cost
from cimc.driver import check_lowered, split_lowering
from cimc.errors import PassError
from cimc.ir.core import Graph
from cimc.ir.opdef import OpDef, lookup
from cimc.ir.types import DType, TensorType
from cimc.passes import all_passes, get_pass
from cimc.passmanager import Pass, PassContext, PassManager, PassResult
from cimc.pipeline import Pipeline
from cimc.target import Capabilities, Target
from cimc.targets import BUILTIN, all_targets, get_target

TARGETS = Path(__file__).resolve().parent.parent / "targets"
MODULES = ("__init__.py", "spec.py", "ops.py", "lowering.py", "cost.py")


def test_every_builtin_target_is_one_package_of_the_same_modules():
    folders = sorted(p.name for p in TARGETS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders == sorted(v.split(":")[0].rsplit(".", 1)[1] for v in BUILTIN.values())
    assert not [p.name for p in TARGETS.glob("*.py") if p.name != "__init__.py"], "a target outside its package"
    for folder in folders:
        assert sorted(p.name for p in (TARGETS / folder).glob("*.py")) == sorted(MODULES), folder


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_target_class_declares_ops_lowering_and_cost(name):
    cls = get_target(name)
    package = cls.__module__
    assert importlib.import_module(f"{package}.spec").__dict__[cls.Spec.__name__] is cls.Spec
    assert cls.ops and all(isinstance(d, OpDef) and d.impl.__module__ == f"{package}.ops" for d in cls.ops)
    assert cls.lowering_passes and all(issubclass(p, Pass) and p.__module__ == f"{package}.lowering"
                                       for p in cls.lowering_passes)
    assert cls.op_cost is not Target.op_cost and cls.capabilities is not Target.capabilities
    for p in cls.lowering_passes:  # named in pipelines through the target, lowering for it only
        assert get_pass(p.name) is p and p.name in all_passes() and p.spec_type is cls.Spec
    t = cls()
    t.register_ops()
    t.register_ops()  # idempotent
    assert all(lookup(d.name) is d for d in cls.ops)
    assert [type(p) for p in t.lowering().passes] == list(cls.lowering_passes)


def test_importing_a_target_defines_no_op(tmp_path):
    """Its ops are defined by ``register_ops`` (the driver), not as a side effect of an import."""
    import subprocess
    import sys

    code = ("import cimc.targets.sram_cim, cimc.targets.npu\n"
            "from cimc.ir.opdef import lookup\n"
            "print(lookup('sram.mvm'), lookup('npu.gemm'))")
    # away from the source tree, which ``-c`` would put first on sys.path (CI tests a plain install)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.split() == ["None", "None"]


@dataclass(frozen=True)
class _Lazy(Pass):
    """A lowering that lowers nothing."""

    name: ClassVar[str] = "lower-lazy-test"

    def run(self, graph, ctx: PassContext) -> PassResult:
        return PassResult(False)


@dataclass(frozen=True)
class _LazyTarget(Target):
    """A target whose lowering leaves the array ops."""

    name: ClassVar[str] = "lazy-test"
    lowering_passes = (_Lazy,)

    def capabilities(self) -> Capabilities:
        return Capabilities(rows=8, cols=8, cell_bits=1, weight_bits_max=8, act_bits_max=8, dac_bits=1,
                            adc_bits=None, rows_per_op=8, arrays=1)

    def op_cost(self, node) -> Cost:
        return Cost(0.0, 0.0, "vector")


def test_unlowered_array_ops_are_an_error_naming_the_lowering():
    g = Graph("main")
    x = g.add_input("x", TensorType(DType.u8, (2, 4)))
    w = g.add_constant(np.arange(12, dtype=np.int8).reshape(3, 4), "w")
    g.outputs.append(g.add_node("q.gemm", [x, w], {"x_zero_point": 0}, name="fc").outputs[0])
    with pytest.raises(PassError, match=r"target 'lazy-test': 1 array ops were not lowered to its instructions "
                                        r"\(q.gemm 'fc'\); its lowering passes \(lower-lazy-test\) did not take"):
        check_lowered(g, _LazyTarget())
    with pytest.raises(PassError, match=r"pass 'tile' needs a target and none is given"):
        PassManager("tile").run(g)
    assert all_targets()  # the registry is untouched by the local classes


def test_a_pipeline_naming_the_lowering_is_cut_before_it():
    """The integer reference is taken before any lowering, also when the pipeline names the lowering to
    give it options (else --verify would compare the program with itself)."""
    import cimc

    c = cimc.compile("zoo:mlp", pipeline="fold-constants,quantize,tile,lower-sram-cim{adc-bits=6}")
    calibrate = str(Pipeline.parse("calibrate-adc"))  # the target's program pass, after the lowering
    assert c.lowering == f"lower-sram-cim{{adc-bits=6}},{calibrate}"
    assert c.pipeline.endswith(",tile{rows=none cols=none cell-bits=none rows-per-op=none arrays=none encoding=none "
                               f"replicate=1 spare-rows=none spare-cols=none placement=identity}},{c.lowering}")
    assert "q.gemm" in c.quantized.ops() and not any(op.startswith("sram.") for op in c.quantized.ops())
    assert {n.attrs["adc_bits"] for n in c.program.nodes if n.op == "sram.mvm"} == {6}
    npu = get_target("npu")()
    front, lowering = split_lowering(Pipeline.parse("fold-constants,quantize"), npu)
    assert str(front) == str(Pipeline.parse("fold-constants,quantize")) and str(lowering) == "lower-npu"


def test_tile_options_may_use_less_of_the_arrays_never_more():
    from cimc.passes.tile import TilePass

    sram = get_target("sram-cim")()
    TilePass(rows=64, cols=32, cell_bits=1, rows_per_op=16, arrays=4).check(sram)
    for option, value, limit in [("rows", 256, 128), ("cols", 129, 128), ("cell_bits", 2, 1), ("arrays", 17, 16),
                                 ("rows_per_op", 65, 64)]:
        with pytest.raises(PassError, match=rf"^pass 'tile': option {option.replace('_', '-')}={value} is out of "
                                            rf"range: expected 1\.\.{limit} \(the target 'sram-cim' has "
                                            rf"{option} = {limit}"):
            TilePass(**{option: value}).check(sram)
    with pytest.raises(PassError, match=r"option rows-per-op=64 is out of range: expected 1\.\.32 \(word lines on "
                                        r"at once within rows = 32\)"):
        TilePass(rows=32, rows_per_op=64).check(sram)
    assert TilePass(rows=32).geometry(sram)["rows_per_op"] == 32  # the block is at most the rows used
    assert TilePass(cell_bits=2).geometry(sram.with_spec(cell_bits=2))["cell_bits"] == 2
