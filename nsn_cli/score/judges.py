"""The judge for a reference: trained on its labels (cached by content), or the seeded random
network when it has none (see :mod:`nsn_cli.judge`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from nsn_cli.errors import NsnError
from nsn_cli.files import atomic_path
from nsn_cli.judge import EPOCHS, JUDGE_VERSION, ConvNet, fit_judge, random_judge
from nsn_cli.score.inputs import Reference

JUDGE_SEED = 0


def cache_dir() -> Path:
    """Where trained judges are kept: ``$NSN_CACHE`` or ``~/.cache/nsn``."""
    return Path(os.environ.get("NSN_CACHE") or Path.home() / ".cache" / "nsn")


def judge_key(images: np.ndarray, labels: np.ndarray) -> str:
    """A content hash of the reference's images and labels, and of what the fit depends on."""
    digest = hashlib.sha256(f"judge v{JUDGE_VERSION} seed={JUDGE_SEED} epochs={EPOCHS} {images.shape}".encode())
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def reference_judge(
    reference: Reference, cache: Path | None, progress: Callable[..., None] | None = None
) -> tuple[ConvNet, bool]:
    """The judge for ``reference`` and whether it came from the cache.

    With labels: the cached judge for this content, else one trained now (``progress(1,
    status=...)`` after each epoch) and cached; an unreadable entry is refitted, an unwritable
    cache only costs a refit next time. Without labels: the seeded random judge (nothing to
    cache)."""
    if not reference.has_labels:
        return random_judge(reference.images.shape[1:], JUDGE_SEED), False
    path = cache / f"judge-{judge_key(reference.images, reference.labels)}.npz" if cache is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return ConvNet.from_arrays(arrays), True
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a stale or damaged entry: fit again and replace it

    def epoch_done(epoch: int, epochs: int, loss: float) -> None:
        if progress is not None:
            progress(1, status=f"epoch {epoch}/{epochs}, loss {loss:.3f}")

    judge = fit_judge(reference.images, reference.labels, seed=JUDGE_SEED, progress=epoch_done)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temp, open(temp, "wb") as handle:
                np.savez(handle, **judge.to_arrays())
        except (OSError, NsnError):  # a failed write is an NsnError from atomic_path
            pass
    return judge, False
