"""onnxruntime as the oracle: runs an ONNX model (file or proto) on named inputs.

onnxruntime's u8 x s8 integer kernels add two products in a saturating int16 on x86 CPUs without VNNI (AVX2 CPUs
such as AMD's Zen 2 and 3; onnxruntime's quantization documentation says so): a quantized model whose u8
activations meet int8 weights then gets results that are not the ONNX operators' integer arithmetic. Where
:mod:`cimc.cim.igemm`'s probe finds that on this machine, the oracle runs the model with those weights as uint8
(``w + 128``, zero point ``+ 128``: the same numbers by every operator's definition), which onnxruntime's u8 x u8
kernels multiply exactly (:func:`unsaturating`)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnx

from cimc.errors import InputError

__all__ = ["run_onnxruntime", "unsaturating"]

_INTEGER_MATRIX_OPS = {  # op: (activation zero point, weight, weight zero point) operand indices
    ("", "QLinearConv"): (2, 3, 5), ("", "QLinearMatMul"): (2, 3, 5), ("com.microsoft", "QGemm"): (2, 3, 5),
    ("", "ConvInteger"): (2, 1, 3), ("", "MatMulInteger"): (2, 1, 3)}
_FLOAT_MATRIX_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def run_onnxruntime(model: onnx.ModelProto | str | os.PathLike[str],
                    inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of onnxruntime (CPU) for ``inputs``, by graph output name."""
    import onnxruntime as ort

    from cimc.cim import igemm

    if igemm.u8s8_saturates():
        model, _ = unsaturating(model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model)))
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    ort.set_default_logger_severity(3)  # its warnings would print before cimc's own lines
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(f"onnxruntime cannot load the model: {e}") from None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def unsaturating(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every int8 weight initializer that meets u8 activations in an integer matrix product written
    as uint8 ``w + 128`` with its zero point ``+ 128`` (the same numbers by the operators' definitions), and how
    many weights were rewritten. Covered: the weight of ``QLinearConv``, ``QLinearMatMul``, ``QGemm``,
    ``ConvInteger`` and ``MatMulInteger`` whose activation zero point (or activation) is uint8, and a QDQ
    ``DequantizeLinear`` of an int8 weight all of whose readers are ``Conv``/``ConvTranspose``/``MatMul``/``Gemm``
    nodes whose other operand is dequantized from uint8 (onnxruntime fuses those into its integer kernels). Other
    nodes are left as they are; ``model`` itself is not changed."""
    from onnx import TensorProto, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    try:  # element types of every value (type inference needs no shapes)
        typed = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # a model onnx cannot infer: the declared types alone
        typed = g
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.input, *typed.value_info, *typed.output]}
    types.update({t.name: t.data_type for t in g.initializer})

    def u8(name: str) -> bool:
        """Whether value ``name`` is uint8 (by onnx's type inference)."""
        return types.get(name) == TensorProto.UINT8

    def dequantized_u8(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and u8(p.input[0])

    def int8_init(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.INT8

    made: dict[str, str] = {}

    def as_u8(name: str, like: str | None = None) -> str:
        """A uint8 initializer ``int8 value + 128`` (``name`` empty: 128 in the shape of ``like``)."""
        key = name or f"128:{like}"
        if key not in made:
            if name:
                v = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            else:
                v = np.full(numpy_helper.to_array(inits[like]).shape if like in inits else (), 128, np.int16)
            new = f"{name or 'zero_point'}__cimc_u8_{len(made)}"
            g.initializer.append(numpy_helper.from_array(v.astype(np.uint8), new))
            made[key] = new
        return made[key]

    count = 0
    for n in g.node:
        where = _INTEGER_MATRIX_OPS.get((n.domain if n.domain != "ai.onnx" else "", n.op_type))
        if where is None:
            continue
        az, w, wz = where
        act_u8 = u8(n.input[az]) if len(n.input) > az and n.input[az] else u8(n.input[0])
        w_zp = n.input[wz] if len(n.input) > wz else ""
        if not (act_u8 and int8_init(n.input[w]) and (not w_zp or int8_init(w_zp))):
            continue
        inputs = list(n.input) + [""] * (wz + 1 - len(n.input))
        inputs[w], inputs[wz] = as_u8(n.input[w]), as_u8(w_zp, like=None)
        del n.input[:]
        n.input.extend(inputs)
        count += 1
    for n in g.node:
        if n.op_type != "DequantizeLinear" or not int8_init(n.input[0]):
            continue
        zp = n.input[2] if len(n.input) > 2 else ""
        users = readers.get(n.output[0], [])
        if (zp and not int8_init(zp)) or not users or not all(
                u.op_type in _FLOAT_MATRIX_OPS and len(u.input) > 1 and u.input[1] == n.output[0]
                and dequantized_u8(u.input[0]) for u in users):
            continue
        inputs = [as_u8(n.input[0]), n.input[1], as_u8(zp, like=n.input[1])]
        del n.input[:]
        n.input.extend(inputs)
        count += 1
    return out, count
