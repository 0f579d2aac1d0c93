"""imgrestore.data.io: atomic writes (permissions, temps left by killed writers) and the full image check."""
from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from imgrestore.data import io as iomod
from imgrestore.data.io import ImageReadError, atomic_path, check_image_file, decode_image, png_data_problem, \
    write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    target = tmp_path / "out" / "report.txt"
    write_text(target, "hello")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    write_text(target, "again")  # replacing an existing file too
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_name(target: str, pid: int, host: str = iomod._HOST, token: str = "abc_1234", suffix: str = ".zip") -> str:
    return f".{target}.{pid}@{host}.{token}.tmp{suffix}"


def test_leftover_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "submission.zip"
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / temp_name("submission.zip", dead)
    keep = [
        tmp_path / temp_name("submission.zip", alive),                # its writer is still running
        tmp_path / temp_name("submission.zip", dead, host="other-machine"),  # another host's pid means nothing here
        tmp_path / temp_name("other.zip", dead),                      # another target
        tmp_path / temp_name("submission.zip.bak", dead, suffix=".bak"),
        tmp_path / f".submission.zip.{dead}.tmp.zip",                 # not our pattern
        tmp_path / "submission.zip.notes",
    ]
    for p in [stale, *keep]:
        p.write_bytes(b"x")
    with atomic_path(target) as tmp:
        assert str(os.getpid()) in tmp.name and tmp.name.startswith(".submission.zip.")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists()
    assert all(p.exists() for p in keep)


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "submission.zip"
    writer = ("import sys, time\n"
              "from imgrestore.data.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'partial')\n"
              "    print(tmp, flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        left = tmp_path / os.path.basename(proc.stdout.readline().strip())
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    assert left.is_file() and not target.exists()
    write_text(target, "done")
    assert target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.zip"]


def test_a_failed_write_removes_its_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# ----------------------------------------------------------------------------- full image check


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced RGB PNG (Pillow cannot write one), filter type 0 on every row."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    h, w = rgb.shape[:2]
    adam7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x, y, dx, dy in adam7:
        raw += b"".join(b"\0" + row.tobytes() for row in rgb[y::dy, x::dx] if row.size)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "I;16"])
def test_valid_pngs_pass(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    assert png_data_problem(png_bytes(image)) is None
    assert decode_image(png_bytes(image)).size == (53, 37)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (37, 53), (9, 2)])
def test_interlaced_pngs_pass(size):
    rgb = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    data = interlaced_png(rgb)
    assert png_data_problem(data) is None
    assert (np.asarray(decode_image(data)) == rgb).all()


@pytest.mark.parametrize("kind, problem", [("short", "pixel data decodes to"), ("cut", "stream is truncated"),
                                           ("long", "pixel data decodes to")])
def test_bad_pixel_data_behind_valid_crcs(tmp_path, corrupt_png, kind, problem):
    data = corrupt_png(Image.new("RGB", (40, 30), (10, 200, 30)), kind)
    assert problem in png_data_problem(data)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=problem):
        check_image_file(path)


def test_bad_crc_and_cut_file():
    data = bytearray(png_bytes(Image.new("L", (8, 8))))
    cut = bytes(data[:-20])
    assert "cut short" in png_data_problem(cut) or "ends before" in png_data_problem(cut)
    data[40] ^= 0xFF  # inside a chunk body
    assert "fails its CRC check" in png_data_problem(bytes(data))
