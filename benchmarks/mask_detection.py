"""How well does detect_mask / detect_regions find the damage from the input alone?

(a) Generated damage (imgrestore.data.damage) over crops of real photos, at 256 and 512 px, seeded;
    IoU of detect_mask against the true mask (input != Pillow gray of the photo) and against the
    geometric region that was filled, broken down by shape, size and photo variant ("clipped" =
    contrast stretched x1.6 and clipped, so photos get big saturated 0/255 areas).
(b) Two separate damaged regions per image (is each one restored, and is a miss flagged?) and
    undamaged crops (is the mask empty, or is a made-up region at least flagged?).
(c) The real DACON train pairs, if --dacon DIR is given (DIR/train_input, DIR/train_gt), and the
    detected regions/fill/area/confidence/flags for DIR/test_input (no ground truth there), plus the
    undamaged train ground truths.

    python benchmarks/mask_detection.py --n 300 --dacon /work/shared/dacon_samples \
        --write-docs docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from imgrestore.data.damage import SHAPES, DamageConfig, apply_damage
from imgrestore.benchmarking.report import write_sections
from imgrestore.data.io import ImageReadError, read_gray, read_rgb
from imgrestore.data.masks import detect_mask, detect_regions, true_mask

DEFAULT_PHOTOS = Path("/work/shared/photos")
SECTION = "## Mask detection"
NOTES = """Reading it:
- IoU vs the true mask is below 1 even when the region is found exactly: the true mask
  (`input != gray(gt)`) leaves out pixels whose original gray already equalled the fill value, and the
  detected component can take in a few natural pixels of the fill value touching its border. Against
  the geometric region that was filled the median is 1.0000.
- "clipped" photos (contrast x1.6, clipped) have large flat 0 and 255 areas with steep edges; the
  detector still prefers the damage because its border *jumps* (the next pixel outward is smooth)
  where a natural flat area's border ramps.
- The fill = 0 stress rows are the known limit: a 0-filled region touching a crushed-black area is one
  component with it. `detect_mask` cuts the natural part off when it can (convex hull of the jumping
  border); damage lying over black pixels changes nothing visible there and cannot be recovered.
- Two regions / undamaged: `detect_regions` takes every region with the damage signature, so both
  regions of a two-region input are restored; a region whose border hardly jumps can be missed, and is
  then named in the report as a near miss ("flagged"). An undamaged input gets an empty mask (no
  made-up few-pixel region); a natural flat area with a step-like border (a clipped highlight) may be
  taken for damage, mostly with the `unsure` flag. "confidence" is the report's (see DetectionReport).
- The five DACON test inputs were also checked by eye (overlays of the detected mask): each time the
  whole visible damaged shape and nothing else, TEST_069's enclosed hole (a self-intersecting polygon
  filled even-odd) left out as it should be.
"""


def load_photos(folder: Path | None) -> dict[str, np.ndarray]:
    photos: dict[str, np.ndarray] = {}
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}:
                continue
            try:
                photos[path.name] = read_rgb(path)
            except ImageReadError as e:
                print(f"skipping {e}", file=sys.stderr)
    if not photos:
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
            try:
                img = getattr(data, name)()
            except Exception:  # noqa: BLE001 - some need a download; use what ships with skimage
                continue
            photos[name] = img[..., :3] if img.ndim == 3 else np.stack([img] * 3, -1)
    return photos


def random_crop(rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (side between `size` and the short side), resized to size x size."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    side = int(rng.integers(min(size, short), short + 1))
    r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(np.ascontiguousarray(rgb[r:r + side, c:c + side]))
    if side != size:
        crop = crop.resize((size, size), Image.BICUBIC)
    return np.asarray(crop)


def clipped(rgb: np.ndarray) -> np.ndarray:
    """Contrast x1.6 around mid-gray, clipped: big blown-out whites and crushed blacks."""
    return np.clip((rgb.astype(np.float32) - 128) * 1.6 + 128, 0, 255).round().astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def timed_detect(gray: np.ndarray):
    t = time.perf_counter()
    mask = detect_mask(gray)
    return mask, time.perf_counter() - t


def summary_row(name: str, ious: list[float], times: list[float] | None = None) -> str:
    v = np.asarray(ious)
    if v.size == 0:
        return f"| {name} | 0 |" + " - |" * (5 if times is not None else 4)
    cells = [name, str(v.size), f"{v.mean():.4f}", f"{np.median(v):.4f}", f"{v.min():.4f}", f"{(v > 0.9).mean():.1%}"]
    if times is not None:
        cells.append(f"{np.mean(times) * 1000:.1f}")
    return "| " + " | ".join(cells) + " |"


def generated(photos: dict[str, np.ndarray], n: int, seed: int, sizes: tuple[int, ...]) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    rows = []  # (shape, size, variant, iou_true, iou_geom, seconds, photo, fill)
    for i in range(n):
        for variant in ("photo", "clipped"):
            photo = photos[names[int(rng.integers(len(names)))]]
            size = sizes[i % len(sizes)]
            rgb = random_crop(photo, size, rng)
            if variant == "clipped":
                rgb = clipped(rgb)
            shape = SHAPES[i % len(SHAPES)]
            damaged = apply_damage(rgb, rng, DamageConfig(shapes=(shape,)))
            found, seconds = timed_detect(damaged.gray)
            truth = true_mask(damaged.gray, rgb)
            rows.append((shape, size, variant, iou(found, truth), iou(found, damaged.mask), seconds,
                         damaged.fill))
    header = ["| subset | n | mean IoU | median | min | IoU > 0.9 | ms/image |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines = list(header)
    lines.append(summary_row("**all** (vs true mask)", [r[3] for r in rows], [r[5] for r in rows]))
    lines.append(summary_row("all (vs geometric region)", [r[4] for r in rows], [r[5] for r in rows]))
    for variant in ("photo", "clipped"):
        sel = [r for r in rows if r[2] == variant]
        lines.append(summary_row(f"variant = {variant}", [r[3] for r in sel], [r[5] for r in sel]))
    for size in sizes:
        sel = [r for r in rows if r[1] == size]
        lines.append(summary_row(f"size = {size}", [r[3] for r in sel], [r[5] for r in sel]))
    for shape in SHAPES:
        sel = [r for r in rows if r[0] == shape]
        lines.append(summary_row(f"shape = {shape}", [r[3] for r in sel], [r[5] for r in sel]))
    for lo, hi in ((0, 10), (11, 50), (51, 100)):
        sel = [r for r in rows if lo <= r[6] <= hi]
        if sel:
            lines.append(summary_row(f"fill in [{lo}, {hi}]", [r[3] for r in sel], [r[5] for r in sel]))
    worst = sorted(rows, key=lambda r: r[3])[:5]
    notes = ["Worst cases (shape, size, variant, fill, IoU vs true / vs geometric): "
             + "; ".join(f"{r[0]} {r[1]} {r[2]} fill={r[6]} {r[3]:.3f}/{r[4]:.3f}" for r in worst)]
    return lines, notes


def fill_zero_stress(photos: dict[str, np.ndarray], n: int, seed: int, sizes: tuple[int, ...]) -> list[str]:
    """Fill value 0 on photos and on clipped photos: the damage can touch natural pixels of exactly 0
    (crushed blacks) and merge with them, or lie inside a black area where it changes (almost) nothing."""
    rng = np.random.default_rng(seed + 1)
    names = sorted(photos)
    lines = ["| fill = 0 stress | n | mean IoU vs true | median | min | IoU > 0.9 | mean IoU vs geometric | geometric IoU > 0.9 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in ("photo", "clipped"):
        true_ious, geom_ious = [], []
        for i in range(n):
            rgb = random_crop(photos[names[int(rng.integers(len(names)))]], sizes[i % len(sizes)], rng)
            if variant == "clipped":
                rgb = clipped(rgb)
            damaged = apply_damage(rgb, rng, DamageConfig(fill=(0, 0), shapes=(SHAPES[i % len(SHAPES)],)))
            found = detect_mask(damaged.gray)
            true_ious.append(iou(found, true_mask(damaged.gray, rgb)))
            geom_ious.append(iou(found, damaged.mask))
        t, g = np.asarray(true_ious), np.asarray(geom_ious)
        lines.append(f"| {variant} | {n} | {t.mean():.4f} | {np.median(t):.4f} | {t.min():.4f} | {(t > 0.9).mean():.1%} | "
                     f"{g.mean():.4f} | {(g > 0.9).mean():.1%} |")
    return lines


def two_regions(photos: dict[str, np.ndarray], n: int, seed: int, sizes: tuple[int, ...]) -> list[str]:
    """Two damaged regions per crop (1-8% each, fills 0-100, neither overlapping nor touching)."""
    rng = np.random.default_rng(seed + 2)
    names = sorted(photos)
    lines = ["| two regions | n | mean IoU vs true (union) | IoU > 0.9 | both found | flagged unsure | misses flagged |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in ("photo", "clipped"):
        ious, both, unsure = [], [], []
        for i in range(n):
            rgb = random_crop(photos[names[int(rng.integers(len(names)))]], sizes[i % len(sizes)], rng)
            if variant == "clipped":
                rgb = clipped(rgb)
            config = DamageConfig(area=(0.01, 0.08), shapes=(SHAPES[i % len(SHAPES)],))
            first = apply_damage(rgb, rng, config)
            near = ndi.binary_dilation(first.mask, iterations=2)
            for _ in range(100):
                second = apply_damage(first.gray, rng, config)
                if not (second.mask & near).any():
                    break
            else:
                continue
            report = detect_regions(second.gray)
            ious.append(iou(report.mask, true_mask(second.gray, rgb)))
            both.append(len(report.regions) >= 2 and ious[-1] > 0.9)
            unsure.append(report.unsure)
        v, b, u = np.asarray(ious), np.asarray(both), np.asarray(unsure)
        lines.append(f"| {variant} | {v.size} | {v.mean():.4f} | {(v > 0.9).mean():.1%} | {b.mean():.1%} | "
                     f"{u.mean():.1%} | {(u[~b].sum())} of {(~b).sum()} |")
    return lines


def undamaged(photos: dict[str, np.ndarray], n: int, seed: int, sizes: tuple[int, ...]) -> list[str]:
    """Crops without damage: the mask should be empty."""
    rng = np.random.default_rng(seed + 3)
    names = sorted(photos)
    lines = ["| undamaged | n | empty mask | flagged unsure | region taken, not flagged |", "|---|---:|---:|---:|---:|"]
    for variant in ("photo", "clipped"):
        empty, unsure, silent = [], [], []
        for i in range(n):
            rgb = random_crop(photos[names[int(rng.integers(len(names)))]], sizes[i % len(sizes)], rng)
            if variant == "clipped":
                rgb = clipped(rgb)
            report = detect_regions(rgb)
            empty.append(report.undamaged)
            unsure.append(report.unsure)
            silent.append(not report.undamaged and not report.unsure)
        lines.append(f"| {variant} | {n} | {np.mean(empty):.1%} | {np.mean(unsure):.1%} | {np.mean(silent):.1%} |")
    return lines


def dacon(folder: Path) -> list[str]:
    lines = ["| DACON sample | regions | fill | area px | IoU vs true mask | confidence | flags | ms |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]

    def row(name, gray, gt=None):
        t = time.perf_counter()
        report = detect_regions(gray)
        ms = (time.perf_counter() - t) * 1000
        score = f"{iou(report.mask, true_mask(gray, gt)):.4f}" if gt is not None else "-"
        flags = " ".join(f for f, on in (("undamaged", report.undamaged), ("unsure", report.unsure)) if on) or "-"
        fills = "/".join(str(v) for v in report.values) or "-"
        return (f"| {name} | {len(report.regions)} | {fills} | {report.area} | {score} | {report.confidence:.3f} | "
                f"{flags} | {ms:.1f} |")

    for path in sorted((folder / "train_input").glob("*.png")):
        lines.append(row(path.stem, read_gray(path), read_rgb(folder / "train_gt" / path.name)))
    for path in sorted((folder / "test_input").glob("*.png")):
        lines.append(row(f"{path.stem} (no truth)", read_gray(path)))
    for path in sorted((folder / "train_gt").glob("*.png")):
        gt = read_rgb(path)
        lines.append(row(f"{path.stem} ground truth (undamaged)", np.asarray(Image.fromarray(gt).convert("L")), gt))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None,
                    help="folder of colour photos (default /work/shared/photos, else skimage.data images)")
    ap.add_argument("--dacon", type=Path, default=None, help="folder with train_input/, train_gt/, test_input/")
    ap.add_argument("--n", type=int, default=200, help="crops per variant (photo, clipped)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", type=Path, default=None, help="add/replace the section in this markdown file")
    args = ap.parse_args(argv)

    photos = load_photos(args.photos)
    src = str(args.photos) if args.photos is not None and args.photos.is_dir() else "skimage.data"
    lines, notes = generated(photos, args.n, args.seed, tuple(args.sizes))
    out = [f"Generated damage over {len(photos)} photos from {src}: {args.n} crops x 2 variants, "
           f"sizes {args.sizes}, seed {args.seed}, shapes cycled, area 1-15%, fill 0-100.", ""] + lines
    out += [""] + notes
    out += ["", "Stress test: fill value 0 (DACON uses 0 too) on photos and on clipped photos, same crops "
            "scheme, other seed:", ""] + fill_zero_stress(photos, max(args.n // 2, 1), args.seed, tuple(args.sizes))
    out += ["", "Two damaged regions per image (1-8% each, fills 0-100, apart), same crops scheme, other seed:",
            ""] + two_regions(photos, max(args.n // 2, 1), args.seed, tuple(args.sizes))
    out += ["", "Undamaged crops, same crops scheme, other seed:", ""] + undamaged(
        photos, max(args.n // 2, 1), args.seed, tuple(args.sizes))
    if args.dacon is not None:
        out += ["", f"Real DACON samples ({args.dacon}):", ""] + dacon(args.dacon)
    report = "\n".join(out)
    print(report)

    if args.write_docs is not None:
        cmd = "python benchmarks/mask_detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
        machine = f"{platform.machine()}, {os.cpu_count()}-core CPU (shared with other jobs), Python {platform.python_version()}"
        section = (f"{SECTION}\n\n`detect_mask` / `detect_regions` (platform/imgrestore/data/masks.py) against the "
                   f"true mask.\n\n"
                   f"- command: `{cmd}`\n- machine: {machine}\n- date: {dt.date.today().isoformat()}\n\n"
                   f"{report}\n\n{NOTES}")
        write_sections(args.write_docs, {SECTION: section})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
