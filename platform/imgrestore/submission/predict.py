"""Restore every test input at full size and write the DACON submission zip.

The damaged regions of a test input are found from the input alone (imgrestore.data.masks.detect_regions);
what was found, and where detection was unsure, is reported beside the zip (NAME.detections.csv).
PNGs are named as the inputs and stored flat in the zip; the zip is written under a temporary name,
checked by the submission rules (imgrestore.submission.rules: names, PNG, RGB, input size), and only then
renamed into place.

Every zip written here carries a comment naming who wrote it (`submission_comment`: the run, the host, the
process, the time). `check_out` lets the command-line tools replace an existing output only when it is such a
zip (or when told to overwrite), and write_submission says which run's zip it replaces: two runs writing one
path never overwrite each other silently.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from imgrestore.data.io import atomic_path, read_gray, write_csv
from imgrestore.data.masks import detect_regions, summarize
from imgrestore.ray_tasks import batched, chunk_size, ordered_map
from imgrestore.submission.rules import PredictionError, check_names, format_problems, read_member, read_prediction
from imgrestore.training.data import to_tensors, to_uint8_restored


_log = logging.getLogger(__name__)
DECODE_CHUNK = 4  # images per decoding task of a parallel write_submission: a few seconds of work at 512 px


class SubmissionError(ValueError):
    """A submission zip that does not match the test set; the message lists every problem."""


@torch.no_grad()
def restore(model: torch.nn.Module, gray: np.ndarray, mask: np.ndarray, device="cpu", decode: bool = True
            ) -> np.ndarray:
    """One damaged gray image (HxW uint8) and its mask -> restored HxWx3 uint8, at full size.

    Outside the mask the result's Pillow gray is the input's, exactly (``to_uint8_restored``). A model that
    carries a hue prior (``model.hue_prior``, from its checkpoint: see ``imgrestore.tuning.decoding``) has its
    restoration decoded by it, the gray still exact (`decode` False: not here; `decode_chunk` does it later).
    """
    g, m = to_tensors(gray, mask)
    rgb = to_uint8_restored(model(g[None].to(device), m[None].to(device)).float()[0], g, m)
    prior = getattr(model, "hue_prior", None)
    return rgb if prior is None or not decode else prior.transform(rgb, np.asarray(mask, dtype=bool))


def decode_chunk(prior, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """`prior.transform` of each (restoration, mask): a Ray task's work in a parallel write_submission (one
    torch thread: one task per CPU). The decoding's random field has a fixed seed, so a restoration decodes to
    the same image here as in `restore` (tested; see write_submission)."""
    torch.set_num_threads(1)
    return [prior.transform(rgb, np.asarray(mask, dtype=bool)) for rgb, mask in items]


def check_submission(zip_path: str | os.PathLike, test: pd.DataFrame) -> int:
    """Check a submission against the test frame (name, input_path) by the rules of
    imgrestore.submission.rules. Returns the number of images; SubmissionError lists every problem."""
    zip_path = Path(zip_path)
    expected = {row.name: row.input_path for row in test.itertuples(index=False)}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.namelist()
            problems = check_names(members, expected)
            for name in sorted(set(members) & set(expected)):
                with Image.open(expected[name]) as inp:
                    in_size = inp.size
                try:
                    read_prediction(name, read_member(zf, name), in_size)
                except PredictionError as e:
                    problems += e.problems
    except zipfile.BadZipFile as e:
        raise SubmissionError(f"{zip_path}: not a valid zip file ({e})") from None
    if problems:
        raise SubmissionError(format_problems(zip_path, problems))
    return len(members)


COMMENT_PREFIX = "imgrestore submission"


def submission_comment(run: str | None = None) -> str:
    """The comment of a zip written by imgrestore: which run wrote it (default: the running script), where
    and when. `zip_writer` reads it back."""
    run = run or Path(sys.argv[0]).name or "python"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"{COMMENT_PREFIX} written by {run} (pid {os.getpid()} on {socket.gethostname()}) at {when}"


def zip_writer(path: str | os.PathLike) -> str | None:
    """The comment of the zip at `path` if imgrestore wrote it; None for anything else (or nothing there)."""
    try:
        with zipfile.ZipFile(path) as zf:
            comment = zf.comment.decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile):
        return None
    return comment if comment.startswith(COMMENT_PREFIX) else None


def check_out(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Before any work: may a submission be written to `out`? Nothing there, or a zip imgrestore wrote (it will
    be replaced, and write_submission says whose it was), are fine; a folder never is; any other file is a
    FileExistsError unless `overwrite`."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; --out names the zip file to write")
    if out.exists() and not overwrite and zip_writer(out) is None:
        raise FileExistsError(f"{out}: exists and is not a submission zip written by imgrestore; "
                              "choose another --out, or pass --overwrite to replace it")


def write_submission(model: torch.nn.Module, test: pd.DataFrame, out: str | os.PathLike,
                     device: str | torch.device = "cpu", progress: bool = True, comment: str | None = None,
                     parallel: bool = False) -> Path:
    """Restore every row of `test` (name, input_path) into the zip `out`, then check it (``restore``: with
    the model's hue prior when it carries one).

    Every region with the damage signature is restored (imgrestore.data.masks.detect_regions); an input
    where none is found is restored with an all-zero mask. What was detected per input (regions, area,
    fill values, boxes, confidence, `undamaged`/`unsure` flags and why) goes to `detections_path(out)`
    (NAME.detections.csv beside NAME.zip, written atomically after the zip), each flagged input is
    logged as a warning, and a one-line summary is printed (logged instead when not `progress`).
    The zip's comment is `comment` (default: `submission_comment()`, naming the running script); a file
    already at `out` is replaced, and what it was is printed (logged) first. Returns the zip's path.
    `parallel` (Ray initialised): a hue prior's decoding, seconds an image on a CPU at 512 px, runs in Ray tasks
    beside the network (which stays here, on `device`); the same PNGs (the decoding is seeded; only its float
    sums' rounding could differ with another number of torch threads: tested equal here, 2 threads against 1).
    """
    out = Path(out)
    model = model.to(device).eval()
    reports = {}
    rows = list(test.itertuples(index=False))
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are already compressed
            zf.comment = (comment or submission_comment()).encode()[:65535]
            # closed here, not whenever the traceback is freed: an error in this loop stops the decoding pulling work
            with contextlib.closing(_restorations(model, rows, reports, device, parallel)) as restored:
                for name, rgb in tqdm(restored, total=len(rows), desc="restoring test set", disable=not progress):
                    buf = io.BytesIO()
                    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
                    zf.writestr(name, buf.getvalue())
        check_submission(tmp, test)
        if out.exists():  # checked now, not at the start: another run may have written it meanwhile
            _say(f"replacing {out}: {zip_writer(out) or 'a file imgrestore did not write'}", progress)
    write_csv(detections_path(out), pd.DataFrame([{"name": name, **r.as_row()} for name, r in reports.items()]))
    for name, r in reports.items():
        if r.unsure or r.undamaged:
            _log.warning("%s: %s", name, r.summary())
    line = f"{summarize(reports)} - see {detections_path(out).name}"
    if progress:
        print(line)
    else:
        _log.log(logging.WARNING if any(r.unsure or r.undamaged for r in reports.values()) else logging.INFO, line)
    return out


def _restorations(model, rows, reports: dict, device, parallel: bool):
    """(name, restored RGB) of every row, in order; what detection found goes into `reports`."""
    prior = getattr(model, "hue_prior", None)
    in_tasks = parallel and prior is not None  # nothing to decode: nothing worth a task

    def restored():
        for row in rows:
            gray = read_gray(row.input_path, strict=True)
            reports[row.name] = detect_regions(gray)
            mask = reports[row.name].mask
            yield row.name, restore(model, gray, mask, device, decode=not in_tasks), mask

    if in_tasks:
        yield from _decoded_in_tasks(prior, restored(), len(rows))
    else:
        yield from ((name, rgb) for name, rgb, _ in restored())


def _decoded_in_tasks(prior, items, n: int):
    """(name, decoded RGB) of each of the `n` (name, restoration, mask) `items`, decoded in Ray tasks of up to
    DECODE_CHUNK images (fewer when that would leave CPUs idle), in order (`imgrestore.ray_tasks.ordered_map`)."""
    jobs = (([name for name, _, _ in batch], [(r, m) for _, r, m in batch])
            for batch in batched(items, chunk_size(n, DECODE_CHUNK)))
    for names, decoded in ordered_map(decode_chunk, prior, jobs):
        yield from zip(names, decoded)


def _say(line: str, progress: bool) -> None:
    if progress:
        print(line)
    else:
        _log.warning(line)


def detections_path(zip_path: str | os.PathLike) -> Path:
    """Where write_submission reports what it detected: NAME.detections.csv beside NAME.zip."""
    zip_path = Path(zip_path)
    return zip_path.with_name(f"{zip_path.stem}.detections.csv")
