"""Train and export the held-out attention models: digits classifiers kept out of the quantizer's tuning.

The quantizer's methods and their settings are chosen on the zoo (``examples/zoo``); these models
check them on networks of another shape, exported by both torch exporters, so that a figure on
them is not one the methods were fitted to. They use the zoo's digits split, calibration set and
training loop (``cimc.zoo.train``), and ``nn.MultiheadAttention`` rather than the zoo's hand-written
attention:

* ``row_transformer``: the 8 image rows as 8 tokens, a Linear embedding to width 24, a learned
  position embedding, two post-norm ``nn.TransformerEncoderLayer`` (4 heads of 6, ReLU MLP 24-48-24),
  mean over tokens, Linear;
* ``conv_mha``: a conv stem (3x3 conv 1->8 + BatchNorm + ReLU, 3x3 conv 8->24 + ReLU, 2x2 max-pool)
  giving 16 tokens of width 24, one pre-norm block (``nn.MultiheadAttention`` with 3 heads of 8,
  tanh-GELU MLP 24-72-24), LayerNorm, mean over tokens, Linear.

Each is exported twice, by the TorchScript exporter (``dynamo=False``, opset 17) and by the dynamo
exporter (opset 18), as ``<name>_torchscript.onnx`` and ``<name>_dynamo.onnx``, with the zoo's export
functions and cleaning; ``manifest.json`` records the float top-1 of each file (onnxruntime, digits
test split). Usage, from the repository root after ``pip install -e .[zoo]``::

    python examples/heldout/train.py

Deterministic like the zoo's script: the same tool versions rebuild the same bytes.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from cimc.zoo import train as zoo_train

HERE = Path(__file__).resolve().parent


class RowTransformer(nn.Module):
    """Rows as tokens, two post-norm transformer encoder layers, mean over tokens, Linear."""

    dim, heads, ff, layers, rows = 24, 4, 48, 2, 8

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, self.dim)
        self.pos = nn.Parameter(torch.zeros(1, self.rows, self.dim))
        layer = nn.TransformerEncoderLayer(self.dim, self.heads, self.ff, dropout=0.0, activation="relu",
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, self.layers, enable_nested_tensor=False)
        self.head = nn.Linear(self.dim, zoo_train.NUM_CLASSES)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.squeeze(1)) + self.pos  # B, 8 rows, 24
        return self.head(self.encoder(t).mean(dim=1))


class ConvMHA(nn.Module):
    """Conv stem to 16 tokens of width 24, one pre-norm block with nn.MultiheadAttention, Linear."""

    dim, heads = 24, 3

    def __init__(self) -> None:
        super().__init__()
        d = self.dim
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, d, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4 = 16 tokens
        )
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, self.heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 3 * d), nn.GELU(approximate="tanh"), nn.Linear(3 * d, d))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, zoo_train.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)  # B, 16, 24
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return self.head(self.norm_out(t).mean(dim=1))


SPECS = (
    zoo_train.Spec("row_transformer", RowTransformer, "torchscript,dynamo", seed=11, epochs=60, lr=3e-3,
                   weight_decay=1e-4,
                   description="rows as tokens, 2 post-norm nn.TransformerEncoderLayer (4 heads), mean, Linear"),
    zoo_train.Spec("conv_mha", ConvMHA, "torchscript,dynamo", seed=12, epochs=60, lr=3e-3, weight_decay=1e-4,
                   description="conv stem to 16 tokens, pre-norm nn.MultiheadAttention (3 heads), tanh-GELU MLP"),
)


def export(model: nn.Module, exporter: str, example: torch.Tensor) -> onnx.ModelProto:
    """``model`` exported by ``exporter`` (the zoo's export settings), cleaned and fully checked."""
    proto = (zoo_train.export_torchscript(model, example) if exporter == "torchscript"
             else zoo_train.export_dynamo(model, example))
    proto = zoo_train.clean(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main() -> int:
    """Train each model once, export it with both exporters, check against torch, write the manifest."""
    data = zoo_train.load_data()
    entries = []
    for spec in SPECS:
        model = zoo_train.train(spec, data)
        with torch.no_grad():
            ref = model(torch.from_numpy(data.x_test)).numpy()
        for exporter in spec.exporter.split(","):
            proto = export(model, exporter, torch.from_numpy(data.x_calib[:8]))
            blob = proto.SerializeToString()
            top1, logits = zoo_train.ort_top1(blob, data.x_test, data.y_test)
            err = float(abs(ref - logits).max())
            if err > 1e-4:
                raise RuntimeError(f"{spec.name} ({exporter}): onnxruntime differs from torch by {err:.3g}")
            file = f"{spec.name}_{exporter}.onnx"
            (HERE / file).write_bytes(blob)
            ops = Counter(n.op_type for n in proto.graph.node)
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            print(f"  {file:32s} opset {opset}  top1 {top1:.4f}  {len(blob) / 1024:.1f} KiB  "
                  f"ops {dict(sorted(ops.items()))}")
            entries.append({"name": f"{spec.name}_{exporter}", "file": file, "model": spec.name,
                            "description": spec.description, "exporter": exporter, "opset": opset,
                            "float_top1": round(top1, 6), "num_params": sum(p.numel() for p in model.parameters()),
                            "op_types": dict(sorted(ops.items()))})
    manifest = {"dataset": "the zoo's digits split (examples/zoo/digits_test.npz, digits_calib.npz)",
                "built_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                               "onnxscript": zoo_train._version("onnxscript")},
                "models": entries}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
