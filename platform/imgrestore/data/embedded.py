"""The embedded default dataset: real photos the project can always reach, offline.

Sources: photos shipped inside packages this project depends on (scikit-image, scikit-learn, matplotlib)
plus 81 photos bundled in `imgrestore/assets/photos` (CC0, public domain, CC-BY and CC-BY-SA; each file's origin,
author and licence are in ATTRIBUTION.md there). The DACON-format
dataset is built from them on first use and cached (default `~/.cache/imgrestore`, or $IMGRESTORE_CACHE).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imgrestore.data.build import BuildConfig, PhotoSource, build_dataset, photos_in
from imgrestore.data.io import read_rgb

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "photos"
# Bumped whenever the recipe below changes, so a stale cache is never reused.
RECIPE_VERSION = 3  # 3: 68 more bundled photos (scratch, lomiri-wallpapers, kivy, scipy)
DEMO_CONFIG = BuildConfig(size=128, n_train=128, n_test=40, seed=2026)


def _package_file(module: str, *parts: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).resolve().parent.joinpath(*parts)


def package_photos() -> list[PhotoSource]:
    """Colour photos that ship inside installed dependencies (read from their files, no download)."""
    files = [("skimage", "data", n) for n in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                                              "motorcycle_right.png", "rocket.jpg")]
    files += [("sklearn", "datasets", "images", n) for n in ("china.jpg", "flower.jpg")]
    files += [("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")]
    out = []
    for module, *parts in files:
        path = _package_file(module, *parts)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a photo expected inside the installed '{module}' package is missing")
        out.append((f"{module}-{Path(parts[-1]).stem}", (lambda p=path: read_rgb(p))))
    return out


def bundled_photos() -> list[PhotoSource]:
    return package_photos() + photos_in(ASSETS)


def cache_root() -> Path:
    return Path(os.environ.get("IMGRESTORE_CACHE", Path.home() / ".cache" / "imgrestore"))


def embedded_dataset(config: BuildConfig = DEMO_CONFIG, root: str | os.PathLike | None = None) -> Path:
    """Path of the embedded default dataset, building it on first use."""
    root = Path(root) if root else cache_root() / "datasets"
    out = root / f"demo-v{RECIPE_VERSION}-{config.size}px-{config.n_train}x{config.n_test}-s{config.seed}"
    if not (out / "train.csv").is_file():
        build_dataset(bundled_photos(), out, config, overwrite=True)
    return out


def demo_photo(index: int = 0) -> np.ndarray:
    """One bundled photo as RGB uint8 (handy in tests and docs)."""
    return bundled_photos()[index][1]()
