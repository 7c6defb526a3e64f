"""The ``cimc`` command line, run in-process: each command, and every user error as one line + exit 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cimc.cli import main
from cimc.passes import register_pass
from cimc.passmanager import Pass, PassResult
from cimc.text import load_graph, parse_graph

TEXT = """graph @main(%x: f32[N,3]) {
  %a: f32[3] = const [1.0, 2.0, 3.0]
  %b: f32[3] = const [0.5, 0.5, 0.5]
  %c: f32[3] = Add(%a, %b) loc("c")
  %y: f32[N,3] = Add(%x, %c) loc("add")
  return %y
}
"""


@register_pass
@dataclass(frozen=True)
class CliFailTestPass(Pass):
    """Always fails."""

    name: ClassVar[str] = "cli-fail-test"

    def run(self, graph, ctx):
        raise RuntimeError("kaput")


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.cimir"
    path.write_text(TEXT)
    return path


def _onnx_model(op: str = "Relu") -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cimc(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *argv: object) -> str:
    """Run a command that must fail: exit 2, one ``cimc: error:`` line, no traceback."""
    code, out, err = cimc(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("cimc: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return err


# ---- the commands ------------------------------------------------------------------------------

def test_opt_folds_and_writes_cimir_onnx_or_stdout(capsys, model, tmp_path):
    code, out, err = cimc(capsys, "opt", model, "-p", "fold-constants")
    assert code == 0 and err == ""
    assert parse_graph(out).ops() == {"Add": 1}
    assert cimc(capsys, "opt", model, "-p", "fold-constants", "-o", tmp_path / "o.cimir")[0] == 0
    assert load_graph(tmp_path / "o.cimir").constants["c"].const.tolist() == [1.5, 2.5, 3.5]
    assert cimc(capsys, "opt", model, "--pipeline", "fold-constants", "-o", tmp_path / "o.onnx")[0] == 0
    code, out, _ = cimc(capsys, "import", tmp_path / "o.onnx")
    assert code == 0 and parse_graph(out).ops() == {"Add": 1}


def test_opt_timing_print_ir_and_verify(capsys, model):
    code, _, err = cimc(capsys, "opt", model, "-p", "fold-constants,fold-constants", "--timing",
                          "--verify-each", "--print-ir-after", "fold-constants")
    assert code == 0
    assert err.count("# -----// IR after fold-constants{max-size=268435456 keep-ops=[DequantizeLinear]} //----- #") == 2
    assert "pass " in err and "time (s)" in err and "\ntotal" in err
    _, _, err = cimc(capsys, "opt", model, "-p", "fold-constants,fold-constants", "--print-ir-after-change")
    assert err.count("IR after") == 1


def test_opt_passes_calibration_and_seed_to_the_passes(capsys, model, tmp_path):
    seen = {}

    @register_pass
    @dataclass(frozen=True)
    class CliSeeTestPass(Pass):
        """Records what the context holds."""

        name: ClassVar[str] = "cli-see-test"

        def run(self, graph, ctx):
            seen.update(calibration=ctx.calibration, seed=ctx.seed)
            return PassResult(False)

    np.savez(tmp_path / "cal.npz", x=np.ones((4, 3), np.float32))
    assert cimc(capsys, "opt", model, "-p", "cli-see-test", "--calibration", tmp_path / "cal.npz",
                "--seed", 7)[0] == 0
    assert seen["seed"] == 7 and seen["calibration"]["x"].shape == (4, 3)


def test_opt_failure_writes_reproducer_and_no_output(capsys, model, tmp_path):
    out = tmp_path / "out.cimir"
    err = fails(capsys, "opt", model, "-p", "fold-constants,cli-fail-test", "-o", out,
                "--dump-dir", tmp_path / "dump")
    assert "pass 'cli-fail-test' failed after [fold-constants]: RuntimeError: kaput (reproducer: " in err
    assert not out.exists()
    assert (tmp_path / "dump" / "reproducer.pipeline").read_text() == "cli-fail-test\n"
    assert load_graph(tmp_path / "dump" / "reproducer.cimir").ops() == {"Add": 1}


def test_import_to_stdout_and_file(capsys, tmp_path):
    onnx.save(_onnx_model(), tmp_path / "m.onnx")
    code, out, _ = cimc(capsys, "import", tmp_path / "m.onnx")
    assert code == 0 and parse_graph(out).ops() == {"Relu": 1}
    assert cimc(capsys, "-v", "import", tmp_path / "m.onnx", "-o", tmp_path / "m.cimir")[0] == 0
    assert load_graph(tmp_path / "m.cimir").ops() == {"Relu": 1}


def test_run_with_inputs_and_random(capsys, model, tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, _ = cimc(capsys, "run", model, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert code == 0
    assert out.splitlines()[0].split() == ["output", "shape", "dtype", "min", "max", "mean"]
    assert out.splitlines()[1].split() == ["y", "[2,", "3]", "float32", "1.5", "8.5", "5"]
    with np.load(tmp_path / "out.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["y"], x + np.array([1.5, 2.5, 3.5], np.float32))
    cimc(capsys, "run", model, "--random", "--seed", 3, "--batch", 5, "-o", tmp_path / "r1.npz")
    cimc(capsys, "run", model, "--random", "--seed", 3, "--batch", 5, "-o", tmp_path / "r2.npz")
    with np.load(tmp_path / "r1.npz") as a, np.load(tmp_path / "r2.npz") as b:
        assert a["y"].shape == (5, 3) and np.array_equal(a["y"], b["y"])


def test_passes_lists_options(capsys):
    code, out, _ = cimc(capsys, "passes")
    assert code == 0
    assert "fold-constants  Evaluate nodes" in out
    assert "    max-size: int = 268435456  Largest constant" in out


def test_console_script_entry_point(tmp_path):
    # run away from the source tree, which ``-m`` would put first on sys.path (as a plain install is used)
    r = subprocess.run([sys.executable, "-m", "cimc.cli", "opt", "nowhere.cimir", "-p", "fold-constnts"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("cimc: error: <pipeline>:1:1: unknown pass 'fold-constnts'; did you mean "
                        "'fold-constants'? (`cimc passes` lists them)\n")


# ---- errors: one line, exit 2 ------------------------------------------------------------------

def test_not_an_onnx_file(capsys, tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"\x00\xffnot a model at all" * 10)
    assert "a.onnx: not an ONNX model" in fails(capsys, "import", tmp_path / "a.onnx")


def test_truncated_onnx_file(capsys, tmp_path):
    data = _onnx_model().SerializeToString()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    err = fails(capsys, "run", tmp_path / "t.onnx", "--random")
    assert "t.onnx" in err and ("not an ONNX model" in err or "not a valid ONNX model" in err)


def test_unsupported_ops(capsys, tmp_path):
    onnx.save(_onnx_model("RandomNormalLike"), tmp_path / "u.onnx")
    err = fails(capsys, "import", tmp_path / "u.onnx")
    assert "RandomNormalLike (opset 17; node" in err and "random ops are not supported" in err


def test_missing_file_and_unknown_suffix(capsys, tmp_path):
    assert "nope.onnx" in fails(capsys, "import", tmp_path / "nope.onnx")
    assert "nope.cimir: no such file" in fails(capsys, "opt", tmp_path / "nope.cimir", "-p", "")
    (tmp_path / "m.txt").write_text("x")
    assert "unknown file type '.txt'; expected .onnx or .cimir" in fails(capsys, "import", tmp_path / "m.txt")


def test_unwritable_output(capsys, model, tmp_path):
    err = fails(capsys, "opt", model, "-p", "", "-o", tmp_path / "no" / "such" / "dir" / "o.cimir")
    assert "cannot write it, directory" in err and "does not exist" in err
    assert "unknown output type '.bin'" in fails(capsys, "opt", model, "-p", "", "-o", tmp_path / "o.bin")


def test_malformed_cimir_has_line_and_column(capsys, tmp_path):
    (tmp_path / "bad.cimir").write_text("graph @main(%x: f32[2]) {\n  %y: f32[2] = Relu(%x\n  return %y\n}\n")
    err = fails(capsys, "opt", tmp_path / "bad.cimir", "-p", "fold-constants")
    assert f"{tmp_path / 'bad.cimir'}:3:" in err


def test_unknown_pass_option_and_print_ir_after_name(capsys, model):
    assert "did you mean 'fold-constants'" in fails(capsys, "opt", model, "-p", "fold-constant")
    assert "has no option 'max-sise'; did you mean 'max-size'?" in fails(
        capsys, "opt", model, "-p", "fold-constants{max-sise=1}")
    assert "unknown pass 'fold'" in fails(capsys, "opt", model, "-p", "", "--print-ir-after", "fold")


@pytest.mark.parametrize("arrays, message", [
    ({"z": np.zeros((2, 3), np.float32)}, "missing 'x'; unknown 'z'"),
    ({"x": np.zeros((2, 4), np.float32)}, "input 'x': shape [2, 4] where [N,3] was expected"),
    ({"x": np.zeros((2, 3), np.int64)}, "input 'x': element type i64 where f32 was expected"),
    ({"x": np.array([{"a": 1}], dtype=object)}, "array 'x': holds Python objects (a pickle)"),
])
def test_bad_input_npz(capsys, model, tmp_path, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    assert message in fails(capsys, "run", model, "--inputs", tmp_path / "in.npz")


def test_input_file_not_npz(capsys, model, tmp_path):
    (tmp_path / "in.npz").write_text("hello")
    assert "in.npz: not an .npz archive of arrays" in fails(capsys, "run", model, "--inputs", tmp_path / "in.npz")


def test_debug_shows_the_traceback(capsys, model):
    with pytest.raises(Exception, match="unknown pass"):
        main(["--debug", "opt", str(model), "-p", "fold-constant"])


def test_run_zoo_model_on_its_test_set_against_onnxruntime(capsys):
    code, out, _ = cimc(capsys, "run", "zoo:mlp", "--pipeline", "fold-constants", "--test-set",
                        "--compare-onnxruntime")
    assert code == 0
    assert "top-1 of logits on the 450 test images: 97.56%" in out
    assert "top-1 agreement 100.00%" in out


def test_run_flags_that_need_an_onnx_or_zoo_model(capsys, model, tmp_path):
    cimir = tmp_path / "m.cimir"
    cimc(capsys, "import", model, "-o", cimir)
    assert "--test-set needs a bundled model" in fails(capsys, "run", cimir, "--test-set")
    assert "--compare-onnxruntime needs an .onnx model" in fails(capsys, "run", cimir, "--random",
                                                                 "--compare-onnxruntime")
    assert "did you mean 'mlp'" in fails(capsys, "run", "zoo:mlpx", "--random")


def test_targets_lists_describes_and_dumps(capsys):
    code, out, _ = cimc(capsys, "targets")
    assert code == 0 and "npu" in out and "sram-cim" in out and "adc_bits" in out
    code, out, _ = cimc(capsys, "targets", "--dump", "sram-cim")
    from cimc.targets import get_target

    assert get_target("sram-cim").Spec.from_toml(out) == get_target("sram-cim").Spec()
    assert "did you mean 'sram-cim'" in fails(capsys, "targets", "sram_cim")


def test_readme_opt_chain_writes_qdq_onnx_that_onnxruntime_runs(capsys, tmp_path, monkeypatch):
    """The README's example, as written: quantize to q.cimir, then `-p ''` to q.onnx (QDQ)."""
    import re
    import shlex
    from pathlib import Path

    from cimc import zoo
    from cimc.interpreter import run
    from cimc.onnx_io.runtime import run_onnxruntime

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    commands = [" ".join(m.group(1).replace("\\\n", " ").split()) for m in
                re.finditer(r"^(cimc opt .*?(?:\\\n.*?)*)(?:#.*)?$", readme, re.M)]
    assert len(commands) == 2 and "quantize{weight-bits=4}" in commands[0] and "-o q.onnx" in commands[1]
    monkeypatch.chdir(tmp_path)
    m = zoo.load("lenet_bn")
    (tmp_path / "model.onnx").write_bytes(m.path.read_bytes())
    np.savez(tmp_path / "calib.npz", **{m.input_name: zoo.calibration_set()})
    for command in commands:
        assert cimc(capsys, *shlex.split(command)[1:])[0] == 0, command
    model = onnx.load(tmp_path / "q.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in model.graph.node}
    x = {m.input_name: m.x_test[:100]}
    got, ref = run_onnxruntime(model, x)["logits"], run(load_graph(tmp_path / "q.cimir"), x)["logits"]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99 and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_labels_give_top1_and_bad_labels_are_one_error(capsys, tmp_path):
    from cimc import zoo

    m = zoo.load("mlp")
    np.savez(tmp_path / "x.npz", **{m.input_name: m.x_test[:40]})
    np.save(tmp_path / "y.npy", m.y_test[:40])
    code, out, _ = cimc(capsys, "run", m.path, "--inputs", tmp_path / "x.npz", "--labels", tmp_path / "y.npy")
    assert code == 0 and "top-1 of logits on the 40 inputs" in out
    code, out, _ = cimc(capsys, "compile", m.path, "-t", "npu", "--verify", "--inputs", tmp_path / "x.npz",
                        "--labels", tmp_path / "y.npy", "-o", tmp_path / "out")
    assert code == 0 and "top-1 on labels" in out
    v = __import__("json").loads((tmp_path / "out" / "report.json").read_text())["verify"]
    assert v["inputs"] == "given" and v["samples"] == 40 and v["top1_program"] > 0.8
    assert {"top1_program", "top1_quantized", "top1_float"} <= set(v)
    np.save(tmp_path / "short.npy", m.y_test[:39])
    np.save(tmp_path / "float.npy", m.y_test[:40].astype(np.float32))
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "arch.npz", y=m.y_test[:40])
    for labels, message in [("short.npy", "39 labels for 40 inputs"), ("float.npy", "float32 values"),
                            ("obj.npy", "never loads pickles"), ("arch.npz", "not a single .npy"),
                            ("none.npy", "no such file")]:
        for argv in (["compile", m.path, "-t", "npu", "--verify", "--inputs", tmp_path / "x.npz", "-o",
                      tmp_path / "bad"], ["run", m.path, "--inputs", tmp_path / "x.npz"]):
            code, out, err = cimc(capsys, *argv, "--labels", tmp_path / labels)
            assert code == 2 and err.count("\n") == 1 and message in err and "internal" not in err, (argv, err)
            assert not (tmp_path / "bad").exists()
    code, _, err = cimc(capsys, "compile", m.path, "-t", "npu", "--labels", tmp_path / "y.npy", "-o", tmp_path / "b")
    assert code == 2 and "verify" in err
    code, _, err = cimc(capsys, "run", m.path, "--random", "--labels", tmp_path / "y.npy")
    assert code == 2 and "--labels goes with --inputs" in err
