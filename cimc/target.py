"""Targets: the hardware cimc compiles for, declared as data.

A target is a frozen dataclass (:class:`Target`) holding a :class:`Spec`, the frozen dataclass of
its hardware parameters. Each parameter is declared with :func:`param`: a default, a one-line doc,
a unit and the source of the default (the paper, datasheet or tool it comes from, citing the
section of ``docs/hw-parameters.md`` that collects it, with that page's status tag: [C] read in the
source, [C2] read in a secondary source, [D] derived by the formula given, [U] unconfirmed), and optional bounds
(``ge``/``gt``/``le``). :meth:`Spec.validate` runs on construction: it checks every field's type
and bounds, then the spec's cross-field rules (:meth:`Spec.check`), and raises one ``InputError``
naming each bad field, its value and the allowed range.

Naming of parameters: energies end in ``_pj`` (picojoules per event the field names), latencies in
``_cycles`` (cycles of ``clock_mhz``), sizes in ``_bytes``, widths in ``_bits``; the unit is also
in each field's metadata.

TOML: one flat table, ``target = "<name>"`` then one key per parameter, each under comment lines
with its doc, unit and source; :meth:`Spec.from_toml` reads it back (``from_toml(to_toml()) ==
spec``). Unknown keys fail with a did-you-mean, wrong types name the expected type, syntax errors
are ``ParseError`` with line and column. ``key=value`` overrides (``--spec-set adc_bits=6``) parse
their value as a TOML value, with a bare word taken as a string.

Targets declare, the driver composes: generic code reads :meth:`Target.capabilities`,
:meth:`Target.default_pipeline`, ``Target.lowering_passes``, ``Target.ops`` and
:meth:`Target.op_cost`; nothing switches on names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cimc.cim.adc import lossless_adc_bits
from cimc.errors import InputError, ParseError

if TYPE_CHECKING:
    from cimc.cost import AreaPart, Cost
    from cimc.ir.core import Node
    from cimc.ir.opdef import OpDef
    from cimc.passmanager import Pass
    from cimc.pipeline import Pipeline

__all__ = ["ARRAY_OPS", "GATES_28NM", "LOSSY", "NOT_RUN", "SCALE_45_TO_22NM", "SCALE_AREA_28_TO_22NM", "VECTOR_OPS",
           "Capabilities", "Param", "Spec", "Target",
           "lossless_adc_bits", "param", "shared_param"]

SCALE_45_TO_22NM = "x 0.29 (45 nm -> 22 nm at 0.8 V, docs/hw-parameters.md §0 scaling table)"
"""How a spec cites an energy scaled from a 45 nm figure to 22 nm."""
SCALE_AREA_28_TO_22NM = "x (22/28)^2 = 0.617 (28 nm -> 22 nm, area proportional to the feature size squared)"
"""How a spec cites an area scaled from a 28 nm figure to 22 nm."""
GATES_28NM = ("from ZigZag-IMC's 28 nm gate primitives (imc_unit.py tech_param: NAND2 0.614 um^2, XOR2 2.4x; "
              "docs/hw-parameters.md §1.1) [C]: 1-b full adder = 3 NAND2 + 2 XOR2 = 4.789 um^2, 1-b AND multiplier = "
              "1 NAND2, DFF = 6 NAND2 = 3.684 um^2")
"""How a spec cites a logic area built from 28 nm gates."""

LOSSY = "cim.lossy"
"""Graph metadata key a lowering sets when its program is not meant to equal the integer reference bit
for bit (a lossy ADC, device noise); the value says why. Without it, ``--verify`` expects exactness."""

ARRAY_OPS = ("q.conv", "q.gemm", "q.matmul")
"""The integer matrix ops a target may run on its arrays (weights held in the array)."""
VECTOR_OPS = (
    # integer: requantization, the integer elementwise/pool ops of pre-quantized models, and the lowering's
    # shared helpers (every ``vec.*`` op, a namespace)
    "q.requant", "q.add", "q.quantize", "q.dequantize", "q.lut", "q.mul", "q.avg_pool", "q.softmax", "vec.",
    # the integer matmul of two activations (attention), on the vector unit's multipliers where the arrays do
    # not take it
    "q.act_matmul",
    # pooling and reductions
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "ReduceMean",
    "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
    "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum", "CumProd", "TopK",
    # elementwise, integer or float (what the quantizer leaves in float: residual adds, GELU, scaling)
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Elu",
    "Selu", "Celu", "ThresholdedRelu", "Softplus", "Softsign", "Mish", "Swish", "Shrink", "Exp", "Log", "Sqrt",
    "Reciprocal", "Neg", "Abs", "Sign", "Ceil", "Floor", "Round", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "IsNaN", "IsInf", "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max",
    "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
    "Xor", "Not", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Cast", "CastLike", "BitCast",
    "SwiGLU", "RotaryEmbedding",
    # normalisation and attention: per-row float work, and the matmuls between two activations that the
    # quantizer leaves in float (constant-weight matmuls become q.matmul, on the arrays)
    "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "RMSNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN", "MatMul",
    # data layout and shape arithmetic
    "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "Reshape",
    "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Resize",
    "Trilu", "Pad", "Identity", "Shape", "Size", "ConstantOfShape", "Range", "Dropout", "CenterCropPad", "Col2Im",
    "Compress", "EyeLike", "OneHot", "ReverseSequence", "NonZero", "Unique", "TensorScatter", "MaxUnpool",
    # sampling, detection, signal processing, losses, text features
    "AffineGrid", "GridSample", "RoiAlign", "MaxRoiPool", "NonMaxSuppression", "DFT", "STFT", "BlackmanWindow",
    "HammingWindow", "HannWindow", "MelWeightMatrix", "Det", "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss",
    "TfIdfVectorizer", "Attention", "LinearAttention",
    # float multiply-accumulates with weights: only with allow_float (cimc.driver.check_float_macs), where the
    # quantizer could not make them array ops
    "Conv", "ConvTranspose", "Gemm", "Einsum", "LSTM", "GRU", "RNN", "DeformConv", "CausalConvWithState")
"""The ops a digital vector unit runs: requantization, the shared ``vec.*`` lowering helpers (an entry
ending in ``.`` is a namespace), pooling, elementwise and normalisation ops (integer or float), the
matmuls between two activations (attention; integer ``q.act_matmul`` or float), data layout, and the
other tensor ops cimc imports. Float multiply-accumulates with constant weights (``Conv``, ``Gemm``,
``LSTM``, ...) are here so that a compile with ``allow_float`` runs them; without it, compiling refuses
them (:func:`cimc.driver.check_float_macs`). Every op the importer supports is here, an array op, or in
:data:`NOT_RUN` with the reason: ``tests/test_target_ops.py`` checks it, and each target's instruction page
lists the ops it does not run."""

NOT_RUN: dict[str, str] = {
    "QuantizeLinear": "an op of a pre-quantized model: the quantize pass adopts it (q.quantize, q.requant)",
    "DequantizeLinear": "an op of a pre-quantized model: the quantize pass adopts it (q.dequantize, a weight)",
    "QLinearConv": "an op of a pre-quantized model: the quantize pass adopts it as q.conv",
    "QLinearMatMul": "an op of a pre-quantized model: the quantize pass adopts it as q.matmul",
    "DynamicQuantizeLinear": "dynamic quantization: its scale is computed from each input at run time, and the "
                             "targets' integer ops need fixed scales",
    "ConvInteger": "an integer convolution that a pre-quantized model leaves as it is: the arrays take q.conv, "
                   "which the quantize pass makes of QDQ and QLinearConv models",
    "MatMulInteger": "an integer matmul that a pre-quantized model leaves as it is: the arrays take q.matmul, "
                     "which the quantize pass makes of QDQ and QLinearMatMul models",
}
"""Ops cimc imports that the shared vector unit does not run, each with the reason (a target whose
``vector_ops`` is ``("*",)`` runs them anyway)."""


def param(default: Any, doc: str, *, unit: str = "", source: str, ge: float | None = None,
          gt: float | None = None, le: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a spec parameter: a dataclass field whose metadata holds its doc, unit, the source of
    the default, and the bounds :meth:`Spec.validate` checks (``ge``: >=, ``gt``: >, ``le``: <=; ``choices``: the
    values a string may take)."""
    return field(default=default, metadata={"doc": doc, "unit": unit, "source": source, "ge": ge, "gt": gt,
                                            "le": le, "choices": choices})


_SHARED_PARAMS: dict[str, dict[str, Any]] = {
    "vec_op_cycles": dict(default=1, doc="Cycles of one vector instruction on vec_lanes elements.", unit="cycles",
                          source="assumption: single-cycle integer ALU lanes", ge=1),
    "vec_op_pj": dict(default=0.029, doc="Energy of one vector-unit add-class op (add, compare, shift, clip) on one "
                                         "element.", unit="pJ",
                      source=f"[D] Horowitz, ISSCC 2014: INT32 add 0.1 pJ at 45 nm (docs/hw-parameters.md §1.1) [C2] "
                             f"{SCALE_45_TO_22NM}", ge=0),
    "vec_mul_pj": dict(default=0.899, doc="Energy of one vector-unit multiply (a requantization multiplier) on one "
                                          "element.", unit="pJ",
                       source=f"[D] Horowitz, ISSCC 2014: INT32 multiply 3.1 pJ at 45 nm (docs/hw-parameters.md §1.1) "
                              f"[C2] {SCALE_45_TO_22NM}", ge=0),
    "fp_mac_pj": dict(default=1.334, doc="Energy of one FP32 multiply-accumulate (the float matmuls between two "
                                         "activations that the quantizer leaves in float, e.g. attention, and float "
                                         "recurrent layers).", unit="pJ",
                      source=f"[D] Horowitz, ISSCC 2014: FP32 mult 3.7 pJ + FP32 add 0.9 pJ = 4.6 pJ at 45 nm "
                             f"(docs/hw-parameters.md §1.1) [C2] {SCALE_45_TO_22NM}", ge=0),
    "sram_bit_area_um2": dict(default=0.13552, doc="Area of one bit of on-chip SRAM buffer (cells only, periphery "
                                                   "not counted).", unit="um^2",
                              source="[D] NeuroSim V1.4 Param.cpp SRAM cell 10 F x 28 F = 280 F^2 "
                                     "(docs/hw-parameters.md §2.2) [C] at F = 22 nm", gt=0),
    "vec_lane_area_um2": dict(default=3634.0, doc="Area of one vector-unit lane: a 32-bit adder, a 32 x 32 array "
                                                  "multiplier and three 32-bit registers.", unit="um^2",
                              source=f"[D] 32 full adders + (32 x 32 AND + 32 x 31 full adders) + 96 DFF = 5887 um^2 "
                                     f"{GATES_28NM} {SCALE_AREA_28_TO_22NM}", gt=0),
    "buffer_pj_per_byte": dict(default=0.997, doc="Energy to read or write one byte of a buffer.", unit="pJ/byte",
                               source="[D] 20 pJ x (64 KiB / 32 KB)^0.46 = 27.5 pJ per 64-bit access "
                                      "(docs/hw-parameters.md §1.2 fit to Horowitz 32 KB / 1 MB, inputs [U]) / 8 bytes "
                                      f"{SCALE_45_TO_22NM}",
                               ge=0),
}


def shared_param(name: str) -> Any:
    """A parameter every target with a digital vector unit and SRAM buffers declares alike (same default, doc and
    source): ``vec_op_cycles``, ``vec_op_pj``, ``vec_mul_pj``, ``fp_mac_pj``, ``buffer_pj_per_byte``,
    ``sram_bit_area_um2``, ``vec_lane_area_um2``."""
    kw = dict(_SHARED_PARAMS[name])
    return param(kw.pop("default"), kw.pop("doc"), **kw)


@dataclass(frozen=True)
class Param:
    """One spec parameter as :func:`param` declared it, with its resolved Python type."""

    name: str
    type: type
    default: Any
    doc: str
    unit: str
    source: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        """What the type accepts, in words ("an integer")."""
        return _KIND[self.type]

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``an integer in 1..16``, ``a number > 0`` or ``one of a, b``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.ge is not None and self.le is not None:
            return f"{self.kind} in {_num(self.ge)}..{_num(self.le)}"
        bounds = [f"{op} {_num(b)}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le)) if b is not None]
        return " ".join([self.kind, *bounds]) if bounds else self.kind

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this parameter, or ``None`` if it is."""
        if not _is(value, self.type):
            return f"{self.name} = {value!r} should be {self.kind}"
        if self.type is float and not math.isfinite(value):
            return f"{self.name} = {value!r} should be a finite number"
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)):
            return f"{self.name} = {value!r} is out of range: expected {self.allowed()} ({self.doc.rstrip('.')})"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} = {value!r} is not {self.allowed()}"
        return None


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_TOML_KIND = {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
              float: "a float"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _is(value: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, tp) and (tp is bool or not isinstance(value, bool))


_PARAMS: dict[type[Spec], tuple[Param, ...]] = {}


def _params(cls: type[Spec]) -> tuple[Param, ...]:
    """The parameters of a spec class, computed once per class (a dict rather than ``functools.cache``,
    whose ``Hashable`` argument type rejects a class whose instances are unhashable)."""
    known = _PARAMS.get(cls)
    if known is not None:
        return known
    types = {"int": int, "float": float, "bool": bool, "str": str}
    out = []
    for f in dataclasses.fields(cls):
        tp = f.type if isinstance(f.type, type) else types.get(str(f.type))
        if tp is None or "source" not in f.metadata:
            raise TypeError(f"{cls.__qualname__}.{f.name}: a spec parameter is an int, float, bool or str "
                            f"declared with param(default, doc, unit=..., source=...), found {f.type!r}")
        m = f.metadata
        out.append(Param(f.name, tp, f.default, m["doc"], m["unit"], m["source"], m["ge"], m["gt"], m["le"],
                         m.get("choices")))
    _PARAMS[cls] = params = tuple(out)
    return params


@dataclass(frozen=True)
class Spec:
    """Base of every target's hardware parameters: a frozen dataclass of scalar fields declared with
    :func:`param`, validated on construction, readable from and writable to TOML."""

    target: ClassVar[str] = "spec"
    """Name of the target the spec belongs to (the TOML ``target`` key, and the prefix of messages)."""

    def __post_init__(self) -> None:
        for p in _params(type(self)):  # an int given for a float parameter is stored as that float
            v = getattr(self, p.name)
            if p.type is float and type(v) is int:
                object.__setattr__(self, p.name, float(v))
        self.validate()

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """Every parameter of the spec, in declaration order."""
        return _params(cls)

    @classmethod
    def get_param(cls, key: str) -> Param:
        """The parameter called ``key`` (``-`` read as ``_``); an ``InputError`` with a did-you-mean if none."""
        by_name = {p.name: p for p in _params(cls)}
        name = key.strip().replace("-", "_")
        if name not in by_name:
            close = ([n for n in by_name if name and n.startswith(name)]  # a unique-enough prefix first
                     or difflib.get_close_matches(name, list(by_name), n=1))
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"{cls.target} spec has no parameter '{key}'{hint} "
                             f"(`cimc targets {cls.target}` lists them)")
        return by_name[name]

    def validate(self) -> None:
        """Check every field's type and bounds, then :meth:`check`; one ``InputError`` lists all problems."""
        errors = [msg for p in _params(type(self)) if (msg := p.problem(getattr(self, p.name)))]
        if not errors:
            errors = list(self.check())
        if errors:
            raise InputError(f"{self.target} spec: " + "; ".join(errors))

    def check(self) -> Iterator[str]:
        """Cross-field rules (e.g. ``rows_per_op <= rows``); yields one message per broken rule.
        Subclasses override it (and ``yield from super().check()``)."""
        return iter(())

    # -- TOML and overrides ------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, source: str | os.PathLike[str]) -> Spec:
        """Read a spec from TOML text or a file: a path object, or a string with no ``=``, no line
        break and some text is a file name; any other string is TOML (``cimc --spec`` always gives a
        path object). Missing keys keep their defaults."""
        if isinstance(source, os.PathLike) or ("=" not in source and "\n" not in source and source.strip()):
            from cimc.fileio import read_text

            where = str(source)
            text = read_text(source, f"the {cls.target} spec file")
        else:
            text, where = str(source), "<spec>"
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            msg, line, col = str(e), None, None
            if m := re.search(r" \(at line (\d+), column (\d+)\)$", msg):
                msg, line, col = msg[:m.start()], int(m[1]), int(m[2])
            elif msg.endswith(" (at end of document)"):
                msg, line = msg[:-len(" (at end of document)")], text.count("\n") + 1
                col = len(text.rsplit("\n", 1)[-1]) + 1
            raise ParseError(f"invalid TOML in the {cls.target} spec: {msg}", source=where, line=line,
                             column=col) from None
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> Spec:
        """Build a spec from a flat mapping as TOML gives it (``target`` key optional, checked)."""
        pre = f"{where}: " if where else ""
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "target":
                if value != cls.target:
                    raise InputError(f"{pre}this spec is for target {value!r}, not '{cls.target}'; "
                                     f"load it with that target or fix its `target` key")
                continue
            try:
                p = cls.get_param(key)
            except InputError as e:
                raise InputError(pre + str(e)) from None
            if p.name in kwargs:
                raise InputError(f"{pre}{cls.target} spec: parameter {p.name} is given twice (as '{key}' too)")
            kwargs[p.name] = cls._coerce(p, value, pre)
        try:
            return cls(**kwargs)
        except InputError as e:
            raise InputError(pre + str(e)) from None

    @classmethod
    def _coerce(cls, p: Param, value: Any, pre: str = "") -> Any:
        if _is(value, p.type):
            return float(value) if p.type is float else value
        found = _TOML_KIND.get(type(value), f"a {type(value).__name__}")
        raise InputError(f"{pre}{cls.target} spec: {p.name} expects {p.kind}, found {found} {value!r} "
                         f"(e.g. {p.name} = {_toml_value(p.default)})")

    def to_toml(self) -> str:
        """Every parameter as TOML, each under comments giving its doc, unit and source."""
        lines = [f"# cimc target spec: {self.target}. Every parameter with its doc, unit and the source of",
                 "# its default; edit values and load with Spec.from_toml (or `cimc ... --spec FILE`).",
                 f"target = {json.dumps(self.target)}"]
        for p in _params(type(self)):
            unit = f" [{p.unit}]" if p.unit else ""
            lines += ["", f"# {_one_line(p.doc)}{unit}", f"# source: {_one_line(p.source)}",
                      f"{p.name} = {_toml_value(getattr(self, p.name))}"]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The parameters by name, in declaration order."""
        return {p.name: getattr(self, p.name) for p in _params(type(self))}

    def replace(self, **overrides: Any) -> Spec:
        """A copy with some parameters changed (validated); unknown names fail with a did-you-mean."""
        return dataclasses.replace(self, **{self.get_param(k).name: v for k, v in overrides.items()})

    @classmethod
    def parse_overrides(cls, items: Iterable[str]) -> dict[str, Any]:
        """``["adc_bits=6", "clock-mhz=500"]`` as ``{"adc_bits": 6, "clock_mhz": 500.0}``: each value is a
        TOML value (a bare word is a string), checked against the parameter's type."""
        out: dict[str, Any] = {}
        for item in items:
            key, eq, text = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"spec override {item!r} should be key=value, e.g. adc_bits=6")
            p = cls.get_param(key)
            try:
                parsed = tomllib.loads(f"v = {text.strip()}")
                value = parsed["v"] if list(parsed) == ["v"] else text.strip()
            except tomllib.TOMLDecodeError:
                value = text.strip()
            out[p.name] = cls._coerce(p, value)
        return out

    def with_overrides(self, items: Iterable[str]) -> Spec:
        """A copy with ``key=value`` overrides applied (see :meth:`parse_overrides`)."""
        return self.replace(**self.parse_overrides(items))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return repr(v)  # int, or a float repr (1.0, 1e-05, inf): all valid TOML


@dataclass(frozen=True)
class Capabilities:
    """What a target offers the compiler: array geometry, bit limits, and where each op runs.

    An array holds ``rows`` x ``cols`` cells of ``cell_bits``; a weight of b bits spans
    ``ceil(b / cell_bits)`` columns. Inputs enter in slices of ``dac_bits`` (1 = bit-serial),
    ``rows_per_op`` word lines at a time; each column's partial sum passes an ADC of ``adc_bits``
    (``None``: digital accumulation, always exact). Ops in ``array_ops`` run on the arrays, ops in
    ``vector_ops`` on the digital vector unit, and ``own_ops`` are the target's instructions (the ops
    its lowering emits); an entry ending in ``.`` names a namespace (``"sram."``), and ``"*"`` in
    ``vector_ops`` means the vector unit runs every op. Any other op the target cannot run: the
    compile driver rejects it (:func:`cimc.driver.check_supported`).
    """

    rows: int
    cols: int
    cell_bits: int
    weight_bits_max: int
    act_bits_max: int
    dac_bits: int
    adc_bits: int | None
    rows_per_op: int
    arrays: int
    array_ops: tuple[str, ...] = ARRAY_OPS
    vector_ops: tuple[str, ...] = VECTOR_OPS
    dynamic_matmul: bool = False
    """Whether the arrays also run matmuls whose both operands are activations (attention)."""
    skips_zero_blocks: bool = False
    """Whether the arrays skip the word-line operations of all-zero row blocks (see ``sparsify``)."""
    own_ops: tuple[str, ...] = ()
    """The target's own instruction ops (names or namespaces such as ``"sram."``)."""
    spare_rows: int = 0
    """Physical rows of an array beyond ``rows``, for a placement to move rows onto (no weights planned there)."""
    spare_cols: int = 0
    """Physical columns of an array beyond ``cols``, likewise."""
    conv_ranks: tuple[int, ...] | None = None
    """Spatial ranks of ``q.conv`` the arrays window natively (``None``: every rank); ``legalize-convs``
    rewrites the others into ``q.matmul`` on im2col rows."""
    array_name: str = "arrays"
    """What the report calls the target's arrays (``"MAC array"`` for a digital one)."""
    cols_per_adc: int = 1
    """Physical columns that share one ADC (an ADC calibration fits one range per ADC by default)."""

    def unit_of(self, op: str) -> Literal["array", "vector", "own"] | None:
        """Where ``op`` runs: ``"array"``, ``"vector"``, ``"own"`` (a target instruction), or ``None``
        if this target does not run it."""
        units: tuple[tuple[Literal["array", "vector", "own"], tuple[str, ...]], ...] = (
            ("array", self.array_ops), ("own", self.own_ops), ("vector", self.vector_ops))
        for unit, ops in units:
            if op in ops or any(o.endswith(".") and op.startswith(o) for o in ops) or (unit == "vector" and "*" in ops):
                return unit
        return None

    def lossless_adc_bits(self, rows_per_op: int | None = None, dac_bits: int | None = None,
                          cell_bits: int | None = None) -> int:
        """:func:`lossless_adc_bits` for this geometry (or the arguments given instead)."""
        return lossless_adc_bits(self.rows_per_op if rows_per_op is None else rows_per_op,
                                 self.dac_bits if dac_bits is None else dac_bits,
                                 self.cell_bits if cell_bits is None else cell_bits)

    @property
    def adc_lossless(self) -> bool:
        """Whether every partial sum converts exactly (no ADC, or ``adc_bits >= lossless_adc_bits()``)."""
        return self.adc_bits is None or self.adc_bits >= self.lossless_adc_bits()


AnySpec = Spec
"""The spec base class, by a name a target's ``Spec`` class attribute does not hide."""



@dataclass(frozen=True)
class Target:
    """Base of every target: a frozen dataclass holding its :class:`Spec` (the defaults if none given).

    A target is one package under ``targets/`` (``spec.py``, ``ops.py``, ``lowering.py``, ``cost.py``
    and this class in ``__init__.py``) and declares everything the driver needs, on the class:
    ``name`` (kebab-case, registered in :mod:`cimc.targets`), ``Spec`` (its spec class),
    ``description``, ``ops`` (its instruction ops, each with its executor implementation),
    ``lowering_passes`` (its lowering pass classes, run in order after the front pipeline),
    ``program_passes`` (passes run on the lowered program after them), and
    the methods :meth:`capabilities` and :meth:`op_cost`.
    """

    name: ClassVar[str] = ""
    Spec: ClassVar[type[Spec]] = Spec
    description: ClassVar[str] = ""
    ops: ClassVar[tuple[OpDef, ...]] = ()
    """The target's instruction ops (:func:`cimc.ir.opdef.op_def`), defined by :meth:`register_ops`."""
    lowering_passes: ClassVar[tuple[type[Pass], ...]] = ()
    """The target's lowering pass classes: the driver runs them (default options) after the front
    pipeline, and pipelines name them like any pass (``lower-sram-cim{adc-bits=5}``)."""
    program_passes: ClassVar[tuple[type[Pass], ...]] = ()
    """Passes the driver runs on the lowered program after the lowering passes (default options, unless the
    pipeline names them after the lowering): generic passes that tune the instructions, such as
    ``calibrate-adc``."""
    spec: AnySpec = None  # type: ignore[assignment]  # None until __post_init__ sets the Spec class's defaults

    def __post_init__(self) -> None:
        cls = type(self)
        if self.spec is None:
            object.__setattr__(self, "spec", cls.Spec())
        elif not isinstance(self.spec, cls.Spec):
            raise InputError(f"target '{cls.name}' needs a {cls.Spec.__name__}, got a {type(self.spec).__name__}")

    def capabilities(self) -> Capabilities:
        """Geometry, bit limits and op placement, derived from the spec."""
        raise NotImplementedError(f"target {type(self).__name__} does not implement capabilities()")

    def op_cost(self, node: Node) -> Cost:
        """Cycles, energy, unit and MACs of one program op, from its attributes and static types."""
        raise NotImplementedError(f"target {type(self).__name__} does not implement op_cost()")

    def default_pipeline(self) -> str:
        """Pipeline text the driver runs before lowering: cleanup, quantization to the target's bit limits,
        then the integer convolutions rewritten into those its arrays take (``legalize-convs``)."""
        c = self.capabilities()
        return (f"fold-constants,fuse-batchnorm,quantize{{weight-bits={c.weight_bits_max} act-bits={c.act_bits_max}}},"
                f"legalize-convs")

    def lowering(self) -> Pipeline:
        """The lowering passes as a pipeline, each with its default options."""
        from cimc.pipeline import Pipeline

        return Pipeline(tuple(cls() for cls in type(self).lowering_passes))

    def machine(self, seed: int = 0, chip: int = 0) -> dict[str, Any]:
        """The machine state every run of this target's programs starts with (the interpreter's ``machine``),
        e.g. the device its arrays are (:data:`cimc.cim.machine.DEVICE`) on chip ``chip`` of ``seed`` (a Monte
        Carlo run's chip index: chip ``i`` is reproducible from ``(seed, i)`` alone); empty: the ideal machine."""
        return {}

    def chip(self, seed: int = 0, chip: int = 0) -> Any:
        """The chip (:class:`cimc.cim.chip.Chip`: stuck cells, per-cell variation) this target's spec describes,
        from its chip file or sampled from its fault models with ``seed`` (chip index ``chip``); ``None`` for a
        device that cannot fail. Mapping passes read it; :meth:`machine` runs programs on it."""
        return None

    def register_ops(self) -> None:
        """Define this target's instruction ops for the interpreter and verifier (idempotent)."""
        from cimc.ir.opdef import register_op

        for opdef in type(self).ops:
            register_op(opdef)

    def area(self) -> list[AreaPart] | None:
        """The hardware's area, one :class:`~cimc.cost.AreaPart` per kind of block with the source of its
        figure; ``None`` (this default): the target has no area model."""
        return None

    def cost_notes(self) -> list[str]:
        """Sentences on what this target's op costs assume beyond the shared cost model (for example what
        overlaps inside one op); the cost report prints them with its latency. Default: none."""
        return []

    def with_spec(self, **overrides: Any) -> Target:
        """A copy of this target with some spec parameters changed."""
        return dataclasses.replace(self, spec=self.spec.replace(**overrides))

    def describe(self) -> str:
        """Plain text for ``cimc targets``: name, description, then every parameter's value, unit and doc."""
        rows = [(p.name, _toml_value(getattr(self.spec, p.name)), p.unit or "-", _one_line(p.doc))
                for p in self.spec.params()]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{self.name}: {_one_line(self.description)}"]
        lines += [f"  {a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
        return "\n".join(lines)
