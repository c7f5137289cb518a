"""Streamed EM for one layer: patches come in chunks, never all in memory (issue 6).

One streamed iteration (:func:`stream_step`) is :func:`~.em.em_step` reorganised by chunk:

1. Per chunk (:func:`chunk_estep`, pure, so it can run anywhere): best filter of every patch
   against the current filters; float64 moments (:func:`~.em.moments`) of the patches that
   stay with an old filter; the chunk's candidates (best Sim < alpha) in a random order seeded
   by (step seed, chunk index).
2. In chunk order, on the caller: the creation pass (:func:`~.em.creation_pass`) over each
   chunk's candidates, against every filter created so far in this iteration; the new
   filters' moments from their members. Moments are merged in chunk order.
3. M-step from the merged moments (:func:`~.em.finish_moments`), empty filters dropped.

The result depends on the chunk boundaries (candidate order, summation order), not on where
the chunks come from: the same chunks from a file or from memory give the same bits. The
only per-patch state is the label of every patch (:class:`LabelStore`, 4 bytes a patch), kept
in memory or, when that would not fit the budget, in a temporary file read and written chunk
by chunk, so nothing grows with the number of images.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from nsn_cli.config import SIGMA_FLOOR_DIVISOR
from nsn_cli.engine.em import (
    COUNT_SAMPLE,
    FilterCapError,
    LayerFit,
    StepStats,
    creation_pass,
    finish_moments,
    finish_step,
    iterate_em,
    moments,
    search_count,
    sigma_new,
)
from nsn_cli.engine.similarity import best_filter
from nsn_cli.engine.threads import single_blas
from nsn_cli.errors import NsnError, write_reason

#: A chunk provider: each call yields the layer's patches (m, D) float32 in a fixed order.
ChunkSource = Callable[[], Iterable[np.ndarray]]


@dataclass
class ChunkEStep:
    """What :func:`chunk_estep` returns for one chunk of ``size`` patches."""

    size: int
    labels: np.ndarray  # (size,) int32 (half the bytes to send): best old filter; K (the old count) for candidates
    best_sum: float  # sum of the best Sim (float64)
    sums: np.ndarray  # (K, D) float64 over the non-candidates
    squares: np.ndarray  # (K,)
    counts: np.ndarray  # (K,) int64
    candidate_rows: np.ndarray  # (c,) rows of the chunk, in the seeded visiting order
    candidates: np.ndarray  # (c, D) float32 patches of those rows


def chunk_estep(chunk: np.ndarray, mu: np.ndarray, sigma: np.ndarray, alpha: float, seed: int, index: int) -> ChunkEStep:
    """E-step of chunk number ``index`` (pure: same inputs, same bits)."""
    chunk = np.ascontiguousarray(chunk, dtype=np.float32)
    k = mu.shape[0]
    labels, best = best_filter(chunk, mu, sigma)
    if np.isfinite(alpha):
        rows = np.flatnonzero(best < alpha)
        rows = rows[np.random.default_rng([seed, index]).permutation(rows.size)]
    else:
        rows = np.empty(0, dtype=np.int64)
    labels[rows] = k  # left out of the sums: candidates are summed with their new filters
    sums, squares, counts = moments(chunk, labels, k)
    return ChunkEStep(chunk.shape[0], labels.astype(np.int32), float(np.sum(best)), sums, squares, counts, rows,
                      chunk[rows])


class LabelStore:
    """The filter of every patch of a streamed layer, int32, written chunk by chunk.

    In memory, or (``directory`` given) in an anonymous temporary file there: the labels grow
    with the number of patches (4 bytes each; 10.8 million patches at layer 1 of 64,000
    digits), and file reads and writes go through the page cache, not the process's memory.
    Labels are stored as the step numbered them; :attr:`remap` (set at the end of a step,
    when empty filters are dropped) renumbers them on reading.
    """

    def __init__(self, size: int, directory: str | os.PathLike | None = None):
        self.size = size
        self.remap: np.ndarray | None = None
        self._array = np.zeros(size, dtype=np.int32) if directory is None else None
        self._directory = directory
        try:  # anonymous: no name on disk, so nothing is left behind however the process ends
            self._file = None if directory is None else tempfile.TemporaryFile(dir=directory, prefix="nsn-labels-")
        except OSError as exc:
            raise self._failure(exc) from None

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, start: int, labels: np.ndarray) -> None:
        """Labels of patches ``start..start + len(labels) - 1``, as this step numbers them."""
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if self._file is None:
            self._array[start : start + labels.size] = labels
            return
        view, offset = memoryview(labels).cast("B"), 4 * start
        try:
            while view.nbytes:  # pwrite may write less than asked
                done = os.pwrite(self._file.fileno(), view, offset)
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> NsnError:
        return NsnError(f"{self._directory}: cannot write the patches' labels (a temporary file there): "
                        f"{write_reason(exc)}")

    def read(self, start: int, count: int) -> np.ndarray:
        """Labels of patches ``start..start + count - 1``, renumbered by :attr:`remap`."""
        if self._file is None:
            raw = self._array[start : start + count]
        else:
            buffer = bytearray(4 * count)
            view, offset = memoryview(buffer), 4 * start
            while view.nbytes:
                got = os.preadv(self._file.fileno(), [view], offset)
                if got == 0:
                    raise EOFError(f"label file ends before patch {offset // 4}")
                view, offset = view[got:], offset + got
            raw = np.frombuffer(buffer, dtype=np.int32)
        return raw if self.remap is None else self.remap[raw]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


#: Runs :func:`chunk_estep` over every chunk for the given (mu, sigma, alpha, seed) and
#: yields the results in chunk order (locally, or on a cluster).
EStepRunner = Callable[[np.ndarray, np.ndarray, float, int], Iterator[ChunkEStep]]


def local_runner(chunks: ChunkSource) -> EStepRunner:
    """Run the per-chunk E-steps here, one chunk in memory at a time."""

    def run(mu, sigma, alpha, seed):
        for index, chunk in enumerate(chunks()):
            yield chunk_estep(chunk, mu, sigma, alpha, seed, index)

    return run


@single_blas  # the creation pass's products too: same bits whatever OpenBLAS's thread count
def stream_step(
    run: EStepRunner,
    n_patches: int,
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    alpha: float,
    sigma_floor: float,
    seed: int,
    labels: LabelStore,
    first: bool = True,
    max_filters: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabelStore, StepStats]:
    """One streamed EM step over ``n_patches`` patches; returns what :func:`~.em.em_step`
    does, the labels in ``labels`` (which holds the previous step's unless ``first``)."""
    started = time.perf_counter()
    k, dims = mu.shape
    radius = sigma_new(alpha) if np.isfinite(alpha) else 0.0
    room = None if max_filters is None else max(0, max_filters - k)
    changed = n_patches if first else 0
    total = np.zeros((k, dims))
    sq = np.zeros(k)
    count = np.zeros(k, dtype=np.int64)
    seed_mu = np.empty((0, dims), dtype=np.float32)  # filters created in this step
    new_total = np.zeros((0, dims))
    new_sq = np.zeros(0)
    new_count = np.zeros(0, dtype=np.int64)
    best_sum = 0.0
    offset = 0
    for part in run(mu, sigma, alpha, seed):  # chunk order
        total, sq, count = total + part.sums, sq + part.squares, count + part.counts
        best_sum += part.best_sum
        chunk_labels = part.labels
        if part.candidates.shape[0]:
            try:
                new_labels, seeds = creation_pass(part.candidates, radius, max_new=room, existing=seed_mu)
            except FilterCapError as exc:
                raise FilterCapError(k + exc.filters, max_filters) from None
            if seeds.size:
                seed_mu = np.concatenate([seed_mu, part.candidates[seeds]])
            made = seed_mu.shape[0]
            s, q, c = moments(part.candidates, new_labels, made)
            grow = made - new_total.shape[0]
            new_total = np.concatenate([new_total, np.zeros((grow, dims))]) + s
            new_sq = np.concatenate([new_sq, np.zeros(grow)]) + q
            new_count = np.concatenate([new_count, np.zeros(grow, dtype=np.int64)]) + c
            chunk_labels[part.candidate_rows] = k + new_labels
        if not first:  # old filters keep their numbers within a step: compare before renumbering
            changed += int(np.count_nonzero(chunk_labels != labels.read(offset, part.size)))
        labels.write(offset, chunk_labels)
        offset += part.size
    if offset != n_patches:
        raise ValueError(f"the chunks held {offset} patches, expected {n_patches}")
    created = seed_mu.shape[0]
    new_mu, rms, counts = finish_moments(
        np.concatenate([total, new_total]), np.concatenate([sq, new_sq]), np.concatenate([count, new_count]))
    mu_out, sigma_out, counts, remap, stats = finish_step(
        new_mu, rms, counts, sigma_floor=sigma_floor, created=created, changed=changed,
        mean_sim=best_sum / max(n_patches, 1), started=started)
    labels.remap = remap
    return mu_out, sigma_out, counts, labels, stats


def patch_at(chunks: ChunkSource, index: int) -> np.ndarray:
    """Patch number ``index`` (D,) of a chunk source (reads chunks up to it)."""
    offset = 0
    for chunk in chunks():
        if index < offset + chunk.shape[0]:
            return np.array(chunk[index - offset], dtype=np.float32)
        offset += chunk.shape[0]
    raise IndexError(f"patch {index} of {offset}")


def spread_sample(chunks: ChunkSource, n_patches: int) -> np.ndarray:
    """Every ``n // COUNT_SAMPLE``-th patch, as :func:`~.em.fit_layer_to_count` samples them."""
    step = max(1, n_patches // COUNT_SAMPLE)
    picked, offset = [], 0
    for chunk in chunks():
        first = (-offset) % step
        picked.append(np.asarray(chunk[first::step], dtype=np.float32))
        offset += chunk.shape[0]
    return np.concatenate(picked)


def fit_layer_stream(
    chunks: ChunkSource,
    n_patches: int,
    alpha: float,
    *,
    iterations: int,
    seed: int,
    max_filters: int,
    on_iteration: Callable[[int, StepStats], None] | None = None,
    runner: EStepRunner | None = None,
    label_dir: str | os.PathLike | None = None,
) -> LayerFit:
    """:func:`~.em.fit_layer` on a chunk source: same start, steps and stopping rule.

    label_dir: keep the patches' labels in a temporary file there instead of in memory; the
    fit's ``labels`` are then None (they are not needed after training)."""
    run = runner or local_runner(chunks)
    rng = np.random.default_rng(seed)
    width = sigma_new(alpha)
    floor = width / SIGMA_FLOOR_DIVISOR
    mu = patch_at(chunks, int(rng.integers(n_patches)))[None, :]
    sigma = np.array([width])
    store = LabelStore(n_patches, label_dir)

    def step(mu, sigma, previous):
        return stream_step(run, n_patches, mu, sigma, alpha=alpha, sigma_floor=floor,
                           seed=int(rng.integers(1 << 62)), labels=store, first=previous is None,
                           max_filters=max_filters)

    try:
        fit = iterate_em(step, mu, sigma, alpha, iterations, on_iteration)
    finally:
        store.close()
    fit.labels = None if store.on_disk else store.read(0, n_patches).astype(np.int64)
    return fit


def fit_layer_stream_to_count(
    chunks: ChunkSource,
    n_patches: int,
    target: int,
    *,
    iterations: int,
    seed: int,
    max_filters: int,
    on_fit: Callable[[float, int], None] | None = None,
    on_iteration: Callable[[int, StepStats], None] | None = None,
    runner: EStepRunner | None = None,
    label_dir: str | os.PathLike | None = None,
) -> LayerFit:
    """:func:`~.em.fit_layer_to_count` on a chunk source."""
    return search_count(
        spread_sample(chunks, n_patches), target,
        lambda alpha: fit_layer_stream(chunks, n_patches, alpha, iterations=iterations, seed=seed,
                                       max_filters=max_filters, runner=runner, label_dir=label_dir,
                                       on_iteration=on_iteration),
        max_filters=max_filters, on_fit=on_fit,
    )
