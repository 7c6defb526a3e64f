"""The ``cimc`` command line: import, optimise and run models, and list the passes.

Subcommands: ``import`` (ONNX to ``.cimir``), ``opt`` (run a pass pipeline; ``--target``, ``--spec`` and
``--spec-set`` give the target that passes mapping onto hardware need, as for ``compile``), ``run`` (reference
interpreter on given or random inputs; a ``.cimir`` file may hold any registered target's
instructions, e.g. a compiled ``program.cimir``, and an op no one defines is an error at its line
and column), ``compile`` (a target's program, report and checks, see
:mod:`cimc.driver`), ``passes`` (the registry with options and docs), ``targets`` (every target with
its hardware parameters), ``ops`` (every op, or the full reference of some ops or of a target's
instructions, :mod:`cimc.opref`). ``--plugin FILE.py`` imports a Python file first, so the passes and
targets it registers can be named.

One line per error: every error a user can cause (``CimcError``, ``OSError``) becomes one line
``cimc: error: ...`` on stderr and exit status 2; ``--debug`` shows the traceback instead. Anything
else is an internal error, also one line, marked as such. A plugin that raises anything or exits
(``BaseException``, ``SystemExit`` included) is an error naming the plugin. numpy's floating-point
warnings are off during a run (the checks that matter raise errors), and the warnings cimc logs are
held back and printed after a successful run, so a failing run prints exactly its error line.
SIGTERM is handled like Ctrl-C (SIGINT): outputs in progress are removed, ``cimc: interrupted``,
exit status 128 + the signal number. Output files are checked before any work and written
atomically (:mod:`cimc.fileio`), so a failed run never leaves half a file. ``--max-tensor-size``
sets the limit on any one tensor cimc allocates or reads (:mod:`cimc.limits`). ``compile --verify``
exits with status 1 when the program differs from the integer reference where it must equal it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

import numpy as np

import cimc
from cimc.errors import CimcError, InputError, describe_exception, shorten
from cimc.fileio import check_output_directory, check_output_file, write_atomic
from cimc.npzio import read_npy, read_npz, write_npz

if TYPE_CHECKING:
    from cimc.driver import ModelSource
    from cimc.ir.core import Graph
    from cimc.target import Target

__all__ = ["main"]

logger = logging.getLogger(__name__)


def load(path: str | Path) -> ModelSource:
    """Read a model (``.onnx``, ``.cimir`` or a bundled ``zoo:NAME``) with what it came from (a
    ``.cimir`` may be a compiled program: :func:`cimc.text.load_graph` defines every target's
    instructions first)."""
    from cimc.driver import load_source

    return load_source(path)


def save(graph: Graph, path: str | Path | None) -> None:
    """Write ``graph`` to ``path`` (``.cimir`` or ``.onnx`` by suffix), or as text to stdout."""
    if path is None:
        from cimc.text import print_graph

        sys.stdout.write(print_graph(graph).rstrip("\n") + "\n")
        return
    path = _output_file(path)
    if path.suffix == ".cimir":
        from cimc.text import save_graph

        save_graph(graph, path)
    elif path.suffix == ".onnx":
        from cimc.onnx_io import save_model

        save_model(graph, path)
    logger.info("wrote %s", path)


def _output_file(path: str | Path, suffixes: tuple[str, ...] = (".cimir", ".onnx")) -> Path:
    """``path`` checked as an output file of one of ``suffixes`` (before any work is done)."""
    p = check_output_file(path)
    if p.suffix not in suffixes:
        raise InputError(f"{path}: unknown output type {p.suffix or '(none)'!r}; expected "
                         + " or ".join(suffixes))
    return p


def _cmd_import(args: argparse.Namespace) -> None:
    if args.output is not None:
        _output_file(args.output)
    save(load(args.model).graph, args.output)


def _cmd_opt(args: argparse.Namespace) -> None:
    from cimc.passes import get_pass
    from cimc.passmanager import PassContext, PassManager
    from cimc.pipeline import Pipeline

    pipeline = Pipeline.parse(args.pipeline)  # before loading, so a typo fails fast
    if args.output is not None:
        _output_file(args.output)
    target = _target(args)
    for pass_ in pipeline.passes:  # before loading too: a missing target, options beyond it
        pass_.check(target)
    after: set[str] | Literal["all"] | None = None
    if args.print_ir_after:
        names = {n.strip() for spec in args.print_ir_after for n in spec.split(",") if n.strip()}
        after = "all" if "all" in names else names
        for name in names - {"all"}:
            get_pass(name)
    source = load(args.input)
    graph = source.graph
    ctx = PassContext(verify_each=args.verify_each, print_ir_after=after,
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
    rows: list[tuple[str, ...]] = [("output", "shape", "dtype", "min", "max", "mean")]
    for name, a in outputs.items():
        stats: tuple[str, ...] = ("-",) * 3
        if a.size and a.dtype.kind in "biuf":
            x = a.astype(np.float64)
            stats = tuple(f"{s:.6g}" for s in (x.min(), x.max(), x.mean()))
        rows.append((name, str(list(a.shape)), str(a.dtype), *stats))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _calibration(args: argparse.Namespace, source: ModelSource) -> dict[str, np.ndarray] | None:
    """``--calibration``'s arrays; for a bundled model without it, the zoo's calibration set."""
    if args.calibration:
        return read_npz(args.calibration, "--calibration")
    if source.zoo is not None:
        from cimc import zoo

        return {source.zoo.input_name: zoo.calibration_set()}
    return None


def _cmd_run(args: argparse.Namespace) -> None:
    from cimc.interpreter import run
    from cimc.verify import compare, top1_accuracy

    if args.output is not None:
        check_output_file(args.output)
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
        inputs = read_npz(args.inputs, "--inputs")
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
    outputs = run(graph, inputs, seed=args.seed, machine=target.machine(args.seed) if target is not None else None)
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
    if args.output is not None:
        write_atomic(args.output, lambda f: write_npz(f, outputs))


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

    fmt: opref.Format = "markdown" if args.markdown else "text"
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
    from cimc.onnx_io.dims import parse_dims
    from cimc.report import float_line, verify_failed, verify_summary

    target = _target(args)
    assert target is not None
    dims = parse_dims(args.dim)
    stem = args.model[4:] if args.model.startswith("zoo:") else Path(args.model).stem
    out = check_output_directory(f"{stem}.{target.name}.cimc" if args.output is None else args.output,
                                 args.force)  # before the work
    compiled = compile_model(args.model, target, pipeline=args.pipeline, seed=args.seed, verify=args.verify,
                             calibration=read_npz(args.calibration, "--calibration") if args.calibration else None,
                             inputs=read_npz(args.inputs, "--inputs") if args.inputs else None,
                             labels=read_npy(args.labels, "--labels") if args.labels else None,
                             verify_each=args.verify_each, allow_float=args.allow_float, mc=args.mc,
                             workers=args.workers, dims=dims)
    out = compiled.save(out, force=args.force)
    if compiled.float_layers:
        sys.stdout.write(float_line(compiled.float_layers) + "\n")
    cost = compiled.cost
    line = f"compiled {compiled.source.label} for {target.name}: {len(compiled.program.nodes)} ops"
    if cost is not None:
        lat = cost.latency_us
        line += f", {cost.per_inference.cycles:.0f} cycles" + (f" ({lat:.3f} us)" if lat is not None else "")
        line += f", {cost.per_inference.energy_pj / 1e3:.3f} nJ per inference"
        if cost.one_time.ops:
            line += f" + {cost.one_time.energy_pj / 1e3:.3f} nJ once (programming)"
    sys.stdout.write(f"{line} -> {out}\n")
    if compiled.verify is not None:
        sys.stdout.write("verify:\n" + verify_summary(compiled.verify) + "\n")
    return 1 if verify_failed(compiled.verify) else 0


def _load_plugins(files: Sequence[str]) -> None:
    """Import each plugin file (its ``register_pass``/``register_target`` calls take effect); a plugin
    that raises anything or exits is an error naming it."""
    import importlib.util

    from cimc.fileio import regular_file

    for i, file in enumerate(files):
        path = regular_file(file, "--plugin")
        spec = importlib.util.spec_from_file_location(f"cimc_plugin_{i}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise InputError(f"--plugin {file}: not a Python file that can be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            sys.modules.pop(spec.name, None)
            raise InputError(f"--plugin {file}: loading it failed: {describe_exception(e)}") from e


def _natural(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line, exit status 2, like every other error of cimc."""

    def error(self, message: str) -> NoReturn:
        """Print the error on one line and exit with status 2."""
        self.exit(2, f"cimc: error: {shorten(' '.join(message.split()))} (`{self.prog} --help` shows the usage)\n")


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
    p = _Parser(prog="cimc", description="Compile ONNX models for compute-in-memory hardware.")
    p.add_argument("--version", action="version", version=f"cimc {cimc.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import this Python file first, so the passes/targets it registers can be used (repeatable)")
    p.add_argument("--max-tensor-size", metavar="SIZE",
                   help="largest tensor cimc may allocate or read, e.g. 2G (default: 1/8 of the memory)")
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
    s.add_argument("--seed", type=_natural, default=0, help="seed for passes that draw random numbers")
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
    s.add_argument("--seed", type=_natural, default=0, help="seed for random inputs and noisy ops")
    s.add_argument("--batch", type=_positive, default=1, help="size of symbolic dims for random inputs")
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
    s.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="fix a symbolic input dim of the model (e.g. --dim seq=128; repeatable): costs count a "
                        "symbolic dim as 1 per inference, right for the batch only")
    s.add_argument("-o", "--output", metavar="DIR", help="output directory (default <model>.<target>.cimc)")
    s.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    s.add_argument("--verify", action="store_true",
                   help="run the program and compare with onnxruntime (float) and the quantized graph (exact)")
    s.add_argument("--inputs", metavar="NPZ",
                   help="inputs for --verify (default: zoo test split, else --calibration, else random)")
    s.add_argument("--labels", metavar="NPY", help="integer class labels for --verify (.npy, one per verification "
                                                   "input): top-1 of program, quantized and float model")
    s.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    s.add_argument("--allow-float", action="store_true",
                   help="run weight-carrying layers that are not quantized (Conv, Gemm, MatMul with a constant, "
                        "LSTM/GRU/RNN) in float on the target instead of failing; the report's first line says so")
    s.add_argument("--seed", type=_natural, default=0, help="seed for random inputs, calibration and noisy ops")
    s.add_argument("--mc", type=_positive, metavar="N", help="with --verify: run the program on N chips of the "
                   "target (chip i drawn from the seed and i) and report the spread of top-1 and output error")
    s.add_argument("--workers", type=_positive, metavar="W", help="processes for --mc (default min(2, cores))")
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


class Interrupted(KeyboardInterrupt):
    """A signal asked cimc to stop (SIGTERM is handled like SIGINT's ``KeyboardInterrupt``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` while the command runs (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _HeldWarnings(logging.Handler):
    """Log records of WARNING and above are kept until the run ends (printed after a success, dropped
    after an error unless -v); lower levels are printed as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.setFormatter(logging.Formatter("cimc: %(levelname)s: %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Hold or print one record."""
        line = " ".join(self.format(record).split("\n"))
        if record.levelno >= logging.WARNING:
            self.held.append(line)
        else:
            sys.stderr.write(line + "\n")

    def flush_held(self) -> None:
        """Print the held records."""
        for line in self.held:
            sys.stderr.write(line + "\n")
        self.held.clear()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cimc`` command; return the exit status (0 ok, 1 ``compile --verify`` found the program
    different from the integer reference where it must be exact, 2 error, 128 + N on signal N)."""
    from cimc.limits import max_tensor_bytes, parse_size, set_max_tensor_bytes

    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    handler = _HeldWarnings()
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    limit = max_tensor_bytes()
    try:
        with _signals(), np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's floating-point warnings
            if args.max_tensor_size is not None:
                set_max_tensor_bytes(parse_size(args.max_tensor_size))
            _load_plugins(args.plugin)
            status = args.func(args) or 0
    except KeyboardInterrupt as e:
        sys.stderr.write("cimc: interrupted\n")
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    except BaseException as e:
        if args.debug:
            raise
        if args.verbose:
            handler.flush_held()
        internal = getattr(e, "internal", False) or (
            not isinstance(e, CimcError | OSError | SystemExit) and type(e).__name__ != "DecodeError")
        hint = " (an internal error; --debug shows the traceback)" if internal else ""
        sys.stderr.write(f"cimc: error: {shorten(describe_exception(e))}{hint}\n")
        return 2
    finally:
        set_max_tensor_bytes(limit)
        logging.captureWarnings(False)
    handler.flush_held()
    return status


if __name__ == "__main__":
    sys.exit(main())
