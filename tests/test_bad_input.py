"""The bad-input corpus (``bad_input_corpus.CASES``): every case gives exactly one line ``cimc: error:
...`` holding its fragment, exit status 2, no traceback and no internal error, writes nothing, takes
under 60 s, and the whole corpus stays under the memory limit.

The corpus runs once, in a fresh process (so its peak memory is its own and C-level writes to the
terminal are caught), through ``bad_input_corpus.py``; each case is then one test here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_corpus import CASES, SUCCESS

PEAK_MEMORY = 3 << 30
"""The corpus process's peak resident memory must stay below this: cases that would allocate gigabytes
are refused before allocating (the tensor size limit, about 1/8 of this machine's memory)."""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "bad_input_corpus.py"), str(folder)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(report: dict, case: str) -> None:
    r = report["cases"][case]
    fragments = CASES[case][1]
    err = r["stderr"]
    assert r["code"] == 2, (case, r)
    assert err.startswith("cimc: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "internal error" not in err, err
    for fragment in [fragments] if isinstance(fragments, str) else fragments:
        assert fragment in err, (fragment, err)
    assert r["changed"] == [], r["changed"]  # no output, no temporary file or directory, inputs untouched
    assert r["seconds"] < 60, r["seconds"]
    assert len(err) < 2000, len(err)  # a long user string is quoted cut short


@pytest.mark.parametrize("case", list(SUCCESS))
def test_good_input_runs_silently(report: dict, case: str) -> None:
    """What the corpus refuses has good neighbours that must keep working, and print nothing on
    standard error (no onnxruntime log, no numpy warning)."""
    r = report["success"][case]
    assert r["code"] == 0 and r["stderr"] == "", r
    assert {c.split("/")[0] for c in r["changed"]} <= set(SUCCESS[case][1]), r["changed"]


def test_the_corpus_stays_under_the_memory_limit(report: dict) -> None:
    assert report["peak_memory_bytes"] < PEAK_MEMORY, report["peak_memory_bytes"]


def test_the_corpus_covers_at_least_a_hundred_cases() -> None:
    assert len(CASES) >= 100
