"""cimc.fileio: the checked readers, the atomic writer and output-directory safety (marker, --force
only on cimc outputs, concurrent runs, stale temporaries of killed runs, SIGTERM)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cimc.errors import InputError, ParseError
from cimc.fileio import MARKER, read_bytes, read_text, write_atomic, write_directory

# ---- reading ---------------------------------------------------------------------------------------


def test_read_text_names_the_bad_byte_with_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "m.cimir"
    p.write_bytes("graph @main() {\n  # é ok\n  %x\xff = 1\n".encode("utf-8", "surrogateescape").replace(
        b"x\xc3\xbf", b"x\xff"))
    with pytest.raises(ParseError, match=r"m\.cimir:3:5: not UTF-8 text: byte ff"):
        read_text(p)
    p.write_text("graph é\n", encoding="utf-8")
    assert read_text(p) == "graph é\n"


def test_read_says_what_a_path_is(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_bytes(tmp_path / "nope")
    with pytest.raises(InputError, match="is a directory, not a file"):
        read_bytes(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):  # and does not block opening it
        read_bytes(fifo)


# ---- the atomic file writer ------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_with_the_usual_mode(tmp_path: Path) -> None:
    p = tmp_path / "o.bin"
    write_atomic(p, lambda f: f.write(b"one"))
    write_atomic(p, lambda f: f.write(b"two"))
    assert p.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomic(p, fail)
    assert p.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["o.bin"]


def test_write_atomic_errors_name_the_destination(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the output path is empty"):
        write_atomic("", lambda f: None)
    with pytest.raises(InputError, match=r"no/o\.bin: cannot write it, directory .*no does not exist"):
        write_atomic(tmp_path / "no" / "o.bin", lambda f: None)
    with pytest.raises(InputError, match="is a directory; give a file name") as e:
        write_atomic(tmp_path, lambda f: None)
    assert ".tmp" not in str(e.value)


def test_write_atomic_sweeps_stale_temporaries_but_not_live_ones(tmp_path: Path) -> None:
    stale = tmp_path / ".o.bin.abcd1234.tmp"
    stale.write_bytes(b"left by a killed run")
    other = tmp_path / ".other.bin.abcd1234.tmp"
    other.write_bytes(b"another destination's")
    live = tmp_path / ".o.bin.live5678.tmp"
    live.write_bytes(b"a run in progress")
    import fcntl

    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        write_atomic(tmp_path / "o.bin", lambda f: f.write(b"x"))
        assert not stale.exists() and other.exists() and live.exists()


# ---- output directories ----------------------------------------------------------------------------


def _fill(text: str):
    def fill(d: Path) -> None:
        (d / "a.txt").write_text(text)

    return fill


def test_output_directory_has_the_marker_and_force_replaces_only_cimc_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_directory(out, _fill("one"))
    assert (out / MARKER).is_file() and (out / "a.txt").read_text() == "one"
    with pytest.raises(InputError, match="already exists; remove it, choose another with -o, or replace it with"):
        write_directory(out, _fill("two"))
    write_directory(out, _fill("two"), force=True)
    assert (out / "a.txt").read_text() == "two"

    src = tmp_path / "my_src"
    src.mkdir()
    (src / "main.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(InputError, match=r"my_src is not a cimc output directory \(it has no \.cimc-output file\)"):
        write_directory(src, _fill("x"), force=True)
    assert (src / "main.c").read_text().startswith("int main")
    (tmp_path / "file").write_text("keep")
    with pytest.raises(InputError, match="is a file, not a cimc output directory"):
        write_directory(tmp_path / "file", _fill("x"), force=True)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(InputError, match="is a symbolic link"):
        write_directory(tmp_path / "link", _fill("x"), force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_directory(empty, _fill("e"), force=True)  # nothing to lose
    assert (empty / "a.txt").read_text() == "e"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "link", "my_src", "out"]


def test_output_directory_names(tmp_path: Path) -> None:
    for bad in ("", ".", str(tmp_path) + "/.."):
        with pytest.raises(InputError, match=r"empty|names no file or directory"):
            write_directory(bad, _fill("x"))


def test_a_failing_fill_leaves_nothing(tmp_path: Path) -> None:
    def fill(d: Path) -> None:
        (d / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_directory(tmp_path / "out", fill)
    assert list(tmp_path.iterdir()) == []


def _race(out: str, go, results) -> None:  # in a child process
    go.wait()
    try:
        write_directory(out, _fill(str(os.getpid())))
        results.put("ok")
    except InputError as e:
        results.put(str(e))


def test_two_runs_into_one_path_at_once_at_most_one_succeeds(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for i in range(40):
        out = tmp_path / f"out{i}"
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(out), go, results)) for _ in range(2)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got[-1] == "ok", got  # one of them wins
        assert got[0].endswith("already exists; remove it, choose another with -o, or replace it with --force"), got
        assert sorted(os.listdir(out)) == [MARKER, "a.txt"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"out{i}" for i in range(40))  # no temporaries left


def _cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cimc.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_cli_compiles_into_one_path_at_once(tmp_path: Path) -> None:
    for _ in range(3):
        procs = [_cli("compile", "zoo:mlp", "-t", "npu", "-o", "out", cwd=tmp_path) for _ in range(2)]
        results = [(p.wait(300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        assert "out already exists" in next(err for code, err in results if code == 2)
        assert sorted(os.listdir(tmp_path)) == ["out"]
        subprocess.run(["rm", "-r", str(tmp_path / "out")], check=True)


def _wait_for_temp(parent: Path, proc: subprocess.Popen[str], prefix: str) -> bool:
    while proc.poll() is None:
        if any(n.startswith(prefix) and n.endswith(".tmp") for n in os.listdir(parent)):
            return True
        time.sleep(0.001)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_compile_leaves_nothing_the_next_run_does_not_clean(tmp_path: Path, sig: int) -> None:
    for _ in range(10):  # until the kill lands while the output is being written
        proc = _cli("compile", "zoo:lenet_bn", "-t", "sram-cim", "-o", "out", cwd=tmp_path)
        caught = _wait_for_temp(tmp_path, proc, ".out.")
        if caught:
            proc.send_signal(sig)
        code = proc.wait(300)
        if caught and code != 0:
            break
        subprocess.run(["rm", "-rf", str(tmp_path / "out")], check=True)
    else:
        pytest.skip("the compile always finished before the kill landed")
    left = sorted(os.listdir(tmp_path))
    if sig == signal.SIGTERM:  # handled like Ctrl-C: cleans up itself
        assert code == 128 + signal.SIGTERM and proc.stderr.read() == "cimc: interrupted\n"  # type: ignore[union-attr]
        assert left == []
    else:
        assert left and all(n.startswith(".out.") for n in left)
    done = _cli("compile", "zoo:lenet_bn", "-t", "sram-cim", "-o", "out", cwd=tmp_path)
    assert done.wait(300) == 0, done.stderr.read()  # type: ignore[union-attr]
    assert sorted(os.listdir(tmp_path)) == ["out"]
