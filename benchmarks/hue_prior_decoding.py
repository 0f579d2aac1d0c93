"""What hue-prior decoding (imgrestore.models.hue_prior) does to a trained model and to the classical restorers,
on held-out photos.

    python benchmarks/hue_prior_decoding.py --model CHAMPION_DIR --data DATASET [--limit N] \
        [--write-docs docs/benchmarks.md]

DATASET: a DACON-format folder whose test images have their truths in test_gt/ (what
`pipelines/make_dataset.py` and `pipelines/benchmark.py` build). The prior is fitted on the dataset's training
truths; every restorer restores each held-out image with the mask detected from the input (as at test time),
then the same output is scored as it is and after ``HuePrior.transform``. Scored against the true mask.
Per-image differences: mean ± standard error, and on how many images higher.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from imgrestore.benchmarking.report import model_desc, publish
from imgrestore.data.dacon import load_dataset
from imgrestore.data.io import read_gray, read_rgb
from imgrestore.data.masks import detect_mask, true_mask
from imgrestore.metrics import KEYS, score_image
from imgrestore.models import create_model
from imgrestore.tuning.decoding import fit_prior
from imgrestore.submission.predict import restore
from imgrestore.training.checkpoint import load_model

SECTION = "## Hue-prior decoding"
CLASSICAL = ("fsr", "telea")


def measure(model_dir: Path, data: Path, limit: int | None):
    ds = load_dataset(data)
    test_gt = data / "test_gt"
    if not test_gt.is_dir():
        raise FileNotFoundError(f"{test_gt}: missing; this benchmark needs the held-out truths")
    restorers = {"champion": load_model(model_dir).eval(), **{n: create_model(n).eval() for n in CLASSICAL}}
    restorers["champion"].hue_prior = None  # "as is": a champion chosen with the decoding carries its own prior
    t0 = time.perf_counter()
    prior = fit_prior(ds.train, limit=len(ds.train), progress=True)  # every training truth
    fit_s = time.perf_counter() - t0
    rows = ds.test if limit is None else ds.test.iloc[:limit]
    scores = {(n, d): [] for n in restorers for d in ("as is", "hue prior")}
    steer_s = []
    with torch.no_grad():
        for row in tqdm(list(rows.itertuples(index=False)), desc="held-out images"):
            gray, truth = read_gray(row.input_path), read_rgb(str(test_gt / row.name))
            detected, mask = detect_mask(gray), true_mask(gray, truth)
            for name, model in restorers.items():
                out = restore(model, gray, detected)
                t = time.perf_counter()
                steered = prior.transform(out, detected)
                steer_s.append(time.perf_counter() - t)
                scores[(name, "as is")].append(score_image(truth, out, mask))
                scores[(name, "hue prior")].append(score_image(truth, steered, mask))
    champion = restorers["champion"]
    desc = model_desc({"name": champion.name, **champion.config})
    return scores, desc, fit_s, float(np.mean(steer_s)), len(rows), len(ds.train)


def _delta(a: list[dict], b: list[dict]) -> str:
    d = np.array([s["score"] for s in a]) - np.array([s["score"] for s in b])
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.4f} ± {se:.4f} ({int((d > 0).sum())} of {len(d)})"


def section(scores, desc, fit_s, steer_s, n, n_train, argv) -> str:
    lines = [SECTION, "",
             f"- command: `python benchmarks/hue_prior_decoding.py {' '.join(argv)}`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {n} held-out images; the prior fitted "
             f"on {n_train} training truths in {fit_s:.1f} s; decoding {steer_s:.2f} s an image on this machine "
             f"({torch.get_num_threads()} torch threads); masks detected as at test time, scored against the true "
             "mask", f"- champion: {desc}", "",
             "| restorer | decoding | S | M | C | score | Δ vs as is (mean ± s.e., images higher) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (name, dec), rows in scores.items():
        m = {k: float(np.mean([s[k] for s in rows])) for k in KEYS}
        d = "reference" if dec == "as is" else _delta(rows, scores[(name, "as is")])
        lines.append(f"| {name} | {dec} | {m['ssim']:.3f} | {m['masked_ssim']:.3f} | {m['hist_sim']:.3f} | "
                     f"{m['score']:.4f} | {d} |")
    as_is = _delta(scores[("champion", "as is")], scores[("fsr", "as is")])
    decoded = _delta(scores[("champion", "hue prior")], scores[("fsr", "hue prior")])
    lines += ["", f"Champion − fsr, per image: as is {as_is}; both with the hue prior {decoded}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a saved model folder (model.json + safetensors)")
    ap.add_argument("--data", type=Path, required=True, help="DACON-format folder with test_gt/")
    ap.add_argument("--limit", type=int, help="only the first N test images")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    text = section(*measure(args.model, args.data, args.limit), sys.argv[1:] if argv is None else argv)
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
