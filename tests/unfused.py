"""The engine's per-position NSN-Gen step without the fused stitch: every position's patch
written out (N, h, w, D). Only tests use it: it is checked against the numpy reference
(``reference.decode_step``), and the engine's fused decode against it folded, to the bit."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT_PARALLEL
from nsn_cli.engine.decode import _checked, _decode_position, _key


@njit(**JIT_PARALLEL)
def _decode_step(maps, mu, var, delta1, delta2, delta3, draws, seed, first_sample, stream, out):
    """IN maps (N, h, w, K); OUT out (N, h, w, D): the generated patch of every position."""
    n, h, w, k = maps.shape
    for i in prange(n):
        state = _key(seed, first_sample + i, stream)
        prob, weight, picked = np.empty(k), np.empty(k), np.empty(k)
        active, every = np.empty(k, dtype=np.int64), np.arange(k)
        for r in range(h):
            for c in range(w):
                state, _ = _decode_position(maps[i, r, c], every, k, mu, var, delta1, delta2, delta3, draws, state,
                                            prob, active, weight, picked, False, out[i, r, c])


def decode_patches(maps: np.ndarray, mu: np.ndarray, sigma: np.ndarray, *, delta1: float, delta2: float,
                   delta3: float, draws: int, seed: int, first_sample: int, stream: int) -> np.ndarray:
    """The patches (N, h, w, D) float32 of ``F[l-1]`` generated from ``maps`` = ``F[l]`` (N, h, w, K),
    as the engine's ``decode_maps`` generates them (same random streams), not yet stitched."""
    maps, mu = _checked(maps, mu, draws)
    var = np.asarray(sigma, dtype=np.float64) ** 2
    out = np.empty(maps.shape[:3] + (mu.shape[1],), dtype=np.float32)
    _decode_step(maps, mu, var, float(delta1), float(delta2), float(delta3), int(draws),
                 np.uint64(seed), np.int64(first_sample), np.int64(stream), out)
    return out
