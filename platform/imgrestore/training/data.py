"""PyTorch datasets of (damaged gray, mask, colour truth) for training and validation.

The mask of a real pair is recovered exactly (`input != gray(gt)`). When the training size differs from
the file size, the pair is rebuilt at the new size rather than resized: the ground truth is resized, its
Pillow gray is taken, and the (nearest-resized) region is filled with the original fill value, so the
input/truth relation stays exactly the one the competition uses.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from imgrestore.data.damage import DamageConfig, apply_damage
from imgrestore.data.io import read_gray, read_rgb
from imgrestore.data.masks import true_mask
from imgrestore.models.color import lock_luma


def to_tensors(gray: np.ndarray, mask: np.ndarray, rgb: np.ndarray | None = None):
    """uint8 arrays -> float tensors in [0,1]: gray (1,H,W), mask (1,H,W), rgb (3,H,W)."""
    g = torch.tensor(gray, dtype=torch.float32).div_(255).unsqueeze(0)  # torch.tensor copies: arrays from
    m = torch.tensor(mask, dtype=torch.float32).unsqueeze(0)              # Pillow are read-only
    if rgb is None:
        return g, m
    return g, m, torch.tensor(rgb, dtype=torch.float32).div_(255).permute(2, 0, 1).contiguous()


def to_uint8_tensors(gray: np.ndarray, mask: np.ndarray, rgb: np.ndarray):
    """uint8 arrays -> uint8 tensors: gray (1,H,W), mask (1,H,W) of 0/1, rgb (3,H,W). What the training loader
    hands over: a quarter of the float bytes to pass between processes, pin and copy to the GPU, and no float
    conversion in the workers; ``batch_to_device`` converts on the device."""
    # np.array copies: Pillow's arrays are read-only and flips have negative strides
    g = torch.from_numpy(np.array(gray, dtype=np.uint8, order="C")).unsqueeze(0)
    m = torch.from_numpy(np.array(mask, dtype=np.uint8, order="C")).unsqueeze(0)
    return g, m, torch.from_numpy(np.array(np.transpose(rgb, (2, 0, 1)), dtype=np.uint8, order="C"))


_LEVELS = torch.arange(256, dtype=torch.float32).div_(255)  # level / 255 as the CPU divides (to_tensors)
_LEVELS_ON: dict = {}


def batch_to_device(batch, device) -> list[torch.Tensor]:
    """A training batch (gray, mask, rgb[, filled]) on `device` as float in [0, 1], exactly as ``to_tensors``
    makes it: uint8 tensors (``to_uint8_tensors``) are converted after the copy, float ones only copied. The
    conversion looks the 256 levels up in a table divided on the CPU: a CUDA kernel divides a tensor by a number
    as a multiplication by its reciprocal, one float step off for about half the levels."""
    out = []
    for i, t in enumerate(batch):
        t = t.to(device, non_blocking=True)
        if t.dtype == torch.uint8:
            if i == 1:  # the mask, already 0/1
                t = t.float()
            else:
                key = str(t.device)
                if key not in _LEVELS_ON:
                    _LEVELS_ON[key] = _LEVELS.to(t.device)
                t = _LEVELS_ON[key][t.long()]
        out.append(t)
    return out


def to_uint8_rgb(pred: torch.Tensor) -> np.ndarray:
    """(3,H,W) float in [0,1] -> (H,W,3) uint8, rounded."""
    return pred.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def to_uint8_restored(pred: torch.Tensor, gray: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """A model's (3,H,W) output as the uint8 RGB image it restores: rounded, and outside the mask its Pillow
    gray made exactly the input's (``models.color.lock_luma``; rounding R, G, B alone can move it by a level).

    gray, mask: (1,H,W) in [0,1], as the model got them.
    """
    gray_u8 = gray[0].detach().float().mul(255).round().byte().cpu().numpy()
    keep = mask[0].detach().cpu().numpy() < 0.5
    return lock_luma(to_uint8_rgb(pred), gray_u8, keep)


def load_pair(input_path: str, gt_path: str, size: int | None = None):
    """Read a train pair and return (gray, mask, rgb) uint8/bool arrays, rebuilt at size x size if given."""
    gray, rgb = read_gray(input_path), read_rgb(gt_path)
    mask = true_mask(gray, rgb)
    if size is None or gray.shape == (size, size):
        return gray, mask, rgb
    fill = int(np.bincount(gray[mask]).argmax()) if mask.any() else 0
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    gray = np.asarray(Image.fromarray(rgb).convert("L")).copy()
    gray[mask] = fill
    return gray, mask, rgb


class RestorationDataset(Dataset):
    """Train/validation pairs from a frame with `input_path` and `gt_path` columns.

    extra_damage: probability of replacing the real damage by freshly generated damage on the same
    ground truth (more masks per photo); flip: random horizontal flips. Both only when `train=True`.
    uint8: items as ``to_uint8_tensors`` makes them (the training loader's), else float tensors.
    Pairs are decoded when asked for, never cached: a cache per DataLoader worker grows to the whole
    dataset in every worker (the DACON train set is ~37 GB decoded at 512 px), while decoding a PNG costs
    milliseconds beside a training step.
    """

    def __init__(self, frame: pd.DataFrame, size: int | None = None, train: bool = False,
                 extra_damage: float = 0.0, flip: bool = True, seed: int = 0,
                 damage: DamageConfig = DamageConfig(), uint8: bool = False):
        self.frame = frame.reset_index(drop=True)
        self.size, self.train = size, train
        self.extra_damage, self.flip, self.seed, self.damage = extra_damage, flip, seed, damage
        self.uint8 = bool(uint8)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        """Different augmentations each epoch, the same ones for the same (seed, epoch, index)."""
        self.epoch = epoch

    def pair(self, i: int):
        row = self.frame.iloc[i]
        return load_pair(row["input_path"], row["gt_path"], self.size)

    def __getitem__(self, i: int):
        gray, mask, rgb = self.pair(i)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if self.extra_damage and rng.random() < self.extra_damage:
                damaged = apply_damage(rgb, rng, self.damage)
                gray, mask = damaged.gray, damaged.mask
            if self.flip and rng.random() < 0.5:
                gray, mask, rgb = gray[:, ::-1], mask[:, ::-1], rgb[:, ::-1]
        return _tensors(gray, mask, rgb, self.uint8)


def _tensors(gray, mask, rgb, uint8: bool):
    if uint8:
        return to_uint8_tensors(gray, mask, rgb)
    return to_tensors(np.ascontiguousarray(gray), np.ascontiguousarray(mask), np.ascontiguousarray(rgb))


class PhotoCrops(Dataset):
    """Training pairs made on the fly from colour photos that have no damage pairs (colourisation is
    self-supervised: any colour photo teaches colour). Each epoch draws `per_epoch` random square crops
    (``imgrestore.data.build.random_square_crop``), resized to `size`, damaged by the damage model.

    photos: ``[(name, loader returning RGB uint8)]`` (``imgrestore.data.build.photos_in(folder)`` or
    ``imgrestore.data.embedded.bundled_photos()``). They must not show the validation images' scenes, or
    validation stops predicting held-out photos (the caller's responsibility: nothing here can know).
    """

    def __init__(self, photos, size: int, per_epoch: int, seed: int = 0, flip: bool = True,
                 damage: DamageConfig = DamageConfig(), uint8: bool = False):
        if not photos:
            raise ValueError("extra photos: the folder holds no photos")
        if not size:
            raise ValueError("extra photos need a fixed image_size (crops are resized to it)")
        self.photos, self.size, self.per_epoch = list(photos), int(size), int(per_epoch)
        self.seed, self.flip, self.damage, self.epoch = seed, flip, damage, 0
        self.uint8 = bool(uint8)  # items as RestorationDataset(uint8=) gives them

    def __len__(self) -> int:
        return self.per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        from imgrestore.data.build import random_square_crop

        rng = np.random.default_rng((self.seed, 7919, self.epoch, i))  # 7919: apart from the pairs' streams
        name, load = self.photos[int(rng.integers(len(self.photos)))]
        rgb, _ = random_square_crop(load(), self.size, rng)
        damaged = apply_damage(rgb, rng, self.damage)
        gray, mask = damaged.gray, damaged.mask
        if self.flip and rng.random() < 0.5:
            gray, mask, rgb = gray[:, ::-1], mask[:, ::-1], rgb[:, ::-1]
        return _tensors(gray, mask, rgb, self.uint8)


def extra_photo_sources(spec: str):
    """'bundled' (the photos the embedded default is built from) or a folder of colour photos."""
    from imgrestore.data.build import photos_in
    from imgrestore.data.embedded import bundled_photos

    return bundled_photos() if spec == "bundled" else photos_in(spec)


class EpochConcat(ConcatDataset):
    """ConcatDataset that passes set_epoch on to its parts."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def pair(self, i: int):
        """The (gray, mask, rgb) arrays of item i (the chroma class weights read the training truths)."""
        for d in self.datasets:
            if i < len(d):
                return d.pair(i) if hasattr(d, "pair") else _as_arrays(d[i])
            i -= len(d)
        raise IndexError(i)


def _as_arrays(item):
    gray, mask, rgb = item
    if gray.dtype == torch.uint8:
        return gray[0].numpy(), mask[0].numpy() > 0, rgb.permute(1, 2, 0).numpy()
    return ((gray[0] * 255).round().byte().numpy(), mask[0].numpy() > 0,
            (rgb.permute(1, 2, 0) * 255).round().byte().numpy())
