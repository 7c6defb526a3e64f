"""cimc.compile and `cimc compile`: a complete output dir for every target, determinism, atomicity,
the verify fields (exact with a lossless spec), the Python API and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc import zoo
from cimc.cli import main
from cimc.driver import CompiledModel, compile
from cimc.errors import InputError, VerifyError
from cimc.ir.types import DType, TensorType
from cimc.onnx_io import import_model
from cimc.targets import all_targets

FILES = {"program.cimir", "quantized.cimir", "report.json", "report.txt", "timings.json"}
TARGETS = sorted(all_targets())


def _lossless(name: str):
    t = all_targets()[name]()
    if "ideal" in {p.name for p in t.spec.params()}:  # a device model: its ideal device
        t = t.with_spec(ideal=True)
    caps = t.capabilities()
    return t if caps.adc_lossless else t.with_spec(adc_bits=caps.lossless_adc_bits())


def _compile(*args, **kwargs) -> CompiledModel:
    """compile(), the function under test."""
    return compile(*args, **kwargs)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", ["lenet_bn", "mlp"])
def test_compile_writes_a_complete_output_dir(tmp_path: Path, target: str, model: str) -> None:
    c = _compile(f"zoo:{model}", target)
    out = c.save(tmp_path / "out")
    assert FILES <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["name"] == target and report["model"] == {"name": model, "source": f"zoo:{model}"}
    assert report["pipeline"]["run"].startswith("fold-constants")
    assert report["target"]["spec"] == c.target.spec.to_dict()
    if c.cost is not None:
        per = report["cost"]["per_inference"]
        assert per["cycles"] > 0 and per["energy_nj"] > 0 and per["macs"] > 0 and per["layers"]
        assert report["cost"]["area_mm2"]["total"] > 0 and report["cost"]["one_time"]["energy_nj"] >= 0
    assert "cimc compile report" in (out / "report.txt").read_text()
    assert str(tmp_path) not in "".join(p.read_text(errors="replace") for p in out.iterdir())
    # the program runs, after a round trip through the files too
    x = zoo.load(model).x_test[:5]
    y = c.run(x)
    assert list(y) == [v.name for v in c.program.outputs] and len(next(iter(y.values()))) == 5


@pytest.mark.parametrize("target", TARGETS)
def test_compile_is_deterministic(tmp_path: Path, target: str) -> None:
    a = _compile("zoo:resnet_tiny", target, seed=7).save(tmp_path / "a")
    b = _compile("zoo:resnet_tiny", target, seed=7).save(tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "timings.json" in names
    for n in names:
        if n != "timings.json":  # wall-clock times: the one file allowed to differ
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    t = json.loads((a / "timings.json").read_text())
    assert [r["pass"] for r in t["passes"]] == _pass_names(a)
    assert t["total_seconds"] >= t["passes_seconds"] > 0 and t["verify_seconds"] is None
    for n in ("report.json", "report.txt"):
        assert "seconds" not in (a / n).read_text() and "timing" not in (a / n).read_text(), n


def _pass_names(out: Path) -> list[str]:
    from cimc.pipeline import Pipeline

    return [p.name for p in Pipeline.parse(json.loads((out / "report.json").read_text())["pipeline"]["run"]).passes]


@pytest.mark.parametrize("target", TARGETS)
def test_verify_is_exact_with_a_lossless_spec(target: str) -> None:
    c = _compile("zoo:lenet_bn", _lossless(target), verify=True)
    v = c.report["verify"]
    for key in ("reference_exact", "max_abs_error", "cosine", "top1_agreement", "top1_program", "top1_float"):
        assert key in v, key
    assert v["reference_exact"] is True and v["samples"] == len(zoo.load("lenet_bn").y_test)
    assert v["cosine"] > 0.99 and v["top1_program"] > 0.9 and v["float_reference"] == "onnxruntime"
    assert c.timings["verify_seconds"] > 0 and c.timings["total_seconds"] > c.timings["verify_seconds"]


def test_api_inputs_graph_model_random_calibration_and_spec_dict(caplog: pytest.LogCaptureFixture) -> None:
    target = TARGETS[0]
    g = import_model(zoo.load("mlp").onnx())
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    with caplog.at_level("WARNING"):
        c = _compile(g, _lossless(target), verify=True, inputs=x)
    assert "random inputs" in caplog.text  # a Graph has no calibration set
    assert c.report["calibration"].startswith("random") and c.report["verify"]["inputs"] == "given"
    assert c.report["verify"]["float_reference"] == "interpreter" and c.report["verify"]["reference_exact"]
    assert len(g.nodes) and g.nodes[0].op != "q.quantize"  # the caller's graph is untouched
    assert isinstance(cimc.compile("zoo:mlp", target), CompiledModel)  # the package function
    spec_field = all_targets()[target].Spec.params()[0]
    c2 = _compile("zoo:mlp", target, spec={spec_field.name: spec_field.default})
    assert c2.target.spec == all_targets()[target]().spec


def test_random_inputs_are_counted_as_drawn_for_a_fixed_batch(caplog: pytest.LogCaptureFixture) -> None:
    """A graph whose batch dimension is fixed gets that many random samples, and the warnings and the
    report say that many, not the default count."""
    proto = zoo.load("mlp").onnx()
    for vi in (*proto.graph.input, *proto.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 3
    with caplog.at_level("WARNING"):
        c = _compile(proto, _lossless(TARGETS[0]), verify=True)
    assert "verifying on 3 seeded random inputs (the graph fixes its batch at 3)" in caplog.text
    assert "calibrating on 3 seeded random inputs (the graph fixes its batch at 3)" in caplog.text
    assert c.report["verify"]["samples"] == 3 and c.report["calibration"] == "random (seeded) (3 samples)"


def test_api_verifies_a_graph_it_is_given() -> None:
    """A Graph built or edited in Python is checked like a file: a result declared f64 where its Gemm
    gives f32 is refused before any pass runs, not re-typed on the way."""
    g = import_model(zoo.load("mlp").onnx())
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    gemm.output.type = TensorType(DType.f64, gemm.output.type.shape)
    with pytest.raises(VerifyError, match=r"result %\S+ is typed f64\[batch,64\] but the op gives f32"):
        _compile(g, TARGETS[0])


def test_failing_compile_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert main(["compile", "zoo:mlp", "-t", TARGETS[0], "-p", "fold-constants,no-such-pass", "-o", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []
    c = _compile("zoo:mlp", TARGETS[0])
    import cimc.report

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(cimc.report, "report_text", boom)
    with pytest.raises(InputError, match=r"out: cannot write it: disk full"):  # names the output, not its temporary
        c.save(out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    c.save(out)
    (out / "marker").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        c.save(out)
    c.save(out, force=True)
    assert not (out / "marker").exists() and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_compile(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = TARGETS[0]
    assert main(["compile", "--target", target, "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"lenet_bn.{target}.cimc" in out and "vs quantized graph" in out
    assert FILES <= {p.name for p in (tmp_path / f"lenet_bn.{target}.cimc").iterdir()}
    assert main(["compile", "--target", target]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["compile", "--target", target, "--force", "--seed", "3"]) == 0
    assert json.loads((tmp_path / f"lenet_bn.{target}.cimc" / "report.json").read_text())["seed"] == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["compile", "--target", "nup"], "did you mean 'npu'"),
    (["compile", "zoo:lenet", "-t", "npu"], "did you mean 'lenet_bn'"),
    (["compile", "-t", "npu", "--spec-set", "mac_rowz=3"], "did you mean 'mac_rows'"),
    (["compile", "-t", "npu", "--spec", "missing.toml"], "the npu spec file missing.toml: no such file"),
    (["compile", "-t", "npu", "--spec", "bad.toml"], "invalid TOML"),
    (["compile", "nothing.onnx", "-t", "npu"], "no such file"),
    (["compile", "-t", "npu", "--pipeline", "quantize{bits=3}"], "bits"),
])
def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("target = 'npu'\nmac_rows = \n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cimc: error:") and message in err, err
    assert "internal error" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_api_verifies_on_real_data_it_was_given(caplog: pytest.LogCaptureFixture) -> None:
    """verify=True with calibration data and no inputs verifies on the calibration set, not random data;
    labels give top-1 on labels for any model, and bad ones fail before any work."""
    m = zoo.load("mlp")
    calib = zoo.calibration_set()
    with caplog.at_level("WARNING"):
        c = _compile(m.onnx(), TARGETS[0], calibration=calib, verify=True)
    assert "random" not in caplog.text
    v = c.report["verify"]
    assert v["inputs"] == "calibration set" and v["samples"] == len(calib) and "top1_program" not in v
    x, y = m.x_test[:60], m.y_test[:60]
    v = _compile(m.onnx(), TARGETS[0], calibration=calib, verify=True, inputs=x, labels=y).report["verify"]
    top1 = float((_float_logits(m, x).argmax(1) == y).mean())
    assert v["inputs"] == "given" and v["top1_float"] == pytest.approx(top1)
    assert 0.8 < v["top1_program"] <= 1 and 0.8 < v["top1_quantized"] <= 1
    for bad, msg in [(y[:59], "59 labels for 60 inputs"), (y.astype(np.float64), "float64"),
                     (y + 10, "label 1[0-9]")]:
        with pytest.raises(InputError, match=msg):
            _compile(m.onnx(), TARGETS[0], calibration=calib, verify=True, inputs=x, labels=bad)
    with pytest.raises(InputError, match="need the inputs"):
        _compile(import_model(m.onnx()), TARGETS[0], verify=True, labels=y)
    with pytest.raises(InputError, match="verify=True"):
        _compile(m.onnx(), TARGETS[0], calibration=calib, labels=y)


def _float_logits(m, x: np.ndarray) -> np.ndarray:
    from cimc.onnx_io.runtime import run_onnxruntime

    return run_onnxruntime(m.onnx(), {m.input_name: x})["logits"]
