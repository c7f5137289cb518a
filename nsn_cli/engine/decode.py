"""NSN-Gen's top-down step (paper Eq. 4-5, SPEC "NSN-Gen") and its random numbers.

For every position with channel vector ``v`` of ``F[l]``:
``p = softmax(delta1 * v)``, ``w = Multinomial(n, p) / n`` (``n = draws``; ``draws = 0`` is
the limit of many draws, ``w = p``) and the patch of ``F[l-1]`` is
``delta3 * sum_j w_j (mu_j + delta2 * sigma_j * M_j)``. The noise is drawn once per element:
``sum_j w_j sigma_j M_j`` has the law of ``sqrt(sum_j w_j^2 sigma_j^2) * N(0, 1)``.

Random numbers come from a counter-based generator (splitmix64) keyed by the run's seed, the
sample's index and the layer, so a sample's pixels do not depend on the batch it was drawn in
or on the number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT, JIT_PARALLEL
from nsn_cli.engine.lut import ChannelMap, bucket_of, interp_value
from nsn_cli.engine.patches import add_patch, inverse_coverage


@njit(**JIT)
def _splitmix(state):
    """One splitmix64 step: returns (new state, 64 random bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@njit(**JIT)
def _uniform(state):
    state, bits = _splitmix(state)
    return state, (bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(**JIT)
def _normal(state):
    """Box-Muller; one normal per call (the second is discarded for simplicity)."""
    state, u1 = _uniform(state)
    state, u2 = _uniform(state)
    u1 = max(u1, 1e-300)
    return state, math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(**JIT)
def _key(seed, sample, stream):
    """A generator state for (seed, sample, stream): mixed so nearby inputs are unrelated."""
    state = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
    state, a = _splitmix(state ^ np.uint64(sample))
    state, b = _splitmix(a ^ (np.uint64(stream) * np.uint64(0x9E3779B97F4A7C15)))
    return b


@njit(**JIT)
def _draw_row(seed, sample, stream, normal, out):
    """OUT out (k,): N(0, 1) (normal) or U[0, 1) draws of the sample's stream."""
    state = _key(seed, sample, stream)
    for j in range(out.shape[0]):
        if normal:
            state, out[j] = _normal(state)
        else:
            state, out[j] = _uniform(state)


@njit(**JIT_PARALLEL)
def _draw_block(seed, first_sample, stream, normal, out):
    """OUT out (n, k): row i is sample first_sample + i's draws (:func:`_draw_row`)."""
    for i in prange(out.shape[0]):
        _draw_row(seed, first_sample + i, stream, normal, out[i])


@njit(**JIT)
def _draw_block_serial(seed, first_sample, stream, normal, out):
    """_draw_block on one thread: for a few draws (a prior's three per sample) starting and
    joining the threads costs more than the draws, and far more on a busy machine."""
    for i in range(out.shape[0]):
        _draw_row(seed, first_sample + i, stream, normal, out[i])


#: Draws below which a block is drawn on one thread.
SERIAL_DRAWS = 1 << 14


def _draws(seed: int, first_sample: int, count: int, width: int, stream: int, normal: bool) -> np.ndarray:
    out = np.empty((count, width), dtype=np.float64)
    kernel = _draw_block_serial if count * width < SERIAL_DRAWS else _draw_block
    kernel(np.uint64(seed), np.int64(first_sample), np.int64(stream), normal, out)
    return out


#: With expected weights (draws = 0) filters below e^-EXPECTED_CUTOFF of the best at a position
#: are left out: together they weigh under K e^-12 (1e-3 for 200 filters), and skipping them
#: keeps the step O(D) per position rather than O(K D). Measured against 16 on the default
#: sampler (2,000 digits of a 3,500-digit model): pixels differ by at most 0.52/255, and fewer
#: filters are visited in both layers' decodes.
EXPECTED_CUTOFF = 12.0


@njit(**JIT)
def _draw(state, prob, count, total):
    """One inverse-CDF draw of the multinomial ``prob[:count] / total``: (new state, slot);
    slot ``count`` if rounding left ``u`` past the last cumulative sum."""
    state, u = _uniform(state)
    u *= total
    acc = 0.0
    for s in range(count):
        acc += prob[s]
        if u < acc:
            return state, s
    return state, count


@njit(**JIT)
def _a_mean_as_is(direct, delta2, delta3, variance):
    """Whether a patch that is one filter's mean at weight 1 is that mean to the bit: no noise
    (delta2 * sigma not > 0) and delta3 exactly 1 (x * 1.0 is x)."""
    return direct and delta3 == 1.0 and not delta2 * math.sqrt(variance) > 0.0


@njit(**JIT)
def _decode_position(v, chosen, count, mu, var, delta1, delta2, delta3, draws, state, prob, active, weight, picked,
                     direct, out):
    """One position: OUT out (D,) = the generated patch; returns (generator state, row).

    direct: when the patch is one filter's mean ``mu[j]`` to the bit (a single draw or one
    filter within the cutoff, weight 1, no noise, delta3 = 1), out is not written and row is j
    (the caller adds ``mu[j]`` itself: the sharp softmax makes that most positions of a
    sample); otherwise row is -1.

    draws >= 1: the paper's ``w = Multinomial(draws, p) / draws``; draws = 0: its limit for
    many draws, the expected weights ``w = p`` (no random numbers for the weights).
    v (K,): the position's channel vector, read at the filters ``chosen[:count]`` (ascending)
    only: the others must be ones whose weight is 0 (below the cutoff). Scratch (K,): prob,
    weight, picked (float64), active (int64). Only the filters within the cutoff of the best
    are visited after the first pass (4-6 of ~100 at sampling's delta1); sums run in filter
    order, as over every filter (adding a zero weight changes no bit)."""
    k = v.shape[0]
    top = -np.inf
    for s in range(count):
        top = max(top, delta1 * v[chosen[s]])
    # below e^-40 of the best a filter cannot be drawn in any practical run: skip its exp
    cutoff = -EXPECTED_CUTOFF if draws == 0 else -40.0
    total = 0.0
    m = 0  # prob[:m] of the filters active[:m], in filter order
    for s in range(count):
        j = chosen[s]
        x = delta1 * v[j] - top
        if x > cutoff:
            prob[m] = math.exp(x)
            active[m] = j
            total += prob[m]
            m += 1
    if draws == 1:  # one filter's mean, weight 1 (the same numbers as below, without the weights)
        state, slot = _draw(state, prob, m, total)
        pick = active[slot] if slot < m else k - 1
        noise_var = var[pick]
        if _a_mean_as_is(direct, delta2, delta3, noise_var):
            return state, pick
        for d in range(out.shape[0]):
            out[d] = mu[pick, d]
    else:
        if draws == 0:  # the expected weights
            for s in range(m):
                weight[s] = prob[s] / total
            # 0.0 + 1.0 * x is x but for x = -0.0, which adds to a map as +0.0 does (a map starts at +0.0)
            if m == 1 and weight[0] == 1.0 and _a_mean_as_is(direct, delta2, delta3, var[active[0]]):
                return state, active[0]
        else:
            for j in range(k):
                picked[j] = 0.0
            for _ in range(draws):
                state, slot = _draw(state, prob, m, total)
                picked[active[slot] if slot < m else k - 1] += 1.0 / draws
            m = 0
            for j in range(k):
                if picked[j] > 0.0:
                    active[m] = j
                    weight[m] = picked[j]
                    m += 1
        noise_var = 0.0
        for s in range(m):
            # float32 products, as the patch is kept: float64 ones (a conversion per value) took
            # 37% of the layer-2 decode (a weighted patch of 891 values at half the positions)
            w, row = np.float32(weight[s]), mu[active[s]]
            noise_var += weight[s] * weight[s] * var[active[s]]
            if s == 0:  # written, not added to zeros: one pass fewer (a zero's sign aside, the same)
                for d in range(out.shape[0]):
                    out[d] = w * row[d]
            else:
                for d in range(out.shape[0]):
                    out[d] += w * row[d]
        if m == 0:  # no filter in reach (NaN or -inf maps)
            for d in range(out.shape[0]):
                out[d] = 0.0
    scale = delta2 * math.sqrt(noise_var)
    if scale > 0.0:
        for d in range(out.shape[0]):
            state, noise = _normal(state)
            out[d] = delta3 * (out[d] + scale * noise)
    elif delta3 != 1.0:  # no random numbers: a loop the compiler vectorises (adding 0 * 0 noise changes no value)
        for d in range(out.shape[0]):
            out[d] = delta3 * out[d]
    return state, -1


@njit(**JIT)
def _ordered(bits):
    """A float32's bits (as int32) to an int32 in the float's order (NaN aside; -0.0 just below
    +0.0): integers, whose max the compiler vectorises, where a float max it may not (NaN)."""
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


@njit(**JIT)
def _mapped_candidates(v, bits, delta1, draws, source, target, slope, origin, scale, lower, upper, levels, level_origin,
                       level_scale, reach, bound, chosen, out):
    """OUT out (K,), chosen (K,): v (K,) float32, whose bits are ``bits`` (K,) int32, mapped
    channel by channel (the input map, np.interp's values rounded to float32) at the channels
    ``chosen[:count]`` that may reach the softmax's cutoff at this position; returns count. The others' weight in :func:`_decode_position` is 0
    whatever their value, so the patch is the same to the bit, and only a few of the K
    channels need the exact map. Scratch: bound (K,) float64.

    A channel cannot reach it when its upper bound is more than the cutoff below the best
    lower bound: the exact best value is at least that lower bound. That test needs a table
    read per channel; a cheaper one comes first. The lower bound of the channel whose unmapped
    value is largest (any channel's would do; that one is mostly the best) rounded down to a
    level of the reach table makes "can reach the cutoff" one comparison per channel in
    unmapped values, which rules out all but ~10 of ~100 channels. Every channel it rules out
    has an upper bound below that level, so below the best lower bound of the rest: the table
    test on the rest keeps exactly the channels it keeps on all of them."""
    k, buckets = v.shape[0], lower.shape[1]
    nan = False
    largest = np.int32(-2147483647 - 1)
    for j in range(k):  # a NaN is noted, not branched on: it maps every channel below
        nan |= v[j] != v[j]
        largest = max(largest, _ordered(bits[j]))  # bits: v's, as int32
    top = 0
    while _ordered(bits[top]) != largest:
        top += 1
    cutoff = EXPECTED_CUTOFF if draws == 0 else 40.0
    level = 0
    if delta1 > 0.0:  # at delta1 = 0 every channel is within the cutoff: level -inf
        floor = np.float64(lower[top, bucket_of(np.float64(v[top]), top, origin, scale, buckets)])
        need = floor - (cutoff + 1e-6 * (1.0 + abs(delta1 * floor))) / delta1
        t = (need - level_origin) * level_scale
        level = min(1 + int(min(t, levels.shape[0])) if t >= 0.0 else 0, levels.shape[0] - 1)
        while levels[level] > need:  # rounded down: the level may not exceed what is needed
            level -= 1
    row = reach[level]
    m = 0
    for j in range(k):  # written always, counted when kept: no branch to mispredict
        chosen[m] = j
        m += nan or v[j] >= row[j]
    floor = -np.inf
    for s in range(m):
        j = chosen[s]
        b = bucket_of(np.float64(v[j]), j, origin, scale, buckets)
        bound[s] = upper[j, b]
        floor = max(floor, np.float64(lower[j, b]))
    if nan:  # np.interp gives NaN, which no bound holds: every channel is mapped
        floor = -np.inf
    best = delta1 * floor
    margin = 1e-6 * (1.0 + abs(best))  # far above the rounding of the products and differences
    count = 0
    for s in range(m):
        j = chosen[s]
        chosen[count] = j  # count <= s: what is overwritten was read already
        count += nan or delta1 * bound[s] - best > -cutoff - margin
    if count == 1 and not nan:  # one filter within reach: its weight is 1 whatever its mapped value
        out[chosen[0]] = 0.0
        return count
    for s in range(count):
        j = chosen[s]
        out[j] = interp_value(np.float64(v[j]), source, target, slope, j)
    return count


@njit(**JIT_PARALLEL)
def _decode_stitched(maps, mu, var, delta1, delta2, delta3, draws, seed, first_sample, stream, patch, stride,
                     inverse, mapped, source, target, slope, origin, scale, lower, upper, levels, level_origin,
                     level_scale, reach, out):
    """IN maps (N, h, w, K); OUT out (N, H, W, C): the generated patch of every position added
    into out at once and the overlaps averaged (no (N, h, w, D) patch array is held). With ``mapped``, each
    position's channel vector goes through the input map first (see _mapped_candidates)."""
    n, h, w, k = maps.shape
    keys = maps.view(np.int32)
    for i in prange(n):
        state = _key(seed, first_sample + i, stream)
        prob, weight, picked, bound = np.empty(k), np.empty(k), np.empty(k), np.empty(k)
        active = np.empty(k, dtype=np.int64)
        every = np.arange(k)
        chosen = np.empty(k, dtype=np.int64)
        v = np.empty(k, dtype=np.float32)
        mixed = np.empty((1, mu.shape[1]), dtype=np.float32)  # a patch that is not one mean, as row 0
        buffer = mixed[0]
        image = out[i]  # one view per sample, not one per position
        image[:] = 0.0
        flat, width, channels = image.reshape(-1), image.shape[1], image.shape[2]
        for r in range(h):
            for c in range(w):
                if mapped:
                    count = _mapped_candidates(maps[i, r, c], keys[i, r, c], delta1, draws, source, target, slope,
                                               origin, scale, lower, upper, levels, level_origin, level_scale, reach,
                                               bound, chosen, v)
                    state, row = _decode_position(v, chosen, count, mu, var, delta1, delta2, delta3, draws, state,
                                                  prob, active, weight, picked, True, buffer)
                else:
                    state, row = _decode_position(maps[i, r, c], every, k, mu, var, delta1, delta2, delta3, draws,
                                                  state, prob, active, weight, picked, True, buffer)
                if row >= 0:
                    add_patch(flat, width, channels, mu, row, r * stride, c * stride, patch)
                else:
                    add_patch(flat, width, channels, mixed, 0, r * stride, c * stride, patch)
        for y in range(image.shape[0]):
            for x in range(image.shape[1]):
                for ch in range(image.shape[2]):
                    image[y, x, ch] *= inverse[y, x]


#: The tables passed for "no input map" (numba needs arrays of the same types either way).
_NO_MAP = ChannelMap(source=np.zeros((1, 2), np.float32), target=np.zeros((1, 2), np.float32),
                     slope=np.zeros((1, 1)), origin=np.zeros(1),
                     scale=np.zeros(1), lower=np.zeros((1, 1), np.float32), upper=np.zeros((1, 1), np.float32),
                     levels=np.zeros(1), level_origin=0.0, level_scale=0.0, reach=np.zeros((1, 1), np.float32))


def _checked(maps: np.ndarray, mu: np.ndarray, draws: int) -> tuple[np.ndarray, np.ndarray]:
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    if maps.shape[-1] != mu.shape[0]:
        raise ValueError(f"maps have {maps.shape[-1]} channels, layer has {mu.shape[0]} filters")
    if draws < 0:
        raise ValueError("draws must be at least 0 (0: the expected weights)")
    return maps, mu


def decode_maps(
    maps: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    patch: int,
    stride: int,
    channels: int,
    delta1: float,
    delta2: float,
    delta3: float,
    draws: int,
    seed: int,
    first_sample: int,
    stream: int,
    input_map: ChannelMap | None = None,
) -> np.ndarray:
    """``F[l-1]`` (N, H, W, channels) from ``F[l]`` (N, h, w, K): every position's patch
    generated (paper Eq. 4-5, random streams keyed by sample) and added into the map at once,
    overlaps averaged; no (N, h, w, D) patch array is held.

    input_map: a map of ``F[l]``'s K channels applied first; the same numbers as decoding
    ``interp_channels(maps, input_map.source, input_map.target)``, without mapping every value."""
    maps, mu = _checked(maps, mu, draws)
    n, h, w, k = maps.shape
    if input_map is not None and input_map.source.shape[0] != k:
        raise ValueError(f"input map of {input_map.source.shape[0]} channels, maps have {k}")
    table = _NO_MAP if input_map is None else input_map
    height, width = (h - 1) * stride + patch, (w - 1) * stride + patch
    out = np.empty((n, height, width, channels), dtype=np.float32)
    _decode_stitched(maps, mu, np.asarray(sigma, dtype=np.float64) ** 2, float(delta1), float(delta2),
                     float(delta3), int(draws), np.uint64(seed), np.int64(first_sample), np.int64(stream),
                     patch, stride, inverse_coverage(height, width, patch, stride), input_map is not None,
                     table.source, table.target, table.slope, table.origin, table.scale, table.lower, table.upper,
                     table.levels, float(table.level_origin), float(table.level_scale), table.reach, out)
    return out


def normal_draws(seed: int, first_sample: int, count: int, width: int, stream: int) -> np.ndarray:
    """N(0, 1) draws (count, width), row i from sample ``first_sample + i``'s own stream."""
    return _draws(seed, first_sample, count, width, stream, True)


def uniform_draws(seed: int, first_sample: int, count: int, width: int, stream: int) -> np.ndarray:
    """U[0, 1) draws (count, width), row i from sample ``first_sample + i``'s own stream."""
    return _draws(seed, first_sample, count, width, stream, False)
