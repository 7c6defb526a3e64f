"""cimc.npzio.read_npz: the one .npz reader checks headers before reading, refuses pickles, bombs,
truncated and corrupt members, and names the file and the array."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cimc.errors import InputError
from cimc.limits import set_max_tensor_bytes
from cimc.npzio import read_npz, write_npz


def _npy(arr: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, arr, allow_pickle=True)
    return f.getvalue()


def _raw(header: bytes, data: bytes = b"") -> bytes:
    """An .npy member with this header text (format 1.0)."""
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_reads_what_numpy_writes_in_every_layout(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "s.npz", x=a, f=np.asfortranarray(a), e=np.zeros((0, 5), np.int8))
    np.savez_compressed(tmp_path / "c.npz", x=a, b=a.astype(">f4"), t=np.array(True))
    s, c = read_npz(tmp_path / "s.npz"), read_npz(tmp_path / "c.npz")
    assert np.array_equal(s["x"], a) and np.array_equal(s["f"], a) and s["e"].shape == (0, 5)
    assert c["b"].dtype == np.dtype("<f4") and np.array_equal(c["b"], a)  # big-endian read as native
    assert c["t"].shape == () and bool(c["t"])
    with open(tmp_path / "w.npz", "wb") as f:
        write_npz(f, {"file": a, "allow_pickle": a})  # names np.savez cannot take
    assert sorted(read_npz(tmp_path / "w.npz")) == ["allow_pickle", "file"]


@pytest.mark.parametrize("members, message", [
    ({"x.npy": _npy(np.array([{"a": 1}], dtype=object))}, "array 'x': holds Python objects (a pickle)"),
    ({"x.npy": _npy(np.array(["a"]))}, "array 'x': element type <U1 is not supported"),
    ({"x.npy": _npy(np.zeros(2, np.complex64))}, "element type complex64 is not supported"),
    ({"x.npy": _npy(np.zeros(2, [("a", "<i4")]))}, "holds records (a structured dtype)"),
    ({"x.npy": _npy(np.zeros(4, np.float32))[:-3]}, "array 'x': truncated: its header declares <f4[4]"),
    ({"x.npy": _npy(np.zeros(4, np.float32)) + b"junk"}, "has extra bytes after its data"),
    ({"x.npy": _raw(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }")},
     "shape [-3] has a negative dim"),
    ({"x.npy": _raw(b"{'descr': '<f4'}    ")}, "should have exactly the keys"),
    ({"x.npy": b"not an npy at all"}, "array 'x': not a .npy array (no NUMPY header)"),
    ({"x.npy": _raw(b"[" * 5000)}, "the .npy header is not a dictionary literal"),
    ({"x.npy": _npy(np.zeros(1, np.float32)), "x": _npy(np.zeros(1, np.float32))}, "'x' occurs twice"),
])
def test_bad_members_are_refused_naming_file_and_array(tmp_path: Path, members: dict[str, bytes],
                                                       message: str) -> None:
    path = _zip(tmp_path / "bad.npz", members)
    with pytest.raises(InputError) as e:
        read_npz(path, "--inputs")
    assert message in str(e.value) and f"--inputs {path}" in str(e.value)


def test_a_huge_declared_shape_is_refused_before_reading(tmp_path: Path) -> None:
    npy = _raw(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }", b"\0" * 64)
    with pytest.raises(InputError, match=r"array 'x': shape \[1099511627776\] needs 8.0 TiB, over the"):
        read_npz(_zip(tmp_path / "h.npz", {"x.npy": npy}))


def test_a_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    set_max_tensor_bytes(64 << 20)
    try:
        big = _npy(np.zeros(100 << 20, np.uint8))  # 100 MiB of zeros deflate to ~100 KiB
        path = _zip(tmp_path / "bomb.npz", {"x.npy": big}, zipfile.ZIP_DEFLATED)
        assert path.stat().st_size < 1 << 20
        with pytest.raises(InputError, match=r"its arrays inflate to 100.0 MiB in all, over the 64.0 MiB size limit"):
            read_npz(path)
    finally:
        set_max_tensor_bytes(None)


def test_truncated_archive_and_bad_crc(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", x=np.arange(1000, dtype=np.int32))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.npz: not an \.npz archive of arrays \(not a readable zip file"):
        read_npz(tmp_path / "cut.npz")
    i = data.index(b"\x93NUMPY") + 300
    (tmp_path / "crc.npz").write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    with pytest.raises(InputError, match=r"crc\.npz: array 'x': corrupt or truncated \(Bad CRC-32"):
        read_npz(tmp_path / "crc.npz")


def test_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(InputError, match=r"a single \.npy array, not an \.npz archive"):
        read_npz(tmp_path / "one.npy")
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(InputError, match=r"t\.npz: not an \.npz archive of arrays"):
        read_npz(tmp_path / "t.npz")
    with pytest.raises(InputError, match="is a directory, not a file"):
        read_npz(tmp_path)
