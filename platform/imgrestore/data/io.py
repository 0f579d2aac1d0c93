"""Image reading with errors that name the file, and atomic writes (temporary name, then rename)."""
from __future__ import annotations

import contextlib
import os
import tempfile
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


def read_gray(path: str | os.PathLike, strict: bool = False) -> np.ndarray:
    """HxW uint8. With strict=True an image that is not single-channel ('L') is an error."""
    im = open_image(path)
    if strict and im.mode != "L":
        raise ImageReadError(f"{path}: expected a grayscale (mode 'L') image, got mode '{im.mode}'")
    return np.asarray(im.convert("L"), dtype=np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8."""
    return np.asarray(open_image(path).convert("RGB"), dtype=np.uint8)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an error mid-write leaves any existing file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
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
