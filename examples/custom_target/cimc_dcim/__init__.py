"""dcim: digital SRAM compute-in-memory macros (adder trees, bit-serial inputs), a third-party target.

The target is this package, shaped like the built-in ones: ``spec`` (:class:`DcimSpec`), ``ops`` (the
``dcim.mvm`` instruction and its executor), ``lowering`` (``lower-dcim``) and ``cost`` (``op_cost``);
:class:`DcimTarget` declares them to the driver. It is registered through the ``cimc.targets`` entry
point in ``pyproject.toml``, so once installed ``cimc compile --target dcim`` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cimc.cost import Cost
from cimc.ir.core import Node
from cimc.target import VECTOR_OPS, Capabilities, Target
from cimc_dcim import cost
from cimc_dcim.lowering import LowerDcimPass
from cimc_dcim.ops import OPS
from cimc_dcim.spec import DcimSpec

__all__ = ["DcimSpec", "DcimTarget"]


@dataclass(frozen=True)
class DcimTarget(Target):
    """Digital SRAM CIM macros: exact adder trees over all rows, bit-serial inputs, a vector unit."""

    name: ClassVar[str] = "dcim"
    Spec: ClassVar[type[DcimSpec]] = DcimSpec
    description: ClassVar[str] = ("Digital SRAM compute-in-memory macros (an example third-party target): "
                                  "bit-serial inputs, every row summed by an exact adder tree, no ADC.")
    ops = OPS
    lowering_passes = (LowerDcimPass,)
    spec: DcimSpec = None  # type: ignore[assignment]

    def capabilities(self) -> Capabilities:
        """Macro geometry and bit limits; matrix ops on the macros, the rest on the vector unit."""
        s = self.spec
        return Capabilities(rows=s.rows, cols=s.cols, cell_bits=1, weight_bits_max=s.weight_bits_max,
                            act_bits_max=s.act_bits_max, dac_bits=1, adc_bits=None, rows_per_op=s.rows,
                            arrays=s.macros, vector_ops=VECTOR_OPS, own_ops=("dcim.",))

    def op_cost(self, node: Node) -> Cost:
        """Cycles and energy of one program op (the model: :mod:`cimc_dcim.cost`)."""
        return cost.op_cost(node, self.spec)
