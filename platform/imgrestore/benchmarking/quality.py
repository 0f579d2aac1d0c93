"""Restoration quality on a held-out test set: the classical restorers, the seed's recipe, the search's champion
and its ablations.

Every method restores the same held-out test inputs (photos disjoint from the training photos) at their full
size. As at submission time the damaged region is found from the input alone (`detect_mask`); the score
uses the competition's mask (`input != gray(truth)`), exactly as `imgrestore.metrics.score_directory`.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from imgrestore.data.io import read_gray, read_rgb, write_csv
from imgrestore.data.masks import detect_mask, true_mask
from imgrestore.metrics import score_image
from imgrestore.tuning.baselines import CLASSICAL_FAMILIES

# The original seed's recipe: a two-stage U-Net (inpaint gray, then colourise), L1 + MSE, no prefill and no gain
# calibration (the seed had neither), validated on a plain KFold fold of images. Width/depth scaled to a CPU.
SEED_MODEL = {"name": "two_stage_unet", "depth": 3, "prefill": "none"}
SEED_LOSS = {"l1": 1.0, "mse": 1.0}


@dataclass
class TestImage:
    name: str
    gray: np.ndarray        # the damaged input
    detected: np.ndarray    # detect_mask(gray): what a method may use
    mask: np.ndarray        # true_mask(gray, gt): what the metric uses
    gt: np.ndarray
    cluster: int


def load_test_set(data_dir: Path, test_csv: Path | None = None) -> list[TestImage]:
    """The held-out images (test_input/ with test_gt/); their predicted scene cluster from `test_csv`
    (preprocess's test_preproc_1.csv), or -1 for every image without it."""
    data_dir = Path(data_dir)
    if test_csv is not None:
        frame = pd.read_csv(test_csv)[["name", "cluster"]]
    else:
        frame = pd.DataFrame({"name": sorted(p.name for p in (data_dir / "test_input").glob("*.png")), "cluster": -1})
    out = []
    for row in frame.itertuples(index=False):
        gray = read_gray(data_dir / "test_input" / row.name)
        gt = read_rgb(data_dir / "test_gt" / row.name)
        out.append(TestImage(row.name, gray, detect_mask(gray), true_mask(gray, gt), gt, int(row.cluster)))
    return out


def score_method(test: list[TestImage], predict: Callable[[TestImage], np.ndarray]) -> pd.DataFrame:
    """Per-image scores (name, cluster, score, ssim, masked_ssim, hist_sim) and the seconds per image."""
    rows, t0 = [], time.perf_counter()
    for img in test:
        rows.append({"name": img.name, "cluster": img.cluster, **score_image(img.gt, predict(img), img.mask)})
    frame = pd.DataFrame(rows)
    frame.attrs["seconds"] = time.perf_counter() - t0
    return frame


def model_predictor(model) -> Callable[[TestImage], np.ndarray]:
    """A model (learned or classical) restoring each test input with its detected mask, as at submission."""
    from imgrestore.submission.predict import restore

    model = model.eval()
    return lambda im: restore(model, im.gray, im.detected)


def classical_predictors(hue_prior=None) -> dict[str, Callable[[TestImage], np.ndarray]]:
    """The registered classical restorers (input_copy, telea, navier_stokes, fsr, fsr_biharmonic) at their
    defaults, by label; with a fitted `hue_prior`, each also decoded by it ("fsr + hue prior"), as a search with
    `hue_prior` offers."""
    from imgrestore.models import create_model
    from imgrestore.tuning.baselines import label
    from imgrestore.tuning.decoding import AS_IS, HUE_PRIOR

    out = {}
    for decoding in (AS_IS, HUE_PRIOR) if hue_prior is not None else (AS_IS,):
        for name in CLASSICAL_FAMILIES:
            model = create_model(name)
            model.hue_prior = hue_prior if decoding == HUE_PRIOR else None
            out[label(name, decoding)] = model_predictor(model)
    return out


# -- colour from the training truths: a cheap prior, to show what a mean colour does to the hue term --------
class ChromaPrior:
    """Mean Cb/Cr of the training ground truths, per luma bin (16 bins of Y) and per scene cluster.

    `colorize(y, cluster, by_luma_and_cluster)`: Y kept, Cb/Cr from the cluster's table (bins the cluster never
    saw, noise and unknown clusters: the all-training table); with `by_luma_and_cluster=False`, one global mean
    Cb/Cr for every pixel. Y is the same luma as Pillow's gray (ITU-R 601), so the known pixels stay exact.
    """

    BINS = 16

    def __init__(self, frame: pd.DataFrame):
        """frame: gt_path and cluster of every training image."""
        self.tables: dict[int, np.ndarray] = {}  # cluster -> (BINS, 3): count, Cb sum, Cr sum
        for path, cluster in zip(frame["gt_path"], frame["cluster"]):
            ycc = np.asarray(Image.fromarray(read_rgb(path)).convert("YCbCr")).reshape(-1, 3).astype(np.float64)
            b = ycc[:, 0].astype(int) * self.BINS // 256
            t = np.stack([np.bincount(b, minlength=self.BINS), np.bincount(b, ycc[:, 1], self.BINS),
                          np.bincount(b, ycc[:, 2], self.BINS)], 1)
            for key in (int(cluster), "all"):
                self.tables[key] = self.tables.get(key, 0) + t
        total = self.tables["all"].sum(0)
        self.global_mean = total[1:] / max(total[0], 1)

    def chroma_lut(self, cluster: int) -> np.ndarray:
        """(BINS, 2) mean Cb/Cr per luma bin for the cluster, gaps filled from all training images."""
        every = self.tables["all"]
        lut = np.where(every[:, :1] > 0, every[:, 1:] / np.maximum(every[:, :1], 1), self.global_mean)
        own = self.tables.get(cluster) if cluster >= 0 else None
        if own is not None:
            lut = np.where(own[:, :1] > 0, own[:, 1:] / np.maximum(own[:, :1], 1), lut)
        return lut

    def colorize(self, y: np.ndarray, cluster: int, by_luma_and_cluster: bool = True) -> np.ndarray:
        if by_luma_and_cluster:
            cbcr = self.chroma_lut(cluster)[y.astype(int) * self.BINS // 256]
        else:
            cbcr = np.broadcast_to(self.global_mean, y.shape + (2,))
        ycc = np.dstack([y, np.clip(np.rint(cbcr), 0, 255).astype(np.uint8)]).astype(np.uint8)
        return np.asarray(Image.fromarray(ycc, "YCbCr").convert("RGB"))


def prior_predictors(prior: ChromaPrior) -> dict[str, Callable[[TestImage], np.ndarray]]:
    """The `telea` restorer's gray (its first channel: R = G = B = Y) coloured by the prior."""
    from imgrestore.models import create_model

    telea = model_predictor(create_model("telea"))
    return {"telea + global mean Cb/Cr": lambda im: prior.colorize(telea(im)[..., 0], im.cluster, False),
            "telea + cluster Cb/Cr by luma": lambda im: prior.colorize(telea(im)[..., 0], im.cluster, True)}


# -- splits -----------------------------------------------------------------------------------------------
def kfold_split_csv(train_csv: Path, out: Path, n_folds: int, seed: int = 42) -> Path:
    """The seed's split: train_preproc_1.csv with `fold` replaced by a shuffled KFold over images."""
    from sklearn.model_selection import KFold

    frame = pd.read_csv(train_csv)
    folds = np.zeros(len(frame), int)
    for k, (_, val) in enumerate(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(frame)):
        folds[val] = k
    write_csv(out, frame.assign(fold=folds))
    return out


def photo_overlap(split_csv: Path, sources_csv: Path, val_fold: int = 0) -> float:
    """Share of validation images cropped from a photo that also gave a training image of that split."""
    frame = pd.read_csv(split_csv).assign(img_id=lambda f: f["name"].map(lambda n: Path(n).stem))
    src = pd.read_csv(sources_csv)
    frame = frame.merge(src[src["split"] == "train"][["img_id", "photo"]], on="img_id", how="left")
    val, train = frame[frame["fold"] == val_fold], frame[frame["fold"] != val_fold]
    return float(val["photo"].isin(set(train["photo"])).mean()) if len(val) else float("nan")


# -- ablations: one ingredient of the best trial's config switched off -------------------------------------
def ablation_configs(config: dict) -> dict[str, tuple[str, dict]]:
    """label -> (what changed, config) for every ingredient the config actually uses; an ingredient it does
    not use (already push-pull, no hue-histogram loss, ...) has no row. The FSR polish (f) needs no training:
    it is the trial's own checkpoint, see runner.champion. A config that learns no colour (``chroma: none``,
    the hue prior colours it) gets "learned colour" as its (b) instead: is leaving colour to the prior right?"""
    out = {}
    model, loss = config.get("model", {}), config.get("loss", {})

    def variant(**changes) -> dict:
        cfg = copy.deepcopy(config)
        for key, value in changes.items():  # "model.prefill" -> cfg["model"]["prefill"]
            *parents, leaf = key.split(".")
            node = cfg
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return cfg

    prefill = model.get("prefill", "telea")
    if prefill != "pushpull":
        out[f"(a) push-pull prefill instead of {prefill}"] = ("model.prefill: pushpull",
                                                              variant(**{"model.prefill": "pushpull"}))
    chroma = model.get("chroma", "regression")
    if chroma in ("regression", "classification"):
        other = "classification" if chroma == "regression" else "regression"
        out[f"(b) chroma by {other} instead of {chroma}"] = (
            f"model.chroma: {other}, chroma_rebalance: 0.0",
            variant(**{"model.chroma": other, "chroma_rebalance": 0.0}))
    else:  # the recipe that did best before chroma: none (docs/benchmarks.md, "Ablations" of 2026-11-27)
        out["(b) learned colour instead of none"] = (
            "model.chroma: regression, loss.hue_hist: 1.0, chroma_rebalance: 0.0",
            variant(**{"model.chroma": "regression", "loss.hue_hist": 1.0, "chroma_rebalance": 0.0}))
    if loss.get("hue_hist", 0):
        out["(c) no hue-histogram loss"] = (f"loss.hue_hist: {loss['hue_hist']} -> 0",
                                            variant(**{"loss.hue_hist": 0.0}))
    if model.get("name") == "effnet_unet" and (model.get("pretrained", True) or model.get("freeze_encoder")):
        out["(d) encoder random-init and trained"] = ("model.pretrained: false, model.freeze_encoder: false",
                                                      variant(**{"model.pretrained": False,
                                                                 "model.freeze_encoder": False}))
    if config.get("calibrate_gain", True) and chroma != "none":  # no colour, nothing to calibrate
        out["(e) no gain calibration"] = ("calibrate_gain: false", variant(calibrate_gain=False))
    if loss.get("metric_m", 0):
        out["(g) no metric-M loss"] = (f"loss.metric_m: {loss['metric_m']} -> 0", variant(**{"loss.metric_m": 0.0}))
    return out


# -- training outside Tune (one Ray task per run, one CPU each, as a trial gets) ---------------------------
def _train_job(config: dict, ckpt_out: str) -> dict:
    import torch

    from imgrestore.training.loop import train

    torch.set_num_threads(1)
    rows, best = [], {"score": -float("inf")}

    def report(metrics: dict, checkpoint_dir: str) -> None:
        # keep the best validation epoch's checkpoint, as Tune keeps a trial's (the champion comes from it)
        rows.append(metrics)
        if metrics["score"] > best["score"]:
            best.update(metrics)
            shutil.rmtree(ckpt_out, ignore_errors=True)
            shutil.copytree(checkpoint_dir, ckpt_out)

    t0 = time.perf_counter()
    train(config, report)
    return {"rows": rows, "best": dict(best), "wall_s": time.perf_counter() - t0, "checkpoint": ckpt_out}


def train_runs(jobs: dict[str, dict], out_dir: Path) -> dict[str, dict]:
    """Train every config as its own 1-CPU Ray task (they run side by side); returns name -> result."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=0)(_train_job)
    refs = {name: remote.remote(cfg, str(out_dir / f"run{i}")) for i, (name, cfg) in enumerate(jobs.items())}
    return {name: ray.get(ref) for name, ref in refs.items()}
