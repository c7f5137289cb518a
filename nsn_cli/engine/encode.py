"""Encoding up to a layer: ``F[k]`` of images, whole or chunk by chunk from a data file, and
the chunk source a streamed layer's passes read (:class:`LayerPatches`), locally or on Dask
workers.

One loop encodes through a stack of layers (:func:`encoded_levels`); the model's
:meth:`~nsn_cli.model.NSNModel.encode`, ``train`` (between layers, for the top statistics and
for streamed layers) and the Dask workers all go through it, so a chunk's maps are the same
bits wherever they are made. The stack is anything with an ``encode_layer`` (the model): this
module does not import the model.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from nsn_cli.engine.patches import extract_patches
from nsn_cli.errors import NsnError
from nsn_cli.files import open_dataset
from nsn_cli.heap import set_heap_mode


class Encoder(Protocol):
    """A stack of trained layers: ``F[layer]`` from ``F[layer - 1]``."""

    def encode_layer(self, maps: np.ndarray, layer: int) -> np.ndarray: ...


def encoded_levels(encoder: Encoder, maps: np.ndarray, upto: int, start: int = 0) -> Iterator[np.ndarray]:
    """``F[start + 1], .., F[upto]`` of the maps ``F[start]``, one level at a time (a caller
    that wants only the last keeps no other)."""
    for level in range(start + 1, upto + 1):
        maps = encoder.encode_layer(maps, level)
        yield maps


def encode_upto(encoder: Encoder, maps: np.ndarray, upto: int) -> np.ndarray:
    """``F[upto]`` of the images ``maps`` = ``F[0]`` (``maps`` itself when ``upto`` is 0)."""
    last = collections.deque(encoded_levels(encoder, maps, upto), maxlen=1)  # keeps no level below
    return last[0] if last else maps


def read_chunk(dataset, a: int, b: int) -> np.ndarray:
    """Images a..b-1 of an open data set, float32; NaN or infinity is refused."""
    images = dataset.read(slice(a, b)).astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise NsnError(f"{dataset.path}: /images contains NaN or infinite values")
    return images


def encoded_chunks(data_path, encoder: Encoder, upto: int, chunk: int) -> Iterator[np.ndarray]:
    """``F[upto]`` of every image of the data file, ``chunk`` images at a time, in order."""
    with open_dataset(data_path) as dataset:
        n = dataset.shape[0]
        for a in range(0, n, chunk):
            yield encode_upto(encoder, read_chunk(dataset, a, min(n, a + chunk)), upto)


def encoded_maps(data_path, encoder: Encoder, upto: int, chunk: int) -> np.ndarray:
    """``F[upto]`` of every image, encoded chunk by chunk from the file into one array."""
    out, start = None, 0
    for maps in encoded_chunks(data_path, encoder, upto, chunk):
        if out is None:
            with open_dataset(data_path) as dataset:
                out = np.empty((dataset.shape[0], *maps.shape[1:]), dtype=np.float32)
        out[start : start + maps.shape[0]] = maps
        start += maps.shape[0]
    return out


@dataclass
class LayerPatches:
    """Chunk source of one layer's patches: images ``chunk`` at a time from the data file,
    encoded through the ``below`` trained layers of ``model`` (or sliced from ``maps``,
    ``F[below]`` of every image held in memory), cut into patches (all, or the chosen
    ``image_idx`` / ``position`` ones, in the same order as in memory). Picklable; sent to
    Dask workers without ``maps``."""

    path: str
    model: Encoder
    below: int
    patch: int
    stride: int
    n_images: int
    chunk: int
    image_idx: np.ndarray | None = None
    position: np.ndarray | None = None
    maps: np.ndarray | None = None

    def ranges(self) -> list[tuple[int, int]]:
        """The image ranges of the chunks, in order (ranges without a chosen patch skipped)."""
        out = []
        for a in range(0, self.n_images, self.chunk):
            b = min(self.n_images, a + self.chunk)
            if self.image_idx is None or np.searchsorted(self.image_idx, a) < np.searchsorted(self.image_idx, b):
                out.append((a, b))
        return out

    def read(self, dataset, a: int, b: int) -> np.ndarray:
        """The patches of images a..b-1 of the open ``dataset`` (None when ``maps`` are held)."""
        maps = self.maps[a:b] if self.maps is not None else encode_upto(self.model, read_chunk(dataset, a, b),
                                                                        self.below)
        return self.cut(maps, a, b)

    def cut(self, maps: np.ndarray, a: int, b: int) -> np.ndarray:
        """The patches of images a..b-1 from their maps F[below] (b - a, h, w, C)."""
        if self.image_idx is None:
            return extract_patches(maps, self.patch, self.stride)
        lo, hi = np.searchsorted(self.image_idx, [a, b])
        return extract_patches(maps, self.patch, self.stride, self.image_idx[lo:hi] - a, self.position[lo:hi])

    def load_maps(self, a: int, b: int) -> np.ndarray:
        """F[below] of images a..b-1, read and encoded from the data file (what a remote
        worker does; the same bits :meth:`read` cuts its patches from)."""
        set_heap_mode("return")  # a Dask worker: a budgeted train's process
        with open_dataset(self.path) as dataset:
            return encode_upto(self.model, read_chunk(dataset, a, b), self.below)

    def __call__(self):
        with contextlib.nullcontext() if self.maps is not None else open_dataset(self.path) as dataset:
            for a, b in self.ranges():
                yield self.read(dataset, a, b)
