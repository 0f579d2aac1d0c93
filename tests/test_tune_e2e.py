"""End to end: pipelines/tune.py on a tiny real-photo dataset, real Ray, real MLflow store.

Checks what a user would look for: a parent run with one nested run per trial (params, per-epoch
metrics, restoration images), the preprocess run, the registered `champion` alias, a valid zip; then a
trial killed mid-search resumes from its checkpoint without a duplicated MLflow run.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from imgrestore.data.dacon import load_dataset
from imgrestore.submission.predict import check_submission, zip_writer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run_tune(argv):
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import tune as tune_pipeline
    finally:
        sys.path.pop(0)
    return tune_pipeline.main(argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_dacon, ray_local, tiny_space_yaml):
    import shutil

    work = tmp_path_factory.mktemp("tune")
    data = work / "data"
    shutil.copytree(tiny_dacon, data)
    (work / "tiny.yaml").write_text(tiny_space_yaml(epochs=2))
    return work


def children(client, exp_id, parent):
    return client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_tune_pipeline_end_to_end(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_tune(["--data", str(workdir / "data"), "--space", str(workdir / "tiny.yaml"), "--embedder",
                     "effnet-lite0", "--tracking-uri", uri, "--out", "submission.zip", "--storage", "runs"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Best trial" in out and "submission.zip" in out and "models:/imgrestore-tiny@champion" in out
    assert all(f"[{i}/3] " in out for i in (1, 2, 3))  # the stages, as they start
    exp_id = MlflowClient(uri).get_experiment_by_name("tiny").experiment_id  # the link opens its training runs
    assert f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning" in out
    summary = json.loads(out.strip().splitlines()[-1])
    for name in ("input_copy", "telea", "navier_stokes", "fsr", "fsr_biharmonic"):  # beside the trials, in the summary
        assert f"  {name} " in out and f"  {name} + hue prior " in out

    client = MlflowClient(uri)
    assert client.get_experiment_by_name("preprocess") is not None
    pre_runs = client.search_runs([client.get_experiment_by_name("preprocess").experiment_id])
    assert len(pre_runs) == 1
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`imgrestore.stage` = 'tune'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert {"best_score", "best_ssim", "best_masked_ssim", "best_hist_sim", "champion_val_score",
            "champion_margin", "baseline_telea_score", "baseline_fsr_score",
            "baseline_fsr_hue_prior_score"} <= set(parent.data.metrics)  # hue_prior: every restorer decoded too
    baselines = {k: v for k, v in parent.data.metrics.items() if k.startswith("baseline_") and k.endswith("_score")}
    # the champion is never below the best classical restorer on the same validation images
    assert parent.data.metrics["champion_val_score"] >= max(baselines.values()) - 1e-12
    assert summary["margin_over_classical"] == pytest.approx(parent.data.metrics["champion_margin"])
    kids = children(client, exp.experiment_id, parent.info.run_id)
    assert len(kids) == 2
    for kid in kids:
        assert kid.info.status == "FINISHED"
        assert kid.data.params["model.name"] in ("unet", "two_stage_unet")
        history = client.get_metric_history(kid.info.run_id, "score")
        assert sorted(m.step for m in history) == [1, 2]
        assert not [k for k in kid.data.metrics if k.startswith("config")]  # parameters, not curves
        for key in kid.data.metrics:  # every curve per epoch: nothing logged at the last step only
            assert sorted(m.step for m in client.get_metric_history(kid.info.run_id, key)) == [1, 2], key
        images = [a.path for a in client.list_artifacts(kid.info.run_id, "images") if a.path.endswith(".png")]
        steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in images)
        assert steps == [0, 1, 2], "the validation restoration grid at every epoch, and at step 0"
        assert "best_val_restorations.png" in {a.path for a in client.list_artifacts(kid.info.run_id)}
        assert kid.data.tags["best_epoch"] in ("1", "2")
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"submission.zip", "cluster_map.png", "tiny.yaml", "baselines.md"} <= parent_files

    version = client.get_model_version_by_alias("imgrestore-tiny", "champion")
    if summary["champion_kind"] == "trial":  # logged on the winning trial's run: its lineage
        kid = next(k for k in kids if k.info.run_id == version.run_id)
        assert kid.data.tags["champion"].startswith("imgrestore-tiny version")
    else:  # a classical restorer won: logged on the search's run, and scored on every fold too
        assert version.run_id == parent.info.run_id
        assert summary["champion_cv_score"] == pytest.approx(parent.data.metrics["champion_cv_score"])
        assert "champion_folds.md" in parent_files and "the champion on every fold (" in out  # the summary's line
        assert "on every fold: " in version.description
    assert float(version.tags["val_score"]) == pytest.approx(summary["champion_val_score"], abs=1e-6)
    assert "margin" in version.description or "no trial could beat it" in version.description
    # the best trial against the best classical restorer, image by image (the paired test), logged and printed
    assert summary["trial_advantage"] == pytest.approx(parent.data.metrics["trial_advantage"])
    assert 0 < parent.data.metrics["trial_advantage_sem"] < float("inf")
    assert check_submission(workdir / "submission.zip", load_dataset(workdir / "data").test) == 6
    assert zip_writer(workdir / "submission.zip")  # the zip says which run wrote it: a rerun may replace it
    (exp_dir,) = (workdir / "runs").iterdir()
    assert exp_dir.name.startswith("tiny-") and len(exp_dir.name.split("-")) == 4  # tiny-date-time-suffix

    # a second invocation reuses the preprocess outputs instead of recomputing them
    assert len(client.search_runs([client.get_experiment_by_name("preprocess").experiment_id])) == 1


def test_no_score_reports_the_first_trial_error(ray_local, tmp_path):
    """Every trial fails before reporting: best_checkpoint's error carries the first trial's traceback."""
    from imgrestore.tuning.search import best_checkpoint

    def failing(config):
        raise ValueError(f"bad learning rate {config['lr']}")

    results = tune.Tuner(failing, param_space={"lr": tune.grid_search([0.5, 0.25])},
                         run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    with pytest.raises(RuntimeError) as e:
        best_checkpoint(results, "score", "max")
    text = str(e.value)
    assert "no trial reported 'score': 2 of 2 trial(s) failed; the first error:" in text
    assert "in failing" in text and "ValueError: bad learning rate 0.5" in text  # the trial's traceback
    assert "\x1b[" not in text


class KillOnce(tune.Callback):
    """Kill a trial's worker process once, after its first epoch: a real crash mid-search."""

    def __init__(self):
        self.killed = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == 1 and not self.killed:
            self.killed.add(trial.trial_id)
            os.kill(result["pid"], signal.SIGKILL)


def test_killed_trial_resumes_from_checkpoint_without_duplicate_runs(workdir, tmp_path):
    from imgrestore.preprocess import run_preprocess
    from imgrestore.tracking import setup_tracking
    from imgrestore.tuning.search import run_search
    from imgrestore.tuning.space import load_space

    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    space = load_space(workdir / "tiny.yaml")
    space.config = {**space.config, "epochs": 3}
    pre = run_preprocess(workdir / "data", log_mlflow=False)
    space.config["preproc_csv"] = pre.paths["train_csv"]
    killer = KillOnce()
    outcome = run_search(space, workdir / "data", tmp_path / "runs", uri, verbose=0, callbacks=[killer])
    assert killer.killed
    assert not outcome.results.errors
    victim = next(r for r in outcome.results if r.path.endswith(f"trial_{next(iter(killer.killed))}"))
    epochs = victim.metrics_dataframe["epoch"].tolist()
    assert epochs[-1] == 3 and 2 in epochs  # finished, and epoch 2 came after the restart from epoch 1
    client = MlflowClient(uri)
    kids = children(client, outcome.experiment_id, outcome.parent_run_id)
    assert len(kids) == 2  # the restarted trial kept its run
    history = client.get_metric_history(
        next(k for k in kids if k.data.tags["ray_trial_id"] in killer.killed).info.run_id, "epoch")
    assert sorted({m.step for m in history}) == [1, 2, 3]


def test_data_parallel_trial_through_ray_train(workdir, tmp_path):
    """A trial asking for 2 workers runs as a Ray Train TorchTrainer (DDP, gloo on CPU); its checkpoint,
    reported through Ray Train rather than Tune, still yields the champion."""
    from imgrestore.preprocess import run_preprocess
    from imgrestore.training.checkpoint import load_model
    from imgrestore.tracking import setup_tracking
    from imgrestore.tuning.search import best_checkpoint, run_search
    from imgrestore.tuning.space import load_space

    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    space = load_space(workdir / "tiny.yaml")
    space.num_samples, space.resources = 1, {"cpu": 0.5, "workers": 2}
    space.config = {**space.config, "preproc_csv": run_preprocess(workdir / "data", log_mlflow=False).paths["train_csv"]}
    outcome = run_search(space, workdir / "data", tmp_path / "runs", uri, verbose=0)
    assert not outcome.results.errors
    assert outcome.results[0].metrics["epoch"] == 2
    best, checkpoint, row = best_checkpoint(outcome.results, "score", "max")
    with checkpoint.as_directory() as d:
        assert load_model(d).name in ("unet", "two_stage_unet")
    assert row["score"] == max(best.metrics_dataframe["score"])


def test_ctrl_c_exits_130_and_registers_nothing(workdir, tmp_path):
    """SIGINT mid-search: exit 130, no model registered, no zip written, the runs KILLED, the resume
    command printed."""
    import subprocess
    import time

    space = workdir / "long.yaml"
    space.write_text((workdir / "tiny.yaml").read_text().replace("name: tiny", "name: tinylong")
                     .replace("epochs: 2", "epochs: 40"))
    from imgrestore.tracking.store import create_sqlite_store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    create_sqlite_store(uri)  # the polling client below must not race tune.py's creation of the store
    out = tmp_path / "submission.zip"
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "tune.py"), "--data", str(workdir / "data"),
                             "--space", str(space), "--embedder", "effnet-lite0", "--tracking-uri", uri,
                             "--out", str(out), "--storage", str(tmp_path / "runs")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(uri)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for a trial to report its first epoch
        try:
            exp = client.get_experiment_by_name("tinylong")
            if exp and any("score" in r.data.metrics for r in client.search_runs(
                    [exp.experiment_id], "tags.`mlflow.parentRunId` != ''")):
                break
        except Exception:  # noqa: BLE001 - the store is being created by the other process
            pass
        time.sleep(2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, (stdout[-2000:], stderr[-3000:])
    assert "--resume" in stderr and not out.exists()
    console = stdout + stderr  # without --verbose: stages and tables, not Ray's log lines
    for noise in ("Token authentication", "snapshotting", "Started a local Ray instance", "A new study created"):
        assert noise not in console, noise
    assert "[2/3] search" in stdout
    assert not client.search_registered_models("name = 'imgrestore-tinylong'")
    runs = client.search_runs([client.get_experiment_by_name("tinylong").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags.get("imgrestore.stage") == "tune")
    assert parent.info.status == "KILLED"
