"""The classical restorers side by side on a dataset's held-out images, as is and with a hue prior, each against
FSR per image.

    python benchmarks/classical_fills.py --data D [--images 100] [--write-docs docs/benchmarks.md]

D: a DACON-format folder with test_gt/ (the benchmark's, `pipelines/make_dataset.py`'s or the embedded one). The
masks are the true ones (test input against its truth); the hue prior is fitted on D's training truths (at most
400, as a search fits it: ``tuning.decoding.fit_prior``) and decodes every restorer alike, as a registered
classical champion decodes. Δ: the per-image difference to FSR's score with the same decoding, mean ± standard
error, and on how many images it is higher.
"""
from __future__ import annotations

import argparse
import platform as platform_module
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from imgrestore.benchmarking.report import publish
from imgrestore.metrics import score_image
from imgrestore.models import create_model
from imgrestore.submission.predict import restore
from imgrestore.training.data import load_pair
from imgrestore.tuning.baselines import CLASSICAL_FAMILIES, PairedAdvantage
from imgrestore.tuning.decoding import fit_prior

SECTION = "## Classical restorers side by side"


def measure(data: Path, images: int) -> pd.DataFrame:
    train = pd.read_csv(data / "train.csv")
    prior = fit_prior(pd.DataFrame({"gt_path": [str(data / p) for p in train["gt_img_path"]]}))
    test = sorted((data / "test_input").glob("*.png"))[:images]
    rows = []
    for path in tqdm(test, desc="restoring"):
        gray, mask, rgb = load_pair(str(path), str(data / "test_gt" / path.name))
        for name in (f for f in CLASSICAL_FAMILIES if f != "input_copy"):
            for decoding, hue_prior in (("as is", None), ("hue prior", prior)):
                model = create_model(name)
                model.hue_prior = hue_prior
                rows.append({"image": path.name, "restorer": name, "decoding": decoding,
                             **score_image(rgb, restore(model, gray, mask), mask)})
    return pd.DataFrame(rows)


def section(frame: pd.DataFrame, args, argv: list[str]) -> str:
    lines = [SECTION, "",
             f"- command: `{' '.join(['python benchmarks/classical_fills.py', *argv])}`",
             f"- machine: {platform_module.machine()}, torch {torch.__version__}; date "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- {frame['image'].nunique()} held-out images of {args.data.name}, true masks; the hue prior fitted on "
             "its training truths", "",
             "| restorer | decoding | S | M | C | score | Δ vs fsr (mean ± s.e., images higher) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (decoding, name), g in frame.groupby(["decoding", "restorer"], sort=False):
        ref = frame[(frame["decoding"] == decoding) & (frame["restorer"] == "fsr")].set_index("image")["score"]
        scores = g.set_index("image")["score"]
        delta = "reference" if name == "fsr" else PairedAdvantage.of(scores, ref.loc[scores.index]).text()
        lines.append(f"| {name} | {decoding} | {g['ssim'].mean():.3f} | {g['masked_ssim'].mean():.3f} | "
                     f"{g['hist_sim'].mean():.3f} | {g['score'].mean():.4f} | {delta} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="DACON-format folder with test_gt/")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    if not (args.data / "test_gt").is_dir():
        raise SystemExit(f"{args.data}: no test_gt/ folder (the held-out truths this compares against)")
    frame = measure(args.data, args.images)
    publish({SECTION: section(frame, args, sys.argv[1:] if argv is None else argv)}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
