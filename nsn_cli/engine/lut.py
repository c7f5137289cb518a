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
    return _interp_within(x, source, target, slope, c, 0, source.shape[1] - 2)


@njit(**JIT)
def _interp_within(x, source, target, slope, c, lo, hi):
    """np.interp(x, source[c], target[c]), given that x's segment, if x is inside the knots,
    is one of lo..hi."""
    last = source.shape[1] - 1
    if x <= source[c, 0]:
        return np.float64(target[c, 0])
    if x >= source[c, last]:
        return np.float64(target[c, last])
    lo = _last_knot_at_most(x, source, c, lo, hi)
    return slope[c, lo] * (x - np.float64(source[c, lo])) + np.float64(target[c, lo])


@njit(**JIT)
def _last_knot_at_most(x, source, c, lo, hi):
    """The last k in lo..hi with source[c, k] <= x, given it is there: by halving the range,
    each choice a conditional move and the steps set by the range alone (a branch on the
    comparison is mispredicted half the time, the most of a lookup's cost)."""
    n = hi - lo + 1
    while n > 1:
        half = n >> 1
        lo = lo + half if source[c, lo + half] <= x else lo
        n -= half
    return lo


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
def interp_indexed(x, source, target, slope, c, origin, scale, low, high):
    """:func:`interp_value` with the knot search narrowed to low[c, b]..high[c, b] for a value
    in bucket b (:class:`KnotIndex`): the same segment, so the same number."""
    b = bucket_of(x, c, origin, scale, low.shape[1])
    return _interp_within(x, source, target, slope, c, low[c, b], high[c, b])


@njit(**JIT_PARALLEL)
def _interp_indexed_rows(values, source, target, slope, origin, scale, low, high, out):
    """_interp_rows through a :class:`KnotIndex`."""
    n, channels = values.shape
    for i in prange(n):
        for c in range(channels):
            out[i, c] = interp_indexed(np.float64(values[i, c]), source, target, slope, c, origin, scale, low, high)


@njit(**JIT)
def bucket_of(x, c, origin, scale, buckets):
    """Channel c's bucket of x in a ChannelMap of ``buckets`` buckets, clamped (NaN: 0)."""
    t = (x - origin[c]) * scale[c]
    t = t if t > 0.0 else 0.0
    return int(t if t < buckets - 1.0 else buckets - 1.0)


def _as_knots(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


#: Uniform buckets per channel of a :class:`KnotIndex`. The pixel calibration's 525 knots
#: crowd around the background's values, where most pixels are: at 16,384 buckets the search
#: in a bucket takes 0.1 steps on average (33 at most), and mapping 50,000 digits' pixels
#: took 282 ms against 519 ms for the search over every knot (65,536: 250 ms). (The decode's
#: exact map of a few layer-1 channels per position ran slower through such an index, 1,024
#: buckets for each of 99 channels: 2.2-2.7 s against 1.95 s for ten passes over 2,000 samples.)
INDEX_BUCKETS = 1 << 14


def _buckets(source: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The uniform buckets over each channel's knots ``[source[c, 0], source[c, -1]]`` that
    :func:`bucket_of` reads: first and last knots (C,) float64, and buckets per unit of x
    (0 for a channel whose knots span nothing)."""
    first, last = source[:, 0].astype(np.float64), source[:, -1].astype(np.float64)
    span = last - first
    return first, last, np.where(span > 0, buckets / np.where(span > 0, span, 1.0), 0.0)


def knot_index(source: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A :class:`KnotIndex`'s ``scale`` (C,) and ``low``, ``high`` (C, buckets) int32 for the
    knots ``source`` (C, Q), strictly increasing; buckets start at ``source[:, 0]``."""
    channels, knots = source.shape
    first, _, scale = _buckets(source, buckets)
    low = np.zeros((channels, buckets), np.int32)
    high = np.zeros((channels, buckets), np.int32)
    for c in range(channels):
        if scale[c] == 0.0:
            continue  # one knot: every value is at or past it
        edges = first[c] + np.arange(buckets + 3) / scale[c]  # edges[b]: where bucket b starts
        segment = np.clip(np.searchsorted(source[c].astype(np.float64), edges, side="right") - 1, 0, knots - 2)
        b = np.arange(buckets)
        low[c] = segment[np.maximum(b - 1, 0)]
        high[c] = segment[b + 2]
    return scale, low, high


@dataclass(frozen=True)
class KnotIndex:
    """The per-channel map ``np.interp(x, source[c], target[c])`` with an index of its knots:
    a value in uniform bucket b of ``[source[c, 0], source[c, -1]]`` has its segment among
    ``low[c, b] .. high[c, b]`` (the segments from one bucket below to one above, so the
    rounding of b cannot miss it). Build once per knots (:meth:`of`), apply to many values."""

    source: np.ndarray  # (C, Q) float32, strictly increasing
    target: np.ndarray  # (C, Q) float32
    slope: np.ndarray  # (C, Q - 1) float64
    origin: np.ndarray  # (C,) float64
    scale: np.ndarray  # (C,) float64: buckets per unit of x
    low: np.ndarray  # (C, B) int32
    high: np.ndarray  # (C, B) int32

    @classmethod
    def of(cls, source: np.ndarray, target: np.ndarray, buckets: int = INDEX_BUCKETS) -> KnotIndex:
        source, target = _as_knots(source), _as_knots(target)
        scale, low, high = knot_index(source, buckets)
        return cls(source, target, slopes(source, target), source[:, 0].astype(np.float64), scale, low, high)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (..., C) mapped channel by channel: :func:`interp_channels`'s numbers."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape[-1] != self.source.shape[0]:
            raise ValueError(f"a map of {self.source.shape[0]} channels, values of {values.shape[-1]}")
        flat = values.reshape(-1, values.shape[-1])
        out = np.empty_like(flat)
        _interp_indexed_rows(flat, self.source, self.target, self.slope, self.origin, self.scale, self.low,
                             self.high, out)
        return out.reshape(values.shape)


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
        first, last, scale = _buckets(source, buckets)
        edges = first[:, None] + (last - first)[:, None] * np.linspace(0.0, 1.0, buckets + 1)
        at_edges = interp_channels(edges.T.astype(np.float32), source, target).T  # (C, B + 1)
        below = np.maximum(np.arange(buckets) - 1, 0)  # bucket b's outer edges: b - 1 and b + 2
        above = np.minimum(np.arange(buckets) + 2, buckets)
        lower = np.nextafter(at_edges[:, below], np.float32(-np.inf))
        upper = np.nextafter(at_edges[:, above], np.float32(np.inf))
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
