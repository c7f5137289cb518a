"""``nsn sample``: NSN-Gen from any layer, with the paper's priors and controls (section 6.3).

Priors for the top vector ``F[k]`` (1 x 1 x N_k):

- ``normal``: ``z ~ N(0, 1)`` (the paper);
- ``counts``: a filter drawn in proportion to its training count, as a one-hot vector;
- ``mix`` (top layer only, needs top statistics): a filter drawn by count, then ``F[L-1]`` is a
  random convex combination of stored member maps of that filter (see :mod:`nsn_cli.top`);
- ``pca`` (same): ``F[L-1]`` from the filter's Gaussian over its leading principal components;
- ``knn`` (same): a member mixed with one of its nearest members, across top filters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nsn_cli.engine.generate import normal_draws, uniform_draws
from nsn_cli.errors import NsnError
from nsn_cli.model import DecodeParams, NSNModel

PRIORS = ("normal", "counts", "mix", "pca", "knn")
#: Random streams: separate for the prior draw and the decoding of each layer.
PRIOR_STREAM = 1 << 20
#: Samples decoded per batch; the same seed gives the same images whatever this is. Small
#: enough that a batch's maps stay in cache and their buffers are reused from the heap, not
#: mapped afresh (one-thread CPU for 8,192 samples: 1.6 s at 256, 2.1 s at 4,096).
BATCH = 256


def _one_hot(index: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((index.size, 1, 1, width), dtype=np.float32)
    out[np.arange(index.size), 0, 0, index] = 1.0
    return out


def pick_by_counts(counts: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Filter indices drawn in proportion to ``counts`` by inverse CDF of ``uniforms``."""
    cdf = np.cumsum(counts, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf / cdf[-1], uniforms, side="right"), counts.size - 1)


def default_prior(model: NSNModel, layer: int) -> str:
    """``mix`` where it applies (best FID and recall of the priors measured), else ``counts``."""
    return "mix" if model.top is not None and model.complete and layer == len(model.arch) else "counts"


def top_vectors(model: NSNModel, layer: int, prior: str, seed: int, first: int, count: int) -> np.ndarray:
    """Top maps ``F[layer]`` (count, 1, 1, N_layer) for the ``normal`` and ``counts`` priors."""
    width = model.layers[layer - 1].filters
    if prior == "normal":
        z = normal_draws(seed, first, count, width, PRIOR_STREAM)
        return z.astype(np.float32).reshape(count, 1, 1, width)
    if prior == "counts":
        u = uniform_draws(seed, first, count, 1, PRIOR_STREAM)[:, 0]
        return _one_hot(pick_by_counts(model.layers[layer - 1].counts, u), width)
    raise NsnError(f"--prior {prior} is not a top-vector prior")


def generate(
    model: NSNModel,
    n: int,
    *,
    layer: int | None = None,
    prior: str | None = None,
    params: DecodeParams | None = None,
    seed: int = 0,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
    sink: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """``n`` samples (n, H, W, C) in [0, 1] generated from ``layer`` (default: the top).

    From a hidden layer ``k`` the result is a patch of that layer's receptive field.
    With ``sink``, each batch goes to ``sink(first_index, images)`` instead of being kept, so
    any ``n`` needs memory for one batch only, and None is returned.
    ``prior=None`` picks the measured best: ``mix`` for the top layer of a model with top
    statistics (bench/bench_quality.py), else ``counts``.
    """
    params = (params or DecodeParams.for_sampling()).validate()
    layer = len(model.layers) if layer is None else layer
    if prior is None:
        prior = default_prior(model, layer)
    model.check_layer(layer)
    if n < 1:
        raise NsnError(f"-n must be at least 1, got {n}")
    if prior not in PRIORS:
        raise NsnError(f"--prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    out = None
    for first in range(0, n, batch):
        count = min(batch, n - first)
        if prior in ("mix", "pca", "knn"):
            from nsn_cli.top import sample_top_maps

            if layer != len(model.arch) or not model.complete:
                raise NsnError(f"--prior {prior} samples the top layer of a complete model; use normal or counts for --layer {layer}")
            maps = sample_top_maps(model, prior, seed, first, count)
            start = layer - 1
        else:
            maps = top_vectors(model, layer, prior, seed, first, count)
            start = layer
        images = model.finish_images(model.decode(maps, start, params, seed=seed, first_sample=first))
        if sink is not None:
            sink(first, images)
            if progress is not None:
                progress(count)
            continue
        if out is None:
            out = np.empty((n,) + images.shape[1:], dtype=np.float32)
        out[first : first + count] = images
        if progress is not None:
            progress(count)
    return out


def from_top(model: NSNModel, vectors: np.ndarray, params: DecodeParams, seed: int) -> np.ndarray:
    """Decode given top vectors (m, N_L) to images."""
    maps = vectors.astype(np.float32).reshape(vectors.shape[0], 1, 1, -1)
    return model.finish_images(model.decode(maps, len(model.layers), params, seed=seed))


def check_filter(model: NSNModel, index: int) -> None:
    top = model.layers[-1].filters
    if not 0 <= index < top:
        raise NsnError(f"filter {index} does not exist: the top layer has filters 0..{top - 1}")


def one_filter(model: NSNModel, index: int, n: int, params: DecodeParams, seed: int) -> np.ndarray:
    """``n`` samples from top filter ``index`` (one-hot top vector)."""
    check_filter(model, index)
    vectors = np.zeros((n, model.layers[-1].filters), dtype=np.float32)
    vectors[:, index] = 1.0
    return from_top(model, vectors, params, seed)


def interpolate(model: NSNModel, a: int, b: int, steps: int, params: DecodeParams, seed: int) -> np.ndarray:
    """Images along the straight line between the one-hot vectors of filters ``a`` and ``b``."""
    check_filter(model, a)
    check_filter(model, b)
    if steps < 2:
        raise NsnError(f"--steps must be at least 2, got {steps}")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    vectors = np.zeros((steps, model.layers[-1].filters), dtype=np.float32)
    vectors[:, a] += 1.0 - t[:, 0]
    vectors[:, b] += t[:, 0]
    # every step shares the seed's first stream, so the strip changes only through the vector
    maps = vectors.reshape(vectors.shape[0], 1, 1, -1)
    out = [model.finish_images(model.decode(maps[i : i + 1], len(model.layers), params, seed=seed)) for i in range(len(maps))]
    return np.concatenate(out)


def parse_arithmetic(text: str) -> list[tuple[int, int]]:
    """``"a+b-c"`` -> [(+1, a), (+1, b), (-1, c)]."""
    compact = text.replace(" ", "")
    if not re.fullmatch(r"[+-]?\d+([+-]\d+)*", compact):
        raise NsnError(f"--arithmetic: '{text}' must look like 'a+b-c' with filter numbers")
    terms = re.findall(r"([+-]?)(\d+)", compact)
    return [(-1 if sign == "-" else 1, int(index)) for sign, index in terms]


def arithmetic(model: NSNModel, text: str, n: int, params: DecodeParams, seed: int) -> np.ndarray:
    """Paper section 6.3: generate ``F[L-1]`` from each filter's one-hot vector, combine the
    maps with the signs given, clip to the layer's output range, decode the result.

    Returns ``(terms + 1) * n`` images: each term's own samples, then the combined ones."""
    terms = parse_arithmetic(text)
    top = len(model.layers)
    rows, combined = [], None
    for sign, index in terms:
        check_filter(model, index)
        vectors = np.zeros((n, 1, 1, model.layers[-1].filters), dtype=np.float32)
        vectors[..., index] = 1.0
        below = model.decode(vectors, top, params, seed=seed, to_layer=top - 1)
        rows.append(model.finish_images(model.decode(below, top - 1, params, seed=seed)))
        combined = sign * below if combined is None else combined + sign * below
    combined = np.clip(combined, 0.0, 1.0)  # both activations lie in [0, 1]
    rows.append(model.finish_images(model.decode(combined, top - 1, params, seed=seed)))
    return np.concatenate(rows)


# --------------------------------------------------------------------------- output


@dataclass
class Written:
    path: Path
    kind: str
    count: int


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one uint8 image with ``pad`` pixel gaps."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 0.5, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    grid = np.rint(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


def write_images(images: np.ndarray, output: str | os.PathLike, *, columns: int | None = None,
                 force: bool = False) -> Written:
    """Write samples: ``.png``/``.jpg`` grid, ``.npz``/``.npy``/``.h5`` arrays, or a folder of PNGs
    (a path ending in ``/`` or an existing folder)."""
    import imageio.v3 as iio

    from nsn_cli.files import atomic_path, check_output_path

    text = os.fspath(output)
    output = Path(output)
    if text.endswith(("/", os.sep)) or output.is_dir():
        output.mkdir(parents=True, exist_ok=True)
        width = len(str(len(images) - 1))
        for i, image in enumerate(images):
            target = output / f"{i:0{width}d}.png"
            if target.exists() and not force:
                raise NsnError(f"{target}: already exists (use --force to overwrite)")
            iio.imwrite(target, image_grid(image[None], 1, pad=0))
        return Written(output, "folder of PNGs", len(images))
    check_output_path(output, force)
    suffix = output.suffix.lower()
    with atomic_path(output) as temp:
        if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
            # a single image is written as it is, a batch as a grid with 1-pixel gaps
            iio.imwrite(temp, image_grid(images, columns, pad=0 if len(images) == 1 else 1), extension=suffix)
            kind = "grid"
        elif suffix == ".npz":
            with open(temp, "wb") as handle:
                np.savez_compressed(handle, images=images)
            kind = "array (npz)"
        elif suffix == ".npy":
            with open(temp, "wb") as handle:
                np.save(handle, images)
            kind = "array (npy)"
        elif suffix in (".h5", ".hdf5"):
            import h5py

            from nsn_cli.files import DATASET_TYPE, stamp

            with h5py.File(temp, "w") as handle:
                stamp(handle, DATASET_TYPE, "nsn sample")
                handle.create_dataset("images", data=images, compression="gzip", compression_opts=4)
            kind = "nsn data set"
        else:
            raise NsnError(f"{output}: unknown output kind; use .png, .npz, .npy, .h5, or a folder ending in /")
    return Written(output, kind, len(images))


def stream_to_npy(output: str | os.PathLike, n: int, force: bool, generate_into: Callable) -> Written:
    """Write ``n`` samples to a ``.npy`` file batch by batch (atomic): the array is never
    held whole in memory, and each batch is written while it is still in cache.

    ``generate_into(sink)`` must call ``sink(first_index, images)`` for consecutive batches."""
    from numpy.lib.format import open_memmap

    from nsn_cli.files import atomic_path, check_output_path

    output = check_output_path(output, force)
    with atomic_path(output) as temp:
        state: dict = {}

        def sink(first: int, images: np.ndarray) -> None:
            if "data" not in state:
                state["data"] = open_memmap(temp, mode="w+", dtype=np.float32, shape=(n,) + images.shape[1:])
            state["data"][first : first + len(images)] = images

        generate_into(sink)
        state["data"].flush()
        del state["data"]  # unmapped before the rename
    return Written(output, "array (npy)", n)


def stream_to_h5(output: str | os.PathLike, n: int, force: bool, generate_into: Callable) -> Written:
    """Write ``n`` samples to an nsn data set file batch by batch (bounded memory, atomic).

    ``generate_into(sink)`` must call ``sink(first_index, images)`` for consecutive batches.
    """
    import h5py

    from nsn_cli.files import DATASET_TYPE, atomic_path, check_output_path, stamp

    output = check_output_path(output, force)
    with atomic_path(output) as temp, h5py.File(temp, "w") as handle:
        stamp(handle, DATASET_TYPE, "nsn sample")
        state: dict = {}

        def sink(first: int, images: np.ndarray) -> None:
            if "data" not in state:
                state["data"] = handle.create_dataset(
                    "images", shape=(n,) + images.shape[1:], dtype=np.float32,
                    chunks=(min(n, 256),) + images.shape[1:], compression="gzip", compression_opts=4)
            state["data"][first : first + len(images)] = images

        generate_into(sink)
    return Written(output, "nsn data set (streamed)", n)
