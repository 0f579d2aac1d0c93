"""Batch embedding of image files with Ray Data, cached by (embedder, file content).

    paths -> sha256 (cached by size+mtime) -> already-embedded files come from the cache
          -> ray.data.from_items(new paths)
          -> map_batches(decode_and_prepare, CPU tasks): read, resize/crop -> uint8 (N, 3, S, S)
          -> map_batches(EmbedActor, compute=ActorPoolStrategy(size=n), num_gpus=1 or 0, batch_size=...)

The plan (:func:`plan_actors`) follows the cluster:

* **GPUs**: one actor per GPU (``num_gpus=1``), batches of 128 images (enough work per forward pass to keep a
  GPU busy with CLIP ViT-L/14 at 336 px, a few GB of activations in bf16; the actor halves its forward pass on
  an out-of-memory error), bf16 weights (fp16 where bf16 is unsupported). Decoding and resizing run in
  separate 1-CPU tasks of 16 images, anywhere in the cluster: their different resources keep Ray Data from
  fusing them into the actors, so the GPU only runs the model, and 4 batches queued per actor
  (``max_tasks_in_flight_per_actor``) hide the transfer of the next one. GPU actors take 1 CPU each, less when
  the cluster is so small that decode tasks would get none (never all of them: ray #44687).
* **No GPU**: CPU actors, always leaving one CPU free for the decode tasks (actors that take every CPU starve
  the read tasks and the job hangs), never asking one actor for more CPUs than the largest node has (an actor
  lives on one node: on a cluster of small nodes a bigger request would wait forever), batches of 16.

The plan is read from ``ray.cluster_resources()`` when the embedding starts: GPU nodes that the autoscaler has
not started yet do not count (docs/cluster.md). Ray's progress bars show the two stages. ``embed_images_local``
is the same model in a plain single-process loop (used by the benchmark and to check the Ray path gives the
same vectors); ``EmbedActor`` and ``decode_and_prepare`` are plain Python and can be called without Ray.
The cache is keyed by (embedder, file content), not by precision: a file embedded on a GPU (bf16) and on the
CPU (fp32) gets slightly different vectors (cosine ~0.9999 for the StreetCLIP architecture in bf16 vs fp32,
measured on CPU), and the cache keeps whichever came first; scene clusters do not notice.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imgrestore.data.io import read_rgb
from imgrestore.embedding.cache import EmbeddingCache, default_cache_dir, hash_files
from imgrestore.embedding.embedders import create_embedder, create_preparer, normalize_spec

log = logging.getLogger(__name__)
GPU_BATCH = 128  # images per actor batch on a GPU
CPU_BATCH = 16  # images per batch on CPU actors (measured: larger batches are no faster on CPU)
DECODE_BATCH = 16  # images per decode task on the GPU path: many small tasks decode in parallel
IN_FLIGHT = 4  # batches queued per GPU actor, so the next one is already there when a forward pass ends


def decode_and_prepare(batch: dict[str, np.ndarray], preparer) -> dict[str, np.ndarray]:
    """Read each path as RGB uint8 (gray inputs get 3 channels) and prepare it: {'path', 'pixels' (N,3,S,S)}."""
    paths = [str(p) for p in batch["path"]]
    return {"path": np.asarray(paths), "pixels": preparer([read_rgb(p) for p in paths])}


class EmbedActor:
    """Stateful Ray Data UDF: builds the embedder once, then embeds prepared batches ({'path', 'pixels'}).

    ``factory`` (a picklable callable returning an embedder) replaces ``spec``, e.g. a random architecture in a
    benchmark. Usable without Ray: ``EmbedActor("effnet-lite0")({"path": [...], "pixels": array})``.
    """

    def __init__(self, spec: str | None = None, num_threads: int | None = None, factory=None, dtype="auto"):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        if factory is None and spec is None:
            raise ValueError("EmbedActor needs an embedder spec or a factory")
        self.embedder = factory() if factory is not None else create_embedder(spec, dtype=dtype)
        log.info("embedding actor: %r", self.embedder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"path": np.asarray(batch["path"]), "embedding": self.embedder.embed_prepared(batch["pixels"])}


def plan_actors(num_actors: int | None = None, num_cpus_per_actor: float | None = None,
                batch_size: int | None = None) -> dict:
    """Actor pool for the current Ray cluster (see the module doc):
    {'size', 'num_gpus', 'num_cpus', 'threads', 'batch_size', 'decode_batch'}."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus >= 1:
        size = num_actors or gpus
        if size > gpus:
            log.warning("num_actors=%d > %d GPUs: using %d (a GPU actor beyond the GPUs would wait forever)",
                        size, gpus, gpus)
            size = gpus
        per = 1.0 if num_cpus_per_actor is None else float(num_cpus_per_actor)
        if size * per > cpus - 1:  # keep at least one CPU for the decode tasks (ray #44687)
            per = round(max(0.0, (cpus - 1) / size), 2)
            log.warning("%d GPU actor(s) on a %d-CPU cluster: %s CPU each, leaving CPUs for decoding", size, cpus,
                        per)
        batch = batch_size or GPU_BATCH
        return {"size": size, "num_gpus": 1, "num_cpus": per, "threads": None, "batch_size": batch,
                "decode_batch": min(batch, DECODE_BATCH)}
    spare = max(1, cpus - 1)  # headroom: one CPU for decoding / the driver
    size = num_actors or max(1, spare // 4)
    if size > spare:
        log.warning("num_actors=%d but only %d CPUs can be given to actors (one kept free): using %d",
                    size, spare, spare)
        size = spare
    per = int(num_cpus_per_actor or max(1, spare // size))
    if size * per > spare:
        # Actors holding every CPU starve the decode tasks (when Ray does not fuse them into the actors)
        # and the job waits forever (ray #44687): keep one CPU free.
        log.warning("%d actor(s) x %d CPUs leaves no CPU for decoding on a %d-CPU cluster: using %d CPU(s) each",
                    size, per, cpus, max(1, spare // size))
        per = max(1, spare // size)
    largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
    if per > largest >= 1:  # the cluster's CPUs are spread over nodes; one actor gets one node's at most
        log.warning("%d CPUs per actor but the largest node has %d: using %d", per, largest, largest)
        per = largest
    batch = batch_size or CPU_BATCH
    return {"size": size, "num_gpus": 0, "num_cpus": per, "threads": per, "batch_size": batch, "decode_batch": batch}


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True)


def embedding_dataset(paths: list[str], plan: dict, spec: str | None = None, factory=None, preparer=None):
    """The lazy Ray Dataset of the two stages (nothing runs until it is consumed)."""
    import ray

    preparer = preparer if preparer is not None else create_preparer(spec)
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(decode_and_prepare, fn_kwargs={"preparer": preparer}, batch_size=plan["decode_batch"],
                        num_cpus=1)
    pool = (ray.data.ActorPoolStrategy(size=plan["size"], max_tasks_in_flight_per_actor=IN_FLIGHT)
            if plan["num_gpus"] else ray.data.ActorPoolStrategy(size=plan["size"]))
    return ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"spec": spec, "num_threads": plan["threads"], "factory": factory},
        compute=pool,
        num_gpus=plan["num_gpus"],
        num_cpus=plan["num_cpus"],
        batch_size=plan["batch_size"],
    )


def ray_embed_paths(paths: list[str], spec: str | None = None, batch_size: int | None = None,
                    num_actors: int | None = None, num_cpus_per_actor: float | None = None, factory=None,
                    preparer=None) -> tuple[dict[str, np.ndarray], dict]:
    """Embed files with Ray Data (no cache): ({path: unit vector}, the plan used).

    The plan also records the pipeline's pace: ``first_batch_s`` (until the first embeddings come out: Ray Data's
    start, the actors' model build) and ``steady_images_per_s`` (the images after the first batch over the time
    they took), the rate that matters for a large set, where the start is paid once."""
    _ensure_ray()
    plan = plan_actors(num_actors, num_cpus_per_actor, batch_size)
    log.info("Ray Data embedding of %d images with %s: %d actor(s), %s GPU and %s CPU each, batch %d "
             "(decode tasks: %d images)", len(paths), spec or "a custom embedder", plan["size"], plan["num_gpus"],
             plan["num_cpus"], plan["batch_size"], plan["decode_batch"])
    ds = embedding_dataset(paths, plan, spec, factory, preparer)
    out: dict[str, np.ndarray] = {}
    start, first, first_n = time.perf_counter(), None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for p, v in zip(batch["path"], batch["embedding"]):
            out[str(p)] = np.asarray(v, np.float32)
        if first is None:
            first, first_n = time.perf_counter(), len(out)
    end = time.perf_counter()
    plan["first_batch_s"] = (first or end) - start
    after = len(out) - first_n  # none when everything came out in one batch: no rate to give
    plan["steady_images_per_s"] = after / (end - first) if after and end > first else float("nan")
    log.info("Ray Data embedding: first embeddings after %.1f s, then %.0f images/s", plan["first_batch_s"],
             plan["steady_images_per_s"])
    missing = set(paths) - set(out)
    if missing:
        raise RuntimeError(f"Ray Data returned no embedding for {len(missing)} file(s), e.g. {sorted(missing)[0]}")
    return out, plan


def embed_images_local(paths: list[str], embedder_spec: str = "effnet-lite0", batch_size: int = 16,
                       embedder=None) -> np.ndarray:
    """The same model in a plain single-process loop (no Ray, no cache): (N, dim) in `paths` order."""
    embedder = embedder or create_embedder(embedder_spec)
    chunks = [embedder.embed([read_rgb(p) for p in paths[i:i + batch_size]])
              for i in range(0, len(paths), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)


def embed_images(paths: list[str], embedder_spec: str = "effnet-lite0", batch_size: int | None = None,
                 num_actors: int | None = None, cache_dir: str | os.PathLike | None = None,
                 num_cpus_per_actor: int | None = None, use_cache: bool = True) -> pd.DataFrame:
    """Embed image files with Ray Data; only files whose (embedder, content) is not cached are computed.

    Returns a DataFrame (name, path, sha256, embedding) in `paths` order; `embedding` holds float32 unit
    vectors. ``frame.attrs``: embedder (the canonical spec), n_embedded (distinct contents computed in this
    call), n_cached (files served from the cache), seconds (time spent embedding).
    """
    spec = normalize_spec(embedder_spec)
    paths = [str(p) for p in paths]
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    shas = hash_files(paths, cache_dir)
    cache = EmbeddingCache(cache_dir, spec)
    known = cache.load() if use_cache else {}
    n_cached = sum(h in known for h in shas)
    todo: dict[str, str] = {}  # sha -> one path with that content
    for p, h in zip(paths, shas):
        if h not in known and h not in todo:
            todo[h] = p
    log.info("embedder %s: %d files, %d distinct contents to embed, the rest cached in %s",
             spec, len(paths), len(todo), cache.path)
    seconds = 0.0
    if todo:
        start = time.perf_counter()
        by_path, plan = ray_embed_paths(list(todo.values()), spec, batch_size, num_actors, num_cpus_per_actor)
        log.info("embedded %d images in %.1fs with %d %s actor(s)", len(todo), time.perf_counter() - start,
                 plan["size"], "GPU" if plan["num_gpus"] else "CPU")
        seconds = time.perf_counter() - start
        new_shas = list(todo)
        matrix = np.stack([by_path[todo[h]] for h in new_shas])
        known.update(zip(new_shas, matrix))
        if use_cache:
            cache.add(new_shas, matrix)
    frame = pd.DataFrame({"name": [Path(p).name for p in paths], "path": paths, "sha256": shas,
                          "embedding": [known[h] for h in shas]})
    frame.attrs.update(embedder=spec, n_embedded=len(todo), n_cached=n_cached, seconds=seconds)
    return frame
