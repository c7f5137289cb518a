"""The engine's thread discipline: map_ordered."""

from __future__ import annotations

import threading
import time

import numba
import pytest

from nsn_cli.engine.threads import AHEAD_PER_WORKER, map_ordered


def test_map_ordered_keeps_order_and_runs_kernels_on_one_thread_per_worker():
    seen: list[tuple[int, str, int]] = []

    def work(item: int) -> int:
        time.sleep(0.002 * (item % 3))  # finish out of order
        seen.append((item, threading.current_thread().name, numba.get_num_threads()))
        return item * item

    caller_threads = numba.get_num_threads()
    assert list(map_ordered(work, list(range(20)), workers=2)) == [i * i for i in range(20)]
    assert numba.get_num_threads() == caller_threads  # thread-local: the caller's setting is unchanged
    first = [s for s in seen if s[0] == 0]
    assert first[0][1] == threading.current_thread().name  # the first item ran in the caller's thread
    others = [s for s in seen if s[0] != 0]
    assert all(name.startswith("nsn-batch") and threads == 1 for _, name, threads in others)


def test_map_ordered_bounds_the_work_ahead_and_passes_errors_on():
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        if item == 5:
            raise ValueError("item 5 is bad")
        return item

    results = map_ordered(work, list(range(100)), workers=2)
    assert next(results) == 0 and next(results) == 1
    time.sleep(0.05)
    # consumed two; at most 2 workers x AHEAD_PER_WORKER more were ever submitted
    assert max(started) <= 1 + 1 + 2 * AHEAD_PER_WORKER
    with pytest.raises(ValueError, match="item 5 is bad"):
        list(results)
    assert max(started) < 100  # the rest was never started


def test_map_ordered_on_one_worker_is_a_plain_loop():
    names = []
    out = list(map_ordered(lambda i: names.append(threading.current_thread().name) or i, [3, 1, 2], workers=1))
    assert out == [3, 1, 2] and set(names) == {threading.current_thread().name}
