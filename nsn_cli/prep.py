"""``nsn prep``: read images, resize (Pillow, anti-aliased), unify channels, optionally
channel-wise ZCA-whiten, and write a versioned HDF5 data set, chunk by chunk."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nsn_cli import config
from nsn_cli.errors import NsnError
from nsn_cli.files import check_output_path, dataset_output, output_lock
from nsn_cli.readers import ImageSource, concat_sources, open_source, read_labels
from nsn_cli.zca import ZcaAccumulator

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

ProgressFn = Callable[[int], None]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``--size``: ``"28"`` (square) or ``"64x48"`` (height x width)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match:
        raise NsnError(f"--size: '{text}' is not a size; give N (square) or HxW, e.g. 28 or 64x64")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise NsnError(f"--size: '{text}' must be at least 1x1")
    return height, width


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an ``(H, W, C)`` uint8/float image to ``channels`` (1 gray, 3 RGB), same dtype."""
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    gray = image.astype(np.float32) @ LUMA
    if image.dtype == np.uint8:
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    return gray[..., None]


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize an ``(H, W, C)`` image to ``size = (height, width)`` with Pillow (LANCZOS,
    anti-aliased when shrinking); return float32 in [0, 1]."""
    from PIL import Image

    if size is None or image.shape[:2] == size:
        out = image.astype(np.float32)
        return out / 255.0 if image.dtype == np.uint8 else out
    height, width = size
    if image.dtype == np.uint8:
        mode = "L" if image.shape[-1] == 1 else "RGB"
        pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode)
        out = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
        out = out.reshape(height, width, -1) / 255.0
        return out
    planes = [
        np.asarray(Image.fromarray(image[..., c], mode="F").resize((width, height), Image.Resampling.LANCZOS))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def majority_channels(source: ImageSource) -> int:
    """1 if most images are gray, else 3 (ties go to RGB, which loses nothing)."""
    n = len(source)
    step = max(1, n // 2000)  # a large folder: decide from an even sample of headers
    sample = range(0, n, step)
    rgb = sum(source.channels(i) == 3 for i in sample)
    return 3 if rgb * 2 >= len(sample) else 1


def crop_source(source: ImageSource, size: tuple[int, int], per_image: int, seed: int) -> ImageSource:
    """``per_image`` random ``size`` crops of every image (seeded), e.g. to train a texture model."""
    height, width = size
    rng = np.random.default_rng(seed)
    corners = []
    for i in range(len(source)):
        image = source.read(i, i + 1)[0]
        h, w = image.shape[:2]
        if h < height or w < width:
            raise NsnError(f"--crops: image {i} is {h}x{w}, smaller than the {height}x{width} crop")
        corners.append(np.stack([rng.integers(0, h - height + 1, per_image),
                                 rng.integers(0, w - width + 1, per_image)], axis=1))

    def read(start: int, stop: int) -> list[np.ndarray]:
        out = []
        for j in range(start, stop):
            i, k = divmod(j, per_image)
            top, left = corners[i][k]
            out.append(source.read(i, i + 1)[0][top : top + height, left : left + width])
        return out

    return ImageSource(
        description=f"{per_image} random {height}x{width} crops of each of {source.description}",
        count=len(source) * per_image,
        read=read,
        channels=lambda j: source.channels(j // per_image),
        notes=list(source.notes),
    )


@dataclass
class PrepResult:
    path: Path
    shape: tuple[int, int, int, int]
    labels: bool
    zca: bool
    notes: list[str]


def prep(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    zca: bool = False,
    zca_eps: float = config.ZCA_EPS,
    labels_path: str | os.PathLike | None = None,
    limit: int | None = None,
    force: bool = False,
    chunk: int = config.PREP_CHUNK,
    crops: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], ProgressFn] | None = None,
) -> PrepResult:
    """Build an nsn data set from ``inputs`` and write it atomically to ``output``.

    ``channels`` is 1 (gray), 3 (RGB) or None (the majority of the inputs). ``progress``, if
    given, is called as ``progress(total, passes)`` and returns a function advanced by the
    number of images done. ``crops`` takes that many seeded random crops of ``size`` from
    every input instead of resizing it.
    """
    if not inputs:
        raise NsnError("prep: give at least one input (folder, image, IDX, .npy/.npz or .h5)")
    if zca_eps <= 0 or not np.isfinite(zca_eps):
        raise NsnError(f"--zca-eps must be a positive number, got {zca_eps}")
    if limit is not None and limit < 1:
        raise NsnError(f"--limit must be at least 1, got {limit}")
    if channels not in (None, 1, 3):
        raise NsnError(f"channels must be 1 or 3, got {channels}")
    output = check_output_path(output, force, [*inputs, *([labels_path] if labels_path else [])])
    with output_lock(output):  # a second writer of the same file is refused
        source = concat_sources([open_source(p) for p in inputs])
        if crops is not None:
            if crops < 1:
                raise NsnError(f"--crops must be at least 1, got {crops}")
            if size is None:
                raise NsnError("--crops needs --size (the crop size)")
            source = crop_source(source, size, crops, seed)
        notes = list(source.notes)
        labels = source.labels
        if labels_path is not None:
            labels = read_labels(labels_path)
        count = len(source) if limit is None else min(limit, len(source))
        if labels is not None:
            if len(labels) < count or (limit is None and len(labels) != len(source)):
                raise NsnError(f"labels: {len(labels)} labels for {len(source)} images")
            labels = labels[:count]
        if channels is None:
            channels = majority_channels(source)
        if size is None:
            first = source.read(0, 1)[0]
            size = first.shape[:2]
            notes.append(f"no --size given: keeping {size[0]}x{size[1]}")
        height, width = size
        if zca and height * width > 128 * 128:
            raise NsnError(f"--zca on {height}x{width} images needs {height * width}^2 covariances; use --size 128 or less")
        advance = progress(count, 2 if zca else 1) if progress else (lambda n: None)

        with dataset_output(output, count, source.description) as out:
            acc = ZcaAccumulator.empty(height * width, channels) if zca else None
            for start in range(0, count, chunk):
                stop = min(count, start + chunk)
                raw = source.read(start, stop)
                images = np.stack([resize_image(to_channels(im, channels), size) for im in raw])
                if images.shape[1:3] != (height, width):
                    raise NsnError(
                        f"images differ in size ({images.shape[1]}x{images.shape[2]} vs {height}x{width}); give --size"
                    )
                out.write(start, images)
                if acc is not None:
                    acc.add(images)
                advance(stop - start)
            if labels is not None:
                out.set_labels(labels)
            if acc is not None:
                fitted = acc.finish(zca_eps)
                for start in range(0, count, chunk):
                    stop = min(count, start + chunk)
                    out.write(start, fitted.apply(out.images[start:stop]))
                    advance(stop - start)
                out.set_zca(fitted)
    return PrepResult(output, (count, height, width, channels), labels is not None, zca, notes)
