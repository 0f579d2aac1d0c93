"""GPU placement on a local Ray that advertises 2 logical GPUs (no CUDA here: placement only).

Ray hands out logical GPUs like any other resource and sets CUDA_VISIBLE_DEVICES; torch still sees no CUDA, so
the models run on the CPU. What is checked is what Ray is asked for and what it assigns: one embedding actor
per GPU with num_gpus=1, decode tasks separate from the actors, the clustering task given a GPU.
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def ray_two_gpus(no_local_ray):
    """A fresh local Ray with 2 CPUs and 2 logical GPUs, for this module only (see conftest.no_local_ray)."""
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("gpu_plan_imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 52, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _recording_tiny_clip(record_dir: str):
    """Embedder factory run inside each actor: notes which GPU Ray assigned it, then builds a tiny random CLIP."""
    import ray

    from imgrestore.embedding import random_clip_embedder

    with open(os.path.join(record_dir, f"actor_{os.getpid()}.json"), "w") as f:
        json.dump({"gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    return random_clip_embedder("tiny")


def test_actor_plan_one_actor_per_gpu(ray_two_gpus):
    from imgrestore.embedding.ray_embed import GPU_BATCH, plan_actors

    plan = plan_actors()
    # 2 CPUs: the two GPU actors get half a CPU each, so a whole CPU stays for the decode tasks
    assert plan == {"size": 2, "num_gpus": 1, "num_cpus": 0.5, "threads": None, "batch_size": GPU_BATCH,
                    "decode_batch": 16}
    assert plan_actors(num_actors=5)["size"] == 2  # never more actors than GPUs
    assert plan_actors(batch_size=32)["batch_size"] == 32


def test_embedding_runs_on_gpu_actors_with_separate_decode_tasks(ray_two_gpus, image_paths, tmp_path):
    from imgrestore.embedding import random_clip_embedder
    from imgrestore.embedding.ray_embed import (
        EmbedActor,
        decode_and_prepare,
        embed_images_local,
        embedding_dataset,
        plan_actors,
    )

    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    plan = plan_actors(batch_size=4)  # small batches so that both actors get work
    factory = functools.partial(_recording_tiny_clip, str(tmp_path))
    local = random_clip_embedder("tiny")
    ds = embedding_dataset(image_paths, plan, factory=factory, preparer=local.preparer)
    rows = {r["path"]: r["embedding"] for r in ds.take_all()}

    # the same vectors as the plain loop, and as the actor class called without Ray
    expected = embed_images_local(image_paths, embedder=local)
    np.testing.assert_allclose(np.stack([rows[p] for p in image_paths]), expected, atol=1e-5)
    direct = EmbedActor(factory=functools.partial(random_clip_embedder, "tiny"))
    out = direct(decode_and_prepare({"path": np.asarray(image_paths[:3])}, local.preparer))
    np.testing.assert_allclose(out["embedding"], expected[:3], atol=1e-5)

    # two actors, each holding its own logical GPU
    records = [json.loads(p.read_text()) for p in tmp_path.glob("actor_*.json")]
    assert len(records) == 2, records
    assert sorted(r["gpu_ids"][0] for r in records) == ["0", "1"]
    assert all(r["cuda_visible_devices"] == r["gpu_ids"][0] for r in records)

    # decoding ran as its own operator (CPU tasks), not fused into the GPU actors
    stats = ds.stats()
    assert "MapBatches(decode_and_prepare)" in stats and "MapBatches(EmbedActor)" in stats
    assert "decode_and_prepare)->MapBatches(EmbedActor" not in stats


def test_clustering_task_asks_for_a_gpu_and_resolves_on_its_node(ray_two_gpus):
    from imgrestore.clustering import cuml_available, plan_clustering, run_clustering

    assert plan_clustering("auto")["num_gpus"] == 1
    assert plan_clustering("cuml")["num_gpus"] == 1
    assert plan_clustering("cpu") == {"num_gpus": 0, "reason": "backend=cpu"}

    rng = np.random.default_rng(0)
    centers = rng.uniform(-10, 10, size=(3, 16))
    X = np.concatenate([c + rng.normal(size=(40, 16)) for c in centers]).astype(np.float32)
    res = run_clustering(X, X[:5], {"n_neighbors": 5, "min_cluster_size": 5}, backend="auto")
    assert res["placement"]["num_gpus"] == 1 and "2 GPU" in res["placement"]["reason"]
    assert len(res["where"]["gpu_ids"]) == 1  # the task held a logical GPU
    if not cuml_available()[0]:
        # auto resolved on the task's node: no RAPIDS there, so the CPU libraries, with the reason
        assert res["backend"] == "cpu" and "cuML" in res["where"]["why_not_cuml"]
        with pytest.raises(RuntimeError, match="cuml"):
            run_clustering(X, None, {}, backend="cuml")
    assert len(set(res["labels"]) - {-1}) == 3 and res["test_labels"].shape == (5,)


def test_num_workers_auto_follows_the_cpus_ray_assigned(ray_two_gpus):
    """num_workers: auto in a trial = the CPUs the space's resources gave it, minus one (not the node's CPUs)."""
    ray = ray_two_gpus

    @ray.remote
    def workers():
        from imgrestore.training.loop import loader_workers

        return loader_workers("auto")

    assert ray.get(workers.options(num_cpus=2).remote()) == 1
    assert ray.get(workers.options(num_cpus=1).remote()) == 0

    @ray.remote
    class Trial:  # Tune's trials and Ray Train's workers are actors
        def workers(self):
            from imgrestore.training.loop import loader_workers

            return loader_workers("auto")

    assert ray.get(Trial.options(num_cpus=2).remote().workers.remote()) == 1
    assert ray.get(Trial.remote().workers.remote()) == 0  # an actor holds no CPU by default: no workers
