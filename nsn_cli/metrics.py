"""The mathematics of sample quality, on arrays: Inception Score, Frechet and kernel
distances of features, precision/recall, memorisation, sliced Wasserstein distance on
Laplacian pyramids, Parzen windows, isotropic Gaussian mixture densities. What the features
are is :mod:`nsn_cli.judge`'s business; which metric runs when is :mod:`nsn_cli.score`'s."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


def inception_score(probabilities: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))), mean and std over ``splits``."""
    accumulator = InceptionScoreAccumulator(len(probabilities), splits)
    accumulator.add(probabilities)
    return accumulator.result()


@dataclass
class InceptionScoreAccumulator:
    """:func:`inception_score` of ``count`` probability rows given in consecutive chunks, in
    memory independent of ``count``.

    The splits are ``np.array_split``'s. Within a split the marginal is fixed, so the mean KL is
    ``mean(sum p log p) - sum m log m`` with ``m = mean(p)``: per split the float64 sums of ``p``
    and of ``p log p`` are all it needs."""

    count: int
    splits: int = 10
    _bounds: np.ndarray = field(init=False, repr=False)
    _seen: int = field(default=0, init=False)
    _p: np.ndarray | None = field(default=None, init=False, repr=False)  # (splits, classes)
    _p_log_p: np.ndarray = field(init=False, repr=False)  # (splits,)

    def __post_init__(self) -> None:
        size, extra = divmod(self.count, self.splits)
        sizes = np.full(self.splits, size)
        sizes[:extra] += 1  # as np.array_split: the first ``extra`` splits have one row more
        self._bounds = np.concatenate([[0], np.cumsum(sizes)])
        self._p_log_p = np.zeros(self.splits)

    def add(self, probabilities: np.ndarray) -> None:
        """The next rows ``(k, classes)``."""
        p = np.asarray(probabilities, dtype=np.float64)
        start, stop = self._seen, self._seen + len(p)
        if stop > self.count:
            raise ValueError(f"{stop} rows given to an Inception Score of {self.count}")
        if self._p is None:
            self._p = np.zeros((self.splits, p.shape[1]))
        for s in range(self.splits):
            lo, hi = max(start, self._bounds[s]), min(stop, self._bounds[s + 1])
            if lo < hi:
                part = p[lo - start : hi - start]
                self._p[s] += part.sum(axis=0)
                self._p_log_p[s] += float(np.sum(part * np.log(part + 1e-12)))
        self._seen = stop

    def result(self) -> tuple[float, float]:
        """(mean, std) of the splits' scores, once all ``count`` rows are in."""
        if self._seen != self.count or self._p is None:
            raise ValueError(f"{self._seen} of {self.count} rows given to an Inception Score")
        sizes = np.diff(self._bounds)
        marginal = self._p / sizes[:, None]
        kl = self._p_log_p / sizes - np.sum(marginal * np.log(marginal + 1e-12), axis=1)
        scores = np.exp(kl)
        return float(np.mean(scores)), float(np.std(scores))


@dataclass
class FeatureMoments:
    """Mean and covariance (``np.cov``'s, divided by n - 1) of feature rows given in chunks, in
    memory independent of their number: float64 sums of the rows and of their outer products.

    Both sums are taken about the first chunk's mean: the covariance is the outer sum minus
    ``n mean mean^T``, which would cancel away its digits for features far from zero."""

    count: int = 0
    shift: np.ndarray | None = None
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureMoments:
        """The moments of ``features`` (n, d) given at once."""
        moments = cls()
        moments.add(features)
        return moments

    def add(self, features: np.ndarray) -> None:
        """The next rows ``(k, d)``."""
        x = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        centred = x - self.shift
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred
        self.count += len(x)

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.total / self.count

    @property
    def cov(self) -> np.ndarray:
        offset = self.total / self.count  # the mean, about the shift
        return (self.outer - self.count * np.outer(offset, offset)) / (self.count - 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (n, d)."""
    return frechet_distance_from_moments(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))


def frechet_distance_from_moments(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Frechet distance between the Gaussians (mean_a, cov_a) and (mean_b, cov_b):
    ``|mean_a - mean_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))``."""
    from scipy import linalg

    with warnings.catch_warnings():  # dead ReLU units make the covariances singular: expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = np.asarray(linalg.sqrtm(cov_a @ cov_b)).real  # tiny imaginary parts are rounding
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: manifolds as unions of k-NN balls."""
    from sklearn.metrics import pairwise_distances

    def radii(x):
        d = pairwise_distances(x, x)
        return np.sort(d, axis=1)[:, k]

    r_real, r_fake = radii(real), radii(fake)
    d = pairwise_distances(fake, real)
    precision = float(np.mean((d <= r_real[None, :]).any(axis=1)))
    recall = float(np.mean((d.T <= r_fake[None, :]).any(axis=1)))
    return precision, recall


def nearest_distance(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=1).fit(train.reshape(len(train), -1))
    return nn.kneighbors(x.reshape(len(x), -1))[0][:, 0]


def memorisation(samples: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> tuple[float, float, float]:
    """(median ratio, near-copy fraction of samples, near-copy fraction of held-out reals).

    Ratio: a sample's pixel distance to its nearest training image over the median of the
    held-out images' nearest-training distances. A near copy has ratio < 0.5."""
    typical = float(np.median(nearest_distance(held_out, train)))
    ratio = nearest_distance(samples, train) / typical
    real_ratio = nearest_distance(held_out, train) / typical
    return float(np.median(ratio)), float(np.mean(ratio < 0.5)), float(np.mean(real_ratio < 0.5))


# --------------------------------------------------------------------------- densities

#: Largest distance matrix (bytes) the chunked density functions hold at once.
CHUNK_BYTES = 64 << 20


def _squared_distance_chunks(points: np.ndarray, centres: np.ndarray, max_bytes: int = CHUNK_BYTES):
    """Yield ``(start, stop, d2)``: squared distances (float64) of ``points[start:stop]`` to every
    centre, in row chunks of at most ``max_bytes``."""
    x = points.reshape(len(points), -1).astype(np.float64)
    c = centres.reshape(len(centres), -1).astype(np.float64)
    c_sq = np.einsum("ij,ij->i", c, c)
    rows = max(1, max_bytes // (8 * len(c)))
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        d2 = block @ c.T
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", block, block)[:, None]
        d2 += c_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        yield start, start + len(block), d2


def isotropic_log_normal(sq_dist: np.ndarray, variance: np.ndarray | float, dims: int) -> np.ndarray:
    """``log N(x; mu, variance I)`` from ``||x - mu||^2``: ``-dims/2 log(2 pi v) - d2 / (2 v)``."""
    return -0.5 * dims * np.log(2.0 * np.pi * variance) - sq_dist / (2.0 * variance)


def gaussian_mixture_log_density(
    points: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    weights: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``log sum_j w_j N(x; mu_j, v_j I)`` for each row of ``points`` (n, D); ``means`` (K, D),
    ``variances`` and ``weights`` (K,), weights > 0. Chunked, with logsumexp."""
    from scipy.special import logsumexp

    dims = points.reshape(len(points), -1).shape[1]
    log_w = np.log(np.asarray(weights, dtype=np.float64))
    out = np.empty(len(points))
    for start, stop, d2 in _squared_distance_chunks(points, means):
        out[start:stop] = logsumexp(log_w + isotropic_log_normal(d2, variances, dims), axis=1)
        if progress is not None:
            progress(stop - start)
    return out


def parzen_log_density(
    centres: np.ndarray,
    points: np.ndarray,
    sigmas: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Parzen-window (Gaussian KDE) log density of ``points`` for each bandwidth: ``(n_points,
    len(sigmas))``. The kernels sit on ``centres`` with equal weights; one distance pass serves
    every sigma."""
    from scipy.special import logsumexp

    dims = points.reshape(len(points), -1).shape[1]
    out = np.empty((len(points), len(sigmas)))
    for start, stop, d2 in _squared_distance_chunks(points, centres):
        for k, sigma in enumerate(sigmas):
            out[start:stop, k] = logsumexp(isotropic_log_normal(d2, sigma**2, dims), axis=1)
        if progress is not None:
            progress(stop - start)
    return out - np.log(len(centres))


def parzen_log_likelihood(
    samples: np.ndarray,
    validation: np.ndarray,
    test: np.ndarray,
    sigmas: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float, float]:
    """Goodfellow et al. (2014): a Gaussian KDE on ``samples`` whose sigma maximises the mean
    log-likelihood of ``validation``; returns (mean, standard error, sigma) on ``test``, in nats."""
    on_validation = parzen_log_density(samples, validation, sigmas, progress).mean(axis=0)
    sigma = float(sigmas[int(np.argmax(on_validation))])
    ll = parzen_log_density(samples, test, [sigma], progress)[:, 0]
    se = float(ll.std(ddof=1) / np.sqrt(len(ll))) if len(ll) > 1 else float("nan")
    return float(ll.mean()), se, sigma


# --------------------------------------------------------------------------- sliced Wasserstein

#: The 5x5 binomial kernel of a Gaussian pyramid (cv2.pyrDown), as its 1-D factor.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def _blur(images: np.ndarray, gain: float = 1.0) -> np.ndarray:
    from scipy import ndimage

    kernel = _BINOMIAL * gain
    out = ndimage.correlate1d(images, kernel, axis=1, mode="mirror")
    return ndimage.correlate1d(out, kernel, axis=2, mode="mirror")


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of (N, H, W, C) images, finest first; the last level is the Gaussian
    low-pass (as ProGAN's ``generate_laplacian_pyramid``). Each level halves (rounding up)."""
    pyramid = [np.asarray(images, dtype=np.float32)]
    for _ in range(1, levels):
        finer = pyramid[-1]
        coarser = _blur(finer)[:, ::2, ::2]
        up = np.zeros((finer.shape[0], 2 * coarser.shape[1], 2 * coarser.shape[2], finer.shape[3]), np.float32)
        up[:, ::2, ::2] = coarser
        pyramid[-1] = finer - _blur(up, 2.0)[:, : finer.shape[1], : finer.shape[2]]
        pyramid.append(coarser)
    return pyramid


def neighbourhood_descriptors(level: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int = 7) -> np.ndarray:
    """``size x size`` neighbourhoods of ``level`` (N, H, W, C) with top-left corners ``rows``,
    ``cols`` (N, m): ``(N * m, C * size * size)``, each channel's block contiguous."""
    windows = np.lib.stride_tricks.sliding_window_view(level, (size, size), axis=(1, 2))
    picked = windows[np.arange(len(level))[:, None], rows, cols]  # (N, m, C, size, size)
    return picked.reshape(-1, level.shape[3] * size * size)


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, repeats: int = 4, directions: int = 128, seed: int = 0, block: int = 32,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Sliced Wasserstein distance between point sets (n_a, D) and (n_b, D) (Karras et al. 2018):
    the mean over ``repeats`` x ``directions`` random unit directions of the 1-D W1 distance of
    the projections. Unequal sizes compare the sorted projections at common quantiles.
    ``progress`` is advanced by one per repeat."""
    rng = np.random.default_rng(seed)
    m = max(len(a), len(b))
    quantiles = (np.arange(m) + 0.5) / m

    def at_quantiles(sorted_proj: np.ndarray) -> np.ndarray:
        n = sorted_proj.shape[1]
        return sorted_proj if n == m else sorted_proj[:, (quantiles * n).astype(np.int64)]

    # projections as rows (directions, points): row sorts run on contiguous memory, and
    # numpy releases the GIL while sorting, so blocks of directions run in threads
    a_t, b_t = np.ascontiguousarray(a.T, dtype=np.float32), np.ascontiguousarray(b.T, dtype=np.float32)

    def block_w1(dirs: np.ndarray) -> float:
        pa = at_quantiles(np.sort(dirs @ a_t, axis=1))
        pb = at_quantiles(np.sort(dirs @ b_t, axis=1))
        return float(np.abs(pa - pb).mean(axis=1, dtype=np.float64).sum())

    results = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in range(repeats):
            dirs = rng.standard_normal((directions, a.shape[1])).astype(np.float32)
            dirs /= np.sqrt(np.sum(dirs**2, axis=1, keepdims=True))
            blocks = [dirs[j : j + block] for j in range(0, directions, block)]
            results.append(sum(pool.map(block_w1, blocks)) / directions)
            if progress is not None:
                progress(1)
    return float(np.mean(results))


# --------------------------------------------------------------------------- KID

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _kernel_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Sum and trace of the kernel matrix ``(a . b / d + 1)^3`` of Binkowski et al. (2018), as
    torch-fidelity uses it. float32 elements (a kernel value is ~1e4-1e5 here, so an element's
    rounding is ~1e-7 of it) summed in float64."""
    k = a @ b.T
    k *= np.float32(1.0 / a.shape[1])
    k += np.float32(1.0)
    cube = k * k
    cube *= k
    return float(np.sum(cube, dtype=np.float64)), float(np.trace(cube, dtype=np.float64))


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) between feature sets (n_real, d) and (n_fake, d): the
    unbiased estimate of the squared MMD with a cubic polynomial kernel, averaged over
    ``subsets`` random subsets of ``min(subset_size, n_real, n_fake)`` rows of each set (drawn
    without replacement within a subset), as torch-fidelity computes it. Returns (mean, std
    over the subsets). Unbiased, so unlike FID its expectation does not depend on the number
    of samples: sets of different sizes can be compared."""
    real = np.asarray(real, dtype=np.float32)
    fake = np.asarray(fake, dtype=np.float32)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        (sum_xx, trace_xx), (sum_yy, trace_yy), (sum_xy, _) = _kernel_sums(x, x), _kernel_sums(y, y), _kernel_sums(x, y)
        values[s] = (sum_xx - trace_xx + sum_yy - trace_yy) / (m * (m - 1)) - 2.0 * sum_xy / (m * m)
    return float(values.mean()), float(values.std())
