"""The metrics of ``nsn score``, one plug-in class each, and their registry.

A plug-in is built once per run from the :class:`Context` (the reference side: its judge
features, descriptors, splits) and then :meth:`Metric.start` gives a :class:`Tally` per sample
set, which sees the set chunk by chunk (:meth:`Tally.add`) and returns its numbers under their
JSON names (:meth:`Tally.result`). Adding a metric is one class here, one line in
:data:`REGISTRY`, and its test; the scorer and the CLI table take it from there.

Metrics by their ``--metrics`` name, JSON keys (torch-fidelity style) in brackets. "Judge
features" are the 128 hidden units of :mod:`nsn_cli.judge` (trained on the reference's labels,
else the seeded random network):

``is`` [inception_score_mean, inception_score_std]
    Inception Score with the trained judge's class probabilities, 10 splits (labelled
    references only).
``fid`` [frechet_distance]
    Frechet distance of the judge features. Biased: it grows as the sample count falls, so
    compare rows of equal counts (``score`` notes when they differ) or use KID.
``kid`` [kernel_inception_distance_mean, kernel_inception_distance_std]
    Kernel Inception Distance (Binkowski et al. 2018) of the judge features: unbiased MMD^2
    with a cubic polynomial kernel over 100 subsets of up to 1,000 rows (of at most 10,000
    sample rows), mean and standard deviation over the subsets, as torch-fidelity.
``swd`` [swd_level_<height>, swd_mean]
    On the image subset: multi-scale sliced Wasserstein distance (Karras et al. 2018, ProGAN)
    on 7x7 neighbourhoods of a Laplacian pyramid. Levels go from full size down while a level
    is at least twice the neighbourhood (28x28: 28 and 14; 64x64: 64, 32, 16), the last level
    the Gaussian low-pass. 128 random neighbourhoods per image (at most 2^16 per level),
    normalised per channel by the reference's mean and std, 4 repeats of 128 random
    directions. Reported x 1e3, as ProGAN prints it.
``parzen`` [parzen_ll_mean, parzen_ll_se, parzen_sigma, parzen_samples]
    Goodfellow et al. (2014): a Gaussian KDE on the image subset; sigma from logspace(-1, 0,
    10) maximises the log-likelihood of a validation split of the reference (up to 1,000
    images); mean and standard error on the rest (up to 10,000), in nats. It grows with the
    number of kernels (``parzen_samples``), so rows are comparable only at equal counts.
``pr`` [precision, recall]
    Kynkaanniemi et al. (2019), k = 3, in the judge features; at most 2,500 images of each set.
    Recall is the telling one: precision is fooled by sets far off the data (uniform noise
    lands inside the k-NN balls of a few outlying real digits: precision 0.5 against 0.9 for
    real digits, recall 0), so read it beside FID/KID.
``memo`` [near_copy_fraction, nn_ratio_median, near_copy_fraction_reference]
    With the generator's training set (``--train``): a sample's pixel distance to its nearest
    training image over the median of held-out (reference) images' distances; near copies
    have a ratio below 0.5.
``nll`` [nll_nats_per_patch, nll_bits_per_dim, nll_gaussian_nats_per_patch, nll_gaussian_bits_per_dim]
    Model inputs only: the mean negative log-likelihood of the reference's layer-1 patches
    under the filters as an isotropic Gaussian mixture (weights counts / sum, per-dimension
    variance sigma_j^2 / D), beside one isotropic Gaussian fitted to the same patches by
    maximum likelihood. Densities of continuous values: bits/dim can be negative and is not
    comparable with discrete 8-bit figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from nsn_cli.engine.patches import extract_patches
from nsn_cli.errors import NsnError
from nsn_cli.judge import ConvNet
from nsn_cli.metrics import (
    FeatureMoments,
    InceptionScoreAccumulator,
    frechet_distance_from_moments,
    gaussian_mixture_log_density,
    kernel_inception_distance,
    laplacian_pyramid,
    memorisation,
    nearest_distance,
    neighbourhood_descriptors,
    parzen_log_likelihood,
    precision_recall,
    sliced_wasserstein,
)
from nsn_cli.model import NSNModel
from nsn_cli.score.inputs import CHUNK, Reference, SampleSet, Tracker, no_progress

#: Most sample images kept for SWD, Parzen and memorisation: the default -n, so that default
#: runs score every image (larger sets: a subset chosen by the seed).
SUBSET_MAX = 10000
IS_SPLITS = 10
KID_MAX = 10000
PR_K = 3
PR_MAX = 2500
SWD_NHOOD = 7
SWD_PER_IMAGE = 128
SWD_MAX_DESCRIPTORS = 1 << 16
SWD_REPEATS = 4
SWD_DIRECTIONS = 128
SWD_SCALE = 1e3
PARZEN_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))
PARZEN_VALIDATION = 1000
PARZEN_MAX_TEST = 10000


@dataclass(frozen=True)
class Column:
    """A table column: the JSON key shown, its header, and the key of its +/- part."""

    key: str
    header: str
    spread: str | None = None


class Skip(Exception):
    """A metric that cannot run against this reference; the message becomes a note."""


@dataclass
class Context:
    """The reference side, shared by every metric: the reference, its judge and judge
    features, the generator's training set, the seed of every random choice, progress."""

    reference: Reference
    judge: ConvNet
    features: np.ndarray
    probabilities: np.ndarray
    train: np.ndarray | None = None
    seed: int = 0
    tracker: Tracker = no_progress
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Chunk:
    """The next images of a sample set (matched pixels), from index ``start`` of the set; the
    judge runs once per chunk, when a metric first asks for its outputs."""

    images: np.ndarray
    start: int
    judge: ConvNet

    @cached_property
    def _judged(self) -> tuple[np.ndarray, np.ndarray]:
        return self.judge.both(self.images)

    @property
    def features(self) -> np.ndarray:
        return self._judged[0]

    @property
    def probabilities(self) -> np.ndarray:
        return self._judged[1]


def pick_rows(count: int, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``count`` row indices, sorted: all when ``count <= limit``, else
    chosen by ``seed``. They depend only on ``count``, so a stream's rows are picked before it
    is read."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def subsample(x: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` rows of ``x``, chosen by ``seed`` (equal inputs give equal subsets)."""
    return x if len(x) <= limit else x[pick_rows(len(x), limit, seed)]


@dataclass
class RowPicker:
    """The rows ``index`` (sorted) of a stream, copied out of its chunks as they go by."""

    index: np.ndarray
    values: np.ndarray | None = None

    def take(self, start: int, chunk: np.ndarray) -> None:
        """Keep the wanted rows of ``chunk``, which holds the stream's rows from ``start`` on."""
        if self.values is None:
            self.values = np.empty((len(self.index), *chunk.shape[1:]), dtype=chunk.dtype)
        lo, hi = np.searchsorted(self.index, (start, start + len(chunk)))
        self.values[lo:hi] = chunk[self.index[lo:hi] - start]


class Tally:
    """What a metric keeps of one sample set while its chunks go by (a size independent of
    the set's count)."""

    def add(self, chunk: Chunk) -> None:
        """The next chunk; by default nothing is kept (metrics of the image subset)."""

    def result(self, subset: np.ndarray | None) -> dict[str, float]:
        """The set's numbers; ``subset`` is the set's image subset (metrics that use it)."""
        raise NotImplementedError


class Metric:
    """A plug-in: built once from the :class:`Context` (may raise :class:`Skip`)."""

    name: ClassVar[str]
    #: Whether :meth:`Tally.result` needs the set's image subset (at most SUBSET_MAX images).
    uses_subset: ClassVar[bool] = False
    #: The JSON key holding the number of samples a value depends on, when it is biased by it.
    sample_count_key: ClassVar[str | None] = None

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def columns(self) -> list[Column]:
        raise NotImplementedError

    def start(self, samples: SampleSet) -> Tally:
        raise NotImplementedError


# --------------------------------------------------------------------------- judge metrics


class _Picked(Tally):
    """Keeps the judge features of chosen rows; ``finish(features)`` makes the numbers."""

    def __init__(self, count: int, limit: int, seed: int, finish: Callable[[np.ndarray], dict[str, float]]):
        self.picker = RowPicker(pick_rows(count, limit, seed))
        self.finish = finish

    def add(self, chunk: Chunk) -> None:
        self.picker.take(chunk.start, chunk.features)

    def result(self, subset: np.ndarray | None) -> dict[str, float]:
        return self.finish(self.picker.values)


class InceptionScore(Metric):
    name = "is"
    columns = [Column("inception_score_mean", "IS", "inception_score_std")]

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        if context.judge.kind != "trained":
            raise Skip(f"IS needs a reference with labels (of at least two classes); {context.reference.name} "
                       "has none, so it is skipped")

    def start(self, samples: SampleSet) -> Tally:
        accumulator = InceptionScoreAccumulator(samples.count, min(IS_SPLITS, samples.count))

        class _Tally(Tally):
            def add(self, chunk: Chunk) -> None:
                accumulator.add(chunk.probabilities)

            def result(self, subset):
                mean, std = accumulator.result()
                return {"inception_score_mean": mean, "inception_score_std": std}

        return _Tally()


class Frechet(Metric):
    name = "fid"
    columns = [Column("frechet_distance", "FID")]
    sample_count_key = "images"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.reference = FeatureMoments.of(context.features)

    def start(self, samples: SampleSet) -> Tally:
        moments, reference = FeatureMoments(), self.reference

        class _Tally(Tally):
            def add(self, chunk: Chunk) -> None:
                moments.add(chunk.features)

            def result(self, subset):
                return {"frechet_distance": frechet_distance_from_moments(
                    reference.mean, reference.cov, moments.mean, moments.cov)}

        return _Tally()


class KernelDistance(Metric):
    name = "kid"
    columns = [Column("kernel_inception_distance_mean", "KID", "kernel_inception_distance_std")]

    def start(self, samples: SampleSet) -> Tally:
        reference, seed = self.context.features, self.context.seed

        def finish(features: np.ndarray) -> dict[str, float]:
            mean, std = kernel_inception_distance(reference, features, seed=seed)
            return {"kernel_inception_distance_mean": mean, "kernel_inception_distance_std": std}

        return _Picked(samples.count, KID_MAX, seed, finish)


class PrecisionRecall(Metric):
    name = "pr"
    columns = [Column("precision", "prec."), Column("recall", "recall")]

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.reference = subsample(context.features, PR_MAX, context.seed)

    def start(self, samples: SampleSet) -> Tally:
        def finish(features: np.ndarray) -> dict[str, float]:
            precision, recall = precision_recall(self.reference, features, k=PR_K)
            return {"precision": precision, "recall": recall}

        return _Picked(samples.count, PR_MAX, self.context.seed, finish)


# --------------------------------------------------------------------------- image-subset metrics


class _OfSubset(Tally):
    def __init__(self, finish: Callable[[np.ndarray], dict[str, float]]):
        self.finish = finish

    def result(self, subset: np.ndarray | None) -> dict[str, float]:
        return self.finish(subset)


def swd_level_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Pyramid level sizes: full size, then halvings (rounded up) while a level is at least
    twice the neighbourhood; empty when the images are smaller than one neighbourhood."""
    if min(size) < SWD_NHOOD:
        return []
    sizes = [size]
    while True:
        h, w = (-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2))
        if min(h, w) < 2 * SWD_NHOOD:
            return sizes
        sizes.append((h, w))


def swd_descriptors(images: np.ndarray, seed: int, advance: Callable[[int], None]) -> list[np.ndarray]:
    """Random 7x7 neighbourhoods of every pyramid level, per level ``(n * m, C * 49)``; the
    positions depend only on ``seed`` and the image count, so equal sets give equal descriptors."""
    n, channels = len(images), images.shape[3]
    sizes = swd_level_sizes(images.shape[1:3])
    per_image = max(1, min(SWD_PER_IMAGE, SWD_MAX_DESCRIPTORS // n))
    rng = np.random.default_rng(seed)
    corners = [(rng.integers(0, h - SWD_NHOOD + 1, (n, per_image)), rng.integers(0, w - SWD_NHOOD + 1, (n, per_image)))
               for h, w in sizes]
    out = [np.empty((n * per_image, channels * SWD_NHOOD**2), dtype=np.float32) for _ in sizes]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        for k, level in enumerate(laplacian_pyramid(images[start:stop], len(sizes))):
            rows, cols = corners[k]
            out[k][start * per_image : stop * per_image] = neighbourhood_descriptors(
                level, rows[start:stop], cols[start:stop], SWD_NHOOD)
        advance(stop - start)
    return out


@dataclass
class SwdReference:
    """The reference's normalised descriptors per level, and the per-channel statistics that
    normalise every sample set's descriptors."""

    heights: list[int]
    descriptors: list[np.ndarray]
    mean: list[np.ndarray]
    std: list[np.ndarray]
    seed: int

    @classmethod
    def build(cls, images: np.ndarray, seed: int, advance: Callable[[int], None]) -> SwdReference:
        raw = swd_descriptors(images, seed, advance)
        channels = images.shape[3]
        mean, std = [], []
        for desc in raw:
            per_channel = desc.reshape(len(desc), channels, -1)
            mean.append(per_channel.mean(axis=(0, 2)))
            spread = per_channel.std(axis=(0, 2))
            std.append(np.where(spread > 0, spread, 1.0))
        heights = [h for h, _ in swd_level_sizes(images.shape[1:3])]
        self = cls(heights, [], mean, std, seed)
        self.descriptors = [self.normalise(k, desc) for k, desc in enumerate(raw)]
        return self

    def normalise(self, level: int, desc: np.ndarray) -> np.ndarray:
        channels = len(self.mean[level])
        per_channel = desc.reshape(len(desc), channels, -1)
        scaled = (per_channel - self.mean[level][None, :, None]) / self.std[level][None, :, None]
        return scaled.reshape(len(desc), -1).astype(np.float32)

    def distances(self, images: np.ndarray, advance: Callable[[int], None]) -> list[float]:
        """SWD x 1e3 per level against the reference (the same directions for every set);
        ``advance`` counts one per level for the descriptors, then one per repeat."""
        raw = swd_descriptors(images, self.seed, lambda n: None)
        advance(len(raw))
        return [
            SWD_SCALE * sliced_wasserstein(self.descriptors[k], self.normalise(k, desc), SWD_REPEATS,
                                           SWD_DIRECTIONS, seed=self.seed + k, progress=advance)
            for k, desc in enumerate(raw)
        ]


class SlicedWasserstein(Metric):
    name = "swd"
    uses_subset = True

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        images = context.reference.images
        if not swd_level_sizes(context.reference.size):
            raise Skip(f"SWD needs images of at least {SWD_NHOOD}x{SWD_NHOOD}; skipped")
        self.reference = SwdReference.build(images, context.seed, context.tracker("SWD reference", len(images)))

    @property
    def columns(self) -> list[Column]:
        levels = [Column(f"swd_level_{h}", f"SWD {h}\nx1e3") for h in self.reference.heights]
        return levels + [Column("swd_mean", "SWD\nmean")]

    def start(self, samples: SampleSet) -> Tally:
        def finish(images: np.ndarray) -> dict[str, float]:
            advance = self.context.tracker(f"SWD {Path(samples.name).name}",
                                           len(self.reference.heights) * (1 + SWD_REPEATS))
            levels = self.reference.distances(images, advance)
            return {**{f"swd_level_{h}": d for h, d in zip(self.reference.heights, levels)},
                    "swd_mean": float(np.mean(levels))}

        return _OfSubset(finish)


class Parzen(Metric):
    name = "parzen"
    uses_subset = True
    columns = [Column("parzen_ll_mean", "Parzen\nLL", "parzen_ll_se"), Column("parzen_samples", "Parzen\nn")]
    sample_count_key = "parzen_samples"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        images = context.reference.images
        order = np.random.default_rng(context.seed).permutation(len(images))
        cut = max(1, min(PARZEN_VALIDATION, len(images) // 4))
        flat = images.reshape(len(images), -1)
        self.validation, self.test = flat[order[:cut]], flat[order[cut : cut + PARZEN_MAX_TEST]]

    def start(self, samples: SampleSet) -> Tally:
        def finish(images: np.ndarray) -> dict[str, float]:
            advance = self.context.tracker(f"Parzen {Path(samples.name).name}", len(self.validation) + len(self.test))
            mean, se, sigma = parzen_log_likelihood(images.reshape(len(images), -1), self.validation, self.test,
                                                    PARZEN_SIGMAS, advance)
            return {"parzen_ll_mean": mean, "parzen_ll_se": se, "parzen_sigma": sigma, "parzen_samples": len(images)}

        return _OfSubset(finish)


class Memorisation(Metric):
    name = "memo"
    uses_subset = True
    columns = [Column("near_copy_fraction", "near\ncopies")]

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        if context.train is None:
            raise Skip("memorisation needs the generator's training set (--train); skipped")
        if np.median(nearest_distance(context.reference.images, context.train)) < 1e-6:
            raise NsnError(
                "memorisation: most reference images are also in the training set (--train); "
                "give a held-out reference, or leave out memo"
            )

    def start(self, samples: SampleSet) -> Tally:
        def finish(images: np.ndarray) -> dict[str, float]:
            ratio, copies, real = memorisation(images, self.context.train, held_out=self.context.reference.images)
            return {"near_copy_fraction": copies, "nn_ratio_median": ratio, "near_copy_fraction_reference": real}

        return _OfSubset(finish)


# --------------------------------------------------------------------------- NLL


@dataclass
class PatchNll:
    """Mean negative log-likelihood of patches, in nats per patch and bits per dimension."""

    nats_per_patch: float
    gaussian_nats_per_patch: float
    dims: int
    patches: int

    @property
    def bits_per_dim(self) -> float:
        return self.nats_per_patch / (self.dims * math.log(2))

    @property
    def gaussian_bits_per_dim(self) -> float:
        return self.gaussian_nats_per_patch / (self.dims * math.log(2))


def nll_problem(model: NSNModel, reference: Reference) -> str | None:
    """Why the reference's patches cannot be scored under ``model``, or None."""
    height, width, channels = model.image_shape
    if channels != reference.channels:
        return f"the model reads {channels}-channel images, the reference has {reference.channels}"
    if model.zca is not None and (height, width) != reference.size:
        return f"the model is ZCA-whitened at {height}x{width}, the reference is {reference.size[0]}x{reference.size[1]}"
    if min(reference.size) < model.layers[0].shape.patch:
        return f"the reference is smaller than the model's {model.layers[0].shape.patch}x{model.layers[0].shape.patch} patch"
    return None


def patch_nll(model: NSNModel, images: np.ndarray, advance: Callable[[int], None] = lambda n: None) -> PatchNll:
    """NLL of every layer-1 patch of ``images`` (pixels, in the model's input space after
    ``prepare_images``) under the layer-1 filters as an isotropic Gaussian mixture, and under
    one isotropic Gaussian fitted to the same patches by maximum likelihood."""
    layer = model.layers[0]
    dims = layer.flat_mu.shape[1]
    keep = layer.counts > 0
    if not keep.any():
        raise NsnError("layer 1 has no filter with a positive count; its mixture has no weight")
    weights = layer.counts[keep] / layer.counts[keep].sum()
    variances = layer.sigma[keep] ** 2 / dims
    if not (variances > 0).all():
        raise NsnError("layer 1 has a filter with sigma 0; its patch likelihood is undefined")
    total_ll, total, sums, squares = 0.0, 0, np.zeros(dims), 0.0
    for start in range(0, len(images), CHUNK):
        stop = min(len(images), start + CHUNK)
        maps = model.prepare_images(images[start:stop])
        patches = extract_patches(maps, layer.shape.patch, layer.shape.stride).astype(np.float64)
        total_ll += float(gaussian_mixture_log_density(patches, layer.flat_mu[keep], variances, weights).sum())
        sums += patches.sum(axis=0)
        squares += float(np.einsum("ij,ij->", patches, patches))
        total += len(patches)
        advance(stop - start)
    mean = sums / total
    variance = max((squares / total - float(mean @ mean)) / dims, np.finfo(np.float64).tiny)
    gaussian = 0.5 * dims * (math.log(2 * math.pi * variance) + 1.0)
    return PatchNll(-total_ll / total, gaussian, dims, total)


class PatchLikelihood(Metric):
    name = "nll"
    columns = [Column("nll_nats_per_patch", "NLL\nnats/p."), Column("nll_bits_per_dim", "NLL\nbits/dim"),
               Column("nll_gaussian_bits_per_dim", "Gauss.\nbits/dim")]

    def start(self, samples: SampleSet) -> Tally:
        context = self.context

        class _Tally(Tally):
            def result(self, subset):
                if samples.model is None:
                    context.note("NLL scores model inputs only")
                    return {}
                problem = nll_problem(samples.model, context.reference)
                if problem is not None:
                    context.note(f"NLL of {samples.name} skipped: {problem}")
                    return {}
                images = context.reference.images
                nll = patch_nll(samples.model, images, context.tracker(f"NLL {Path(samples.name).name}", len(images)))
                return {"nll_nats_per_patch": nll.nats_per_patch, "nll_bits_per_dim": nll.bits_per_dim,
                        "nll_gaussian_nats_per_patch": nll.gaussian_nats_per_patch,
                        "nll_gaussian_bits_per_dim": nll.gaussian_bits_per_dim}

        return _Tally()


#: Every metric by its ``--metrics`` name, in table order.
REGISTRY: dict[str, type[Metric]] = {
    cls.name: cls
    for cls in (InceptionScore, Frechet, KernelDistance, SlicedWasserstein, Parzen, PrecisionRecall,
                Memorisation, PatchLikelihood)
}
METRICS = tuple(REGISTRY)
