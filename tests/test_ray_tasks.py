"""imgrestore.ray_tasks: the ordered, bounded map over Ray tasks that the hue-prior decoding runs through."""
from __future__ import annotations

import time

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


def test_a_consumer_that_stops_early_cancels_the_tasks_in_flight(ray_local, monkeypatch):
    """Closing the map after the first result cancels the three tasks still in flight (a submission that fails
    while writing must not leave decoding tasks running on). Ray's cancel is best effort (a task being dispatched
    can still run), so what is checked is that every task in flight is asked to stop."""
    import ray

    def slow_unless_first(_, x: int) -> int:
        time.sleep(0 if x == 0 else 0.5)
        return x

    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    results = ordered_map(slow_unless_first, None, ((None, x) for x in range(4)))
    assert next(results) == (None, 0)
    results.close()
    assert len(cancelled) == 3 and sorted(ray.get(cancelled)) == [1, 2, 3]  # not cancelled here: they ran
