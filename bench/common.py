"""Shared set-up of the benchmarks: the bundled digits as arrays and as nsn data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsn_cli import files
from nsn_cli.readers import read_idx, read_labels

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 4,000 bundled digits (N, 28, 28, 1) float32 in [0, 1] and their labels."""
    images = read_idx(ROOT / "data/mnist-4k-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255
    return images, read_labels(ROOT / "data/mnist-4k-labels-idx1-ubyte.gz")


def write_dataset(images: np.ndarray, name: str) -> Path:
    """Write images as an nsn data set under bench/results/; return its path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    files.write_dataset(path, images, "bench")
    return path
