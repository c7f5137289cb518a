"""Eq. 1 similarity, the two layer activations, and best-filter search.

``Sim(x, j) = -log(sqrt(2 pi) sigma_j) - ||x - mu_j||^2 / (2 sigma_j^2)``, with
``||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2``. Patches go in blocks of ``BLOCK_ROWS`` rows,
one block per thread: the cross term is one single-threaded float32 BLAS product per block
(:mod:`.threads`), and the rest of Eq. 1, the argmax or the activation read its result while
it is still in cache. Blocks depend on the number of patches only, so no result depends on
numba's or OpenBLAS's thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT, JIT_PARALLEL
from nsn_cli.engine.threads import single_blas

ACTIVATIONS = ("sigmoid", "relative")
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: Rows per block: one BLAS product (rows, D) x (D, K) whose (rows, K) result the argmax
#: reads back from cache (128 to 1024 rows measured within 10%; best of 7 passes over the
#: digits, 512 rows took 5% less than 256 on layers 2 and 3 (173.6 and 24.6 ms against 183.7
#: and 25.6), the same on layer 1; the same bits either way).
BLOCK_ROWS = 512
#: Filters are padded with zero columns to a multiple of this for the product: OpenBLAS's
#: float32 kernels work in strips (layer 2's 111 filters ran at 77% of the one-thread matmul
#: peak, padded to 112 at 84%). 8, not 16: layer 3's 117 filters padded to 128 did 9% more
#: work than to 120 (24.5 ms against 23.5 ms a pass; layers 1 and 2 alike either way).
PAD_FILTERS = 8


def log_norm(sigma: np.ndarray) -> np.ndarray:
    """``-log(sqrt(2 pi) sigma)`` per filter (float64)."""
    return -np.log(_SQRT_2PI * np.asarray(sigma, dtype=np.float64))


@njit(**JIT)
def _sim(xx, dot, mm, lognorm, inv_two_var):
    """Eq. 1 from ||x||^2, x.mu and ||mu||^2 (the squared distance clipped at 0)."""
    d2 = xx - 2.0 * dot + mm
    if d2 < 0.0:
        d2 = 0.0
    return lognorm - d2 * inv_two_var


@njit(**JIT)
def row_sq_norm(x, i):
    """||x[i]||^2 summed in float64 in row order: the one sum every kernel here uses."""
    total = 0.0
    for t in range(x.shape[1]):
        v = np.float64(x[i, t])
        total += v * v
    return total


#: Independent running maxima in :func:`_best_of_row` (a single running max is one long
#: dependency chain; eight let the compiler and the CPU overlap them).
_MAXIMA = 8


@njit(**JIT)
def _best_of_row(xx, dots, mm, lognorm, inv_two_var, sims, maxima):
    """(argmax_j Sim, its value) for one patch from its dots (K,); ties go to the lowest j.
    sims (K,) and maxima (_MAXIMA,) are scratch. The maximum is exact whatever the order it
    is taken in, and the argmax is the first j holding it, so this equals a plain scan."""
    k = dots.shape[0]
    for j in range(k):
        sims[j] = _sim(xx, dots[j], mm[j], lognorm[j], inv_two_var[j])
    for t in range(_MAXIMA):
        maxima[t] = -np.inf
    j = 0
    while j + _MAXIMA <= k:
        for t in range(_MAXIMA):
            maxima[t] = max(maxima[t], sims[j + t])
        j += _MAXIMA
    top = -np.inf
    for t in range(_MAXIMA):
        top = max(top, maxima[t])
    for t in range(j, k):
        top = max(top, sims[t])
    for j in range(k):
        if sims[j] == top:
            return j, top
    return 0, top  # K == 0, or every Sim NaN


#: A block with at least this many all-zero rows has its other rows copied together for the
#: product (a zero row's result is known: see _best_blocks); below it the copy would cost more
#: than the product's rows it saves (a row's copy is about a sixth of its share of the product).
ZERO_ROWS_TO_GATHER = BLOCK_ROWS // 8


@njit(**JIT_PARALLEL)
def _best_blocks(x, mu_t, norms, mm, lognorm, inv_two_var, lanes, labels, best):
    """IN mu_t (D, >= K) the K filters transposed (zero-padded); OUT labels (n), best (n):
    argmax_j Sim and its value. Blocks of BLOCK_ROWS rows, each one single-threaded BLAS
    product; ``lanes`` parallel lanes take every lanes-th block with their buffers allocated
    once (train's malloc setting maps every buffer over 256 kB afresh). Blocks come from n
    alone, so the bits depend on neither the lanes nor the threads.

    An all-zero row (``norms[i] == 0``, which no other row has) has x.mu = 0 and ||x||^2 = 0:
    its label and Sim are found once, with the same arithmetic, and neither its product nor
    its argmax is run again (56% of the digits' layer-1 patches are background). A block with
    ZERO_ROWS_TO_GATHER of them copies its other rows together for the product."""
    n, dims = x.shape
    k = mm.shape[0]
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    zero_label, zero_best = _best_of_row(0.0, np.zeros(k, dtype=np.float32), mm, lognorm, inv_two_var, np.empty(k),
                                         np.empty(_MAXIMA))
    for lane in prange(lanes):
        dots = np.empty((BLOCK_ROWS, mu_t.shape[1]), dtype=np.float32)
        sims = np.empty(k)
        maxima = np.empty(_MAXIMA)
        kept = np.empty(BLOCK_ROWS, dtype=np.int64)
        gathered = np.empty((0, dims), dtype=np.float32)  # allocated when a block first needs it
        for block in range(lane, blocks, lanes):
            a = block * BLOCK_ROWS
            b = min(n, a + BLOCK_ROWS)
            m = 0
            for i in range(a, b):
                if norms[i] == 0.0:
                    labels[i], best[i] = zero_label, zero_best
                else:
                    kept[m] = i
                    m += 1
            if m == 0:
                continue
            gather = b - a - m >= ZERO_ROWS_TO_GATHER
            if gather:
                if gathered.shape[0] == 0:
                    gathered = np.empty((BLOCK_ROWS, dims), dtype=np.float32)
                for s in range(m):
                    gathered[s] = x[kept[s]]
                np.dot(gathered[:m], mu_t, dots[:m])
            else:
                np.dot(x[a:b], mu_t, dots[: b - a])
            for s in range(m):
                i = kept[s]
                row = s if gather else i - a  # the row's product: copied rows in order, else in place
                labels[i], best[i] = _best_of_row(norms[i], dots[row, :k], mm, lognorm, inv_two_var, sims, maxima)


@njit(**JIT_PARALLEL)
def _nearest_blocks(x, centres_t, cc, lanes, labels, d2):
    """OUT labels, d2 (n): for every row of x (n, D), the nearest of the S centres (the columns
    of centres_t (D, >= S), zero-padded; cc (S,) their squared norms) and its squared distance
    ``max(||x||^2 - 2 x.c + ||c||^2, 0)``, ties to the lower centre; blocked as _best_blocks,
    ||x||^2 summed while the row is in cache from the product."""
    n, s = x.shape[0], cc.shape[0]
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    for lane in prange(lanes):
        dots = np.empty((BLOCK_ROWS, centres_t.shape[1]), dtype=np.float32)
        for block in range(lane, blocks, lanes):
            a = block * BLOCK_ROWS
            b = min(n, a + BLOCK_ROWS)
            np.dot(x[a:b], centres_t, dots[: b - a])
            for i in range(a, b):
                xx = row_sq_norm(x, i)
                best, label = np.inf, -1
                for j in range(s):
                    d = max(xx - 2.0 * dots[i - a, j] + cc[j], 0.0)
                    if d < best:
                        best, label = d, j
                labels[i], d2[i] = label, best


@njit(**JIT_PARALLEL)
def _sims_blocks(x, mu_t, mm, lognorm, inv_two_var, kind, lanes, out):
    """OUT out (n, K) float32 = Sim of every patch to every filter, then the activation
    ``kind`` (-1: none, else as in _activate_row); blocked as _best_blocks. An all-zero row's
    output is found once, with the same arithmetic (x.mu = 0), and copied: its Sims and
    sigmoids were most of encoding the digits' layer 1, whose patches are 56% background."""
    n = x.shape[0]
    k = mm.shape[0]
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    zero_row = np.empty(k, dtype=np.float32)
    for j in range(k):
        zero_row[j] = _sim(0.0, np.float32(0.0), mm[j], lognorm[j], inv_two_var[j])
    if kind >= 0:
        _activate_row(zero_row, kind, zero_row)
    for lane in prange(lanes):
        dots = np.empty((BLOCK_ROWS, mu_t.shape[1]), dtype=np.float32)
        for block in range(lane, blocks, lanes):
            a = block * BLOCK_ROWS
            b = min(n, a + BLOCK_ROWS)
            np.dot(x[a:b], mu_t, dots[: b - a])
            for i in range(a, b):
                xx = row_sq_norm(x, i)
                if xx == 0.0:
                    out[i] = zero_row
                    continue
                for j in range(k):
                    out[i, j] = _sim(xx, dots[i - a, j], mm[j], lognorm[j], inv_two_var[j])
                if kind >= 0:
                    _activate_row(out[i], kind, out[i])


#: Below -UNDERFLOW, float32 exp is 0 and the sigmoid 0; above it, the sigmoid is 1.0 (exp(-s)
#: is then far below half a float64 ulp of 1). Those values are written without calling exp:
#: most of a layer's similarities are far below it, and libm's exp takes a slow path (raising
#: the underflow flag) for every one (0.4 s of CPU in training the digits).
_UNDERFLOW = 110.0


@njit(**JIT)
def _activate_row(sims, kind, out):
    """OUT out (K) = sigmoid(sims) (kind 0) or exp(sims - max_j sims) (kind 1); may alias.
    The same bits as the formulas everywhere (see _UNDERFLOW)."""
    if kind == 0:
        for j in range(sims.shape[0]):
            s = sims[j]
            if s > _UNDERFLOW:
                out[j] = 1.0
            elif s >= 0:
                out[j] = 1.0 / (1.0 + math.exp(-s))
            elif s < -_UNDERFLOW:
                out[j] = 0.0
            else:
                e = math.exp(s)
                out[j] = e / (1.0 + e)
    else:
        top = -np.inf
        for j in range(sims.shape[0]):
            top = max(top, sims[j])
        for j in range(sims.shape[0]):
            x = sims[j] - top
            out[j] = 0.0 if x < -_UNDERFLOW else math.exp(x)


@njit(**JIT_PARALLEL)
def _activate(sims, kind, out):
    """OUT out (n, K) = the activation ``kind`` of every row of sims."""
    for i in prange(sims.shape[0]):
        _activate_row(sims[i], kind, out[i])


@njit(**JIT_PARALLEL)
def _row_norms(x, out):
    """OUT out (n) = ||x_i||^2 in float64."""
    for i in prange(x.shape[0]):
        out[i] = row_sq_norm(x, i)


def row_norms(patches: np.ndarray) -> np.ndarray:
    """Squared norms (n,) float64 of patches (n, D); EM reuses them across iterations."""
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    out = np.empty(patches.shape[0], dtype=np.float64)
    _row_norms(patches, out)
    return out


def _prepared(mu: np.ndarray, sigma: np.ndarray):
    """``mu_t`` (D, K rounded up to PAD_FILTERS) float32, zero-padded, and per filter
    ``||mu||^2``, ``log_norm`` and ``1 / (2 sigma^2)`` (float64)."""
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 2 or sigma.shape != (mu.shape[0],):
        raise ValueError(f"mu must be (K, D) and sigma (K,), got {mu.shape} and {sigma.shape}")
    k, dims = mu.shape
    mu_t = np.zeros((dims, -(-k // PAD_FILTERS) * PAD_FILTERS), dtype=np.float32)
    mu_t[:, :k] = mu.T
    mm = np.einsum("kd,kd->k", mu, mu, dtype=np.float64)
    return mu_t, mm, log_norm(sigma), 0.5 / sigma**2


@single_blas
def best_filter(
    patches: np.ndarray, mu: np.ndarray, sigma: np.ndarray, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best filter of every patch.

    patches: array of shape (n, D); mu: (K, D); sigma: (K,); norms: optional (n,)
    :func:`row_norms` of the patches (computed here when not given).
    Returns labels (n,) int64 and best Sim (n,) float64.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    mu_t, mm, lognorm, inv = _prepared(mu, sigma)
    n = patches.shape[0]
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    norms = row_norms(patches) if norms is None else norms
    _best_blocks(patches, mu_t, norms, mm, lognorm, inv, numba.get_num_threads(), labels, best)
    return labels, best


def activation_code(kind: str) -> int:
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")
    return ACTIVATIONS.index(kind)


@single_blas
def similarity(patches: np.ndarray, mu: np.ndarray, sigma: np.ndarray, activation: str | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Sim of every patch (n, D) to every filter (K, D): array (n, K) float32.

    With ``activation`` (``sigmoid`` or ``relative``) the layer's output instead of raw Sim.
    out: a C-contiguous float32 (n, K) array to write into (say, a slice of a map array).
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    mu_t, mm, lognorm, inv = _prepared(mu, sigma)
    code = -1 if activation is None else activation_code(activation)
    shape = (patches.shape[0], mm.shape[0])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    _sims_blocks(patches, mu_t, mm, lognorm, inv, code, numba.get_num_threads(), out)
    return out


@single_blas
def nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest row of ``centres`` (S, D) to every row of ``x`` (n, D), squared Euclidean
    (the creation pass's distance to the filters of earlier blocks): labels (n,) int64, ties
    to the lower centre, and squared distances (n,) float64."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    centres_t = np.zeros((x.shape[1], -(-centres.shape[0] // PAD_FILTERS) * PAD_FILTERS), dtype=np.float32)
    centres_t[:, : centres.shape[0]] = centres.T
    cc = np.einsum("kd,kd->k", centres, centres, dtype=np.float64)
    labels = np.empty(x.shape[0], dtype=np.int64)
    d2 = np.empty(x.shape[0], dtype=np.float64)
    _nearest_blocks(x, centres_t, cc, numba.get_num_threads(), labels, d2)
    return labels, d2


def activate(sims: np.ndarray, kind: str) -> np.ndarray:
    """Layer output from similarities (n, K): ``sigmoid`` (paper) or ``relative``."""
    sims = np.ascontiguousarray(sims, dtype=np.float32)
    out = np.empty_like(sims)
    _activate(sims, activation_code(kind), out)
    return out


@single_blas
def masked_similarity(patches: np.ndarray, known: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                      activation: str | None = None) -> np.ndarray:
    """Sim of partly known patches: the squared distance over the known elements only, scaled
    by ``D / known count`` so it estimates the full distance (used by inpainting).

    patches, known: (n, D), known 1 where an element is known, else 0; mu: (K, D); sigma: (K,).
    Rows with nothing known get the filter's peak Sim. Returns (n, K) float32.
    """
    x = np.asarray(patches, dtype=np.float64)
    m = np.asarray(known, dtype=np.float64)
    mu64 = np.asarray(mu, dtype=np.float64)
    d2 = (m * x * x).sum(axis=1)[:, None] - 2.0 * (m * x) @ mu64.T + m @ (mu64**2).T
    scale = x.shape[1] / np.maximum(m.sum(axis=1), 1.0)
    sims = log_norm(sigma)[None, :] - scale[:, None] * np.maximum(d2, 0.0) / (2.0 * np.asarray(sigma)[None, :] ** 2)
    sims = sims.astype(np.float32)
    return sims if activation is None else activate(sims, activation)
