"""Run a search: a Ray Tune Tuner over the trainable, one MLflow parent run, resumable.

Layout on storage: <storage_path>/<run name>/ holds Tune's experiment state and every trial's checkpoints;
`mlflow_parent_run.json` there remembers the MLflow parent run so `resume` continues the same one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from ray import tune

from imgrestore.tracking import get_or_create_experiment
from imgrestore.tracking.tune_callback import MLflowTrialLogger
from imgrestore.tuning.space import SearchSpace
from imgrestore.tuning.trainable import train_trial, train_trial_distributed

PARENT_FILE = "mlflow_parent_run.json"


@dataclass
class SearchOutcome:
    results: tune.ResultGrid
    experiment_dir: Path
    parent_run_id: str
    experiment_id: str


def _scheduler(space: SearchSpace):
    spec = dict(space.scheduler or {"name": "fifo"})
    name = spec.pop("name", "fifo").lower()
    if name == "fifo":
        return None
    if name == "asha":
        epochs = space.config.get("epochs")
        max_t = spec.pop("max_t", epochs if isinstance(epochs, int) else None)
        if max_t is None:
            raise ValueError(f"{space.source}: scheduler asha needs max_t when epochs is searched")
        return tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=int(max_t), **spec)
    raise ValueError(f"{space.source}: unknown scheduler '{name}' (fifo | asha)")


def _search_alg(space: SearchSpace, seed: int):
    spec = dict(space.search or {"algorithm": "random"})
    name = spec.pop("algorithm", "random").lower()
    if name == "random":
        return None  # Tune's default: random / grid sampling of the param space
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        import optuna

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed, **spec))
    raise ValueError(f"{space.source}: unknown search algorithm '{name}' (random | optuna)")


def _trainable(space: SearchSpace, storage_path: str):
    res = {"cpu": 1, "gpu": 0, "workers": 1, **(space.resources or {})}
    cpu, gpu, workers = float(res["cpu"]), float(res["gpu"]), int(res["workers"])
    if workers > 1:  # the Tune trial itself only coordinates (a sliver of CPU); its Train workers hold
        fn = tune.with_parameters(train_trial_distributed, storage_path=storage_path, workers=workers,
                                  use_gpu=gpu > 0, cpus_per_worker=cpu)  # `cpu` for each worker
        return tune.with_resources(fn, {"cpu": 0.01})
    return tune.with_resources(tune.with_parameters(train_trial, cpus=max(1, int(cpu))), {"cpu": cpu, "gpu": gpu})


def latest_experiment(storage_path: str | os.PathLike, space_name: str) -> Path | None:
    runs = sorted(Path(storage_path).glob(f"{space_name}-*"), key=lambda p: p.stat().st_mtime)
    runs = [p for p in runs if tune.Tuner.can_restore(str(p))]
    return runs[-1] if runs else None


def run_search(space: SearchSpace, data_dir: str | os.PathLike, storage_path: str | os.PathLike,
               tracking_uri: str, resume: str | os.PathLike | None = None, seed: int = 0,
               verbose: int = 1, artifacts: list[str] | tuple = (), callbacks: list | tuple = ()) -> SearchOutcome:
    """Run (or resume) the search described by `space` on the dataset at `data_dir`.

    artifacts: files logged on the parent run (the search space, the preprocess cluster map, ...).
    callbacks: extra Tune callbacks, beside the MLflow one.
    """
    data_dir = Path(data_dir).resolve()
    storage_path = Path(storage_path).resolve()
    experiment_id = get_or_create_experiment(space.name, tracking_uri)
    client = MlflowClient(tracking_uri)

    if resume:
        exp_dir = Path(resume).resolve()
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise FileNotFoundError(f"{exp_dir}: no Tune experiment to resume there")
        parent_run_id = json.loads((exp_dir / PARENT_FILE).read_text())["run_id"]
        client.update_run(parent_run_id, status="RUNNING")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=_trainable(space, str(storage_path)), resume_errored=True,
                                   resume_unfinished=True)
    else:
        name = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_dir = storage_path / name
        parent = client.create_run(experiment_id, run_name=name, tags={"imgrestore.stage": "tune"})
        parent_run_id = parent.info.run_id
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / PARENT_FILE).write_text(json.dumps({"run_id": parent_run_id, "experiment_id": experiment_id}))
        for key, value in {"space": space.name, "data_dir": str(data_dir), "num_samples": space.num_samples,
                           "search": json.dumps(space.search), "scheduler": json.dumps(space.scheduler),
                           "resources": json.dumps(space.resources), "experiment_dir": str(exp_dir)}.items():
            client.log_param(parent_run_id, key, value)
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(parent_run_id, str(path))
        param_space = {**space.param_space(), "data_dir": str(data_dir)}
        tuner = tune.Tuner(
            _trainable(space, str(storage_path)),
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=space.num_samples,
                                        max_concurrent_trials=space.max_concurrent_trials,
                                        search_alg=_search_alg(space, seed), scheduler=_scheduler(space),
                                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage_path), verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=int(space.max_failures)),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                        checkpoint_score_order=space.mode),
                callbacks=[MLflowTrialLogger(tracking_uri, experiment_id, parent_run_id), *callbacks],
            ),
        )
    results = tuner.fit()
    return SearchOutcome(results, exp_dir, parent_run_id, experiment_id)


def best_checkpoint(results: tune.ResultGrid, metric: str, mode: str):
    """(best result, its best checkpoint, the metrics of the epoch that made that checkpoint).

    Data-parallel trials report their checkpoints through Ray Train (the `checkpoint_path` metric)
    rather than to Tune; both are handled. Raises RuntimeError when no trial left a checkpoint.
    """
    best = results.get_best_result(metric, mode, scope="all")
    frame = best.metrics_dataframe.dropna(subset=[metric])
    row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
    checkpoint = best.get_best_checkpoint(metric, mode)
    if checkpoint is None and isinstance(row.get("checkpoint_path"), str):
        checkpoint = tune.Checkpoint(row["checkpoint_path"])
    if checkpoint is None:
        raise RuntimeError(f"no trial produced a checkpoint (best trial {best.path}: {best.error})")
    return best, checkpoint, row.to_dict()
