"""Channel-wise ZCA whitening: its fit (from images in memory, or from moments summed chunk by
chunk as ``nsn prep`` reads them), its transform and inverse, and its place in HDF5 files
(``/zca`` of a data set or model).

Per channel ``cov = E[x x^T] - m m^T = U diag(lambda) U^T``, ``W = U diag(1/sqrt(lambda + eps)) U^T``
and ``white = (x - m) W``, ``x = white W^-1 + m`` (SPEC.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from nsn_cli import config
from nsn_cli.errors import NsnError


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


@dataclass
class ZcaAccumulator:
    """Running per-channel sums for the covariance ``X^T X / N - m m^T`` (float64)."""

    total: np.ndarray
    outer: np.ndarray
    count: int = 0

    @classmethod
    def empty(cls, pixels: int, channels: int) -> ZcaAccumulator:
        return cls(np.zeros((channels, pixels)), np.zeros((channels, pixels, pixels)))

    def add(self, images: np.ndarray) -> None:
        n, h, w, c = images.shape
        for ch in range(c):
            x = images[..., ch].reshape(n, h * w).astype(np.float64)
            self.total[ch] += x.sum(axis=0)
            self.outer[ch] += x.T @ x
        self.count += n

    def finish(self, eps: float) -> Zca:
        return fit_zca_from_moments(self.total / self.count, self.outer / self.count, eps)


def fit_zca_from_moments(mean: np.ndarray, second: np.ndarray, eps: float) -> Zca:
    """Channel-wise ZCA from per-channel means ``(C, P)`` and second moments ``(C, P, P)``:
    ``cov = E[x x^T] - m m^T = U diag(lambda) U^T``; ``W = U diag(1/sqrt(lambda+eps)) U^T``."""
    channels, pixels = mean.shape
    whiten = np.empty((channels, pixels, pixels))
    unwhiten = np.empty((channels, pixels, pixels))
    for ch in range(channels):
        cov = second[ch] - np.outer(mean[ch], mean[ch])
        lam, vec = np.linalg.eigh((cov + cov.T) / 2)
        lam = np.clip(lam, 0.0, None)
        whiten[ch] = (vec / np.sqrt(lam + eps)) @ vec.T
        unwhiten[ch] = (vec * np.sqrt(lam + eps)) @ vec.T
    return Zca(mean=mean, whiten=whiten, unwhiten=unwhiten, eps=eps)


def fit_zca(images: np.ndarray, eps: float = config.ZCA_EPS) -> Zca:
    """Fit channel-wise ZCA on ``(N, H, W, C)`` images held in memory."""
    acc = ZcaAccumulator.empty(images.shape[1] * images.shape[2], images.shape[3])
    acc.add(images)
    return acc.finish(eps)
