"""Score a prediction set with the DACON 236420 metric.

    python pipelines/score.py --pred PRED_DIR_OR_ZIP --input INPUT_DIR --gt GT_DIR [--per-image]

Predictions are PNGs named as the inputs (a folder, or a zip with no folders inside), held to the
same rules as a submission (imgrestore.submission.rules: readable PNG, RGB, the input's size; a zip
holds exactly the gt names). The mask of each image is the true training mask: input != Pillow gray
of the gt. The last line of output is one JSON object: {"score", "ssim", "masked_ssim", "hist_sim", "n"}.
Bad input: `error: <message>` on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from imgrestore.metrics import KEYS, score_directory


def format_table(rows: list[dict]) -> str:
    head = f"{'name':<24} {'masked_px':>9} " + " ".join(f"{k:>11}" for k in KEYS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<24} {r['n_masked']:>9d} " + " ".join(f"{r[k]:>11.4f}" for k in KEYS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, help="folder or .zip of predicted PNGs")
    parser.add_argument("--input", required=True, help="folder of damaged gray inputs")
    parser.add_argument("--gt", required=True, help="folder of ground-truth colour PNGs")
    parser.add_argument("--per-image", action="store_true", help="print a per-image table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        rows, summary = score_directory(args.pred, args.input, args.gt, progress=not args.no_progress)
    except (ValueError, OSError) as e:  # bad or missing input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.per_image:
        print(format_table(rows))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
