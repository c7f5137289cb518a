"""Ctrl-C that is never lost and never lands where it does harm.

Python raises KeyboardInterrupt wherever the main thread happens to be. Two places cannot take
it: a ctypes callback (llvmlite calls back into Python while numba loads its compiled
kernels; an exception there is printed as "Exception ignored" and dropped, so the job ran on
to the end) and the methods HDF5 calls while it writes a file (:mod:`nsn_cli.files`: a failed
I/O call leaves HDF5 unable to close the file). While :func:`handled` is active, Ctrl-C
arriving in such a place is held as pending and raised by the next :func:`check`, which the
long loops call (a batch of samples, an EM iteration, a chunk written); anywhere else it
raises at once, as usual. One Python drops without a trace: a Ctrl-C raised inside a weakref
callback or a ``__del__`` (an object freed at that moment) is "unraisable"; while
:func:`handled` is active, Python's unraisable hook turns it into a pending one, so the job
still stops at the next :func:`check` (or says that it had finished).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from types import CodeType, FrameType
from typing import Callable, Iterator

_pending = False
_holding = 0  # > 0 inside held(): every Ctrl-C waits for check()
_held_code: set[CodeType] = set()
#: Modules whose functions run as ctypes callbacks (numba's JIT, through llvmlite).
_CALLBACK_MODULES = ("llvmlite.",)


def hold_in(*functions: Callable) -> None:
    """Never raise KeyboardInterrupt while one of ``functions`` runs (nor what they call)."""
    _held_code.update(f.__code__ for f in functions)


def _must_hold(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _held_code or frame.f_globals.get("__name__", "").startswith(_CALLBACK_MODULES):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _holding or _must_hold(frame):
        _pending = True
        return
    _pending = False
    raise KeyboardInterrupt


def check() -> None:
    """Raise the Ctrl-C held so far, if any."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def pending() -> bool:
    """Whether a Ctrl-C is held, not yet raised."""
    return _pending


def _keep_unraisable_interrupt(previous: Callable) -> Callable:
    """An unraisable hook that holds a dropped KeyboardInterrupt as pending (see above) and
    passes anything else on to ``previous``."""

    def hook(unraisable) -> None:
        global _pending
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _pending = True
            return
        previous(unraisable)

    return hook


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Install the Ctrl-C handler above for the block (main thread only; a no-op where
    SIGINT is ignored, already handled here, or owned by someone else)."""
    global _pending
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending = False
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _keep_unraisable_interrupt(previous_hook)
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold every Ctrl-C during the block (e.g. while a file is being closed)."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
