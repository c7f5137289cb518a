"""A synthetic digits data set K times the bundled size, for the scaling benchmark.

``python bench/make_synthetic.py --scale K OUT.h5`` writes ``K * 4000`` images: copy ``k`` (1..K)
is every bundled digit moved by a random integer shift in [-2, 2] px and a small elastic
deformation (Simard et al. 2003: a uniform random displacement field smoothed by a Gaussian of
``sigma`` px and scaled by ``alpha`` px), drawn from a generator seeded with ``k``, bilinear
(order 1), clipped to [0, 1]. Labels are the bundled labels repeated. Every copy is drawn the
same way, so the data sets of every scale are samples of one distribution (the K-times set
holds the smaller ones as its first copies): filter counts can be compared across scales.

The file is written chunk by chunk straight into the layout ``nsn prep`` writes (root stamp,
``/images`` float32 chunked gzip-4 with shuffle, ``/labels`` int64), because ``nsn prep``
would build the whole output array in memory (200 MB of float32 at 16x); the result is then
checked with the real CLI (``nsn info --json``), so a layout that nsn does not accept fails here, not in the benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import bundled_digits  # noqa: E402
from scipy.ndimage import gaussian_filter, map_coordinates

from nsn_cli.files import dataset_output

#: Images deformed per step: bounds the float64 displacement fields (~3 x 12.5 MB at 1,000).
CHUNK = 1000
NSN = Path(sys.executable).with_name("nsn")
#: Displacement scale, px. Simard et al. use 34 with sigma 4; on these digits that tears thin
#: strokes apart (max ~6 px), while 16 (field std ~0.6 px, max ~3 px) keeps every digit legible.
ALPHA = 16.0


def deform(images: np.ndarray, rng: np.random.Generator, shift: int, sigma: float, alpha: float) -> np.ndarray:
    """Shift and elastically deform ``(n, H, W)`` images; return float32 in [0, 1].

    One ``map_coordinates`` call does both: the integer shift is added to the smoothed
    displacement field, so the images are resampled once (no double blurring).
    """
    n, h, w = images.shape
    offsets = rng.integers(-shift, shift + 1, size=(n, 2, 1, 1)).astype(np.float64)
    # sigma 0 along the image axis: each image gets its own independent field
    field = gaussian_filter(rng.uniform(-1.0, 1.0, size=(n, 2, h, w)), sigma=(0, 0, sigma, sigma), mode="constant")
    field = alpha * field + offsets
    index, rows, cols = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([index, rows + field[:, 0], cols + field[:, 1]]).astype(np.float64)
    # the image index is an integer coordinate, so order-1 interpolation never mixes two digits
    out = map_coordinates(images, coords, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def make(scale: int, output: Path, sigma: float = 4.0, alpha: float = ALPHA, shift: int = 2) -> dict:
    """Write the ``scale``-times data set to ``output`` (atomically); return ``nsn info --json``."""
    if scale < 1:
        raise SystemExit(f"--scale must be at least 1, got {scale}")
    images, labels = bundled_digits()
    base = images[..., 0]
    n, h, w, c = images.shape
    count = scale * n
    output.parent.mkdir(parents=True, exist_ok=True)
    source = (f"bench/make_synthetic.py: {n} bundled digits x{scale} (every copy: shift +-{shift} px, "
              f"elastic sigma {sigma:g} alpha {alpha:g}, seed = copy index 1..{scale})")
    with dataset_output(output, count, source) as out:
        for copy in range(scale):
            rng = np.random.default_rng(copy + 1)
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                out.write(copy * n + start, deform(base[start:stop], rng, shift, sigma, alpha)[..., None])
        out.set_labels(np.tile(labels.astype(np.int64), scale))
    checked = subprocess.run([str(NSN), "info", "--json", str(output)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise SystemExit(f"{output}: nsn info refused the written data set: {checked.stderr.strip()}")
    return json.loads(checked.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the nsn data set to write (.h5)")
    parser.add_argument("--scale", type=int, required=True, help="copies of the 4,000 bundled digits")
    parser.add_argument("--sigma", type=float, default=4.0, help="smoothing of the displacement field, px")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="scale of the displacement field, px")
    parser.add_argument("--shift", type=int, default=2, help="largest integer shift, px")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = make(args.scale, args.output, args.sigma, args.alpha, args.shift)
    print(f"{args.output}: "
          f"{info['shape']}, pixels {info['pixel range']}, labels {info['labels']} "
          f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
