"""Train one restoration model, top to bottom.

`train(config, report)` is the whole trial: read the cluster-aware split, build the model, loop over
epochs, score the validation fold with the competition metric (imgrestore.training.evaluate, which also
calibrates the chroma gain), hand metrics and a checkpoint directory to `report` after every epoch. The
same function runs under Ray Tune (see imgrestore.tuning.trainable) and on its own. `config` is plain data;
DEFAULTS lists every key. A model with nothing to train (the classical restorers) is evaluated once.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from imgrestore.data.dacon import find_path_columns, resolve_path
from imgrestore.losses import build_loss, chroma_class_loss, masked_l1_loss
from imgrestore.models import create_model, is_trainable
from imgrestore.models.color import rgb_to_chroma, rgb_to_luma
from imgrestore.models.prefill import CPU_PREFILLS, PrefillCollate
from imgrestore.training.checkpoint import TRIAL_CONFIG, load_model, load_train_state, save_model, save_train_state
from imgrestore.training.data import (EpochConcat, PhotoCrops, RestorationDataset, batch_to_device,
                                     extra_photo_sources)
from imgrestore.training.evaluate import evaluate, sample_grid
from imgrestore.training.samples import restoration_grid

DEFAULTS = {
    "data_dir": None,            # DACON dataset folder
    "preproc_csv": None,         # train_preproc_1.csv with `cluster` and `fold` (default: in data_dir)
    "val_fold": 0,
    "model": {"name": "unet", "base_channels": 16, "depth": 3},
    "loss": {"l1": 1.0},         # on the RGB output (imgrestore.losses: l1, ssim, metric_m, hue_hist, metric, ...)
    "aux_gray_weight": 0.5,      # L1 of the model's luma against the true gray, inside the hole
    "chroma_class_weight": 1.0,  # chroma="classification": rebalanced cross-entropy of the colour classes
    "chroma_rebalance": 0.5,     # Zhang et al.'s lambda: 0 = no rebalancing, 1 = all classes weigh the same
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_frac": 0.05,         # linear warm-up, then cosine decay to 0, per step
    "batch_size": 8,
    "image_size": 128,           # train and validate at image_size x image_size (None: native size)
    "epochs": 5,
    "extra_damage": 0.0,         # probability of swapping the real damage for generated damage
    "extra_photos": None,        # colour photos without pairs to train on too: a folder, or "bundled"; their
    "extra_per_epoch": 0,        #   scenes must not be the validation's. Random damaged crops per epoch
    "flip": True,
    "cluster_balanced": False,   # sample each scene cluster equally often
    "grad_clip": 1.0,
    "amp": "auto",               # auto | bf16 | fp16 | fp32 (auto: bf16 on GPUs that support it, else fp32)
    "num_workers": 0,            # DataLoader worker processes, or "auto": this trial's CPUs minus one (loader_workers)
    "seed": 0,
    "max_val_images": 64,        # cap validation cost per epoch
    "calibrate_gain": True,      # pick the chroma gain on validation every epoch (imgrestore.training.evaluate)
    "hue_prior": False,          # after the search, offer hue-prior decoding to every restorer (tuning.decoding)
    "learned_sem": 2.0,          # to be the champion, a trial's per-image advantage over the best classical
    "learned_margin": 0.0,       # restorer on validation, less learned_sem standard errors, must reach
                                 # learned_margin: closer calls go to the restorer that learned nothing
                                 # (tuning.baselines.pick_champion)
    "n_samples_grid": 4,         # validation restorations drawn into the sample grid
}

Report = Callable[[dict, "str | None"], None]  # (metrics, checkpoint directory, or None: no checkpoint)


AMP_MODES = ("auto", "bf16", "fp16", "fp32")


def with_defaults(config: dict) -> dict:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown training config keys: {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["amp"] not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {cfg['amp']!r}")
    if int(cfg["epochs"]) < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg['epochs']}")
    loader_workers(cfg["num_workers"])  # a bad value fails here, on the driver, not in every trial
    if cfg["cluster_balanced"] and cfg["extra_photos"] and int(cfg["extra_per_epoch"]) > 0:
        raise ValueError("cluster_balanced sampling weighs the scene clusters of the pairs; extra_photos have no "
                         "cluster: use one or the other")
    return cfg


def autocast_dtype(amp: str, device: torch.device):
    """The autocast dtype for `amp` on `device`, or None for fp32. bf16 only where the GPU runs it natively
    (Ampere and newer: on a T4 it is emulated and slow); fp16 needs a GradScaler (see train)."""
    if device.type != "cuda" or amp == "fp32":
        return None
    bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
    if amp == "bf16" and not bf16_ok:
        raise ValueError(f"amp: bf16 is not supported natively by {torch.cuda.get_device_name(device)}; "
                         "use fp16 or fp32")
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if bf16_ok else (torch.float16 if amp == "auto" else None)


def read_split(data_dir: str, preproc_csv: str | None, val_fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation frames (name, input_path, gt_path, cluster, fold) from train_preproc_1.csv."""
    root = Path(data_dir)
    csv = Path(preproc_csv) if preproc_csv else root / "train_preproc_1.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: missing; run `python pipelines/preprocess.py --data {root}` first")
    frame = pd.read_csv(csv)
    for col in ("cluster", "fold"):
        if col not in frame:
            raise KeyError(f"{csv}: no '{col}' column (columns: {', '.join(frame.columns)})")
    cols = find_path_columns(frame, root)
    if not {"train_input", "train_gt"} <= set(cols):
        raise KeyError(f"{csv}: no columns of paths into train_input/ and train_gt/")
    frame = frame.assign(input_path=[str(resolve_path(v, root, "train_input")) for v in frame[cols["train_input"]]],
                         gt_path=[str(resolve_path(v, root, "train_gt")) for v in frame[cols["train_gt"]]])
    frame["name"] = [Path(p).name for p in frame["input_path"]]
    if val_fold not in set(frame["fold"]):
        raise ValueError(f"{csv}: val_fold {val_fold} not among folds {sorted(set(frame['fold']))}")
    return frame[frame["fold"] != val_fold], frame[frame["fold"] == val_fold]


def lr_lambda(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_frac))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_step(net, gray, mask, rgb, cfg: dict, loss_fn, optimizer, scaler, scheduler, autocast: dict,
               bins=None, class_weights=None, where: str = "", filled=None):
    """One optimisation step on a batch already on the device; returns (loss, its detached parts).
    ``filled``: the batch's prefill when the loader computed it (see `train_loader`).

    The loss: the configured losses on the RGB output, the auxiliary L1 of the luma inside the hole, and for
    chroma classes their rebalanced cross-entropy. A non-finite loss fails now rather than after hours of NaN.
    (The GPU benchmark in imgrestore.benchmarking.gpu_training times exactly this function.)
    """
    with torch.autocast(**autocast):
        out = net(gray, mask, return_aux=True, filled=filled)
    loss, parts = loss_fn(out["rgb"].float(), rgb, mask)
    if cfg["aux_gray_weight"]:
        aux = masked_l1_loss(out["y"].float(), rgb_to_luma(rgb), mask)
        loss, parts = loss + cfg["aux_gray_weight"] * aux, {**parts, "aux_gray": aux.detach()}
    if out.get("chroma_logits") is not None and cfg["chroma_class_weight"]:
        ce = chroma_class_loss(out["chroma_logits"], rgb, bins, class_weights)
        loss, parts = loss + cfg["chroma_class_weight"] * ce, {**parts, "chroma_class": ce.detach()}
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss.item()} {where} "
                                 f"({', '.join(f'{k} {float(v):.4g}' for k, v in parts.items())})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # bf16 needs no scaling: the scaler is disabled unless fp16
    if cfg["grad_clip"]:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss, parts


def loader_workers(value) -> int:
    """The DataLoader's worker count for ``num_workers``: an int >= 0, or "auto": the CPUs this process may use
    minus one for the process that drives the model. Inside Ray (a trial, or a Ray Train worker) those are the
    CPUs Ray assigned it (the space's ``resources: {cpu: N}``), else the CPUs this process may run on."""
    if value == "auto":
        return max(0, int(available_cpus()) - 1)
    try:
        n = int(value) if not isinstance(value, bool) else -1  # YAML's yes/no are not a count
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, float) and value != n:
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got {value!r}")
    return n


def available_cpus() -> float:
    """CPUs assigned to this Ray task or actor when it runs in one (none assigned: 0), at most the cores this
    process may run on; outside Ray, those cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ray = sys.modules.get("ray")  # only if already imported: outside Ray there is nothing to ask
    if ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        # a Ray worker process (a driver has no assignment to ask for)
        return min(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0), cores)
    return cores


def train_loader(dataset, cfg: dict, model, device: torch.device, sampler=None, generator=None) -> DataLoader:
    """The training DataLoader. A learned model with a classical (OpenCV, CPU) prefill gets its fill computed
    by the loader (``PrefillCollate``: in the worker processes when num_workers > 0) and batches of four
    tensors (gray, mask, rgb, filled); otherwise batches of three and the model fills the hole itself."""
    method = getattr(model, "prefill_method", None)
    collate = PrefillCollate(method, model.prefill_radius) if is_trainable(model) and method in CPU_PREFILLS \
        else None
    workers = loader_workers(cfg["num_workers"])
    return DataLoader(dataset, batch_size=min(int(cfg["batch_size"]), len(dataset)), shuffle=sampler is None,
                      sampler=sampler, drop_last=True, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda",  # workers are not persistent: each epoch's workers copy
                      generator=generator)  # the dataset after set_epoch, so augmentations change every epoch


def chroma_class_weights(dataset: RestorationDataset, bins, mix: float, max_images: int = 256) -> torch.Tensor:
    """Class rebalancing weights from the chroma of up to `max_images` training truths (quarter resolution)."""
    counts = torch.zeros(bins.n)
    step = max(1, len(dataset) // max_images)
    for i in range(0, len(dataset), step):
        rgb = dataset.pair(i)[2]
        chroma = rgb_to_chroma(torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255)
        counts += bins.counts(torch.nn.functional.avg_pool2d(chroma, 4, ceil_mode=True))
    return bins.rebalance_weights(counts, mix)


def out_of_memory(report: Report, cfg: dict, epoch: int, best: float, error: BaseException) -> dict:
    """End a trial that ran out of (GPU) memory: report it (score -inf, `out_of_memory` 1, no checkpoint) and
    return normally, so that Tune ends the trial instead of retrying a configuration that cannot fit."""
    message = (f"out of memory in epoch {epoch + 1} (model {cfg['model']}, batch_size {cfg['batch_size']}, "
               f"image_size {cfg['image_size']}, amp {cfg['amp']}): lower batch_size, image_size or the model's "
               f"size; this trial is not retried. {str(error).splitlines()[0] if str(error) else ''}")
    print(f"error: {message}", file=sys.stderr, flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    metrics = {"epoch": epoch + 1, "score": -math.inf, "best_score": best, "out_of_memory": 1.0, "error": message}
    report(metrics, None)
    return metrics


def _main_rank() -> bool:
    """True unless this is a data-parallel worker other than rank 0 (validation would only repeat rank 0's)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def train(config: dict, report: Report, resume_from: str | None = None, device: str | None = None,
          wrap_model: Callable = lambda m: m, wrap_loader: Callable = lambda l: l) -> dict:
    """Run one trial. Returns the last epoch's metrics.

    wrap_model / wrap_loader: hooks for data-parallel training (Ray Train's prepare_model and
    prepare_data_loader); the unwrapped model is what gets evaluated and saved.
    """
    cfg = with_defaults(config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = int(cfg["seed"])
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    amp_dtype = autocast_dtype(cfg["amp"], device)
    autocast = {"device_type": device.type, "dtype": amp_dtype or torch.float32, "enabled": amp_dtype is not None}

    # data: the validation fold holds whole scene clusters (see imgrestore.clustering.split)
    train_frame, val_frame = read_split(cfg["data_dir"], cfg["preproc_csv"], int(cfg["val_fold"]))
    size = cfg["image_size"]
    train_ds = RestorationDataset(train_frame, size, train=True, extra_damage=cfg["extra_damage"],
                                  flip=cfg["flip"], seed=seed, uint8=True)  # uint8 to the device: batch_to_device
    val_ds = RestorationDataset(val_frame, size)
    if cfg["extra_photos"] and int(cfg["extra_per_epoch"]) > 0:
        extra = PhotoCrops(extra_photo_sources(cfg["extra_photos"]), size, int(cfg["extra_per_epoch"]), seed,
                           flip=cfg["flip"], uint8=True)
        train_ds = EpochConcat([train_ds, extra])
    sampler = None
    if cfg["cluster_balanced"]:
        counts = train_frame["cluster"].map(train_frame["cluster"].value_counts())
        sampler = WeightedRandomSampler((1.0 / counts).to_numpy(), num_samples=len(train_frame),
                                        generator=torch.Generator())
    shuffle_rng = torch.Generator()  # re-seeded every epoch: the order depends on (seed, epoch) only, so a
    # resumed run repeats it

    # model, loss, optimiser, schedule
    model_cfg = dict(cfg["model"])
    model = create_model(model_cfg.pop("name"), **model_cfg).to(device)
    if resume_from:
        model.load_state_dict(load_model(resume_from).state_dict())
    trainable = is_trainable(model)
    loss_fn = build_loss(cfg["loss"])
    bins = getattr(model, "bins", None)  # chroma classes (chroma="classification")
    class_weights = None  # rebalancing 0: the plain (calibrated) class probabilities
    if bins is not None and cfg["chroma_rebalance"] > 0:
        class_weights = chroma_class_weights(train_ds, bins, cfg["chroma_rebalance"])
    if sampler is not None and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise ValueError("cluster_balanced sampling is not supported in data-parallel trials (workers > 1): "
                         "Ray Train replaces the sampler with a DistributedSampler")
    net = wrap_model(model) if trainable else model
    loader = wrap_loader(train_loader(train_ds, cfg, model, device, sampler, shuffle_rng))
    # a classical restorer has no parameters: a placeholder keeps the checkpoint format (optimizer state) one
    optimizer = torch.optim.AdamW(net.parameters() if trainable else [torch.zeros(1, requires_grad=True)],
                                  lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    epochs = int(cfg["epochs"]) if trainable else 1  # nothing to train: one evaluation
    total_steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg["warmup_frac"]))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 needs loss scaling
    start_epoch, best = 0, -math.inf
    if resume_from:
        state = load_train_state(resume_from)
        optimizer.load_state_dict(state["optimizer"]), scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["extra"].get("best_score", -math.inf)

    main_rank = _main_rank()
    before = None  # the "before" picture: the untrained model on the grid's validation images (MLflow step 0)
    if main_rank and start_epoch == 0 and trainable and int(cfg["n_samples_grid"]):
        before = sample_grid(model, val_ds, device, int(cfg["max_val_images"]), int(cfg["n_samples_grid"]),
                             autocast)  # the same images as every epoch's grid
    metrics = {}
    for epoch in range(start_epoch, epochs):
        try:
            net.train()
            train_ds.set_epoch(epoch)
            shuffle_rng.manual_seed(seed * 100_003 + epoch)
            if sampler is not None:
                sampler.generator.manual_seed(seed * 100_003 + epoch)
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
            t0, seen, loss_sum, part_sums = time.perf_counter(), 0, 0.0, {}
            lr = scheduler.get_last_lr()[0]  # the epoch's starting rate (after the last step it is ~0: cosine)
            for batch in (loader if trainable else ()):
                gray, mask, rgb, *filled = batch_to_device(batch, device)
                loss, parts = train_step(net, gray, mask, rgb, cfg, loss_fn, optimizer, scaler, scheduler, autocast,
                                         bins, class_weights, where=f"epoch {epoch + 1}",
                                         filled=filled[0] if filled else None)
                seen += gray.shape[0]
                loss_sum += loss.item() * gray.shape[0]
                for k, v in parts.items():
                    part_sums[k] = part_sums.get(k, 0.0) + float(v) * gray.shape[0]
            train_time = time.perf_counter() - t0

            metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                       **{f"loss_{k}": v / max(seen, 1) for k, v in part_sums.items()},
                       "train_images_per_s": seen / max(train_time, 1e-9), "train_time_s": train_time, "lr": lr}
            if not main_rank:  # data-parallel: rank 0 validates and checkpoints; the others only report the epoch
                with tempfile.TemporaryDirectory(prefix="imgrestore-rank-") as d:
                    report(metrics, d)
                continue
            t1 = time.perf_counter()  # on a GPU the metric runs there, batched (evaluate's metric="auto")
            val, grid_rows = evaluate(model, val_ds, device, int(cfg["max_val_images"]), int(cfg["n_samples_grid"]),
                                      calibrate=bool(cfg["calibrate_gain"]), autocast=autocast)
            best = max(best, val.get("score", -math.inf))
            metrics = {**val, **metrics, "val_time_s": time.perf_counter() - t1, "best_score": best}

            with tempfile.TemporaryDirectory(prefix="imgrestore-ckpt-") as d:
                save_model(model, d)
                (Path(d) / TRIAL_CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
                save_train_state(d, epoch, optimizer, scheduler, {"best_score": best})
                if grid_rows:
                    restoration_grid(grid_rows, Path(d) / "val_samples.png")
                if before and epoch == 0:
                    restoration_grid(before, Path(d) / "val_samples_untrained.png")
                report(metrics, d)
        except torch.OutOfMemoryError as e:  # the same configuration would only run out again: no retry
            return out_of_memory(report, cfg, epoch, best, e)
    return metrics
