"""The champion of a finished search: the best trial, its inference prefill chosen on validation, if it beats
the best classical restorer image by image on the same validation images (``tuning.baselines.pick_champion``'s
paired test), else that restorer. One function, for pipelines/tune.py and the benchmark alike.

Why the prefill is chosen after the search: trials that fill the hole with Telea (a few ms an image: it runs
at every training step) may do better at inference with OpenCV's FSR fill under them, which is better
(docs/benchmarks.md, "Restoration quality") but costs ~0.25 s per 256 px image. The trial's own prefill and
each candidate are scored on the search's validation images and the best is kept (a measurement, not an
assumption: a residual learnt on Telea fills; a trial trained on FSR fills, as the CPU spaces' are, usually
keeps them). The chroma gain and hole factor are calibrated again for each.

The chosen model is then scored as the submission restores it, image by image (the paired test against the
best classical restorer needs every image's score: ``tuning.baselines.pick_champion``); with ``hue_prior`` on
(``imgrestore.tuning.decoding``), with hue-prior decoding too (the prior fitted on the training fold's truths),
kept only if it scores higher. The classical baselines were offered the same, so the champion is chosen
between equally decoded restorers.

A classical champion is built here too (its hue prior fitted on the training fold, as the search scored it) and,
since it trained on nothing, scored on every fold: a better forecast for unseen photos than the one fold.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from imgrestore.models import is_trainable
from imgrestore.training.checkpoint import TRIAL_CONFIG, load_model, save_model
from imgrestore.training.data import RestorationDataset
from imgrestore.training.evaluate import evaluate
from imgrestore.training.loop import DEFAULTS, read_split, with_defaults
from imgrestore.tuning.baselines import ChampionChoice, FoldScores, classical_across_folds, label, pick_champion
from imgrestore.tuning.decoding import AS_IS, HUE_PRIOR, IMAGE_SCORES, classical_champion, fit_prior, score_decodings

CANDIDATES = ("telea", "fsr", "fsr_biharmonic")


def ray_is_up() -> bool:
    """Decode over the cluster's CPUs when the search's Ray is still up (pipelines/tune.py), here otherwise."""
    import ray

    return ray.is_initialized()


@dataclass
class Polished:
    checkpoint: Path       # the champion's checkpoint folder (the input one when nothing changed)
    prefill: str
    score: float           # its validation score
    scores: dict           # prefill (+ decoding) -> validation score
    decoding: str = AS_IS  # "none", or "hue prior" when the checkpoint decodes with one
    image_scores: tuple = ()  # every validation image's score, as the submission restores it (at `decoding`)
    image_clusters: tuple = ()  # those images' scene clusters (the split's `cluster`), for the paired test


def polish_prefill(checkpoint_dir: str | Path, out_dir: str | Path, split_csv: str | Path | None = None,
                   device: str = "cpu") -> Polished:
    """Score the checkpoint's model on its trial's validation images with each prefill; keep the best.

    split_csv: the split file on this machine (a trial on another node of a cluster saved a node-local copy's
    path in its config); default: the one in the checkpoint's trial config.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    cfg = with_defaults(json.loads((checkpoint_dir / TRIAL_CONFIG).read_text()))
    base = load_model(checkpoint_dir, device)
    train_frame, val_frame = read_split(cfg["data_dir"], str(split_csv or cfg["preproc_csv"]), int(cfg["val_fold"]))
    val = RestorationDataset(val_frame, cfg["image_size"])
    methods = dict.fromkeys((base.prefill_method, *CANDIDATES)) if is_trainable(base) else [base.prefill_method]
    scores, models = {}, {}
    for method in methods:
        model = copy.deepcopy(base)
        if method != base.prefill_method:
            model.prefill_method, model.config["prefill"] = method, method
        metrics, _ = evaluate(model, val, device, int(cfg["max_val_images"]), 0, calibrate=bool(cfg["calibrate_gain"]))
        scores[method], models[method] = metrics["score"], model
    best = max(scores, key=scores.get)
    model, decoding = models[best], AS_IS
    # every image's score, as the submission restores it (and decoded), for the champion's paired test
    prior = fit_prior(train_frame) if cfg.get("hue_prior") else None
    decoded = score_decodings(model, val, int(cfg["max_val_images"]), prior, device, progress=True,
                              parallel=ray_is_up())
    if prior is not None:
        scores[label(best, HUE_PRIOR)] = decoded[HUE_PRIOR]["score"]
        if decoded[HUE_PRIOR]["score"] > decoded[AS_IS]["score"]:  # the same images, the same (uint8) path
            model.hue_prior, decoding = prior, HUE_PRIOR
    score, images = decoded[decoding]["score"], decoded[decoding][IMAGE_SCORES]
    clusters = tuple(int(c) for c in val_frame["cluster"].iloc[:len(images)]) if "cluster" in val_frame else ()
    if model.config == base.config and decoding == AS_IS:  # nothing changed: the checkpoint as it is
        return Polished(checkpoint_dir, best, score, scores, image_scores=images, image_clusters=clusters)
    save_model(model, out_dir)
    (out_dir / TRIAL_CONFIG).write_text((checkpoint_dir / TRIAL_CONFIG).read_text())
    return Polished(out_dir, best, score, scores, decoding, images, clusters)


def offered(baselines, config: dict):
    """The baseline rows whose decoding the trials were offered too: a search resumed with a space that has
    since turned ``hue_prior`` on must not compare decoded baselines with an undecoded trial."""
    if "decoding" not in baselines or config.get("hue_prior"):
        return baselines
    return baselines[baselines["decoding"] == AS_IS].reset_index(drop=True)


@dataclass
class Selection:
    choice: ChampionChoice
    checkpoint: Path            # the champion's saved model: the trial's polished checkpoint, or the classical
                                # restorer with its prior
    best: object | None         # the best trial's tune.Result
    best_epoch: dict            # the reported row of its best epoch ({} when no trial reported)
    polished: Polished | None
    error: str | None = None    # why no trial could be the champion
    folds: FoldScores | None = None  # a classical champion on every fold (None: a trial, or a single fold)
    folds_error: str | None = None   # why it could not be scored on every fold (its forecast is then one fold's)


def select_champion(outcome, space, split_csv, workdir: str | Path, data_dir: str | Path, device: str = "cpu",
                    parallel: bool = False) -> Selection:
    """The champion of a finished search (see the module doc); checkpoints are copied under `workdir`.
    `data_dir`: the search's dataset (a classical champion's prior and its other folds come from it);
    `parallel`: score the other folds in Ray tasks."""
    from imgrestore.tuning.search import best_checkpoint

    workdir = Path(workdir)
    # check_space: constant numbers >= 0
    rule = {"min_margin": float(space.config.get("learned_margin", DEFAULTS["learned_margin"])),
            "min_sems": float(space.config.get("learned_sem", DEFAULTS["learned_sem"]))}
    try:
        best, checkpoint, best_epoch = best_checkpoint(outcome.results, space.metric, space.mode)
    except RuntimeError as e:  # no trial reported or left a checkpoint: the classical restorers are all there is
        choice = pick_champion(None, None, outcome.baselines, **rule)
        return _classical(Selection(choice, None, None, {}, None, str(e)), outcome, space, split_csv, workdir,
                          data_dir, parallel)
    shutil.rmtree(workdir / "trial", ignore_errors=True)
    with checkpoint.as_directory() as d:
        shutil.copytree(d, workdir / "trial")
    polished = polish_prefill(workdir / "trial", workdir / "polished", split_csv, device)
    choice = pick_champion(polished.score, best_epoch.get("trial_id"), offered(outcome.baselines, best.config),
                           polished.decoding, trial_images=polished.image_scores,
                           groups=polished.image_clusters or None, **rule)
    sel = Selection(choice, polished.checkpoint if choice.kind == "trial" else None, best, best_epoch, polished)
    return sel if choice.kind == "trial" else _classical(sel, outcome, space, split_csv, workdir, data_dir,
                                                         parallel)


def _classical(sel: Selection, outcome, space, split_csv, workdir: Path, data_dir, parallel: bool) -> Selection:
    """A classical champion saved as a checkpoint (its prior fitted on the training fold, as the search scored
    it), then scored on every fold. The folds are a forecast only: if they fail, the champion still stands and
    `folds_error` says why."""
    val_fold = int(space.config.get("val_fold", DEFAULTS["val_fold"]))
    model = classical_champion(sel.choice.name, sel.choice.decoding, data_dir, split_csv, val_fold)
    shutil.rmtree(workdir / "classical", ignore_errors=True)
    sel.checkpoint = Path(save_model(model, workdir / "classical"))
    try:
        sel.folds = classical_across_folds(sel.choice, outcome.baselines, {**space.config, "data_dir": str(data_dir)},
                                           split_csv, parallel=parallel)
    except Exception as e:  # noqa: BLE001 - a forecast only: the search is complete, its champion stands
        sel.folds_error = f"{type(e).__name__}: {e}"
    return sel
