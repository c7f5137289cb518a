"""Does a trained model copy its training images? A check ``train`` runs at the end and
``nsn info`` reports, so a model that memorises (say, one top filter per image of a small data
set) says so instead of passing its copies off as samples.

A sample is a near copy when its pixel distance to the nearest training image is below half
the typical distance of a new real image to the training set. Without held-out images, that
typical distance is the median leave-one-out distance of training images to their nearest
other training image (which also gives the real images' own near-copy rate, the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Samples drawn for the check; training images compared against at most (and at most
#: MAX_VALUES pixel values of them: 32 MB, so the check fits any --memory budget).
CHECK_SAMPLES = 500
MAX_TRAIN = 10000
MAX_VALUES = 1 << 23
CHECK_SEED = 0x3E3
#: Warn when the samples' near-copy fraction is above this many times the real images' (and
#: above MIN_FRACTION: with few copies either way the ratio is noise).
WARN_RATIO = 2.0
MIN_FRACTION = 0.05


@dataclass
class MemorisationCheck:
    """Near-copy fractions of the samples and of the training images themselves."""

    samples: float
    reference: float
    images: int

    @property
    def memorises(self) -> bool:
        return self.samples > MIN_FRACTION and self.samples > WARN_RATIO * self.reference

    def message(self) -> str:
        return (f"the model memorises its {self.images} training images: {self.samples:.0%} of its samples are "
                f"near copies of one (real images among themselves: {self.reference:.0%}); train on more images, "
                "or with fewer filters (--filters)")


def _nearest(points: np.ndarray, train: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Distance of each row of ``points`` (n, D) to its nearest row of ``train`` (m, D)."""
    tt = np.einsum("ij,ij->i", train, train, dtype=np.float64)
    out = np.empty(len(points))
    for a in range(0, len(points), 256):
        block = points[a : a + 256]
        d2 = np.einsum("ij,ij->i", block, block, dtype=np.float64)[:, None] - 2.0 * (block @ train.T) + tt[None, :]
        if exclude_self:
            d2[np.arange(len(block)), np.arange(a, a + len(block))] = np.inf
        out[a : a + 256] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def check_memorisation(samples: np.ndarray, train: np.ndarray) -> MemorisationCheck:
    """The near-copy fraction of ``samples`` against ``train`` (both (n, H, W, C) pixels), and
    the training images' own leave-one-out fraction."""
    train = train.reshape(len(train), -1).astype(np.float32)
    loo = _nearest(train, train, exclude_self=True)
    typical = float(np.median(loo)) or 1.0
    near = _nearest(samples.reshape(len(samples), -1).astype(np.float32), train)
    return MemorisationCheck(float(np.mean(near < 0.5 * typical)), float(np.mean(loo < 0.5 * typical)), len(train))


def check_model(model, data_path) -> MemorisationCheck:
    """:func:`check_memorisation` of :data:`CHECK_SAMPLES` default samples of a complete model
    against (at most :data:`MAX_TRAIN` seeded) images of its training set."""
    from nsn_cli.calibrate import data_pixel_chunks
    from nsn_cli.sample import generate

    chunks, count = data_pixel_chunks(data_path)
    limit = max(2, min(MAX_TRAIN, MAX_VALUES // int(np.prod(model.image_shape))))
    keep = np.sort(np.random.default_rng(CHECK_SEED).choice(count, min(count, limit), replace=False))
    train, offset = [], 0
    for chunk in chunks:
        rows = keep[(keep >= offset) & (keep < offset + len(chunk))] - offset
        train.append(chunk[rows])
        offset += len(chunk)
    samples = generate(model, CHECK_SAMPLES, seed=CHECK_SEED)
    return check_memorisation(samples, np.concatenate(train))
