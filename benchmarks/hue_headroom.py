"""Where a trained model's score could come from: its held-out score with its hues rearranged.

    python benchmarks/hue_headroom.py --model CHAMPION_DIR --data DATASET [--write-docs docs/benchmarks.md]

DATASET: a DACON-format folder whose test images have their truths in test_gt/ (what
`pipelines/make_dataset.py` and `pipelines/benchmark.py` build). Each held-out image is restored by the
model (masks detected, as at test time), then its chroma is kept in magnitude and only its hue is moved:
each pixel's hue is rank-mapped (histogram specification) onto a target hue histogram:

* the model as it is;
* the training truths' mean hue histogram (a prior anyone has at test time);
* the image's own truth's hue histogram (an oracle: what predicting the hue *distribution* right is worth,
  with the model's ordering of hues over the pixels kept).

The metric's C is a correlation of 180-bin OpenCV hue histograms: the gap between the first and last rows is
what a better hue distribution alone would add. Per-image differences against the model: mean ± standard
error, and on how many images higher.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imgrestore.benchmarking.report import publish
from imgrestore.data.dacon import load_dataset
from imgrestore.data.io import read_gray, read_rgb
from imgrestore.data.masks import detect_mask, true_mask
from imgrestore.metrics import score_image
from imgrestore.models.color import compose_rgb
from imgrestore.models.hue_prior import hue_histogram
from imgrestore.training.checkpoint import load_model
from imgrestore.training.data import to_tensors, to_uint8_restored

SECTION = "## Hue headroom"
KEYS = ("score", "ssim", "masked_ssim", "hist_sim")


class HueOfChroma:
    """OpenCV's hue (0-180) as a function of the (Cb, Cr) direction: R, G and B differ by a linear function of
    the chroma only, so the hue depends on its angle alone; tabulated, and inverted where it is monotone."""

    def __init__(self, n: int = 7200):
        self.angle = np.linspace(-np.pi, np.pi, n + 1)[:-1]
        chroma = torch.tensor(np.stack([np.cos(self.angle), np.sin(self.angle)]) * 0.3).float()
        rgb = compose_rgb(torch.full((1, 1, 1, n), 0.5), chroma[None, :, None])[0, :, 0].T.double().numpy()
        r, g, b = rgb.T
        mx, mn = rgb.max(1), rgb.min(1)
        d = np.maximum(mx - mn, 1e-12)
        h = np.where(mx == r, 60 * (g - b) / d, np.where(mx == g, 120 + 60 * (b - r) / d, 240 + 60 * (r - g) / d))
        self.hue = (h % 360) / 2
        order = np.argsort(self.hue)
        self.sorted_hue, self.sorted_angle = self.hue[order], self.angle[order]

    def specify(self, chroma: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(2,H,W) chroma with the same magnitudes and its hues rank-mapped onto the `target` histogram."""
        rho, theta = np.hypot(chroma[0], chroma[1]), np.arctan2(chroma[1], chroma[0])
        hue = np.interp(theta.ravel(), self.angle, self.hue)
        quantile = (np.argsort(np.argsort(hue, kind="stable")) + 0.5) / hue.size
        cdf = np.cumsum(target) / target.sum()
        new_hue = np.clip(np.interp(quantile, cdf, np.arange(1, 181)) - 0.5, 0, 179.99)
        new_theta = np.interp(new_hue, self.sorted_hue, self.sorted_angle).reshape(theta.shape)
        return np.stack([rho * np.cos(new_theta), rho * np.sin(new_theta)])


def measure(model_dir: Path, data: Path, limit: int | None) -> tuple[dict, dict, int]:
    ds = load_dataset(data)
    test_gt = data / "test_gt"
    if not test_gt.is_dir():
        raise FileNotFoundError(f"{test_gt}: missing; this benchmark needs the held-out truths")
    model = load_model(model_dir).eval()
    prior = sum(hue_histogram(read_rgb(p)) for p in ds.train["gt_path"])
    table = HueOfChroma()
    rows = ds.test if limit is None else ds.test.iloc[:limit]
    scores: dict[str, list[dict]] = {"model": [], "prior": [], "oracle": []}
    with torch.no_grad():
        for row in rows.itertuples(index=False):
            gray = read_gray(row.input_path)
            truth = read_rgb(str(test_gt / row.name))
            detected = detect_mask(gray)
            g, m = (t[None] for t in to_tensors(gray, detected))
            out = model(g, m, return_aux=True)
            chroma = (out["chroma"] * model.chroma_scale(m))[0].numpy()  # as compose() decodes it
            targets = {"model": None, "prior": prior, "oracle": hue_histogram(truth)}
            for name, target in targets.items():
                c = chroma if target is None else table.specify(chroma, target)
                rgb = compose_rgb(out["y"].float(), torch.from_numpy(c[None]).float())
                pred = to_uint8_restored(rgb[0], g[0], m[0])
                scores[name].append(score_image(truth, pred, true_mask(gray, truth)))
    means = {k: {key: float(np.mean([s[key] for s in v])) for key in KEYS} for k, v in scores.items()}
    base = np.array([s["score"] for s in scores["model"]])
    deltas = {}
    for k in ("prior", "oracle"):
        d = np.array([s["score"] for s in scores[k]]) - base
        deltas[k] = (d.mean(), d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan"), int((d > 0).sum()))
    return means, deltas, len(base)


def section(means: dict, deltas: dict, n: int, args) -> str:
    what = {"model": "the model as it is", "prior": "hues onto the training truths' mean hue histogram",
            "oracle": "hues onto the image's own truth's histogram (oracle)"}
    lines = [SECTION, "",
             f"- command: `python benchmarks/hue_headroom.py {' '.join(sys.argv[1:])}`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {n} held-out images; masks detected "
             "as at test time, scored against the true mask; chroma magnitudes kept, only hues moved", "",
             "| hues | S | M | C | score | Δ vs the model (mean ± s.e., images higher) |",
             "|---|---:|---:|---:|---:|---|"]
    for k, m in means.items():
        d = "reference" if k == "model" else f"{deltas[k][0]:+.4f} ± {deltas[k][1]:.4f} ({deltas[k][2]} of {n})"
        lines.append(f"| {what[k]} | {m['ssim']:.3f} | {m['masked_ssim']:.3f} | {m['hist_sim']:.3f} | "
                     f"{m['score']:.4f} | {d} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a saved model folder (model.json + safetensors)")
    ap.add_argument("--data", type=Path, required=True, help="DACON-format folder with test_gt/")
    ap.add_argument("--limit", type=int, help="only the first N test images")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    means, deltas, n = measure(args.model, args.data, args.limit)
    text = section(means, deltas, n, args)
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
