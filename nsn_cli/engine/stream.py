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
    draw_candidates,
    finish_moments,
    finish_step,
    floor_count,
    iterate_em,
    merge_small,
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
    candidate_best: np.ndarray  # (c,) their best old filter
    may_start: np.ndarray | None  # (c,) bool: which may start a filter (None: all)


def chunk_estep(chunk: np.ndarray, mu: np.ndarray, sigma: np.ndarray, alpha: float, seed: int, index: int,
                share: float = 1.0) -> ChunkEStep:
    """E-step of chunk number ``index`` (pure: same inputs, same bits); its candidates drawn
    by :func:`~.em.draw_candidates` with ``share``."""
    chunk = np.ascontiguousarray(chunk, dtype=np.float32)
    k = mu.shape[0]
    labels, best = best_filter(chunk, mu, sigma)
    if np.isfinite(alpha):
        rows, may_start = draw_candidates(np.flatnonzero(best < alpha), share, np.random.default_rng([seed, index]))
    else:
        rows, may_start = np.empty(0, dtype=np.int64), None
    candidate_best = labels[rows]
    labels[rows] = k  # left out of the sums: candidates are summed after the creation pass
    sums, squares, counts = moments(chunk, labels, k)
    return ChunkEStep(chunk.shape[0], labels.astype(np.int32), float(np.sum(best)), sums, squares, counts,
                      rows, chunk[rows], candidate_best, may_start)


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


#: Runs :func:`chunk_estep` over every chunk for the given (mu, sigma, alpha, seed, share)
#: and yields the results in chunk order (locally, or on a cluster).
EStepRunner = Callable[[np.ndarray, np.ndarray, float, int, float], Iterator[ChunkEStep]]


def local_runner(chunks: ChunkSource) -> EStepRunner:
    """Run the per-chunk E-steps here, one chunk in memory at a time."""

    def run(mu, sigma, alpha, seed, share=1.0):
        for index, chunk in enumerate(chunks()):
            yield chunk_estep(chunk, mu, sigma, alpha, seed, index, share)

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
    share: float = 1.0,
    last: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabelStore, StepStats]:
    """One streamed EM step over ``n_patches`` patches; returns what :func:`~.em.em_step`
    does, the labels in ``labels`` (which holds the previous step's unless ``first``).
    on_chunk(patches done, filters so far): called after every chunk, so a long pass shows
    its progress and the layer's growth as it goes."""
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
    moves = _Moves()  # (previous, new) filter pairs: 'changed' once merges are known
    for part in run(mu, sigma, alpha, seed, share):  # chunk order
        total, sq, count = total + part.sums, sq + part.squares, count + part.counts
        best_sum += part.best_sum
        chunk_labels = part.labels
        if part.candidates.shape[0]:
            try:
                new_labels, seeds = creation_pass(part.candidates, radius, max_new=room, existing=seed_mu,
                                                  may_start=part.may_start)
            except FilterCapError as exc:
                raise FilterCapError(k + exc.filters, max_filters, offset + part.size, n_patches) from None
            if seeds.size:
                seed_mu = np.concatenate([seed_mu, part.candidates[seeds]])
            made = seed_mu.shape[0]
            stay = new_labels < 0  # may not start a filter and joined none: keeps its best old one
            final = np.where(stay, part.candidate_best, k + new_labels)
            s, q, c = moments(part.candidates, final if stay.any() else new_labels, k + made if stay.any() else made)
            if stay.any():
                total, sq, count = total + s[:k], sq + q[:k], count + c[:k]
                s, q, c = s[k:], q[k:], c[k:]
            grow = made - new_total.shape[0]
            new_total = np.concatenate([new_total, np.zeros((grow, dims))]) + s
            new_sq = np.concatenate([new_sq, np.zeros(grow)]) + q
            new_count = np.concatenate([new_count, np.zeros(grow, dtype=np.int64)]) + c
            chunk_labels[part.candidate_rows] = final
        if not first:  # old filters keep their numbers within a step: compare before renumbering
            moves.add(labels.read(offset, part.size), chunk_labels)
        labels.write(offset, chunk_labels)
        offset += part.size
        if on_chunk is not None:
            on_chunk(offset, k + seed_mu.shape[0])
    if offset != n_patches:
        raise ValueError(f"the chunks held {offset} patches, expected {n_patches}")
    created = seed_mu.shape[0]
    total, sq, count, into = merge_small(np.concatenate([total, new_total]), np.concatenate([sq, new_sq]),
                                         np.concatenate([count, new_count]), floor_count(share), sigma_floor,
                                         None if last else k)
    new_mu, rms, counts = finish_moments(total, sq, count)
    if not first:
        changed = moves.changed(into)
    mu_out, sigma_out, counts, remap, stats = finish_step(
        new_mu, rms, counts, sigma_floor=sigma_floor, created=created, changed=changed,
        mean_sim=best_sum / max(n_patches, 1), started=started,
        merged=int(np.count_nonzero(into != np.arange(into.size))))
    labels.remap = remap[into]
    return mu_out, sigma_out, counts, labels, stats


class _Moves:
    """How many patches went from each previous filter to each filter of this step (before
    merges), so the step's 'changed' count can follow the merges made at its end."""

    def __init__(self) -> None:
        self.pairs: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def add(self, previous: np.ndarray, new: np.ndarray) -> None:
        pairs, counts = np.unique((previous.astype(np.int64) << 32) | new.astype(np.int64), return_counts=True)
        self.pairs.append(pairs)
        self.counts.append(counts)
        if len(self.pairs) > 64:  # keep the list short: a few thousand distinct pairs
            self._compact()

    def _compact(self) -> None:
        pairs, inverse = np.unique(np.concatenate(self.pairs), return_inverse=True)
        self.pairs, self.counts = [pairs], [np.bincount(inverse, weights=np.concatenate(self.counts)).astype(np.int64)]

    def changed(self, into: np.ndarray) -> int:
        """Patches whose filter after the merges ``into`` differs from the previous one."""
        if not self.pairs:
            return 0
        self._compact()
        pairs, counts = self.pairs[0], self.counts[0]
        return int(counts[(pairs >> 32) != into[pairs & 0xFFFFFFFF]].sum())


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
    share: float = 1.0,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> LayerFit:
    """:func:`~.em.fit_layer` on a chunk source: same start, steps and stopping rule.

    label_dir: keep the patches' labels in a temporary file there instead of in memory; the
    fit's ``labels`` are then None (they are not needed after training).
    on_progress(iteration, patches done, filters so far): after every chunk of every pass."""
    run = runner or local_runner(chunks)
    rng = np.random.default_rng(seed)
    width = sigma_new(alpha)
    floor = width / SIGMA_FLOOR_DIVISOR
    mu = patch_at(chunks, int(rng.integers(n_patches)))[None, :]
    sigma = np.array([width])
    store = LabelStore(n_patches, label_dir)
    passes = 0

    def step(mu, sigma, previous, last):
        nonlocal passes
        iteration, passes = passes, passes + 1
        on_chunk = None if on_progress is None else lambda done, filters: on_progress(iteration, done, filters)
        return stream_step(run, n_patches, mu, sigma, alpha=alpha, sigma_floor=floor,
                           seed=int(rng.integers(1 << 62)), labels=store, first=previous is None,
                           max_filters=max_filters, share=share, last=last, on_chunk=on_chunk)

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
    share: float = 1.0,
) -> LayerFit:
    """:func:`~.em.fit_layer_to_count` on a chunk source."""
    return search_count(
        spread_sample(chunks, n_patches), target,
        lambda alpha: fit_layer_stream(chunks, n_patches, alpha, iterations=iterations, seed=seed,
                                       max_filters=max_filters, runner=runner, label_dir=label_dir,
                                       on_iteration=on_iteration, share=share),
        max_filters=max_filters, on_fit=on_fit,
    )
