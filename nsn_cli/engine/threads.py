"""Thread discipline: one thread pool busy at a time, and bits that no thread count changes.

The engine parallelises with numba (``prange``, all cores). OpenBLAS keeps a pool of its own
(all cores by default) whose workers spin for a while after every call, so a BLAS call
followed by a numba kernel, or a BLAS call made from inside one, puts two busy threads on a
core: a 40 x 3996 SVD took 0.33-0.6 s beside numba's threads, 0.01 s on one BLAS thread.
OpenBLAS's thread count also changes some results in their last bits (layer-3 filter means
moved by up to 7e-5 between ``OPENBLAS_NUM_THREADS`` settings).

So inside the engine BLAS runs on one thread (:func:`one_blas_thread`), and the engine's
parallel kernels split their work into blocks fixed by the data's shape, one single-threaded
BLAS call per block: the results depend on neither numba's nor OpenBLAS's thread count.
threadpoolctl does the limiting and restores the caller's setting on the way out, so no
public call leaves the process's thread settings changed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
from typing import Callable, Iterator, Sequence, TypeVar

F = TypeVar("F", bound=Callable)


@functools.cache
def _controller():
    """The BLAS libraries of this process, found once (a few ms; entering a limit is ~10 us)."""
    # numba's np.dot calls scipy's BLAS (a library of its own next to numpy's): load it
    # first, so it is among the libraries found and limited
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every BLAS library on one thread; the caller's limits come back after."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def single_blas(func: F) -> F:
    """Decorator: the engine function runs under :func:`one_blas_thread`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


T = TypeVar("T")
R = TypeVar("R")

#: Results :func:`map_ordered` computes ahead of the one its caller is consuming, per worker.
AHEAD_PER_WORKER = 2


def map_ordered(func: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> Iterator[R]:
    """``func(item)`` for every item, yielded in the items' order, the items spread over
    ``workers`` threads (default: numba's thread count in the calling thread), each of which
    runs numba's kernels on one thread of its own.

    For many small independent items (batches of samples) this beats running each item's
    kernels on every core in turn: a ``prange`` kernel ends when its slowest thread does, so on a
    machine shared with other work, where one of our threads often waits for a core, the other
    waits at the end of every kernel (measured: 2 threads took 1.7-4x the wall time of 1 while
    two other jobs ran). Here each thread works through whole items on its own, so neither
    waits for the other. func must not depend on the thread it runs in; numba kernels called
    from it release the GIL (``nogil``). The first item runs in the calling thread, so kernels
    load there once (and a Ctrl-C while they load is handled as anywhere else). At most
    :data:`AHEAD_PER_WORKER` results per worker wait to be consumed, so memory stays bounded.
    """
    import numba

    workers = numba.get_num_threads() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield func(item)
        return
    yield func(items[0])

    def one_thread(item: T) -> R:
        numba.set_num_threads(1)  # thread-local: the caller's setting is unchanged
        return func(item)

    pending: collections.deque = collections.deque()
    rest = iter(items[1:])
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nsn-batch") as pool:
        try:
            for item in itertools.islice(rest, workers * AHEAD_PER_WORKER):
                pending.append(pool.submit(one_thread, item))
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(rest, 1):
                    pending.append(pool.submit(one_thread, item))
                yield result
        finally:  # an error or Ctrl-C in the caller: drop what has not started
            for future in pending:
                future.cancel()
