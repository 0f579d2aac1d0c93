"""Restore every test input at full size and write the DACON submission zip.

The damaged region of a test input is found from the input alone (imgrestore.data.masks.detect_mask).
PNGs are named as the inputs and stored flat in the zip; the zip is written under a temporary name,
checked (count, names, sizes, RGB mode), and only then renamed into place.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from imgrestore.data.io import atomic_path, read_gray
from imgrestore.data.masks import detect_mask
from imgrestore.training.data import to_tensors, to_uint8_rgb


class SubmissionError(ValueError):
    """A submission zip that does not match the test set; the message lists every problem."""


@torch.no_grad()
def restore(model: torch.nn.Module, gray: np.ndarray, mask: np.ndarray, device="cpu") -> np.ndarray:
    """One damaged gray image (HxW uint8) and its mask -> restored HxWx3 uint8, at full size."""
    g, m = to_tensors(gray, mask)
    return to_uint8_rgb(model(g[None].to(device), m[None].to(device)).float()[0])


def check_submission(zip_path: str | os.PathLike, test: pd.DataFrame) -> int:
    """Check a submission against the test frame (name, input_path). Returns the number of images."""
    zip_path = Path(zip_path)
    problems = []
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.namelist()
        expected = {row.name: row.input_path for row in test.itertuples(index=False)}
        for m in members:
            if "/" in m or "\\" in m:
                problems.append(f"{m}: folders are not allowed in the zip")
        missing, extra = set(expected) - set(members), set(members) - set(expected)
        problems += [f"{n}: missing from the zip" for n in sorted(missing)]
        problems += [f"{n}: not a test input name" for n in sorted(extra)]
        if len(members) != len(set(members)):
            problems.append("duplicate names in the zip")
        for name in sorted(set(members) & set(expected)):
            try:
                with Image.open(io.BytesIO(zf.read(name))) as im:
                    mode, size, fmt = im.mode, im.size, im.format
            except Exception as e:  # noqa: BLE001 - any decoding failure is a problem with this member
                problems.append(f"{name}: not a readable image ({e})")
                continue
            with Image.open(expected[name]) as inp:
                in_size = inp.size
            if fmt != "PNG":
                problems.append(f"{name}: format {fmt}, expected PNG")
            if mode != "RGB":
                problems.append(f"{name}: mode {mode}, expected RGB")
            if size != in_size:
                problems.append(f"{name}: size {size}, its input is {in_size}")
    if problems:
        raise SubmissionError(f"{zip_path}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems[:50]))
    return len(members)


def write_submission(model: torch.nn.Module, test: pd.DataFrame, out: str | os.PathLike,
                     device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Restore every row of `test` (name, input_path) into the zip `out`, then check it."""
    out = Path(out)
    model = model.to(device).eval()
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are already compressed
            for row in tqdm(list(test.itertuples(index=False)), desc="restoring test set", disable=not progress):
                gray = read_gray(row.input_path, strict=True)
                rgb = restore(model, gray, detect_mask(gray), device)
                buf = io.BytesIO()
                Image.fromarray(rgb, "RGB").save(buf, format="PNG")
                zf.writestr(row.name, buf.getvalue())
        check_submission(tmp, test)
    return out
