"""``examples/custom_target/``: a third-party target in one folder, installed with pip into a temporary
directory (no change to cimc), found through the ``cimc.targets`` entry point, compiling and verifying
zoo models from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_target"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that sees the example installed (``pip install --target`` + PYTHONPATH)."""
    where = tmp_path_factory.mktemp("dcim")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "--target", str(where), str(EXAMPLE)], check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))}


def _cimc(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cimc.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True)


def test_the_example_is_shaped_like_a_builtin_target():
    mine = sorted(p.name for p in (EXAMPLE / "cimc_dcim").glob("*.py"))
    assert mine == sorted(p.name for p in (ROOT / "targets" / "sram_cim").glob("*.py"))
    assert 'dcim = "cimc_dcim:DcimTarget"' in (EXAMPLE / "pyproject.toml").read_text()


@pytest.mark.parametrize("model", ["zoo:resnet_tiny", "zoo:hybrid_vit"])
def test_compiles_and_verifies_from_the_cli(installed, tmp_path, model):
    listed = _cimc(installed, tmp_path, "targets")
    assert listed.returncode == 0 and any(line.startswith("dcim: Digital SRAM compute-in-memory macros")
                                          for line in listed.stdout.splitlines())
    run = _cimc(installed, tmp_path, "compile", model, "--target", "dcim", "--verify", "-o", "out")
    assert run.returncode == 0, run.stderr
    assert "vs quantized graph (interpreter): EXACT (max abs error 0)" in run.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ops = report["program"]["ops"]
    assert report["target"]["name"] == "dcim" and ops["dcim.mvm"] >= 1 and not {"q.conv", "q.gemm"} & set(ops)
    assert report["verify"]["reference_exact"] and report["verify"]["top1_program"] == report["verify"]["top1_float"]
    assert report["cost"]["per_inference"]["macs"] > 0 and report["cost"]["per_inference"]["energy_nj"] > 0


def test_its_lowering_is_a_pipeline_pass_and_its_program_runs(installed, tmp_path):
    opt = _cimc(installed, tmp_path, "opt", "zoo:mlp", "--target", "dcim", "-p",
                "fold-constants,quantize,lower-dcim", "-o", "p.cimir")
    assert opt.returncode == 0, opt.stderr
    assert "dcim.mvm" in (tmp_path / "p.cimir").read_text()
    ran = _cimc(installed, tmp_path, "run", "p.cimir", "--random")
    assert ran.returncode == 0 and "logits" in ran.stdout, ran.stderr
    wrong = _cimc(installed, tmp_path, "opt", "zoo:mlp", "--target", "npu", "-p", "quantize,lower-dcim")
    assert wrong.returncode == 2
    assert "pass 'lower-dcim' lowers for target 'dcim', but the target is 'npu'" in wrong.stderr
