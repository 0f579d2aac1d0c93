"""The training loop: reports, checkpoints, exact resume, and the cluster-aware split."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from imgrestore.training.checkpoint import load_model
from imgrestore.training.data import RestorationDataset, load_pair
from imgrestore.training.loop import read_split, train


@pytest.fixture(scope="module")
def preproc_csv(tiny_dacon, tmp_path_factory):
    """A train_preproc_1.csv whose clusters are the source photos (the ground truth of scene groups)."""
    train = pd.read_csv(tiny_dacon / "train.csv")
    sources = pd.read_csv(tiny_dacon / "sources.csv").query("split == 'train'")
    train["cluster"] = pd.factorize(sources["photo"])[0]
    train["fold"] = train["cluster"] % 3
    path = tmp_path_factory.mktemp("pre") / "train_preproc_1.csv"
    train.to_csv(path, index=False)
    return path


def config(tiny_dacon, preproc_csv, **kw):
    return {"data_dir": str(tiny_dacon), "preproc_csv": str(preproc_csv), "image_size": None,
            "model": {"name": "unet", "base_channels": 4, "depth": 2}, "loss": {"l1": 1.0, "ssim": 0.1},
            "batch_size": 4, "epochs": 2, "max_val_images": 4, "extra_damage": 0.5, **kw}


def test_split_keeps_clusters_apart(tiny_dacon, preproc_csv):
    tr, va = read_split(str(tiny_dacon), str(preproc_csv), val_fold=1)
    assert len(tr) + len(va) == 30 and len(va) > 0
    assert not set(tr["cluster"]) & set(va["cluster"])
    assert Path(tr["input_path"].iloc[0]).is_file()
    with pytest.raises(ValueError, match="val_fold 7"):
        read_split(str(tiny_dacon), str(preproc_csv), val_fold=7)
    with pytest.raises(FileNotFoundError, match="preprocess.py"):
        read_split(str(tiny_dacon), None, 0)


def test_rebuilt_pair_keeps_the_dacon_relation(tiny_dacon):
    from PIL import Image

    gray, mask, rgb = load_pair(str(tiny_dacon / "train_input/TRAIN_00000.png"),
                                str(tiny_dacon / "train_gt/TRAIN_00000.png"), size=48)
    assert gray.shape == mask.shape == (48, 48) and rgb.shape == (48, 48, 3) and mask.any()
    pil_gray = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(gray[~mask], pil_gray[~mask])
    assert len(np.unique(gray[mask])) == 1


def test_augmentation_is_reproducible_per_epoch(tiny_dacon):
    frame = pd.DataFrame({"input_path": [str(tiny_dacon / "train_input/TRAIN_00003.png")],
                          "gt_path": [str(tiny_dacon / "train_gt/TRAIN_00003.png")]})
    ds = RestorationDataset(frame, train=True, extra_damage=1.0, seed=3)
    a = ds[0][1]
    ds.set_epoch(1)
    b = ds[0][1]
    ds.set_epoch(0)
    assert torch.equal(ds[0][1], a) and not torch.equal(a, b)


def test_train_reports_every_epoch_with_checkpoints(tiny_dacon, preproc_csv, tmp_path):
    seen = []

    def report(metrics, ckpt):
        shutil.copytree(ckpt, tmp_path / f"ckpt{metrics['epoch']}")
        seen.append(metrics)

    train(config(tiny_dacon, preproc_csv), report)
    assert [m["epoch"] for m in seen] == [1, 2]
    for key in ("score", "ssim", "masked_ssim", "hist_sim", "train_loss", "loss_l1", "loss_ssim",
                "train_images_per_s"):
        assert np.isfinite(seen[-1][key]), key
    assert -1 <= seen[-1]["score"] <= 1
    ck = tmp_path / "ckpt2"
    assert {"model.safetensors", "model.json", "train_state.pt", "trial_config.json", "val_samples.png"} <= {
        p.name for p in ck.iterdir()}
    model = load_model(ck)
    assert model.name == "unet" and json.loads((ck / "trial_config.json").read_text())["epochs"] == 2


def test_resume_continues_exactly(tiny_dacon, preproc_csv, tmp_path):
    """Two epochs straight, or one epoch then a resume from its checkpoint: the same weights."""
    cfg = config(tiny_dacon, preproc_csv, model={"name": "two_stage_unet", "base_channels": 4, "depth": 2})
    last = {}

    def keep(tag):
        def report(metrics, ckpt):
            dst = tmp_path / f"{tag}{metrics['epoch']}"
            shutil.copytree(ckpt, dst)
            last[tag] = dst
        return report

    train(cfg, keep("full"))
    train({**cfg, "epochs": 2}, keep("resumed"), resume_from=str(tmp_path / "full1"))
    assert last["resumed"].name == "resumed2"  # started at epoch 2, not 1
    a, b = load_file(str(last["full"] / "model.safetensors")), load_file(str(last["resumed"] / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_unknown_config_key_is_an_error(tiny_dacon, preproc_csv):
    with pytest.raises(KeyError, match="lerning_rate"):
        train({**config(tiny_dacon, preproc_csv), "lerning_rate": 1}, lambda m, c: None)
