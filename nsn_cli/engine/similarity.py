"""Eq. 1 similarity, the two layer activations, and best-filter search.

``Sim(x, j) = -log(sqrt(2 pi) sigma_j) - ||x - mu_j||^2 / (2 sigma_j^2)``, with
``||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2``: the cross term is one float32 matrix product
per chunk of patches (BLAS, all cores), the rest a fused numba kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT, JIT_PARALLEL

ACTIVATIONS = ("sigmoid", "relative")
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: Patches this short use the fused kernel, longer ones a BLAS product (bench/bench_train.py:
#: 16 dims fused 0.08 s vs product 0.15 s per E-step on 676k patches).
FUSED_MAX_DIMS = 32
#: Rows of patches per matrix product: keeps the (rows, K) block near 16 MB.
_BLOCK_ELEMENTS = 1 << 22


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
def _best_of_row(xx, dots, mm, lognorm, inv_two_var):
    """(argmax_j Sim, its value) for one patch from its dots (K,); ties go to the lowest j."""
    top = -np.inf
    arg = 0
    for j in range(dots.shape[0]):
        s = _sim(xx, dots[j], mm[j], lognorm[j], inv_two_var[j])
        if s > top:
            top = s
            arg = j
    return arg, top


@njit(**JIT_PARALLEL)
def _best_from_dots(dots, xx, mm, lognorm, inv_two_var, labels, best):
    """IN dots (n, K) = X mu^T; OUT labels (n), best (n): argmax_j Sim and its value."""
    for i in prange(dots.shape[0]):
        labels[i], best[i] = _best_of_row(xx[i], dots[i], mm, lognorm, inv_two_var)


@njit(**JIT_PARALLEL)
def _best_direct(x, mu_t, norms, mm, lognorm, inv_two_var, labels, best):
    """Fused E-step for short patches: IN mu_t (D, K) = mu transposed; OUT labels (n), best (n).
    For small D the (n, K) product is memory-bound: dots in a per-row buffer, looping over
    filters innermost (contiguous, vectorised), are faster."""
    k = mu_t.shape[1]
    for i in prange(x.shape[0]):
        dots = np.zeros(k, dtype=np.float32)
        for t in range(x.shape[1]):
            xv = x[i, t]
            for j in range(k):
                dots[j] += xv * mu_t[t, j]
        # the argmax written out, not _best_of_row: the call cost ~10% on 16-dim patches
        top = -np.inf
        arg = 0
        for j in range(k):
            s = _sim(norms[i], dots[j], mm[j], lognorm[j], inv_two_var[j])
            if s > top:
                top = s
                arg = j
        labels[i] = arg
        best[i] = top


@njit(**JIT_PARALLEL)
def _sims_from_dots(dots, xx, mm, lognorm, inv_two_var, out):
    """IN dots (n, K); OUT out (n, K) float32 = Sim of every patch to every filter."""
    for i in prange(dots.shape[0]):
        for j in range(dots.shape[1]):
            out[i, j] = _sim(xx[i], dots[i, j], mm[j], lognorm[j], inv_two_var[j])


@njit(**JIT_PARALLEL)
def _activate(sims, kind, out):
    """OUT out = sigmoid(sims) (kind 0) or exp(sims - max_j sims) per row (kind 1)."""
    for i in prange(sims.shape[0]):
        if kind == 0:
            for j in range(sims.shape[1]):
                s = sims[i, j]
                if s >= 0:
                    out[i, j] = 1.0 / (1.0 + math.exp(-s))
                else:
                    e = math.exp(s)
                    out[i, j] = e / (1.0 + e)
        else:
            top = -np.inf
            for j in range(sims.shape[1]):
                top = max(top, sims[i, j])
            for j in range(sims.shape[1]):
                out[i, j] = math.exp(sims[i, j] - top)


@njit(**JIT_PARALLEL)
def _row_norms(x, out):
    """OUT out (n) = ||x_i||^2 in float64."""
    for i in prange(x.shape[0]):
        total = 0.0
        for t in range(x.shape[1]):
            v = np.float64(x[i, t])
            total += v * v
        out[i] = total


def row_norms(patches: np.ndarray) -> np.ndarray:
    """Squared norms (n,) float64 of patches (n, D); EM reuses them across iterations."""
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    out = np.empty(patches.shape[0], dtype=np.float64)
    _row_norms(patches, out)
    return out


def _prepared(mu: np.ndarray, sigma: np.ndarray):
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 2 or sigma.shape != (mu.shape[0],):
        raise ValueError(f"mu must be (K, D) and sigma (K,), got {mu.shape} and {sigma.shape}")
    mm = np.einsum("kd,kd->k", mu, mu, dtype=np.float64)
    return mu, mm, log_norm(sigma), 0.5 / sigma**2


def _blocks(n: int, k: int):
    rows = max(256, _BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def best_filter(
    patches: np.ndarray, mu: np.ndarray, sigma: np.ndarray, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best filter of every patch.

    patches: array of shape (n, D); mu: (K, D); sigma: (K,); norms: optional (n,)
    :func:`row_norms` of the patches (computed here when not given).
    Returns labels (n,) int64 and best Sim (n,) float64.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    mu, mm, lognorm, inv = _prepared(mu, sigma)
    n = patches.shape[0]
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    norms = row_norms(patches) if norms is None else norms
    if patches.shape[1] <= FUSED_MAX_DIMS:
        _best_direct(patches, np.ascontiguousarray(mu.T), norms, mm, lognorm, inv, labels, best)
        return labels, best
    for a, b in _blocks(n, mu.shape[0]):
        _best_from_dots(patches[a:b] @ mu.T, norms[a:b], mm, lognorm, inv, labels[a:b], best[a:b])
    return labels, best


def activation_code(kind: str) -> int:
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")
    return ACTIVATIONS.index(kind)


def similarity(patches: np.ndarray, mu: np.ndarray, sigma: np.ndarray, activation: str | None = None) -> np.ndarray:
    """Sim of every patch (n, D) to every filter (K, D): array (n, K) float32.

    With ``activation`` (``sigmoid`` or ``relative``) the layer's output instead of raw Sim.
    """
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    mu, mm, lognorm, inv = _prepared(mu, sigma)
    code = -1 if activation is None else activation_code(activation)
    out = np.empty((patches.shape[0], mu.shape[0]), dtype=np.float32)
    for a, b in _blocks(patches.shape[0], mu.shape[0]):
        x = patches[a:b]
        _sims_from_dots(x @ mu.T, row_norms(x), mm, lognorm, inv, out[a:b])
        if code >= 0:
            _activate(out[a:b], code, out[a:b])
    return out


def activate(sims: np.ndarray, kind: str) -> np.ndarray:
    """Layer output from similarities (n, K): ``sigmoid`` (paper) or ``relative``."""
    sims = np.ascontiguousarray(sims, dtype=np.float32)
    out = np.empty_like(sims)
    _activate(sims, activation_code(kind), out)
    return out


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
