"""Datasets from real photos: make_dataset.py and the embedded default."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgrestore.data.build import BuildConfig, build_dataset
from imgrestore.data.dacon import load_dataset
from imgrestore.data.embedded import bundled_photos, embedded_dataset
from imgrestore.data.masks import true_mask

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_photos_are_real_colour_photos():
    photos = bundled_photos()
    assert len(photos) >= 20
    for name, load in photos:
        rgb = load()
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 256, name
        assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).mean() > 3, f"{name} looks gray"


def test_built_dataset_is_valid_dacon_with_photo_disjoint_test(tiny_dacon):
    ds = load_dataset(tiny_dacon)
    assert len(ds.train) == 30 and len(ds.test) == 6
    assert sorted(p.name for p in (tiny_dacon / "test_gt").iterdir()) == sorted(ds.test["name"])
    sources = pd.read_csv(tiny_dacon / "sources.csv")
    train_photos = set(sources.query("split == 'train'")["photo"])
    test_photos = set(sources.query("split == 'test'")["photo"])
    assert train_photos and test_photos and not train_photos & test_photos
    for row in ds.train.head(5).itertuples():
        gray = np.asarray(Image.open(row.input_path))
        gt = np.asarray(Image.open(row.gt_path))
        mask = true_mask(gray, gt)
        assert 0.005 < mask.mean() < 0.16
        assert len(np.unique(gray[mask])) == 1


def test_build_is_reproducible_and_refuses_to_overwrite(tmp_path):
    photos = bundled_photos()[:4]
    cfg = BuildConfig(size=32, n_train=6, n_test=2, seed=5)
    a = build_dataset(photos, tmp_path / "a", cfg, progress=False)
    b = build_dataset(photos, tmp_path / "b", cfg, progress=False)
    for sub in ("train_input/TRAIN_00003.png", "train_gt/TRAIN_00003.png", "test_input/TEST_00001.png"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        build_dataset(photos, a, cfg, progress=False)
    assert (a / "train.csv").is_file()  # untouched


def test_make_dataset_cli(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, load in bundled_photos()[:3]:
        Image.fromarray(load()).save(photos / f"{name}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["make_dataset.py", "--photos", str(photos), "--out", str(tmp_path / "out"), "--size", "48",
            "--train", "5", "--test", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "pipelines" / "make_dataset.py"), run_name="__main__")
    assert e.value.code == 2 and "broken.jpg" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written
    (photos / "broken.jpg").unlink()
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "pipelines" / "make_dataset.py"), run_name="__main__")
    assert e.value.code == 0 and "5 train pairs, 2 test inputs" in capsys.readouterr().out


def test_embedded_dataset_is_built_once_and_cached(tmp_path):
    cfg = BuildConfig(size=32, n_train=8, n_test=2, seed=1)
    first = embedded_dataset(cfg, root=tmp_path)
    stamp = (first / "train.csv").stat().st_mtime_ns
    assert embedded_dataset(cfg, root=tmp_path) == first
    assert (first / "train.csv").stat().st_mtime_ns == stamp
    assert len(load_dataset(first).train) == 8
