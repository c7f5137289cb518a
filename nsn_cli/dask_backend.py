"""Dask backend for streamed training (``nsn train --workers N`` / ``--dask tcp://host:port``).

Workers run the per-chunk E-step (:func:`~nsn_cli.engine.stream.chunk_estep`, pure) and read
their chunks from the data file themselves; the caller merges the results in chunk order and
runs the creation pass, so the model is the same bits as the local streamed path. Dask is an
optional extra (``pip install 'nsn[dask]'``), imported only when asked for.

A worker lost mid-run (killed, out of memory) costs nothing: the scheduler reruns its chunks
elsewhere (chunk E-steps are pure) and the model is unchanged. When a chunk has killed more
workers than ``distributed.scheduler.allowed-failures`` allows, or the scheduler goes away,
the run stops with one clear error; the model file keeps its last completed layer (it is
only ever replaced atomically) and ``--resume`` continues from there.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
from typing import Iterator

from nsn_cli.engine.stream import ChunkEStep, EStepRunner, chunk_estep
from nsn_cli.errors import NsnError


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise NsnError("--workers / --dask need Dask: pip install 'nsn[dask]' (dask and distributed)") from None
    return distributed


@contextlib.contextmanager
def dask_client(workers: int | None = None, address: str | None = None) -> Iterator[object | None]:
    """A Dask client: a local cluster of ``workers`` processes, or the scheduler at ``address``."""
    if workers is None and address is None:
        yield None
        return
    if workers is not None and address is not None:
        raise NsnError("give --workers or --dask, not both")
    if workers is not None and workers < 1:
        raise NsnError(f"--workers must be at least 1, got {workers}")
    distributed = _import_distributed()
    if address is not None:
        try:
            client = distributed.Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise NsnError(f"--dask {address}: cannot reach the scheduler ({exc})") from None
        with client:
            yield client
        return
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def _estep_task(source, a: int, b: int, mu, sigma, alpha: float, seed: int, index: int, share: float) -> ChunkEStep:
    """On a worker: read chunk ``index`` (images a..b-1) from the data file, run its E-step."""
    return chunk_estep(source.load(a, b), mu, sigma, alpha, seed, index, share)


def dask_runner(client, source, window: int | None = None) -> EStepRunner:
    """Run the chunk E-steps of ``source`` (a :class:`~nsn_cli.train.LayerPatches`) on the
    cluster, at most ``window`` in flight, yielding the results in chunk order."""
    ranges = source.ranges()
    remote_source = _scatter(client, source)
    window = window or 2 * max(1, len(client.scheduler_info().get("workers", {})))

    def run(mu, sigma, alpha, seed, share=1.0):
        mu_f, sigma_f = _scatter(client, [mu, sigma])
        pending: collections.deque = collections.deque()
        for index, (a, b) in enumerate(ranges):
            future = client.submit(_estep_task, remote_source, a, b, mu_f, sigma_f, alpha, seed, index, share, pure=False)
            pending.append((future, a, b))
            if len(pending) >= window:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())

    return run


#: Tries at copying data to every worker: a worker dying during the copy breaks it.
SCATTER_TRIES = 3


def _scatter(client, data):
    """``data`` copied to every worker (so a lost worker loses no copy), retried when a worker
    dies during the copy; an NsnError if the cluster stays unreachable."""
    distributed = _import_distributed()
    for attempt in range(SCATTER_TRIES):
        try:
            if attempt:
                client.wait_for_workers(1, timeout=60)
            return client.scatter(data, broadcast=True)
        except (distributed.comm.CommClosedError, OSError, TimeoutError) as exc:
            failure = exc
    raise _lost_cluster(failure, " while sending it the filters")


def _result(future, a: int, b: int) -> ChunkEStep:
    """The E-step of the chunk of images a..b-1, or an NsnError saying what failed and what to do."""
    distributed = _import_distributed()
    try:
        return future.result()
    except distributed.KilledWorker:
        raise NsnError(
            f"Dask workers kept dying while running the chunk of images {a}..{b - 1} "
            "(out of memory? see the worker logs); "
            "the model file keeps its completed layers: fix the workers and rerun with --resume"
        ) from None
    except (distributed.comm.CommClosedError, OSError, TimeoutError, concurrent.futures.CancelledError) as exc:
        raise _lost_cluster(exc) from None


def _lost_cluster(exc: BaseException, during: str = "") -> NsnError:
    return NsnError(
        f"lost the Dask cluster{during} ({type(exc).__name__}: {exc}); "
        "the model file keeps its completed layers: rerun with --resume"
    )
