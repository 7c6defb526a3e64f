"""Integer matrix products ``(A - a0) @ (B - b0)`` of ``u8 A`` and ``s8 B``, exact in int32 wrapping like C.

onnxruntime's ``MatMulInteger`` (its MLAS kernels: VNNI dot products where the CPU has them) multiplies
8-bit operands into int32 sums, several times faster than a float32 BLAS product of the same shape
(``benchmarks/README.md``). Integer sums are exact whatever the order of the additions, except in a
kernel that holds a partial sum in a narrower saturating register: x86's ``vpmaddubsw`` adds two ``u8 x s8``
products into int16 and saturates past 32767, which onnxruntime's documentation names as the U8S8 kernels'
failing on CPUs without VNNI (an AVX2 CPU such as AMD's Zen 2 and 3). Its U8U8 kernels widen both operands to
16 bits first (``vpmaddwd``), which cannot saturate; ``B - b0`` is the same number as ``(B + 128) - (b0 + 128)``,
so a u8 x u8 session computes the same product from ``B``'s bytes with the sign bit flipped. So :func:`kernel`
gives the product only after it checked, on this machine, that no sum saturates: the u8 x s8 session, else the
u8 x u8 one, each on every corner of the operand ranges (each ``A`` all 0 or all 255, each ``B`` all -128 or
all 127, the zero points 0 and 128/-128) on shapes of every kernel path (vector by matrix, matrix by vector,
odd sizes, a batch), where any partial sum of like products is as large as it can be, and a sum past int32
that must wrap; else it is ``None`` and the caller multiplies in float.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

import numpy as np

__all__ = ["Kernel", "kernel", "u8s8_saturates"]

_PROBES = ((1, 300, 1), (1, 64, 37), (37, 64, 1), (67, 257, 131), (5, 70, 19, 3), (16, 1024, 200))
"""Shapes ``(M, K, N[, batch])`` the kernel is checked on."""
_WRAP = 70_000
"""K of the probe whose sums pass int32: 70,000 x 255 x 128 > 2**31."""


class Kernel:
    """``MatMulInteger`` in one onnxruntime session (its thread count: ``OPENBLAS_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` when set, as numpy's BLAS has, else onnxruntime's default; its threads do not spin
    between products, leaving the cores to the rest of the run). ``signed``: ``B`` is int8 in the session, else
    uint8 (``B + 128``, module docstring)."""

    def __init__(self, signed: bool = True) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        self.signed = signed
        b_type = TensorProto.INT8 if signed else TensorProto.UINT8
        g = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b", "a0", "b0"], ["y"])], "igemm",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, None),
             helper.make_tensor_value_info("b", b_type, None),
             helper.make_tensor_value_info("a0", TensorProto.UINT8, []),
             helper.make_tensor_value_info("b0", b_type, [])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, None)])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
        model.ir_version = min(model.ir_version, onnx.IR_VERSION)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = _threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(model.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        self._b_dtype = np.dtype(np.int8 if signed else np.uint8)
        self._zeros = {(int(v), np.dtype(t)): np.array(v, t) for v in (0, 128, -128) for t in (np.uint8, np.int8)
                       if np.iinfo(t).min <= v <= np.iinfo(t).max}

    def __call__(self, a: np.ndarray, b: np.ndarray, a0: int, b0: int, out: np.ndarray | None = None) -> np.ndarray:
        """``(a - a0) @ (b - b0)`` (``a`` u8, ``b`` s8, numpy's matmul broadcasting; ``a0`` 0 or 128, ``b0`` 0 or
        -128) in int32 wrapping like C, written into ``out`` (C-contiguous int32 of the product's shape) if given."""
        if not self.signed:
            b, b0 = np.bitwise_xor(np.asarray(b, np.int8).view(np.uint8), np.uint8(128)), b0 + 128
        return self.raw(a, b, a0, b0, out)

    def raw(self, a: np.ndarray, b: np.ndarray, a0: int, b0: int, out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`__call__` with ``b`` and ``b0`` already in the session's type: s8 and 0 or -128 when
        :attr:`signed`, else u8 and 0 or 128 (``b + 128``)."""
        io = self._session.io_binding()
        io.bind_cpu_input("a", np.ascontiguousarray(a, np.uint8))
        io.bind_cpu_input("b", np.ascontiguousarray(b, self._b_dtype))
        io.bind_cpu_input("a0", self._zeros[a0, np.dtype(np.uint8)])
        io.bind_cpu_input("b0", self._zeros[b0, self._b_dtype])
        if out is None:
            io.bind_output("y", "cpu")
            self._session.run_with_iobinding(io)
            return np.asarray(io.copy_outputs_to_cpu()[0])
        assert out.dtype == np.int32 and out.flags.c_contiguous
        io.bind_output("y", "cpu", 0, np.int32, out.shape, out.ctypes.data)
        self._session.run_with_iobinding(io)
        return out


def _threads() -> int:
    """Threads of the kernel: ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` when set (numpy's BLAS reads them
    too), else 0 (onnxruntime's default: one per core)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 0


def exact(k: Any) -> bool:
    """Whether kernel ``k`` gives every probe's product exactly (module docstring)."""
    rng = np.random.default_rng(0)
    for shape in _PROBES:
        M, K, N = shape[:3]
        lead = shape[3:]
        for a0, b0 in ((0, 0), (128, -128)):
            for av in (0, 255):
                for bv in (-128, 127):
                    a = np.full((M, K), av, np.uint8)
                    b = np.full((*lead, K, N), bv, np.int8)
                    want = np.full((*lead, M, N), (av - a0) * (bv - b0) * K, np.int64)
                    if not np.array_equal(k(a, b, a0, b0), want):
                        return False
            a = rng.integers(0, 256, (M, K), dtype=np.uint8)
            b = rng.integers(-128, 128, (*lead, K, N), dtype=np.int8)
            want = np.matmul(a.astype(np.int64) - a0, b.astype(np.int64) - b0)
            if not np.array_equal(k(a, b, a0, b0), want):
                return False
    a, b = np.full((1, _WRAP), 255, np.uint8), np.full((_WRAP, 1), -128, np.int8)
    wrapped = (255 * -128 * _WRAP + (1 << 31)) % (1 << 32) - (1 << 31)
    return bool(k(a, b, 0, 0)[0, 0] == wrapped)


_LOCK = threading.Lock()
_KERNEL: list[Kernel | None] = []


def _after_fork() -> None:
    """In a forked child: onnxruntime's sessions are not usable across a fork (their threads stayed in the
    parent) and destroying one there can crash joining them, so the child keeps the parent's session alive and
    unused (a reference it never drops) and builds its own on first use."""
    global _LOCK
    _LOCK = threading.Lock()
    if _KERNEL:
        k = _KERNEL.pop()
        if k is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(k))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def kernel() -> Kernel | None:
    """The process's :class:`Kernel`, built and checked (:func:`exact`) on first use: the u8 x s8 session, else the
    u8 x u8 one; ``None`` where onnxruntime cannot build either or no probe set passes."""
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                found: Kernel | None = None
                for signed in (True, False):
                    try:
                        k = Kernel(signed)
                    except Exception:  # no usable onnxruntime here: the float products stand in
                        break
                    ok = exact(k)
                    if signed:
                        _U8S8_FAILS[:] = [not ok]
                    if ok:
                        found = k
                        break
                _KERNEL.append(found)
    return _KERNEL[0]


_U8S8_FAILS: list[bool] = []
"""Set by :func:`kernel`: whether the u8 x s8 session failed :func:`exact` (empty: onnxruntime could not build it)."""


def u8s8_saturates() -> bool:
    """Whether onnxruntime's u8 x s8 ``MatMulInteger`` fails :func:`exact` on this machine (its kernels saturate,
    module docstring), as :func:`kernel` found when it chose a kernel: then onnxruntime's other u8 x s8 integer
    operators (``QLinearConv``, ``QLinearMatMul``, ...) run on the same kernels and can be wrong too. False where
    onnxruntime cannot build the session."""
    kernel()
    return bool(_U8S8_FAILS and _U8S8_FAILS[0])
