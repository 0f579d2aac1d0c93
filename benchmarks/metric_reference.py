"""The metric's reference points on real DACON pairs: the truth, the damaged input, and perfect gray.

    python benchmarks/metric_reference.py --dacon ../shared/dacon_samples [--write-docs docs/benchmarks.md]

Expected (from the competition's design): truth scores 1.0; the damaged input copied to RGB about 0.18-0.22;
the truth's Pillow gray copied to RGB (perfect gray, no colour) about 0.58-0.61 with C near 0.

"widest range": the same prediction with one damaged pixel made black and another white. The metric's SSIMs take
``data_range`` from the prediction (max - min), and a wider range raises SSIM's stabilising constants, so two
pixels that restore nothing raise S and M: a fact about the metric to know, not a decoding this project uses.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgrestore.benchmarking.report import publish
from imgrestore.data.dacon import load_dataset
from imgrestore.data.io import read_gray, read_rgb
from imgrestore.data.masks import true_mask
from imgrestore.metrics import score_batch

SECTION = "## Metric reference values"


def widest_range(pred: np.ndarray, gray: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`pred` with its first damaged pixel black and its last white: data_range 255."""
    out = pred.copy()
    ys, xs = np.nonzero(true_mask(gray, gt))
    out[ys[0], xs[0]], out[ys[-1], xs[-1]] = 0, 255
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dacon", type=Path, required=True, help="DACON-format folder with train_input/ and train_gt/")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    train = load_dataset(args.dacon, require_test=False).train
    pairs = [(read_rgb(r.gt_path), read_gray(r.input_path)) for r in train.itertuples()]
    predictions = {
        "the truth itself": lambda gt, gray: gt,
        "damaged input copied to RGB": lambda gt, gray: np.stack([gray] * 3, -1),
        "Pillow gray of the truth copied to RGB": lambda gt, gray: np.asarray(Image.fromarray(gt).convert("L").convert("RGB")),
    }
    lines = [SECTION, "", f"`imgrestore.metrics` on the {len(pairs)} real DACON train pairs in `{args.dacon.name}`.", "",
             "- command: `python benchmarks/metric_reference.py --dacon ../shared/dacon_samples --write-docs docs/benchmarks.md`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| prediction | n | S | M | C | score |", "|---|---:|---:|---:|---:|---:|"]
    for name, make in list(predictions.items())[1:]:
        predictions[f"{name}, widest range"] = lambda gt, gray, make=make: widest_range(make(gt, gray), gray, gt)
    for name, make in predictions.items():
        s = score_batch([(gt, make(gt, gray), true_mask(gray, gt)) for gt, gray in pairs])
        lines.append(f"| {name} | {s['n']} | {s['ssim']:.4f} | {s['masked_ssim']:.4f} | {s['hist_sim']:.4f} | "
                     f"{s['score']:.4f} |")
    text = "\n".join(lines) + "\n"
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
