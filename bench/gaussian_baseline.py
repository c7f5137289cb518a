"""A simple peer for `make score`: a full-covariance Gaussian fitted to the pixels of a data
set, sampled and clipped to [0, 1].

    python bench/gaussian_baseline.py DATA.h5 OUT.npz [N]
"""

from __future__ import annotations

import sys

import numpy as np

from nsn_cli.files import load_images


def main(data: str, out: str, n: int = 2000, seed: int = 0) -> None:
    images, _, _ = load_images(data)
    x = images.reshape(len(images), -1).astype(np.float64)
    rng = np.random.default_rng(seed)
    samples = rng.multivariate_normal(x.mean(axis=0), np.cov(x, rowvar=False), size=n, method="eigh")
    samples = np.clip(samples, 0, 1).astype(np.float32).reshape((n,) + images.shape[1:])
    np.savez_compressed(out, images=samples)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(v) for v in sys.argv[3:4]))
