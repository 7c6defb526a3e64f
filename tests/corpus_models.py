"""The corpus of real architectures (``examples/corpus``) and the checks every file of it goes through.

``examples/corpus/build.py`` (torch, torchvision, timm, transformers) writes the ONNX files and
``manifest.json``; nothing here needs torch. For each file, :func:`check_run` and
:func:`check_compile` give one :class:`Outcome` per stage:

* ``run``: the file imports and cimc's interpreter gives onnxruntime's outputs on seeded inputs of the
  model's kind (:func:`draw_inputs`), within ``RTOL``/``ATOL`` (element-wise,
  ``|cimc - ort| <= ATOL + RTOL * |ort|``); the outputs must also differ between samples, so that
  a model that has collapsed to a constant cannot pass;
* ``compile:<target>``: ``cimc.compile`` for the target, calibrated on seeded inputs of the model's
  kind, verified on other seeded inputs: the program must equal the integer reference (the
  quantized graph) bit for bit; the figures against onnxruntime on the float model (max abs error,
  cosine) are recorded, not bounded, since they measure quantization, not correctness, and so are
  the multiply-accumulate ops the program leaves in float (``FLOAT_MAC_OPS``).

A stage that cannot run (a missing op, a missing lowering) fails with cimc's one-line error. Those
failures are expected where :data:`EXPECTED` names them, with a part of the message that must
appear, so a failure for another reason, or a stage that starts to pass, is a test failure
(``tests/test_corpus.py``). ``python tests/corpus_table.py --write`` runs every check and writes the
table of ``docs/corpus.md``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus"
RTOL, ATOL = 1e-3, 1e-4
MIN_SPREAD = 100 * ATOL
"""The least an output must vary between the samples of a run for the comparison to mean something."""
RUN_BATCH, CALIB_BATCH, VERIFY_BATCH = 4, 8, 4
TARGETS = ("npu", "sram-cim", "racetrack", "memristor")
"""The targets every file is compiled for (each built-in target of cimc)."""
SPECS: dict[str, dict[str, Any]] = {"memristor": {"ideal": True}}
"""Spec overrides of a target's compile stage: the memristor's ideal crossbar (its default device is noisy, so its
programs differ from the integer reference by design; the Monte Carlo tests measure that)."""

FLOAT_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "Attention"})
"""Float ops that multiply and accumulate: where a program still holds them, that work is not on the
target's arrays or MAC array (recorded as ``float_macs``, and listed by ``docs/corpus.md``)."""

EXPECTED: dict[tuple[str, str], str] = {}
"""``(file name, stage)`` -> a part of the error message the stage is expected to fail with today.
A stage named ``compile:*`` stands for every target. Each is work that belongs elsewhere (an op or a
lowering cimc does not have yet); ``docs/corpus.md`` lists them."""


@cache
def manifest() -> dict[str, Any]:
    """``examples/corpus/manifest.json``."""
    return json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))


def entries() -> dict[str, dict[str, Any]]:
    """The manifest's entries by file name (``resnet18_torchscript``), in manifest order."""
    return {e["name"]: e for e in manifest()["models"]}


def load(name: str) -> onnx.ModelProto:
    """The ONNX model of entry ``name``."""
    return onnx.load(str(CORPUS / entries()[name]["file"]))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """A smooth random field of ``shape``: standard normal values on a ``coarse`` grid over the last
    axes, interpolated (cubic spline) up to ``shape``."""
    from scipy.ndimage import zoom

    lead = shape[: len(shape) - len(coarse)]
    grid = rng.standard_normal((*lead, *coarse))
    factors = (1,) * len(lead) + tuple(s / c for s, c in zip(shape[len(lead):], coarse, strict=True))
    return zoom(grid, factors, order=3, mode="nearest", grid_mode=True)[tuple(slice(0, s) for s in shape)]


def _scene(rng: np.random.Generator, b: int, c: int, h: int, w: int) -> np.ndarray:
    """``b`` smooth random scenes of ``c`` channels (a luminance field and colour fields on a 4x4 grid,
    interpolated), each with a random contrast and brightness; logits of pixel values."""
    scene = 0.7 * _smooth(rng, (b, 1, h, w), (4, 4)) + 0.5 * _smooth(rng, (b, c, h, w), (4, 4))
    return scene * rng.uniform(0.5, 2.0, (b, 1, 1, 1)) + rng.normal(0.0, 0.5, (b, 1, 1, 1))


def _pixels(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """Pixel values in [0, 1]: ``scene`` through a sigmoid, plus a little pixel noise."""
    return np.clip(1 / (1 + np.exp(-scene)) + 0.03 * rng.standard_normal(scene.shape), 0.0, 1.0)


def _normalized(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``(pixels - mean) / std`` per channel (axis 1)."""
    c = pixels.shape[1]
    shape = (1, c, *(1,) * (pixels.ndim - 2))
    return (pixels - np.array(mean[:c]).reshape(shape)) / np.array(std[:c]).reshape(shape)


def draw_inputs(inputs: list[Mapping[str, Any]], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of each kind the manifest names, ``batch`` samples each.

    Real data has structure at large scales that white noise lacks: averaged over an image or an
    utterance, white noise gives nearly the same features for every sample, and a model's output
    then hardly depends on its input. So:

    ``image``: a smooth random scene (a luminance field and colour fields on a 4x4 grid, interpolated),
    with a random contrast and brightness per image, through a sigmoid to [0, 1], a little pixel
    noise, then ImageNet's mean and std; ``video`` (channels, frames, height, width): such a scene
    seen through a window that moves by up to 2 pixels per frame along each axis (a camera pan), then
    Kinetics' mean and std; ``tokens``: ids uniform in ``[0, vocab)``; ``mask``: an
    attention mask of ones then zeros, at least half ones; ``audio``: three sines of random pitch
    (80 Hz to 4 kHz at 16 kHz) and their amplitudes, with a little noise, in [-1, 1]; ``mel``
    (features x frames) and ``mfcc`` (frames x features): a smooth random spectral envelope plus a
    smooth random loudness over time plus noise, as log-mel and MFCC frames look; ``mel_frames``: log-mel
    frames as ``mel`` draws them, frames x features.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in inputs:
        shape = (batch, *i["shape"][1:])
        kind = i["kind"]
        if kind == "image":
            b, c, h, w = shape
            pixels = _pixels(rng, _scene(rng, b, c, h, w))
            out[i["name"]] = _normalized(pixels, IMAGENET_MEAN, IMAGENET_STD).astype(np.float32)
        elif kind == "video":
            b, c, t, h, w = shape
            step = 2  # the most a scene moves between frames, in pixels along each axis
            scene = _scene(rng, b, c, h + step * (t - 1), w + step * (t - 1))
            dy, dx = (rng.integers(-step, step + 1, b) for _ in range(2))
            y0, x0 = ((step * (t - 1) - d * (t - 1)) // 2 for d in (dy, dx))
            frames = np.stack([np.stack([scene[n, :, y0[n] + dy[n] * k:y0[n] + dy[n] * k + h,
                                               x0[n] + dx[n] * k:x0[n] + dx[n] * k + w] for k in range(t)], 1)
                               for n in range(b)])
            out[i["name"]] = _normalized(_pixels(rng, frames), KINETICS_MEAN, KINETICS_STD).astype(np.float32)
        elif kind == "tokens":
            out[i["name"]] = rng.integers(0, i["vocab"], shape, dtype=np.int64)
        elif kind == "mask":
            keep = rng.integers((shape[1] + 1) // 2, shape[1] + 1, (batch, 1))
            out[i["name"]] = (np.arange(shape[1])[None, :] < keep).astype(np.int64)
        elif kind == "audio":
            t = np.arange(shape[1], dtype=np.float64) / 16000.0
            f = rng.uniform(80.0, 4000.0, (batch, 3, 1))
            a = rng.uniform(0.05, 0.3, (batch, 3, 1))
            wave = (a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (batch, 3, 1)))).sum(1)
            out[i["name"]] = np.clip(wave + 0.02 * rng.standard_normal(shape), -1.0, 1.0).astype(np.float32)
        elif kind in ("mel", "mfcc", "mel_frames"):
            feats, frames = (shape[1], shape[2]) if kind == "mel" else (shape[2], shape[1])
            envelope = _smooth(rng, (batch, feats), (4,))[:, :, None]
            loudness = _smooth(rng, (batch, frames), (max(2, frames // 8),))[:, None, :]
            x = envelope + 0.5 * loudness + 0.3 * rng.standard_normal((batch, feats, frames))
            out[i["name"]] = (x if kind == "mel" else x.transpose(0, 2, 1)).astype(np.float32)
        else:
            raise ValueError(f"unknown input kind {kind!r}")
    return out


@dataclass
class Outcome:
    """One stage of one file: passed or not, the error line when it failed, and its figures."""

    ok: bool
    error: str = ""
    figures: dict[str, Any] | None = None


def _error(e: BaseException) -> str:
    from cimc.errors import describe_exception

    return describe_exception(e)


def compare_outputs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> list[str]:
    """What is wrong with cimc's outputs ``got`` against onnxruntime's ``want`` (nothing: ``[]``): a
    shape, an element beyond ``ATOL + RTOL * |want|``, or a reference that varies between samples
    by less than ``MIN_SPREAD``, which would make the comparison vacuous."""
    bad = []
    for out, w in want.items():
        g = np.asarray(got[out])
        if g.shape != w.shape:
            bad.append(f"output {out!r} has shape {list(g.shape)}, onnxruntime's {list(w.shape)}")
            continue
        err = np.abs(g.astype(np.float64) - w)
        excess = float((err - RTOL * np.abs(w)).max())
        if not excess <= ATOL:
            bad.append(f"output {out!r} differs from onnxruntime's by up to {float(err.max()):.3g} "
                       f"(beyond atol {ATOL} + rtol {RTOL} by {excess - ATOL:.3g})")
        spread = float(np.ptp(w, axis=0).max()) if w.shape[0] > 1 else 0.0
        if spread < MIN_SPREAD:
            bad.append(f"output {out!r} varies between samples by at most {spread:.3g}, under {MIN_SPREAD}: "
                       f"the comparison would be vacuous")
    return bad


def check_run(name: str) -> Outcome:
    """Import the file and run it in cimc's interpreter against onnxruntime (see the module docstring)."""
    from cimc.interpreter import run
    from cimc.onnx_io import import_model
    from cimc.onnx_io.runtime import run_onnxruntime

    entry = entries()[name]
    model = load(name)
    x = draw_inputs(entry["inputs"], RUN_BATCH, seed=1)
    try:
        graph = import_model(model)
    except Exception as e:
        return Outcome(False, "import: " + _error(e))
    want = run_onnxruntime(model, x)
    try:
        got = run(graph, x)
    except Exception as e:
        return Outcome(False, "run: " + _error(e))
    errors = [float(np.abs(np.asarray(got[k], np.float64) - w).max()) for k, w in want.items()
              if np.shape(got[k]) == w.shape]
    figures = {"max_abs_error": max(errors, default=None),
               "max_abs_output": max(float(np.abs(w).max()) for w in want.values())}
    bad = compare_outputs(got, want)
    return Outcome(not bad, "; ".join(bad), figures)


def check_compile(name: str, target: str) -> Outcome:
    """Compile the file for ``target`` and verify the program against the integer reference."""
    import cimc

    entry = entries()[name]
    calib = draw_inputs(entry["inputs"], CALIB_BATCH, seed=2)
    sample = draw_inputs(entry["inputs"], VERIFY_BATCH, seed=3)
    try:
        compiled = cimc.compile(CORPUS / entry["file"], target=target, spec=SPECS.get(target), calibration=calib,
                                verify=True, inputs=sample, progress=False)
    except Exception as e:
        return Outcome(False, _error(e))
    v = compiled.verify or {}
    left = Counter(n.op for n in compiled.program.nodes if n.op in FLOAT_MAC_OPS)
    figures = {"max_abs_error": v.get("max_abs_error"), "cosine": v.get("cosine"),
               "program_nodes": len(compiled.program.nodes), "float_macs": dict(sorted(left.items()))}
    if not v.get("reference_exact"):
        where = v.get("self_check") or f"first at {(v.get('first_difference') or {}).get('layer', '?')!r}"
        return Outcome(False, f"the program differs from the integer reference ({where})", figures)
    return Outcome(True, "", figures)


def expected(name: str, stage: str) -> str | None:
    """The part of the error message stage ``stage`` of ``name`` is expected to fail with, or ``None``."""
    if stage.startswith("compile:") and (name, "compile:*") in EXPECTED:
        return EXPECTED[name, "compile:*"]
    return EXPECTED.get((name, stage))
