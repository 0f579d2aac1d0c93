"""Every Ray Tune trial as a nested MLflow run, written from the driver only.

Ray's MLflowLoggerCallback makes one flat run per trial and cannot log images from a trial; `setup_mlflow`
inside trials has many processes writing one SQLite file ("database is locked"). This callback funnels all
writes through the driver: a child run per trial (tagged `mlflow.parentRunId`), its parameters, its metrics
at every epoch (learning curves), and the validation restoration grid each trial saves in its checkpoint,
read back from the checkpoint on storage. Its state (trial -> run) is saved with the experiment, and runs
are also found again by tag, so a resumed experiment never duplicates a run. Tune saves its experiment state
every few seconds, so a driver killed in between can leave runs of trials the restored experiment never
heard of (Tune samples them again under new ids): on its first step the callback deletes those orphans.

What a trial run shows (also its MLflow description, RUN_NOTE): the per-epoch curves the trial reported, and
nothing else: Tune's bookkeeping and the trial's config (which Tune copies into every result) are left out,
the config being the run's parameters. The `val_restorations` image at every epoch, and at step 0 (where
MLflow's image viewer opens; nothing exists before the first epoch) the first epoch's grid, labelled as such
(or `val_samples_untrained.png`, if a first checkpoint holds one). The best epoch so far (by the search's
metric) as the tag `best_epoch` and its grid as the artifact `best_val_restorations.png`, replaced whenever
an epoch improves on it: when the trial ends it is the best epoch's.
Runs are named from their config (family, chroma head, width, depth, learning rate, trial id), carry MLflow's
source tags (script, user, git commit) and the training split as a dataset input, and when a trial ends the
tags `imgrestore.end` (completed / stopped early / failed) and `imgrestore.epochs`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from mlflow.entities import DatasetInput, Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from PIL import Image, ImageDraw
from ray import tune

log = logging.getLogger(__name__)
TRIAL_TAG = "ray_trial_id"
SAMPLES_FILE = "val_samples.png"
UNTRAINED_SAMPLES_FILE = "val_samples_untrained.png"  # the grid before any training, if a loop writes it
IMAGE_KEY = "val_restorations"
BEST_IMAGE = "best_val_restorations.png"
# Top-level result keys that are not the trial's curves: Tune's bookkeeping, and `config` (the parameters).
_SKIP = {"trial_id", "experiment_id", "date", "timestamp", "pid", "hostname", "node_ip", "config",
         "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore", "done",
         "checkpoint_dir_name", "should_checkpoint", "experiment_tag", "training_iteration",
         "timesteps_total", "episodes_total", "timesteps_since_restore"}
RUN_NOTE = """Curves are per epoch (x axis: the epoch); a value in the runs table is the LAST epoch's.
`score` (and `ssim`, `masked_ssim`, `hist_sim`): validation at that epoch. `best_score`: the best validation
score up to that epoch; the tag `best_epoch` names that epoch, whose checkpoint is the trial's best (the
champion's, when this trial wins).
Images: `val_restorations` at every epoch (step 0 shows epoch 1's grid, labelled: nothing is logged before
training), and `best_val_restorations.png`, the best epoch's grid."""


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def epoch_metrics(result: dict) -> dict[str, float]:
    """The finite numbers a trial reported in one Tune result, flattened (`a.b`); not `_SKIP`'s keys."""
    reported = flatten({k: v for k, v in result.items() if k not in _SKIP})
    return {k: float(v) for k, v in reported.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def trial_name(config: dict, trial_id: str) -> str:
    """A run name that says what the trial trains: 'effnet_unet regression w16 d4 lr 1.2e-03 [id]'."""
    model = config.get("model") or {}
    parts = [str(model.get("name", "?"))]
    if model.get("chroma"):
        parts.append(str(model["chroma"]))
    parts += [f"{k}{model[key]}" for k, key in (("w", "base_channels"), ("d", "depth")) if key in model]
    if isinstance(config.get("lr"), (int, float)):
        parts.append(f"lr {config['lr']:.1e}")
    return " ".join(parts) + f" [{trial_id}]"


def source_tags() -> dict[str, str]:
    """MLflow's own context tags (mlflow.source.name, mlflow.user, mlflow.source.git.commit when in a git
    checkout), which client.create_run, unlike mlflow.start_run, does not add."""
    return {k: str(v) for k, v in resolve_tags({}).items()}


def label_image(image: np.ndarray, text: str) -> np.ndarray:
    """`image` (HxWx3 uint8) under a white band that holds `text`."""
    im = Image.fromarray(image)
    out = Image.new("RGB", (im.width, im.height + 14), "white")
    out.paste(im, (0, 14))
    ImageDraw.Draw(out).text((3, 1), text, fill="black")
    return np.asarray(out)


def _read_rgb(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class MLflowTrialLogger(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, log_images: bool = True,
                 metric: str = "score", mode: str = "max", dataset: DatasetInput | None = None):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.dataset = dataset  # the training split, logged as every trial run's dataset input
        self.log_images = log_images
        self.metric, self.mode = metric, mode
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best value of `metric`, its epoch)
        self._first_step = True

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def get_state(self) -> dict:
        return {"runs": dict(self.runs), "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.best.update({k: tuple(v) for k, v in state.get("best", {}).items()})

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
            run = self.client.create_run(self.experiment_id, run_name=trial_name(trial.config, trial.trial_id),
                                         tags={**source_tags(), "mlflow.parentRunId": self.parent_run_id,
                                               TRIAL_TAG: trial.trial_id, "mlflow.note.content": RUN_NOTE})
            run_id = run.info.run_id
            if self.dataset is not None:
                self.client.log_inputs(run_id, [self.dataset])
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
        metrics = [Metric(k, v, ts, step) for k, v in epoch_metrics(result).items()]
        self.client.log_batch(self.run_id(trial), metrics=metrics)
        if self._improves(trial.trial_id, result.get(self.metric), step):
            self.client.set_tag(self.run_id(trial), "best_epoch", str(step))

    def _improves(self, trial_id: str, value, epoch: int) -> bool:
        """Whether `value` of the metric beats the trial's best so far (and then remember it)."""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        best = self.best.get(trial_id)
        if best is not None and not (value > best[0] if self.mode == "max" else value < best[0]):
            return False
        self.best[trial_id] = (float(value), epoch)
        return True

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.log_images:
            return
        step = int((trial.last_result or {}).get("epoch", iteration))  # Tune sets last_result before this
        with checkpoint.as_directory() as d:
            grid, untrained = _read_rgb(Path(d) / SAMPLES_FILE), _read_rgb(Path(d) / UNTRAINED_SAMPLES_FILE)
        if grid is None:
            return
        run_id = self.run_id(trial)
        self.client.log_image(run_id, grid, key=IMAGE_KEY, step=step)
        if step == 1:  # MLflow's image viewer opens at step 0: show the untrained grid, or say what is shown
            before = label_image(untrained, "before training") if untrained is not None else \
                label_image(grid, "after epoch 1")
            self.client.log_image(run_id, before, key=IMAGE_KEY, step=0)
        if self.best.get(trial.trial_id, (None, None))[1] == step:
            self.client.log_image(run_id, grid, artifact_file=BEST_IMAGE)  # replaces the previous best

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epochs, planned = int(last.get("epoch", 0)), trial.config.get("epochs")
        if last.get("out_of_memory"):  # ended by the loop itself, not retried (training.loop.out_of_memory)
            self.client.set_tag(self.run_id(trial), "imgrestore.error", str(last.get("error", ""))[:5000])
            self._end(trial, f"out of memory in epoch {epochs}, not retried", epochs - 1, RunStatus.FAILED)
            return
        if isinstance(planned, (int, float)) and epochs < planned and last.get("train_images_per_s", 1) > 0:
            end = f"stopped early after {epochs} of {int(planned)} epochs (scheduler or stop criterion)"
        else:
            end = "completed"
        self._end(trial, end, epochs, RunStatus.FINISHED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed", int((trial.last_result or {}).get("epoch", 0)), RunStatus.FAILED)

    def _end(self, trial, end: str, epochs: int, status) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "imgrestore.end", end)
        self.client.set_tag(run_id, "imgrestore.epochs", str(epochs))
        self.client.set_terminated(run_id, RunStatus.to_string(status))
