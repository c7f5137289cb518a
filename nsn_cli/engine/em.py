"""Non-parametric hard EM for one layer (paper section 2, SPEC "Training one layer").

One iteration (:func:`em_step`):

1. E-step, batched: best filter and best Sim of every patch (:func:`~.similarity.best_filter`).
2. Creation pass (DP-means): patches whose best Sim is below ``alpha`` are visited in a fixed
   random order; each joins the nearest filter created earlier in this pass if it lies within
   ``alpha`` of it, else starts a new one. A new filter has ``sigma_new(alpha)``, at which
   ``Sim >= alpha`` is exactly ``||x - mu|| <= sigma_new``, so the test is a distance test.
   Candidates are taken in blocks: distances to filters made in earlier blocks are one matrix
   product, those to filters made inside the block a short sequential kernel. This gives the
   same filters and labels as the fully sequential rule.
3. M-step, Eq. 2-3: ``mu = mean``, ``sigma = sqrt(mean ||x - mu||^2)`` floored at
   ``sigma_floor``; empty filters are dropped. Sums run over fixed chunks of rows merged in
   order (:func:`moments`), so the bits do not depend on the thread count.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numba
import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT, JIT_PARALLEL, SIGMA_FLOOR_DIVISOR
from nsn_cli.engine.similarity import best_filter, nearest, row_norms, row_sq_norm
from nsn_cli.engine.threads import single_blas
from nsn_cli.errors import NsnError, ParameterError

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_CREATION_BLOCK = 2048
#: Blocks of fewer candidates run the serial kernel even when ``parallel``: the same bits,
#: and waking the thread pool for the few candidates of a late EM step cost more than the
#: pass (up to ms on a busy machine, where a woken thread may wait for a core).
_PARALLEL_MIN_ROWS = 64


def sigma_new(alpha: float) -> float:
    """``exp(-alpha - 1/2) / sqrt(2 pi)``: the widest sigma whose filter still scores ``alpha``
    at its own radius, i.e. ``Sim(x, new) >= alpha  <=>  ||x - mu|| <= sigma_new``."""
    return math.exp(-alpha - 0.5) / _SQRT_2PI


def alpha_for_radius(radius: float) -> float:
    """Inverse of :func:`sigma_new`."""
    return -math.log(_SQRT_2PI * radius) - 0.5


# --------------------------------------------------------------------------- kernels


@njit(**JIT)
def _sq_dist(x, t, r):
    """||x[t] - x[r]||^2 in float64: the one distance both creation kernels use, so the
    serial and the parallel pass compare the same bits."""
    d2 = 0.0
    for d in range(x.shape[1]):
        diff = np.float64(x[t, d]) - np.float64(x[r, d])
        d2 += diff * diff
    return d2


@njit(**JIT)
def _creation_block(x, old_d2, old_label, radius2, first_new, budget, may_start, seed_rows, labels):
    """Sequential DP-means over one block of candidates ``x`` (b, D), in order.

    IN  old_d2, old_label: nearest filter created before this block (inf / -1 if none);
        may_start: whether a candidate may start a filter (one too far from every filter
        that may not stays where it is: label -1).
    OUT seed_rows: rows of x that start a filter; labels: filter of each row, numbered from
        ``first_new`` for filters started here. Returns the number of filters started, or
        ``budget + 1`` as soon as more than ``budget`` would be started (the pass is void).
    """
    started = 0
    for t in range(x.shape[0]):
        best_d2 = old_d2[t]
        best = old_label[t]
        for k in range(started):
            d2 = _sq_dist(x, t, seed_rows[k])
            if d2 < best_d2:
                best_d2 = d2
                best = first_new + k
        if best >= 0 and best_d2 <= radius2:
            labels[t] = best
        elif not may_start[t]:
            labels[t] = -1
        else:
            if started == budget:
                return budget + 1
            seed_rows[started] = t
            labels[t] = first_new + started
            started += 1
    return started


@njit(**JIT)
def _validate_block(x, proposers, radius2, budget, seed_rows):
    """The serial half of the parallel pass (optimistic concurrency control, Pan et al.
    2013): ``proposers`` (rows of x, in order) could each start a filter, having no earlier
    filter within the radius; in order, each starts one unless a filter started by an earlier
    proposer lies within the radius. Those are exactly the rows the sequential rule starts
    filters at. OUT seed_rows. Returns the number started, or ``budget + 1`` (as
    :func:`_creation_block`)."""
    started = 0
    for i in range(proposers.shape[0]):
        t = proposers[i]
        near = False
        for k in range(started):
            if _sq_dist(x, t, seed_rows[k]) <= radius2:
                near = True
                break
        if not near:
            if started == budget:
                return budget + 1
            seed_rows[started] = t
            started += 1
    return started


@njit(**JIT_PARALLEL)
def _take_rows(source, rows, out):
    """OUT out (m, D) = source[rows] (np.take on every thread: a creation pass gathers up to
    half a GB of candidates in its first step)."""
    for i in prange(rows.shape[0]):
        out[i] = source[rows[i]]


def take_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``source[rows]`` (m, D) float32 of C-contiguous float32 rows, gathered in parallel
    (into ``out``, (m, D) float32 C-contiguous, if given)."""
    if out is None:
        out = np.empty((rows.shape[0], source.shape[1]), dtype=np.float32)
    _take_rows(source, np.ascontiguousarray(rows, dtype=np.int64), out)
    return out


@njit(**JIT_PARALLEL)
def _label_block(x, old_d2, old_label, radius2, first_new, seed_rows, started, labels):
    """The parallel half: every row's label as :func:`_creation_block` gives it, from the
    filters started in the block (``seed_rows[:started]``, increasing): the nearest of the
    filter from before the block and those started at earlier rows, first on ties."""
    for t in prange(x.shape[0]):
        best_d2 = old_d2[t]
        best = old_label[t]
        own = -1
        for k in range(started):
            r = seed_rows[k]
            if r >= t:
                if r == t:
                    own = k
                break
            d2 = _sq_dist(x, t, r)
            if d2 < best_d2:
                best_d2 = d2
                best = first_new + k
        if own >= 0:
            labels[t] = first_new + own
        elif best >= 0 and best_d2 <= radius2:
            labels[t] = best
        else:
            labels[t] = -1


@njit(**JIT_PARALLEL)
def _chunk_moments(patches, labels, norms, have_norms, bounds, groups, sums, squares, counts):
    """Per fixed chunk c of rows bounds[c]:bounds[c+1] and group g of filters (those with
    k % groups == g; one task each): OUT sums[c, k] = sum of its patches of filter k,
    squares[c, k] = sum of their ||x||^2, counts[c, k]. Each task reads only its filters'
    rows, in row order: every sum runs over its chunk's rows in row order whatever the
    groups, and chunks do not depend on the thread count, so neither do the bits.
    With ``have_norms``, ||x||^2 is read from norms (n,) (:func:`~.similarity.row_norms`, the
    same sum) instead of summed here: its one long chain of dependent adds then no longer
    holds back the vectorised sums."""
    dims = patches.shape[1]
    n_filters = counts.shape[1]
    for task in prange((bounds.shape[0] - 1) * groups):
        c = task // groups
        g = task - c * groups
        for i in range(bounds[c], bounds[c + 1]):
            k = labels[i]
            if k >= n_filters or k % groups != g:  # k == n_filters: a candidate, summed with its new filter
                continue
            counts[c, k] += 1
            if have_norms:
                for d in range(dims):
                    sums[c, k, d] += np.float64(patches[i, d])
                squares[c, k] += norms[i]
            else:
                squares[c, k] += row_sq_norm(patches, i)
                for d in range(dims):
                    sums[c, k, d] += np.float64(patches[i, d])


#: Bytes of per-chunk partial sums the M-step may hold.
_M_STEP_BUDGET = 64 << 20


# --------------------------------------------------------------------------- steps


def creation_pass(
    candidates: np.ndarray,
    radius: float,
    block: int = _CREATION_BLOCK,
    max_new: int | None = None,
    existing: np.ndarray | None = None,
    may_start: np.ndarray | None = None,
    parallel: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """DP-means over ``candidates`` (m, D), visited in row order.

    Returns ``labels`` (m,) int64 numbering the new filters 0.. in order of creation, and
    ``seeds`` (n_new,) int64: the row that started each filter. ``may_start`` (m,) bool: rows
    that may start a filter (default all); a row that may not and lies within ``radius`` of no
    new filter gets label -1 (it stays with its filter from the E-step). Raises
    :class:`FilterCapError` as soon as more than ``max_new`` filters would be created, so a
    far too small radius costs little (its pass would otherwise be quadratic).

    existing: seeds (E, D) of filters created earlier in the same pass (a streamed pass goes
    chunk by chunk); they are numbered 0..E-1, new filters from E, and count towards
    ``max_new``. ``seeds`` lists the new filters only.

    Each block of candidates is compared with the filters started in earlier blocks by one
    matrix product, then with those started in the block: ``parallel`` splits this into a
    serial validation of only the rows no earlier filter covers and a parallel labelling
    (:func:`_validate_block`, :func:`_label_block`); the serial kernel visits every row in
    turn (and takes blocks of fewer than ``_PARALLEL_MIN_ROWS`` rows either way). Both give
    the same bits.
    """
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    m, dims = candidates.shape
    labels = np.empty(m, dtype=np.int64)
    may_start = np.ones(m, dtype=np.bool_) if may_start is None else np.ascontiguousarray(may_start, dtype=np.bool_)
    seeds: list[np.ndarray] = []
    seed_mu = np.empty((0, dims), dtype=np.float32) if existing is None else np.ascontiguousarray(existing, dtype=np.float32)
    radius2 = float(radius) ** 2
    for a in range(0, m, block):
        b = min(m, a + block)
        x = candidates[a:b]
        if seed_mu.shape[0]:
            old_label, old_d2 = nearest(x, seed_mu)
        else:
            old_label = np.full(b - a, -1, dtype=np.int64)
            old_d2 = np.full(b - a, np.inf)
        rows = np.empty(b - a, dtype=np.int64)
        budget = b - a if max_new is None else min(b - a, max_new - seed_mu.shape[0])
        if parallel and b - a >= _PARALLEL_MIN_ROWS:
            proposers = np.flatnonzero(may_start[a:b] & ~((old_label >= 0) & (old_d2 <= radius2)))
            started = _validate_block(x, proposers, radius2, budget, rows)
            if started <= budget:
                _label_block(x, old_d2, old_label, radius2, seed_mu.shape[0], rows, started, labels[a:b])
        else:
            started = _creation_block(x, old_d2, old_label, radius2, seed_mu.shape[0], budget, may_start[a:b],
                                      rows, labels[a:b])
        if max_new is not None and started > budget and seed_mu.shape[0] + started > max_new:
            raise FilterCapError(seed_mu.shape[0] + started, max_new)
        if started:
            seeds.append(a + rows[:started])
            seed_mu = np.concatenate([seed_mu, x[rows[:started]]])
    seed_index = np.concatenate(seeds) if seeds else np.empty(0, dtype=np.int64)
    return labels, seed_index


def moments(patches: np.ndarray, labels: np.ndarray, n_filters: int,
            norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-filter sums (K, D), squared-norm sums (K,) (float64) and counts (K,) of ``patches``
    (n, D) under hard ``labels`` (n,) in 0..n_filters-1; rows labelled n_filters are left out.
    norms: the patches' :func:`~.similarity.row_norms`, if the caller has them (the same bits,
    sooner).

    Sums run in float64 over fixed chunks of rows (from n and K only), merged in chunk order.
    (Summing filter by filter, rows in label order, needs no merge but took 1.8x the CPU time
    on layers 2 and 3: rows read out of order.) With fewer chunks than threads (layer 3's
    4,000 rows are one chunk) each chunk's filters are split into groups, one task each,
    which changes no sum's order: layer 3's pass no longer runs on one core.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    n, dims = patches.shape
    per_chunk = 8 * n_filters * (dims + 2)
    chunks = int(max(1, min(64, n // 4096, _M_STEP_BUDGET // max(per_chunk, 1))))
    bounds = np.linspace(0, n, chunks + 1).astype(np.int64)
    sums = np.zeros((chunks, n_filters, dims))
    squares = np.zeros((chunks, n_filters))
    counts = np.zeros((chunks, n_filters), dtype=np.int64)
    groups = int(max(1, min(n_filters, -(-numba.get_num_threads() // chunks))))
    have_norms = norms is not None
    norms = np.ascontiguousarray(norms, dtype=np.float64) if have_norms else np.empty(0)
    _chunk_moments(patches, labels, norms, have_norms, bounds, groups, sums, squares, counts)
    # in place (the same adds, in a fixed order): a new array per chunk was a fresh mapping
    # to page in each time (layer 2: 35 chunks of 0.8 MB); copies, so no view keeps them all
    total, sq, count = sums[0].copy(), squares[0].copy(), counts[0].copy()
    for c in range(1, chunks):
        total += sums[c]
        sq += squares[c]
        count += counts[c]
    return total, sq, count


def _mean_spread(total: np.ndarray, sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 means (K, D) and mean squared distances to them (K,) of non-empty filters."""
    mean = total / count[:, None]
    return mean, np.maximum(sq / count - np.einsum("kd,kd->k", mean, mean), 0.0)


def finish_moments(total: np.ndarray, sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2-3 from :func:`moments`: ``mu`` (K, D) float32, ``rms`` (K,) (unfloored sigma), counts."""
    safe = np.maximum(count, 1)
    mean = total / safe[:, None]
    mean_sq = np.maximum(sq / safe - np.einsum("kd,kd->k", mean, mean), 0.0)
    return mean.astype(np.float32), np.sqrt(np.where(count > 0, mean_sq, 0.0)), count


#: Elements of the (pruned x kept x D) float64 difference block :func:`merge_small` holds at
#: once (4 MB: it runs inside a streamed layer's memory budget).
_MERGE_BLOCK = 1 << 19


def merge_small(
    total: np.ndarray, sq: np.ndarray, count: np.ndarray, min_count: int, sigma_floor: float,
    protect_from: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge every filter with fewer than ``min_count`` patches into the kept filter under
    which its members' summed similarity is highest, on the moments of :func:`moments`.

    Kept: the filters with at least ``min_count`` patches (the largest one if none has), and
    those numbered ``protect_from`` or above (created in this step: a new filter starts with
    the few candidates near its seed and grows in the next E-steps, so it gets one step).
    A small filter p (mean m_p, spread r_p^2 = mean ||x - m_p||^2) goes to the kept filter j
    maximising ``sum over its members of Sim(x, j) = n_p (-log(sqrt(2 pi) s_j) -
    (||m_p - mu_j||^2 + r_p^2) / (2 s_j^2))``, with ``s_j`` the kept filter's floored spread
    before any merge; its moments are added to j's, so j's new mean and spread are exactly
    those of the union (the same whether the patches are in memory or streamed).

    Returns the merged moments (small filters left with count 0, dropped as empty by
    :func:`finish_step`) and ``into`` (K,): the filter each filter's patches now belong to.
    """
    into = np.arange(count.shape[0])
    keep = count >= max(min_count, 1)
    if protect_from is not None:
        keep[protect_from:] |= count[protect_from:] > 0
    if not keep.any():
        keep[np.argmax(count)] = True
    small = np.flatnonzero(~keep & (count > 0))
    if min_count <= 1 or small.size == 0:
        return total, sq, count, into
    kept = np.flatnonzero(keep)
    mu, spread = _mean_spread(total[kept], sq[kept], count[kept])
    sigma = np.maximum(np.sqrt(spread), sigma_floor)
    m_small, r2_small = _mean_spread(total[small], sq[small], count[small])
    block = max(1, _MERGE_BLOCK // max(1, kept.size * total.shape[1]))
    for a in range(0, small.size, block):
        b = min(small.size, a + block)
        diff = m_small[a:b, None, :] - mu[None, :, :]
        d2 = np.einsum("pkd,pkd->pk", diff, diff)  # no BLAS: thread-count free bits; no squared copy
        score = -np.log(sigma)[None, :] - (d2 + r2_small[a:b, None]) / (2.0 * sigma[None, :] ** 2)
        into[small[a:b]] = kept[np.argmax(score, axis=1)]
    total, sq, count = total.copy(), sq.copy(), count.copy()
    for p in small:  # in filter order: a fixed summation order
        j = into[p]
        total[j] += total[p]
        sq[j] += sq[p]
        count[j] += count[p]
    total[small], sq[small], count[small] = 0.0, 0.0, 0
    return total, sq, count, into


def m_step(patches: np.ndarray, labels: np.ndarray, n_filters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2-3 for ``n_filters`` filters from hard ``labels`` (n,).

    Returns ``mu`` (K, D) float32, ``rms`` (K,) float64 (unfloored sigma) and ``counts`` (K,).
    Sums run in float64 over fixed chunks of rows, merged in chunk order; the spread is
    ``E||x||^2 - ||mu||^2`` (float64, so the cancellation costs nothing at these scales).
    """
    return finish_moments(*moments(patches, labels, n_filters))


@dataclass
class StepStats:
    """What one EM iteration did (recorded per iteration in the model file)."""

    filters: int
    created: int
    dropped: int
    changed: int
    mean_sim: float
    seconds: float
    merged: int = 0  # filters under the reference-scale floor merged into others (:func:`merge_small`)


def draw_candidates(below: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The creation pass's candidates, the patches ``below`` alpha in a random order, and
    (``share < 1``) which of them may start a filter: each with probability ``share``.

    Thinning the starts makes the number of filters a pass starts a property of the data's
    distribution rather than of its size: a region of candidates the pass would cover with
    one filter still gets one (its first drawn patch starts it, the rest join), while patches
    alone in their region, whose number grows with the data, start filters at the rate of a
    data set ``1 / share`` times smaller (SPEC.md). With ``share >= 1`` no further random
    numbers are drawn, so the paper's pass is unchanged.
    """
    order = below[rng.permutation(below.size)]
    if share >= 1.0 or order.size == 0:
        return order, None
    return order, rng.random(order.size) < share


@single_blas  # the creation pass's products too: same bits whatever OpenBLAS's thread count
def em_step(
    patches: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    alpha: float,
    sigma_floor: float,
    rng: np.random.Generator,
    previous_labels: np.ndarray | None = None,
    max_filters: int | None = None,
    norms: np.ndarray | None = None,
    share: float = 1.0,
    last: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, StepStats]:
    """One E-step, creation pass and M-step.

    patches: (n, D) float32; mu: (K, D); sigma: (K,). ``alpha = -inf`` switches creation off.
    norms: the patches' :func:`~.similarity.row_norms`, if the caller keeps them across steps.
    share: run the step as on this fraction of the patches (:func:`reference_scale`): a patch
    below ``alpha`` may start a filter with this chance (:func:`draw_candidates`; one that may
    not and joins no new filter keeps its best filter), and filters with fewer than
    ``1 / share`` patches are merged into kept ones (:func:`merge_small`; those created in
    this step only when ``last``, the layer's last step). 1: the paper's step.
    Returns new ``mu``, ``sigma``, ``counts``, ``labels`` (n,) and the step's statistics.
    """
    started = time.perf_counter()
    n_filters = mu.shape[0]
    labels, best = best_filter(patches, mu, sigma, norms)
    created = 0
    if np.isfinite(alpha):
        candidates, may_start = draw_candidates(np.flatnonzero(best < alpha), share, rng)
        if candidates.size:
            room = None if max_filters is None else max(0, max_filters - n_filters)
            try:
                new_labels, created = _creation_in_chunks(patches, candidates, may_start, sigma_new(alpha), room)
            except FilterCapError as exc:
                raise FilterCapError(n_filters + exc.filters, max_filters) from None
            labels[candidates] = np.where(new_labels >= 0, n_filters + new_labels, labels[candidates])
    total, sq, counts, into = merge_small(*moments(patches, labels, n_filters + created, norms), floor_count(share),
                                          sigma_floor, None if last else n_filters)
    new_mu, rms, counts = finish_moments(total, sq, counts)
    labels = into[labels]
    changed = labels.size if previous_labels is None else int(np.count_nonzero(labels != previous_labels))
    mu_out, sigma_out, counts, remap, stats = finish_step(
        new_mu, rms, counts, sigma_floor=sigma_floor, created=created, changed=changed,
        mean_sim=float(best.mean()), started=started, merged=int(np.count_nonzero(into != np.arange(into.size))))
    return mu_out, sigma_out, counts, remap[labels], stats


#: Bytes of candidates gathered at a time for the creation pass.
_CANDIDATE_BYTES = 32 << 20


def _creation_in_chunks(patches: np.ndarray, order: np.ndarray, may_start: np.ndarray | None, radius: float,
                        room: int | None) -> tuple[np.ndarray, int]:
    """:func:`creation_pass` over the patches ``order`` names, visited in that order, gathered
    a few MB at a time (each chunk against the filters the ones before it created, as a
    streamed pass does): in the first step nearly every patch is a candidate, and one copy of
    them all cost layer 2 a second in page faults. Returns the labels (numbered from 0 in
    order of creation; -1 for a row that may not start one and joins none) and the number of
    filters created."""
    step = max(1, _CANDIDATE_BYTES // (4 * patches.shape[1]))
    labels = np.empty(order.size, dtype=np.int64)
    # one buffer for every chunk: a fresh one per chunk was fresh memory to page in each time
    # (layer 2's first step: 0.5 s for 445 MB of candidates where the heap returns freed memory)
    buffer = np.empty((min(step, order.size), patches.shape[1]), dtype=np.float32)
    seed_mu = np.empty((0, patches.shape[1]), dtype=np.float32)
    for a in range(0, order.size, step):
        rows = order[a : a + step]
        part = take_rows(patches, rows, out=buffer[: rows.size])
        labels[a : a + step], seeds = creation_pass(
            part, radius, max_new=room, existing=seed_mu, may_start=None if may_start is None else may_start[a : a + step])
        if seeds.size:
            seed_mu = np.concatenate([seed_mu, part[seeds]])
    return labels, seed_mu.shape[0]


def finish_step(mu, rms, counts, *, sigma_floor, created, changed, mean_sim, started, merged=0):
    """End of an EM step: drop empty filters, floor sigma. Returns the kept ``mu``, ``sigma``,
    ``counts``, the ``remap`` from this step's filter numbers to the kept ones (for the
    labels), and the step's statistics. merged: filters emptied by :func:`merge_small` (not
    counted as dropped).

    changed: patches whose filter differs from the previous step's, compared before the
    renumbering (old filters keep their numbers within a step), so a dropped filter does not
    count the patches of every filter after it as changed."""
    keep = counts > 0
    remap = np.cumsum(keep) - 1
    stats = StepStats(
        filters=int(keep.sum()),
        created=int(created),
        dropped=int((~keep).sum()) - merged,
        changed=changed,
        mean_sim=mean_sim,
        seconds=time.perf_counter() - started,
        merged=merged,
    )
    sigma_out = np.maximum(rms[keep], sigma_floor)
    return mu[keep], sigma_out, counts[keep], remap, stats


class FilterCapError(NsnError):
    """A layer grew past its filter cap (``max_filters``): raised inside the creation pass the moment it does
    (so a runaway layer stops in its first pass). ``iteration`` (1-based, set by
    :func:`iterate_em`) and ``seen`` (patches of the pass visited, where known) say when."""

    def __init__(self, filters: int, cap: int, seen: int | None = None, total: int | None = None):
        super().__init__(f"{filters} filters exceed the cap of {cap}")
        self.filters = filters
        self.cap = cap
        self.seen = seen
        self.total = total
        self.iteration: int | None = None

    def when(self) -> str:
        """' in EM iteration 1 (after 12,288 of 64,000 patches)', as far as known."""
        text = "" if self.iteration is None else f" in EM iteration {self.iteration}"
        if self.seen is not None and self.total:
            text += f" (after {self.seen:,} of {self.total:,} patches)"
        return text


@dataclass
class LayerFit:
    """A trained layer's filters (flat means), its final labels and its EM history."""

    mu: np.ndarray
    sigma: np.ndarray
    counts: np.ndarray
    alpha: float
    labels: np.ndarray
    history: list[StepStats] = field(default_factory=list)

    def history_table(self) -> list[dict]:
        return [asdict(s) for s in self.history]


def fit_layer(
    patches: np.ndarray,
    alpha: float,
    *,
    iterations: int,
    seed: int,
    max_filters: int,
    on_iteration: Callable[[int, StepStats], None] | None = None,
    share: float = 1.0,
) -> LayerFit:
    """Train one layer on ``patches`` (n, D) from a single random-patch filter.

    Runs ``iterations`` EM steps, stopping early when nothing changes and nothing is
    created. Raises :class:`FilterCapError` when the layer grows past ``max_filters``.
    share: every step runs as on this fraction of the patches (:func:`em_step`,
    :func:`reference_scale`); 1 is the paper's EM.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    rng = np.random.default_rng(seed)
    width = sigma_new(alpha)
    floor = width / SIGMA_FLOOR_DIVISOR
    mu = patches[rng.integers(patches.shape[0])][None, :].copy()
    sigma = np.array([width])
    norms = row_norms(patches)  # the patches do not change across iterations

    def step(mu, sigma, labels, last):
        return em_step(patches, mu, sigma, alpha=alpha, sigma_floor=floor, rng=rng, previous_labels=labels,
                       max_filters=max_filters, norms=norms, share=share, last=last)

    return iterate_em(step, mu, sigma, alpha, iterations, on_iteration)


def reference_scale(reference_images: int, n_patches: int, positions: int) -> float:
    """The ``share`` at which EM on ``n_patches`` patches (``positions`` per image) behaves as
    on ``reference_images`` images: their share of the patches, at most 1 (0: the paper's EM,
    share 1).

    The paper's creation test makes filters in proportion to the patches it sees: every patch
    below alpha far from the others starts one, and those grow in number with the data (a
    fixed alpha gave 117 filters at layer 3 on 4,000 digits and over 2,000 on 64,000). A
    filter that holds less than one patch's share of the reference set could not exist there,
    and a pass over a data set 1 / share times larger starts as many filters as the reference
    pass if each patch may start one with chance ``share``. So the counts follow the data's
    distribution, not its size, and at or below the reference size EM is the paper's.
    """
    if reference_images <= 0:
        return 1.0
    return min(1.0, reference_images * positions / max(n_patches, 1))


def floor_count(share: float) -> int:
    """The fewest patches a filter keeps at ``share``: one reference patch's worth (0 at 1)."""
    return math.ceil(1.0 / share - 1e-9) if share < 1.0 else 0


def iterate_em(
    step: Callable,
    mu: np.ndarray,
    sigma: np.ndarray,
    alpha: float,
    iterations: int,
    on_iteration: Callable[[int, StepStats], None] | None = None,
) -> LayerFit:
    """Run ``step(mu, sigma, labels, last) -> (mu, sigma, counts, labels, stats)`` up to
    ``iterations`` times (``last`` on the final one), stopping early when nothing changes and
    nothing is created, dropped or merged. Shared by the in-memory and the streamed fits."""
    labels = None
    counts = np.zeros(1, dtype=np.int64)
    history: list[StepStats] = []
    for iteration in range(iterations):
        try:
            mu, sigma, counts, labels, stats = step(mu, sigma, labels, iteration == iterations - 1)
        except FilterCapError as exc:
            exc.iteration = iteration + 1
            raise
        history.append(stats)
        if on_iteration is not None:
            on_iteration(iteration, stats)
        if iteration > 0 and stats.created == 0 and stats.changed == 0 and stats.dropped == 0 and stats.merged == 0:
            break
    return LayerFit(mu, sigma, counts, alpha, labels, history)


def fit_layer_to_count(
    patches: np.ndarray,
    target: int,
    *,
    iterations: int,
    seed: int,
    max_filters: int,
    tolerance: float = 0.05,
    max_fits: int = 14,
    on_fit: Callable[[float, int], None] | None = None,
    on_iteration: Callable[[int, StepStats], None] | None = None,
    share: float = 1.0,
) -> LayerFit:
    """Find ``alpha`` whose fit has about ``target`` filters (within ``tolerance``).

    Searches the creation radius ``sigma_new(alpha)`` on a log scale: bisection bracketed by
    the patch spread, refined by interpolating log(count) against log(radius). Each probe is a
    full :func:`fit_layer` with the same seed; the closest one is returned. on_fit(alpha,
    count) follows every probe, on_iteration every EM iteration of a probe.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    return search_count(
        patches[:: max(1, patches.shape[0] // COUNT_SAMPLE)], target,
        lambda alpha: fit_layer(patches, alpha, iterations=iterations, seed=seed, max_filters=max_filters,
                                on_iteration=on_iteration, share=share),
        max_filters=max_filters, tolerance=tolerance, max_fits=max_fits, on_fit=on_fit,
    )


#: The alpha search measures the patch spread on about this many evenly spaced patches.
COUNT_SAMPLE = 20000


def search_count(
    sample: np.ndarray,
    target: int,
    fit: Callable[[float], LayerFit],
    *,
    max_filters: int,
    tolerance: float = 0.05,
    max_fits: int = 14,
    on_fit: Callable[[float, int], None] | None = None,
) -> LayerFit:
    """The alpha search of :func:`fit_layer_to_count`: ``sample`` (a spread of the patches)
    brackets the radius, ``fit(alpha)`` trains one probe."""
    if target < 1 or target > max_filters:
        raise ParameterError("filters", f"{{name}}: target {target} must lie in 1..{{max_filters}} ({max_filters})",
                             others=("max_filters",))
    spread = float(np.sqrt(((sample - sample.mean(axis=0)) ** 2).sum(axis=1).max())) or 1.0
    lo, hi = math.log(spread * 1e-4), math.log(spread * 2.0)  # log radius: many .. one filter
    count_lo, count_hi = math.inf, 1.0
    best: LayerFit | None = None
    for _ in range(max_fits):
        if math.isfinite(count_lo) and count_lo > 0 and count_hi > 0 and count_lo != count_hi:
            # interpolate log(count) linearly in log(radius), kept inside the bracket
            t = (math.log(target) - math.log(count_lo)) / (math.log(count_hi) - math.log(count_lo))
            probe = lo + min(0.9, max(0.1, t)) * (hi - lo)
        else:
            probe = 0.5 * (lo + hi)
        alpha = alpha_for_radius(math.exp(probe))
        try:
            probe_fit = fit(alpha)
            count = probe_fit.mu.shape[0]
        except FilterCapError:
            probe_fit, count = None, math.inf
        if on_fit is not None:
            on_fit(alpha, count)
        if probe_fit is not None and (best is None or abs(count - target) < abs(best.mu.shape[0] - target)):
            best = probe_fit
        if probe_fit is not None and abs(count - target) <= tolerance * target:
            break
        if count > target:
            lo, count_lo = probe, count
        else:
            hi, count_hi = probe, count
    if best is None:
        raise ParameterError("filters", f"{{name}} {target}: every alpha tried exceeded {{max_filters}} {max_filters}",
                             others=("max_filters",))
    return best
