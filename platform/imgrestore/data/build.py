"""Build a complete DACON-format dataset from a folder of colour photos.

Each photo gives one or more square crops, resized to size x size; each crop is damaged by the damage model.
Photos (not crops) are split between train and test, so no test image shares a photo with a train image.
The test ground truth is kept in `test_gt/` beside the data for scoring, and `sources.csv` records which
photo and crop box every image came from (the true groups, for checking the clustering split).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from imgrestore.data.damage import DamageConfig, apply_damage
from imgrestore.data.dacon import IMAGE_SUFFIXES
from imgrestore.data.io import ImageReadError, read_rgb

PhotoSource = tuple[str, Callable[[], np.ndarray]]  # (photo name, loader returning RGB uint8)
# Written into every dataset this module builds. `overwrite` only ever deletes a folder that carries it:
# a folder it did not build (a photo folder, a home directory, anything a typo points at) is never removed.
BUILD_MARKER = ".imgrestore-dataset.json"


def photos_in(folder: str | os.PathLike) -> list[PhotoSource]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: photo folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no photos ({', '.join(IMAGE_SUFFIXES)}) found")
    return [(p.stem, (lambda p=p: read_rgb(p))) for p in files]


def random_square_crop(rgb: np.ndarray, size: int, rng: np.random.Generator,
                       scale: tuple[float, float] = (0.6, 1.0)) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A random square crop covering `scale` of the short side, resized to size x size (Lanczos)."""
    h, w = rgb.shape[:2]
    side = int(round(min(h, w) * rng.uniform(*scale)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(rgb[top:top + side, left:left + side]).resize((size, size), Image.LANCZOS)
    return np.asarray(crop), (left, top, left + side, top + side)


@dataclass(frozen=True)
class BuildConfig:
    size: int = 256
    n_train: int = 64
    n_test: int = 16
    seed: int = 0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    damage: DamageConfig = DamageConfig()


def _assign(photos: Sequence[PhotoSource], cfg: BuildConfig, rng: np.random.Generator):
    """Split photos into test and train groups and give each photo its number of crops."""
    n_photos = len(photos)
    if n_photos < 2 and cfg.n_test > 0:
        raise ValueError("need at least two photos to keep train and test photos apart")
    order = rng.permutation(n_photos)
    n_test_photos = 0 if cfg.n_test == 0 else min(n_photos - 1, max(1, round(n_photos * cfg.n_test / (cfg.n_train + cfg.n_test))))
    groups = {"test": order[:n_test_photos], "train": order[n_test_photos:]}
    plan = []
    for split, n_images in (("train", cfg.n_train), ("test", cfg.n_test)):
        idx = groups[split]
        per = math.ceil(n_images / max(len(idx), 1)) if n_images else 0
        jobs = [(int(i), k) for k in range(per) for i in idx][:n_images]
        plan += [(split, i, k) for i, k in sorted(jobs)]
    return plan


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies inside it (both resolved, symlinks followed)."""
    return a == b or b in a.parents


def check_output(out: Path, overwrite: bool, photo_dirs: Sequence[Path] = ()) -> None:
    """Refuse an output that would destroy anything this module did not build.

    `out` may not be, contain or lie inside a folder of source photos; an existing `out` is replaced only
    with `overwrite` and only when an earlier build marked it as its own (BUILD_MARKER); an empty folder
    is fine (nothing is lost).
    """
    target = out.resolve()
    for photos in photo_dirs:
        src = Path(photos).resolve()
        if _inside(target, src) or _inside(src, target):
            raise ValueError(f"{out}: the output folder may not be, contain or lie inside the photo folder "
                             f"{photos} (building it would overwrite or delete the source photos)")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace a dataset "
                              "built by this tool)")
    if not (out / BUILD_MARKER).is_file():
        raise FileExistsError(f"{out}: not a dataset built by imgrestore (no {BUILD_MARKER}); refusing to "
                              "delete it. Choose an empty or new --out")


def build_dataset(photos: Sequence[PhotoSource], out: str | os.PathLike, cfg: BuildConfig = BuildConfig(),
                  overwrite: bool = False, progress: bool = True, photo_dirs: Sequence[str | os.PathLike] = ()
                  ) -> Path:
    """Write a DACON dataset to `out` (built in a temporary folder, then renamed into place).

    photo_dirs: the folders the photos come from; `out` may not overlap them (see check_output).
    """
    out = Path(out)
    check_output(out, overwrite, [Path(d) for d in photo_dirs])
    rng = np.random.default_rng(cfg.seed)
    plan = _assign(photos, cfg, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for d in ("train_input", "train_gt", "test_input", "test_gt"):
            (tmp / d).mkdir()
        rows = {"train": [], "test": []}
        sources = []
        cache: dict[int, np.ndarray] = {}
        for split, photo_idx, k in tqdm(plan, desc=f"building {out.name}", disable=not progress):
            name, load = photos[photo_idx]
            if photo_idx not in cache:
                cache.clear()  # plan is sorted by photo: keep one decoded photo in memory
                try:
                    cache[photo_idx] = load()
                except ImageReadError as e:
                    raise ImageReadError(f"photo {name}: {e}") from None
            crop, box = random_square_crop(cache[photo_idx], cfg.size, rng, cfg.crop_scale)
            damaged = apply_damage(crop, rng, cfg.damage)
            stem = f"{split.upper()}_{len(rows[split]):05d}.png"
            Image.fromarray(damaged.gray).save(tmp / f"{split}_input" / stem)
            Image.fromarray(crop).save(tmp / f"{split}_gt" / stem)
            rows[split].append(stem)
            sources.append({"split": split, "img_id": Path(stem).stem, "photo": name, "crop_box": box,
                            "fill": damaged.fill, "mask_fraction": float(damaged.mask.mean())})
        pd.DataFrame({"img_id": [Path(s).stem for s in rows["train"]],
                      "input_img_path": [f"./train_input/{s}" for s in rows["train"]],
                      "gt_img_path": [f"./train_gt/{s}" for s in rows["train"]]}).to_csv(tmp / "train.csv", index=False)
        pd.DataFrame({"img_id": [Path(s).stem for s in rows["test"]],
                      "input_img_path": [f"./test_input/{s}" for s in rows["test"]]}).to_csv(tmp / "test.csv", index=False)
        pd.DataFrame(sources).to_csv(tmp / "sources.csv", index=False)
        (tmp / BUILD_MARKER).write_text(json.dumps({"builder": "imgrestore.data.build", "size": cfg.size,
                                                    "n_train": cfg.n_train, "n_test": cfg.n_test,
                                                    "seed": cfg.seed}, indent=2))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a dataset folder follows the umask
        if out.exists():
            check_output(out, overwrite)  # checked again: it may have changed while we built
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)  # the old dataset is removed only once the new one is in place
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
