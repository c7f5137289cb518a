"""Top-layer density: statistics stored at training time and the ``mix`` / ``pca`` priors.

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

Priors (``nsn sample --prior``):

- ``mix``: a filter drawn by count, two of its members, ``F[L-1] = t a + (1 - t) b`` with
  ``t ~ U(MIX_LOW, 1 - MIX_LOW)``; keeping ``t`` away from 0 and 1 keeps samples away from
  copies of training images.
- ``pca``: a filter drawn by count, ``F[L-1] = mean + sum_k sqrt(var_k) z_k pc_k``, clipped to
  the activations' range [0, 1].
- ``knn``: a stored member drawn uniformly (so top filters come by their image counts), mixed
  as in ``mix`` with one of its ``NEIGHBOURS`` nearest members in ``F[L-1]``, whatever their
  top filter: neighbours are closer than two random members of a filter, so the mix stays on
  the data while crossing filter borders.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nsn_cli.config import JIT_PARALLEL
from nsn_cli.engine.generate import normal_draws, uniform_draws
from nsn_cli.engine.similarity import best_filter
from nsn_cli.errors import NsnError

COMPONENTS = 10
MAX_MEMBERS = 4096
MIX_LOW = 0.2
#: ``knn`` mixes a member with one of its NEIGHBOURS nearest members (any top filter).
NEIGHBOURS = 3
PRIOR_STREAM = 1 << 21


def compute_top_stats(below: np.ndarray, mu: np.ndarray, sigma: np.ndarray, seed: int) -> dict:
    """Statistics of the training maps ``below`` = F[L-1] (N, h, w, C) per top filter.

    mu, sigma: the top layer's filters, flat (K, D) and (K,).
    """
    n = below.shape[0]
    flat = below.reshape(n, -1).astype(np.float32)
    labels, _ = best_filter(flat, mu, sigma)
    k, d = mu.shape
    mean = np.zeros((k, d), dtype=np.float32)
    components = np.zeros((k, COMPONENTS, d), dtype=np.float32)
    variances = np.zeros((k, COMPONENTS), dtype=np.float32)
    counts = np.bincount(labels, minlength=k)
    for j in range(k):
        members = flat[labels == j].astype(np.float64)
        if not len(members):
            mean[j] = mu[j]
            continue
        mean[j] = members.mean(axis=0)
        if len(members) > 1:
            _, s, vt = np.linalg.svd(members - mean[j], full_matrices=False)
            p = min(COMPONENTS, vt.shape[0])
            components[j, :p] = vt[:p]
            variances[j, :p] = s[:p] ** 2 / len(members)
    rng = np.random.default_rng([seed, 7])
    keep = np.arange(n) if n <= MAX_MEMBERS else np.sort(rng.choice(n, MAX_MEMBERS, replace=False))
    members = flat[keep]
    return {
        "member_neighbours": nearest_members(members),
        "mean": mean,
        "components": components,
        "variances": variances,
        "image_counts": counts.astype(np.int64),
        "members": members.astype(np.float16),
        "member_filter": labels[keep].astype(np.int64),
    }


@njit(**JIT_PARALLEL)
def _mix(members, first, second, t, out):
    """OUT out[i] = t[i] * members[first[i]] + (1 - t[i]) * members[second[i]]."""
    for i in prange(out.shape[0]):
        a, b, ti = members[first[i]], members[second[i]], t[i]
        for d in range(out.shape[1]):
            out[i, d] = ti * a[d] + (1.0 - ti) * b[d]


def nearest_members(members: np.ndarray, k: int = NEIGHBOURS, block: int = 1024) -> np.ndarray:
    """Indices (M, k) of each member's k nearest other members (squared Euclidean, in blocks)."""
    x = np.asarray(members, dtype=np.float32)
    k = min(k, len(x) - 1)
    if k < 1:
        return np.zeros((len(x), 1), dtype=np.int64)
    norms = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    out = np.empty((len(x), k), dtype=np.int64)
    for a in range(0, len(x), block):
        d2 = norms[a : a + block, None] - 2.0 * (x[a : a + block] @ x.T) + norms[None, :]
        d2[np.arange(d2.shape[0]), np.arange(a, a + d2.shape[0])] = np.inf  # not itself
        part = np.argpartition(d2, k, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, axis=1).argsort(axis=1, kind="stable")
        out[a : a + block] = np.take_along_axis(part, order, axis=1)
    return out


def _pick_filters(counts: np.ndarray, u: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(counts, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), counts.size - 1)


def sample_top_maps(model, prior: str, seed: int, first: int, count: int) -> np.ndarray:
    """F[L-1] maps (count, h, w, C) drawn from the stored top statistics."""
    top = model.top
    if top is None:
        raise NsnError(
            f"--prior {prior} needs top-layer statistics, which this model file does not have "
            "(trained by an older nsn); retrain it, or use --prior counts or normal"
        )
    h, w, c = model.map_shape(len(model.layers) - 1)
    u = uniform_draws(seed, first, count, 3, PRIOR_STREAM)
    if prior == "pca":
        filters = _pick_filters(top["image_counts"], u[:, 0])
        z = normal_draws(seed, first, count, COMPONENTS, PRIOR_STREAM + 1)
        scale = np.sqrt(np.maximum(top["variances"][filters], 0.0)) * z
        maps = top["mean"][filters] + np.einsum("np,npd->nd", scale, top["components"][filters])
        return np.clip(maps, 0.0, 1.0).astype(np.float32).reshape(count, h, w, c)
    if prior == "mix":
        member_filter = top["member_filter"]
        member_counts = np.bincount(member_filter, minlength=top["mean"].shape[0])
        filters = _pick_filters(member_counts, u[:, 0])
        order = np.argsort(member_filter, kind="stable")
        starts = np.concatenate([[0], np.cumsum(member_counts)])
        size = member_counts[filters]
        first_pick = order[starts[filters] + np.minimum((u[:, 1] * size).astype(np.int64), size - 1)]
        # the second member differs from the first whenever the filter has two or more
        v = uniform_draws(seed, first, count, 2, PRIOR_STREAM + 2)
        offset = 1 + np.minimum((v[:, 0] * np.maximum(size - 1, 1)).astype(np.int64), np.maximum(size - 2, 0))
        second_slot = (np.minimum((u[:, 1] * size).astype(np.int64), size - 1) + offset) % np.maximum(size, 1)
        second_pick = order[starts[filters] + second_slot]
        t = MIX_LOW + (1 - 2 * MIX_LOW) * u[:, 2]
        members = top.setdefault("members_f32", top["members"].astype(np.float32))
        maps = np.empty((count, members.shape[1]), dtype=np.float32)
        _mix(members, first_pick, second_pick, t, maps)
        return maps.reshape(count, h, w, c)
    if prior == "knn":
        members = top.setdefault("members_f32", top["members"].astype(np.float32))
        if "member_neighbours" not in top:  # files written before knn existed
            top["member_neighbours"] = nearest_members(members)
        neighbours = top["member_neighbours"]
        first_pick = np.minimum((u[:, 0] * len(members)).astype(np.int64), len(members) - 1)
        slot = np.minimum((u[:, 1] * neighbours.shape[1]).astype(np.int64), neighbours.shape[1] - 1)
        second_pick = neighbours[first_pick, slot]
        t = MIX_LOW + (1 - 2 * MIX_LOW) * u[:, 2]
        maps = np.empty((count, members.shape[1]), dtype=np.float32)
        _mix(members, first_pick, second_pick, t, maps)
        return maps.reshape(count, h, w, c)
    raise NsnError(f"unknown top prior {prior!r}")
