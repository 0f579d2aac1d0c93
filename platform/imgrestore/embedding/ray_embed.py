"""Batch embedding of image files with Ray Data, cached by (embedder, file content).

    paths -> sha256 (cached by size+mtime) -> already-embedded files come from the cache
          -> ray.data.from_items(new paths) -> map_batches(decode, tasks)
          -> map_batches(EmbedActor, compute=ActorPoolStrategy(size=n), num_gpus=1 or 0, batch_size=...)

One actor per GPU (``num_gpus=1``) when the cluster has GPUs; CPU actors otherwise, always leaving one CPU
free for the decode tasks (actors that take every CPU starve the read tasks and the job hangs), and never
asking one actor for more CPUs than the largest node has (an actor lives on one node: on a cluster of small
nodes a bigger request would wait forever). Ray's
progress bars show the two stages. ``embed_images_local`` is the same model in a plain single-process loop
(used by the benchmark and to check the Ray path gives the same vectors).
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
from imgrestore.embedding.embedders import create_embedder, normalize_spec

log = logging.getLogger(__name__)


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """Read each path as RGB uint8 (gray inputs get 3 channels). Shapes may differ between images."""
    paths = [str(p) for p in batch["path"]]
    return {"path": paths, "image": [read_rgb(p) for p in paths]}


class EmbedActor:
    """Stateful Ray Data UDF: builds the embedder once per actor, then embeds batches of decoded images."""

    def __init__(self, spec: str, num_threads: int | None = None):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.embedder = create_embedder(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [np.asarray(im, dtype=np.uint8) for im in batch["image"]]
        return {"path": np.asarray(batch["path"]), "embedding": self.embedder.embed(images)}


def plan_actors(num_actors: int | None = None, num_cpus_per_actor: int | None = None) -> dict:
    """Actor pool for the current Ray cluster: {'size', 'num_gpus', 'num_cpus', 'threads'}."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus >= 1:
        size = num_actors or gpus
        if size > gpus:
            log.warning("num_actors=%d > %d GPUs: using %d (a GPU actor beyond the GPUs would wait forever)",
                        size, gpus, gpus)
            size = gpus
        return {"size": size, "num_gpus": 1, "num_cpus": num_cpus_per_actor or 1, "threads": None}
    spare = max(1, cpus - 1)  # headroom: one CPU for decoding / the driver
    size = num_actors or max(1, spare // 4)
    if size > spare:
        log.warning("num_actors=%d but only %d CPUs can be given to actors (one kept free): using %d",
                    size, spare, spare)
        size = spare
    per = num_cpus_per_actor or max(1, spare // size)
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
    return {"size": size, "num_gpus": 0, "num_cpus": per, "threads": per}


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True)


def _ray_embed(paths: list[str], spec: str, batch_size: int, num_actors: int | None,
               num_cpus_per_actor: int | None) -> dict[str, np.ndarray]:
    import ray

    _ensure_ray()
    plan = plan_actors(num_actors, num_cpus_per_actor)
    log.info("Ray Data embedding of %d images with %s: %d actor(s), %s GPU and %d CPU each, batch %d",
             len(paths), spec, plan["size"], plan["num_gpus"], plan["num_cpus"], batch_size)
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(_decode_batch, batch_size=batch_size, num_cpus=1)
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"spec": spec, "num_threads": plan["threads"]},
        compute=ray.data.ActorPoolStrategy(size=plan["size"]),
        num_gpus=plan["num_gpus"],
        num_cpus=plan["num_cpus"],
        batch_size=batch_size,
    )
    out: dict[str, np.ndarray] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for p, v in zip(batch["path"], batch["embedding"]):
            out[str(p)] = np.asarray(v, np.float32)
    missing = set(paths) - set(out)
    if missing:
        raise RuntimeError(f"Ray Data returned no embedding for {len(missing)} file(s), e.g. {sorted(missing)[0]}")
    return out


def embed_images_local(paths: list[str], embedder_spec: str = "effnet-lite0", batch_size: int = 16,
                       embedder=None) -> np.ndarray:
    """The same model in a plain single-process loop (no Ray, no cache): (N, dim) in `paths` order."""
    embedder = embedder or create_embedder(embedder_spec)
    chunks = [embedder.embed([read_rgb(p) for p in paths[i:i + batch_size]])
              for i in range(0, len(paths), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)


def embed_images(paths: list[str], embedder_spec: str = "effnet-lite0", batch_size: int = 16,
                 num_actors: int | None = None, cache_dir: str | os.PathLike | None = None,
                 num_cpus_per_actor: int | None = None, use_cache: bool = True) -> pd.DataFrame:
    """Embed image files with Ray Data; only files whose (embedder, content) is not cached are computed.

    Returns a DataFrame (name, path, sha256, embedding) in `paths` order; `embedding` holds float32 unit
    vectors. ``frame.attrs``: embedder (the canonical spec), n_embedded (distinct contents computed in this
    call), n_cached (files served from the cache), seconds (time spent embedding).
    """
    spec = normalize_spec(embedder_spec)
    paths = [str(p) for p in paths]
    if batch_size < 1:
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
        by_path = _ray_embed(list(todo.values()), spec, batch_size, num_actors, num_cpus_per_actor)
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
