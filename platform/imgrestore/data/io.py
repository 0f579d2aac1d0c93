"""Image reading with errors that name the file, and atomic writes (temporary name, then rename)."""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import socket
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and the problem."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, turning Pillow's deep errors into one clear message."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel


def _png_raw_size(width: int, height: int, bit_depth: int, colour_type: int, interlace: int) -> int:
    """Bytes the IDAT stream must inflate to: one filter byte plus the packed samples, per row
    (per row of each of the seven Adam7 passes when interlaced)."""
    bits = _PNG_CHANNELS[colour_type] * bit_depth
    if not interlace:
        passes = [(width, height)]
    else:  # Adam7: (x start, y start, x step, y step) of each pass
        adam7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        passes = [(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in adam7]
    return sum(h * (1 + (w * bits + 7) // 8) for w, h in passes if w > 0 and h > 0)


def png_data_problem(data: bytes) -> str | None:
    """What is wrong with the chunks and pixel data of PNG bytes, or None if nothing is.

    Pillow's `verify()` checks chunk CRCs but decodes nothing, and its `load()` fills a zlib stream
    that ends early with zeros instead of failing. So this walks the chunks itself: every CRC, and the
    IDAT stream must be complete and inflate to exactly the size the header promises.
    """
    pos, header, inflater, inflated = len(PNG_SIGNATURE), None, zlib.decompressobj(), 0
    while True:
        if pos + 8 > len(data):
            return "file ends before the IEND chunk"
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        name = kind.decode("latin-1")
        if len(body) < length or len(crc) < 4:
            return f"chunk {name} is cut short"
        if struct.unpack(">I", crc)[0] != zlib.crc32(body, zlib.crc32(kind)):
            return f"chunk {name} fails its CRC check"
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                return f"IHDR chunk has {length} bytes, expected 13"
            width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if colour_type not in _PNG_CHANNELS:
                return f"unknown colour type {colour_type}"
            header = (width, height, bit_depth, colour_type, interlace)
        elif kind == b"IDAT":
            if header is None:
                return "IDAT chunk before IHDR"
            try:
                while body:  # inflate in pieces so a highly compressed image never sits in memory
                    inflated += len(inflater.decompress(body, 1 << 20))
                    body = inflater.unconsumed_tail
            except zlib.error as e:
                return f"pixel data is not a valid zlib stream ({e})"
        elif kind == b"IEND":
            break
    if header is None:
        return "no IHDR chunk"
    expected = _png_raw_size(*header)
    if not inflater.eof:
        return f"pixel data stream is truncated ({inflated} of {expected} bytes)"
    if inflated != expected:
        return f"pixel data decodes to {inflated} bytes, the {header[0]}x{header[1]} header needs {expected}"
    return None


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes (and check a PNG's pixel data stream); ImageReadError says why not.

    The message does not name a file: the caller knows which file or zip member it read.
    """
    if data[:len(PNG_SIGNATURE)] == PNG_SIGNATURE:
        problem = png_data_problem(data)
        if problem:
            raise ImageReadError(f"corrupt PNG: {problem}")
    try:
        im = Image.open(io.BytesIO(data))  # in memory: nothing to close, and `format` stays set
        im.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{type(e).__name__}: {e}") from None
    return im


def check_image_file(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """(mode, size) of an image file after a full decode (see decode_image); for dataset validation.

    Training reads with open_image, which trusts Pillow alone: this stricter check runs once, up front.
    """
    im = decode_image(Path(path).read_bytes())
    return im.mode, im.size


def read_gray(path: str | os.PathLike, strict: bool = False) -> np.ndarray:
    """HxW uint8. With strict=True an image that is not single-channel ('L') is an error."""
    im = open_image(path)
    if strict and im.mode != "L":
        raise ImageReadError(f"{path}: expected a grayscale (mode 'L') image, got mode '{im.mode}'")
    return np.asarray(im.convert("L"), dtype=np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8."""
    return np.asarray(open_image(path).convert("RGB"), dtype=np.uint8)


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_pattern(path: Path) -> re.Pattern:
    """Names of atomic_path's temporary files for `path`: .NAME.PID@HOST.TOKEN.tmpSUFFIX"""
    return re.compile(re.escape(f".{path.name}.") + r"(\d+)@" + re.escape(_HOST) + r"\.[a-z0-9_]+"
                      + re.escape(f".tmp{path.suffix}"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_dead_temps(path: Path) -> None:
    """Delete temporary files of `path` left by writers on this host that died without cleaning up (SIGKILL).

    Only our own temp names for this exact target are touched, and only when their pid is gone; the host
    is part of the name, so a writer on another machine sharing the folder is never judged by our pids.
    """
    pattern = _temp_pattern(path)
    for candidate in path.parent.glob(glob.escape(f".{path.name}.") + "*"):
        match = pattern.fullmatch(candidate.name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):  # another writer may be cleaning up too
                candidate.unlink()


def _umask() -> int:
    """The process umask. os.umask can only be read by setting it, which briefly changes it for every
    thread, so Linux's /proc is asked first."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an error mid-write leaves any existing file untouched. The final file gets the usual
    permissions (0666 less the umask), as if it had been opened for writing directly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    # The pid and host in the name let a later writer recognise a temp whose writer was killed.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600, and a rename keeps the mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 HxW or HxWx3 array as PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: write_png needs uint8, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame to CSV atomically (no index)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
