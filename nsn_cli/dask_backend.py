"""Dask backend for streamed training (``nsn train --workers N`` / ``--dask tcp://host:port``).

Workers run the per-chunk E-step (:func:`~nsn_cli.engine.stream.chunk_estep`, pure) and read
their chunks from the data file themselves; the caller merges the results in chunk order and
runs the creation pass, so the model is the same bits as the local streamed path. Dask is an
optional extra (``pip install 'nsn[dask]'``), imported only when asked for.

Every chunk goes to the same worker on every pass (round robin over the workers, a loose
restriction), and a worker keeps the encoded maps F[below] of its chunks while they fit in
:data:`CACHE_SHARE` of its memory limit: later passes cut their patches from memory instead
of reading and encoding the images through the layers below again. The maps are the ones the
worker encoded from the file, so the bits are the same either way; a chunk that lands on
another worker (its own died, say) is simply encoded there.

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
import uuid
from typing import Iterator

import numba
import numpy as np

from nsn_cli.engine.stream import ChunkEStep, EStepRunner, chunk_estep
from nsn_cli.errors import NsnError, ParameterError

#: ``--dask`` is the Python parameter ``dask_address``.
_DASK = ("dask_address", "--dask")


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ParameterError("workers", "{name} / {dask_address} need Dask: pip install 'nsn[dask]' (dask and distributed)",
                             others=(_DASK,)) from None
    return distributed


@contextlib.contextmanager
def dask_client(workers: int | None = None, address: str | None = None) -> Iterator[object | None]:
    """A Dask client: a local cluster of ``workers`` processes, or the scheduler at ``address``."""
    if workers is None and address is None:
        yield None
        return
    if workers is not None and address is not None:
        raise ParameterError("workers", "give {name} or {dask_address}, not both", others=(_DASK,))
    if workers is not None and workers < 1:
        raise ParameterError("workers", f"must be at least 1, got {workers}")
    distributed = _import_distributed()
    if address is not None:
        try:
            client = distributed.Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ParameterError("dask_address", f"{{name}} {address}: cannot reach the scheduler ({exc})",
                                 flag="--dask") from None
        with client:
            try:
                yield client
            finally:  # a cluster that outlives this run keeps no maps of it
                with contextlib.suppress(Exception):
                    client.run(_forget_maps)
        return
    # dashboard on a free port: None still took 8787, and warned when another cluster had it;
    # numba would start a thread per core in every worker (Dask limits OpenMP and BLAS, not
    # numba): the workers share the cores instead
    threads = str(max(1, numba.config.NUMBA_NUM_THREADS // workers))
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  preload=[__name__], env={"NUMBA_NUM_THREADS": threads}) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def dask_setup(worker) -> None:
    """Run by Dask in each worker process of a local cluster (``preload``): ignore Ctrl-C
    and log only critical errors. A terminal sends Ctrl-C to the whole process group; the
    train process stops the cluster itself, and a worker taking it printed a KeyboardInterrupt
    traceback of its own. Whatever fails in a worker reaches train as the task's exception
    (one line there); a worker still logged the teardown ("Failed to communicate with
    scheduler during heartbeat", with a traceback) when stopped mid-task."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


#: Share of a worker's memory limit (or, without one, of the memory available when it
#: starts caching) that its cache of encoded chunk maps may fill: below Dask's own 60%
#: spilling threshold, with room for the task at work.
CACHE_SHARE = 0.4

#: This worker process's encoded chunk maps: those of one layer (``token``) at a time.
_cache: dict = {"token": None, "maps": {}, "bytes": 0, "room": 0}


def _cache_room() -> int:
    """Bytes this worker's cache may hold."""
    import psutil

    try:
        limit = _import_distributed().get_worker().memory_manager.memory_limit
    except ValueError:  # not on a worker (tests call the task directly)
        limit = None
    return int(CACHE_SHARE * (limit or psutil.virtual_memory().available))


def _chunk_maps(source, token: str, a: int, b: int) -> np.ndarray:
    """On a worker: F[below] of images a..b-1, from this worker's cache, else encoded from
    the data file and kept while the cache has room. A new layer (``token``) empties it."""
    if _cache["token"] != token:
        _cache.update(token=token, maps={}, bytes=0, room=_cache_room())
    maps = _cache["maps"].get((a, b))
    if maps is None:
        maps = source.load_maps(a, b)
        if _cache["bytes"] + maps.nbytes <= _cache["room"]:
            _cache["maps"][(a, b)] = maps
            _cache["bytes"] += maps.nbytes
    return maps


def _forget_maps() -> None:
    """On a worker: drop the cached maps (the run is over)."""
    _cache.update(token=None, maps={}, bytes=0)


def _estep_task(source, token: str, a: int, b: int, mu, sigma, alpha: float, seed: int, index: int,
                share: float = 1.0) -> ChunkEStep:
    """On a worker: chunk ``index`` (images a..b-1), its maps cached or read and encoded from
    the data file, cut into patches; its E-step."""
    return chunk_estep(source.cut(_chunk_maps(source, token, a, b), a, b), mu, sigma, alpha, seed, index, share)


def dask_runner(client, source, window: int | None = None) -> EStepRunner:
    """Run the chunk E-steps of ``source`` (a :class:`~nsn_cli.engine.encode.LayerPatches`) on the
    cluster, at most ``window`` in flight, yielding the results in chunk order. Chunk i goes
    to the same worker on every pass (round robin), where its maps stay cached. Data lost
    with a killed worker (Dask cancels the tasks that needed it) is sent again and the
    chunks in flight resubmitted, up to LOST_DATA_TRIES times a pass."""
    ranges = source.ranges()
    shared = {"source": _scatter(client, source)}
    workers = sorted(client.scheduler_info().get("workers", {}))
    window = window or 2 * max(1, len(workers))
    token = uuid.uuid4().hex

    def run(mu, sigma, alpha, seed, share=1.0):
        def send() -> None:
            shared["mu"], shared["sigma"] = _scatter(client, [mu, sigma])

        def submit(index: int):
            a, b = ranges[index]
            # a restricted task may run elsewhere when its worker is gone; no worker list, no restriction
            placement = {"workers": [workers[index % len(workers)]], "allow_other_workers": True} if workers else {}
            return client.submit(_estep_task, shared["source"], token, a, b, shared["mu"], shared["sigma"], alpha,
                                 seed, index, share, pure=False, **placement)

        pending: collections.deque = collections.deque()
        losses = 0

        def take() -> ChunkEStep:
            nonlocal losses
            while True:
                future, index = pending[0]
                try:
                    result = _result(future, *ranges[index])
                except _LostData as exc:
                    losses += 1
                    if losses > LOST_DATA_TRIES:
                        raise _lost_cluster(exc.cause) from None
                    shared["source"] = _scatter(client, source)
                    send()
                    for slot, (_, waiting) in enumerate(pending):
                        pending[slot] = (submit(waiting), waiting)
                    continue
                pending.popleft()
                return result

        send()
        for index in range(len(ranges)):
            pending.append((submit(index), index))
            if len(pending) >= window:
                yield take()
        while pending:
            yield take()

    return run


#: Times a pass sends its data again after a worker died holding the only copy.
LOST_DATA_TRIES = 3


class _LostData(Exception):
    """A task cancelled because data it needed died with a worker."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


#: Tries at copying data to every worker: a worker dying during the copy breaks it.
SCATTER_TRIES = 3

#: Seconds one try may take: a broadcast to a worker killed during it never returns
#: (distributed waits on the lost worker's reply), so a try that hangs is retried.
SCATTER_TIMEOUT = 30


#: Seconds since its last heartbeat within which a worker counts as alive for a retried copy.
RECENTLY_SEEN = 5.0


def _recently_seen(client) -> list[str]:
    """Addresses of the workers whose heartbeat the scheduler had in the last RECENTLY_SEEN s."""
    import time

    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    now = time.time()
    return [address for address, info in workers.items() if now - info.get("last_seen", 0.0) < RECENTLY_SEEN]


def _scatter(client, data):
    """``data`` copied to every worker (so a lost worker loses no copy), retried when a worker
    dies during the copy; an NsnError if the cluster stays unreachable."""
    distributed = _import_distributed()
    for attempt in range(SCATTER_TRIES):
        try:
            workers = None  # every worker the scheduler knows
            if attempt:
                client.wait_for_workers(1, timeout=60)
                # a killed worker stays on the scheduler's list until its heartbeats are missed
                # for long, and a broadcast to it hangs again: retry on the ones heard from lately
                workers = _recently_seen(client) or None
            # Client.scatter's own timeout does not bound a broadcast that waits on a lost worker;
            # Client.sync's callback_timeout cancels it (Client.scatter is this same call).
            return client.sync(client._scatter, data, workers=workers, broadcast=True,
                               callback_timeout=SCATTER_TIMEOUT)
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
    except concurrent.futures.CancelledError as exc:
        if "lost dependencies" in str(exc):
            raise _LostData(exc) from None
        raise _lost_cluster(exc) from None
    except (distributed.comm.CommClosedError, OSError, TimeoutError) as exc:
        raise _lost_cluster(exc) from None


def _lost_cluster(exc: BaseException, during: str = "") -> NsnError:
    return NsnError(
        f"lost the Dask cluster{during} ({type(exc).__name__}: {exc}); "
        "the model file keeps its completed layers: rerun with --resume"
    )
