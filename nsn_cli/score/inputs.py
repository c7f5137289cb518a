"""What ``nsn score`` reads: the reference data set and the sample sets (model files sampled on
the fly, arrays, data sets, folders), matched to the reference's size and channels only when
asked (``--resize``), and fed to the metrics in chunks of :data:`CHUNK` images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.files import MODEL_TYPE, file_kind, load_images
from nsn_cli.model import NSNModel, load_model
from nsn_cli.prep import resize_image, to_channels
from nsn_cli.readers import ImageSource, open_source
from nsn_cli.sample import generate

#: Fewest images a sample set or the reference may have (IS uses 10 splits).
MIN_IMAGES = 10
#: Relative aspect-ratio difference still matched by ``--resize``.
ASPECT_TOLERANCE = 0.02
#: Most samples drawn from a model: a score's spread is far below the differences it shows
#: long before this many, and a larger -n (a typo's extra zeros) would sample for days.
MAX_MODEL_SAMPLES = 10_000_000
#: Images read, sampled or scored per chunk: with the metrics' fixed-size subsets it bounds
#: the memory of scoring any number of samples.
CHUNK = 1024

#: ``tracker(description, total)`` starts a progress task and returns its ``advance(n,
#: status="")`` (``status``: a short text shown beside the bar, e.g. the judge's loss).
Tracker = Callable[[str, int], Callable[..., None]]
#: ``sink(images)`` takes the next chunk of a sample set.
Sink = Callable[[np.ndarray], None]


def no_progress(description: str, total: int) -> Callable[..., None]:
    """A tracker that shows nothing."""
    return lambda n, status="": None


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

    @property
    def has_labels(self) -> bool:
        """Whether the reference can train the judge (labels of at least two classes)."""
        return self.labels is not None and len(np.unique(self.labels)) > 1


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


def enough(count: int, where: str) -> None:
    if count < MIN_IMAGES:
        raise NsnError(f"{where}: {count} images; scoring needs at least {MIN_IMAGES}")


def load_reference(path: str | os.PathLike) -> Reference:
    """Read the reference data set (``--ref``)."""
    images, labels, whitened = dataset_pixels(path)
    enough(len(images), str(path))
    return Reference(str(path), images, labels, whitened)


@dataclass
class Matcher:
    """Brings sample images to the reference: unchanged when they already match; resized and
    converted as ``nsn prep`` does (Pillow LANCZOS, luma or repeated gray) only with ``resize``,
    else refused: a silent resize changes what is being scored."""

    reference: Reference
    resize: bool = False

    def check(self, shape: tuple[int, ...], where: str) -> str | None:
        """Refuse an image shape (H, W, C) the reference cannot take; with ``resize``, a note of
        what will be done to it (None when nothing)."""
        (h, w), channels = shape[:2], shape[2] if len(shape) > 2 else 1
        (height, width), want = self.reference.size, self.reference.channels
        if (h, w, channels) == (height, width, want):
            return None
        what = f"{h}x{w}x{channels}"
        if not self.resize:
            raise NsnError(
                f"{where}: images are {what}, the reference {self.reference.name} is {height}x{width}x{want}; "
                "give samples of the reference's size, or --resize to resize and convert them as nsn prep does"
            )
        if (h, w) != (height, width) and self.reference.whitened:
            raise NsnError(
                f"{where}: images are {h}x{w}, but the reference is ZCA-whitened at {height}x{width}; "
                "give samples of that size"
            )
        if abs(h * width - w * height) > ASPECT_TOLERANCE * w * height:
            raise NsnError(
                f"{where}: {h}x{w} images cannot be matched to the reference's {height}x{width} "
                "(another aspect ratio); prep both to one size"
            )
        return f"{where}: --resize brought {what} images to {height}x{width}x{want} (Pillow LANCZOS, as nsn prep)"

    def match(self, images: Sequence[np.ndarray], where: str) -> np.ndarray:
        """``(H, W, C)`` images as one float32 array of the reference's shape."""
        out = np.empty((len(images), *self.reference.size, self.reference.channels), dtype=np.float32)
        for i, image in enumerate(images):
            image = image if image.ndim == 3 else image[..., None]
            self.check(image.shape, where)
            # uint8 inputs become [0, 1] here too; a matching float image is only copied
            out[i] = resize_image(to_channels(image, self.reference.channels), self.reference.size)
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


def check_input(item: NSNModel | ImageSource, matcher: Matcher, where: str, n: int) -> str | None:
    """Cheap checks before any sampling: enough images, and the (first) shape matches.
    Returns the ``--resize`` note, if any."""
    if isinstance(item, NSNModel):
        enough(n, f"{where} (-n)")
        if n > MAX_MODEL_SAMPLES:
            raise ParameterError("n", f"{{name}} {n:,}: at most {MAX_MODEL_SAMPLES:,} samples are drawn from a model "
                                 f"({where}); scores do not change beyond their spread long before that", flag="-n")
        return matcher.check(tuple(item.image_shape), where)
    enough(min(n, len(item)), where)
    first = item.read(0, 1)[0]
    return matcher.check(first.shape if first.ndim == 3 else (*first.shape, 1), where)


def feed_ranges(
    count: int, read: Callable[[int, int], np.ndarray], sink: Sink, advance: Callable[[int], None] = lambda n: None
) -> None:
    """``sink(read(start, stop))`` for consecutive ranges of at most :data:`CHUNK` of ``count``."""
    for start in range(0, count, CHUNK):
        stop = min(count, start + CHUNK)
        sink(read(start, stop))
        advance(stop - start)


def read_input(
    item: NSNModel | ImageSource, matcher: Matcher, where: str, n: int, seed: int, tracker: Tracker = no_progress,
) -> SampleSet:
    """``n`` images sampled from a model, or at most ``n`` read from an image input, matched to
    the reference chunk by chunk when the set is fed (its progress task starts then).

    A model is sampled in batches of :data:`CHUNK` with consecutive sample indices: the images
    are those of ``generate(model, n, seed=seed)``, whose random streams go by sample index."""
    label = Path(where).name
    if isinstance(item, NSNModel):

        def sample(sink: Sink) -> None:
            generate(item, n, seed=seed, batch=CHUNK, progress=tracker(f"sample {label}", n),
                     sink=lambda first, images: sink(matcher.match(images, where)))

        return SampleSet(where, n, sample, item)
    count = min(n, len(item))

    def read(sink: Sink) -> None:
        feed_ranges(count, lambda start, stop: matcher.match(item.read(start, stop), where), sink,
                    tracker(f"read {label}", count))

    return SampleSet(where, count, read)


def load_train(path: str | os.PathLike, matcher: Matcher) -> np.ndarray:
    """The generator's training set (``--train``) as pixels matched to the reference."""
    images, _, _ = dataset_pixels(path)
    matcher.check(images.shape[1:], str(path))
    return matcher.match(images, str(path))
