"""Where scene clustering runs: a Ray task that asks for a GPU when the cluster has, or can add, one.

    result = run_clustering(X_train, X_test, cluster_params, backend="auto")

The decision (:func:`plan_clustering`, on the driver) is about *placement* only:

* ``backend="cpu"``: the task asks for no GPU.
* ``"auto"`` or ``"cuml"``: one GPU if the cluster has one now (``ray.cluster_resources()``) or its autoscaler can
  start a node with one (:func:`autoscaler_gpus`: the autoscaler's node types); otherwise none.

The *backend* is then resolved inside the task, on the node that runs it (``resolve_backend``: cuML importable and
a GPU visible *there*), never on the driver, which on this project's cluster is a CPU head. So ``auto`` means
"cuML where the GPU is": a GPU node without RAPIDS clusters on its CPU (logged with the reason); a forced ``cuml``
that cannot run is resolve_backend's RuntimeError, raised on the driver with its message.

On an autoscaling cluster with no GPU node up (``min_workers: 0``), asking for a GPU makes the autoscaler start
one: minutes before clustering begins, but that node then serves the trials that follow. ``backend="cpu"`` clusters
on the head at once instead.

The task returns plain NumPy arrays (labels, the 2-D map, the test points' map and labels), never the fitted
models: a cuML model cannot be unpickled on a driver without CUDA.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

from imgrestore.clustering.scene_clusters import BACKENDS, SceneClusterer, cuml_available

log = logging.getLogger(__name__)
# Written by `ray up` on the head (the cluster launcher): node types with their resources filled in per instance
# type (g5.xlarge -> GPU: 1) even where cluster.yaml says `resources: {}`.
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")
CLUSTER_PARAMS = ("n_neighbors", "min_dist", "n_components", "random_state", "min_cluster_size", "min_samples")


def autoscaler_gpus(config_path: str | os.PathLike | None = None) -> tuple[float, str]:
    """(GPUs the autoscaler could add, where that came from); (0, why) when none or unknown.

    Two sources, first hit wins: the cluster config the autoscaler reports to Ray's GCS (autoscaler v2,
    KubeRay; read through ``ray._private.state``, a private API, so any failure counts as "unknown"), and the
    cluster launcher's bootstrap YAML on the head (``~/ray_bootstrap_config.yaml``).
    """
    try:
        import ray._private.state

        limits = ray._private.state.state.get_max_resources_from_cluster_config() or {}
        if limits.get("GPU", 0) > 0:
            return float(min(limits["GPU"], sys.maxsize)), "the autoscaler's cluster config (GCS)"
    except Exception as e:  # private API: its absence only means we cannot tell from here
        log.debug("no cluster config from the GCS: %s", e)
    path = Path(config_path or AUTOSCALER_CONFIG).expanduser()
    if not path.is_file():
        return 0.0, "no autoscaler config found"
    try:
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
    except Exception as e:
        return 0.0, f"{path} unreadable ({type(e).__name__}: {e})"
    total = 0.0
    for name, node_type in (config.get("available_node_types") or {}).items():
        gpus = float((node_type.get("resources") or {}).get("GPU", 0))
        if name == config.get("head_node_type"):
            continue  # the head is up already: its GPUs, if any, are in cluster_resources()
        total += gpus * int(node_type.get("max_workers", config.get("max_workers", 0)) or 0)
    if total > 0:
        return total, f"{path} (autoscaling node types with GPUs)"
    return 0.0, f"{path} has no GPU node type"


def plan_clustering(backend: str = "auto", autoscaler_config: str | os.PathLike | None = None) -> dict:
    """{'num_gpus': 0 or 1, 'reason': why} for the clustering task on the connected Ray cluster."""
    import ray

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return {"num_gpus": 0, "reason": "backend=cpu"}
    now = float(ray.cluster_resources().get("GPU", 0))
    if now >= 1:
        return {"num_gpus": 1, "reason": f"the cluster has {now:g} GPU(s)"}
    can_add, source = autoscaler_gpus(autoscaler_config)
    if can_add >= 1:
        return {"num_gpus": 1, "reason": f"no GPU up, but the autoscaler can add one ({source}): waiting for it"}
    return {"num_gpus": 0, "reason": f"no GPU in the cluster and none to autoscale ({source})"}


def _where(backend: str) -> dict:
    """Which node and GPU the work ran on, and why cuML was not used (if it was not)."""
    info = {"host": socket.gethostname(), "gpu_ids": [], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import ray

        if ray.is_initialized():
            info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
            info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    if backend != "cuml":
        info["why_not_cuml"] = cuml_available()[1] or "backend=cpu requested"
    return info


def cluster_job(X_train: np.ndarray, X_test: np.ndarray, params: dict, backend: str = "auto") -> dict:
    """Fit on the train embeddings, place and label the test ones; NumPy results only (runs in the Ray task)."""
    t0 = time.perf_counter()
    clusterer = SceneClusterer(**{k: params[k] for k in CLUSTER_PARAMS if k in params}, backend=backend)
    clusterer.fit(np.asarray(X_train, np.float32))
    n_comp = clusterer.n_components
    test_map = clusterer.transform(X_test) if len(X_test) else np.zeros((0, n_comp), np.float32)
    test_labels = clusterer.predict_embedded(test_map)
    where = _where(clusterer.backend_)
    log.info("scene clusters: backend %s on %s (GPU ids %s) in %.1fs", clusterer.backend_, where["host"],
             where["gpu_ids"] or "none", time.perf_counter() - t0)
    return {"labels": clusterer.labels_, "embedding": clusterer.embedding_, "test_map": np.asarray(test_map),
            "test_labels": np.asarray(test_labels), "backend": clusterer.backend_, "params": clusterer.params_,
            "adjustments": clusterer.adjustments_, "where": where, "fit_seconds": time.perf_counter() - t0}


def run_clustering(X_train, X_test, params: dict, backend: str = "auto", use_ray: bool | None = None,
                   autoscaler_config: str | os.PathLike | None = None) -> dict:
    """Run :func:`cluster_job` as a Ray task placed by :func:`plan_clustering` (or in this process when Ray is
    not initialised, or ``use_ray=False``). Adds 'placement' (num_gpus, reason) to the result."""
    X_test = np.zeros((0, np.shape(X_train)[1]), np.float32) if X_test is None else X_test
    if use_ray is None:
        import ray

        use_ray = ray.is_initialized()
    if not use_ray:
        result = cluster_job(X_train, X_test, params, backend)
        result["placement"] = {"num_gpus": 0, "reason": "in this process (no Ray)"}
        return result
    import ray

    plan = plan_clustering(backend, autoscaler_config)
    log.info("scene clusters: a Ray task with %d GPU (%s), backend %s resolved on its node",
             plan["num_gpus"], plan["reason"], backend)
    task = ray.remote(cluster_job).options(num_cpus=1, num_gpus=plan["num_gpus"], name="scene_clusters")
    try:
        result = ray.get(task.remote(X_train, X_test, params, backend))
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, (RuntimeError, ValueError)):  # e.g. backend='cuml' where it cannot run
            extra = " (the task had no GPU: " + plan["reason"] + ")" if plan["num_gpus"] == 0 else ""
            raise type(cause)(f"{cause}{extra}") from None
        raise
    result["placement"] = plan
    return result
