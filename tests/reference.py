"""Slow, obviously-correct numpy/Python versions of every engine kernel."""

from __future__ import annotations

import math

import numpy as np

MASK = (1 << 64) - 1


def patches(maps, patch, stride):
    n, height, width, _ = maps.shape
    h, w = (height - patch) // stride + 1, (width - patch) // stride + 1
    rows = []
    for i in range(n):
        for r in range(h):
            for c in range(w):
                rows.append(maps[i, r * stride : r * stride + patch, c * stride : c * stride + patch, :].ravel())
    return np.array(rows, dtype=np.float32)


def stitch(patch_grid, patch, stride, channels):
    n, h, w, _ = patch_grid.shape
    height, width = (h - 1) * stride + patch, (w - 1) * stride + patch
    total = np.zeros((n, height, width, channels))
    count = np.zeros((height, width, 1))
    for r in range(h):
        for c in range(w):
            total[:, r * stride : r * stride + patch, c * stride : c * stride + patch, :] += patch_grid[:, r, c].reshape(
                n, patch, patch, channels
            )
            count[r * stride : r * stride + patch, c * stride : c * stride + patch] += 1
    return total / count


def sim(x, mu, sigma):
    """Eq. 1 for one patch and one filter, in float64."""
    d2 = float(np.sum((np.float64(x) - np.float64(mu)) ** 2))
    return -math.log(math.sqrt(2 * math.pi) * sigma) - d2 / (2 * sigma**2)


def sim_matrix(x, mu, sigma):
    return np.array([[sim(xi, m, s) for m, s in zip(mu, sigma)] for xi in x])


def sequential_creation(cand, radius, may_start=None, existing=None):
    """Fully sequential DP-means: each candidate joins the nearest earlier seed within radius
    (``existing`` seeds first, numbered 0..E-1), else starts one if it may (else label -1)."""
    centres = [np.float64(e) for e in (existing if existing is not None else [])]
    seeds, labels = [], []
    for t, x in enumerate(cand):
        d = [float(np.sum((np.float64(x) - c) ** 2)) for c in centres]
        if d and min(d) <= radius**2:
            labels.append(int(np.argmin(d)))
        elif may_start is not None and not may_start[t]:
            labels.append(-1)
        else:
            seeds.append(t)
            centres.append(np.float64(x))
            labels.append(len(centres) - 1)
    return np.array(labels, dtype=np.int64), np.array(seeds, dtype=np.int64)


def sequential_e_step(x, mu, sigma, alpha, order, sigma_new):
    """The paper's rule patch by patch: best over old and newly created filters; below alpha,
    start a filter (mu = the patch, sigma = sigma_new). Visits ``order`` (candidates)."""
    k = len(mu)
    labels = np.array([int(np.argmax([sim(xi, m, s) for m, s in zip(mu, sigma)])) for xi in x])
    new = []
    for i in order:
        sims = [sim(x[i], m, s) for m, s in zip(mu, sigma)] + [sim(x[i], x[j], sigma_new) for j in new]
        if max(sims) < alpha:
            new.append(i)
            labels[i] = k + len(new) - 1
        else:
            labels[i] = int(np.argmax(sims))
    return labels, new


def m_step(x, labels, k):
    mu = np.zeros((k, x.shape[1]))
    rms = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    for j in range(k):
        members = np.float64(x[labels == j])
        counts[j] = len(members)
        if len(members):
            mu[j] = members.mean(axis=0)
            rms[j] = math.sqrt(np.mean(np.sum((members - mu[j]) ** 2, axis=1)))
    return mu, rms, counts


# ---------------------------------------------------------------- the generator's random numbers


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def key(seed, sample, stream):
    state = (seed * 0xD1B54A32D192ED03) & MASK
    state, a = splitmix(state ^ sample)
    state, b = splitmix(a ^ ((stream * 0x9E3779B97F4A7C15) & MASK))
    return b


def uniform(state):
    state, bits = splitmix(state)
    return state, (bits >> 11) * (1.0 / 9007199254740992.0)


def normal(state):
    state, u1 = uniform(state)
    state, u2 = uniform(state)
    return state, math.sqrt(-2.0 * math.log(max(u1, 1e-300))) * math.cos(2.0 * math.pi * u2)


def decode_step(maps, mu, sigma, delta1, delta2, delta3, draws, seed, first, stream):
    """NSN-Gen's step (Eq. 4-5, one noise draw per element), position by position; ``draws = 0``
    is the limit of many draws, the weights ``p`` themselves."""
    n, h, w, k = maps.shape
    out = np.zeros((n, h, w, mu.shape[1]))
    for i in range(n):
        state = key(seed, first + i, stream)
        for r in range(h):
            for c in range(w):
                logits = delta1 * np.float64(maps[i, r, c])
                p = np.exp(logits - logits.max())
                weight = p / p.sum() if draws == 0 else np.zeros(k)  # 0: the expected weights
                for _ in range(draws):
                    state, u = uniform(state)
                    pick = int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right"))
                    weight[min(pick, k - 1)] += 1.0 / draws
                mean = weight @ np.float64(mu)
                scale = delta2 * math.sqrt(float(np.sum(weight**2 * sigma**2)))
                patch = np.empty(mu.shape[1])
                for d in range(mu.shape[1]):
                    noise = 0.0
                    if scale > 0:
                        state, noise = normal(state)
                    patch[d] = delta3 * (mean[d] + scale * noise)
                out[i, r, c] = patch
    return out
