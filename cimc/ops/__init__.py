"""The built-in ops: ONNX-named ops with the semantics of the newest ONNX opset cimc targets.

Importing this package registers them all. The importer rewrites nodes of older opsets into
these forms (for example ``Unsqueeze`` with an ``axes`` attribute becomes one with an ``axes``
operand), so each op has one meaning.
"""

from cimc.ops import (  # noqa: F401
    attention,
    binary,
    detection,
    einsum,
    elementwise,
    grid,
    indexing,
    layout,
    loss,
    lowered,
    nn,
    norm,
    pool,
    qlinear,
    qoperator,
    quant,
    quantized,
    reduce,
    resize,
    rnn,
    signal,
    tensor,
    unary,
)
