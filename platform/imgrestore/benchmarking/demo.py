"""The benchmark's demo stage: `make demo`'s search, run inside the benchmark, its champion scored on the held-out
images whose photos the demo never trained on, beside every other method on those same images.

The demo trains on crops of the bundled photos at 128 px (the embedded dataset); the benchmark tests on crops of
photos its own search never saw, some of which may be bundled photos the demo trained on. Names differ between
photo folders (../shared/photos and the bundled ones), so two photos are taken to be one when their 16x16 gray
thumbnails differ by a mean of less than `SAME_PHOTO` gray levels (the same photo measured 0.1-0.4 apart, any two
others 20 or more).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imgrestore.data.build import BuildConfig

ROOT = Path(__file__).resolve().parents[3]
DEMO_SPACE = ROOT / "search_spaces" / "demo.yaml"
SAME_PHOTO = 6.0  # mean absolute difference of 16x16 gray thumbnails (0-255) below which two photos are one
QUICK_DATA = BuildConfig(size=64, n_train=30, n_test=6, seed=2026)  # the embedded recipe at the quick run's size


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.BOX), dtype=np.float64)


def photos_trained_on(test_photos: list, demo_photos: list, demo_train: set[str]) -> tuple[dict[str, str], float]:
    """({benchmark test photo: the demo training photo it is}, the smallest distance between a test photo kept
    and any demo training photo: how far from `SAME_PHOTO` the nearest call was). `test_photos`, `demo_photos`:
    (name, load) pairs (`PhotoSource`); `demo_train`: the names of the photos the demo trained on."""
    demo = {name: thumbnail(load()) for name, load in demo_photos if name in demo_train}
    missing = demo_train - set(demo)
    if missing:
        raise ValueError(f"{sorted(missing)[:3]}: photos of the demo's training set that are not bundled photos "
                         "(a demo dataset built by another version?)")
    found, nearest_kept = {}, float("inf")
    for name, load in test_photos:
        t = thumbnail(load())
        diffs = {d: float(np.abs(t - dt).mean()) for d, dt in demo.items()}
        closest = min(diffs, key=diffs.get) if diffs else None
        if closest is not None and diffs[closest] < SAME_PHOTO:
            found[name] = closest
        elif closest is not None:
            nearest_kept = min(nearest_kept, diffs[closest])
    return found, nearest_kept


def demo_space(cfg, preproc_csv: str):
    """search_spaces/demo.yaml as `make demo` runs it; in a quick run at the quick run's toy sizes."""
    from imgrestore.tuning.space import check_space, load_space

    space = load_space(DEMO_SPACE)
    space.name = f"{space.name}-benchmark"  # its own MLflow experiment
    config = {**copy.deepcopy(space.config), "preproc_csv": preproc_csv}
    if cfg.quick:
        space.num_samples, space.scheduler = 1, {"name": "fifo"}
        config.update(epochs=1, batch_size=4, max_val_images=8, image_size=QUICK_DATA.size)
    space.config = config
    check_space(space)
    return space


def run_demo(cfg, test: list, bench_data: Path, bench_photos: list) -> dict:
    """`make demo` (embedded dataset, effnet-lite0 preprocess, demo.yaml's search, tune.py's champion choice),
    then its champion restores the benchmark's held-out images of photos it never trained on. Returns the frame
    of per-image scores (None when every held-out photo was a demo training photo) and what the section says."""
    from imgrestore.benchmarking import quality, runner
    from imgrestore.data.embedded import bundled_photos, embedded_dataset
    from imgrestore.preprocess import run_preprocess

    t0 = time.perf_counter()
    data = embedded_dataset(QUICK_DATA, cfg.work / "datasets") if cfg.quick else embedded_dataset()
    pre = run_preprocess(data, embedder="effnet-lite0", log_mlflow=False)
    space = demo_space(cfg, pre.paths["train_csv"])
    outcome, _ = runner.search(cfg, space, data)
    champ = runner.champion(cfg, space, outcome, pre.paths["train_csv"], data, out_name="demo_champion")
    model = runner.champion_model(champ)

    demo_src, bench_src = pd.read_csv(data / "sources.csv"), pd.read_csv(bench_data / "sources.csv")
    bench_test = bench_src[bench_src["split"] == "test"]
    test_photos = set(bench_test["photo"])
    unknown = test_photos - {name for name, _ in bench_photos}
    if unknown:  # a photo that cannot be looked at cannot be cleared: it would stay in unchecked
        raise ValueError(f"{bench_data / 'sources.csv'}: test photos {sorted(unknown)[:3]} are not among the "
                         "benchmark's photos (a cached dataset built from another folder?)")
    same, nearest_kept = photos_trained_on([p for p in bench_photos if p[0] in test_photos], bundled_photos(),
                                           set(demo_src.loc[demo_src["split"] == "train", "photo"]))
    seen = set(bench_test.loc[bench_test["photo"].isin(same), "img_id"] + ".png")
    if not seen <= {im.name for im in test}:
        raise ValueError(f"{bench_data / 'sources.csv'}: test images {sorted(seen - {im.name for im in test})[:3]} "
                         "are not in the test set")
    unseen = [im for im in test if im.name not in seen]
    frame = quality.score_method(unseen, quality.model_predictor(model)) if unseen else None
    choice = champ["choice"]
    return {"frame": frame, "same": same, "nearest_kept": nearest_kept, "test_photos": len(test_photos),
            "n_test": len(test), "choice": choice, "model": runner.champion_desc(champ), "trial": champ["trial"],
            "error": champ.get("error"),
            "space": runner.shown_path(DEMO_SPACE), "data": Path(data).name, "n_train": int(
                (demo_src["split"] == "train").sum()), "train_photos": int(demo_src.loc[
                    demo_src["split"] == "train", "photo"].nunique()),
            "n_trials": len(outcome.results), "epochs": space.config["epochs"], "wall_s": time.perf_counter() - t0}
