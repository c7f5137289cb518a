"""Versioned HDF5 files (data sets and models) and atomic writes.

Every file carries ``encoding-type`` and ``encoding-version`` attributes at its root; readers
check both and name the failing HDF5 key when something is wrong. Files are written to a
temporary name in the target folder and renamed into place, so an interrupted job never
leaves a half-written file, and an existing output is kept unless ``force`` is given.

Data set layout (``encoding-type = "nsn-dataset"``, version 1)::

    /images            (N, H, W, C) float32, chunked, gzip; [0, 1], or ZCA-whitened
    /labels            (N,) int64, optional
    /zca/mean          (C, H*W) float64, optional (with /zca/whiten, /zca/unwhiten)
    /zca/whiten        (C, H*W, H*W) float64; attribute ``eps``
    /zca/unwhiten      (C, H*W, H*W) float64

Model layout (``encoding-type = "nsn-model"``, version 1): see :mod:`nsn_cli.model`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from nsn_cli import __version__
from nsn_cli.errors import NsnError

DATASET_TYPE = "nsn-dataset"
MODEL_TYPE = "nsn-model"
ENCODING_VERSION = "1"
SUPPORTED_VERSIONS = {"1"}


def now_iso() -> str:
    """The current time as an ISO-8601 string (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an output whose folder is missing, or which exists without ``force``."""
    path = Path(path)
    if not path.parent.exists() and str(path.parent) not in ("", "."):
        raise NsnError(f"{path}: the folder {path.parent} does not exist")
    if path.exists() and not force:
        raise NsnError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise NsnError(f"{path}: is a folder, expected a file name")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def stamp(handle: h5py.File, encoding_type: str, source: str) -> None:
    """Write the root attributes every nsn file carries."""
    handle.attrs["encoding-type"] = encoding_type
    handle.attrs["encoding-version"] = ENCODING_VERSION
    handle.attrs["nsn-version"] = __version__
    handle.attrs["created"] = now_iso()
    handle.attrs["source"] = source


def _attr_str(handle: h5py.File, key: str) -> str | None:
    value = handle.attrs.get(key)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def open_nsn_file(path: str | os.PathLike, expected_type: str) -> Iterator[h5py.File]:
    """Open an nsn HDF5 file read-only after checking its type and version."""
    path = Path(path)
    if not path.exists():
        raise NsnError(f"{path}: no such file")
    if path.is_dir():
        raise NsnError(f"{path}: is a folder, expected an nsn {expected_type.split('-')[1]} file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise NsnError(f"{path}: not an HDF5 file (or corrupt): {exc}") from exc
    with handle:
        found = _attr_str(handle, "encoding-type")
        if found != expected_type:
            what = f"'{found}'" if found else "no encoding-type attribute"
            raise NsnError(f"{path}: not an {expected_type} file (root attribute encoding-type: {what})")
        version = _attr_str(handle, "encoding-version")
        if version not in SUPPORTED_VERSIONS:
            raise NsnError(
                f"{path}: encoding-version '{version}' is not supported by nsn {__version__} "
                f"(supported: {', '.join(sorted(SUPPORTED_VERSIONS))})"
            )
        yield handle


def file_kind(path: str | os.PathLike) -> str:
    """The ``encoding-type`` of an nsn file, or an error saying it is not one."""
    path = Path(path)
    if not path.exists():
        raise NsnError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            kind = _attr_str(handle, "encoding-type")
    except OSError as exc:
        raise NsnError(f"{path}: not an HDF5 file (or corrupt): {exc}") from exc
    if kind not in (DATASET_TYPE, MODEL_TYPE):
        raise NsnError(f"{path}: not an nsn file (root attribute encoding-type: {kind!r})")
    return kind


# --------------------------------------------------------------------------- ZCA


@dataclass
class Zca:
    """Channel-wise ZCA: per channel, ``white = (x - mean) @ whiten``; ``x = white @ unwhiten + mean``.

    ``mean`` has shape ``(C, H*W)``; ``whiten`` and ``unwhiten`` ``(C, H*W, H*W)`` (symmetric).
    """

    mean: np.ndarray
    whiten: np.ndarray
    unwhiten: np.ndarray
    eps: float

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Whiten ``(N, H, W, C)`` images."""
        return self._transform(images, self.whiten, subtract=True)

    def invert(self, images: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` on ``(N, H, W, C)`` images."""
        return self._transform(images, self.unwhiten, subtract=False)

    def _transform(self, images: np.ndarray, matrix: np.ndarray, subtract: bool) -> np.ndarray:
        n, h, w, c = images.shape
        if c != self.mean.shape[0] or h * w != self.mean.shape[1]:
            raise NsnError(
                f"ZCA was fitted on {self.mean.shape[0]}-channel images of {self.mean.shape[1]} "
                f"pixels; these are {h}x{w}x{c} (a whitened model needs inputs of its training size)"
            )
        out = np.empty((n, h, w, c), dtype=np.float32)
        for ch in range(c):
            x = images[..., ch].reshape(n, h * w).astype(np.float64)
            if subtract:
                y = (x - self.mean[ch]) @ matrix[ch]
            else:
                y = x @ matrix[ch] + self.mean[ch]
            out[..., ch] = y.reshape(n, h, w)
        return out

    def write(self, group: h5py.Group) -> None:
        zca = group.create_group("zca")
        zca.attrs["eps"] = self.eps
        zca.create_dataset("mean", data=self.mean)
        zca.create_dataset("whiten", data=self.whiten)
        zca.create_dataset("unwhiten", data=self.unwhiten)

    @classmethod
    def read(cls, group: h5py.Group, where: str) -> Zca | None:
        if "zca" not in group:
            return None
        zca = group["zca"]
        for key in ("mean", "whiten", "unwhiten"):
            if key not in zca:
                raise NsnError(f"{where}: missing HDF5 key {zca.name}/{key}")
        return cls(zca["mean"][()], zca["whiten"][()], zca["unwhiten"][()], float(zca.attrs.get("eps", 0.0)))


# --------------------------------------------------------------------------- data sets


@dataclass
class DatasetFile:
    """An open nsn data set: ``images`` is the lazy h5py dataset, the rest is loaded."""

    path: Path
    images: h5py.Dataset
    labels: np.ndarray | None
    zca: Zca | None
    attrs: dict

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.images.shape)  # type: ignore[return-value]

    def read(self, rows: slice = slice(None)) -> np.ndarray:
        """``/images[rows]``; a damaged file (a chunk that fails to decompress) is an NsnError."""
        try:
            return self.images[rows]
        except OSError as exc:
            raise NsnError(f"{self.path}: /images cannot be read, the file is damaged ({exc})") from None


@contextlib.contextmanager
def open_dataset(path: str | os.PathLike) -> Iterator[DatasetFile]:
    """Open an nsn data set read-only, checking type, version and the shape of each key."""
    with open_nsn_file(path, DATASET_TYPE) as handle:
        if "images" not in handle:
            raise NsnError(f"{path}: missing HDF5 key /images")
        images = handle["images"]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise NsnError(f"{path}: /images must be (N, H, W, C) with C 1 or 3, found {images.shape}")
        if images.shape[0] == 0:
            raise NsnError(f"{path}: /images holds no images")
        labels = None
        if "labels" in handle:
            labels = handle["labels"][()].astype(np.int64)
            if labels.shape != (images.shape[0],):
                raise NsnError(f"{path}: /labels has shape {labels.shape}, expected ({images.shape[0]},)")
        zca = Zca.read(handle, str(path))
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
        yield DatasetFile(Path(path), images, labels, zca, attrs)


def load_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, Zca | None]:
    """Read a whole data set into memory: ``(images, labels, zca)``; NaN is refused."""
    with open_dataset(path) as dataset:
        images = dataset.read().astype(np.float32, copy=False)
        labels, zca = dataset.labels, dataset.zca
    if not np.isfinite(images).all():
        raise NsnError(f"{path}: /images contains NaN or infinite values")
    return images, labels, zca


def fingerprint(images: np.ndarray) -> str:
    """A short content hash of an image array (shape plus up to 512 evenly spaced images)."""
    digest = hashlib.sha1(repr(images.shape).encode())
    step = max(1, images.shape[0] // 512)
    digest.update(np.ascontiguousarray(images[::step], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
