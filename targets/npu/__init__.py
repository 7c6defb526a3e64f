"""npu: a digital INT8 MAC array (weight-stationary, systolic) with buffers, DMA and a vector unit.

The target is this package: ``spec`` (:class:`NpuSpec`, the hardware parameters), ``ops`` (the
``npu.dma_in`` / ``npu.gemm`` / ``npu.dma_out`` instructions and their executor), ``lowering``
(``lower-npu``) and ``cost`` (``op_cost``); :class:`NpuTarget` declares them to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cimc.cost import AreaPart, Cost
from cimc.ir.core import Node
from cimc.target import ARRAY_OPS, Capabilities, Target
from cimc.targets.npu import cost
from cimc.targets.npu.lowering import LowerNpuPass
from cimc.targets.npu.ops import OPS
from cimc.targets.npu.spec import NpuSpec

__all__ = ["NpuSpec", "NpuTarget"]


@dataclass(frozen=True)
class NpuTarget(Target):
    """The npu target: a digital INT8 MAC array that runs every op exactly."""

    name: ClassVar[str] = "npu"
    Spec: ClassVar[type[NpuSpec]] = NpuSpec
    description: ClassVar[str] = ("Digital NPU: a weight-stationary INT8 MAC array with weight, input and output "
                                  "buffers, DMA and a vector unit; runs every op exactly, attention matmuls included.")
    ops = OPS
    lowering_passes = (LowerNpuPass,)
    spec: NpuSpec = None  # type: ignore[assignment]  # None until __post_init__ sets the defaults

    def capabilities(self) -> Capabilities:
        """The MAC array as a digital array: whole words per PE and per cycle, no ADC; it runs every op
        (float matmuls and LSTM on the array in fp mode, everything else on the vector unit)."""
        s = self.spec
        return Capabilities(rows=s.mac_rows, cols=s.mac_cols, cell_bits=s.mac_bits, weight_bits_max=s.mac_bits,
                            act_bits_max=s.mac_bits, dac_bits=s.mac_bits, adc_bits=None, rows_per_op=s.mac_rows,
                            arrays=1, array_ops=(*ARRAY_OPS, "q.act_matmul"), dynamic_matmul=True, vector_ops=("*",),
                            own_ops=("npu.",), conv_ranks=(2,), array_name="MAC array")

    def op_cost(self, node: Node) -> Cost:
        """Cycles, energy, unit and MACs of one program op (the model: :mod:`cimc.targets.npu.cost`)."""
        return cost.op_cost(node, self.spec)

    def area(self) -> list[AreaPart]:
        """The MAC array's PEs, the weight, activation and output buffers, and the vector lanes, each from
        its spec parameter and its source."""
        return cost.area(self.spec)
