"""The pass manager: runs a pipeline of passes over a graph, with instruments around each pass.

A pass is a frozen dataclass subclassing :class:`Pass`; its fields are its options (declared with
:func:`option` so each has a default and a doc) and ``name`` is its kebab-case pipeline name.
``run(graph, ctx)`` rewrites the graph in place and returns ``PassResult(modified)``.

:class:`PassManager` runs the passes in order. Around each pass it calls the instruments'
optional ``before_pass(pass_, graph, ctx)`` / ``after_pass(pass_, graph, ctx, result)`` hooks
(TVM style): timing, verification (``verify_each``) and IR printing are instruments too, in that
order, followed by the user's. When a pass (or a check after it) raises, the manager re-raises
``PassError("pass 'x' failed after [a, b]: ...")`` and, if ``dump_dir`` is set, writes a
reproducer there: the failing pass's input IR (``reproducer.cimir``) and the pipeline that
reproduces the failure from it (``reproducer.pipeline``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TextIO

from cimc.errors import CimcError, PassError, describe_exception
from cimc.target import Spec, Target

if TYPE_CHECKING:
    from cimc.ir.core import Graph
    from cimc.pipeline import Pipeline

__all__ = [
    "Pass",
    "PassContext",
    "PassInstrument",
    "PassManager",
    "PassResult",
    "PassTiming",
    "PrintIRInstrument",
    "TimingInstrument",
    "VerifyInstrument",
    "option",
]

logger = logging.getLogger(__name__)


def option(default: Any, doc: str) -> Any:
    """Declare a pass option: a dataclass field with a default and the doc ``cimc passes`` shows."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class PassResult:
    """What a pass reports: whether it changed the graph."""

    modified: bool


@dataclass(frozen=True)
class Pass:
    """Base of every pass: a frozen dataclass whose fields are its options.

    Subclasses set ``name`` (kebab-case, the name used in pipelines) and implement ``run``.
    ``str(pass_)`` is its canonical pipeline text with every option spelled out.
    """

    name: ClassVar[str] = ""
    needs_target: ClassVar[bool] = False
    """Whether the pass reads the target (its geometry, limits or spec): then it never runs without one."""
    spec_type: ClassVar[type[Spec] | None] = None
    """The kind of target the pass runs for only, by its spec class (a target's lowering), or ``None``;
    setting it implies ``needs_target``."""
    per_chip: ClassVar[bool] = False
    """Whether the pass reads the chip compiled for (``PassContext.chip``: its faults, its cells' draws): a Monte
    Carlo run (``--mc N``) then compiles each chip's program from this pass on, for that chip."""

    def chip_blind(self) -> Pass:
        """This pass as it runs without using what it knows of the chip to place or write weights (a Monte Carlo
        run compiles each chip's program both ways, naive and mapped, to compare): by default the pass itself."""
        return self

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rewrite ``graph`` in place; say whether anything changed."""
        raise NotImplementedError(f"pass {type(self).__name__} does not implement run()")

    def check(self, target: Target | None) -> None:
        """Raise a ``PassError`` if the pass cannot run for ``target``: it needs one and none is given,
        or an option asks for more than the target's spec offers (subclasses add their checks after
        ``super().check(target)``). The pass manager calls it for every pass before running any."""
        if (self.needs_target or self.spec_type is not None) and target is None:
            raise PassError(f"pass '{self.name}' needs a target and none is given: name one with --target NAME "
                            f"(`cimc targets` lists them), or from Python PassContext(target=load_target(NAME)) "
                            f"with cimc.targets.load_target")
        if self.spec_type is not None and target is not None and not isinstance(target.spec, self.spec_type):
            want, have = self.spec_type.target, target.spec.target
            raise PassError(f"pass '{self.name}' lowers for target '{want}', but the target is '{have}': compile "
                            f"with --target {want}, or leave '{self.name}' out of the pipeline (the driver runs "
                            f"the target's own lowering)")

    def option_limit(self, option: str, value: int | None, low: int, high: int, what: str) -> None:
        """Raise a ``PassError`` naming option, value and limit if ``value`` (``None``: not given) is
        outside ``low..high``; ``what`` says where the limit comes from (the target's spec)."""
        if value is not None and not low <= value <= high:
            raise PassError(f"pass '{self.name}': option {option.replace('_', '-')}={value} is out of range: "
                            f"expected {low}..{high} ({what})")

    def __str__(self) -> str:
        from cimc.pipeline import format_pass

        return format_pass(self)


class PassInstrument:
    """Hooks called around every pass; subclass and override the ones you need."""

    def before_pass(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        """Called just before ``pass_`` runs."""

    def after_pass(self, pass_: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Called after ``pass_`` ran and returned ``result``."""


@dataclass
class PassContext:
    """Compile-wide settings every pass sees (pass options live in the pipeline text instead)."""

    verify_each: bool = False
    """Run the verifier on the input and after every pass."""
    print_ir_after: set[str] | Literal["all"] | None = None
    """Print the IR after the passes of these names (or after ``"all"``)."""
    print_ir_after_change: bool = False
    """With ``print_ir_after``, print only when the pass changed the graph (alone: after any change)."""
    dump_dir: Path | None = None
    """Where a failing pass's reproducer (input IR and pipeline) is written."""
    seed: int = 0
    """Seed for any pass that draws random numbers (calibration samples, noise)."""
    target: Target | None = None
    """The target compiled for, whose capabilities and spec passes may read (see :meth:`require_target`)."""
    calibration: Mapping[str, Any] | None = None
    """Sample inputs by graph input name (batch on axis 0), for passes that calibrate or measure."""
    chip: int = 0
    """Which chip of ``seed`` the program is for (``target.machine(seed, chip)``): a Monte Carlo run compiles chip
    ``i``'s program with ``chip = i`` (passes with ``per_chip``)."""
    instruments: list[Any] = field(default_factory=list)
    """Extra instruments, called after the built-in ones."""
    ir_stream: TextIO | None = None
    """Where printed IR goes (standard error when ``None``)."""

    def require_target(self, pass_: Pass) -> Target:
        """The target, checked for ``pass_`` (:meth:`Pass.check`: a clear error if there is none, it is
        of another kind than the pass runs for, or an option exceeds its limits)."""
        pass_.check(self.target)
        if self.target is None:  # a pass that reads the target without declaring needs_target
            raise PassError(f"pass '{pass_.name}' needs a target and none is given (--target NAME)")
        return self.target


class PassTiming(NamedTuple):
    """How long one pass took and whether it changed the graph."""

    name: str
    seconds: float
    modified: bool


class TimingInstrument(PassInstrument):
    """Records the wall time of every pass."""

    def __init__(self) -> None:
        self.records: list[PassTiming] = []
        self._start = 0.0

    def before_pass(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def after_pass(self, pass_: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Record the time since ``before_pass``."""
        self.records.append(PassTiming(pass_.name, time.perf_counter() - self._start, result.modified))

    def table(self) -> str:
        """The records as an aligned text table with a total line."""
        rows = [(r.name, f"{r.seconds:.4f}", "yes" if r.modified else "no") for r in self.records]
        rows.append(("total", f"{sum(r.seconds for r in self.records):.4f}", ""))
        width = max([4, *(len(r[0]) for r in rows)])
        lines = [f"{'pass':<{width}}  {'time (s)':>9}  changed"]
        lines += [f"{a:<{width}}  {b:>9}  {c}".rstrip() for a, b, c in rows]
        return "\n".join(lines)


class VerifyInstrument(PassInstrument):
    """Runs the verifier after every pass (so a broken graph is blamed on the pass that broke it)."""

    def after_pass(self, pass_: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Verify ``graph``; a ``VerifyError`` here becomes the pass's failure."""
        from cimc.ir.verifier import verify

        verify(graph)


class PrintIRInstrument(PassInstrument):
    """Prints the IR after chosen passes, as parseable ``.cimir`` text under a comment header."""

    def __init__(self, after: set[str] | Literal["all"] | None, *, only_changed: bool = False,
                 stream: TextIO | None = None) -> None:
        self.after = after
        self.only_changed = only_changed
        self.stream = stream

    def after_pass(self, pass_: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Print ``graph`` if ``pass_`` is one of the chosen passes (and changed it, if asked)."""
        chosen = self.after is None or self.after == "all" or pass_.name in self.after
        if not chosen or (self.only_changed and not result.modified):
            return
        from cimc.text import print_graph

        stream = self.stream or sys.stderr
        text = print_graph(graph).rstrip("\n")
        stream.write(f"# -----// IR after {pass_} //----- #\n{text}\n")
        stream.flush()


class PassManager:
    """Runs a pipeline over graphs; keeps the timing of the last run."""

    def __init__(self, passes: Pipeline | str | Iterable[Pass] = (),
                 ctx: PassContext | None = None, *, before: Iterable[str] = ()) -> None:
        from cimc.pipeline import Pipeline

        if isinstance(passes, str):
            passes = Pipeline.parse(passes)
        self.pipeline = passes if isinstance(passes, Pipeline) else Pipeline(tuple(passes))
        self.ctx = ctx or PassContext()
        self.before = tuple(before)
        """Names of the passes that ran on the graph before this pipeline (an earlier part of one compile),
        for the message of a failure."""
        self.timing = TimingInstrument()

    @property
    def timings(self) -> list[PassTiming]:
        """``(pass name, seconds, modified)`` for each pass of the last run."""
        return list(self.timing.records)

    def instruments(self) -> list[Any]:
        """The instruments of a run: timing, verification, IR printing, then the context's own."""
        ctx = self.ctx
        out: list[Any] = [self.timing]
        if ctx.verify_each:
            out.append(VerifyInstrument())
        if ctx.print_ir_after or ctx.print_ir_after_change:
            out.append(PrintIRInstrument(ctx.print_ir_after, only_changed=ctx.print_ir_after_change,
                                         stream=ctx.ir_stream))
        return out + list(ctx.instruments)

    def run(self, graph: Graph) -> PassResult:
        """Run every pass in order on ``graph`` (in place); modified if any pass changed it."""
        ctx, passes = self.ctx, self.pipeline.passes
        for pass_ in passes:  # before any work: a missing target or an option beyond the target's limits
            pass_.check(ctx.target)
        self.timing.records.clear()
        instruments = self.instruments()
        if ctx.verify_each:
            from cimc.ir.verifier import verify

            try:
                verify(graph)
            except CimcError as e:
                raise PassError(f"the input graph does not verify, before any pass ran: {e}") from e
        modified = False
        for i, pass_ in enumerate(passes):
            snapshot = graph.copy() if ctx.dump_dir is not None else None
            try:
                for inst in instruments:
                    if hasattr(inst, "before_pass"):
                        inst.before_pass(pass_, graph, ctx)
                logger.info("running pass %s", pass_)
                result = pass_.run(graph, ctx)
                if not isinstance(result, PassResult):
                    raise PassError(f"run() returned {result!r}, not a PassResult")
                for inst in instruments:
                    if hasattr(inst, "after_pass"):
                        inst.after_pass(pass_, graph, ctx, result)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # a pass from a plugin may even exit: still the pass's failure
                ran = [*self.before, *(p.name for p in passes[:i])]
                done = f"after [{', '.join(ran)}]" if ran else "as the first pass"
                why = describe_exception(e)
                where = ""
                if snapshot is not None:
                    where = f" (reproducer: {self._write_reproducer(snapshot, i)})"
                raise PassError(f"pass '{pass_.name}' failed {done}: {why}{where}") from e
            modified |= result.modified
        return PassResult(modified)

    def _write_reproducer(self, graph: Graph, index: int) -> Path | str:
        """Write the failing pass's input IR and the pipeline from it on; return the .cimir path."""
        from cimc.fileio import write_atomic
        from cimc.pipeline import Pipeline
        from cimc.text import save_graph

        assert self.ctx.dump_dir is not None
        rest = str(Pipeline(self.pipeline.passes[index:]))
        path = Path(self.ctx.dump_dir) / "reproducer.cimir"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_graph(graph, path)
            header = (f"# cimc reproducer: the input of pass '{self.pipeline.passes[index].name}'\n"
                      f"# full pipeline: {self.pipeline}\n"
                      f"# reproduce with: cimc opt {path.name} --pipeline '{rest}'\n")
            text = header + path.read_text(encoding="utf-8")
            write_atomic(path, lambda f: f.write(text.encode("utf-8")))
            write_atomic(path.with_suffix(".pipeline"), lambda f: f.write(f"{rest}\n".encode()))
        except Exception as e:  # the pass's failure is the news; a failed dump must not hide it
            logger.warning("could not write the reproducer to %s: %s", path, e)
            return f"not written: {e}"
        return path
