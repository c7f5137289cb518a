"""The ``nsn`` console script (and ``python -m nsn_cli``).

Importing the toolkit (numpy, numba, h5py, the commands) takes about half a second, before the
CLI's Ctrl-C handling (:mod:`nsn_cli.interrupts`) is in place; a Ctrl-C then printed Python's
traceback and the process died by the signal. This module imports nothing heavy itself, so
such a Ctrl-C is one line and exit status 130, as anywhere else.
"""

from __future__ import annotations

import signal
import sys

#: What an interrupted start says: no command had begun, so nothing was written.
INTERRUPTED_AT_START = "interrupted: nothing was written (nsn had not started the command)\n"


def main() -> None:
    """Import the CLI and run it; a Ctrl-C before the CLI handles it exits 130 with one line."""
    try:
        from nsn_cli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C may not turn 130 into a death by signal
        sys.stderr.write(INTERRUPTED_AT_START)
        sys.exit(130)
