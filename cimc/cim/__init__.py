"""The array model shared by every crossbar-like target (SRAM-CIM, memristor).

- :mod:`cimc.cim.encoding`: signed weights as unsigned cells (bit slices), packed per weight;
- :mod:`cimc.cim.tilemap`: typed tile maps: which part of a layer's weight matrix sits on which array,
  at which physical rows and columns (permutations, spares);
- :mod:`cimc.cim.adc`: the ADC (range, offset, step, clip, rounding) and the lossless resolution;
- :mod:`cimc.cim.crossbar`: the bit-serial MVM on row blocks, every partial sum through the ADC, and
  the shift-add;
- :mod:`cimc.cim.device` and :mod:`cimc.cim.chip`: the device hook (stored cell values, read noise)
  and chips, one draw of a device's static effects, as data (``.npz`` chip files);
- :mod:`cimc.cim.ops` and :mod:`cimc.cim.machine`: the load and MVM instructions' schema (attributes,
  type rules, checks) and their meaning: what the arrays hold during a run, and the MVM (a target
  defines its instructions with these);
- :mod:`cimc.cim.exact` and :mod:`cimc.cim.igemm`: the lossless MVM path, a layer's rounds as one exact
  product (an integer one where this machine's onnxruntime multiplies u8 by int8 exactly);
- :mod:`cimc.cim.work`: what an MVM does, counted per tile, for cost models;
- :mod:`cimc.cim.calibration`: the partial sums an MVM's ADCs see (histograms) and the ADC range that fits
  them (the ``calibrate-adc`` pass).

Core code: nothing here imports a target. ``docs/array-model.md`` describes the model for users.
"""

from cimc.cim.adc import Adc, lossless_adc_bits
from cimc.cim.chip import Chip
from cimc.cim.device import IDEAL, CellDevice, Device
from cimc.cim.encoding import ENCODINGS, Encoding
from cimc.cim.tilemap import Tile, TileMap

__all__ = ["ENCODINGS", "IDEAL", "Adc", "CellDevice", "Chip", "Device", "Encoding", "Tile", "TileMap",
           "lossless_adc_bits"]
