"""Run a search: a Ray Tune Tuner over the trainable, one MLflow parent run, resumable.

Layout on storage: <storage_path>/<run name>/ holds Tune's experiment state and every trial's checkpoints;
`mlflow_parent_run.json` there remembers the MLflow parent run so `resume` continues the same one, and
`baselines.csv` the classical restorers' scores on the search's validation images (measured before the
first trial, see imgrestore.tuning.baselines).
`storage_path` is a local folder or a URI that pyarrow understands (s3://bucket/prefix, gs://..., file://...):
on a multi-node cluster it must be storage every node can reach (Ray syncs nothing to the head).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs
import mlflow.data
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from ray import tune

from imgrestore.tracking import get_or_create_experiment
from imgrestore.tracking.tune_callback import MLflowTrialLogger, source_tags
from imgrestore.tuning.baselines import (VALIDATION_KEYS, baselines_csv, baselines_markdown, evaluate_baselines,
                                         label, validation_config)
from imgrestore.tuning.decoding import IMAGE_SCORES
from imgrestore.tuning.space import SearchSpace
from imgrestore.tuning.trainable import train_trial, train_trial_distributed

PARENT_FILE = "mlflow_parent_run.json"
BASELINES_FILE = "baselines.csv"


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl-C / SIGINT) before every trial ended; it can be resumed."""

    def __init__(self, experiment_dir):
        super().__init__(f"the search was interrupted; its state is saved in {experiment_dir}")
        self.experiment_dir = experiment_dir


@dataclass
class SearchOutcome:
    results: tune.ResultGrid
    experiment_dir: Path | str  # a Path for local storage, the URI for remote storage
    parent_run_id: str
    experiment_id: str
    baselines: pd.DataFrame     # the classical restorers on the trials' validation images, best first


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


def _split_text(space: SearchSpace, data_dir: Path) -> str | None:
    """The split CSV the trials read, as text: it travels with every trial (trials on other nodes of a
    cluster cannot read the driver's disk; see imgrestore.tuning.trainable)."""
    csv = space.config.get("preproc_csv")
    path = Path(csv) if csv else data_dir / "train_preproc_1.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `python pipelines/preprocess.py --data {data_dir}` first")
    return path.read_text()


def split_dataset(split_text: str, space: SearchSpace, data_dir: Path) -> DatasetInput:
    """The train/validation split the trials read (train_preproc_1.csv: pairs, clusters, folds) as an MLflow
    dataset input, its digest the split's: the runs page shows which data a search trained on."""
    csv = space.config.get("preproc_csv") or data_dir / "train_preproc_1.csv"
    frame = pd.read_csv(io.StringIO(split_text))
    with warnings.catch_warnings():  # MLflow's hints on source kinds and integer columns: noise here
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(frame, source=str(Path(csv).resolve()), name=f"{data_dir.name} split",
                                     digest=hashlib.sha256(split_text.encode()).hexdigest()[:10])
        entity = ds._to_mlflow_entity()  # (the schema, and its hint, are computed here)
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])


def _trainable(space: SearchSpace, storage_path: str, split_csv: str | None = None):
    res = {"cpu": 1, "gpu": 0, "workers": 1, **(space.resources or {})}
    cpu, gpu, workers = float(res["cpu"]), float(res["gpu"]), int(res["workers"])
    if workers > 1:  # the Tune trial itself only coordinates (a sliver of CPU); its Train workers hold
        fn = tune.with_parameters(train_trial_distributed, storage_path=storage_path, workers=workers,
                                  use_gpu=gpu > 0, cpus_per_worker=cpu,  # `cpu` for each worker
                                  split_csv=split_csv)
        return tune.with_resources(fn, {"cpu": 0.01})
    fn = tune.with_parameters(train_trial, cpus=max(1, int(cpu)), split_csv=split_csv)
    return tune.with_resources(fn, {"cpu": cpu, "gpu": gpu})


# -- storage: a local folder or a URI (s3://, gs://, file://), through pyarrow like Tune itself -------------
def _is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def storage_location(path: str | os.PathLike) -> str:
    """An absolute local path, or the URI as given (without a trailing slash)."""
    return str(path).rstrip("/") if _is_uri(path) else str(Path(path).resolve())


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if _is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def _read_text(location: str) -> str:
    fs, path = _filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _write_text(location: str, text: str) -> None:
    fs, path = _filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def _as_outcome_dir(location: str) -> Path | str:
    return location if _is_uri(location) else Path(location)


def experiment_name(space_name: str, now: float | None = None) -> str:
    """`<space>-YYYYmmdd-HHMMSS-<6 hex>`: the start time orders experiments, and the random suffix keeps two
    searches started in the same second (in one folder) apart."""
    return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{secrets.token_hex(3)}"


def _create_experiment_dir(storage_path: str, space_name: str) -> tuple[str, str]:
    """(name, location) of a new experiment folder, created here and nowhere else: a local folder is made
    exclusively (a name taken meanwhile gets a new suffix); an object store has no exclusive create, so
    there the random suffix alone keeps searches apart."""
    for _ in range(10):
        name = experiment_name(space_name)
        location = _join(storage_path, name)
        if _is_uri(location):
            fs, path = _filesystem(location)
            if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
                fs.create_dir(path, recursive=True)
                return name, location
            continue
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        try:
            Path(location).mkdir()
        except FileExistsError:
            continue
        return name, location
    raise FileExistsError(f"{storage_path}: could not create a new experiment folder for '{space_name}'")


def latest_experiment(storage_path: str | os.PathLike, space_name: str) -> Path | str | None:
    """The most recently started experiment of `space_name` under `storage_path` that Tune can restore.

    Experiments are named `<space>-YYYYmmdd-HHMMSS-<suffix>` (`experiment_name`; before the suffix existed,
    `<space>-YYYYmmdd-HHMMSS`), so the name's time orders them (object stores have no folder times).
    A Path for local storage, the URI for remote storage; None when there is none.
    """
    root = storage_location(storage_path)
    fs, path = _filesystem(root)
    pattern = re.compile(rf"{re.escape(space_name)}-(\d{{8}}-\d{{6}})(?:-[0-9a-f]+)?")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    started = {i.base_name: m.group(1) for i in infos if i.type == pyarrow.fs.FileType.Directory
               and (m := pattern.fullmatch(i.base_name))}
    for name in sorted(started, key=lambda n: (started[n], n), reverse=True):
        if tune.Tuner.can_restore(_join(root, name)):
            return _as_outcome_dir(_join(root, name))
    return None


def run_search(space: SearchSpace, data_dir: str | os.PathLike, storage_path: str | os.PathLike,
               tracking_uri: str, resume: str | os.PathLike | None = None, seed: int = 0,
               verbose: int = 1, artifacts: list[str] | tuple = (), callbacks: list | tuple = ()) -> SearchOutcome:
    """Run (or resume) the search described by `space` on the dataset at `data_dir`.

    artifacts: files logged on the parent run (the search space, the preprocess cluster map, ...).
    callbacks: extra Tune callbacks, beside the MLflow one.
    """
    data_dir = Path(data_dir).resolve()
    storage_path = storage_location(storage_path)
    experiment_id = get_or_create_experiment(space.name, tracking_uri)
    client = MlflowClient(tracking_uri)
    split_text = _split_text(space, data_dir)
    split_digest = hashlib.sha256(split_text.encode()).hexdigest()
    trainable = _trainable(space, storage_path, split_text)
    dataset = split_dataset(split_text, space, data_dir)

    parent_run_id = None
    try:  # until the Tuner exists, a failure or Ctrl-C closes the parent run (nothing to resume yet: not RUNNING)
        if resume:
            exp_dir = storage_location(resume)
            if not tune.Tuner.can_restore(exp_dir):
                raise FileNotFoundError(f"{exp_dir}: no Tune experiment to resume there")
            parent = json.loads(_read_text(_join(exp_dir, PARENT_FILE)))
            if parent.get("split_sha256", split_digest) != split_digest:
                # preprocess re-ran on changed data: trials already run were validated on another split
                raise ValueError(f"{exp_dir}: this search was started on another train/validation split than "
                                 f"{space.config.get('preproc_csv') or data_dir / 'train_preproc_1.csv'} holds now "
                                 "(the dataset or the preprocess settings changed); resuming would mix the two. Start "
                                 "a new search, or restore the split the search was started with")
            validation = _validation_of(space)
            started = parent.get("validation", validation)  # folders written before it was recorded: unchecked
            if started != validation:
                # the trials were validated on other images (or decoded otherwise) than the baselines would be
                raise ValueError(f"{exp_dir}: this search was started with the validation settings {started}; the "
                                 f"space now says {validation}. The trials and the classical restorers must be "
                                 "scored on the same images: resume with the space the search was started with")
            parent_run_id = parent["run_id"]
            client.update_run(parent_run_id, status="RUNNING")
            try:
                baselines = pd.read_csv(io.StringIO(_read_text(_join(exp_dir, BASELINES_FILE))))
            except (FileNotFoundError, OSError):  # interrupted before they were measured
                baselines = None
            if baselines is not None and IMAGE_SCORES not in baselines:
                print(f"{exp_dir}: {BASELINES_FILE} has no per-image scores (written by an older version); the "
                      "champion's paired test needs them: measuring the classical restorers again", flush=True)
                baselines = None
            if baselines is None:
                baselines = _baselines(space, data_dir, client, parent_run_id, exp_dir)
            tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True, resume_unfinished=True)
        else:
            name, exp_dir = _create_experiment_dir(storage_path, space.name)
            parent = client.create_run(experiment_id, run_name=name,
                                       tags={**source_tags(), "imgrestore.stage": "tune"})
            parent_run_id = parent.info.run_id
            client.log_inputs(parent_run_id, [dataset])
            _write_text(_join(exp_dir, PARENT_FILE), json.dumps({"run_id": parent_run_id, "experiment_id": experiment_id,
                                                                 "split_sha256": split_digest,
                                                                 "validation": _validation_of(space)}))
            for key, value in {"space": space.name, "data_dir": str(data_dir), "num_samples": space.num_samples,
                               "search": json.dumps(space.search), "scheduler": json.dumps(space.scheduler),
                               "resources": json.dumps(space.resources), "experiment_dir": str(exp_dir)}.items():
                client.log_param(parent_run_id, key, value)
            for path in artifacts:
                if Path(path).is_file():
                    client.log_artifact(parent_run_id, str(path))
            baselines = _baselines(space, data_dir, client, parent_run_id, exp_dir)
            param_space = {**space.param_space(), "data_dir": str(data_dir)}
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=space.num_samples,
                                            max_concurrent_trials=space.max_concurrent_trials,
                                            search_alg=_search_alg(space, seed), scheduler=_scheduler(space),
                                            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage_path, verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=int(space.max_failures)),
                    # Keep each trial's best checkpoint (the champion comes from it); Tune always keeps the latest
                    # too (the one a restart resumes from). num_to_keep=1 also makes Tune save its experiment state
                    # after every checkpoint: with more kept by score, a checkpoint that the saved state names as
                    # a trial's latest could already be deleted when a killed driver is resumed.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                            checkpoint_score_order=space.mode),
                    callbacks=[MLflowTrialLogger(tracking_uri, experiment_id, parent_run_id, metric=space.metric,
                                                 mode=space.mode, dataset=dataset), *callbacks],
                ),
            )
    except BaseException as e:
        if parent_run_id:
            client.set_terminated(parent_run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    try:
        with _sigint_watch() as interrupted:
            results = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune stopped without its last save
        _mark_killed(client, experiment_id, parent_run_id)
        raise SearchInterrupted(_as_outcome_dir(exp_dir)) from None
    except BaseException:  # a crash: no run may stay RUNNING (resume reopens them)
        _mark_killed(client, experiment_id, parent_run_id, status="FAILED")
        raise
    if interrupted() or results.num_terminated + results.num_errors < len(results):
        # Tune catches the first Ctrl-C, saves its state and returns normally (Ray 2.60 even marks the stopped
        # trials TERMINATED): nothing may be registered or written from a search that did not end
        _mark_killed(client, experiment_id, parent_run_id)
        raise SearchInterrupted(_as_outcome_dir(exp_dir))
    return SearchOutcome(results, _as_outcome_dir(exp_dir), parent_run_id, experiment_id, baselines)


@contextlib.contextmanager
def _sigint_watch():
    """Yields a function telling whether Tune caught a Ctrl-C during the block.

    Tune replaces the SIGINT handler when fit() starts and, on the first Ctrl-C, stops the search and puts back
    the handler it found; it never restores it otherwise. So a sentinel installed before fit() that is back in
    place afterwards means Tune caught a SIGINT. (Tune installs its handler only from the main thread and
    unless TUNE_DISABLE_SIGINT_HANDLER is set; then a Ctrl-C reaches the sentinel, which raises
    KeyboardInterrupt as Python's default handler would.)
    """
    def sentinel(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, sentinel)
    tune_handles = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    caught = []
    try:
        yield lambda: bool(caught)
    finally:
        if tune_handles and signal.getsignal(signal.SIGINT) is sentinel:
            caught.append(True)
        signal.signal(signal.SIGINT, previous)


def _mark_killed(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str = "KILLED") -> None:
    """The parent run and its trial runs still open: KILLED (or `status`; a resume reopens the parent)."""
    open_trials = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                     "attributes.status = 'RUNNING'", max_results=50000)
    for run in open_trials:
        client.set_terminated(run.info.run_id, status)
    client.set_terminated(parent_run_id, status)


def _validation_of(space: SearchSpace) -> dict:
    """The settings that decide which validation images the trials and the baselines are scored on, and how
    (the data folder and split file are checked by the split's digest)."""
    val = validation_config(space.config)
    return {k: val[k] for k in VALIDATION_KEYS if k not in ("data_dir", "preproc_csv")}


def _baselines(space: SearchSpace, data_dir: Path, client: MlflowClient, parent_run_id: str,
               exp_dir: str) -> pd.DataFrame:
    """Measure the classical restorers on the trials' validation images; log and store them."""
    frame = evaluate_baselines({**space.config, "data_dir": str(data_dir)})
    _write_text(_join(exp_dir, BASELINES_FILE), baselines_csv(frame))
    for row in frame.itertuples():  # baseline_fsr_score, baseline_fsr_hue_prior_score, ...
        name = label(row.name, row.decoding).replace(" + ", "_").replace(" ", "_")
        for key in ("score", "ssim", "masked_ssim", "hist_sim"):
            client.log_metric(parent_run_id, f"baseline_{name}_{key}", float(getattr(row, key)))
    client.log_text(parent_run_id, baselines_markdown(frame), "baselines.md")
    return frame


def best_checkpoint(results: tune.ResultGrid, metric: str, mode: str):
    """(best result, its best checkpoint, the metrics of the epoch that made that checkpoint).

    Data-parallel trials report their checkpoints through Ray Train (the `checkpoint_path` metric)
    rather than to Tune; both are handled. Raises RuntimeError when no trial reported `metric` (with the
    first failed trial's error in the message) or none left a checkpoint.
    """
    try:
        best = results.get_best_result(metric, mode, scope="all")
    except RuntimeError:  # Tune's "No best trial found": say why, with the first trial's traceback
        raise RuntimeError(_no_score_message(results, metric)) from None
    frame = best.metrics_dataframe.dropna(subset=[metric])
    row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
    try:
        checkpoint = best.get_best_checkpoint(metric, mode)
    except RuntimeError:  # raised, not None, when a trial handed Tune no checkpoint at all
        checkpoint = None
    if checkpoint is None and isinstance(row.get("checkpoint_path"), str):
        # a path on the experiment's storage filesystem (local folder or bucket), without a scheme
        checkpoint = tune.Checkpoint(row["checkpoint_path"], filesystem=results.filesystem)
    if checkpoint is None:
        raise RuntimeError(f"no trial produced a checkpoint (best trial {best.path}: {best.error})")
    return best, checkpoint, row.to_dict()


def _no_score_message(results: tune.ResultGrid, metric: str) -> str:
    errors = [r.error for r in results if r.error is not None]
    oom = [r.metrics["error"] for r in results if (getattr(r, "metrics", None) or {}).get("out_of_memory")]
    if oom:  # ended, not failed: see imgrestore.training.loop.out_of_memory
        return f"no trial reported a finite '{metric}': {len(oom)} of {len(results)} trial(s) ran out of memory; " \
               f"the first: {oom[0]}"
    if not errors:
        return f"no trial reported '{metric}' ({len(results)} trial(s), none failed)"
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(errors[0]))  # Ray colours the failed task's name for terminals
    return f"no trial reported '{metric}': {len(errors)} of {len(results)} trial(s) failed; the first error:\n{first}"
