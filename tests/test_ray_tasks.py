"""imgrestore.ray_tasks: the ordered, bounded map over Ray tasks that the hue-prior decoding runs through."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from imgrestore.ray_tasks import batched, chunk_size, ordered_map


def tasks():
    """Functions for the tasks, made inside a function: cloudpickle ships them by value (Ray's workers cannot
    import this test module)."""
    def slow_square(delay: float, x: int) -> int:
        time.sleep(delay * (5 - x % 5))  # later jobs finish first
        return x * x

    def fails_on_three(_, x: int) -> int:
        if x == 3:
            raise ValueError("job three failed")
        return x

    return slow_square, fails_on_three


def test_batched_and_chunk_size(ray_local):
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]] and list(batched([], 3)) == []
    assert chunk_size(5, 8) == 3 and chunk_size(100, 8) == 8 and chunk_size(1, 8) == 1  # 2 CPUs: no idle one


def test_results_come_in_the_jobs_order_and_the_jobs_are_pulled_as_results_come(ray_local):
    pulled = []

    def jobs():
        for x in range(10):
            pulled.append(x)
            yield f"tag{x}", x

    out = []
    for tag, result in ordered_map(tasks()[0], 0.05, jobs()):
        if not out:
            first_seen_after = len(pulled)
        out.append((tag, result))
    assert out == [(f"tag{x}", x * x) for x in range(10)]
    assert first_seen_after == 4  # two tasks per CPU (2 CPUs) in flight before the first result is waited for


def test_a_failing_task_is_the_callers_error(ray_local):
    got = []
    with pytest.raises(ValueError, match="job three failed"):
        for _, x in ordered_map(tasks()[1], None, ((None, x) for x in range(8))):
            got.append(x)
    assert got == [0, 1, 2]


def test_needs_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="Ray initialised"):
        next(ordered_map(tasks()[1], None, [(None, 1)]))


def test_a_consumer_that_stops_early_cancels_the_tasks_in_flight(ray_local, tmp_path):
    """Job 0 returns at once; the others wait for a file `go` and then leave a file of their own: closing the map
    after the first result must cancel them (a submission that fails while writing must not leave decoding
    tasks running on). `go` comes only after the close, so however slow the machine, an uncancelled task
    leaves its file."""
    def touch_on_go(folder: str, x: int) -> int:
        while x and not (Path(folder) / "go").exists():
            time.sleep(0.05)
        (Path(folder) / str(x)).touch()
        return x

    results = ordered_map(touch_on_go, str(tmp_path), ((None, x) for x in range(4)))
    assert next(results) == (None, 0)
    results.close()
    time.sleep(2)  # ray.cancel is asynchronous: let the interrupts land
    (tmp_path / "go").touch()
    time.sleep(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "go"]
