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

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

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
