"""The ``cimc`` command line: import, optimise and run models, and list the passes.

Subcommands: ``import`` (ONNX to ``.cimir``), ``opt`` (run a pass pipeline; ``--target``, ``--spec`` and
``--spec-set`` give the target that passes mapping onto hardware need, as for ``compile``), ``run`` (reference
interpreter on given or random inputs; a ``.cimir`` file may hold any registered target's
instructions, e.g. a compiled ``program.cimir``, and an op no one defines is an error at its line
and column), ``compile`` (a target's program, report and checks, see
:mod:`cimc.driver`), ``passes`` (the registry with options and docs), ``targets`` (every target with
its hardware parameters), ``ops`` (every op, or the full reference of some ops or of a target's
instructions, :mod:`cimc.opref`). ``--plugin FILE.py`` imports
a Python file first, so the passes and targets it registers can be named. Every
error a user can cause (``CimcError``, ``OSError``, undecodable files) becomes one line
``cimc: error: ...`` on stderr and exit status 2; ``--debug`` shows the traceback instead.
``compile --verify`` exits with status 1 when the program differs from the integer reference where it
must equal it.
Output files are written to a temporary file and moved into place, so a failed run never leaves
half a file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

import cimc
from cimc.errors import CimcError, InputError
from cimc.npzio import read_npy, read_npz, write_npz

if TYPE_CHECKING:
    from cimc.driver import ModelSource
    from cimc.ir.core import Graph
    from cimc.target import Target

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _writable(path: str | Path) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: cannot write it, directory {path.parent} does not exist")
    return path


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> ModelSource:
    """Read a model (``.onnx``, ``.cimir`` or a bundled ``zoo:NAME``) with what it came from; a
    ``.cimir`` may be a compiled program, so every target's instructions are defined first."""
    from cimc.driver import load_source

    cimir = Path(str(path)).suffix == ".cimir"
    if cimir:
        _register_target_ops()
    source = load_source(path)
    if cimir:
        _check_ops(source.graph, Path(path))
    return source


def _register_target_ops() -> None:
    from cimc.targets import all_targets

    for cls in all_targets().values():
        cls().register_ops()


def _check_ops(graph: Graph, path: Path) -> None:
    """A ``ParseError`` at the line and column of the first node whose op no one defines."""
    import difflib
    import re

    from cimc.errors import ParseError
    from cimc.ir.opdef import all_ops

    known = all_ops()
    for node in graph.nodes:
        if node.op in known:
            continue
        line = col = None
        op = re.escape(node.op)
        for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if m := re.search(rf'= (?:{op}|"{op}")\(.*loc\("{re.escape(node.name)}"\)', text) or (
                    line is None and re.search(rf'= (?:{op}|"{op}")\(', text)):
                line, col = i, m.start() + 3
                if "loc(" in m.group(0):
                    break
        close = difflib.get_close_matches(node.op, list(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ParseError(f"node {node.name!r}: unknown op '{node.op}'; {hint}(`cimc` defines the ONNX ops, q.*, "
                         f"vec.* and each target's instructions)", source=str(path), line=line, column=col)


def save(graph: Graph, path: str | Path | None) -> None:
    """Write ``graph`` to ``path`` (``.cimir`` or ``.onnx`` by suffix), or as text to stdout."""
    if path is None:
        from cimc.text import print_graph

        sys.stdout.write(print_graph(graph).rstrip("\n") + "\n")
        return
    path = _writable(path)
    if path.suffix == ".cimir":
        from cimc.text import save_graph

        save_graph(graph, path)
    elif path.suffix == ".onnx":
        from cimc.onnx_io import save_model

        save_model(graph, path)
    else:
        raise InputError(f"{path}: unknown output type {path.suffix or '(none)'!r}; "
                         f"expected .cimir or .onnx")
    logger.info("wrote %s", path)


def _cmd_import(args: argparse.Namespace) -> None:
    save(load(args.model).graph, args.output)


def _cmd_opt(args: argparse.Namespace) -> None:
    from cimc.passes import get_pass
    from cimc.passmanager import PassContext, PassManager
    from cimc.pipeline import Pipeline

    pipeline = Pipeline.parse(args.pipeline)  # before loading, so a typo fails fast
    target = _target(args)
    for pass_ in pipeline.passes:  # before loading too: a missing target, options beyond it
        pass_.check(target)
    after: set[str] | str | None = None
    if args.print_ir_after:
        names = {n.strip() for spec in args.print_ir_after for n in spec.split(",") if n.strip()}
        after = "all" if "all" in names else names
        for name in names - {"all"}:
            get_pass(name)
    source = load(args.input)
    graph = source.graph
    ctx = PassContext(verify_each=args.verify_each, print_ir_after=after,  # type: ignore[arg-type]
                      print_ir_after_change=args.print_ir_after_change,
                      dump_dir=Path(args.dump_dir) if args.dump_dir else None, seed=args.seed,
                      calibration=_calibration(args, source), target=target)
    pm = PassManager(pipeline, ctx)
    try:
        pm.run(graph)
    finally:
        if args.timing:
            sys.stderr.write(pm.timing.table() + "\n")
    save(graph, args.output)


def _summary(outputs: dict[str, np.ndarray]) -> str:
    rows = [("output", "shape", "dtype", "min", "max", "mean")]
    for name, a in outputs.items():
        stats = ("-",) * 3
        if a.size and a.dtype.kind in "biuf":
            x = a.astype(np.float64)
            stats = tuple(f"{s:.6g}" for s in (x.min(), x.max(), x.mean()))
        rows.append((name, str(list(a.shape)), str(a.dtype), *stats))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _calibration(args: argparse.Namespace, source: ModelSource) -> dict[str, np.ndarray] | None:
    """``--calibration``'s arrays; for a bundled model without it, the zoo's calibration set."""
    if args.calibration:
        return read_npz(args.calibration)
    if source.zoo is not None:
        from cimc import zoo

        return {source.zoo.input_name: zoo.calibration_set()}
    return None


def _cmd_run(args: argparse.Namespace) -> None:
    from cimc.interpreter import run
    from cimc.verify import compare, top1_accuracy

    source = load(args.input)
    graph = source.graph
    labels = read_npy(args.labels, "--labels") if args.labels else None
    if labels is not None and not args.inputs:
        raise InputError("--labels goes with --inputs: the labels of those inputs, one per input"
                         + (" (--test-set has its own labels)" if args.test_set else ""))
    if args.test_set:
        if source.zoo is None:
            raise InputError("--test-set needs a bundled model (zoo:NAME); give other models --inputs")
        inputs, labels = {source.zoo.input_name: source.zoo.x_test}, source.zoo.y_test
    elif args.inputs:
        inputs = read_npz(args.inputs)
        if labels is not None:
            from cimc.verify import check_labels

            labels = check_labels(labels, int(next(iter(inputs.values())).shape[0]) if inputs else 0,
                                  what=f"--labels {args.labels}")
    else:
        from cimc.interpreter import random_inputs

        inputs = random_inputs(graph, args.seed, args.batch)
    target = _target(args)
    if args.pipeline:
        from cimc.passmanager import PassContext, PassManager

        ctx = PassContext(seed=args.seed, calibration=_calibration(args, source), target=target)
        pm = PassManager(args.pipeline, ctx)
        pm.run(graph)
        if args.timing:
            sys.stderr.write(pm.timing.table() + "\n")
    outputs = run(graph, inputs, seed=args.seed)
    sys.stdout.write(_summary(outputs) + "\n")
    if labels is not None:
        from cimc.verify import check_labels

        what = "test images" if args.test_set else "inputs"
        for name, value in outputs.items():
            if value.ndim >= 2:
                check_labels(labels, len(labels), value.shape[-1], what=f"--labels {args.labels}")
                sys.stdout.write(f"top-1 of {name} on the {len(labels)} {what}: "
                                 f"{100 * top1_accuracy(value, labels):.2f}%\n")
    if args.compare_onnxruntime:
        if source.onnx is None:
            raise InputError("--compare-onnxruntime needs an .onnx model (or zoo:NAME)")
        from cimc.onnx_io.runtime import run_onnxruntime

        sys.stdout.write(f"against onnxruntime: {compare(outputs, run_onnxruntime(source.onnx, inputs))}\n")
    if args.output:
        _write_atomic(_writable(args.output), lambda f: write_npz(f, outputs))


def _cmd_passes(args: argparse.Namespace) -> None:
    from cimc.passes import all_passes
    from cimc.pipeline import format_value, options_of, type_name

    lines = []
    for name, cls in all_passes().items():
        lines.append(f"{name}  {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
        for s in options_of(cls):
            default = "(required)" if s.required else f"= {format_value(s.default)}"
            lines.append(f"    {s.name}: {type_name(s.type)} {default}  {s.doc}".rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def _cmd_targets(args: argparse.Namespace) -> None:
    from cimc.targets import describe_target, describe_targets, dump_spec

    if args.dump:
        sys.stdout.write(dump_spec(args.dump))
    elif args.name:
        sys.stdout.write(describe_target(args.name) + "\n")
    else:
        sys.stdout.write(describe_targets() + "\n")


def _cmd_ops(args: argparse.Namespace) -> None:
    from cimc import opref

    fmt = "markdown" if args.markdown else "text"
    if args.target and args.names:
        raise InputError("give op names or --target, not both (`cimc ops --target T` documents all of T's "
                         "instructions)")
    if args.target:
        text = opref.target_reference(args.target, fmt)
    elif args.names:
        text = "\n".join(opref.describe_op(d, fmt) for d in opref.find_ops(args.names))
    else:
        text = opref.op_index(fmt)
    sys.stdout.write(text)


def _cmd_compile(args: argparse.Namespace) -> int:
    from cimc.driver import compile as compile_model
    from cimc.report import verify_failed, verify_summary

    target = _target(args)
    assert target is not None
    stem = args.model[4:] if args.model.startswith("zoo:") else Path(args.model).stem
    out = Path(args.output or f"{stem}.{target.name}.cimc")
    if out.exists() and not args.force:  # fail before the work
        raise InputError(f"{out} already exists; remove it, choose another with -o, or replace it with --force")
    compiled = compile_model(args.model, target, pipeline=args.pipeline, seed=args.seed, verify=args.verify,
                             calibration=read_npz(args.calibration) if args.calibration else None,
                             inputs=read_npz(args.inputs) if args.inputs else None,
                             labels=read_npy(args.labels, "--labels") if args.labels else None,
                             verify_each=args.verify_each)
    out = compiled.save(out, force=args.force)
    cost = compiled.cost
    line = f"compiled {compiled.source.label} for {target.name}: {len(compiled.program.nodes)} ops"
    if cost is not None:
        lat = cost.latency_us
        line += f", {cost.total.cycles:.0f} cycles" + (f" ({lat:.3f} us)" if lat is not None else "")
        line += f", {cost.total.energy_pj / 1e3:.3f} nJ"
    sys.stdout.write(f"{line} -> {out}\n")
    if compiled.verify is not None:
        sys.stdout.write("verify:\n" + verify_summary(compiled.verify) + "\n")
    return 1 if verify_failed(compiled.verify) else 0


def _load_plugins(files: Sequence[str]) -> None:
    """Import each plugin file (its ``register_pass``/``register_target`` calls take effect)."""
    import importlib.util

    for i, file in enumerate(files):
        path = Path(file)
        if not path.is_file():
            raise InputError(f"--plugin {file}: no such file")
        spec = importlib.util.spec_from_file_location(f"cimc_plugin_{i}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise InputError(f"--plugin {file}: not a Python file that can be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(spec.name, None)
            raise InputError(f"--plugin {file}: loading it failed: {_one_line(e)}") from e


def _add_target_args(s: argparse.ArgumentParser, default: str | None) -> None:
    """``--target``, ``--spec``, ``--spec-set``: the same on every command that runs passes."""
    s.add_argument("-t", "--target", default=default,
                   help="target (`cimc targets` lists them" + (f"; default {default})" if default else
                                                                "); passes that map onto hardware need one"))
    s.add_argument("--spec", metavar="FILE.toml", help="target spec (`cimc targets --dump T` writes a template)")
    s.add_argument("--spec-set", action="append", metavar="KEY=VALUE", help="override one spec parameter (repeatable)")


def _target(args: argparse.Namespace) -> Target | None:
    """The target ``--target``/``--spec``/``--spec-set`` give (``None`` without ``--target``; a spec
    without a target is an error)."""
    from cimc.targets import load_target

    if args.target is None:
        if args.spec or args.spec_set:
            raise InputError("--spec and --spec-set describe a target's hardware: give the target with --target NAME")
        return None
    target = load_target(args.target, args.spec, args.spec_set or ())
    target.register_ops()  # its lowering may run, and --verify-each then checks its instructions
    return target


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cimc``."""
    p = argparse.ArgumentParser(prog="cimc", description="Compile ONNX models for compute-in-memory hardware.")
    p.add_argument("--version", action="version", version=f"cimc {cimc.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import this Python file first, so the passes/targets it registers can be used (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("import", help="read an ONNX model and print or write it as .cimir")
    s.add_argument("model", help="the .onnx file (or zoo:NAME for a bundled model)")
    s.add_argument("-o", "--output", help="output .cimir (or .onnx) file; stdout if not given")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("opt", help="run a pass pipeline over a model")
    s.add_argument("input", help="an .onnx or .cimir file (or zoo:NAME for a bundled model)")
    s.add_argument("-p", "--pipeline", required=True, help="e.g. 'fold-constants,quantize{weight-bits=4}'")
    s.add_argument("-o", "--output", help="output .cimir or .onnx file; .cimir on stdout if not given")
    s.add_argument("--verify-each", action="store_true", help="verify the graph after every pass")
    s.add_argument("--print-ir-after", action="append", metavar="PASS|all",
                   help="print the IR to stderr after these passes (comma-separated, repeatable)")
    s.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR only after passes that changed it")
    s.add_argument("--dump-dir", metavar="DIR", help="write a reproducer here when a pass fails")
    s.add_argument("--timing", action="store_true", help="print the time each pass took to stderr")
    s.add_argument("--calibration", metavar="NPZ", help="sample inputs (by graph input name) for passes that calibrate")
    s.add_argument("--seed", type=int, default=0, help="seed for passes that draw random numbers")
    _add_target_args(s, None)
    s.set_defaults(func=_cmd_opt)

    s = sub.add_parser("run", help="run a model with the reference interpreter")
    s.add_argument("input", help="an .onnx or .cimir file (or zoo:NAME for a bundled model)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--inputs", metavar="NPZ", help=".npz of input arrays by graph input name")
    src.add_argument("--random", action="store_true", help="random inputs (seeded)")
    src.add_argument("--test-set", action="store_true",
                     help="a bundled model's held-back digits test split; prints top-1 against its labels")
    s.add_argument("-p", "--pipeline", metavar="SPEC", default="", help="passes to run before running the model")
    s.add_argument("--calibration", metavar="NPZ", help="sample inputs for passes that calibrate")
    s.add_argument("--labels", metavar="NPY", help="integer class labels of --inputs (.npy, one per input): "
                                                   "prints top-1 of each output")
    s.add_argument("--timing", action="store_true", help="print the time each pass took to stderr")
    s.add_argument("--compare-onnxruntime", action="store_true",
                   help="also run the original ONNX model in onnxruntime and report max abs error, "
                        "cosine similarity and top-1 agreement")
    s.add_argument("--seed", type=int, default=0, help="seed for random inputs and noisy ops")
    s.add_argument("--batch", type=int, default=1, help="size of symbolic dims for random inputs")
    s.add_argument("-o", "--output", help="write the outputs to this .npz, by graph output name")
    _add_target_args(s, None)
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("compile", help="compile a model for a target: program, report, optional verification")
    s.add_argument("model", nargs="?", default="zoo:lenet_bn",
                   help="an .onnx or .cimir file or zoo:NAME (default: the bundled zoo:lenet_bn)")
    _add_target_args(s, "sram-cim")
    s.add_argument("-p", "--pipeline", metavar="SPEC",
                   help="passes to run before lowering instead of the target's default pipeline")
    s.add_argument("--calibration", metavar="NPZ", help="calibration inputs by graph input name")
    s.add_argument("-o", "--output", metavar="DIR", help="output directory (default <model>.<target>.cimc)")
    s.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    s.add_argument("--verify", action="store_true",
                   help="run the program and compare with onnxruntime (float) and the quantized graph (exact)")
    s.add_argument("--inputs", metavar="NPZ",
                   help="inputs for --verify (default: zoo test split, else --calibration, else random)")
    s.add_argument("--labels", metavar="NPY", help="integer class labels for --verify (.npy, one per verification "
                                                   "input): top-1 of program, quantized and float model")
    s.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    s.add_argument("--seed", type=int, default=0, help="seed for random inputs, calibration and noisy ops")
    s.set_defaults(func=_cmd_compile)

    s = sub.add_parser("passes", help="list the passes with their options")
    s.set_defaults(func=_cmd_passes)

    s = sub.add_parser("ops", help="list the ops, or document some ops or a target's instructions")
    s.add_argument("names", nargs="*", metavar="OP", help="document these ops in full (e.g. sram.mvm q.requant)")
    s.add_argument("-t", "--target", help="document this target's instructions (what docs/instructions/ holds)")
    s.add_argument("--markdown", action="store_true", help="print Markdown, as the generated pages are")
    s.set_defaults(func=_cmd_ops)

    s = sub.add_parser("targets", help="list the hardware targets and their parameters")
    s.add_argument("name", nargs="?", help="describe only this target")
    s.add_argument("--dump", metavar="TARGET", help="print TARGET's default spec as TOML (edit it, pass it to --spec)")
    s.set_defaults(func=_cmd_targets)
    return p


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        msg = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    elif isinstance(e, CimcError | OSError):
        msg = str(e)
    else:
        msg = f"{type(e).__name__}: {e}"
    return "; ".join(part.strip() for part in msg.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cimc`` command; return the exit status (0 ok, 1 ``compile --verify`` found the program
    different from the integer reference where it must be exact, 2 error)."""
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="cimc: %(levelname)s: %(name)s: %(message)s", force=True)
    try:
        _load_plugins(args.plugin)
        status = args.func(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write("cimc: interrupted\n")
        return 130
    except Exception as e:
        if args.debug:
            raise
        internal = not isinstance(e, CimcError | OSError) and type(e).__name__ != "DecodeError"
        hint = " (an internal error; --debug shows the traceback)" if internal else ""
        sys.stderr.write(f"cimc: error: {_one_line(e)}{hint}\n")
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
