"""Readers for every input ``prep`` and ``score`` accept, in one module.

A reader returns an :class:`ImageSource`: a sized, sliceable collection of images that are read
lazily, chunk by chunk, so that a folder of 200,000 images needs bounded memory. Each image
comes out as an ``(H, W, C)`` array, ``C`` in {1, 3}, either ``uint8`` (0..255) or ``float32``
(0..1), exactly as stored; resizing and channel conversion are done by :mod:`nsn_cli.prep`.

Supported inputs: IDX files (MNIST / Fashion-MNIST, ``.gz`` or raw), a folder of images
(PNG/JPEG/BMP/TIFF, recursive, sorted), single image files, ``.npy``/``.npz`` arrays of shape
``(N, H, W)`` or ``(N, H, W, C)``, and existing nsn data set files.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nsn_cli.errors import NsnError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


class SkippedFilesWarning(UserWarning):
    """Files in an image folder that are not images and were skipped."""


@dataclass
class ImageSource:
    """A lazily read, ordered collection of images.

    ``read(start, stop)`` returns a list of ``(H, W, C)`` arrays (``uint8`` or ``float32``);
    ``channels(i)`` tells the stored channel count of image ``i`` without decoding pixels.
    """

    description: str
    count: int
    read: Callable[[int, int], list[np.ndarray]]
    channels: Callable[[int], int]
    labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.count


# --------------------------------------------------------------------------- IDX


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise NsnError(f"{path}: cannot read ({exc})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes; return its array.

    Checks the magic number (``0x00000803`` images, ``0x00000801`` labels) and that the data
    is exactly as long as the header says.
    """
    path = Path(path)
    raw = _open_maybe_gzip(path)
    if len(raw) < 8:
        raise NsnError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise NsnError(
            f"{path}: not an IDX file of bytes (magic number 0x{magic:08x}, expected "
            f"0x{IDX_IMAGES_MAGIC:08x} for images or 0x{IDX_LABELS_MAGIC:08x} for labels)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NsnError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    have = len(raw) - header
    if have != expected:
        raise NsnError(
            f"{path}: IDX data is truncated or padded: header says {expected} bytes "
            f"for shape {shape}, file has {have}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _sibling_idx_labels(path: Path) -> Path | None:
    name = path.name
    for images_tag, labels_tag in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if images_tag in name:
            candidate = path.with_name(name.replace(images_tag, labels_tag))
            if candidate.exists():
                return candidate
    return None


def _array_source(description: str, images, labels: np.ndarray | None) -> ImageSource:
    """A source over an (N, H, W[, C]) array checked by :func:`_check_array`; ``images`` may be
    lazy (a memory map, :class:`_DatasetImages`): each read converts only its own slice."""
    channels = 1 if images.ndim == 3 else min(images.shape[-1], 3)

    def read(start: int, stop: int) -> list[np.ndarray]:
        block = np.asarray(images[start:stop])
        block = block[..., None] if block.ndim == 3 else block[..., :3]  # a grey axis; alpha dropped
        return list(block if block.dtype == np.uint8 else block.astype(np.float32, copy=False))

    return ImageSource(
        description=description,
        count=images.shape[0],
        read=read,
        channels=lambda i: channels,
        labels=labels,
    )


def _idx_source(path: Path) -> ImageSource:
    images = read_idx(path)
    if images.ndim != 3:
        raise NsnError(f"{path}: IDX images must have 3 dimensions (N, H, W), found {images.ndim}")
    labels = None
    notes = []
    sibling = _sibling_idx_labels(path)
    if sibling is not None:
        labels = read_labels(sibling)
        notes.append(f"labels taken from {sibling.name}")
    source = _array_source(f"IDX {path.name}", images, labels)
    source.notes.extend(notes)
    return source


# --------------------------------------------------------------------------- arrays


#: Images per block when checking a large (possibly memory-mapped) float array.
CHECK_BLOCK = 4096


def _check_array(path: Path, images) -> None:
    """Refuse an image array of the wrong shape or dtype, with NaN, or float pixels outside
    [0, 1]; float arrays are scanned block by block so a memory map stays unread."""
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise NsnError(
            f"{path}: unsupported array shape {images.shape}; expected (N, H, W) or "
            "(N, H, W, C) with C in 1, 3 or 4"
        )
    if images.shape[0] == 0:
        raise NsnError(f"{path}: the array holds no images")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise NsnError(f"{path}: unsupported dtype {images.dtype}; use uint8 or float")
    lo, hi = np.inf, -np.inf
    for start in range(0, images.shape[0], CHECK_BLOCK):
        block = np.asarray(images[start : start + CHECK_BLOCK])
        if not np.isfinite(block).all():
            raise NsnError(f"{path}: the array contains NaN or infinite values")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if lo < 0.0 or hi > 1.0:
        raise NsnError(
            f"{path}: float pixels must lie in [0, 1], found [{lo:.3g}, {hi:.3g}] "
            "(divide 0..255 data by 255, or save it as uint8)"
        )


def _numpy_source(path: Path) -> ImageSource:
    try:
        # a .npy is memory-mapped: a sample file larger than memory is read slice by slice
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except EOFError:
        raise NsnError(f"{path}: empty or cut short, not a .npy/.npz file") from None
    except (OSError, ValueError) as exc:
        raise NsnError(f"{path}: not a readable .npy/.npz file ({exc})") from exc
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            image_key = next((k for k in ("images", "x", "X", "arr_0") if k in keys), None)
            if image_key is None:
                raise NsnError(f"{path}: no 'images' (or 'x', 'arr_0') array; keys are {keys}")
            images = loaded[image_key]
            label_key = next((k for k in ("labels", "y") if k in keys), None)
            if label_key is not None:
                labels = np.asarray(loaded[label_key]).astype(np.int64).ravel()
    else:
        images = loaded
    _check_array(path, images)
    if labels is not None and len(labels) != images.shape[0]:
        raise NsnError(f"{path}: {len(labels)} labels for {images.shape[0]} images")
    return _array_source(f"array {path.name}", images, labels)


# --------------------------------------------------------------------------- image files


def _pil():
    from PIL import Image

    return Image


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to ``(H, W, C)`` uint8 with ``C`` in {1, 3} (alpha dropped)."""
    Image = _pil()
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("1", "L", "I", "I;16", "F", "LA"):
                image = image.convert("L")
            else:
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise NsnError(f"{path}: no such file") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NsnError(f"{path}: not a readable image ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array


def image_channels(path: Path) -> int:
    """The channel count an image file will be read with, from its header only."""
    Image = _pil()
    try:
        with Image.open(path) as image:
            return 1 if image.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
    except (OSError, ValueError) as exc:
        raise NsnError(f"{path}: not a readable image ({exc})") from exc


def _files_source(description: str, files: Sequence[Path], notes: list[str]) -> ImageSource:
    files = list(files)
    cache: dict[int, int] = {}

    def channels(i: int) -> int:
        if i not in cache:
            cache[i] = image_channels(files[i])
        return cache[i]

    return ImageSource(
        description=description,
        count=len(files),
        read=lambda start, stop: [load_image(f) for f in files[start:stop]],
        channels=channels,
        notes=notes,
    )


def _folder_source(path: Path) -> ImageSource:
    everything = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in everything if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not everything:
        raise NsnError(f"{path}: the folder is empty")
    if not images:
        raise NsnError(
            f"{path}: no images in the folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    notes = []
    if others:
        # Skip, not fail: folders of real data sets carry READMEs, label lists and the like.
        shown = ", ".join(p.name for p in others[:3]) + (" ..." if len(others) > 3 else "")
        message = f"skipped {len(others)} non-image file(s) in {path}: {shown}"
        warnings.warn(message, SkippedFilesWarning, stacklevel=2)
        notes.append(message)
    return _files_source(f"folder {path} ({len(images)} images)", images, notes)


# --------------------------------------------------------------------------- labels


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read integer labels from an IDX labels file, ``.npy``, or a text file (one per line)."""
    path = Path(path)
    if not path.exists():
        raise NsnError(f"{path}: no such labels file")
    name = path.name.lower()
    if "idx" in name or name.endswith("ubyte") or name.endswith("ubyte.gz"):
        labels = read_idx(path)
        if labels.ndim != 1:
            raise NsnError(f"{path}: IDX labels must be 1-D, found shape {labels.shape}")
        return labels.astype(np.int64)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False).astype(np.int64).ravel()
        except (OSError, ValueError, EOFError) as exc:
            raise NsnError(f"{path}: not a readable labels array ({exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": refused below
            labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
        if labels.size == 0:
            raise NsnError(f"{path}: the labels file is empty")
        return labels
    except ValueError as exc:
        raise NsnError(f"{path}: labels text must hold one integer per line ({exc})") from exc


# --------------------------------------------------------------------------- dispatch


@dataclass
class _DatasetImages:
    """The /images of an nsn data set, read slice by slice (the file reopened for each)."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    ndim: int = 4

    def __getitem__(self, rows: slice) -> np.ndarray:
        from nsn_cli.files import open_dataset

        with open_dataset(self.path) as dataset:
            return dataset.read(rows)


def _dataset_source(path: Path) -> ImageSource:
    from nsn_cli.files import open_dataset

    with open_dataset(path) as dataset:
        if dataset.zca is not None:
            raise NsnError(
                f"{path}: this data set is ZCA-whitened; prep from the original images instead"
            )
        images = _DatasetImages(path, tuple(dataset.images.shape), dataset.images.dtype)
        labels = dataset.labels
    _check_array(path, images)
    return _array_source(f"nsn data set {path.name}", images, labels)


def open_source(path: str | os.PathLike) -> ImageSource:
    """Open any supported input by its kind (folder, IDX, array, data set, image file)."""
    path = Path(path)
    if not path.exists():
        raise NsnError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder_source(path)
    name = path.name.lower()
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        return _idx_source(path)
    if path.suffix.lower() in (".npy", ".npz"):
        return _numpy_source(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return _dataset_source(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _files_source(f"image {path.name}", [path], [])
    raise NsnError(
        f"{path}: unknown input kind; give a folder of images, an image file, an IDX file, "
        ".npy/.npz, or an nsn .h5 data set"
    )


def concat_sources(sources: Sequence[ImageSource]) -> ImageSource:
    """Chain several sources into one, in order; labels kept only if every source has them."""
    if len(sources) == 1:
        return sources[0]
    offsets = np.cumsum([0] + [len(s) for s in sources])

    def locate(i: int) -> tuple[int, int]:
        k = int(np.searchsorted(offsets, i, side="right") - 1)
        return k, i - int(offsets[k])

    def read(start: int, stop: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for k, source in enumerate(sources):
            lo, hi = max(start, offsets[k]), min(stop, offsets[k + 1])
            if lo < hi:
                out.extend(source.read(int(lo - offsets[k]), int(hi - offsets[k])))
        return out

    labels = None
    if all(s.labels is not None for s in sources):
        labels = np.concatenate([s.labels for s in sources])
    return ImageSource(
        description=" + ".join(s.description for s in sources),
        count=int(offsets[-1]),
        read=read,
        channels=lambda i: sources[locate(i)[0]].channels(locate(i)[1]),
        labels=labels,
        notes=[n for s in sources for n in s.notes],
    )
