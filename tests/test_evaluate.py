"""Validation scoring: the batched torch metric (used on GPUs) gives what the CPU metric gives, calibration too."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imgrestore.models import create_model
from imgrestore.models.color import lock_luma, lock_luma_torch
from imgrestore.training.data import RestorationDataset
from imgrestore.training.evaluate import evaluate, metric_backend


def _coloured_model(seed: int = 0):
    """An effnet-free learned family whose (zero-initialised) colour head is given random colour, so that the
    gain calibration has a real choice to make."""
    torch.manual_seed(seed)
    model = create_model("unet", base_channels=8, depth=2, chroma="regression")
    head = model.chroma_head
    torch.nn.init.normal_(head[-1].weight, std=0.2)
    return model


@pytest.fixture(scope="module")
def val_set(tiny_dacon):
    f = pd.read_csv(tiny_dacon / "train.csv")
    frame = pd.DataFrame({"name": f["input_img_path"].map(lambda p: p.split("/")[-1]),
                          "input_path": [str(tiny_dacon / p) for p in f["input_img_path"]],
                          "gt_path": [str(tiny_dacon / p) for p in f["gt_img_path"]]})
    return RestorationDataset(frame.iloc[:11], 64)  # 11: batches of 4, 4, 3; calibration on 6 (mid-batch)


def test_torch_metric_backend_scores_as_the_cpu_metric(val_set):
    got = {}
    for metric in ("numpy", "torch"):
        model = _coloured_model()
        got[metric] = evaluate(model, val_set, "cpu", 11, 3, calibration_images=6, batch_size=4, metric=metric)
    (a, grid_a), (b, grid_b) = got["numpy"], got["torch"]
    assert a.keys() == b.keys() and {"score", "ssim", "masked_ssim", "hist_sim", "chroma_gain"} <= a.keys()
    assert a["chroma_gain"] == b["chroma_gain"] and a["hole_chroma"] == b["hole_chroma"]
    for k in a:
        assert abs(a[k] - b[k]) < 1e-9, (k, a[k], b[k])
    assert len(grid_a) == len(grid_b) == 3
    for ra, rb in zip(grid_a, grid_b):
        for x, y in zip(ra, rb):
            assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y)


def test_metric_backend_choice():
    assert metric_backend("auto", "cpu") == "numpy"
    assert metric_backend("auto", torch.device("cuda", 0)) == "torch"
    assert metric_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="metric must be one of"):
        metric_backend("gpu", "cpu")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_lock_luma_torch_matches_numpy(device):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    rgb[0, :5] = 255  # saturated pixels, where the luma cannot be locked by adding: they become gray
    gray = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    keep = rng.random((3, 40, 50)) < 0.7
    want = np.stack([lock_luma(rgb[i], gray[i], keep[i]) for i in range(3)])
    got = lock_luma_torch(torch.from_numpy(rgb).permute(0, 3, 1, 2).to(device), torch.from_numpy(gray).to(device),
                          torch.from_numpy(keep).to(device))
    assert np.array_equal(got.permute(0, 2, 3, 1).cpu().numpy(), want)


@pytest.mark.parametrize("metric", ["numpy", "torch"])
def test_nothing_to_score_is_no_calibration_and_no_crash(val_set, metric):
    model = _coloured_model()
    got, grid = evaluate(model, val_set, "cpu", 0, 2, metric=metric)
    assert got == {} and grid == [] and model.chroma_gain == 1.0
