"""Hue-prior decoding, chosen on validation for every restorer alike (config key ``hue_prior``).

The metric's hue term rewards an image whose hue histogram matches the truth's, and on photos a model has not
seen, the training truths' mean hue histogram predicts that better than a learned colouriser trained on a
hundred photos does (docs/benchmarks.md, "Hue-prior decoding"). ``imgrestore.models.hue_prior`` steers a
restoration's hues (the lost region's too) towards that mean, keeping every pixel's gray. It lifts a gray
classical restorer as much as a learned one, so it is offered to *every* restorer after the search, the
classical baselines included: each is scored on the same validation images as it is and decoded, and keeps
whichever scores higher. The champion's margin over the best classical restorer is then a margin between
equally decoded restorers, never the decoding's own gain.

The prior is fitted on the training fold's truths only (up to ``PRIOR_IMAGES`` of them, a seeded sample: the
mean of 2000 histograms is as good as of 30000), never on validation. A restorer that keeps the decoding
carries its prior in its checkpoint (``model.json``'s ``hue_prior``), and ``submission.predict.restore``
applies it, so the submission decodes exactly as validation did.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from imgrestore.data.io import read_rgb
from imgrestore.metrics import KEYS, score_image
from imgrestore.models.hue_prior import HuePrior
from imgrestore.ray_tasks import batched, chunk_size, ordered_map
from imgrestore.training.data import to_uint8_rgb

PRIOR_IMAGES = 2000
DECODE_CHUNK = 8  # images per decoding task (parallel): seconds of work each, a few MB to ship
AS_IS, HUE_PRIOR = "none", "hue prior"  # the values of the baselines' `decoding` column
IMAGE_SCORES = "image_scores"  # every image's score, in the dataset's order: what the champion's paired test needs


def fit_prior(train_frame: pd.DataFrame, limit: int = PRIOR_IMAGES, seed: int = 0, progress: bool = False
              ) -> HuePrior:
    """The hue prior of the training fold's truths (column gt_path), on at most `limit` of them."""
    paths = list(train_frame["gt_path"])
    if not paths:
        raise ValueError("no training truths to fit the hue prior on")
    if len(paths) > limit:
        paths = list(np.random.default_rng(seed).choice(paths, limit, replace=False))
    return HuePrior().fit(read_rgb(p) for p in tqdm(paths, desc="fitting the hue prior", disable=not progress))


def score_decodings(model, dataset, limit: int, prior: HuePrior | None, device="cpu", progress: bool = False,
                    parallel: bool = False) -> dict[str, dict]:
    """{AS_IS: metrics, HUE_PRIOR: metrics}: `model` on the first `limit` images of `dataset` (a validation
    RestorationDataset), restored as the submission restores them (uint8, the known gray locked), scored as is
    and after decoding with `prior` (None: as is only, {AS_IS: metrics}). Metrics: the means of score, ssim,
    masked_ssim, hist_sim, and every image's score (``IMAGE_SCORES``).

    The model runs here (on `device`), one image at a time; the decoding, which costs far more on the CPU (up
    to seconds an image for a coloured 512 px restoration: docs/benchmarks.md), runs in Ray tasks when
    `parallel` (Ray must be initialised): chunks of up to ``DECODE_CHUNK`` images, small enough to give every
    CPU of the cluster work, each sent off as soon as it is restored. The decoding's random field has a fixed
    seed, so both ways give the same scores."""
    if getattr(model, "hue_prior", None) is not None:
        raise ValueError("the model already decodes with a hue prior; score it without")
    n = min(len(dataset), limit)
    size = chunk_size(n, DECODE_CHUNK) if parallel else DECODE_CHUNK
    return score_restorations(batched(_restored(model, dataset, n, device), size), prior, progress, parallel,
                              total=n)


@torch.no_grad()
def _restored(model, dataset, n: int, device) -> Iterator[tuple]:
    """(truth, restoration, mask) of each of the first `n` images of `dataset`."""
    from imgrestore.submission.predict import restore  # submission imports training, not tuning: no cycle

    for i in range(n):
        gray, mask, rgb = dataset[i]
        g = (gray[0].numpy() * 255).round().astype(np.uint8)
        m = mask[0].numpy() > 0.5
        yield to_uint8_rgb(rgb), restore(model, g, m, device), m


def score_restorations(chunks: Iterable[list[tuple]], prior: HuePrior | None, progress: bool = False,
                       parallel: bool = False, total: int | None = None) -> dict[str, dict]:
    """{AS_IS: metrics, HUE_PRIOR: metrics} ({AS_IS: metrics} without a prior) of chunks of (truth, restoration,
    mask) triples (uint8 RGB, uint8 RGB, bool), decoded here or in Ray tasks (`parallel`; at most two tasks per
    CPU in flight, so the images waiting in Ray's object store stay few): see `score_decodings`. Each metrics
    dict also holds ``IMAGE_SCORES``, every image's score in order (the champion's paired test compares two
    restorers image by image: `tuning.baselines.pick_champion`). `total`: images, for the progress bar."""
    desc = ("hue-prior decoding" if prior is not None else "scoring") + (" (Ray tasks)" if parallel else "")
    with tqdm(total=total, desc=desc, unit="image", disable=not progress) as bar:
        scored = _in_tasks(chunks, prior, bar) if parallel else _here(chunks, prior, bar)
    if not scored:
        raise ValueError("no images to score the decoding on")
    rows = {AS_IS: [a for a, _ in scored], **({HUE_PRIOR: [b for _, b in scored]} if prior is not None else {})}
    return {d: {**{k: float(np.mean([r[k] for r in rs])) for k in KEYS},
                IMAGE_SCORES: tuple(float(r["score"]) for r in rs)} for d, rs in rows.items()}


def _here(chunks, prior: HuePrior | None, bar) -> list[tuple[dict, dict | None]]:
    scored = []
    for chunk in chunks:
        scored += _score_chunk(prior, chunk)
        bar.update(len(chunk))
    return scored


def _in_tasks(chunks, prior: HuePrior | None, bar) -> list[tuple[dict, dict | None]]:
    out = []
    for _, part in ordered_map(_score_chunk_task, prior, ((None, chunk) for chunk in chunks)):
        out += part
        bar.update(len(part))
    return out


def _score_chunk_task(prior: HuePrior | None, items: list) -> list[tuple[dict, dict | None]]:
    torch.set_num_threads(1)  # one task per CPU: torch's own threads would only compete
    return _score_chunk(prior, items)


def _score_chunk(prior: HuePrior | None, items: list) -> list[tuple[dict, dict | None]]:
    """(as-is metrics, decoded metrics or None without a prior) of each (truth, restoration, mask)."""
    return [(score_image(truth, out, m), None if prior is None else score_image(truth, prior.transform(out, m), m))
            for truth, out, m in items]


def classical_champion(name: str, decoding: str, data_dir, split_csv, val_fold: int = 0) -> torch.nn.Module:
    """A classical restorer as the champion: rebuilt from its name, with the hue prior of the search's training
    fold (``split_csv``, ``val_fold``) when it won with it (``decoding`` HUE_PRIOR)."""
    from imgrestore.models import create_model
    from imgrestore.training.loop import read_split

    model = create_model(name).eval()
    if decoding == HUE_PRIOR:
        train_frame, _ = read_split(str(data_dir), str(split_csv), int(val_fold))
        model.hue_prior = fit_prior(train_frame)
    elif decoding != AS_IS:
        raise ValueError(f"unknown decoding {decoding!r}; known: {AS_IS!r}, {HUE_PRIOR!r}")
    return model
