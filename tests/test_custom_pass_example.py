"""examples/custom_pass.py: the clip-weights pass runs inside a pipeline from Python and, loaded
with --plugin, from the CLI (opt and compile); a broken plugin is a one-line error naming the file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cimc import zoo
from cimc.cli import main
from cimc.onnx_io import import_model
from cimc.passmanager import PassContext, PassManager
from cimc.text import load_graph

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_pass.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("custom_pass_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def test_from_python_clips_outliers_only() -> None:
    ex = _load_example()
    m = zoo.load("lenet_bn")
    g = import_model(m.onnx())
    PassManager("fold-constants,fuse-batchnorm", PassContext()).run(g)
    before = {n.name: n.inputs[1].const.copy() for n in g.nodes if n.op in ("Conv", "Gemm")}
    result = PassManager("fold-constants,clip-weights{k=2.5}", PassContext()).run(g)
    summary = json.loads(g.metadata["clip-weights"])
    assert result.modified and summary["clipped"] > 0 and summary["k"] == 2.5
    for n in g.nodes:
        if n.name in before:
            w, w0 = n.inputs[1].const, before[n.name]
            changed = int((w != w0).sum())
            assert changed == n.attrs.get("clip.count", 0) == summary["layers"].get(n.name, 0)
            assert changed < 0.05 * w.size and np.abs(w).max() <= np.abs(w0).max()
    with pytest.raises(Exception, match="k = -1"):
        ex.ClipWeightsPass(k=-1.0)


def test_from_the_cli_with_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clipped.cimir"
    assert main(["--plugin", str(EXAMPLE), "opt", "zoo:lenet_bn", "-p", "fold-constants,clip-weights{k=2.5}",
                 "-o", str(out)]) == 0
    assert "clip.count" in out.read_text() and "clip-weights" in load_graph(out).metadata
    assert main(["--plugin", str(EXAMPLE), "passes"]) == 0
    assert "clip-weights" in capsys.readouterr().out
    d = tmp_path / "c"
    assert main(["--plugin", str(EXAMPLE), "compile", "zoo:lenet_bn", "-t", "npu", "-o", str(d), "--pipeline",
                 "fold-constants,fuse-batchnorm,clip-weights{k=3},quantize{weight-bits=4 act-bits=8}"]) == 0
    assert "clip-weights{k=3.0" in json.loads((d / "report.json").read_text())["pipeline"]["run"]


def test_a_broken_plugin_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise ValueError('boom')\n")
    assert main(["--plugin", str(bad), "passes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad_plugin.py" in err and "boom" in err
    assert main(["--plugin", str(tmp_path / "none.py"), "passes"]) == 2
    assert "none.py: no such file" in capsys.readouterr().err
