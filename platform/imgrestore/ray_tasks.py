"""An ordered map over Ray tasks with a bound on the tasks in flight: the hue-prior decoding of a search's
validation images (`tuning.decoding`) and of a submission (`submission.predict`) both run through it.

Why not `ray.util.ActorPool` or Ray Data: the work is a stream the driver produces one restoration at a time (the
network stays in the driver), each chunk is seconds of work, and the results must come back in the stream's order
with few images waiting in Ray's object store (a test set can be thousands of 512 px images). Plain tasks,
collected oldest first, do exactly that.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Iterable, Iterator


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def chunk_size(n: int, largest: int) -> int:
    """Items per task: at most `largest`, fewer when `n` items in chunks of `largest` would leave some of the
    cluster's CPUs without a task (1 CPU when Ray is not up)."""
    import ray

    cpus = cluster_cpus() if ray.is_initialized() else 1
    return max(1, min(largest, math.ceil(n / cpus)))


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last one shorter); itertools.batched is Python 3.12+."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(fn: Callable, shared: Any, jobs: Iterable[tuple[Any, Any]], per_cpu: int = 2) -> Iterator[tuple]:
    """(tag, fn(shared, payload)) for each (tag, payload) of `jobs`, in the jobs' order; each call a 1-CPU Ray
    task (no retries: a failure is the caller's error), `shared` put in the object store once. The tag stays in
    the driver (names, sizes); the payload travels. At most `per_cpu` tasks per CPU of the cluster are in flight,
    so `jobs` is consumed only as fast as the results are.

    On an error (in `jobs` or a task), an interrupt, or a consumer that stops early, no more jobs are pulled and
    the references to the tasks in flight are dropped: those (at most `per_cpu` per CPU, each one chunk) run to
    their end and their results are freed. They are not `ray.cancel`led: in Ray 2.60 a cancel that meets a task
    finishing aborts the driver process (core worker check "Tried to complete task that was not pending": the
    cancel-vs-completion race that ray-project/ray PR #54798 mended for retries; tests/test_ray_tasks.py
    reproduces it), which would lose far more than a few seconds of leftover work."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("tasks need Ray initialised (ray.init)")
    task = ray.remote(num_cpus=1, max_retries=0)(fn)
    cap, shared_ref, pending = per_cpu * cluster_cpus(), ray.put(shared), deque()
    for tag, payload in jobs:
        pending.append((tag, task.remote(shared_ref, payload)))
        while len(pending) >= cap:
            tag_done, ref = pending.popleft()
            yield tag_done, ray.get(ref)
    while pending:
        tag_done, ref = pending.popleft()
        yield tag_done, ray.get(ref)
