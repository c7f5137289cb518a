"""What fits on this machine: memory available, disk space free, and sizes in words.

Commands call these before starting work they could not finish (``sample -n`` with an
output held in memory, a file larger than the disk), so the user gets one line at once
instead of a MemoryError or a full disk hours later.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nsn_cli.errors import NsnError


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 kB"``: decimal units, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can use without swapping (Linux ``MemAvailable``),
    else the physical memory; None when neither is known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def free_disk(path: str | os.PathLike) -> int | None:
    """Bytes free on the disk that holds ``path`` (a file to write, or a folder); None if unknown."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse work that needs more than the memory available: ``what`` names it, ``hint``
    says what to do instead."""
    available = available_memory()
    if available is not None and needed > available:
        raise NsnError(f"{what} need {format_bytes(needed)} of memory, {format_bytes(available)} is available; {hint}")


def check_disk(path: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse writing ``path`` when at least ``needed`` bytes will not fit on its disk."""
    free = free_disk(path)
    if free is not None and needed > free:
        raise NsnError(f"{path}: {what} need at least {format_bytes(needed)}, the disk has {format_bytes(free)} free")
