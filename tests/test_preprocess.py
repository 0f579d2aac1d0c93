"""End to end: a tiny DACON folder (several crops of a few photos) -> clusters, folds, CSVs, map, MLflow run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgrestore.preprocess import TEST_CSV, TRAIN_CSV, is_stale, preprocess_params, run_preprocess, stale_reason

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CROPS = 6


def build_tiny_dacon(root: Path, crops: int = CROPS, size: int = 64, seed: int = 0) -> dict[str, str]:
    """`crops` train crops + 1 test crop per photo; returns train name -> photo (the true scene)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for folder in ("train_input", "train_gt", "test_input"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    truth, k = {}, 0
    for t, name in enumerate(PHOTOS):
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        for j in range(crops + 1):
            side = int(min(h, w) * rng.uniform(0.75, 0.95))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            rgb = Image.fromarray(img[top:top + side, left:left + side]).resize((size, size))
            gray = np.asarray(rgb.convert("L")).copy()
            gray[10:20, 10:25] = 0  # the lost region
            if j < crops:
                fname = f"TRAIN_{k:05d}.png"
                rgb.save(root / "train_gt" / fname)
                Image.fromarray(gray).save(root / "train_input" / fname)
                truth[fname], k = name, k + 1
            else:
                Image.fromarray(gray).save(root / "test_input" / f"TEST_{t:03d}.png")
    return truth


@pytest.fixture(scope="module")
def done(ray_local, tmp_path_factory):
    data = tmp_path_factory.mktemp("dacon")
    truth = build_tiny_dacon(data)
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    result = run_preprocess(data, n_folds=4, tracking_uri=uri)
    return data, truth, uri, result


def test_outputs_and_columns(done):
    data, truth, _, res = done
    train, test = pd.read_csv(data / TRAIN_CSV), pd.read_csv(data / TEST_CSV)
    assert list(train.columns) == ["img_id", "name", "input_img_path", "gt_img_path", "cluster", "fold"]
    assert list(test.columns) == ["img_id", "name", "input_img_path", "cluster"]
    assert len(train) == len(truth) and len(test) == len(PHOTOS)
    assert train["input_img_path"][0] == "./train_input/TRAIN_00000.png" and train["img_id"][0] == "TRAIN_00000"
    assert (data / train["gt_img_path"][0]).is_file()
    assert not res.reused and res.embedder == "effnet-lite0" and res.backend == "cpu"
    for key in ("cluster_map", "summary", "meta", "train_embeddings", "test_embeddings"):
        assert Path(res.paths[key]).is_file(), key
    summary = json.loads(Path(res.paths["summary"]).read_text())
    assert summary["n_embedded"] == len(truth) + len(PHOTOS) and summary["backend"] == "cpu"
    # clustering ran as a Ray task; the session's local Ray has no GPU, so it asked for none
    place = summary["cluster_placement"]
    assert place["num_gpus_requested"] == 0 and place["host"] and "no GPU" in place["reason"]
    assert place["why_not_cuml"]  # why auto did not pick cuML, resolved on the task's node
    meta = json.loads(Path(res.paths["meta"]).read_text())
    assert meta["embedder"] == "effnet-lite0" and meta["params"]["n_folds"] == 4


def test_clusters_are_the_photos_and_folds_do_not_leak(done):
    from sklearn.metrics import adjusted_rand_score

    data, truth, _, _ = done
    train, test = pd.read_csv(data / TRAIN_CSV), pd.read_csv(data / TEST_CSV)
    assert train["cluster"].nunique() >= 2
    assert adjusted_rand_score([truth[n] for n in train["name"]], train["cluster"]) > 0.7
    for _, group in train[train["cluster"] >= 0].groupby("cluster"):
        assert group["fold"].nunique() == 1, "a scene cluster is split across folds"
    assert set(test["cluster"]) <= set(train["cluster"]) | {-1}
    # each test crop gets the cluster of its photo's train crops
    photo_cluster = train.assign(photo=[truth[n] for n in train["name"]]).groupby("photo")["cluster"].agg(
        lambda s: s.mode()[0])
    hits = [photo_cluster[PHOTOS[int(n[5:8])]] == c for n, c in zip(test["name"], test["cluster"])]
    assert np.mean(hits) >= 0.75


def test_mlflow_run_logged(done):
    from mlflow.tracking import MlflowClient

    _, _, uri, res = done
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.run_id)
    assert run.data.params["embedder"] == "effnet-lite0" and run.data.params["backend_used"] == "cpu"
    assert run.data.params["cluster_num_gpus"] == "0" and run.data.params["cluster_host"]
    assert run.data.metrics["n_clusters"] == res.summary["n_clusters"]
    assert "noise_share" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "preprocess"
    names = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"cluster_map.png", "preprocess_summary.json", TRAIN_CSV, TEST_CSV} <= names


def test_rerun_is_a_cache_hit_and_staleness(done):
    data, _, uri, first = done
    assert not is_stale(data) and not is_stale(data, {"n_folds": 4, "embedder": "effnet"})
    assert "n_folds" in stale_reason(data, {"n_folds": 5})
    again = run_preprocess(data, n_folds=4, tracking_uri=uri)
    assert again.reused and again.run_id == first.run_id
    forced = run_preprocess(data, n_folds=4, tracking_uri=uri, force=True)
    assert not forced.reused and forced.summary["n_embedded"] == 0
    assert forced.summary["n_cached"] == len(first.train) + len(first.test)
    np.testing.assert_array_equal(forced.train["cluster"], first.train["cluster"])
    assert preprocess_params(n_folds=4)["min_cluster_size"] == 5


def test_changed_file_makes_outputs_stale(done, tmp_path):
    import shutil

    src, truth, _, first = done
    data, out = tmp_path / "d", tmp_path / "out"
    shutil.copytree(src, data, ignore=shutil.ignore_patterns("preprocess", "*_preproc_1.csv"))
    cache = Path(first.paths["cache_dir"])  # same bytes as the first dataset: all cached, no Ray job
    res = run_preprocess(data, out_dir=out, n_folds=3, log_mlflow=False, cache_dir=cache)
    assert res.summary["n_embedded"] == 0 and len(res.train) == len(truth)
    # paths stay relative to the dataset root (DACON's convention), so training finds the files from data/
    # whichever folder the CSV is written to
    from imgrestore.training.loop import read_split

    assert res.train["gt_img_path"][0].startswith("./train_gt/")
    tr, va = read_split(str(data), str(out / "train_preproc_1.csv"), 0)
    assert all(Path(p).is_file() and Path(p).is_relative_to(data) for p in [*tr["gt_path"], *va["input_path"]])
    assert not is_stale(data, out_dir=out) and is_stale(data)  # nothing was written into data/
    gt = data / "train_gt" / "TRAIN_00003.png"
    Image.fromarray(np.asarray(Image.open(gt))[::-1].copy()).save(gt)  # new content, same name and size
    os.utime(gt, ns=(gt.stat().st_atime_ns, gt.stat().st_mtime_ns + 10**9))
    assert "changed" in stale_reason(data, out_dir=out)
    rerun = run_preprocess(data, out_dir=out, n_folds=3, log_mlflow=False, cache_dir=cache)
    assert rerun.summary["n_embedded"] == 1 and rerun.summary["n_cached"] == len(truth) + len(PHOTOS) - 1
    # a file whose bytes equal an already embedded one costs nothing (the cache is keyed by content)
    (data / "train_gt" / "TRAIN_00000.png").write_bytes(gt.read_bytes())
    again = run_preprocess(data, out_dir=out, n_folds=3, log_mlflow=False, cache_dir=cache)
    assert again.summary["n_embedded"] == 0


def test_tiny_dataset_does_not_crash(ray_local, tmp_path):
    import shutil

    data = tmp_path / "d"
    build_tiny_dacon(data, crops=1)  # small-n handling: UMAP / HDBSCAN parameters clipped, PCA map
    for folder in ("train_gt", "train_input"):  # keep 3 train images
        for p in sorted((data / folder).iterdir())[3:]:
            p.unlink()
    shutil.rmtree(data / "test_input")
    with pytest.warns(UserWarning, match="using 3 folds"):  # 3 noise images = 3 groups for 5 folds
        res = run_preprocess(data, log_mlflow=False)
    assert len(res.train) == 3 and (res.train["cluster"] == -1).all() and len(res.test) == 0
    assert res.summary["adjustments"] and res.summary["n_folds"] == 3


def test_cli_prints_a_summary(done):
    data, _, uri, _ = done
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "preprocess.py"), "--data", str(data),
                           "--folds", "4", "--tracking-uri", uri, "--embedder", "effnet-lite0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "up to date, reused" in proc.stdout and "clusters" in proc.stdout
    assert "cluster backend" in proc.stdout and "cluster placement" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "pipelines" / "preprocess.py"), "--data", str(data / "nope")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_cli_default_embedder_is_tunes_and_fails_fast_offline(tmp_path):
    """Without --embedder, preprocess.py embeds as `tune.py --data` does (CLIP geolocal/StreetCLIP), so the search
    reuses its outputs; with neither the weights cached nor the hub reachable that is an error line in seconds,
    after the data were validated and before anything was embedded or written."""
    import os
    import time

    build_tiny_dacon(tmp_path, crops=1)
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "preprocess.py"), "--data", str(tmp_path),
                           "--no-mlflow"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: the default embedder clip:geolocal/StreetCLIP cannot be loaded" in proc.stderr
    assert "--embedder effnet-lite0" in proc.stderr and time.perf_counter() - t0 < 60
    assert not (tmp_path / "train_preproc_1.csv").exists()


def test_cli_corrupt_image_is_an_error_line(tmp_path, corrupt_png):
    build_tiny_dacon(tmp_path, crops=1)
    bad = sorted((tmp_path / "train_gt").iterdir())[0]
    bad.write_bytes(corrupt_png(Image.open(bad).copy(), "short"))
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "preprocess.py"), "--data", str(tmp_path),
                           "--no-mlflow"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"train_gt/{bad.name}: corrupt or unreadable image" in proc.stderr


def test_crops_of_one_photo_stay_on_one_side(ray_local, tiny_dacon, tmp_path):
    """A dataset built from photos records each crop's photo (sources.csv): no validation image may have a
    sibling crop in training, whatever the clusters say."""
    from imgrestore.benchmarking.quality import photo_overlap
    from imgrestore.preprocess import train_sources

    res = run_preprocess(tiny_dacon, tmp_path / "out", n_folds=3, log_mlflow=False)
    assert res.summary["folds_group_source_photos"] is True
    split = Path(res.paths["train_csv"])
    folds = pd.read_csv(split)["fold"]
    assert res.summary["n_folds"] >= 2 and (folds != 0).sum() >= len(folds) / 2  # a real split, not all in fold 0
    for fold in range(res.summary["n_folds"]):
        assert photo_overlap(split, tiny_dacon / "sources.csv", fold) == 0
    names = pd.read_csv(split)["name"]
    assert train_sources(tmp_path, names) is None  # no sources.csv: a real DACON folder
    (tmp_path / "sources.csv").write_text("split,image\ntrain,x\n")
    with pytest.raises(ValueError, match="sources.csv: not a sources file"):
        train_sources(tmp_path, names)
