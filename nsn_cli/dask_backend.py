"""Dask backend for streamed training (``nsn train --workers N`` / ``--dask tcp://host:port``).

Workers run the per-chunk E-step (:func:`~nsn_cli.engine.stream.chunk_estep`, pure) and read
their chunks from the data file themselves; the caller merges the results in chunk order and
runs the creation pass, so the model is the same bits as the local streamed path. Dask is an
optional extra (``pip install 'nsn[dask]'``), imported only when asked for.
"""

from __future__ import annotations

import collections
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


def _estep_task(source, a: int, b: int, mu, sigma, alpha: float, seed: int, index: int) -> ChunkEStep:
    """On a worker: read chunk ``index`` (images a..b-1) from the data file, run its E-step."""
    return chunk_estep(source.load(a, b), mu, sigma, alpha, seed, index)


def dask_runner(client, source, window: int | None = None) -> EStepRunner:
    """Run the chunk E-steps of ``source`` (a :class:`~nsn_cli.train.LayerPatches`) on the
    cluster, at most ``window`` in flight, yielding the results in chunk order."""
    ranges = source.ranges()
    remote_source = client.scatter(source, broadcast=True)
    window = window or 2 * max(1, len(client.scheduler_info().get("workers", {})))

    def run(mu, sigma, alpha, seed):
        mu_f, sigma_f = client.scatter([mu, sigma], broadcast=True)
        pending: collections.deque = collections.deque()
        for index, (a, b) in enumerate(ranges):
            pending.append(client.submit(_estep_task, remote_source, a, b, mu_f, sigma_f, alpha, seed, index,
                                         pure=False))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    return run
