"""A picture of validation restorations: one row per image, columns input / prediction / truth."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from imgrestore.data.io import write_png

HEADER = 16


def restoration_grid(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | os.PathLike,
                     max_side: int = 256) -> None:
    """rows: (damaged gray HxW, prediction HxWx3, truth HxWx3) uint8 arrays of one size."""
    h, w = rows[0][1].shape[:2]
    scale = min(1.0, max_side / max(h, w))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    sheet = Image.new("RGB", (3 * tw, HEADER + len(rows) * th), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(("input", "prediction", "truth")):
        draw.text((c * tw + 4, 2), title, fill="black")
    for r, (gray, pred, truth) in enumerate(rows):
        for c, img in enumerate((np.stack([gray] * 3, -1), pred, truth)):
            tile = Image.fromarray(img).resize((tw, th), Image.BILINEAR)
            sheet.paste(tile, (c * tw, HEADER + r * th))
    write_png(path, np.asarray(sheet))
