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
#: Levels of a :class:`ChannelMap`'s reach table: a position's threshold level is rounded down
#: to one of these (finer levels rule out a few more channels, in a larger table).
REACH_LEVELS = 128


@njit(**JIT)
def interp_value(x, source, target, slope, c):
    """np.interp(x, source[c], target[c]) in float64; source rows strictly increasing, slope the
    segments' slopes (:func:`slopes`)."""
    last = source.shape[1] - 1
    if x <= source[c, 0]:
        return np.float64(target[c, 0])
    if x >= source[c, last]:
        return np.float64(target[c, last])
    # the last knot <= x, by halving a range: each choice is a conditional move, and the steps
    # depend on the knot count only (a branch on the comparison is mispredicted half the time,
    # the most of a lookup's cost; narrowing the range by a bucket table gained nothing)
    lo, n = 0, last
    while n > 1:
        half = n >> 1
        lo = lo + half if source[c, lo + half] <= x else lo
        n -= half
    return slope[c, lo] * (x - np.float64(source[c, lo])) + np.float64(target[c, lo])


def slopes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(C, Q - 1) float64 slopes of the knots' segments, computed as np.interp computes them."""
    source, target = source.astype(np.float64), target.astype(np.float64)
    return np.ascontiguousarray((target[:, 1:] - target[:, :-1]) / (source[:, 1:] - source[:, :-1]))


@njit(**JIT_PARALLEL)
def _interp_rows(values, source, target, slope, out):
    """out[i, c] = np.interp(values[i, c], source[c], target[c]); source rows strictly increasing."""
    n, channels = values.shape
    for i in prange(n):
        for c in range(channels):
            out[i, c] = interp_value(np.float64(values[i, c]), source, target, slope, c)


@njit(**JIT)
def bucket_of(x, c, origin, scale, buckets):
    """Channel c's bucket of x in a ChannelMap of ``buckets`` buckets, clamped (NaN: 0)."""
    t = (x - origin[c]) * scale[c]
    t = t if t > 0.0 else 0.0
    return int(t if t < buckets - 1.0 else buckets - 1.0)


def _as_knots(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class ChannelMap:
    """A per-channel map ``np.interp(x, source[c], target[c])`` (monotone non-decreasing, as a
    calibration's) with bounds of it in uniform buckets over ``[source[c, 0], source[c, -1]]``:
    a value x in bucket ``b = int((x - origin[c]) * scale[c])`` (clamped) maps, rounded to
    float32, into ``[lower[c, b], upper[c, b]]``. Each bound is the map at the edge one bucket
    further out, one float32 step wider, so the rounding of ``b`` and of the map cannot break it.

    The reach table turns "can x map to at least level t" into one comparison in x: a value x
    of channel c whose map reaches ``levels[g]`` or more has ``x >= reach[g, c]`` (the edge of
    the first bucket whose upper bound reaches the level, half a thousandth of a bucket lower;
    -inf for a level every bucket reaches, +inf for one none does). ``levels`` (G,) rises from
    -inf evenly over the bounds' range, ``level_origin``/``level_scale`` place a level in it."""

    source: np.ndarray  # (C, Q) float32
    target: np.ndarray  # (C, Q) float32
    slope: np.ndarray  # (C, Q - 1) float64
    origin: np.ndarray  # (C,) float64
    scale: np.ndarray  # (C,) float64: buckets per unit of x
    lower: np.ndarray  # (C, B) float32
    upper: np.ndarray  # (C, B) float32
    levels: np.ndarray  # (G,) float64, levels[0] = -inf
    level_origin: float
    level_scale: float  # levels per unit of the map's values
    reach: np.ndarray  # (G, C) float32

    @classmethod
    def of(cls, source: np.ndarray, target: np.ndarray, buckets: int = BOUND_BUCKETS) -> ChannelMap:
        source, target = _as_knots(source), _as_knots(target)
        first, last = source[:, 0].astype(np.float64), source[:, -1].astype(np.float64)
        edges = first[:, None] + (last - first)[:, None] * np.linspace(0.0, 1.0, buckets + 1)
        at_edges = interp_channels(edges.T.astype(np.float32), source, target).T  # (C, B + 1)
        below = np.maximum(np.arange(buckets) - 1, 0)  # bucket b's outer edges: b - 1 and b + 2
        above = np.minimum(np.arange(buckets) + 2, buckets)
        lower = np.nextafter(at_edges[:, below], np.float32(-np.inf))
        upper = np.nextafter(at_edges[:, above], np.float32(np.inf))
        span = last - first
        scale = np.where(span > 0, buckets / np.where(span > 0, span, 1.0), 0.0)
        levels, level_origin, level_scale, reach = _reach_table(upper, first, scale)
        return cls(source, target, slopes(source, target), first, scale, np.ascontiguousarray(lower, np.float32),
                   np.ascontiguousarray(upper, np.float32), levels, level_origin, level_scale, reach)


def _reach_table(upper: np.ndarray, origin: np.ndarray, scale: np.ndarray,
                 count: int = REACH_LEVELS) -> tuple[np.ndarray, float, float, np.ndarray]:
    """A ChannelMap's levels, their origin and scale, and its reach table (see ChannelMap)."""
    channels, buckets = upper.shape
    low, high = float(upper.min()), float(upper.max())
    step = (high - low) / (count - 1) if high > low else 1.0
    levels = np.concatenate([[-np.inf], low + step * np.arange(count - 1)])
    reach = np.empty((count, channels), np.float32)
    for c in range(channels):
        first = np.searchsorted(upper[c].astype(np.float64), levels, side="left")  # upper rises with the bucket
        # bucket(x) >= b needs (x - origin) * scale >= b; a thousandth of a bucket covers the rounding
        edge = origin[c] + (first - 1e-3) / scale[c] if scale[c] > 0 else np.full(count, np.inf)
        edge = np.nextafter(edge.astype(np.float32), np.float32(-np.inf))
        reach[:, c] = np.where(first == 0, -np.inf, np.where(first >= buckets, np.inf, edge))
    return levels, low, 1.0 / step, reach


def interp_channels(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` (..., C) mapped channel by channel through the knots ``source``/``target``
    (C, Q), source rows strictly increasing; float32, same shape."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    flat = values.reshape(-1, values.shape[-1])
    out = np.empty_like(flat)
    source, target = _as_knots(source), _as_knots(target)
    _interp_rows(flat, source, target, slopes(source, target), out)
    return out.reshape(values.shape)
