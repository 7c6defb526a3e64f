"""Train and export the cimc model zoo.

Every model is a small network trained on scikit-learn's handwritten digits (8x8 images,
10 classes; ``sklearn.datasets.load_digits``, shipped with scikit-learn, no download),
exported to ONNX by torch, checked with ``onnx.checker`` and scored with onnxruntime on the
held-back test split.

Usage (from the repository root, after ``pip install -e .[zoo]``)::

    python examples/zoo/train.py              # rebuild everything
    python examples/zoo/train.py --only mlp   # rebuild one model (may be repeated)

The script is deterministic: fixed seeds, one thread, ``torch.use_deterministic_algorithms``;
each model is seeded on its own, so ``--only NAME`` produces the same file as a full run.
It writes, next to itself:

* ``<name>.onnx``       one file per model, weights inline (no external data)
* ``digits_test.npz``   the test split: ``x`` float32 (N, 1, 8, 8) in [0, 1], ``y`` int64 (N,)
* ``digits_calib.npz``  a calibration subset of the training split: ``x`` float32 (64, 1, 8, 8)
* ``manifest.json``     per model: file, exporter, opset, parameters, I/O names and shapes,
  float top-1 measured with onnxruntime on ``digits_test.npz``

Only this script imports torch and scikit-learn; the ``cimc.zoo`` package does not.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import io
import json
import logging
import os
import random
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Single-threaded, deterministic math. Must be set before torch initializes its pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
TEST_SIZE = 0.25
CALIB_SIZE = 64
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 10

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)
# The dynamo exporter logs a warning per missing torchvision op; none are used here.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Digits:
    """The fixed train/test split of sklearn's digits, images (N, 1, 8, 8) in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_calib: np.ndarray


def load_data() -> Digits:
    """Load digits, scale to [0, 1], split 75/25 stratified, pick a calibration subset."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    # Calibration subset: a fixed, class-balanced draw from the *training* split.
    rng = np.random.default_rng(SPLIT_SEED)
    per_class = CALIB_SIZE // NUM_CLASSES
    picks: list[int] = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y_train == c)
        picks.extend(rng.choice(idx, size=per_class, replace=False).tolist())
    rest = np.setdiff1d(np.arange(len(y_train)), picks)
    picks.extend(rng.choice(rest, size=CALIB_SIZE - len(picks), replace=False).tolist())
    picks_arr = np.sort(np.asarray(picks))
    return Digits(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        x_calib=np.ascontiguousarray(x_train[picks_arr], dtype=np.float32),
    )


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` byte-for-byte reproducibly.

    Same format as ``np.savez_compressed`` (a deflated zip of ``.npy`` members, readable by
    ``np.load(..., allow_pickle=False)``), but with a fixed member timestamp so rebuilding
    does not change the file.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    path.write_bytes(buf.getvalue())


# --------------------------------------------------------------------------- models


class LeNetBN(nn.Module):
    """Two conv + BatchNorm + ReLU stages (max-pool, then avg-pool) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AvgPool2d(2),  # 4x4 -> 2x2
        )
        self.fc = nn.Linear(16 * 2 * 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same'-style padding) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.shortcut: nn.Module = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.conv1(x)))
        return self.relu(y + self.shortcut(x))


class ResNetTiny(nn.Module):
    """Stem conv, an identity-shortcut block, a strided projection-shortcut block, GAP, FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3), nn.ReLU())
        self.block1 = BasicBlock(16, 16, stride=1)  # 8x8
        self.block2 = BasicBlock(16, 32, stride=2)  # 4x4, 1x1/2 conv shortcut
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block2(self.block1(self.stem(x)))
        return self.fc(y.mean(dim=(2, 3)))


class MobileNetTiny(nn.Module):
    """Stem conv, then depthwise-separable blocks (3x3 depthwise + 1x1 pointwise), ReLU6."""

    def __init__(self) -> None:
        super().__init__()

        def dw_sep(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                conv_bn(cin, cin, 3, stride, groups=cin),
                nn.ReLU6(),
                conv_bn(cin, cout, 1),
                nn.ReLU6(),
            ]

        self.features = nn.Sequential(
            conv_bn(1, 16, 3),
            nn.ReLU6(),
            *dw_sep(16, 32, 1),  # 8x8
            *dw_sep(32, 64, 2),  # 4x4
        )
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class HybridViT(nn.Module):
    """Conv stem -> 16 tokens of width 32 -> one pre-norm transformer block -> mean -> FC.

    Attention is written with explicit matmuls (no nn.MultiheadAttention) so the export is
    MatMul / Softmax; reshapes avoid the batch dim so no shape subgraph is needed.
    """

    dim = 32
    heads = 2
    tokens = 16

    def __init__(self) -> None:
        super().__init__()
        d = self.dim
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, d, 2, stride=2),  # 8x8 -> 4x4 patches = 16 tokens
        )
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, d))
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, NUM_CLASSES)
        nn.init.normal_(self.pos, std=0.02)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        hd = self.dim // self.heads
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, hd))  # B, T, 3, H, hd
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3, B, H, T, hd
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (hd**-0.5)  # B, H, T, T
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v)  # B, H, T, hd
        return self.proj(out.transpose(1, 2).flatten(2))  # B, T, D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2) + self.pos  # B, T, D
        t = t + self.attention(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(self.norm_out(t).mean(dim=1))


class LSTMRows(nn.Module):
    """An LSTM reads the image row by row (8 steps of 8 pixels); FC on the last hidden state."""

    hidden = 32

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=8, hidden_size=self.hidden, batch_first=True)
        self.fc = nn.Linear(self.hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.squeeze(1)  # B, 1, 8, 8 -> B, 8 (steps), 8 (features)
        _, (h_n, _) = self.lstm(rows)
        return self.fc(h_n[-1])


class MLP(nn.Module):
    """Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


@dataclass(frozen=True)
class Spec:
    """How to build, train and export one zoo model."""

    name: str
    build: Callable[[], nn.Module]
    exporter: str  # "torchscript" or "dynamo"
    seed: int
    epochs: int
    lr: float
    weight_decay: float = 0.0
    description: str = ""
    # TorchScript exporter only: constant folding also fuses BatchNorm into the conv before
    # it, so lenet_bn turns it off to keep BatchNormalization nodes in the graph.
    fold_constants: bool = True


SPECS: tuple[Spec, ...] = (
    Spec(
        "lenet_bn",
        LeNetBN,
        "torchscript",
        seed=1,
        epochs=40,
        lr=1e-2,
        fold_constants=False,
        description="conv+BatchNorm+ReLU+MaxPool, conv+BatchNorm+ReLU+AvgPool, Gemm",
    ),
    Spec(
        "resnet_tiny",
        ResNetTiny,
        "dynamo",
        seed=2,
        epochs=30,
        lr=5e-3,
        weight_decay=1e-4,
        description="residual blocks (Add), strided 1x1 conv+BN shortcut, global mean, Gemm; "
        "the exporter folds every BN into its Conv",
    ),
    Spec(
        "mobilenet_tiny",
        MobileNetTiny,
        "dynamo",
        seed=3,
        epochs=40,
        lr=5e-3,
        weight_decay=1e-4,
        description="depthwise-separable convs (group=channels) with BN and ReLU6 (Clip), "
        "global mean, Gemm; the exporter folds every BN into its Conv",
    ),
    Spec(
        "hybrid_vit",
        HybridViT,
        "dynamo",
        seed=4,
        epochs=60,
        lr=3e-3,
        weight_decay=1e-4,
        description="conv stem, one transformer block (LayerNorm, MatMul attention, Softmax, "
        "GELU MLP), mean over tokens, Gemm",
    ),
    Spec(
        "lstm_rows",
        LSTMRows,
        "torchscript",
        seed=5,
        epochs=60,
        lr=1e-2,
        description="ONNX LSTM over the 8 image rows, Gemm on the last hidden state",
    ),
    Spec("mlp", MLP, "dynamo", seed=6, epochs=40, lr=5e-3, description="two Gemm layers with ReLU"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(spec: Spec, data: Digits, batch_size: int = 64) -> nn.Module:
    """Train ``spec``'s model with AdamW + cosine schedule; returns it in eval mode."""
    seed_everything(spec.seed)
    model = spec.build()
    xt = torch.from_numpy(data.x_train)
    yt = torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = (len(xt) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def torch_top1(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` in torch (eval mode)."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


# --------------------------------------------------------------------------- export


def export_torchscript(
    model: nn.Module, example: torch.Tensor, fold_constants: bool = True
) -> onnx.ModelProto:
    """TorchScript exporter, opset 17, symbolic batch dim.

    With ``fold_constants=False`` eval-mode BatchNorm stays a BatchNormalization node.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=TORCHSCRIPT_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=fold_constants,
            training=torch.onnx.TrainingMode.EVAL,
        )
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """Dynamo (torch.export) exporter, opset 18, weights inline, symbolic batch dim."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            verbose=False,
            opset_version=DYNAMO_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            optimize=True,
            report=False,
            verify=False,
        )
    assert program is not None
    return program.model_proto


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node debug metadata (stack traces with absolute paths) and doc strings.

    They make the file depend on where it was built and add nothing the compiler reads.
    """
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        vi.doc_string = ""
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.graph.metadata_props[:]
    return model


def shape_of(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Shape of a graph input/output: ints for fixed dims, names for symbolic ones."""
    dims: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def ort_top1(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and logits from onnxruntime (single thread, CPU)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return float((logits.argmax(1) == y).mean()), logits


def build_one(spec: Spec, data: Digits) -> dict[str, object]:
    """Train, export, check and score one model; returns its manifest entry."""
    t0 = time.perf_counter()
    model = train(spec, data)
    train_s = time.perf_counter() - t0
    t_top1 = torch_top1(model, data.x_test, data.y_test)
    example = torch.from_numpy(data.x_calib[:8])

    exporter = spec.exporter
    note = ""
    if exporter == "dynamo":
        try:
            proto = export_dynamo(model, example)
        except Exception as exc:  # fall back, and say so in the manifest
            note = f"dynamo export failed ({type(exc).__name__}: {exc}); used torchscript"
            print(f"  WARNING {spec.name}: {note}", file=sys.stderr)
            exporter = "torchscript"
            proto = export_torchscript(model, example, spec.fold_constants)
    else:
        proto = export_torchscript(model, example, spec.fold_constants)
    proto = clean(proto)
    onnx.checker.check_model(proto, full_check=True)
    blob = proto.SerializeToString()
    top1, logits = ort_top1(blob, data.x_test, data.y_test)
    with torch.no_grad():
        ref = model(torch.from_numpy(data.x_test)).numpy()
    max_err = float(np.abs(ref - logits).max())
    if max_err > 1e-4:
        raise RuntimeError(f"{spec.name}: onnxruntime differs from torch by {max_err:.3g}")

    file = f"{spec.name}.onnx"
    (HERE / file).write_bytes(blob)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ops = Counter(n.op_type for n in proto.graph.node)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"  {spec.name:15s} {exporter:11s} opset {opset}  params {n_params:6d}  "
        f"top1 ort {top1:.4f} (torch {t_top1:.4f}, max|d| {max_err:.1e})  "
        f"{len(blob) / 1024:.1f} KiB  train {train_s:.1f}s"
    )
    print(f"    ops: {dict(sorted(ops.items()))}")
    entry: dict[str, object] = {
        "name": spec.name,
        "file": file,
        "description": spec.description,
        "exporter": exporter,
        "opset": opset,
        "float_top1": round(top1, 6),
        "num_params": n_params,
        "inputs": [{"name": i.name, "shape": shape_of(i)} for i in proto.graph.input],
        "output": {"name": proto.graph.output[0].name, "shape": shape_of(proto.graph.output[0])},
        "op_types": dict(sorted(ops.items())),
    }
    if note:
        entry["note"] = note
    return entry


def check_names_match_package() -> None:
    """``cimc.zoo.NAMES`` (in __init__.py) must list exactly the models built here."""
    tree = ast.parse((HERE / "__init__.py").read_text(encoding="utf-8"))
    pkg_names: tuple[str, ...] | None = None
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "NAMES" for t in targets):
                assert node.value is not None
                pkg_names = tuple(ast.literal_eval(node.value))
    names = tuple(s.name for s in SPECS)
    if pkg_names != names:
        raise SystemExit(f"__init__.py NAMES {pkg_names} != train.py models {names}")


def _version(dist: str) -> str:
    """Installed version of a distribution, or "" if it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        action="append",
        choices=sorted(SPEC_BY_NAME),
        metavar="NAME",
        help="build only this model (repeatable); others keep their manifest entry",
    )
    args = ap.parse_args(argv)
    check_names_match_package()

    t0 = time.perf_counter()
    data = load_data()
    save_npz(HERE / "digits_test.npz", x=data.x_test, y=data.y_test)
    save_npz(HERE / "digits_calib.npz", x=data.x_calib)
    print(
        f"digits: train {len(data.y_train)}, test {len(data.y_test)}, calib {len(data.x_calib)}"
        f"; torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    )

    manifest_path = HERE / "manifest.json"
    old: dict[str, dict[str, object]] = {}
    if args.only and manifest_path.exists():
        old = {m["name"]: m for m in json.loads(manifest_path.read_text())["models"]}
    wanted = set(args.only or SPEC_BY_NAME)
    models = []
    for spec in SPECS:
        if spec.name in wanted:
            models.append(build_one(spec, data))
        elif spec.name in old:
            models.append(old[spec.name])
    manifest = {
        "dataset": "sklearn.datasets.load_digits, images/16 as float32 (N, 1, 8, 8)",
        "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SPLIT_SEED}, stratify=y)",
        "test_set": "digits_test.npz",
        "calibration_set": "digits_calib.npz",
        "built_with": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": _version("onnxscript"),
            "onnxruntime": ort.__version__,
            "scikit-learn": _version("scikit-learn"),
        },
        "models": models,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
