"""`cimc compile` and the output directory: an existing one is refused unless it is a cimc output and
``--force`` is given, a compiled program runs from its file, and a spec without weight reloads still
compiles a model that fits. (Every bad input, with its one-line message, is in the corpus of
``tests/bad_input_corpus.py``, run by ``tests/test_bad_input.py``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cimc.cli import main


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_existing_output_dir_is_refused_unless_force(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out.cimc"
    out.mkdir()
    (out / "mine").write_text("keep")
    before = sorted(p.name for p in work.iterdir())
    assert main(["compile", "zoo:mlp", "-o", "out.cimc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out.cimc already exists" in err and "--force" in err, err
    assert sorted(p.name for p in work.iterdir()) == before and (out / "mine").read_text() == "keep"
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 2  # not a cimc output: kept
    err = capsys.readouterr().err
    assert "out.cimc is not a cimc output directory (it has no .cimc-output file)" in err, err
    assert sorted(p.name for p in work.iterdir()) == before and (out / "mine").read_text() == "keep"
    (out / "mine").unlink()
    assert main(["compile", "zoo:mlp", "-o", "out.cimc"]) == 2
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 0  # an empty directory: nothing to lose
    (out / "report.txt").write_text("edited")
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 0  # an earlier cimc output
    assert (out / "report.txt").read_text() != "edited" and (out / "timings.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == before


def test_compiled_program_runs_from_its_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cimc run` knows the targets' instructions, so a compiled program.cimir runs as it is."""
    for target in ("sram-cim", "npu"):
        assert main(["compile", "zoo:mlp", "-t", target, "-o", f"{target}.cimc"]) == 0
        assert main(["run", f"{target}.cimc/program.cimir", "--random", "-o", f"{target}.npz"]) == 0
    with np.load("sram-cim.npz") as a, np.load("npu.npz") as b:
        assert a["logits"].shape == (1, 10) and b["logits"].shape == (1, 10)


def test_allow_reload_false_compiles_a_model_that_fits(work: Path) -> None:
    from cimc.driver import compile as compile_model

    for target, spec in (("sram-cim", {"allow_reload": False}), ("npu", {"allow_reload": False})):
        c = compile_model("zoo:mlp", target, spec=spec)
        loads = [n for n in c.program.nodes if n.attrs.get("cim.bytes")]
        keys = [n.inputs[0].name for n in loads]
        assert len(keys) == len(set(keys))  # every weight image is loaded once
