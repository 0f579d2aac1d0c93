"""The classical restorers, scored on exactly the validation images every trial of a search is scored on.

A learned model that loses to ``cv2.inpaint`` is a bug, not a result, and only a side-by-side measurement on
the same images can tell. Each classical family (``imgrestore.models.classical``) goes through the same
``training.loop.train`` as a trial (same split, fold, image size, image cap, metric; one evaluation, nothing to
train), as a 1-CPU Ray task on the driver's node (which holds the split file), all side by side. With
``hue_prior`` on, each is also scored with hue-prior decoding (``imgrestore.tuning.decoding``): one more row,
``decoding`` "hue prior", for every family. A classical restorer has no weights: when no trial beats it, it is
the champion (``pick_champion``), rebuilt from its name (and its prior, fitted again on the training fold).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgrestore.metrics import KEYS
from imgrestore.models.classical import CLASSICAL
from imgrestore.tuning.decoding import AS_IS, HUE_PRIOR, fit_prior, score_decodings

CLASSICAL_FAMILIES = tuple(CLASSICAL)  # input_copy, telea, navier_stokes, fsr
# The keys that decide which images validation sees, and at what size: a baseline must share them with the trials.
VALIDATION_KEYS = ("data_dir", "preproc_csv", "val_fold", "image_size", "max_val_images", "hue_prior")


def validation_config(config: dict) -> dict:
    """The trial config's validation settings; a searched (non-constant) one is an error: the baselines and
    the trials would not be scored on the same images."""
    from imgrestore.training.loop import DEFAULTS

    out = {}
    for key in VALIDATION_KEYS:
        value = config.get(key, DEFAULTS[key])
        if isinstance(value, dict):
            raise ValueError(f"config.{key} is searched ({value}); it decides the validation images and must be "
                             "a constant, so that every trial and the classical baselines are scored alike")
        out[key] = value
    return out


def _evaluate(name: str, config: dict, prior=None) -> list[dict]:
    """One classical restorer through the training loop: one evaluation of the validation images; with a
    fitted hue `prior`, a second row with the same images decoded by it."""
    import time

    import torch

    from imgrestore.models import create_model
    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import read_split, train

    torch.set_num_threads(1)
    result = {}
    train({**config, "model": {"name": name}, "epochs": 1}, lambda metrics, checkpoint_dir: result.update(metrics))
    rows = [{"name": name, "decoding": AS_IS, **{k: result[k] for k in KEYS}, "val_time_s": result["val_time_s"]}]
    if prior is not None:
        t = time.perf_counter()
        _, val_frame = read_split(config["data_dir"], config["preproc_csv"], int(config["val_fold"]))
        scores = score_decodings(create_model(name).eval(), RestorationDataset(val_frame, config["image_size"]),
                                 int(config["max_val_images"]), prior)
        rows.append({"name": name, "decoding": HUE_PRIOR, **scores[HUE_PRIOR], "val_time_s": time.perf_counter() - t})
    return rows


def evaluate_baselines(config: dict, families=CLASSICAL_FAMILIES) -> pd.DataFrame:
    """Score every classical family on the search's validation images, side by side as Ray tasks.

    config: the search's trial config (constants, with data_dir and preproc_csv). Returns one row per
    family and decoding (name, decoding, score, ssim, masked_ssim, hist_sim, val_time_s), best first.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    val = validation_config(config)
    prior = None
    if val["hue_prior"]:  # fitted once here (the driver holds the split), not once per task
        from imgrestore.training.loop import read_split

        prior = fit_prior(read_split(val["data_dir"], val["preproc_csv"], int(val["val_fold"]))[0])
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy=here)(_evaluate)
    rows = [row for rows in ray.get([remote.remote(name, val, prior) for name in families]) for row in rows]
    return pd.DataFrame(rows).sort_values("score", ascending=False).reset_index(drop=True)


def baselines_markdown(frame: pd.DataFrame) -> str:
    """The baselines as a markdown table (logged on the search's MLflow parent run)."""
    lines = ["| classical restorer | score | S | M | C |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label(r.name, getattr(r, 'decoding', AS_IS))} | {r.score:.4f} | {r.ssim:.4f} | "
              f"{r.masked_ssim:.4f} | {r.hist_sim:.4f} |" for r in frame.itertuples()]
    return "\n".join(lines) + "\n"


def label(name: str, decoding: str | None = AS_IS) -> str:
    """A restorer and its decoding, as tables show them: "fsr", "fsr + hue prior"."""
    return name if decoding in (None, AS_IS) else f"{name} + {decoding}"


@dataclass
class ChampionChoice:
    kind: str                 # "trial" or "classical"
    name: str                 # the trial id, or the classical family
    score: float              # its validation score
    best_classical: str       # the best classical restorer's label (with its decoding)
    best_classical_score: float
    decoding: str = AS_IS     # the champion's decoding: AS_IS ("none") or "hue prior"
    trial_score: float | None = None  # the best trial's validation score (at its best decoding), if any
    required_margin: float = 0.0      # what a trial had to beat the best classical restorer by

    @property
    def margin(self) -> float:
        """The champion's validation score minus the best classical restorer's (0 when it is that restorer)."""
        return self.score - self.best_classical_score

    @property
    def trial_short_of_margin(self) -> bool:
        """A classical champion whose best trial scored higher on validation, by less than the required margin."""
        return self.kind == "classical" and self.trial_score is not None and self.trial_score > self.score


def pick_champion(trial_score: float | None, trial_id: str | None, baselines: pd.DataFrame,
                  trial_decoding: str = AS_IS, min_margin: float = 0.0) -> ChampionChoice:
    """The best trial (at its best decoding) if it beats the best classical restorer (at its best decoding) by
    at least `min_margin` on the same validation images, else that classical restorer.

    Why a margin: one validation fold is a few scenes, and a learned model that edges the classical restorer
    there by less than the fold's noise often loses on other photos (the cpu.yaml benchmark: a trial +0.003
    above FSR + hue prior on 80 validation images, 0.012 below it on 100 held-out photos; per-image differences
    between such restorers have a standard error of 0.003-0.006 on 100 images, docs/benchmarks.md). The restorer
    that learned nothing takes the close calls, as the one-standard-error rule of model selection would."""
    if not min_margin >= 0:
        raise ValueError(f"learned_margin must be >= 0, got {min_margin}")
    top = baselines.iloc[0]
    decoding = str(top.get("decoding", AS_IS))
    best = label(top["name"], decoding)
    trial = None if trial_score is None else float(trial_score)
    if trial is not None and trial - float(top.score) >= min_margin:
        return ChampionChoice("trial", str(trial_id), trial, best, float(top.score), trial_decoding, trial,
                              float(min_margin))
    return ChampionChoice("classical", top["name"], float(top.score), best, float(top.score), decoding, trial,
                          float(min_margin))


CV_IMAGES = 100  # at most this many images of each other fold (~2 s each at 512 px on one CPU, decoding included)


@dataclass
class FoldScores:
    """A classical champion scored on every fold of the split (`score_across_folds`)."""
    frame: pd.DataFrame       # one row per fold: fold, images, score, ssim, masked_ssim, hist_sim

    @property
    def score(self) -> float:
        """The mean of the fold means: every fold counts alike, however many of its images were scored (the
        search's own fold may have been scored on more: its max_val_images, against CV_IMAGES for the others)."""
        return float(self.frame["score"].mean())

    @property
    def sem(self) -> float:
        """The standard error of that mean, from the spread of the fold means (scenes differ more than images)."""
        k = len(self.frame)
        return float(self.frame["score"].std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")

    def markdown(self) -> str:
        lines = ["| fold | images | score | S | M | C |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {int(r.fold)} | {int(r.images)} | {r.score:.4f} | {r.ssim:.4f} | {r.masked_ssim:.4f} | "
                  f"{r.hist_sim:.4f} |" for r in self.frame.itertuples()]
        return "\n".join(lines + [f"\nall folds: {self.text()}\n"])

    def text(self) -> str:
        return (f"{self.score:.4f} ± {self.sem:.4f} over {len(self.frame)} folds ({int(self.frame['images'].sum())} "
                "images; folds " + ", ".join(f"{int(r.fold)}: {r.score:.4f}" for r in self.frame.itertuples()) + ")")


def score_across_folds(name: str, decoding: str, config: dict, split_csv, known: dict | None = None,
                       parallel: bool = False, progress: bool = False) -> FoldScores:
    """A classical restorer, at its `decoding`, scored on every fold of the split: each fold's first images
    (up to the search's max_val_images and CV_IMAGES) restored, and decoded with a hue prior fitted on the other
    folds' truths, never its own; the forecast is the mean of the fold means (`FoldScores`).

    Why: the search chooses on one validation fold (a few scenes), the only images every trial is scored on,
    and one fold's difficulty is not the held-out photos' (on the cpu.yaml benchmark the five folds score FSR +
    hue prior from 0.464 to 0.542; fold 0 alone said 0.532, 0.028 above the 100 held-out photos; all five, 0.513).
    A classical champion trains on nothing, so every fold is validation for it: k times the images and scenes
    predict what unseen photos will score. (A learned champion would need one training per fold.)

    config: the search's trial config (data_dir, image_size, max_val_images, val_fold). known: the metrics the
    search already measured on its validation fold (its baselines row), reused for that fold instead of scoring
    it again."""
    from imgrestore.models import create_model
    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import read_split

    val = validation_config(config)
    limit = int(val["max_val_images"])
    rows = []
    for fold in sorted(int(f) for f in pd.read_csv(split_csv, usecols=["fold"])["fold"].unique()):
        train_frame, fold_frame = read_split(val["data_dir"], str(split_csv), fold)
        if known is not None and fold == int(val["val_fold"]):
            rows.append({"fold": fold, "images": min(len(fold_frame), limit), **{k: known[k] for k in KEYS}})
            continue
        n = min(len(fold_frame), limit, CV_IMAGES)
        prior = fit_prior(train_frame) if decoding == HUE_PRIOR else None
        scores = score_decodings(create_model(name).eval(), RestorationDataset(fold_frame, val["image_size"]), n,
                                 prior, progress=progress, parallel=parallel)
        rows.append({"fold": fold, "images": n, **scores[decoding]})
    return FoldScores(pd.DataFrame(rows))


def classical_across_folds(choice: ChampionChoice, baselines: pd.DataFrame, config: dict, split_csv,
                           parallel: bool = False) -> FoldScores | None:
    """A classical champion scored on every fold (`score_across_folds`), its validation fold's row taken from
    the search's baselines; None for a learned champion or a split of one fold."""
    if choice.kind != "classical" or pd.read_csv(split_csv, usecols=["fold"])["fold"].nunique() < 2:
        return None
    print(f"scoring the champion {label(choice.name, choice.decoding)} on every fold ...", flush=True)
    same = baselines[(baselines["name"] == choice.name)
                     & (baselines.get("decoding", pd.Series(AS_IS, index=baselines.index)) == choice.decoding)]
    known = same.iloc[0].to_dict() if len(same) else None
    return score_across_folds(choice.name, choice.decoding, config, split_csv, known, parallel=parallel,
                              progress=True)
