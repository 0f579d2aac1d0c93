"""How long hue-prior decoding takes on validation images, decoded here (one process) or in Ray tasks.

    python benchmarks/decoding_speed.py [--photos DIR] [--size 512] [--images 32] [--write-docs docs/benchmarks.md]

Polish decodes the best trial's restorations of the validation images (``imgrestore.tuning.decoding``,
``score_restorations``): up to 400 images of 512 px with dacon.yaml, seconds each when the restoration is
coloured. This times that step both ways on the same images, and checks that both give the same scores:

* gray: the photo's own gray, as a classical restorer returns it;
* faint colour: the gray plus ``--gain`` times the truth's chroma, what a trained colouriser returns (the decoding
  is slower on it: many more distinct colours to transport).

Images: the photos (default ../shared/photos, else the bundled ones) resized to a square, a rectangle of 20% of
each lost; the prior fitted on other photos than those decoded. One process: as polish decoded before, with
torch's default threads. Ray: a local instance with every CPU of this machine, one torch thread per task.

Then the submission: ``write_submission`` of a classical restorer carrying the prior (as a registered classical
champion does) on the same photos damaged by the damage model and saved as test inputs, in this process and with
``parallel=True`` (the network, here OpenCV's inpainting, stays in the driver; the decoding goes to Ray tasks),
the two zips compared byte for byte.
"""
from __future__ import annotations

import argparse
import os
import platform as platform_module
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgrestore.benchmarking.report import publish
from imgrestore.models.hue_prior import HuePrior
from imgrestore.ray_tasks import chunk_size
from imgrestore.submission.predict import DECODE_CHUNK
from imgrestore.tuning.decoding import DECODE_CHUNK as SCORE_CHUNK
from imgrestore.tuning.decoding import score_restorations

SECTION = "## Hue-prior decoding: in Ray tasks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "photos"


def photos(folder: str | None, size: int, n: int) -> list[np.ndarray]:
    """Up to `n` photos, resized to `size` squared."""
    from imgrestore.data.build import photos_in
    from imgrestore.data.embedded import bundled_photos

    sources = photos_in(folder or SHARED) if folder or SHARED.is_dir() else bundled_photos()
    return [np.asarray(Image.fromarray(load()).resize((size, size), Image.BICUBIC)) for _, load in sources[:n]]


def restorations(truths: list[np.ndarray], gain: float) -> list[tuple]:
    out = []
    for i, truth in enumerate(truths):
        h, w = truth.shape[:2]
        mask = np.zeros((h, w), bool)
        top, left = (i * 37) % (h // 2), (i * 53) % (w // 2)
        mask[top:top + int(h * 0.45), left:left + int(w * 0.45)] = True
        gray = np.asarray(Image.fromarray(truth).convert("L")).astype(np.float64)[..., None]
        rgb = np.clip(gray + gain * (truth - gray), 0, 255).round().astype(np.uint8)
        out.append((truth, rgb, mask))
    return out


def measure(args) -> tuple[list[dict], list[dict]]:
    import ray

    pics = photos(args.photos, args.size, args.images + 20)
    if len(pics) < args.images + 2:
        raise SystemExit(f"error: {len(pics)} photos: need --images ({args.images}) and a few more for the prior")
    prior = HuePrior().fit(pics[args.images:])  # fitted on other photos than those decoded
    truths = pics[:args.images]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        warm = restorations(truths[:os.cpu_count()], 0.0)  # start one worker per CPU first: paid once a search
        score_restorations([[item] for item in warm], prior, parallel=True)
        for kind, gain in (("gray", 0.0), (f"faint colour (gain {args.gain})", args.gain)):
            items = restorations(truths, gain)
            size = chunk_size(len(items), SCORE_CHUNK)  # as score_decodings chunks them for the tasks
            chunks = [items[i:i + size] for i in range(0, len(items), size)]
            t = time.perf_counter()
            here = score_restorations(chunks, prior, progress=True)
            here_s = time.perf_counter() - t
            t = time.perf_counter()
            tasks = score_restorations(chunks, prior, progress=True, parallel=True)
            tasks_s = time.perf_counter() - t
            rows.append({"kind": kind, "n": len(items), "here": here_s, "tasks": tasks_s, "same": here == tasks,
                         "chunk": size, "score": here["hue prior"]["score"]})
        submissions = [submission_times(name, prior, truths) for name in ("telea", "fsr")]
    finally:
        ray.shutdown()
    return rows, submissions


def submission_times(name: str, prior: HuePrior, truths: list[np.ndarray]) -> dict:
    """write_submission of the classical restorer `name` with `prior`, serial and parallel, on the truths damaged
    (seeded) and written as test inputs to a temporary folder."""
    import tempfile
    import zipfile

    import pandas as pd

    from imgrestore.data.damage import apply_damage
    from imgrestore.data.io import write_png
    from imgrestore.models import create_model
    from imgrestore.submission.predict import write_submission

    model = create_model(name).eval()
    model.hue_prior = prior
    with tempfile.TemporaryDirectory(prefix="decoding-speed-") as tmp:
        tmp = Path(tmp)
        rows = []
        for i, truth in enumerate(truths):
            path = tmp / "test_input" / f"TEST_{i:05d}.png"
            write_png(path, apply_damage(truth, np.random.default_rng(i)).gray)
            rows.append({"name": path.name, "input_path": str(path)})
        test, out = pd.DataFrame(rows), {}
        for parallel in (False, True):
            t = time.perf_counter()
            zip_path = write_submission(model, test, tmp / f"sub{int(parallel)}.zip", progress=False,
                                        parallel=parallel)
            out["tasks" if parallel else "here"] = time.perf_counter() - t
            with zipfile.ZipFile(zip_path) as zf:
                out[parallel] = [zf.read(n) for n in zf.namelist()]
    return {"kind": f"{name} + hue prior", "n": len(truths), "here": out["here"], "tasks": out["tasks"],
            "same": out[False] == out[True]}


def section(measured: tuple[list[dict], list[dict]], args, argv) -> str:
    rows, submissions = measured
    lines = [SECTION, "",
             f"- command: `python benchmarks/decoding_speed.py {' '.join(argv)}`",
             f"- machine: {platform_module.machine()}, {os.cpu_count()} CPUs; "
             f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- {args.images} photos resized to {args.size} px squared, 20% lost; one process: torch's default "
             f"threads ({torch.get_num_threads()}); Ray: one task per CPU, one torch thread each, chunks of "
             f"{rows[0]['chunk']} images (as polish); Ray's workers started before timing (once per search, "
             "seconds); the decoded scores compared exactly", "",
             "| restoration | images | one process (s/image) | Ray tasks (s/image) | speed-up | same scores |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['n']} | {r['here'] / r['n']:.2f} | {r['tasks'] / r['n']:.2f} | "
                     f"{r['here'] / r['tasks']:.1f}x | {'yes' if r['same'] else 'NO'} |")
    lines += ["", "The submission (`write_submission`, the restorer in the driver, `parallel=True` sends the decoding "
              f"to Ray tasks of up to {DECODE_CHUNK} images; wall time per image, PNG encoding and the zip's check "
              "included):",
              "", "| restorer | images | one process (s/image) | Ray tasks (s/image) | speed-up | same zip |",
              "|---|---:|---:|---:|---:|---|"]
    for r in submissions:
        lines.append(f"| {r['kind']} | {r['n']} | {r['here'] / r['n']:.2f} | {r['tasks'] / r['n']:.2f} | "
                     f"{r['here'] / r['tasks']:.1f}x | {'yes' if r['same'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", help="folder of colour photos (default ../shared/photos, else the bundled ones)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--gain", type=float, default=0.3, help="chroma gain of the 'faint colour' restorations")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    text = section(measure(args), args, sys.argv[1:] if argv is None else argv)
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
