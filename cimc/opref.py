"""The op reference: what ``cimc ops`` prints and ``docs/instructions/`` holds, read from the op definitions.

Everything comes from each op's :class:`~cimc.ir.opdef.OpDef`: its operands are the parameters of
its implementation after ``ctx`` (``impl(ctx, x, token, acc=None)``: a parameter with a default is
an optional operand, ``*xs`` any number of operands), its result count and attribute schema (kind,
default, doc) are the definition's, and its documentation is the implementation's docstring. A
target's *instructions* are the ops its class declares (``Target.ops``, defined by its
``register_ops``); a target's reference adds its description, its
lowering passes, the docstring of each module defining its instructions (where a target describes
its instruction set as a whole) and the shared ops its vector unit runs. The *shared* ops are the
dotted-namespace ops of the core (``q.*``, ``vec.*``), which every lowering may emit.

Pages (:func:`reference_pages`, written by ``python docs/instructions/generate.py``):
``README.md`` (the index), ``shared.md``, and ``<target>.md`` for each built-in target
(``cimc.targets.BUILTIN``: a plugin target documents itself with ``cimc ops --target NAME``).
Nothing in a page depends on the machine, the order of imports or the ops tests define, so a
test can compare the committed pages with freshly generated ones.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from cimc.errors import InputError
from cimc.ir.opdef import REQUIRED, AttrSpec, OpDef, all_ops, lookup

if TYPE_CHECKING:
    from cimc.target import Capabilities

__all__ = ["REGENERATE", "describe_op", "find_ops", "op_index", "operands", "reference_pages", "shared_ops",
           "signature", "target_ops", "target_reference"]

Format = Literal["text", "markdown"]

REGENERATE = "python docs/instructions/generate.py"
"""The command that rewrites the generated pages."""

SHARED_PAGE = "shared.md"


def operands(opdef: OpDef) -> list[tuple[str, str]]:
    """``(name, kind)`` of each operand, kind ``"required"``, ``"optional"`` or ``"variadic"``: the
    implementation's parameters after ``ctx``, else ``x0, x1, ...`` from the operand counts."""
    try:
        params = list(inspect.signature(opdef.impl).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    out: list[tuple[str, str]] = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            out.append((p.name, "variadic"))
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            out.append((p.name, "required" if p.default is p.empty else "optional"))
    fixed = [o for o in out if o[1] != "variadic"]
    if len(fixed) == len(out) and (len(fixed) < opdef.min_inputs or
                                   (opdef.max_inputs is not None and len(fixed) < opdef.max_inputs)):
        hi = opdef.max_inputs
        out = [(f"x{i}", "required" if i < opdef.min_inputs else "optional") for i in range(hi or opdef.min_inputs)]
        if hi is None:
            out.append(("xs", "variadic"))
    return out


def _results(opdef: OpDef) -> str:
    lo, hi = opdef.min_outputs, opdef.max_outputs
    if hi == lo:
        return {0: "no result", 1: "1 result"}.get(lo, f"{lo} results")
    return f"{lo} or more results" if hi is None else f"{lo} to {hi} results"


def signature(opdef: OpDef) -> str:
    """``sram.mvm(x, token, acc?) -> 1 result``: operands (``?`` optional, ``...`` any number) and results."""
    marks = {"required": "", "optional": "?", "variadic": "..."}
    args = ", ".join(name + marks[kind] for name, kind in operands(opdef))
    return f"{opdef.name}({args}) -> {_results(opdef)}"


def _doc(opdef: OpDef) -> str:
    return inspect.cleandoc(opdef.impl.__doc__ or opdef.doc or "").strip()


def _default(value: object) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "unset"
    from cimc.text.printer import format_attr

    try:
        return format_attr(value)
    except Exception:  # a default the text format cannot print: say what it is
        return repr(value)


def _with_range(spec: AttrSpec) -> str:
    """The attribute's doc, and the values it may take when its definition bounds them."""
    doc = " ".join(spec.doc.split())
    if spec.lo is None and spec.hi is None and spec.choices is None:
        return doc
    return f"{doc.rstrip('.')} (allowed: {spec.allowed()})" if doc else f"allowed: {spec.allowed()}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default_cell(default: str) -> str:
    return default if default in ("required", "unset") else f"`{_cell(default)}`"


def describe_op(opdef: OpDef, fmt: Format = "text", *, level: int = 2) -> str:
    """One op in full: signature, properties, attributes (kind, default, doc, allowed values) and docstring."""
    props = []
    if any(kind == "variadic" for _, kind in operands(opdef)):
        hi = "or more" if opdef.max_inputs is None else f"to {opdef.max_inputs}"
        props.append(f"takes {opdef.min_inputs} {hi} operands")
    if opdef.has_side_effects:
        props.append("has side effects (machine state): never removed or reordered")
    if opdef.accumulator is not None:
        acc = operands(opdef)
        name = acc[opdef.accumulator][0] if opdef.accumulator < len(acc) else f"operand {opdef.accumulator}"
        props.append(f"sums into its accumulator operand `{name}`")
    doc = _doc(opdef)
    attrs = [(k, a.kind, _default(a.default), _with_range(a)) for k, a in opdef.attrs.items()]
    if fmt == "markdown":
        lines = [f"{'#' * level} `{opdef.name}`", "", f"`{signature(opdef)}`", ""]
        lines += [f"- {p}" for p in props] + ([""] if props else [])
        if attrs:
            lines += ["| attribute | kind | default | meaning |", "|---|---|---|---|"]
            lines += [f"| `{k}` | {kind} | {_default_cell(d)} | {_cell(doc_)} |" for k, kind, d, doc_ in attrs]
            lines.append("")
        else:
            lines += ["No attributes.", ""]
        if doc:
            lines += ["```text", doc, "```", ""]
        return "\n".join(lines).rstrip("\n") + "\n"
    lines = [signature(opdef)]
    lines += [f"  {p}" for p in props]
    if attrs:
        lines.append("  attributes:")
        w = max(len(k) for k, *_ in attrs)
        lines += [f"    {k:<{w}}  {kind}, {'required' if d == 'required' else 'default ' + d}: {' '.join(doc_.split())}"
                  .rstrip() for k, kind, d, doc_ in attrs]
    if doc:
        lines += ["", *("  " + line if line else "" for line in doc.splitlines())]
    return "\n".join(lines) + "\n"


def target_ops(name: str) -> list[OpDef]:
    """The instruction ops of target ``name``, as its class declares them (``Target.ops``; defined here)."""
    from cimc.targets import get_target

    cls = get_target(name)
    cls().register_ops()
    return list(cls.ops)


def shared_ops() -> list[OpDef]:
    """The core's dotted-namespace ops (``q.*``, ``vec.*``), which every target's lowering may emit."""
    return [d for n, d in all_ops().items() if "." in n and d.impl.__module__.startswith("cimc.ops.")]


def _modules(ops: Iterable[OpDef]) -> list[str]:
    return list(dict.fromkeys(d.impl.__module__ for d in ops))


def _module_doc(module: str) -> str:
    import sys

    mod = sys.modules.get(module)
    return inspect.cleandoc(mod.__doc__ or "").strip() if mod is not None else ""


def _vector_ops(caps: Capabilities) -> str:
    if "*" in caps.vector_ops:
        return "every op"
    return ", ".join(f"`{o}*`" if o.endswith(".") else f"`{o}`" for o in caps.vector_ops)


def _where_work_runs(caps: Capabilities) -> str:
    """Where the multiply-accumulates run: the weight layers, attention's matmuls, what is left in float."""
    act = caps.unit_of("q.act_matmul")
    attention = (f"on its {caps.array_name}, the second operand loaded on every inference" if act == "array" else
                 "on its vector unit's multipliers, not written into an array (a computed operand would be "
                 "written on every inference)" if act == "vector" else "nowhere: the target refuses them")
    return (f"Weight layers (`q.conv`, `q.gemm`, `q.matmul`; `legalize-convs` makes convolutions of every rank "
            f"and transposed ones into these) run on its {caps.array_name}. Matmuls of two activations "
            f"(attention's `q.act_matmul`) run {attention}. Float multiply-accumulates with constant weights "
            f"(`Conv`, `Gemm`, `LSTM`, ...) that the quantizer could not take run in float only when compiling with "
            f"`--allow-float`; the report's first line then says so, and its placement table says where each layer "
            f"runs.")


def _not_run(caps: Capabilities) -> list[tuple[str, str]]:
    """The ops cimc imports that ``caps`` does not run, with the reason (:data:`cimc.target.NOT_RUN`; every
    other op cimc imports, a target runs: ``tests/test_target_ops.py``)."""
    from cimc.target import NOT_RUN

    return [(op, why) for op, why in sorted(NOT_RUN.items()) if caps.unit_of(op) is None]


def target_reference(name: str, fmt: Format = "text") -> str:
    """The instruction reference of target ``name`` (the page ``docs/instructions/<name>.md`` in Markdown)."""
    from cimc.targets import get_target

    ops = target_ops(name)
    target = get_target(name)()
    caps = target.capabilities()
    passes = [p.name for p in type(target).lowering_passes]
    lowering = ", ".join(passes) or "none"
    if fmt == "text":
        out = [f"{name}: {' '.join(target.description.split())}", f"lowering passes: {lowering}",
               f"instructions: {', '.join(d.name for d in ops) or 'none'}", ""]
        out += [describe_op(d) for d in ops]
        out.append(f"its vector unit also runs: {_vector_ops(caps).replace('`', '')}")
        out += [_where_work_runs(caps).replace("`", "")]
        out += [f"it does not run {op}: {why}" for op, why in _not_run(caps)]
        return "\n".join(out) + "\n"
    out = [f"# `{name}` instructions", "",
           f"<!-- Generated from the op definitions by `{REGENERATE}`; do not edit. -->", "",
           " ".join(target.description.split()), "",
           f"Lowering passes: {', '.join(f'`{p}`' for p in passes) or 'none'}. "
           f"`cimc ops --target {name}` prints this reference; `cimc targets {name}` lists the target's "
           "hardware parameters. Operands marked `?` are optional; words are defined in the "
           "[glossary](../glossary.md).", ""]
    for module in _modules(ops):
        if doc := _module_doc(module):
            out += [f"## The instruction set (`{module}`)", "", "```text", doc, "```", ""]
    out += ["## Instructions", ""]
    if not ops:
        out += ["This target has no instructions of its own: its programs use shared ops only.", ""]
    out += [describe_op(d, "markdown", level=3) for d in ops]
    out += ["## Shared ops", "",
            f"A program for `{name}` also holds the shared ops of [shared.md]({SHARED_PAGE}) and the other "
            f"ops its vector unit runs: {_vector_ops(caps)}.", "", "## Where the work runs", "",
            _where_work_runs(caps), ""]
    if missing := _not_run(caps):
        out += ["## Ops it does not run", "", "Ops cimc imports that this target does not run, and why:", "",
                *(f"- `{op}`: {why}" for op, why in missing), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _shared_page() -> str:
    ops = shared_ops()
    out = ["# Shared ops", "", f"<!-- Generated from the op definitions by `{REGENERATE}`; do not edit. -->", "",
           "The ops of cimc's own namespaces that every target's programs may hold: the quantized integer ops "
           "`q.*` that the `quantize` pass emits (the [integer contract](../architecture.md#the-integer-contract)) "
           "and the digital helpers `vec.*` that lowerings share. Each target's vector unit runs them.", ""]
    for module in _modules(ops):
        if doc := _module_doc(module):
            out += [f"## `{module}`", "", "```text", doc, "```", ""]
    out += ["## Ops", ""]
    out += [describe_op(d, "markdown", level=3) for d in ops]
    return "\n".join(out).rstrip("\n") + "\n"


def op_index(fmt: Format = "text") -> str:
    """Every defined op (built-in, shared, each registered target's instructions) with its signature and
    the first line of its doc, by namespace."""
    from cimc.targets import all_targets

    for cls in all_targets().values():
        cls().register_ops()
    groups: dict[str, list[OpDef]] = {}
    for n, d in sorted(all_ops().items()):
        groups.setdefault(n.rsplit(".", 1)[0] + ".*" if "." in n else "ONNX", []).append(d)
    out = []
    for group in sorted(groups, key=lambda g: (g != "ONNX", g)):
        out += [f"## {group}", ""] if fmt == "markdown" else [f"{group}:"]
        for d in groups[group]:
            first = " ".join(_doc(d).split("\n\n")[0].split())
            if fmt == "markdown":
                out.append(f"- `{signature(d)}`" + (f": {first}" if first else ""))
            else:
                out.append(f"  {signature(d)}" + (f"  {first}" if first else ""))
        if fmt == "markdown":
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def find_ops(names: Iterable[str]) -> list[OpDef]:
    """The definitions of ``names`` (every target's instructions defined first); an ``InputError``
    with a did-you-mean for a name no one defines."""
    from cimc.targets import all_targets

    for cls in all_targets().values():
        cls().register_ops()
    out = []
    for name in names:
        d = lookup(name)
        if d is None:
            close = difflib.get_close_matches(name, list(all_ops()), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"no op is called '{name}'{hint} (`cimc ops` lists them)")
        out.append(d)
    return out


def reference_pages() -> dict[str, str]:
    """The generated pages of ``docs/instructions/`` by file name: the index, ``shared.md`` and one
    page per built-in target."""
    from cimc.targets import BUILTIN, get_target

    names = sorted(BUILTIN)
    pages = {f"{n}.md": target_reference(n, "markdown") for n in names}
    pages[SHARED_PAGE] = _shared_page()
    index = ["# Instruction reference", "", f"<!-- Generated from the op definitions by `{REGENERATE}`; do not edit. "
             "-->", "",
             "One page per target, generated from its instruction ops' definitions (operands, attributes with "
             "their kind, default and meaning, and each op's documentation), and one for the ops all targets "
             "share. `cimc ops --target T` prints the same from the command line, also for targets that "
             "other packages add.", "", "| page | target |", "|---|---|"]
    index += [f"| [{n}.md]({n}.md) | {_cell(' '.join(get_target(n).description.split()))} |" for n in names]
    index += [f"| [{SHARED_PAGE}]({SHARED_PAGE}) | the `q.*` and `vec.*` ops every target's programs use |", ""]
    pages["README.md"] = "\n".join(index)
    return dict(sorted(pages.items()))
