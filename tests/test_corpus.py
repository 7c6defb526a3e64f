"""The corpus of real architectures (``examples/corpus``): torchvision, timm and transformers models in
small configurations, each exported by both torch exporters. Every file imports and runs to
onnxruntime's outputs, and compiles for every built-in target to a program equal to its integer
reference, except the stages ``corpus_models.EXPECTED`` names, which must fail with the error they
name (so a stage that starts to pass, or fails for another reason, fails here). The checks are
``corpus_models``'s; the last tests show each catching a deliberately broken input."""

from __future__ import annotations

from collections import Counter

import corpus_models as cm
import corpus_table
import numpy as np
import pytest

from cimc.interpreter import run
from cimc.onnx_io import import_model
from cimc.onnx_io.runtime import run_onnxruntime

NAMES = list(cm.entries())


def _judge(name: str, stage: str, outcome: cm.Outcome) -> None:
    want = cm.expected(name, stage)
    if want is None:
        assert outcome.ok, f"{name} {stage}: {outcome.error}"
        return
    assert not outcome.ok, (f"{name} {stage} now passes: remove it from EXPECTED in tests/corpus_models.py and "
                            f"run python tests/corpus_table.py --write")
    assert want in outcome.error, f"{name} {stage} fails for another reason than {want!r}: {outcome.error}"
    pytest.xfail(f"{stage}: {want}")


@pytest.mark.parametrize("name", NAMES)
def test_imports_and_runs_as_onnxruntime_runs_it(name: str) -> None:
    _judge(name, "run", cm.check_run(name))


@pytest.mark.parametrize("target", cm.TARGETS)
@pytest.mark.parametrize("name", NAMES)
def test_compiles_to_a_program_equal_to_the_integer_reference(name: str, target: str) -> None:
    _judge(name, f"compile:{target}", cm.check_compile(name, target))


def test_the_manifest_describes_the_files_and_the_corpus_is_what_it_claims() -> None:
    by_model: dict[str, set[str]] = {}
    libraries: dict[str, str] = {}
    total = 0
    for name, entry in cm.entries().items():
        model = cm.load(name)
        by_model.setdefault(entry["model"], set()).add(entry["exporter"])
        libraries[entry["model"]] = entry["library"]
        assert dict(Counter(n.op_type for n in model.graph.node)) == entry["op_types"], name
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert opset == entry["opset"] == {"torchscript": 17, "dynamo": 18}[entry["exporter"]], name
        assert [i.name for i in model.graph.input] == [i["name"] for i in entry["inputs"]], name
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, f"{name}: the batch axis is fixed"
        assert not model.graph.initializer or all(not t.external_data for t in model.graph.initializer)
        total += (cm.CORPUS / entry["file"]).stat().st_size
    assert all(e == {"torchscript", "dynamo"} for e in by_model.values()), by_model
    assert len(by_model) >= 12, sorted(by_model)
    assert {"torchvision", "timm", "transformers"} <= set(libraries.values()), libraries
    assert total < 8 * 2**20, f"the corpus is {total / 2**20:.1f} MiB"
    on_disk = {p.stem for p in cm.CORPUS.glob("*.onnx")}
    assert on_disk == set(cm.entries()), on_disk ^ set(cm.entries())


def test_every_expected_failure_names_a_file_and_a_stage() -> None:
    stages = {"run", "compile:*", *(f"compile:{t}" for t in cm.TARGETS)}
    for name, stage in cm.EXPECTED:
        assert name in cm.entries() and stage in stages, (name, stage)


def test_every_built_in_target_is_compiled_for() -> None:
    from cimc.targets import BUILTIN

    assert set(cm.TARGETS) == set(BUILTIN)


def test_the_table_is_current() -> None:
    """docs/corpus.md lists every file with the status each stage has today (the figures are the
    generating run's)."""
    rows = corpus_table.read_statuses()
    assert set(rows) == set(cm.entries()), set(rows) ^ set(cm.entries())
    for name, stages in rows.items():
        for stage in ("run", *(f"compile:{t}" for t in cm.TARGETS)):
            fails = cm.expected(name, stage) is not None
            assert stages.get(stage) == ("fails" if fails else "ok"), \
                f"{name} {stage}: run python tests/corpus_table.py --write"


@pytest.mark.parametrize("kind", ["image", "video", "tokens", "mask", "audio", "mel", "mel_frames", "mfcc"])
def test_inputs_of_each_kind_are_seeded_and_in_range(kind: str) -> None:
    spec = [{"name": "x", "shape": ["batch", 3, 16, 16] if kind == "image" else ["batch", 12, 20], "kind": kind,
             "vocab": 50}]
    if kind in ("tokens", "mask", "audio"):
        spec[0]["shape"] = ["batch", 24]
    if kind == "video":
        spec[0]["shape"] = ["batch", 3, 5, 16, 16]
    a, b, c = (cm.draw_inputs(spec, 6, s)["x"] for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (6, *spec[0]["shape"][1:]) and np.isfinite(a.astype(np.float64)).all()
    if kind == "tokens":
        assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 50
    if kind == "mask":  # ones then zeros, at least half ones
        assert set(np.unique(a)) <= {0, 1} and (np.diff(a, axis=1) <= 0).all() and (a.sum(1) >= 12).all()
    if kind == "audio":
        assert a.dtype == np.float32 and np.abs(a).max() <= 1.0
    if kind == "image":  # normalised pixels of [0, 1]
        assert a.min() >= (0 - 0.485) / 0.229 - 1e-5 and a.max() <= (1 - 0.406) / 0.225 + 1e-5
    if kind == "video":  # normalised pixels of [0, 1]; a scene panning by one step of at most 2 pixels per frame
        mean, std = (np.array(v).reshape(1, 3, 1, 1, 1) for v in (cm.KINETICS_MEAN, cm.KINETICS_STD))
        pixels = a * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        steps = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        for clip in pixels:
            moved = [[float(np.abs(np.roll(clip[:, k], d, (1, 2)) - clip[:, k + 1])[:, 2:-2, 2:-2].mean())
                      for d in steps] for k in range(4)]
            best = {int(np.argmin(m)) for m in moved}
            assert len(best) == 1 and max(min(m) for m in moved) < 0.05  # within the pixel noise
    if kind in ("image", "video", "mel", "mel_frames", "mfcc"):  # structure at large scales: samples differ
        assert np.std(a.reshape(6, -1).mean(1)) > 0.05


def test_the_run_check_catches_a_flipped_sign_and_a_constant_output() -> None:
    name = "resnet18_dynamo"
    model, entry = cm.load(name), cm.entries()[name]
    x = cm.draw_inputs(entry["inputs"], cm.RUN_BATCH, seed=1)
    want = run_onnxruntime(model, x)
    graph = import_model(model)
    assert cm.compare_outputs(run(graph, x), want) == []
    bias = next(n.inputs[2] for n in graph.nodes if n.op == "Gemm")  # the classifier's bias, one sign flipped
    flipped = np.array(bias.const)
    flipped[3] = -flipped[3]
    graph.replace_all_uses_with(bias, graph.add_constant(flipped, bias.name + ".flipped"))
    (problem,) = cm.compare_outputs(run(graph, x), want)
    assert "differs from onnxruntime's" in problem
    same = {k: np.broadcast_to(v[:1], v.shape) for k, v in want.items()}  # a model that ignores its input
    (problem,) = cm.compare_outputs(same, same)
    assert "vacuous" in problem


def test_the_compile_check_catches_a_corrupted_array_image() -> None:
    import cimc
    from cimc.verify import check_exact

    name = "mobilenet_v2_torchscript"
    entry = cm.entries()[name]
    sample = cm.draw_inputs(entry["inputs"], cm.VERIFY_BATCH, seed=3)
    compiled = cimc.compile(cm.CORPUS / entry["file"], target="sram-cim",
                            calibration=cm.draw_inputs(entry["inputs"], cm.CALIB_BATCH, seed=2), progress=False)
    compiled.target.register_ops()
    assert check_exact(compiled.program, compiled.quantized, sample).exact
    loads = [n for n in compiled.program.nodes if n.op == "sram.load"]
    cells = loads[len(loads) // 2].inputs[0]  # a layer in the middle: every cell of one word line inverted
    corrupted = np.array(cells.const)
    corrupted[0, corrupted.shape[1] // 2] ^= 0xFF
    compiled.program.replace_all_uses_with(cells, compiled.program.add_constant(corrupted, cells.name + ".bad"))
    check = check_exact(compiled.program, compiled.quantized, sample)
    assert not check.exact and check.first_difference is not None
