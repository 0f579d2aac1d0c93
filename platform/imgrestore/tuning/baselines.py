"""The classical restorers, scored on exactly the validation images every trial of a search is scored on.

A learned model that loses to ``cv2.inpaint`` is a bug, not a result, and only a side-by-side measurement on
the same images can tell. Each classical family (``imgrestore.models.classical``) restores the validation images
a trial's ``training.loop.train`` validates on (same split, fold, image size, image cap, metric; nothing to
train), restored and scored as the submission restores them, as a 1-CPU Ray task on the driver's node (which
holds the split file), all side by side. With ``hue_prior`` on, each is also scored with hue-prior decoding
(``imgrestore.tuning.decoding``): one more row, ``decoding`` "hue prior", for every family. Every row keeps each
image's score (``image_scores``), so the best trial can be compared with the best of them image by image
(``pick_champion``'s paired test). A classical restorer has no weights: when no trial beats it, it is the
champion, rebuilt from its name (and its prior, fitted again on the training fold).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgrestore.metrics import KEYS
from imgrestore.models.classical import CLASSICAL
from imgrestore.tuning.decoding import AS_IS, HUE_PRIOR, IMAGE_SCORES, fit_prior, score_decodings

CLASSICAL_FAMILIES = tuple(CLASSICAL)  # input_copy, telea, navier_stokes, fsr, fsr_biharmonic
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
    """One classical restorer on the validation images (the split, fold, image size and cap of the trials'
    `training.loop.train`), restored as the submission restores them: one row as is and, with a fitted hue
    `prior`, a second decoded by it. Each row holds every image's score too (``IMAGE_SCORES``), for the
    champion's paired test."""
    import time

    import torch

    from imgrestore.models import create_model
    from imgrestore.training.data import RestorationDataset
    from imgrestore.training.loop import read_split

    torch.set_num_threads(1)
    t = time.perf_counter()  # config: validation_config's, every key filled from the training defaults
    _, val_frame = read_split(config["data_dir"], config["preproc_csv"], int(config["val_fold"]))
    scores = score_decodings(create_model(name).eval(), RestorationDataset(val_frame, config["image_size"]),
                             int(config["max_val_images"]), prior)
    seconds = time.perf_counter() - t  # restoring and scoring both rows: one measurement
    return [{"name": name, "decoding": decoding, **metrics, "val_time_s": seconds}
            for decoding, metrics in scores.items()]


def evaluate_baselines(config: dict, families=CLASSICAL_FAMILIES) -> pd.DataFrame:
    """Score every classical family on the search's validation images, side by side as Ray tasks.

    config: the search's trial config (constants, with data_dir and preproc_csv). Returns one row per
    family and decoding (name, decoding, score, ssim, masked_ssim, hist_sim, image_scores, val_time_s), best
    first.
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


def image_scores(value) -> np.ndarray | None:
    """A baselines row's every-image scores: the tuple `score_decodings` gives, or the space-separated text
    baselines.csv stores (`baselines_csv`); None where the row has none (a file written before they were kept)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        value = value.split()
    return np.atleast_1d(np.asarray(value, dtype=float))  # one image: pandas reads the column as a number


def baselines_csv(frame: pd.DataFrame) -> str:
    """The baselines as CSV text, every-image scores as one space-separated column (read back by `image_scores`)."""
    def text(value) -> str:
        scores = image_scores(value)
        return "" if scores is None else " ".join(repr(float(v)) for v in scores)

    out = frame.copy()
    if IMAGE_SCORES in out:
        out[IMAGE_SCORES] = [text(x) for x in out[IMAGE_SCORES]]
    return out.to_csv(index=False)


@dataclass
class PairedAdvantage:
    """A trial's per-image advantage over a classical restorer on the same validation images."""
    mean: float    # the mean of (trial - classical) over the images
    sem: float     # its standard error, clustered by scene when the images' clusters are known
    images: int
    higher: int    # images where the trial scored higher
    clusters: int = 0  # the scene clusters the standard error was clustered by (0: every image on its own)

    @classmethod
    def of(cls, trial, classical, groups=None) -> "PairedAdvantage":
        """`groups`: each image's scene cluster (the split's `cluster`; -1, HDBSCAN's noise, is an image on its
        own). Images of one scene move together (a colour model's hues suit a scene or do not), so the standard
        error is the cluster-robust one (CR1: the residuals summed per cluster) rather than per image: a gain
        that comes from one or two scenes counts for what it is."""
        trial, classical = np.asarray(trial, dtype=float), np.asarray(classical, dtype=float)
        if trial.shape != classical.shape or trial.ndim != 1 or len(trial) == 0:
            raise ValueError(f"a paired comparison needs the same validation images for both: {trial.shape} trial "
                             f"scores against {classical.shape} classical ones")
        d = trial - classical
        n, mean = len(d), float(d.mean())
        # without clusters every image is its own, and CR1 is the plain standard error std(d, ddof=1) / sqrt(n)
        labels = np.arange(n) if groups is None else np.asarray(groups)
        if labels.shape != d.shape:
            raise ValueError(f"{len(labels)} cluster labels for {n} images")
        labels = np.where(labels == -1, -2 - np.arange(n), labels)  # HDBSCAN's noise: each image its own
        sums = pd.Series(d - mean).groupby(labels).sum().to_numpy()
        k = len(sums)
        sem = float(np.sqrt((sums ** 2).sum() * k / (k - 1)) / n) if k > 1 else float("inf")
        return cls(mean, sem, n, int((d > 0).sum()), 0 if groups is None else k)

    def text(self) -> str:
        sem = f"{self.sem:.4f}" if np.isfinite(self.sem) else "-"  # one image or one scene: no standard error
        return (f"{self.mean:+.4f} ± {sem} (higher on {self.higher} of {self.images} images"
                + (f", {self.clusters} scene clusters" if self.clusters else "") + ")")


@dataclass
class ChampionChoice:
    kind: str                 # "trial" or "classical"
    name: str                 # the trial id, or the classical family
    score: float              # its validation score
    best_classical: str       # the best classical restorer's label (with its decoding)
    best_classical_score: float
    decoding: str = AS_IS     # the champion's decoding: AS_IS ("none") or "hue prior"
    trial_score: float | None = None  # the best trial's validation score (at its best decoding), if any
    required_margin: float = 0.0      # what the trial's advantage, less required_sems standard errors, had to reach
    required_sems: float = 0.0        # how many standard errors of the paired advantage it had to clear
    advantage: PairedAdvantage | None = None  # the best trial against the best classical restorer, image by image

    @property
    def margin(self) -> float:
        """The champion's validation score minus the best classical restorer's (0 when it is that restorer)."""
        return self.score - self.best_classical_score

    @property
    def trial_higher_but_refused(self) -> bool:
        """A classical champion whose best trial scored higher on validation, by too little to count (less than
        the required margin, or within the required standard errors)."""
        return self.kind == "classical" and self.trial_score is not None and self.trial_score > self.score

    def rule(self) -> str:
        """The test the trial had to pass, in words."""
        parts = ([f"{self.required_sems:g} standard errors"] if self.required_sems else []) + \
                ([f"the margin {self.required_margin:.4f}"] if self.required_margin else [])
        return "beat it" + (" by " + " + ".join(parts) if parts else "")


def pick_champion(trial_score: float | None, trial_id: str | None, baselines: pd.DataFrame,
                  trial_decoding: str = AS_IS, min_margin: float = 0.0, trial_images=None,
                  min_sems: float = 0.0, groups=None) -> ChampionChoice:
    """The best trial (at its best decoding) if it beats the best classical restorer (at its best decoding) on the
    same validation images by enough, else that classical restorer.

    Enough: the trial's per-image advantage (`PairedAdvantage`, from `trial_images`, every image's score, and
    the classical row's ``image_scores``; its standard error clustered by the images' scene clusters,
    `groups`), less `min_sems` of its standard errors, is at least `min_margin` (the space's ``learned_sem``
    and ``learned_margin``). Without `trial_images` (and `min_sems` 0) the means
    are compared: trial - classical >= min_margin.

    Why a paired test: one validation fold is a few scenes, and a learned model that edges the classical restorer
    there by less than the noise of the comparison often loses on other photos (the cpu.yaml benchmark: a
    colour trial +0.003 above FSR + hue prior on 80 validation images, 0.012 below it on 100 held-out photos).
    How much noise depends on the trial: a colour model changes every pixel's hue and its per-image differences
    from FSR + hue prior spread widely (standard error 0.003-0.006 on 80-100 images); a luma-only model changes
    only the lost region (0.001-0.002), so a fixed margin either let colour trials through on noise or turned
    away real luma gains (docs/benchmarks.md, "The champion's paired test"). The restorer that learned nothing
    takes the calls the test cannot make."""
    if not min_margin >= 0:
        raise ValueError(f"learned_margin must be >= 0, got {min_margin}")
    if not min_sems >= 0:
        raise ValueError(f"learned_sem must be >= 0, got {min_sems}")
    top = baselines.iloc[0]
    decoding = str(top.get("decoding", AS_IS))
    best = label(top["name"], decoding)
    trial = None if trial_score is None else float(trial_score)
    advantage = None
    if trial is not None and trial_images is not None:
        classical = image_scores(top.get(IMAGE_SCORES))
        if classical is None:
            raise ValueError(f"the baselines hold no per-image scores for {best}: the paired test needs them "
                             "(baselines measured before they were kept: measure them again)")
        advantage = PairedAdvantage.of(trial_images, classical, groups)
    elif trial is not None and min_sems > 0:
        raise ValueError(f"learned_sem {min_sems} needs the trial's per-image validation scores (trial_images)")
    if trial is not None:
        if advantage is None:
            gain = trial - float(top.score)
        else:  # learned_sem 0: the plain mean, also where no standard error exists (one image or one scene)
            gain = advantage.mean - (min_sems * advantage.sem if min_sems else 0.0)
        if gain >= min_margin:
            return ChampionChoice("trial", str(trial_id), trial, best, float(top.score), trial_decoding, trial,
                                  float(min_margin), float(min_sems), advantage)
    return ChampionChoice("classical", top["name"], float(top.score), best, float(top.score), decoding, trial,
                          float(min_margin), float(min_sems), advantage)


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
        rows.append({"fold": fold, "images": n, **{k: scores[decoding][k] for k in KEYS}})
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
