"""The Ray Tune trainable: one trial = imgrestore.training.loop.train, reporting to Tune.

One process per trial by default. A trial whose resources ask for more than one worker (`workers: N`,
typically one per GPU) runs the same loop as a Ray Train TorchTrainer inside the Tune trial (data-parallel
DDP), the pattern of Ray's "hyperparameter optimization" Train guide.

On a multi-node cluster a trial may run on a node that cannot see the driver's disk: the split CSV
(`preproc_csv`, written by preprocess on the driver's node) travels with the trial as text through Ray's
object store (`split_csv`) and is written to a node-local file when the path in the config does not hold
those bytes. The images themselves are read from `data_dir`, which must exist at the same path on every
node (see docs/cluster.md). Every reported result carries the `node_id` of the node that ran it.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from imgrestore.data.io import write_text
from imgrestore.training.loop import train


def _report_to_tune(metrics: dict, checkpoint_dir: str | None) -> None:
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def node_local_split(config: dict, split_csv: str | None) -> dict:
    """`config` with `preproc_csv` pointing at a file on this node that holds `split_csv` (if given)."""
    if split_csv is None:
        return config
    given = Path(config["preproc_csv"]) if config.get("preproc_csv") else None
    if given is not None and given.is_file() and given.read_text() == split_csv:
        return config  # the driver's file is visible here (one machine, or a shared file system)
    digest = hashlib.sha256(split_csv.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "imgrestore-splits" / f"train_preproc-{digest}.csv"
    if not local.is_file():
        write_text(local, split_csv)  # atomic: concurrent trials on one node never see half a file
    return {**config, "preproc_csv": str(local)}


def train_trial(config: dict, cpus: int = 1, split_csv: str | None = None) -> None:
    """Function trainable; resumes from the trial's last checkpoint when Tune restarts it."""
    torch.set_num_threads(max(1, int(cpus)))
    config = node_local_split(config, split_csv)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(config, _report_to_tune)
        return
    with checkpoint.as_directory() as resume_dir:
        train(config, _report_to_tune, resume_from=resume_dir)


def _train_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        # every worker reports; only rank 0 hands over its checkpoint (the weights are identical under DDP)
        rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if rank0 and checkpoint_dir else None)

    split_ref = config.pop("_split_csv", None)
    config = node_local_split(config, ray.get(split_ref) if split_ref is not None else None)
    kwargs = dict(device=str(ray.train.torch.get_device()), wrap_model=ray.train.torch.prepare_model,
                  wrap_loader=ray.train.torch.prepare_data_loader)
    # A restarted trial re-creates the TorchTrainer under the same run name and storage: Ray Train then
    # hands each worker the run's latest checkpoint (from any storage, S3 included) to resume from.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        train(config, report, **kwargs)
        return
    with checkpoint.as_directory() as resume_dir:
        train(config, report, resume_from=resume_dir, **kwargs)


def train_trial_distributed(config: dict, storage_path: str, workers: int = 2, use_gpu: bool = False,
                            cpus_per_worker: float = 1, split_csv: str | None = None) -> None:
    """A Tune trial that runs `workers` data-parallel Ray Train workers; their runs live inside the
    Tune experiment's folder on the same (shared) storage."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    config = {**config, "_split_csv": ray.put(split_csv) if split_csv is not None else None}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"{tune.get_context().get_trial_name()}-train",
                                       storage_path=f"{storage_path.rstrip('/')}/{tune.get_context().get_experiment_name()}",
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
