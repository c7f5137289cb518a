"""Disturbances of real images, for validating a sample-quality metric the way Heusel et al.
(2017, the FID paper, its Figure 2) validated FID: a metric worth optimising must get worse,
strictly, as each disturbance grows.

Every family has three increasing levels; each disturbance is seeded and works on (N, H, W, C)
images in [0, 1]. ``make judge`` prints the table of FID and KID per family and level, and
``tests/test_judge.py`` asserts that it is monotone.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: family -> the three levels of its strength parameter, mildest first.
LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (0.05, 0.15, 0.35),  # Gaussian noise std, clipped to [0, 1]
    "blur": (0.5, 1.0, 2.0),  # Gaussian blur sigma in pixels
    "dimming": (0.85, 0.6, 0.35),  # x -> c x
    "occlusion": (0.15, 0.3, 0.5),  # side of a black square, as a fraction of the image side
    "salt-pepper": (0.02, 0.08, 0.2),  # fraction of pixels set to 0 or 1
    "class-drop": (2, 5, 8),  # classes replaced by the remaining ones (labelled sets only)
    "grain": (0.1, 0.25, 0.5),  # multiplicative speckle on the image's own ink: x (1 + s z)
}


def gaussian_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + rng.normal(0.0, std, images.shape), 0.0, 1.0).astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="constant").astype(np.float32)


def dimming(images: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return (images * factor).astype(np.float32)


def occlusion(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A black square of ``fraction`` of the side at a random place in each image."""
    out = images.copy()
    n, height, width, _ = images.shape
    side = max(1, int(round(fraction * min(height, width))))
    tops = rng.integers(0, height - side + 1, n)
    lefts = rng.integers(0, width - side + 1, n)
    for i in range(n):
        out[i, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = 0.0
    return out


def salt_and_pepper(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    hit = rng.random(images.shape[:3]) < fraction
    out[hit] = rng.integers(0, 2, int(hit.sum()))[:, None].astype(np.float32)
    return out


def grain(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Speckle on the strokes: each pixel scaled by ``1 + strength z``, ``z ~ N(0, 1)``
    (the background stays clean), the defect of grainy generated strokes."""
    return np.clip(images * (1.0 + strength * rng.standard_normal(images.shape)), 0.0, 1.0).astype(np.float32)


def class_drop(images: np.ndarray, labels: np.ndarray, dropped: int, rng: np.random.Generator) -> np.ndarray:
    """The set with ``dropped`` classes (the first in a seeded order) replaced by images drawn
    from the remaining ones, so its size stays the same while its diversity falls."""
    classes = np.unique(labels)
    gone = rng.permutation(classes)[: int(dropped)]
    keep = np.flatnonzero(~np.isin(labels, gone))
    out = images.copy()
    replace = np.flatnonzero(np.isin(labels, gone))
    out[replace] = images[rng.choice(keep, replace.size)]
    return out


FAMILIES: dict[str, Callable] = {
    "noise": gaussian_noise,
    "blur": gaussian_blur,
    "dimming": dimming,
    "occlusion": occlusion,
    "salt-pepper": salt_and_pepper,
    "grain": grain,
}


def disturbed_sets(images: np.ndarray, labels: np.ndarray | None = None, seed: int = 0
                   ) -> dict[tuple[str, int], np.ndarray]:
    """Every family at every level: ``{(family, level 1..3): images}``; ``class-drop`` only
    when ``labels`` are given."""
    sets = {}
    for family, levels in LEVELS.items():
        if family == "class-drop" and labels is None:
            continue
        for level, strength in enumerate(levels, 1):
            rng = np.random.default_rng([seed, level, len(family)])
            if family == "class-drop":
                sets[(family, level)] = class_drop(images, labels, int(strength), rng)
            else:
                sets[(family, level)] = FAMILIES[family](images, strength, rng)
    return sets
