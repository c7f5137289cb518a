"""Top-layer density: statistics stored at training time for the density priors
(:mod:`nsn_cli.priors`).

The paper's sampler draws a top vector and, with the sharp ``delta1`` that gives clean
strokes, a sample is then decided by its top filter: ~N_L template images. The lower layers
decode real ``F[L-1]`` maps very well, so the diversity has to come from a density over
``F[L-1]`` itself (SPEC "Top-layer density"). Per top filter ``j`` (the best filter of each
training image's ``F[L-1]``) we store:

- ``mean`` (K, D) and the leading ``COMPONENTS`` principal directions ``components``
  (K, P, D) with their variances ``variances`` (K, P): enough for a Gaussian per filter
  (10 components hold most of a filter's spread on digits; more mostly adds noise);
- a bounded subsample of member maps ``members`` (M, D) float16 with ``member_filter`` (M,):
  at most ``MAX_MEMBERS`` maps in all (32 MB at D = 3996), so files stay small for big sets.

The ``mix``, ``pca`` and ``knn`` priors that draw from them are in :mod:`nsn_cli.priors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import h5py
import numba
import numpy as np
from numba import njit, prange

from nsn_cli import streams
from nsn_cli.config import JIT, JIT_PARALLEL
from nsn_cli.engine.em import moments
from nsn_cli.engine.similarity import best_filter
from nsn_cli.engine.threads import single_blas
from nsn_cli.errors import NsnError
from nsn_cli.files import check_version

COMPONENTS = 10
MAX_MEMBERS = 4096
#: ``knn`` mixes a member with one of its NEIGHBOURS nearest members (any top filter).
NEIGHBOURS = 3
#: Rows per block of the neighbour search (each thread converts two blocks to float32).
#: 4,000 digits' members (3,996 values): 0.71 s at 128, 0.60-0.63 s at 256, 0.54-0.61 s at
#: 512, the same neighbours; 256 keeps a thread's float32 blocks at 8 MB.
NEIGHBOUR_BLOCK = 256
#: Block pairs per call of the neighbour kernel, between progress reports.
NEIGHBOUR_PAIRS_PER_CALL = 64


#: The version attribute of ``/top``: 1 may lack ``member_neighbours`` (files written before
#: the ``knn`` prior), 2 always has it.
TOP_VERSION = 2


@dataclass
class TopStats:
    """The top-layer statistics a model file stores under ``/top`` (see the module's docstring);
    K top filters, P = ``COMPONENTS``, M members of D dims."""

    mean: np.ndarray  #: (K, D) float32, each filter's mean F[L-1] (its mu if it has no image)
    components: np.ndarray  #: (K, P, D) float32, leading principal directions (zero rows: none)
    variances: np.ndarray  #: (K, P) float32, the variance along each
    image_counts: np.ndarray  #: (K,) int64, training images per top filter
    members: np.ndarray  #: (M, D) float16, the stored member maps
    member_filter: np.ndarray  #: (M,) int64, each member's top filter
    #: (M, k) int64, each member's nearest members; None in files written before ``knn``
    #: existed, found on first use (:meth:`neighbours`)
    member_neighbours: np.ndarray | None = None
    #: :meth:`members_f32`'s conversion, kept for the next call; never stored
    _members_f32: np.ndarray | None = field(default=None, repr=False, compare=False)

    #: The stored arrays, in the order they are written.
    STORED = ("member_neighbours", "mean", "components", "variances", "image_counts", "members", "member_filter")

    def members_f32(self) -> np.ndarray:
        """The float16 members as float32 (M, D), converted once (numba kernels need float32)."""
        if self._members_f32 is None:
            members = np.ascontiguousarray(self.members, dtype=np.float16)
            out = np.empty(members.shape, dtype=np.float32)
            _half_to_float(members.view(np.uint16).reshape(members.shape[0], -1), out.reshape(members.shape[0], -1))
            self._members_f32 = out
        return self._members_f32

    def neighbours(self) -> np.ndarray:
        """:attr:`member_neighbours`, found now if the file had none."""
        if self.member_neighbours is None:
            self.member_neighbours = nearest_members(self.members_f32())
        return self.member_neighbours

    def to_h5(self, handle: h5py.Group) -> None:
        """Write ``/top`` into ``handle``: uncompressed, since gzip took 1.6 s of train's final
        save for the 4,000 digits' 48 MB of members and components (to 30 MB), and 0.37 s of
        every loading (0.04 s raw), on a path with nothing else running."""
        top = handle.create_group("top")
        top.attrs["version"] = TOP_VERSION
        for key in self.STORED:
            value = getattr(self, key)
            if value is not None:
                top.create_dataset(key, data=value)

    @classmethod
    def from_h5(cls, handle: h5py.Group, where: str) -> TopStats | None:
        """``/top`` of ``handle`` (None if it has none); a missing array is one clear error."""
        if "top" not in handle:
            return None
        top = handle["top"]
        version = check_version(where, "/top version", top.attrs.get("version", 0), 1, TOP_VERSION, "train it again")
        arrays = {}
        for key in cls.STORED:
            if key in top:
                arrays[key] = top[key][()]
            elif key != "member_neighbours" or version >= 2:
                raise NsnError(f"{where}: missing HDF5 key /top/{key}")
        return cls(**arrays)


def top_members(n: int, seed: int, limit: int = MAX_MEMBERS) -> np.ndarray:
    """Which of ``n`` training images are stored as members: all, or ``limit`` chosen by seed."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, streams.TOP_MEMBERS]).choice(n, limit, replace=False))


def top_stats_bytes(n: int, dims: int, limit: int = MAX_MEMBERS) -> int:
    """Memory :func:`compute_top_stats` needs besides one chunk of maps: the float16 members,
    the per-filter sums, and the neighbour search's float32 blocks (two per thread, for as
    many threads as numba may start, so the figure does not depend on ``--threads``) and
    candidates (k per member per block)."""
    members = min(n, limit)
    per_thread = 4 * NEIGHBOUR_BLOCK * (2 * dims + NEIGHBOUR_BLOCK)
    candidates = 16 * NEIGHBOURS * -(-members // NEIGHBOUR_BLOCK) ** 2 * NEIGHBOUR_BLOCK
    return 2 * members * dims + numba.config.NUMBA_NUM_THREADS * per_thread + candidates + (8 << 20)


@single_blas
def compute_top_stats(
    chunks: Iterable[np.ndarray], n: int, mu: np.ndarray, sigma: np.ndarray, seed: int,
    max_members: int = MAX_MEMBERS, progress: Callable[[int, int], None] | None = None,
) -> TopStats:
    """Statistics of the training maps F[L-1] (N, h, w, C) per top filter, from ``chunks`` of
    them in image order (one pass, so they can be encoded chunk by chunk from the data file).

    mu, sigma: the top layer's filters, flat (K, D) and (K,). Means and image counts use
    every image; the members are :func:`top_members`, and each filter's principal directions
    come from its members, centred on its exact mean (all images while N <= max_members).
    progress: called as ``progress(done, total)`` after every chunk of maps and every group
    of members searched for neighbours (``total`` = N + members).
    """
    k, d = mu.shape
    keep = top_members(n, seed, max_members)
    total = n + keep.size
    members = np.empty((keep.size, d), dtype=np.float16)  # as stored: half the memory
    member_filter = np.empty(keep.size, dtype=np.int64)
    sums, counts = np.zeros((k, d)), np.zeros(k, dtype=np.int64)
    offset = 0
    for chunk in chunks:
        flat = np.ascontiguousarray(chunk.reshape(chunk.shape[0], -1), dtype=np.float32)
        labels, _ = best_filter(flat, mu, sigma)
        chunk_sums, _, chunk_counts = moments(flat, labels, k)
        sums += chunk_sums
        counts += chunk_counts
        lo, hi = np.searchsorted(keep, [offset, offset + flat.shape[0]])
        members[lo:hi] = flat[keep[lo:hi] - offset]
        member_filter[lo:hi] = labels[keep[lo:hi] - offset]
        offset += flat.shape[0]
        if progress is not None:
            progress(min(offset, n), total)
    if offset != n:
        raise ValueError(f"the chunks held {offset} maps, expected {n}")
    mean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], mu).astype(np.float32)
    components = np.zeros((k, COMPONENTS, d), dtype=np.float32)
    variances = np.zeros((k, COMPONENTS), dtype=np.float32)
    bits = members.view(np.uint16)
    for j in np.flatnonzero(np.bincount(member_filter, minlength=k) > 1):
        rows = bits[member_filter == j]
        exact = np.empty(rows.shape, dtype=np.float32)  # the stored float16 values, exactly
        _half_to_float(rows, exact)  # (numpy's cast from float16 took 75 ms over every filter)
        directions, spread = principal_components(exact.astype(np.float64) - mean[j], COMPONENTS)
        components[j, : len(spread)] = directions
        variances[j, : len(spread)] = spread

    def searched(rows: int) -> None:
        if progress is not None:
            progress(n + rows, total)

    return TopStats(
        member_neighbours=nearest_members(members, progress=searched), mean=mean, components=components,
        variances=variances, image_counts=counts, members=members, member_filter=member_filter,
    )


def principal_components(centred: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``count`` principal directions (p, D) and variances (p,) of centred rows
    (m, D), p = min(count, m, D): what an SVD of ``centred`` gives (directions up to sign),
    from an eigen-decomposition of the smaller of its Gram matrix (m, m) and its scatter
    matrix (D, D); for a top filter's 40 members of 3,996 dims a 40 x 40 problem in place of
    a 40 x 3996 SVD. Each direction's sign is fixed (its largest entry positive), and
    directions without spread (variance below 1e-12 of the largest) are left zero."""
    m, dims = centred.shape
    p = min(count, m, dims)
    if m <= dims:
        eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
        eigenvalues, vectors = eigenvalues[::-1][:p], vectors[:, ::-1][:, :p]
        spread = eigenvalues > max(eigenvalues[0], 0.0) * 1e-12
        directions = np.zeros((p, dims))
        directions[spread] = (vectors[:, spread].T @ centred) / np.sqrt(eigenvalues[spread])[:, None]
    else:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
        eigenvalues, directions = eigenvalues[::-1][:p], vectors[:, ::-1][:, :p].T.copy()
        spread = eigenvalues > max(eigenvalues[0], 0.0) * 1e-12
        directions[~spread] = 0.0
    variances = np.where(spread, eigenvalues, 0.0) / m
    largest = directions[np.arange(p), np.abs(directions).argmax(axis=1)]
    directions *= np.where(largest < 0, -1.0, 1.0)[:, None]
    return directions, variances


@njit(**JIT)
def _half_to_float(bits, out):
    """OUT out (r, D) float32 = the float16 numbers whose bit patterns are ``bits`` (r, D)
    uint16, exactly (numba has no float16; numpy's cast ran at 9 ns a number here)."""
    raw = out.view(np.uint32)
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            h = np.uint32(bits[i, j])
            sign = (h & 0x8000) << 16
            body = h & 0x7FFF
            if body >= 0x7C00:  # infinity, NaN
                raw[i, j] = sign | 0x7F800000 | ((body & 0x3FF) << 13)
            elif body >= 0x400:  # normal: rebias the exponent by 127 - 15
                raw[i, j] = sign | ((body + 0x1C000) << 13)
            else:  # zero or subnormal: body * 2**-24, exact in float32
                value = np.float32(body) * np.float32(5.9604644775390625e-08)
                out[i, j] = -value if sign else value


@njit(**JIT)
def _insert(top_d2, top_index, d2, index):
    """INOUT top_d2, top_index (k,): the k smallest (d2, index) so far, ascending; an equal
    d2 goes after those already there (lower indices, as a stable sort puts them)."""
    t = top_d2.shape[0] - 1
    if not d2 < top_d2[t]:
        return
    while t > 0 and top_d2[t - 1] > d2:
        top_d2[t] = top_d2[t - 1]
        top_index[t] = top_index[t - 1]
        t -= 1
    top_d2[t] = d2
    top_index[t] = index


@njit(**JIT_PARALLEL)
def _pair_candidates(bits, norms, block, pairs, first, last, lanes, top_d2, top_index):
    """For block pairs pairs[first:last] (a <= c): the squared distances
    ``||x||^2 + ||y||^2 - 2 x.y`` of rows of block a to rows of block c, from one
    single-threaded BLAS product, give OUT top_d2, top_index[a, c] (k nearest in block c of
    each row of block a) and, for a < c, [c, a] (the same, from the other side), in place of
    a second product: the distance matrix is symmetric. ``lanes`` parallel lanes take every
    lanes-th pair, each with its float32 blocks allocated once (a fresh 2 MB block per pair
    is a fresh mapping, page faults and all, under train's malloc setting); every pair writes
    its own slots, so the lanes do not change the result. Pairs come ordered by a, so a lane
    converts block a once for its run of pairs (a, c)."""
    m, dims = bits.shape
    for lane in prange(lanes):
        rows = np.empty((block, dims), dtype=np.float32)
        cols = np.empty((block, dims), dtype=np.float32)
        converted = -1
        for p in range(first + lane, last, lanes):
            a, c = pairs[p, 0], pairs[p, 1]
            a0, a1 = a * block, min(m, (a + 1) * block)
            c0, c1 = c * block, min(m, (c + 1) * block)
            if a != converted:
                _half_to_float(bits[a0:a1], rows[: a1 - a0])
                converted = a
            _half_to_float(bits[c0:c1], cols[: c1 - c0])
            dots = np.dot(rows[: a1 - a0], cols[: c1 - c0].T)
            for i in range(a1 - a0):
                for j in range(c1 - c0):
                    if a0 + i != c0 + j:
                        d2 = norms[a0 + i] + norms[c0 + j] - 2.0 * dots[i, j]
                        _insert(top_d2[a, c, i], top_index[a, c, i], d2, c0 + j)
                        if a != c:
                            _insert(top_d2[c, a, j], top_index[c, a, j], d2, a0 + i)


@njit(**JIT_PARALLEL)
def _merge_candidates(top_d2, top_index, m, block, out):
    """OUT out (m, k): each row's k nearest, merged from its candidates block by block in
    block order (so equal distances keep the lower index first)."""
    blocks, k = top_d2.shape[0], out.shape[1]
    for a in prange(blocks):
        for i in range(min(block, m - a * block)):
            best_d2 = np.full(k, np.inf)
            best_index = np.zeros(k, dtype=np.int64)
            for c in range(blocks):
                for t in range(k):
                    _insert(best_d2, best_index, top_d2[a, c, i, t], top_index[a, c, i, t])
            out[a * block + i] = best_index


@single_blas
def nearest_members(members: np.ndarray, k: int = NEIGHBOURS, block: int = NEIGHBOUR_BLOCK,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Indices (M, k) of each member's k nearest other members (squared Euclidean), ties to
    the lower index.

    members: (M, D) float16 (as stored); converted to float32 a block at a time, so they are
    never held in float32 whole (77 MB at 4,096 members of 4,680 dims). Each pair of blocks
    is multiplied once (the distances are symmetric), pairs in parallel; each row keeps its k
    nearest per block, merged at the end. progress: called with a count of rows done (in
    proportion to the pairs done) after every group of pairs."""
    members = np.ascontiguousarray(members, dtype=np.float16)
    m = len(members)
    k = min(k, m - 1)
    if k < 1:
        return np.zeros((m, 1), dtype=np.int64)
    bits = members.view(np.uint16)
    norms = np.empty(m)
    rows = np.empty((min(block, m), members.shape[1]), dtype=np.float32)
    for a in range(0, m, block):
        part = rows[: min(block, m - a)]
        _half_to_float(bits[a : a + block], part)
        norms[a : a + block] = np.einsum("nd,nd->n", part, part, dtype=np.float64)
    blocks = -(-m // block)
    pairs = np.array([(a, c) for a in range(blocks) for c in range(a, blocks)], dtype=np.int64)
    top_d2 = np.full((blocks, blocks, block, k), np.inf)
    top_index = np.zeros((blocks, blocks, block, k), dtype=np.int64)
    step = NEIGHBOUR_PAIRS_PER_CALL
    for first in range(0, len(pairs), step):
        last = min(len(pairs), first + step)
        _pair_candidates(bits, norms, block, pairs, first, last, numba.get_num_threads(), top_d2, top_index)
        if progress is not None:
            progress(m * last // len(pairs))
    out = np.empty((m, k), dtype=np.int64)
    _merge_candidates(top_d2, top_index, m, block, out)
    return out
