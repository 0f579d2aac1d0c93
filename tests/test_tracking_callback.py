"""The Tune -> MLflow callback (imgrestore.tracking.tune_callback), driven by hand with fake trials: which
metrics a trial run gets, the best epoch, and the restoration images (no Ray cluster needed)."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from ray import tune

from imgrestore.tracking import get_or_create_experiment, setup_tracking
from imgrestore.tracking.tune_callback import (
    BEST_IMAGE,
    IMAGE_KEY,
    RUN_NOTE,
    SAMPLES_FILE,
    UNTRAINED_SAMPLES_FILE,
    MLflowTrialLogger,
    epoch_metrics,
    label_image,
)

CONFIG = {"model": {"name": "unet", "base_channels": 4}, "lr": 0.001, "loss": {"l1": 1.0, "hue_hist": 0.1},
          "epochs": 3, "data_dir": "/data"}


class FakeTrial:
    def __init__(self, trial_id: str = "abc_00000"):
        self.trial_id, self.config, self.last_result = trial_id, CONFIG, None

    def __str__(self):
        return f"train_trial_{self.trial_id}"


def tune_result(epoch: int, score: float, best: float) -> dict:
    """What Tune hands on_trial_result for one epoch of imgrestore.training.loop (with Tune's own keys)."""
    return {"score": score, "ssim": 0.5, "masked_ssim": 0.4, "hist_sim": 0.3, "chroma_gain": 1.0, "epoch": epoch,
            "train_loss": 0.1 / epoch, "loss_l1": 0.1, "lr": 1e-3, "train_time_s": 1.0, "val_time_s": 0.5,
            "train_images_per_s": 10.0, "best_score": best, "node_id": "n1",
            "timestamp": 1_700_000_000 + epoch, "checkpoint_dir_name": f"checkpoint_{epoch - 1:06d}",
            "done": False, "training_iteration": epoch, "trial_id": "abc_00000", "date": "2024-01-01_00-00-00",
            "time_this_iter_s": 1.5, "time_total_s": 1.5 * epoch, "pid": 123, "hostname": "h", "node_ip": "1.2.3.4",
            "time_since_restore": 1.5 * epoch, "iterations_since_restore": epoch, "config": CONFIG,
            "experiment_tag": "0_lr=0.001", "should_checkpoint": True}


@pytest.fixture
def logger(tmp_path):
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    exp = get_or_create_experiment("cb", uri)
    parent = MlflowClient(uri).create_run(exp, run_name="parent").info.run_id
    return MLflowTrialLogger(uri, exp, parent)


def checkpoint_with(tmp_path, epoch: int, colour, untrained=False) -> tune.Checkpoint:
    d = tmp_path / f"checkpoint_{epoch:06d}"
    d.mkdir()
    Image.new("RGB", (96, 32), colour).save(d / SAMPLES_FILE)
    if untrained:
        Image.new("RGB", (96, 32), (0, 0, 0)).save(d / UNTRAINED_SAMPLES_FILE)
    return tune.Checkpoint.from_directory(str(d))


def run_epochs(logger, trial, tmp_path, scores, untrained=False):
    best = -1.0
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    for epoch, score in enumerate(scores, start=1):
        best = max(best, score)
        result = tune_result(epoch, score, best)
        logger.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=result)
        trial.last_result = result  # Tune's order: callbacks see the result, then last_result, then the save
        logger.on_checkpoint(iteration=epoch, trials=[trial], trial=trial,
                             checkpoint=checkpoint_with(tmp_path, epoch, colours[epoch - 1], untrained and epoch == 1))


def step_images(client, run_id, step: int) -> list[str]:
    """The PNGs MLflow stored for `log_image(key=IMAGE_KEY, step=step)` (images/<key>+step+<n>+...)."""
    return [a.path for a in client.list_artifacts(run_id, "images")
            if a.path.startswith(f"images/{IMAGE_KEY}+step+{step}+") and a.path.endswith(".png")]


def test_epoch_metrics_leave_out_config_and_tune_bookkeeping():
    metrics = epoch_metrics(tune_result(2, 0.7, 0.7))
    assert not [k for k in metrics if k.startswith("config")]
    assert set(metrics) == {"score", "ssim", "masked_ssim", "hist_sim", "chroma_gain", "epoch", "train_loss",
                            "loss_l1", "lr", "train_time_s", "val_time_s", "train_images_per_s", "best_score"}
    # a nested metric a trial reports is flattened; non-finite values and flags are dropped
    assert epoch_metrics({"loss": {"l1": 0.5}, "bad": float("nan"), "flag": True}) == {"loss.l1": 0.5}


def test_trial_run_gets_per_epoch_curves_only(logger, tmp_path):
    trial = FakeTrial()
    run_epochs(logger, trial, tmp_path, [0.5, 0.7, 0.6])
    client = logger.client
    run = client.get_run(logger.runs[trial.trial_id])
    assert not [k for k in run.data.metrics if k.startswith("config")]
    assert run.data.params["model.name"] == "unet" and run.data.params["loss.hue_hist"] == "0.1"
    assert run.data.tags["mlflow.note.content"] == RUN_NOTE
    # every curve has a point at every epoch: nothing named like a final result appears at the last step only
    for key in run.data.metrics:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "best_score")] == [0.5, 0.7, 0.7]
    assert run.data.tags["best_epoch"] == "2"


def test_images_at_step_0_every_epoch_and_the_best_grid(logger, tmp_path):
    trial = FakeTrial()
    run_epochs(logger, trial, tmp_path, [0.5, 0.7, 0.6])
    client = logger.client
    run_id = logger.runs[trial.trial_id]
    assert [len(step_images(client, run_id, step)) for step in (0, 1, 2, 3)] == [1, 1, 1, 1]
    (step0,) = step_images(client, run_id, 0)
    with Image.open(client.download_artifacts(run_id, step0, str(tmp_path / "dl"))) as im:
        shown = np.asarray(im.convert("RGB"))
    # epoch 1's grid (red) under a label band: labelled as what it is, not passed off as untrained
    assert shown.shape == (32 + 14, 96, 3)
    assert (shown[20:, :, 0] > 150).all() and (shown[20:, :, 1] < 50).all()
    assert np.array_equal(shown, label_image(np.asarray(Image.new("RGB", (96, 32), (200, 0, 0))), "after epoch 1"))
    # the best epoch (2, green) as a plain artifact, not the last one (3, blue)
    best = client.download_artifacts(run_id, BEST_IMAGE, str(tmp_path / "best"))
    with Image.open(best) as im:
        assert im.convert("RGB").getpixel((10, 10)) == (0, 200, 0)


def test_step_0_shows_the_untrained_grid_when_the_loop_writes_one(logger, tmp_path):
    trial = FakeTrial()
    run_epochs(logger, trial, tmp_path, [0.5], untrained=True)
    client = logger.client
    run_id = logger.runs[trial.trial_id]
    (step0,) = step_images(client, run_id, 0)
    with Image.open(client.download_artifacts(run_id, step0, str(tmp_path / "dl"))) as im:
        assert im.convert("RGB").getpixel((50, 30)) == (0, 0, 0)


def test_best_epoch_is_kept_across_a_resume(logger, tmp_path):
    trial = FakeTrial()
    run_epochs(logger, trial, tmp_path, [0.5, 0.7])
    restored = MLflowTrialLogger(logger.tracking_uri, logger.experiment_id, logger.parent_run_id)
    restored.set_state(logger.get_state())
    result = tune_result(3, 0.6, 0.7)
    restored.on_trial_result(iteration=3, trials=[trial], trial=trial, result=result)
    assert restored.best[trial.trial_id] == (0.7, 2)
    assert restored.client.get_run(restored.runs[trial.trial_id]).data.tags["best_epoch"] == "2"


def test_trial_runs_say_what_they_are_and_how_they_ended(tmp_path):
    """Named from the config, source-tagged, the training split as dataset input, and tagged with how each
    trial ended (completed, stopped early, failed) and its epochs."""
    import pandas as pd

    from imgrestore.tuning.search import split_dataset

    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    exp = get_or_create_experiment("cb", uri)
    parent = MlflowClient(uri).create_run(exp, run_name="parent").info.run_id

    class Space:
        config = {}

    split = pd.DataFrame({"input_img_path": ["train_input/a.png"], "cluster": [0], "fold": [0]}).to_csv(index=False)
    logger = MLflowTrialLogger(uri, exp, parent, dataset=split_dataset(split, Space, tmp_path / "data"))
    done, stopped, failed = FakeTrial("abc_00000"), FakeTrial("abc_00001"), FakeTrial("abc_00002")
    for trial, epochs in ((done, 3), (stopped, 1), (failed, 2)):
        for epoch in range(1, epochs + 1):
            result = tune_result(epoch, 0.5, 0.5)
            logger.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=result)
            trial.last_result = result
    logger.on_trial_complete(iteration=3, trials=[], trial=done)
    logger.on_trial_complete(iteration=3, trials=[], trial=stopped)
    logger.on_trial_error(iteration=3, trials=[], trial=failed)
    client = logger.client
    runs = {t.trial_id: client.get_run(logger.runs[t.trial_id]) for t in (done, stopped, failed)}
    assert runs[done.trial_id].info.run_name == "unet w4 lr 1.0e-03 [abc_00000]"
    ends = {k: (r.data.tags["imgrestore.end"], r.data.tags["imgrestore.epochs"], r.info.status) for k, r in runs.items()}
    assert ends == {"abc_00000": ("completed", "3", "FINISHED"),
                    "abc_00001": ("stopped early after 1 of 3 epochs (scheduler or stop criterion)", "1", "FINISHED"),
                    "abc_00002": ("failed", "2", "FAILED")}
    for run in runs.values():
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and "mlflow.source.name" in run.data.tags
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "data split" and ds.tags[0].value == "training"


def test_a_trial_out_of_memory_is_tagged_failed_with_its_error(logger):
    trial = FakeTrial("abc_00003")
    result = tune_result(1, 0.5, 0.5)
    logger.on_trial_result(iteration=1, trials=[trial], trial=trial, result=result)
    trial.last_result = {**tune_result(2, float("-inf"), 0.5), "out_of_memory": 1.0,
                         "error": "out of memory in epoch 2 (...): lower batch_size"}
    logger.on_trial_complete(iteration=2, trials=[], trial=trial)
    run = logger.client.get_run(logger.runs[trial.trial_id])
    assert run.info.status == "FAILED" and run.data.tags["imgrestore.end"] == "out of memory in epoch 2, not retried"
    assert run.data.tags["imgrestore.epochs"] == "1" and "lower batch_size" in run.data.tags["imgrestore.error"]
