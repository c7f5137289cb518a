"""``nsn score``: sample quality against a reference data set, and an NSN's patch likelihood.

Every input is brought to the reference's size and channels as ``nsn prep`` does (Pillow
LANCZOS resize, luma or repeated gray); all metrics work on pixels in [0, 1] (a ZCA-whitened
reference is de-whitened first).

Sample sets are read (or sampled from a model) in chunks of 1,024 images and never held whole,
so memory does not grow with ``-n``: IS and FID keep running sums, precision/recall the
features of its (up to 2,500) rows, picked before reading. SWD, Parzen and memorisation work
on images, so they see a subset of at most 10,000 images (``SUBSET_MAX``, the default ``-n``):
all of them, in order, when the set has no more, else a random subset chosen by ``--seed``.

Metrics by their ``--metrics`` name, with the JSON keys (torch-fidelity style) in brackets:

``is``, ``fid`` [inception_score_mean, inception_score_std, frechet_distance]
    A :class:`~nsn_cli.metrics.DigitClassifier` trained on the labelled reference stands in for
    Inception (cached with pickle under ``$NSN_CACHE`` or ``~/.cache/nsn``, keyed by a content
    hash of the reference's images and labels): Inception Score over 10 splits, Frechet
    distance of its 64 hidden features. Comparable only between runs on the same reference.
``swd`` [swd_level_<height>, swd_mean]
    On the image subset: multi-scale sliced Wasserstein distance (Karras et al. 2018, ProGAN)
    on 7x7 neighbourhoods of a Laplacian pyramid. Levels go from full size down while a level
    is at least twice the neighbourhood (28x28: 28 and 14; 64x64: 64, 32, 16 as ProGAN's
    ">= 16"), so every level has at least 8x8 neighbourhood positions; the last level is the
    Gaussian low-pass. 128 random neighbourhoods per image (fewer when the set is large: at
    most 2^16 per level), normalised per channel by the reference's mean and std, 4 repeats
    of 128 random directions. Reported x 1e3, as ProGAN prints it.
``parzen`` [parzen_ll_mean, parzen_ll_se, parzen_sigma]
    Goodfellow et al. (2014): a Gaussian KDE on the image subset; sigma from logspace(-1, 0, 10)
    maximises the log-likelihood of a validation split of the reference (up to 1,000
    images); mean and standard error on the rest (up to 10,000), in nats.
``pr`` [precision, recall]
    Kynkaanniemi et al. (2019), k = 3, in the classifier's features, or in PCA-50 of the
    pixels without labels; at most 2,500 images of each set (the k-NN matrices are held whole).
``memo`` [near_copy_fraction, nn_ratio_median, near_copy_fraction_reference]
    With the generator's training set: ``memorisation(subset, train, held_out=reference)``.
``nll`` [nll_nats_per_patch, nll_bits_per_dim, nll_gaussian_nats_per_patch, nll_gaussian_bits_per_dim]
    Model inputs only: the mean negative log-likelihood of the reference's layer-1 patches
    under the filters as an isotropic Gaussian mixture (weights counts / sum, per-dimension
    variance sigma_j^2 / D), beside one isotropic Gaussian fitted to the same patches by
    maximum likelihood. Densities of continuous values (pixels in [0, 1], whitened values for
    ZCA models): bits/dim can be negative and is not comparable with discrete 8-bit figures.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nsn_cli import interrupts
from nsn_cli.engine.patches import extract_patches
from nsn_cli.errors import NsnError
from nsn_cli.files import MODEL_TYPE, atomic_path, file_kind, load_images
from nsn_cli.metrics import (
    DigitClassifier,
    FeatureMoments,
    InceptionScoreAccumulator,
    frechet_distance_from_moments,
    gaussian_mixture_log_density,
    laplacian_pyramid,
    memorisation,
    nearest_distance,
    neighbourhood_descriptors,
    parzen_log_likelihood,
    precision_recall,
    sliced_wasserstein,
)
from nsn_cli.model import NSNModel, load_model
from nsn_cli.prep import resize_image, to_channels
from nsn_cli.readers import ImageSource, open_source
from nsn_cli.sample import generate

METRICS = ("is", "fid", "swd", "parzen", "pr", "memo", "nll")
#: Metrics that need the classifier, hence a labelled reference.
NEEDS_LABELS = ("is", "fid")
#: Fewest images a sample set or the reference may have (IS uses 10 splits).
MIN_IMAGES = 10
#: Relative aspect-ratio difference still matched by resizing.
ASPECT_TOLERANCE = 0.02
#: Images read, sampled, pyramided or patched per chunk; with the fixed-size subsets below it
#: bounds the memory of scoring any number of samples.
CHUNK = 1024
#: Most sample images kept for SWD, Parzen and memorisation: the default -n, so that default
#: runs score every image (larger sets: a subset chosen by the seed).
SUBSET_MAX = 10000
#: Most samples drawn from a model: a score's spread is far below the differences it shows
#: long before this many, and a larger -n (a typo's extra zeros) would sample for days.
MAX_MODEL_SAMPLES = 10_000_000

CLASSIFIER_SEED = 0
IS_SPLITS = 10
SWD_NHOOD = 7
SWD_PER_IMAGE = 128
SWD_MAX_DESCRIPTORS = 1 << 16
SWD_REPEATS = 4
SWD_DIRECTIONS = 128
SWD_SCALE = 1e3
PARZEN_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))
PARZEN_VALIDATION = 1000
PARZEN_MAX_TEST = 10000
PR_K = 3
PR_MAX = 2500
PCA_DIMS = 50

#: ``tracker(description, total)`` starts a progress task and returns its ``advance(n)``.
Tracker = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    """A tracker that shows nothing."""
    return lambda n: None


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"is,fid"`` -> ``("is", "fid")`` in canonical order; unknown names are refused."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise NsnError(f"--metrics: unknown metric '{unknown[0]}'; choose from {', '.join(METRICS)}")
    if not names:
        raise NsnError(f"--metrics: name at least one of {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in names)


# --------------------------------------------------------------------------- inputs


@dataclass
class Reference:
    """The reference images as pixels (N, H, W, C) float32 in [0, 1]."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    whitened: bool = False  # stored ZCA-whitened: samples must already have its size

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


#: ``sink(images)`` takes the next chunk of a sample set.
Sink = Callable[[np.ndarray], None]


@dataclass
class SampleSet:
    """``count`` images to score, matched to the reference, that ``feed(sink)`` hands to ``sink``
    in consecutive chunks of at most :data:`CHUNK` ``(k, H, W, C)`` float32 images; ``model`` when
    they are sampled from one.

    Pushed rather than iterated because :func:`~nsn_cli.sample.generate` streams only through
    its sink; either way only one chunk is held."""

    name: str
    count: int
    feed: Callable[[Sink], None]
    model: NSNModel | None = None

    @classmethod
    def of(cls, name: str, images: np.ndarray) -> SampleSet:
        """Images already matched and in memory, fed in chunks like any other input."""
        return cls(name, len(images), lambda sink: feed_ranges(len(images), lambda a, b: images[a:b], sink))


def dataset_pixels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A data set's images as pixels in [0, 1] (de-whitened if stored whitened), its labels,
    and whether it was whitened."""
    images, labels, zca = load_images(path)
    if zca is not None:
        images = np.clip(zca.invert(images), 0.0, 1.0)
    return images, labels, zca is not None


def _enough(count: int, where: str) -> None:
    if count < MIN_IMAGES:
        raise NsnError(f"{where}: {count} images; scoring needs at least {MIN_IMAGES}")


def load_reference(path: str | os.PathLike) -> Reference:
    """Read the reference data set (``--ref``)."""
    images, labels, whitened = dataset_pixels(path)
    _enough(len(images), str(path))
    return Reference(str(path), images, labels, whitened)


def check_size(size: tuple[int, int], reference: Reference, where: str) -> None:
    """Refuse images the reference's size cannot be reached from without distortion."""
    (h, w), (height, width) = size, reference.size
    if (h, w) == (height, width):
        return
    if reference.whitened:
        raise NsnError(
            f"{where}: images are {h}x{w}, but the reference is ZCA-whitened at {height}x{width}; "
            "give samples of that size"
        )
    if abs(h * width - w * height) > ASPECT_TOLERANCE * w * height:
        raise NsnError(
            f"{where}: {h}x{w} images cannot be matched to the reference's {height}x{width} "
            "(another aspect ratio); prep both to one size"
        )


def match_images(images: Sequence[np.ndarray], reference: Reference, where: str) -> np.ndarray:
    """Bring ``(H, W, C)`` images to the reference's size and channels, as ``nsn prep`` does."""
    out = np.empty((len(images), *reference.size, reference.channels), dtype=np.float32)
    for i, image in enumerate(images):
        check_size(image.shape[:2], reference, where)
        out[i] = resize_image(to_channels(image, reference.channels), reference.size)
    return out


def open_input(path: str | os.PathLike) -> NSNModel | ImageSource:
    """A model file (to sample from) or any image input ``open_source`` reads."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file() and file_kind(path) == MODEL_TYPE:
        model = load_model(path)
        if not model.complete:
            raise NsnError(
                f"{path}: the model has {len(model.layers)} of {len(model.arch)} layers; "
                "finish training (nsn train --resume) before scoring its samples"
            )
        return model
    return open_source(path)


def check_input(item: NSNModel | ImageSource, reference: Reference, where: str, n: int) -> None:
    """Cheap checks before any sampling: enough images, and the (first) size matches."""
    if isinstance(item, NSNModel):
        _enough(n, f"{where} (-n)")
        if n > MAX_MODEL_SAMPLES:
            raise NsnError(f"-n {n:,}: at most {MAX_MODEL_SAMPLES:,} samples are drawn from a model ({where}); "
                           "scores do not change beyond their spread long before that")
        check_size(tuple(item.image_shape[:2]), reference, where)
    else:
        _enough(min(n, len(item)), where)
        check_size(tuple(item.read(0, 1)[0].shape[:2]), reference, where)


def feed_ranges(
    count: int, read: Callable[[int, int], np.ndarray], sink: Sink, advance: Callable[[int], None] = lambda n: None
) -> None:
    """``sink(read(start, stop))`` for consecutive ranges of at most :data:`CHUNK` of ``count``."""
    for start in range(0, count, CHUNK):
        stop = min(count, start + CHUNK)
        sink(read(start, stop))
        advance(stop - start)


def read_input(
    item: NSNModel | ImageSource, reference: Reference, where: str, n: int, seed: int,
    tracker: Tracker = no_progress,
) -> SampleSet:
    """``n`` images sampled from a model, or at most ``n`` read from an image input, matched to
    the reference chunk by chunk when the set is fed (its progress task starts then).

    A model is sampled in batches of :data:`CHUNK` with consecutive sample indices: the images
    are those of ``generate(model, n, seed=seed)``, whose random streams go by sample index."""
    label = Path(where).name
    if isinstance(item, NSNModel):

        def sample(sink: Sink) -> None:
            generate(item, n, seed=seed, batch=CHUNK, progress=tracker(f"sample {label}", n),
                     sink=lambda first, images: sink(match_images(images, reference, where)))

        return SampleSet(where, n, sample, item)
    count = min(n, len(item))

    def read(sink: Sink) -> None:
        feed_ranges(count, lambda start, stop: match_images(item.read(start, stop), reference, where), sink,
                    tracker(f"read {label}", count))

    return SampleSet(where, count, read)


# --------------------------------------------------------------------------- classifier


def cache_dir() -> Path:
    """Where fitted classifiers are kept: ``$NSN_CACHE`` or ``~/.cache/nsn``."""
    return Path(os.environ.get("NSN_CACHE") or Path.home() / ".cache" / "nsn")


def classifier_key(images: np.ndarray, labels: np.ndarray) -> str:
    """A content hash of the reference's images and labels (and what the fit depends on)."""
    import sklearn

    digest = hashlib.sha256(
        f"DigitClassifier seed={CLASSIFIER_SEED} sklearn={sklearn.__version__} {images.shape}".encode()
    )
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def reference_classifier(
    images: np.ndarray, labels: np.ndarray, cache: Path | None
) -> tuple[DigitClassifier, bool]:
    """The classifier for ``images``/``labels`` from the cache, else fitted (and cached).
    Returns ``(classifier, came_from_cache)``. An unwritable cache only costs a refit."""
    from sklearn.exceptions import ConvergenceWarning

    path = cache / f"classifier-{classifier_key(images, labels)}.pkl" if cache is not None else None
    if path is not None and path.is_file():
        try:
            with path.open("rb") as handle:
                classifier = pickle.load(handle)
            if isinstance(classifier, DigitClassifier):
                return classifier, True
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
            pass  # a stale or corrupt entry: fit again and overwrite it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = DigitClassifier.fit(images, labels, seed=CLASSIFIER_SEED)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temp:
                temp.write_bytes(pickle.dumps(classifier))
        except (OSError, NsnError):  # a failed write is an NsnError from atomic_path
            pass
    return classifier, False


# --------------------------------------------------------------------------- SWD


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


# --------------------------------------------------------------------------- scoring


def has_labels(reference: Reference) -> bool:
    """Whether the reference can train the classifier (labels of at least two classes)."""
    return reference.labels is not None and len(np.unique(reference.labels)) > 1


def usable_metrics(metrics: Sequence[str], reference: Reference) -> tuple[tuple[str, ...], list[str]]:
    """Drop IS and FID (with a note) when the reference has no labels; refuse when nothing is left."""
    wanted = [m for m in metrics if m in NEEDS_LABELS]
    if has_labels(reference) or not wanted:
        return tuple(metrics), []
    rest = tuple(m for m in metrics if m not in NEEDS_LABELS)
    if not rest:
        raise NsnError(
            f"{reference.name}: {' and '.join(w.upper() for w in wanted)} need a reference with labels "
            "(of at least two classes) to train the digit classifier; it has none"
        )
    return rest, [f"IS and FID need a reference with labels; {reference.name} has none, so they are skipped"]


def pick_rows(count: int, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``count`` row indices, sorted: all when ``count <= limit``, else
    chosen by ``seed``. They depend only on ``count``, so a stream's rows are picked before it
    is read."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def _subsample(x: np.ndarray, limit: int, seed: int) -> np.ndarray:
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


@dataclass
class SampleStream:
    """What :meth:`Scorer.score` keeps of a sample set while its chunks go by, all of a size
    independent of its count: IS and FID sums, the features of the precision/recall rows and
    the image subset (those two picked up front, as :func:`pick_rows` picks from a whole set)."""

    name: str
    count: int
    embed: Callable[[np.ndarray], np.ndarray] | None = None  # features for FID and PR
    probabilities: Callable[[np.ndarray], np.ndarray] | None = None  # for IS
    inception: InceptionScoreAccumulator | None = None
    moments: FeatureMoments | None = None
    pr: RowPicker | None = None
    subset: RowPicker | None = None
    seen: int = 0

    def add(self, images: np.ndarray) -> None:
        """The next chunk of matched images; NaN or infinite pixels (a data set file, a broken
        model) are refused."""
        interrupts.check()  # a Ctrl-C held while numba loaded its kernels (see nsn_cli.interrupts)
        if not np.isfinite(images).all():
            raise NsnError(f"{self.name}: the images contain NaN or infinite values")
        if self.inception is not None:
            self.inception.add(self.probabilities(images))
        if self.moments is not None or self.pr is not None:
            features = self.embed(images)  # one pass serves FID and precision/recall
            if self.moments is not None:
                self.moments.add(features)
            if self.pr is not None:
                self.pr.take(self.seen, features)
        if self.subset is not None:
            self.subset.take(self.seen, images)
        self.seen += len(images)


@dataclass
class Scorer:
    """The reference-side work done once (classifier, descriptors, splits), then
    :meth:`score` for each sample set."""

    reference: Reference
    metrics: tuple[str, ...] = METRICS
    train: np.ndarray | None = None
    seed: int = 0
    cache: Path | None = None
    tracker: Tracker = no_progress
    notes: list[str] = field(default_factory=list)
    classifier: DigitClassifier | None = field(default=None, init=False)
    classifier_cached: bool = field(default=False, init=False)
    swd: SwdReference | None = field(default=None, init=False, repr=False)
    _ref_moments: FeatureMoments | None = field(default=None, init=False, repr=False)
    _ref_pr: np.ndarray | None = field(default=None, init=False, repr=False)
    _pca: object = field(default=None, init=False, repr=False)
    _validation: np.ndarray | None = field(default=None, init=False, repr=False)
    _test: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        wanted = set(self.metrics)
        if has_labels(self.reference) and wanted & {*NEEDS_LABELS, "pr"}:
            self._fit_classifier()
        if "pr" in wanted:
            self._prepare_pr()
        if "swd" in wanted:
            self._prepare_swd()
        if "parzen" in wanted:
            self._split_for_parzen()
        if "memo" in wanted:
            self._check_train()

    def _fit_classifier(self) -> None:
        advance = self.tracker("classifier", 1)
        images = self.reference.images
        self.classifier, self.classifier_cached = reference_classifier(images, self.reference.labels, self.cache)
        advance(1)
        if "fid" in self.metrics:
            self._ref_moments = FeatureMoments.of(self.classifier.features(images))
        if set(self.metrics) & set(NEEDS_LABELS):
            self.note(
                "IS and FID use a digit classifier trained on the reference, not Inception features: "
                "compare them only with scores against the same reference"
            )

    def _prepare_pr(self) -> None:
        if self.classifier is None:
            from sklearn.decomposition import PCA

            flat = self.reference.images.reshape(len(self.reference.images), -1)
            self._pca = PCA(min(PCA_DIMS, *flat.shape), random_state=self.seed).fit(flat)
            self.note("no labels: precision/recall use PCA-50 of the pixels, which is blind to what lies "
                      "outside those 50 components (recall is the more telling of the two)")
        self._ref_pr = _subsample(self.embed(self.reference.images), PR_MAX, self.seed)

    def _prepare_swd(self) -> None:
        if not swd_level_sizes(self.reference.size):
            self.note(f"SWD needs images of at least {SWD_NHOOD}x{SWD_NHOOD}; skipped")
            return
        images = self.reference.images
        self.swd = SwdReference.build(images, self.seed, self.tracker("SWD reference", len(images)))

    def _split_for_parzen(self) -> None:
        images = self.reference.images
        order = np.random.default_rng(self.seed).permutation(len(images))
        cut = max(1, min(PARZEN_VALIDATION, len(images) // 4))
        flat = images.reshape(len(images), -1)
        self._validation, self._test = flat[order[:cut]], flat[order[cut : cut + PARZEN_MAX_TEST]]

    def _check_train(self) -> None:
        if self.train is None:
            self.note("memorisation needs the generator's training set (--train); skipped")
        elif np.median(nearest_distance(self.reference.images, self.train)) < 1e-6:
            raise NsnError(
                "memorisation: most reference images are also in the training set (--train); "
                "give a held-out reference, or leave out memo"
            )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Features for precision/recall: the classifier's, else PCA-50 of the pixels."""
        if self.classifier is not None:
            return self.classifier.features(images)
        return self._pca.transform(images.reshape(len(images), -1))

    @property
    def swd_heights(self) -> list[int]:
        return self.swd.heights if self.swd is not None else []

    def stream(self, samples: SampleSet) -> SampleStream:
        """An empty :class:`SampleStream` for ``samples``, keeping what the metrics need."""
        wanted, count, classifier = set(self.metrics), samples.count, self.classifier
        stream = SampleStream(samples.name, count, embed=self.embed)
        if classifier is not None and "is" in wanted:
            stream.probabilities = classifier.probabilities
            stream.inception = InceptionScoreAccumulator(count, min(IS_SPLITS, count))
        if classifier is not None and "fid" in wanted:
            stream.moments = FeatureMoments()
        if "pr" in wanted:
            stream.pr = RowPicker(pick_rows(count, PR_MAX, self.seed))
        if self.swd is not None or "parzen" in wanted or ("memo" in wanted and self.train is not None):
            stream.subset = RowPicker(pick_rows(count, SUBSET_MAX, self.seed))
        return stream

    def score(self, samples: SampleSet) -> dict[str, float]:
        """Every requested metric of one sample set, under its JSON name; the set is fed once."""
        stream = self.stream(samples)
        samples.feed(stream.add)
        if stream.seen != samples.count:
            raise RuntimeError(f"{samples.name}: fed {stream.seen} of {samples.count} images")
        label = Path(samples.name).name
        row: dict[str, float] = {}
        if stream.inception is not None:
            row["inception_score_mean"], row["inception_score_std"] = stream.inception.result()
        if stream.moments is not None:
            from scipy.linalg import LinAlgWarning

            with warnings.catch_warnings():  # dead ReLU units make the covariances singular
                warnings.simplefilter("ignore", LinAlgWarning)
                row["frechet_distance"] = frechet_distance_from_moments(
                    self._ref_moments.mean, self._ref_moments.cov, stream.moments.mean, stream.moments.cov)
        images = stream.subset.values if stream.subset is not None else None
        if self.swd is not None:
            steps = len(self.swd.heights) * (1 + SWD_REPEATS)
            levels = self.swd.distances(images, self.tracker(f"SWD {label}", steps))
            row.update({f"swd_level_{h}": d for h, d in zip(self.swd.heights, levels)})
            row["swd_mean"] = float(np.mean(levels))
        if "parzen" in self.metrics:
            advance = self.tracker(f"Parzen {label}", len(self._validation) + len(self._test))
            flat = images.reshape(len(images), -1)
            row["parzen_ll_mean"], row["parzen_ll_se"], row["parzen_sigma"] = parzen_log_likelihood(
                flat, self._validation, self._test, PARZEN_SIGMAS, advance)
        if stream.pr is not None:
            row["precision"], row["recall"] = precision_recall(self._ref_pr, stream.pr.values, k=PR_K)
        if "memo" in self.metrics and self.train is not None:
            ratio, copies, real_copies = memorisation(images, self.train, held_out=self.reference.images)
            row.update(near_copy_fraction=copies, nn_ratio_median=ratio, near_copy_fraction_reference=real_copies)
        if "nll" in self.metrics:
            row.update(self._nll(samples))
        return row

    def _nll(self, samples: SampleSet) -> dict[str, float]:
        if samples.model is None:
            self.note("NLL scores model inputs only")
            return {}
        problem = nll_problem(samples.model, self.reference)
        if problem is not None:
            self.note(f"NLL of {samples.name} skipped: {problem}")
            return {}
        images = self.reference.images
        nll = patch_nll(samples.model, images, self.tracker(f"NLL {Path(samples.name).name}", len(images)))
        return {"nll_nats_per_patch": nll.nats_per_patch, "nll_bits_per_dim": nll.bits_per_dim,
                "nll_gaussian_nats_per_patch": nll.gaussian_nats_per_patch,
                "nll_gaussian_bits_per_dim": nll.gaussian_bits_per_dim}


@dataclass
class ScoreOptions:
    """What ``nsn score`` computes: metric names, samples per model (and cap on other inputs),
    the seed of every random choice, the generator's training set, the classifier cache."""

    metrics: tuple[str, ...] = METRICS
    n: int = 10000
    seed: int = 0
    train: str | os.PathLike | None = None
    cache: Path | None = None  # None: cache_dir()


@dataclass
class ScoreReport:
    """One row per input (its path, kind, image count and metrics), notes, reference facts."""

    reference: str
    reference_images: int
    metrics: tuple[str, ...]
    rows: list[dict]
    notes: list[str]
    swd_heights: list[int]
    classifier_accuracy: float | None = None
    classifier_cached: bool = False

    def to_json(self, options: ScoreOptions) -> dict:
        """Plain numbers (NaN as null) with torch-fidelity-like names."""

        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        return {
            "reference": self.reference, "reference_images": self.reference_images,
            "metrics": list(self.metrics), "n": options.n, "seed": options.seed,
            "classifier_accuracy": self.classifier_accuracy,
            "results": [{k: clean(v) for k, v in row.items()} for row in self.rows],
            "notes": self.notes,
        }


def load_train(path: str | os.PathLike, reference: Reference) -> np.ndarray:
    """The generator's training set as pixels matched to the reference."""
    images, _, _ = dataset_pixels(path)
    return match_images(images, reference, str(path))


def score(
    inputs: Sequence[str | os.PathLike],
    reference_path: str | os.PathLike,
    options: ScoreOptions | None = None,
    tracker: Tracker = no_progress,
) -> ScoreReport:
    """Score every input against the reference. Cheap checks on every input come first, so a
    bad one fails before any model is sampled."""
    options = options or ScoreOptions()
    if options.n < 1:
        raise NsnError(f"-n must be at least 1, got {options.n}")
    if not inputs:
        raise NsnError("score: give at least one samples input (model, .npz/.npy/.h5, or folder)")
    reference = load_reference(reference_path)
    metrics, notes = usable_metrics(options.metrics, reference)
    opened = [(str(path), open_input(path)) for path in inputs]
    for name, item in opened:
        check_input(item, reference, name, options.n)
        if isinstance(item, ImageSource):
            notes.extend(item.notes)
    train = load_train(options.train, reference) if options.train is not None and "memo" in metrics else None
    cache = options.cache if options.cache is not None else cache_dir()
    scorer = Scorer(reference, metrics, train=train, seed=options.seed, cache=cache, tracker=tracker)
    rows = []
    for name, item in opened:
        samples = read_input(item, reference, name, options.n, options.seed, tracker)
        kind = "model" if samples.model is not None else "images"
        rows.append({"input": name, "kind": kind, "images": samples.count, **scorer.score(samples)})
    classifier = scorer.classifier
    return ScoreReport(
        reference=str(reference_path), reference_images=len(reference.images), metrics=metrics, rows=rows,
        notes=notes + scorer.notes, swd_heights=scorer.swd_heights,
        classifier_accuracy=classifier.accuracy if classifier is not None else None,
        classifier_cached=scorer.classifier_cached,
    )
