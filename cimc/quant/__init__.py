"""Quantization core shared by the ``quantize`` pass, the ``q.*`` ops and targets.

``params`` turns ranges and weights into scales and zero points (the integer contract of
``docs/architecture.md``: weights signed symmetric per output channel, activations unsigned per
tensor with a zero point, 2 to 8 bits); ``fixedpoint`` turns real requantization multipliers into
an int32 multiplier and a shift; ``calibrate`` (imported on demand, it runs the interpreter) observes
activation ranges.
"""

from cimc.quant.fixedpoint import quantize_multiplier, rescale, shared_multipliers
from cimc.quant.params import act_params, quantize_weights, weight_qmax

__all__ = ["act_params", "quantize_multiplier", "quantize_weights", "rescale", "shared_multipliers", "weight_qmax"]
