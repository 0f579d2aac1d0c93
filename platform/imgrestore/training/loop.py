"""Train one restoration model, top to bottom.

`train(config, report)` is the whole trial: read the cluster-aware split, build the model, loop over
epochs, score the validation fold with the competition metric, hand metrics and a checkpoint directory to
`report` after every epoch. The same function runs under Ray Tune (see imgrestore.tuning.trainable) and
on its own. `config` is plain data; DEFAULTS lists every key.
"""
from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from imgrestore.data.dacon import find_path_columns, resolve_path
from imgrestore.losses import build_loss
from imgrestore.metrics import score_image
from imgrestore.models import create_model
from imgrestore.training.checkpoint import TRIAL_CONFIG, load_model, load_train_state, save_model, save_train_state
from imgrestore.training.data import RestorationDataset, to_uint8_rgb
from imgrestore.training.samples import restoration_grid

DEFAULTS = {
    "data_dir": None,            # DACON dataset folder
    "preproc_csv": None,         # train_preproc_1.csv with `cluster` and `fold` (default: in data_dir)
    "val_fold": 0,
    "model": {"name": "unet", "base_channels": 16, "depth": 3},
    "loss": {"l1": 1.0},
    "aux_gray_weight": 0.5,      # two-stage models: L1 of the inpainted gray against the true gray
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_frac": 0.05,         # linear warm-up, then cosine decay to 0, per step
    "batch_size": 8,
    "image_size": 128,           # train and validate at image_size x image_size (None: native size)
    "epochs": 5,
    "extra_damage": 0.0,         # probability of swapping the real damage for generated damage
    "flip": True,
    "cluster_balanced": False,   # sample each scene cluster equally often
    "grad_clip": 1.0,
    "amp": "auto",               # bfloat16 autocast on CUDA when "auto"; never on CPU
    "num_workers": 0,
    "seed": 0,
    "max_val_images": 64,        # cap validation cost per epoch
    "n_samples_grid": 4,         # validation restorations drawn into the sample grid
}

Report = Callable[[dict, str], None]  # (metrics, checkpoint directory)


def with_defaults(config: dict) -> dict:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown training config keys: {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **config}


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


@torch.no_grad()
def evaluate(model, dataset: RestorationDataset, device, limit: int, n_grid: int):
    """Competition metric on up to `limit` validation images, plus a grid of sample restorations."""
    model.eval()
    rows, shown = [], []
    for i in range(min(len(dataset), limit)):
        gray, mask, rgb = dataset[i]
        pred = model(gray[None].to(device), mask[None].to(device)).float()[0]
        pred_u8, gt_u8 = to_uint8_rgb(pred), to_uint8_rgb(rgb)
        rows.append(score_image(gt_u8, pred_u8, mask[0].numpy() > 0))
        if len(shown) < n_grid:
            shown.append(((gray[0].numpy() * 255).round().astype(np.uint8), pred_u8, gt_u8))
    metrics = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    return metrics, shown


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
    use_amp = device.type == "cuda" and cfg["amp"] in ("auto", True, "bf16")

    # data: the validation fold holds whole scene clusters (see imgrestore.clustering.split)
    train_frame, val_frame = read_split(cfg["data_dir"], cfg["preproc_csv"], int(cfg["val_fold"]))
    size = cfg["image_size"]
    train_ds = RestorationDataset(train_frame, size, train=True, extra_damage=cfg["extra_damage"],
                                  flip=cfg["flip"], seed=seed)
    val_ds = RestorationDataset(val_frame, size)
    sampler = None
    if cfg["cluster_balanced"]:
        counts = train_frame["cluster"].map(train_frame["cluster"].value_counts())
        sampler = WeightedRandomSampler((1.0 / counts).to_numpy(), num_samples=len(train_frame),
                                        generator=torch.Generator())
    batch_size = min(int(cfg["batch_size"]), len(train_ds))
    shuffle_rng = torch.Generator()  # re-seeded every epoch: the order depends on (seed, epoch) only,
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,  # so a
                        drop_last=True, num_workers=int(cfg["num_workers"]),  # resumed run repeats it
                        pin_memory=device.type == "cuda",  # workers are not persistent: each epoch's
                        # workers copy the dataset after set_epoch, so augmentations change every epoch
                        generator=shuffle_rng)

    # model, loss, optimiser, schedule
    model_cfg = dict(cfg["model"])
    model = create_model(model_cfg.pop("name"), **model_cfg).to(device)
    loss_fn = build_loss(cfg["loss"])
    has_aux = "return_aux" in model.forward.__code__.co_varnames
    if resume_from:
        model.load_state_dict(load_model(resume_from).state_dict())
    if sampler is not None and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise ValueError("cluster_balanced sampling is not supported in data-parallel trials (workers > 1): "
                         "Ray Train replaces the sampler with a DistributedSampler")
    net = wrap_model(model)
    loader = wrap_loader(loader)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total_steps = max(1, int(cfg["epochs"]) * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg["warmup_frac"]))
    start_epoch, best = 0, -math.inf
    if resume_from:
        state = load_train_state(resume_from)
        optimizer.load_state_dict(state["optimizer"]), scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["extra"].get("best_score", -math.inf)

    metrics = {}
    for epoch in range(start_epoch, int(cfg["epochs"])):
        net.train()
        train_ds.set_epoch(epoch)
        shuffle_rng.manual_seed(seed * 100_003 + epoch)
        if sampler is not None:
            sampler.generator.manual_seed(seed * 100_003 + epoch)
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
        t0, seen, loss_sum, part_sums = time.perf_counter(), 0, 0.0, {}
        for gray, mask, rgb in loader:
            gray, mask, rgb = gray.to(device), mask.to(device), rgb.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if has_aux:
                    pred, gray_inpainted = net(gray, mask, return_aux=True)
                else:
                    pred, gray_inpainted = net(gray, mask), None
            loss, parts = loss_fn(pred.float(), rgb, mask)
            if gray_inpainted is not None and cfg["aux_gray_weight"]:
                true_gray = (rgb * rgb.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
                aux = torch.nn.functional.l1_loss(gray_inpainted.float(), true_gray)
                loss = loss + cfg["aux_gray_weight"] * aux
                parts = {**parts, "aux_gray": aux.detach()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # bf16 autocast (CUDA) needs no loss scaling
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            seen += gray.shape[0]
            loss_sum += loss.item() * gray.shape[0]
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + float(v) * gray.shape[0]
        train_time = time.perf_counter() - t0

        t1 = time.perf_counter()
        val, grid_rows = evaluate(model, val_ds, device, int(cfg["max_val_images"]), int(cfg["n_samples_grid"]))
        best = max(best, val.get("score", -math.inf))
        metrics = {**val, "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                   **{f"loss_{k}": v / max(seen, 1) for k, v in part_sums.items()},
                   "train_images_per_s": seen / max(train_time, 1e-9), "train_time_s": train_time,
                   "val_time_s": time.perf_counter() - t1, "lr": scheduler.get_last_lr()[0], "best_score": best}

        with tempfile.TemporaryDirectory(prefix="imgrestore-ckpt-") as d:
            save_model(model, d)
            (Path(d) / TRIAL_CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
            save_train_state(d, epoch, optimizer, scheduler, {"best_score": best})
            if grid_rows:
                restoration_grid(grid_rows, Path(d) / "val_samples.png")
            report(metrics, d)
    return metrics
