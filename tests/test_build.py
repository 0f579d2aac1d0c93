"""Datasets from real photos: make_dataset.py and the embedded default."""
from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgrestore.data.build import BuildConfig, build_dataset, photos_in
from imgrestore.data.dacon import load_dataset
from imgrestore.data.embedded import ASSETS, bundled_photos, embedded_dataset
from imgrestore.data.masks import true_mask

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_photos_are_real_colour_photos():
    photos = bundled_photos()
    assert len(photos) >= 90
    assert len({name for name, _ in photos}) == len(photos)  # photo names key the train/test split
    for name, load in photos:
        rgb = load()
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 256, name
        assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).mean() > 3, f"{name} looks gray"


def test_attribution_names_every_bundled_photo():
    attribution = (ASSETS / "ATTRIBUTION.md").read_text(encoding="utf-8")
    missing = [name for name, _ in photos_in(ASSETS)
               if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", attribution)]
    assert not missing, f"bundled photos without an entry in ATTRIBUTION.md: {missing}"


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


def _photo_folder(tmp_path, n=3):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, load in bundled_photos()[:n]:
        Image.fromarray(load()).save(photos / f"{name}.jpg")
    return photos


def _run_make_dataset(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["make_dataset.py", "--size", "32", "--train", "4", "--test", "1", *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "pipelines" / "make_dataset.py"), run_name="__main__")
    return e.value.code


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_make_dataset_never_touches_the_photo_folder(tmp_path, monkeypatch, capsys, where):
    photos = _photo_folder(tmp_path)
    before = sorted((p.name, p.read_bytes()) for p in photos.iterdir())
    out = {"same": photos, "inside": photos / "dataset", "parent": tmp_path}[where]
    code = _run_make_dataset(monkeypatch, "--photos", str(photos), "--out", str(out), "--overwrite")
    assert code == 2 and "photo folder" in capsys.readouterr().err
    assert sorted((p.name, p.read_bytes()) for p in photos.iterdir()) == before


def test_overwrite_replaces_only_a_folder_it_built(tmp_path, monkeypatch, capsys):
    photos = _photo_folder(tmp_path)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    code = _run_make_dataset(monkeypatch, "--photos", str(photos), "--out", str(mine), "--overwrite")
    assert code == 2 and "not a dataset built by imgrestore" in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text() == "years of work"

    out = tmp_path / "ds"
    assert _run_make_dataset(monkeypatch, "--photos", str(photos), "--out", str(out)) == 0
    (out / "train_gt" / "TRAIN_00000.png").unlink()
    assert _run_make_dataset(monkeypatch, "--photos", str(photos), "--out", str(out), "--overwrite") == 0
    assert (out / "train_gt" / "TRAIN_00000.png").is_file()  # a built dataset is rebuilt
    assert not list(tmp_path.glob(".ds.*"))  # no temporary or old folder left behind

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run_make_dataset(monkeypatch, "--photos", str(photos), "--out", str(empty)) == 0
    assert (empty / "train.csv").is_file()
