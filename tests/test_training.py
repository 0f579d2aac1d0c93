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
    # the "before" picture (untrained model) travels with the first checkpoint only
    assert (tmp_path / "ckpt1" / "val_samples_untrained.png").is_file() and not (ck / "val_samples_untrained.png").exists()


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


def _learning_run(tiny_dacon, tmp_path, monkeypatch, no_op: bool, epochs: int, model: dict | None = None,
                  loss: dict | None = None, key: str = "score") -> tuple[float, float]:
    """Train a tiny model on 6 images and score it on those same images: (score after, untrained score).

    The untrained model returns its Telea prefill as a gray image (zero-initialised heads): already better
    than the input copy, so it is the bar. `no_op`: the optimizer's step does nothing.
    """
    from imgrestore.models import create_model
    from imgrestore.training.evaluate import evaluate

    train_csv = pd.read_csv(tiny_dacon / "train.csv").head(6)
    frame = pd.concat([train_csv.assign(fold=0), train_csv.assign(fold=1)])  # validate on the training images
    csv = tmp_path / f"own-{no_op}.csv"
    frame.assign(cluster=0).to_csv(csv, index=False)
    model = model or {"name": "unet", "base_channels": 8, "depth": 2}
    _, val = read_split(str(tiny_dacon), str(csv), 0)
    untrained, _ = evaluate(create_model(**model), RestorationDataset(val), "cpu", 6, 0, calibrate=False)
    if no_op:
        monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    cfg = {"data_dir": str(tiny_dacon), "preproc_csv": str(csv), "val_fold": 0, "image_size": None, "model": model,
           "loss": loss or {"l1": 1.0}, "batch_size": 6, "epochs": epochs, "lr": 1e-2, "warmup_frac": 0.0,
           "weight_decay": 0.0, "grad_clip": 0.0, "max_val_images": 6, "extra_damage": 0.0, "flip": False,
           "calibrate_gain": False, "n_samples_grid": 0}
    seen = []
    torch.manual_seed(0)
    train(cfg, lambda metrics, ckpt: seen.append(metrics))
    return seen[-1][key], untrained[key]


def learned(after: float, untrained: float) -> bool:
    """The check: training added at least 0.03 to the competition score (the untrained model scores ~0.38)."""
    return after > untrained + 0.03


def test_training_learns_and_a_no_op_optimizer_fails_the_test(tiny_dacon, tmp_path, monkeypatch):
    """A short run must beat the untrained model (the classical prefill) on its own images; with an optimizer
    that never steps, the same check must fail."""
    after, untrained = _learning_run(tiny_dacon, tmp_path, monkeypatch, no_op=False, epochs=60)
    assert learned(after, untrained), (after, untrained)
    after, untrained = _learning_run(tiny_dacon, tmp_path, monkeypatch, no_op=True, epochs=8)
    assert not learned(after, untrained), (after, untrained)
    assert abs(after - untrained) < 1e-9  # nothing learnt: exactly the untrained model's score


def test_a_luma_only_model_learns_the_hole_and_a_no_op_optimizer_fails_the_test(tiny_dacon, tmp_path,
                                                                                monkeypatch):
    """The CPU spaces' recipe (chroma: none, the metric's M as the loss): its only way to score higher is the
    lost region's gray, so the check is on M; an optimizer that never steps must fail it."""
    model = {"name": "unet", "base_channels": 8, "depth": 2, "chroma": "none"}
    loss = {"l1": 1.0, "metric_m": 1.0}
    after, untrained = _learning_run(tiny_dacon, tmp_path, monkeypatch, False, 60, model, loss, "masked_ssim")
    assert after > untrained + 0.05, (after, untrained)
    after, untrained = _learning_run(tiny_dacon, tmp_path, monkeypatch, True, 8, model, loss, "masked_ssim")
    assert abs(after - untrained) < 1e-9


def test_classical_model_is_evaluated_once(tiny_dacon, preproc_csv):
    seen = []
    train(config(tiny_dacon, preproc_csv, model={"name": "telea"}, epochs=5), lambda m, c: seen.append(m))
    assert [m["epoch"] for m in seen] == [1] and seen[0]["train_loss"] == 0 and "chroma_gain" not in seen[0]


def test_only_rank_zero_validates_under_data_parallel(tiny_dacon, preproc_csv, monkeypatch):
    """DDP workers other than rank 0 train and report the epoch, but neither validate nor write a checkpoint."""
    from imgrestore.training import loop

    calls, seen = [], []
    monkeypatch.setattr(loop, "_main_rank", lambda: False)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: calls.append(1) or ({"score": 0.0}, []))
    train(config(tiny_dacon, preproc_csv), lambda m, c: seen.append((m, sorted(p.name for p in Path(c).iterdir()))))
    assert not calls and [m["epoch"] for m, _ in seen] == [1, 2]
    assert all("score" not in m and "train_loss" in m and files == [] for m, files in seen)


def test_out_of_memory_ends_the_trial_with_a_clear_report_and_no_retry(tiny_dacon, preproc_csv, monkeypatch, capsys):
    """A trial that runs out of (GPU) memory reports it (score -inf, no checkpoint) and returns normally, so Tune
    ends it instead of retrying a configuration that cannot fit."""
    import math

    from imgrestore.training import loop

    real, seen = loop.train_step, []

    def step(*a, **k):
        if seen:  # in epoch 2, once epoch 1 has reported
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_step", step)
    last = train(config(tiny_dacon, preproc_csv, epochs=3), lambda m, c: seen.append((m, c)))
    assert [m["epoch"] for m, _ in seen] == [1, 2] and seen[0][1] is not None and seen[1][1] is None
    assert last is seen[1][0] and last["out_of_memory"] == 1.0 and last["score"] == -math.inf
    assert last["best_score"] == seen[0][0]["best_score"]
    assert "out of memory in epoch 2" in last["error"] and "batch_size 4" in last["error"]
    assert "not retried" in capsys.readouterr().err


def test_amp_setting_is_checked(tiny_dacon, preproc_csv):
    with pytest.raises(ValueError, match="amp must be one of"):
        train(config(tiny_dacon, preproc_csv, amp="fp8"), lambda m, c: None)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train(config(tiny_dacon, preproc_csv, epochs=-1), lambda m, c: None)


def test_photos_without_pairs_become_training_pairs(tiny_dacon, preproc_csv):
    from PIL import Image

    from imgrestore.data.embedded import bundled_photos
    from imgrestore.training.data import PhotoCrops

    crops = PhotoCrops(bundled_photos()[:3], size=48, per_epoch=5, seed=1)
    gray, mask, rgb = crops[2]
    assert gray.shape == mask.shape == (1, 48, 48) and rgb.shape == (3, 48, 48) and mask.sum() > 0
    g8 = (gray[0] * 255).round().byte().numpy()
    pil = np.asarray(Image.fromarray((rgb.permute(1, 2, 0) * 255).round().byte().numpy()).convert("L"))
    keep = mask[0].numpy() == 0
    assert np.array_equal(g8[keep], pil[keep])  # the DACON relation: outside the damage, the photo's gray
    assert torch.equal(crops[2][0], gray)  # reproducible per (seed, epoch, index)
    crops.set_epoch(1)
    assert not torch.equal(crops[2][0], gray)
    seen = []
    train(config(tiny_dacon, preproc_csv, image_size=48, epochs=1, extra_photos="bundled", extra_per_epoch=8),
          lambda m, c: seen.append(m))
    assert seen and np.isfinite(seen[0]["train_loss"])
    with pytest.raises(ValueError, match="image_size"):
        train(config(tiny_dacon, preproc_csv, image_size=None, extra_photos="bundled", extra_per_epoch=8),
              lambda m, c: None)


def test_uint8_training_batches_equal_the_float_ones(tiny_dacon):
    """The training loader hands over uint8 tensors (a quarter of the bytes) and the fill in uint8;
    batch_to_device must give exactly the float batch, fill included, that the float path gives."""
    from torch.utils.data import default_collate

    from imgrestore.models.prefill import PrefillCollate
    from imgrestore.training.data import batch_to_device

    frame = pd.DataFrame({"input_path": [str(tiny_dacon / f"train_input/TRAIN_0000{i}.png") for i in range(4)],
                          "gt_path": [str(tiny_dacon / f"train_gt/TRAIN_0000{i}.png") for i in range(4)]})
    kw = dict(train=True, extra_damage=0.5, seed=1)
    as_float, as_uint8 = RestorationDataset(frame, 48, **kw), RestorationDataset(frame, 48, uint8=True, **kw)
    for ds in (as_float, as_uint8):
        ds.set_epoch(2)  # flips and fresh damage in play
    items_f, items_u = [as_float[i] for i in range(4)], [as_uint8[i] for i in range(4)]
    assert items_u[0][0].dtype == items_u[0][1].dtype == items_u[0][2].dtype == torch.uint8
    collate = PrefillCollate("telea", 5)
    got = batch_to_device(collate(items_u), "cpu")
    want = batch_to_device(collate(items_f), "cpu")
    assert got[3].shape == (4, 1, 48, 48) and (got[1] > 0).any()
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(batch_to_device(default_collate(items_u), "cpu"),
                                                 default_collate(items_f)))
    # the extra photos' crops too, and the arrays the chroma class weights read back from either
    from imgrestore.data.embedded import bundled_photos
    from imgrestore.training.data import EpochConcat, PhotoCrops

    crops = [PhotoCrops(bundled_photos()[:2], 40, 3, seed=2, uint8=u) for u in (False, True)]
    for a, b in zip(crops[0][1], batch_to_device(crops[1][1], "cpu")):
        assert torch.equal(a, b)
    for a, b in zip(EpochConcat([crops[0]]).pair(1), EpochConcat([crops[1]]).pair(1)):
        assert np.array_equal(a, b)


def test_num_workers_auto_and_bad_values():
    import os

    from imgrestore.training.loop import loader_workers, with_defaults

    assert loader_workers("auto") == len(os.sched_getaffinity(0)) - 1
    assert loader_workers(3) == 3 and loader_workers("2") == 2 and loader_workers(0) == 0
    for bad in (-1, "many", 1.5, None, True, False, "AUTO"):
        with pytest.raises(ValueError, match="num_workers must be an integer >= 0 or 'auto'"):
            with_defaults({"num_workers": bad})
