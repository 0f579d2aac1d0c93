"""Every Ray Tune trial as a nested MLflow run, written from the driver only.

Ray's MLflowLoggerCallback makes one flat run per trial and cannot log images from a trial; `setup_mlflow`
inside trials has many processes writing one SQLite file ("database is locked"). This callback funnels all
writes through the driver: a child run per trial (tagged `mlflow.parentRunId`), its parameters, its metrics
at every epoch (learning curves), and the validation restoration grid each trial saves in its checkpoint,
read back from the checkpoint on storage. Its state (trial -> run) is saved with the experiment, and runs
are also found again by tag, so a resumed experiment never duplicates a run. Tune saves its experiment state
every few seconds, so a driver killed in between can leave runs of trials the restored experiment never
heard of (Tune samples them again under new ids): on its first step the callback deletes those orphans.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from PIL import Image
from ray import tune

log = logging.getLogger(__name__)
TRIAL_TAG = "ray_trial_id"
SAMPLES_FILE = "val_samples.png"
_SKIP = {"trial_id", "experiment_id", "date", "timestamp", "pid", "hostname", "node_ip", "config",
         "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore", "done",
         "checkpoint_dir_name", "should_checkpoint", "experiment_tag"}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


class MLflowTrialLogger(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, log_images: bool = True):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.log_images = log_images
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._first_step = True

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def get_state(self) -> dict:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))

    def setup(self, **info):
        self._first_step = True  # called by every fit, the first one and each resume

    def on_step_begin(self, iteration, trials, **info):
        if self._first_step:
            self._first_step = False
            self.delete_orphans({t.trial_id for t in trials})

    def delete_orphans(self, known: set[str]) -> list[str]:
        """Delete the trial runs under the parent run whose trial the experiment does not know (module doc)."""
        orphans = [r for r in self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'", max_results=50000)
            if TRIAL_TAG in r.data.tags and r.data.tags[TRIAL_TAG] not in known]
        for run in orphans:
            log.warning("deleting MLflow run %s of trial %s: the resumed experiment has no such trial",
                        run.info.run_id, run.data.tags.get(TRIAL_TAG))
            self.client.delete_run(run.info.run_id)
            self.runs.pop(run.data.tags.get(TRIAL_TAG), None)
        return [r.info.run_id for r in orphans]

    def run_id(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.{TRIAL_TAG} = '{trial.trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        if found:
            run_id = found[0].info.run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=str(trial),
                                         tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id})
            run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(trial.config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.client.update_run(self.run_id(trial), status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in flatten(result).items()
                   if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        self.client.log_batch(self.run_id(trial), metrics=metrics)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.log_images:
            return
        step = int((trial.last_result or {}).get("epoch", iteration))
        with checkpoint.as_directory() as d:
            path = Path(d) / SAMPLES_FILE
            if path.is_file():
                with Image.open(path) as im:
                    image = np.asarray(im.convert("RGB"))
                self.client.log_image(self.run_id(trial), image, key="val_restorations", step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_id(trial), RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self.run_id(trial), RunStatus.to_string(RunStatus.FAILED))
