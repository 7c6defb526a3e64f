"""The pass manager: order, timing, verification, IR printing, instruments, failures, reproducers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import pytest

from cimc.errors import PassError
from cimc.ir.core import Graph
from cimc.ir.types import DType, TensorType
from cimc.passes import register_pass
from cimc.passmanager import Pass, PassContext, PassInstrument, PassManager, PassResult, option
from cimc.pipeline import Pipeline
from cimc.text import load_graph, parse_graph

FOLD = "fold-constants{max-size=268435456 keep-ops=[DequantizeLinear]}"
TEXT = """graph @main(%x: f32[2]) {
  %a: f32[2] = const [1.0, 2.0]
  %b: f32[2] = const [3.0, 4.0]
  %c: f32[2] = Add(%a, %b) loc("fold_me")
  %y: f32[2] = Add(%x, %c) loc("add")
  return %y
}"""


@register_pass
@dataclass(frozen=True)
class BreakTestPass(Pass):
    """Breaks the graph on purpose: retypes a result wrongly, or raises."""

    name: ClassVar[str] = "break-test"
    mode: str = option("retype", "retype: give %y a wrong type; raise: raise ValueError")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if self.mode == "raise":
            raise ValueError("boom")
        graph.value("y").type = TensorType(DType.f32, (3,))
        return PassResult(True)


@register_pass
@dataclass(frozen=True)
class NoopTestPass(Pass):
    """Changes nothing."""

    name: ClassVar[str] = "noop-test"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(False)


def test_runs_in_order_and_times_each_pass():
    g = parse_graph(TEXT)
    pm = PassManager("noop-test,fold-constants,noop-test")
    assert pm.run(g).modified
    assert "c" in g.constants and g.ops() == {"Add": 1}
    assert [(t.name, t.modified) for t in pm.timings] == [
        ("noop-test", False), ("fold-constants", True), ("noop-test", False)]
    assert all(t.seconds >= 0 for t in pm.timings)
    table = pm.timing.table().splitlines()
    assert table[0].split() == ["pass", "time", "(s)", "changed"]
    assert table[2].startswith("fold-constants") and table[2].endswith("yes")
    assert table[-1].startswith("total")


def test_accepts_pipelines_and_pass_lists():
    from cimc.passes.fold_constants import FoldConstantsPass

    p = Pipeline.parse("fold-constants{max-size=4}")
    assert PassManager(p).pipeline == PassManager([FoldConstantsPass(max_size=4)]).pipeline == p
    assert not PassManager("").run(parse_graph(TEXT)).modified


def test_verify_each_blames_the_pass_that_broke_the_graph():
    pm = PassManager("fold-constants,break-test,noop-test", PassContext(verify_each=True))
    with pytest.raises(PassError, match=r"(?s)^pass 'break-test' failed after \[fold-constants\]: "
                                        r"graph .main. is malformed.*%y is typed f32\[3\]"):
        pm.run(parse_graph(TEXT))
    PassManager("break-test").run(parse_graph(TEXT))  # without verify_each nobody notices


def test_verify_each_checks_the_input_first():
    g = parse_graph(TEXT)
    g.value("y").type = TensorType(DType.f32, (3,))
    with pytest.raises(PassError, match="the input graph does not verify, before any pass ran"):
        PassManager("noop-test", PassContext(verify_each=True)).run(g)


def test_exception_becomes_pass_error_naming_the_passes_before():
    with pytest.raises(PassError) as e:
        PassManager("noop-test,fold-constants,break-test{mode=raise}").run(parse_graph(TEXT))
    assert str(e.value) == "pass 'break-test' failed after [noop-test, fold-constants]: ValueError: boom"
    assert isinstance(e.value.__cause__, ValueError)


def test_failure_writes_a_reproducer(tmp_path):
    pm = PassManager("fold-constants,break-test{mode=raise},noop-test", PassContext(dump_dir=tmp_path / "d"))
    with pytest.raises(PassError, match=r"\(reproducer: .*reproducer.cimir\)"):
        pm.run(parse_graph(TEXT))
    cimir, pipeline = tmp_path / "d" / "reproducer.cimir", tmp_path / "d" / "reproducer.pipeline"
    assert pipeline.read_text() == "break-test{mode=raise},noop-test\n"
    text = cimir.read_text()
    assert text.startswith("# cimc reproducer: the input of pass 'break-test'\n")
    assert f"# full pipeline: {FOLD},break-test{{mode=raise}},noop-test\n" in text
    g = load_graph(cimir)  # the input of the failing pass: already folded
    assert g.ops() == {"Add": 1} and "c" in g.constants
    with pytest.raises(PassError, match="failed as the first pass: ValueError: boom"):
        PassManager(pipeline.read_text().strip()).run(g)


def test_print_ir_after_named_passes_all_and_on_change():
    def printed(**kw: object) -> str:
        out = io.StringIO()
        PassManager("noop-test,fold-constants", PassContext(ir_stream=out, **kw)).run(parse_graph(TEXT))
        return out.getvalue()

    assert printed() == ""
    text = printed(print_ir_after={"fold-constants"})
    assert text.startswith(f"# -----// IR after {FOLD} //----- #\ngraph @main")
    assert text.count("IR after") == 1
    assert parse_graph(text).ops() == {"Add": 1}  # the dump is itself .cimir
    assert printed(print_ir_after="all").count("IR after") == 2
    assert "IR after noop-test" not in printed(print_ir_after="all", print_ir_after_change=True)
    assert printed(print_ir_after_change=True).count("IR after fold-constants") == 1


def test_user_instruments_see_every_pass():
    calls = []

    class Recorder(PassInstrument):
        def before_pass(self, pass_, graph, ctx):
            calls.append(("before", pass_.name, len(graph.nodes)))

        def after_pass(self, pass_, graph, ctx, result):
            calls.append(("after", pass_.name, result.modified))

    class OnlyAfter:  # duck-typed: hooks are optional
        def after_pass(self, pass_, graph, ctx, result):
            calls.append(("only-after", pass_.name))

    ctx = PassContext(instruments=[Recorder(), OnlyAfter()])
    PassManager("fold-constants,noop-test", ctx).run(parse_graph(TEXT))
    assert calls == [("before", "fold-constants", 2), ("after", "fold-constants", True),
                     ("only-after", "fold-constants"), ("before", "noop-test", 1),
                     ("after", "noop-test", False), ("only-after", "noop-test")]


def test_run_must_return_a_pass_result():
    @dataclass(frozen=True)
    class Sloppy(Pass):
        """Returns a bool."""

        name: ClassVar[str] = "sloppy"

        def run(self, graph, ctx):
            return True

    with pytest.raises(PassError, match=r"pass 'sloppy' failed as the first pass: run\(\) returned True, "
                                        r"not a PassResult"):
        PassManager([Sloppy()]).run(parse_graph(TEXT))


def test_pass_str_is_its_pipeline_text():
    assert str(BreakTestPass()) == "break-test{mode=retype}" and str(NoopTestPass()) == "noop-test"
