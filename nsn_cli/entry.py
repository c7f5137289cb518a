"""The ``nsn`` console script (and ``python -m nsn_cli``).

Importing the toolkit (numpy, numba, h5py, the commands) takes about half a second, before the
CLI's Ctrl-C handling (:mod:`nsn_cli.interrupts`) is in place; a Ctrl-C then printed Python's
traceback and the process died by the signal. This module imports nothing heavy itself, so
such a Ctrl-C is one line and exit status 130, as anywhere else.

Exit status 130 needs more than ``sys.exit(130)``. CPython notes a KeyboardInterrupt that
escapes code run by ``exec``/``eval`` of a string as "unhandled", even when a caller catches
it, and after finalising the interpreter ends a ``python -m`` process by SIGINT instead of with
its exit status. Imports run such code (scipy's array-API layer, the standard library's
namedtuple), so a Ctrl-C landing there (``python -m nsn_cli sample`` starting its output: 7 of
20 tries) turned a clean, reported interrupt into a death by signal. :func:`exit_interrupted`
ends the process with 130 from the last exit handler, after every other one has run.

Every other end of a command leaves the same way (:func:`exit_with`): CPython's finalisation
after a command (tearing down numba, LLVM and a thousand modules) took 0.3 s of every ``nsn``
run, for nothing the command needs.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import NoReturn

#: What an interrupted start says: no command had begun, so nothing was written.
INTERRUPTED_AT_START = "interrupted: nothing was written (nsn had not started the command)\n"
#: The exit status of a process stopped by Ctrl-C (128 + SIGINT), what shells, make and
#: schedulers check for.
INTERRUPTED = 130

#: The exit status of the command that has ended (None while it runs, and in a library user's
#: process, which this module leaves alone).
_status: int | None = None


def _end() -> None:
    """The last exit handler: once the command has ended, end the process here with its status.
    After a handled Ctrl-C this keeps CPython's finalisation from replacing 130 by a death by
    SIGINT; after any other end it skips that finalisation. Nothing is lost: every other exit
    handler has run by now (temporary files, HDF5 files, Dask's, numba's), the command renamed
    its outputs into place before it returned, and the output streams are flushed here."""
    if _status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or a broken pipe
            pass
    os._exit(_status)


# registered first, so it runs last (exit handlers run in reverse order of registration): the
# handlers of numba, Dask and the rest have run by then
atexit.register(_end)


def exit_with(status: int) -> NoReturn:
    """End the process once the command has ended and said how (:func:`_end`). Ctrl-C is ignored
    from here: a late one could only turn that status into a death by signal."""
    global _status
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _status = status
    sys.exit(status)


def exit_interrupted() -> NoReturn:
    """End the process after a Ctrl-C the command has handled (it has cleaned up and said what
    it kept): exit status 130, whatever CPython noted."""
    exit_with(INTERRUPTED)


def main() -> None:
    """Import the CLI and run it; a Ctrl-C before the CLI handles it exits 130 with one line."""
    try:
        from nsn_cli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED_AT_START)
        exit_interrupted()
