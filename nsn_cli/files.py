"""Versioned HDF5 files (data sets and models) and atomic, locked writes.

Every file carries ``encoding-type`` and ``encoding-version`` attributes at its root; readers
check both and name the failing HDF5 key when something is wrong. Files are written to a
temporary name in the target folder (``.NAME.<pid>.<random>.tmp``) and renamed into place, so
an interrupted or failed job never leaves a half-written file, and an existing output is kept
unless ``force`` is given; a temporary file whose writer was killed is removed by the next
writer. A job that writes a file for long holds :func:`output_lock` on it.

Data set layout (``encoding-type = "nsn-dataset"``, version 1, :data:`FORMAT_VERSIONS`), written
by :func:`dataset_output` only::

    /images            (N, H, W, C) float32, chunked, gzip; [0, 1], or ZCA-whitened
    /labels            (N,) int64, optional
    /zca/mean          (C, H*W) float64, optional (with /zca/whiten, /zca/unwhiten)
    /zca/whiten        (C, H*W, H*W) float64; attribute ``eps``
    /zca/unwhiten      (C, H*W, H*W) float64

Model layout (``encoding-type = "nsn-model"``, version 2): see :mod:`nsn_cli.model`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import hashlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np

from nsn_cli import __version__, interrupts
from nsn_cli.errors import WRITE_FAILURES, NsnError, WriteError, write_reason
from nsn_cli.zca import Zca

try:
    import resource
except ImportError:  # not a POSIX system
    resource = None

DATASET_TYPE = "nsn-dataset"
MODEL_TYPE = "nsn-model"
#: Each file type's format version (the root ``encoding-version``) and the oldest this nsn
#: reads; tests/data holds a file of every version (tests/test_formats.py loads them).
#: Data set 1: the layout above. Model 1: layers, config, zca, and in later files optional
#: /top, /calibration, memorisation and per-layer patches/chunk attributes; model 2: the same
#: keys, bumped so that an nsn reading only version 1 refuses a model whose /calibration it
#: would ignore (its samples would differ from this nsn's without a word).
FORMAT_VERSIONS = {DATASET_TYPE: 1, MODEL_TYPE: 2}
OLDEST_VERSIONS = {DATASET_TYPE: 1, MODEL_TYPE: 1}


def check_version(where: str, what: str, found: object, oldest: int, current: int, older_hint: str) -> int:
    """``found`` (a version attribute as stored, or None) as an int in ``oldest..current``; any
    other value is one clear error: a newer version says to upgrade nsn, an older one gives
    ``older_hint`` (what to re-run)."""
    if found is None:
        raise NsnError(f"{where}: no {what} attribute; the file is damaged or not nsn's")
    text = found.decode() if isinstance(found, bytes) else str(found)
    try:
        version = int(text)
    except ValueError:
        version = None
    if version is None or version < 0:
        raise NsnError(f"{where}: {what} '{text}' is not a version nsn {__version__} reads "
                       f"(versions {oldest} to {current}); the file is damaged or not nsn's")
    if version > current:
        raise NsnError(f"{where}: {what} {version} was written by a newer nsn; nsn {__version__} reads "
                       f"versions {oldest} to {current}: upgrade nsn to read it")
    if version < oldest:
        raise NsnError(f"{where}: {what} {version} is older than nsn {__version__} reads "
                       f"(versions {oldest} to {current}); {older_hint}")
    return version


def now_iso() -> str:
    """The current time as an ISO-8601 string (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_failure(path: str | os.PathLike, exc: OSError) -> WriteError:
    """The one-line error for a failed write of ``path``: what happened, and that nothing was
    replaced (every output is written to a temporary file first)."""
    reason = write_reason(exc)
    if exc.errno is None:
        # numpy's tofile reports a short write without an errno ("N requested and M written")
        if shutil.disk_usage(_folder(Path(path))).free < 1 << 20:
            reason = WRITE_FAILURES[errno.ENOSPC]
        elif resource is not None and resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            reason = WRITE_FAILURES[errno.EFBIG]
    return WriteError(path, reason)


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


class InputFiles:
    """The files a command reads, asked "is this output one of them?" (as :func:`same_file`)
    once per output: their inodes and resolved paths are found once. Asking 1,000 outputs
    of a folder inpaint against its 2,001 inputs pair by pair took minutes."""

    def __init__(self, paths: Iterable[str | os.PathLike] = ()) -> None:
        self.inodes: set[tuple[int, int]] = set()
        self.resolved: set[Path] = set()
        for path in paths:
            with contextlib.suppress(OSError):
                stat = os.stat(path)
                self.inodes.add((stat.st_dev, stat.st_ino))
            self.resolved.add(Path(path).resolve())

    @classmethod
    def of(cls, inputs: InputFiles | Iterable[str | os.PathLike]) -> InputFiles:
        return inputs if isinstance(inputs, InputFiles) else cls(inputs)

    def __contains__(self, path: str | os.PathLike) -> bool:
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            if (stat.st_dev, stat.st_ino) in self.inodes:
                return True
        return Path(path).resolve() in self.resolved


def check_output_path(path: str | os.PathLike, force: bool,
                      inputs: InputFiles | Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse an output before any work: its folder missing or not writable, the output an
    existing file without ``force``, a folder, or one of the command's ``inputs``.

    The folder is tried by creating (and removing) a temporary file in it: permission bits
    do not tell (root ignores them; read-only mounts and full disks do not show in them)."""
    path = Path(path)
    folder = _folder(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise NsnError(f"{path}: the folder {folder} {what}")
    if path in InputFiles.of(inputs):
        raise NsnError(f"{path}: is also an input of this command; write the output to another file")
    if path.is_dir():
        raise NsnError(f"{path}: is a folder, expected a file name")
    if path.exists() and not force:
        raise NsnError(f"{path}: already exists (use --force to overwrite)")
    remove_stale_temporaries(path)
    check_writable(folder, path)
    return path


def check_writable(folder: Path, output: str | os.PathLike) -> None:
    """Refuse a ``folder`` in which ``output`` (named in the message) cannot be written:
    tried by creating (and removing) a temporary file there."""
    try:
        handle, probe = tempfile.mkstemp(prefix=f".nsn.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise write_failure(output, exc) from None
    os.close(handle)
    os.unlink(probe)


# --------------------------------------------------------------------------- temporaries

TEMP_SUFFIX = ".tmp"
#: A temporary file of ``NAME``: ``.NAME.<pid>.<random>.tmp`` beside it.
_TEMP_PATTERN = r"\.{name}\.(\d+)\.[A-Za-z0-9_]+\.tmp"
#: Seconds of slack between a process's start time (whole seconds from /proc) and the time
#: of a file it wrote.
_CLOCK_SLACK = 2.0


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime in ticks


def writer_gone(pid: int, written: float) -> bool:
    """Whether the process ``pid`` that wrote a file last modified at ``written`` is dead:
    no such process, or one started after the file was written (its pid reused)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)
    return started is not None and started > written + _CLOCK_SLACK


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by killed writers (kill -9, a crash, a
    power cut); those of live writers stay. Returns the removed paths."""
    path = Path(path)
    pattern = re.compile(_TEMP_PATTERN.format(name=re.escape(path.name)))
    removed = []
    try:
        candidates = list(_folder(path).glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if not match:
            continue
        with contextlib.suppress(OSError):
            if writer_gone(int(match.group(1)), candidate.stat().st_mtime):
                candidate.unlink()
                removed.append(candidate)
    return removed


#: The lists :func:`recording_commits` blocks collect committed outputs in (none outside them).
_RECORDS: list[list[Path]] = []


@contextlib.contextmanager
def recording_commits() -> Iterator[list[Path]]:
    """Within the block, every output :func:`atomic_path` renames into place is appended to the
    list yielded (the CLI names what a Ctrl-C that no job caught had left complete). Nothing is
    kept once the block ends."""
    record: list[Path] = []
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The body writes the temporary file; any OSError it raises is a failed write (one line:
    :func:`write_failure`). The temporary file is removed on every way out but success
    (errors, Ctrl-C); one left by a killed process is removed by the next writer of ``path``
    (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    folder = _folder(path)
    remove_stale_temporaries(path)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise write_failure(path, exc) from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        try:
            yield temp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
            with interrupts.held():  # renamed and recorded, or neither
                os.replace(temp, path)
                for record in _RECORDS:
                    record.append(path)
        except OSError as exc:
            raise write_failure(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


# --------------------------------------------------------------------------- HDF5 outputs


class _GuardedFile(io.RawIOBase):
    """The file under an HDF5 file being written (h5py's ``fileobj`` driver) that never
    reports a failed write to HDF5.

    HDF5 cannot recover from a write that fails (a full disk, a size limit): closing the file
    retries the flush, which fails again, h5py leaks the file's objects and the library
    crashed at exit (a segfault after the error). Here the first error is kept in
    :attr:`error` and later writes are dropped (reads of lost bytes give zeros), so HDF5
    closes the file cleanly; :func:`atomic_h5` then raises the error and removes the file.
    Ctrl-C while HDF5 is inside these methods is held until it returns, for the same reason
    (:mod:`nsn_cli.interrupts`)."""

    def __init__(self, path: Path):
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0))
        self._pos = 0
        self._size = 0
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        start, got = self._pos, 0
        if self.error is None:
            try:
                while got < len(view):
                    count = os.preadv(self._fd, [view[got:]], start + got)
                    if count == 0:
                        break
                    got += count
            except OSError as exc:
                self.error = exc
        view[got:] = bytes(len(view) - got)  # past the end (as HDF5's own driver reads it) or lost
        self._pos = start + len(view)
        return len(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        start = self._pos
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], start + done)
            except OSError as exc:
                self.error = exc
        self._pos = start + len(view)
        self._size = max(self._size, self._pos)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        self._size = size
        return size

    def flush(self) -> None:
        pass  # every write went straight to the file

    def close(self) -> None:
        if not self.closed:
            try:
                if self.error is None:
                    os.fsync(self._fd)  # a rename must not land before the data it names
            except OSError as exc:
                self.error = exc
            finally:
                os.close(self._fd)
        super().close()


# an exception inside these would fail HDF5's I/O call (see _GuardedFile)
interrupts.hold_in(*(getattr(_GuardedFile, name) for name in ("seek", "tell", "readinto", "write", "truncate", "flush")))


@dataclass
class H5Output:
    """An HDF5 file being written by :func:`atomic_h5`."""

    file: h5py.File
    _guard: _GuardedFile

    def check(self) -> None:
        """Stop a long write early: raise the failed write or the Ctrl-C held so far."""
        if self._guard.error is not None:
            raise self._guard.error
        interrupts.check()


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[H5Output]:
    """Write an HDF5 file atomically (:func:`atomic_path`): yield it open for writing; a full
    disk or a size limit is one line (:func:`write_failure`) and no file is left, never an
    HDF5 crash (:class:`_GuardedFile`). Long writers call :meth:`H5Output.check` now and then."""
    with interrupts.handled(), atomic_path(path) as temp:
        guard = _GuardedFile(temp)
        try:
            handle = h5py.File(guard, "w")
            try:
                yield H5Output(handle, guard)
            finally:
                with interrupts.held():  # a half-closed file would be flushed again at exit
                    handle.close()
        finally:
            guard.close()
        H5Output(handle, guard).check()


# --------------------------------------------------------------------------- locks


def _lock_path(path: Path) -> Path:
    return _folder(path) / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` while a job writes it: a second nsn
    process writing the same file is refused with one line instead of the two overwriting
    each other. The lock is ``flock`` on ``.NAME.lock`` beside the output, released by the
    system when the process ends however it ends, and the lock file removed on release."""
    path = Path(path)
    lock = _lock_path(path)
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise write_failure(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise NsnError(
                f"{path}: another nsn process{who} is writing it; wait for it to finish or choose another output"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break  # still the lock file: its previous holder had not removed it
        except FileNotFoundError:
            pass
        os.close(fd)  # removed by its previous holder after we opened it: take the new one
    try:
        with contextlib.suppress(OSError):  # the pid is only for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def stamp(handle: h5py.File, encoding_type: str, source: str) -> None:
    """Write the root attributes every nsn file carries."""
    handle.attrs["encoding-type"] = encoding_type
    handle.attrs["encoding-version"] = str(FORMAT_VERSIONS[encoding_type])
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
        check_version(str(path), "encoding-version", _attr_str(handle, "encoding-version"),
                      OLDEST_VERSIONS[expected_type], FORMAT_VERSIONS[expected_type],
                      "re-run nsn prep" if expected_type == DATASET_TYPE else "train it again")
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


# --------------------------------------------------------------------------- data sets

#: Floats per /images chunk: a few chunks per read of a chunked pass, gzip level 4 with the
#: byte shuffle (what every data set writer uses, so reads cost the same whoever wrote it).
DATASET_CHUNK_FLOATS = 65536


@dataclass
class DatasetOutput:
    """An nsn data set being written by :func:`dataset_output`: ``/images`` is made on the
    first :meth:`write` (so a writer that learns the image shape from its first batch needs
    no other call), ``/labels`` and ``/zca`` by :meth:`set_labels` and :meth:`set_zca`."""

    out: H5Output
    count: int
    images: h5py.Dataset | None = None

    def write(self, start: int, images: np.ndarray) -> None:
        """Write images (n, H, W, C) in [0, 1] (or whitened) as rows ``start .. start + n - 1``;
        a failed write or a Ctrl-C held so far is raised here, not after the whole pass."""
        if self.images is None:
            shape = tuple(int(s) for s in images.shape[1:])
            rows = min(self.count, max(1, DATASET_CHUNK_FLOATS // int(np.prod(shape))))
            self.images = self.out.file.create_dataset(
                "images", shape=(self.count, *shape), dtype=np.float32, chunks=(rows, *shape),
                compression="gzip", compression_opts=4, shuffle=True)
        self.images[start : start + len(images)] = images
        self.out.check()

    def set_labels(self, labels: np.ndarray) -> None:
        """``/labels`` (count,) int64."""
        labels = np.asarray(labels)
        if labels.shape != (self.count,):
            raise ValueError(f"labels have shape {labels.shape}, expected ({self.count},)")
        self.out.file.create_dataset("labels", data=labels.astype(np.int64))

    def set_zca(self, zca: Zca) -> None:
        """``/zca``: the whitening the stored images went through."""
        zca.write(self.out.file)


@contextlib.contextmanager
def dataset_output(path: str | os.PathLike, count: int, source: str) -> Iterator[DatasetOutput]:
    """Write an nsn data set of ``count`` images to ``path``: atomically (:func:`atomic_h5`),
    stamped with ``source``, in the layout of the module's docstring. Every writer of data
    sets (prep, sample, the benchmarks) goes through here."""
    if count < 1:
        raise ValueError(f"a data set holds at least one image, got {count}")
    with atomic_h5(path) as out:
        stamp(out.file, DATASET_TYPE, source)
        dataset = DatasetOutput(out, count)
        yield dataset
        if dataset.images is None or dataset.images.shape[0] != count:
            raise ValueError(f"{path}: no images were written")


def write_dataset(path: str | os.PathLike, images: np.ndarray, source: str, labels: np.ndarray | None = None) -> None:
    """Write images (N, H, W, C) held in memory (and labels) as an nsn data set."""
    with dataset_output(path, len(images), source) as out:
        out.write(0, images)
        if labels is not None:
            out.set_labels(labels)


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
