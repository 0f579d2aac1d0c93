"""Running on a cluster: cluster.yaml, and the pipelines on a real multi-node Ray cluster.

* cluster.yaml is checked offline by Ray's own cluster-launcher code (`prepare_config` merges the AWS
  defaults exactly as `ray up` does, `validate_config` applies ray-schema.json and the launcher's checks);
  only the cloud calls of `ray up` (resource detection, IAM / subnet / key bootstrap) are left out.
* The multi-node tests start a real Ray cluster on this machine with `ray.cluster_utils.Cluster`: a head and
  two worker raylets, separate processes with one logical CPU each, talking over the network like machines
  do. Storage is shared (one disk), as S3 is on a real cluster. They check that embedding actors and trials
  land on several nodes, that a search survives losing a worker node mid-search (the trial restarts from
  its checkpoint on another node), and that a killed driver resumes with `--resume latest` without
  duplicated or orphaned MLflow runs.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from ray import tune

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"

# -- cluster.yaml, validated offline ---------------------------------------------------------------------


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared_config() -> dict:
    """What `ray up` builds before it talks to AWS: AWS defaults merged, setup commands merged per node type,
    docker settings checked, per-type min/max workers filled in; then validated like `ray up` does."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(cluster_config())
    validate_config(config)
    return config


def test_cluster_yaml_passes_ray_cluster_launcher_validation():
    from ray.autoscaler._private.util import validate_config

    raw = cluster_config()
    validate_config(copy.deepcopy(raw))  # ray-schema.json (no unknown keys anywhere) + the launcher's checks
    config = prepared_config()
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert head["max_workers"] == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head is a CPU machine"
    (name, gpu), = workers.items()
    assert re.match(r"(g5|g6|g6e|g4dn)\.", gpu["node_config"]["InstanceType"]), "one NVIDIA GPU per worker"
    assert gpu["min_workers"] == 0 and 1 <= gpu["max_workers"] <= config["max_workers"]
    # `ray up` merges its AWS defaults with a shallow dict update: a key left out of cluster.yaml would
    # bring the default's commands (which install a Ray nightly). Every command list is ours.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in raw, key
    # the cluster runs the same Ray (and Python) as the driver: the image tag pins both
    import ray

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}"
                                                f"{sys.version_info.minor}")


def _install_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c]


def test_cluster_setup_commands_install_this_project():
    config = prepared_config()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    # the checkout is copied to every node, then installed from there with the gpu extra
    (remote,) = [r for r, local in config["file_mounts"].items() if (ROOT / local).resolve() == ROOT]
    home_path = remote.replace("~", "$HOME", 1)
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in, per node type
        installs = _install_commands(config[key])
        torch_at = next(i for i, c in enumerate(installs) if re.search(rf"pip install .*\b{re.escape(torch_pin)}\b", c))
        project_at = next(i for i, c in enumerate(installs) if f"{home_path}[gpu]" in c or f"{remote}[gpu]" in c)
        assert torch_at < project_at, f"{key}: torch must be installed (pinned) before the project"
    assert any("boto3" in c for c in _install_commands(config["head_setup_commands"])), \
        "the autoscaler on the head needs boto3 (the AWS defaults' head_setup_commands installed it)"
    # data synced from S3 to the same path on every node
    assert any(re.search(r"aws s3 sync s3://\S+ \$HOME/data", c) for c in config["setup_commands"])


def test_cluster_mlflow_server_on_head_localhost_with_s3_artifacts():
    config = prepared_config()
    start = config["head_start_ray_commands"]
    mlflow_at = next(i for i, c in enumerate(start) if "mlflow server" in c)
    ray_at = next(i for i, c in enumerate(start) if "ray start --head" in c)
    assert mlflow_at < ray_at
    command = " ".join(start[mlflow_at].split())
    assert "--host 127.0.0.1" in command and "--port 5000" in command
    assert re.search(r"--artifacts-destination s3://", command)
    assert re.search(r"--backend-store-uri sqlite:///\$HOME/", command)
    assert not any("mlflow" in c for c in config["worker_start_ray_commands"])


# -- resuming after a driver crash: MLflow runs of trials Tune never saved ---------------------------------


def test_resumed_trial_logger_deletes_runs_of_trials_the_experiment_lost(tmp_path):
    """Tune saves its experiment state every few seconds: a driver killed in between may have created MLflow
    runs for trials the restored experiment does not have (Tune samples them again under new ids). On the
    first step of the resumed search those runs are deleted; known trials keep theirs."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from imgrestore.tracking import get_or_create_experiment
    from imgrestore.tracking.tune_callback import MLflowTrialLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = get_or_create_experiment("resume", uri)
    client = MlflowClient(uri)
    parent = client.create_run(exp).info.run_id
    trial = lambda tid: SimpleNamespace(trial_id=tid, config={"lr": 0.1}, last_result={})  # noqa: E731

    before_kill = MLflowTrialLogger(uri, exp, parent)
    for tid in ("kept", "lost"):
        before_kill.on_trial_start(0, [], trial(tid))
    resumed = MLflowTrialLogger(uri, exp, parent)
    resumed.set_state(before_kill.get_state())  # the callback state Tune saved
    resumed.setup()
    resumed.on_step_begin(0, [trial("kept"), trial("new")])
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [k.data.tags["ray_trial_id"] for k in kids] == ["kept"]
    assert set(resumed.runs) == {"kept"}
    resumed.on_step_begin(1, [trial("kept")])  # only the first step of a fit looks
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")) == 1


# -- a real multi-node cluster on this machine ----------------------------------------------------------

# Node failure is noticed within ~1.5 s instead of Ray's default ~15 s (the test's only tuning).
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                          "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
WORKER_NODES = 2


@pytest.fixture(scope="module")
def cluster(no_local_ray):
    """Head (1 CPU) + 2 worker nodes (1 CPU each), the driver (this process) connected to the head.

    Ray's temp dir is private to this module: the cluster's address file must not make other Ray users on
    this machine (ray.init() looks there) join this cluster. Everything is shut down even on failure.
    """
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
        for _ in range(WORKER_NODES):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def full_cluster(cluster):
    """The cluster with all its worker nodes (a test may have removed one)."""
    while len(cluster.worker_nodes) < WORKER_NODES:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dacon, tiny_space_yaml):
    work = tmp_path_factory.mktemp("cluster")
    shutil.copytree(tiny_dacon, work / "data", ignore=shutil.ignore_patterns("preprocess", "*_preproc_1.csv"))
    (work / "tiny.yaml").write_text(tiny_space_yaml(epochs=3))
    return work


def load_tune_pipeline():
    spec = importlib.util.spec_from_file_location("imgrestore_pipeline_tune", ROOT / "pipelines" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tune_argv(work: Path, cluster, storage: str, uri: str, out: str, *extra: str, space: str = "tiny.yaml"):
    return ["--data", str(work / "data"), "--space", str(work / space), "--embedder", "effnet-lite0",
            "--tracking-uri", uri, "--storage", storage, "--out", str(work / out),
            "--ray-address", cluster.address, *extra]


def node_ids(cluster) -> tuple[str, set[str]]:
    return cluster.head_node.node_id, {n.node_id for n in cluster.worker_nodes}


@pytest.mark.slow
def test_preprocess_embedding_actors_spread_over_nodes(full_cluster, work):
    import ray

    from imgrestore.embedding.ray_embed import plan_actors
    from imgrestore.preprocess import run_preprocess

    assert plan_actors()["num_cpus"] == 1  # 3 CPUs in the cluster, but no node has more than one
    before = set(ray._private.state.actors())
    pre = run_preprocess(work / "data", num_actors=2, log_mlflow=False, force=True)
    assert pre.summary["n_embedded"] == 36 and not pre.reused
    # Ray's public state API needs the dashboard (ray[default]); the GCS actor table is the same record
    actors = {k: v for k, v in ray._private.state.actors().items()
              if k not in before and "EmbedActor" in v["ActorClassName"]}
    nodes = {a["Address"]["NodeID"] for a in actors.values()}
    assert len(actors) == 2 and len(nodes) == 2, actors
    head, workers = node_ids(full_cluster)
    assert nodes <= {head} | workers


class RemoveNodeAfterFirstCheckpoint(tune.Callback):
    """Records (trial, epoch, node) of every result; removes the worker node of the first trial whose
    epoch-1 checkpoint Tune has on storage. (Tune pickles its callbacks: the cluster is not pickled.)"""

    def __init__(self, cluster):
        self.cluster = cluster
        self.workers = {n.node_id for n in cluster.worker_nodes}
        self.results: list[tuple[str, int, str]] = []  # (trial, epoch, node)
        self.removed: tuple[str, str] | None = None  # (trial, node)

    def __getstate__(self):
        return {**self.__dict__, "cluster": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append((trial.trial_id, result["epoch"], result["node_id"]))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # called once the checkpoint is on storage, just before Tune records it as the one to restore from
        result = trial.last_result
        if self.removed is None and result["epoch"] == 1 and result["node_id"] in self.workers:
            node = next(n for n in self.cluster.worker_nodes if n.node_id == result["node_id"])
            self.cluster.remove_node(node)  # kills its raylet and every process on it, the trial included
            self.removed = (trial.trial_id, node.node_id)


@pytest.mark.slow
def test_search_survives_losing_a_worker_node(full_cluster, work, monkeypatch, capsys):
    """Two trials on two nodes; after the first checkpoint the node of one of them is removed: that trial
    restarts from its checkpoint on a remaining node, and the run ends with a champion and a valid zip."""
    from mlflow.tracking import MlflowClient

    from imgrestore.data.dacon import load_dataset
    from imgrestore.submission.predict import check_submission

    cluster = full_cluster
    killer = RemoveNodeAfterFirstCheckpoint(cluster)
    pipeline = load_tune_pipeline()
    run_search = pipeline.run_search
    monkeypatch.setattr(pipeline, "run_search", lambda *a, **kw: run_search(*a, **kw, callbacks=[killer]))
    uri = f"sqlite:///{work}/node-loss.db"
    code = pipeline.main(tune_argv(work, cluster, str(work / "runs-node-loss"), uri, "node-loss.zip"))
    assert code == 0
    assert "models:/imgrestore-tiny@champion" in capsys.readouterr().out

    assert killer.removed, "no trial reported from a worker node"
    victim, dead_node = killer.removed
    first_epoch_nodes = {node for _, epoch, node in killer.results if epoch == 1}
    assert len(first_epoch_nodes) >= 2, "the two trials ran on different nodes"
    after = [(epoch, node) for trial, epoch, node in killer.results if trial == victim]
    after = after[after.index((1, dead_node)) + 1:]
    assert [epoch for epoch, _ in after] == [2, 3], "restarted from its epoch-1 checkpoint, not from scratch"
    assert all(node != dead_node for _, node in after), "and on another node"

    assert check_submission(work / "node-loss.zip", load_dataset(work / "data").test) == 6
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`imgrestore.stage` = 'tune'")
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    champion_run = client.get_model_version_by_alias("imgrestore-tiny", "champion").run_id
    assert champion_run in {parent.info.run_id} | {k.info.run_id for k in kids}  # a classical one, or a trial's


def _running_trial_with_saved_checkpoint(storage: Path) -> str | None:
    """A trial that Tune's latest saved experiment state lists as RUNNING past its first epoch, if any: its
    epoch-1 checkpoint is then recorded in that state (Tune records a result's checkpoint before it takes the
    next result), and that state, written every few seconds, is what a resume starts from."""
    states = sorted(storage.glob("tiny-*/experiment_state-*.json"))
    if not states:
        return None
    try:
        state = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being written
        return None
    for trial_json, runtime_json in state["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        if trial["status"] == "RUNNING" and (runtime.get("last_result") or {}).get("epoch", 0) >= 2 \
                and _recorded_checkpoints_exist(runtime):
            return trial["trial_id"]
    return None


def _recorded_checkpoints_exist(runtime: dict) -> bool:
    """Every checkpoint folder the saved state records for a trial is still on disk. Tune deletes a trial's
    superseded checkpoint when it registers a newer one and saves its state just after; a state read in between
    names a checkpoint that is gone, and a resume from it cannot restore the trial (Tune: "Could not recover from
    checkpoint"). With this test's 0.3 s epochs a kill lands in that window now and then (seen once in CI); with
    real epochs the window is milliseconds against minutes, but it is Tune's and a killed search can meet it."""
    import re

    blob = (runtime.get("checkpoint_manager") or {}).get("value", "")
    try:
        raw = bytes.fromhex(blob)
    except (TypeError, ValueError):
        return False
    paths = {m.decode() for m in re.findall(rb"/[^\x00-\x1f\x7f-\xff]*?checkpoint_\d{6}", raw)}
    return bool(paths) and all(Path(p).is_dir() for p in paths)


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_duplicating_runs(full_cluster, work, capsys, tiny_space_yaml):
    """`python pipelines/tune.py` against the cluster, SIGKILLed once Tune's saved state holds a checkpoint
    of a running trial; then `--resume latest` (same storage, same MLflow) finishes the same search: that
    trial continues from its checkpoint, one parent run (FINISHED), one child run per trial with every
    epoch, none left RUNNING, a champion and a valid zip. Storage is given as a URI, as s3:// would be."""
    from mlflow.tracking import MlflowClient

    from imgrestore.data.dacon import load_dataset
    from imgrestore.submission.predict import check_submission
    from imgrestore.tuning.search import PARENT_FILE

    cluster, epochs = full_cluster, 16
    (work / "tiny-long.yaml").write_text(tiny_space_yaml(epochs=epochs))
    storage = work / "runs-driver-kill"
    uri = f"sqlite:///{work}/driver-kill.db"

    def argv(*extra):
        return tune_argv(work, cluster, storage.as_uri(), uri, "driver-kill.zip", *extra, space="tiny-long.yaml")

    log = (work / "driver-kill.log").open("w")
    # Tune saves its experiment state at most every 10 s by default ("auto"); every second here, so that
    # the kill can come after a save that recorded a checkpoint of a running trial
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "tune.py"), *argv()], cwd=work,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        victim = None
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            victim = _running_trial_with_saved_checkpoint(storage)
        assert victim, f"no saved checkpoint of a running trial: {(work / 'driver-kill.log').read_text()[-3000:]}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert not (work / "driver-kill.zip").exists()

    (exp_dir,) = storage.glob("tiny-*")
    parent_id = json.loads((exp_dir / PARENT_FILE).read_text())["run_id"]
    code = load_tune_pipeline().main(argv("--resume", "latest"))
    assert code == 0
    assert "models:/imgrestore-tiny@champion" in capsys.readouterr().out
    assert check_submission(work / "driver-kill.zip", load_dataset(work / "data").test) == 6

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`imgrestore.stage` = 'tune'")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED" and "best_score" in parents[0].data.metrics
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(kids) == 2, [(k.data.tags.get("ray_trial_id"), k.info.status) for k in kids]
    assert len({k.data.tags["ray_trial_id"] for k in kids}) == 2 and victim in {k.data.tags["ray_trial_id"] for k in kids}
    assert all(k.info.status == "FINISHED" for k in kids)
    for kid in kids:  # every epoch of every trial is in its run
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "epoch")]
        assert set(steps) == set(range(1, epochs + 1))
        if kid.data.tags["ray_trial_id"] == victim:
            assert steps.count(1) == 1, "the killed trial continued from its checkpoint, not from scratch"
    champion_run = client.get_model_version_by_alias("imgrestore-tiny", "champion").run_id
    assert champion_run in {parent_id} | {k.info.run_id for k in kids}  # a classical restorer's, or a trial's
