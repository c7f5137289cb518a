"""Per-channel piecewise-linear maps, as ``np.interp`` computes them (the calibration's lookup
tables), over every value of an (..., C) array in parallel, and bounds of such a map that cost
one table read (:class:`ChannelMap`).

``np.interp`` channel by channel reads a strided slice per channel and runs on one thread: the
layer-1 map of the posterior fill (about 50 million values per batch of 64 images) took most
of a 1,000-image folder call that way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT, JIT_PARALLEL

#: Uniform buckets per channel of a :class:`ChannelMap`'s bounds. The calibration's knots are
#: quantiles, crowded where values are (half of a layer-1 channel's 217 knots lie within 1e-4
#: of its background value), so no bucket count makes the bucket find the knot; it only has to
#: bound the mapped value tightly enough to rule a channel out of a sharp softmax (64: a
#: default sample's layer-1 position keeps 6.4 of 99 channels on average, 4.6 are within the
#: cutoff; 256 buckets keep 5.2).
BOUND_BUCKETS = 64


@njit(**JIT)
def interp_value(x, source, target, c):
    """np.interp(x, source[c], target[c]) in float64; source rows strictly increasing."""
    last = source.shape[1] - 1
    if x <= source[c, 0]:
        return np.float64(target[c, 0])
    if x >= source[c, last]:
        return np.float64(target[c, last])
    lo, hi = 0, last
    while hi - lo > 1:  # the last knot <= x
        mid = (lo + hi) >> 1
        if source[c, mid] <= x:
            lo = mid
        else:
            hi = mid
    x0, y0 = np.float64(source[c, lo]), np.float64(target[c, lo])
    slope = (np.float64(target[c, hi]) - y0) / (np.float64(source[c, hi]) - x0)
    return slope * (x - x0) + y0


@njit(**JIT_PARALLEL)
def _interp_rows(values, source, target, out):
    """out[i, c] = np.interp(values[i, c], source[c], target[c]); source rows strictly increasing."""
    n, channels = values.shape
    for i in prange(n):
        for c in range(channels):
            out[i, c] = interp_value(np.float64(values[i, c]), source, target, c)


@njit(**JIT)
def bucket_bounds(x, c, origin, scale, lower, upper):
    """(lower, upper) float64 bounds of channel c's mapped value of x (see ChannelMap)."""
    if x != x:  # NaN: np.interp gives NaN, which no bound holds
        return -np.inf, np.inf
    t = min(max((x - origin[c]) * scale[c], 0.0), lower.shape[1] - 1.0)
    b = int(t)
    return np.float64(lower[c, b]), np.float64(upper[c, b])


def _as_knots(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class ChannelMap:
    """A per-channel map ``np.interp(x, source[c], target[c])`` (monotone non-decreasing, as a
    calibration's) with bounds of it in uniform buckets over ``[source[c, 0], source[c, -1]]``:
    a value x in bucket ``b = int((x - origin[c]) * scale[c])`` (clamped) maps, rounded to
    float32, into ``[lower[c, b], upper[c, b]]``. Each bound is the map at the edge one bucket
    further out, one float32 step wider, so the rounding of ``b`` and of the map cannot break it."""

    source: np.ndarray  # (C, Q) float32
    target: np.ndarray  # (C, Q) float32
    origin: np.ndarray  # (C,) float64
    scale: np.ndarray  # (C,) float64: buckets per unit of x
    lower: np.ndarray  # (C, B) float32
    upper: np.ndarray  # (C, B) float32

    @classmethod
    def of(cls, source: np.ndarray, target: np.ndarray, buckets: int = BOUND_BUCKETS) -> ChannelMap:
        source, target = _as_knots(source), _as_knots(target)
        first, last = source[:, 0].astype(np.float64), source[:, -1].astype(np.float64)
        edges = first[:, None] + (last - first)[:, None] * np.linspace(0.0, 1.0, buckets + 1)
        at_edges = interp_channels(edges.T.astype(np.float32), source, target).T  # (C, B + 1)
        below = at_edges[:, np.maximum(np.arange(buckets) - 1, 0)]  # (C, B): bucket b's edge b - 1
        above = at_edges[:, np.minimum(np.arange(buckets) + 2, buckets)]  # and its edge b + 2
        lower = np.nextafter(below, np.float32(-np.inf))
        upper = np.nextafter(above, np.float32(np.inf))
        span = last - first
        scale = np.where(span > 0, buckets / np.where(span > 0, span, 1.0), 0.0)
        return cls(source, target, first, scale, np.ascontiguousarray(lower, np.float32),
                   np.ascontiguousarray(upper, np.float32))


def interp_channels(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` (..., C) mapped channel by channel through the knots ``source``/``target``
    (C, Q), source rows strictly increasing; float32, same shape."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    flat = values.reshape(-1, values.shape[-1])
    out = np.empty_like(flat)
    _interp_rows(flat, _as_knots(source), _as_knots(target), out)
    return out.reshape(values.shape)
