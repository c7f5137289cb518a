"""Numba's on-disk kernel cache, kept in step with the sources it was compiled from.

Numba keys a cached kernel on its own source file only (modification time and size). A kernel
that inlines a function of another module (decode's kernels call ``patches.add_patch``) is
loaded as it was after that other module changed: the old code runs, silently. A clone
updated in place (``git pull``, an editable install) meets exactly that. So when any source
under a folder changed since its caches were written, every kernel cached under it goes, and
numba compiles afresh on first use (a fresh install has nothing to remove).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: The package's folder.
PACKAGE = Path(__file__).resolve().parent
#: Numba's cache files (an index and its data).
CACHE_SUFFIXES = (".nbi", ".nbc")
#: The record of the sources the caches under a folder were compiled from.
STAMP_NAME = "kernel-sources.stamp"


def sources_stamp(*roots: Path) -> str:
    """A digest of every ``.py`` file's path, modification time and size under ``roots``: what
    numba's own check reads, for every file at once."""
    digest = hashlib.blake2b(digest_size=16)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                stat = path.stat()
            except OSError:  # removed while we looked: the stamp differs either way
                continue
            digest.update(f"{path.relative_to(root)}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    return digest.hexdigest()


def forget_stale_kernels(root: Path = PACKAGE, depends: tuple[Path, ...] = ()) -> int:
    """Remove numba's cache files under ``root`` when the sources under ``root`` or ``depends``
    (folders whose functions its kernels inline) changed since the last call; returns how many
    went. A folder that cannot be written is left alone: numba keeps its caches elsewhere then,
    and nothing here can be recorded."""
    record = root / "__pycache__" / STAMP_NAME
    current = sources_stamp(*depends, root)
    try:
        if record.read_text() == current:
            return 0
    except OSError:
        pass  # no record yet (a fresh clone or install), or unreadable: start clean
    removed = 0
    for folder in root.rglob("__pycache__"):
        for path in folder.iterdir():
            if path.suffix in CACHE_SUFFIXES:
                try:
                    path.unlink()
                    removed += 1
                except OSError:  # another process removed it, or a read-only install
                    pass
    try:
        record.parent.mkdir(exist_ok=True)
        partial = record.with_name(f"{STAMP_NAME}.{os.getpid()}.tmp")
        partial.write_text(current)
        os.replace(partial, record)  # a second process writing the same record: one wins, both valid
    except OSError:
        pass
    return removed
