"""The submission rules, in one place: `check_submission` (a zip before it is accepted) and
pipelines/score.py (a prediction set before it is scored) both use them, so scoring rejects exactly
what a submission would be rejected for, with the same messages.

Per predicted image: a readable PNG (fully decoded), mode RGB, the size of its input.
Per zip: flat (no folders), no duplicate names, every test input present, nothing else.

No torch here: scoring imports this without the model code.
"""
from __future__ import annotations

import zipfile
import zlib
from typing import Iterable

import numpy as np

from imgrestore.data.io import ImageReadError, decode_image


class PredictionError(ValueError):
    """A predicted image that breaks the rules; `problems` lists every broken rule, each naming the image."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def format_problems(where, problems: list[str], limit: int = 50) -> str:
    """One message for a list of problems: 'WHERE: N problem(s):' then one line per problem."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems[:limit]) + more


def check_names(members: list[str], expected: Iterable[str], container: str = "zip",
                allow_extra: bool = False) -> list[str]:
    """Problems with the member names of a prediction set against the expected image names.

    `allow_extra` is for a folder of predictions, which may hold other files; a zip may not.
    """
    expected = set(expected)
    problems = [f"{m}: folders are not allowed in the {container}" for m in members if "/" in m or "\\" in m]
    problems += [f"{n}: missing from the {container}" for n in sorted(expected - set(members))]
    if not allow_extra:
        problems += [f"{n}: not a test input name" for n in sorted(set(members) - expected)
                     if "/" not in n and "\\" not in n]
    if len(members) != len(set(members)):
        problems.append(f"duplicate names in the {container}")
    return problems


def read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of one zip member; a damaged member is a PredictionError naming it."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        raise PredictionError([f"{name}: cannot be read from the zip ({type(e).__name__}: {e})"]) from None


def read_prediction(name: str, data: bytes, input_size: tuple[int, int]) -> np.ndarray:
    """Check one predicted image (its file bytes) against the rules and return it as HxWx3 uint8 RGB.

    `input_size` is the (width, height) of the damaged input it restores. Raises PredictionError
    listing every broken rule.
    """
    try:
        im = decode_image(data)
    except ImageReadError as e:
        raise PredictionError([f"{name}: not a readable image ({e})"]) from None
    problems = []
    if im.format != "PNG":
        problems.append(f"{name}: format {im.format}, expected PNG")
    if im.mode != "RGB":
        problems.append(f"{name}: mode {im.mode}, expected RGB")
    if im.size != tuple(input_size):
        problems.append(f"{name}: size {im.size}, its input is {tuple(input_size)}")
    if problems:
        raise PredictionError(problems)
    return np.asarray(im, dtype=np.uint8)
