"""The ``nsn`` command: a Typer app, one thin module per subcommand, one error boundary.

:func:`run` is the boundary: the project's own :class:`~nsn_cli.errors.NsnError` and any
usage error become one red line on stderr and exit code 2 (``--debug`` shows the traceback
instead); Ctrl-C exits 130 after the job's own clean-up has run.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import typer

from nsn_cli.cli import generate as _generate  # noqa: F401,E402

# Importing the command modules registers their commands on ``app``.
from nsn_cli.cli import info as _info  # noqa: F401,E402
from nsn_cli.cli import prep as _prep  # noqa: F401,E402
from nsn_cli.cli import score as _score  # noqa: F401,E402
from nsn_cli.cli import train as _train  # noqa: F401,E402
from nsn_cli.cli._common import app, console_err, state
from nsn_cli.errors import NsnError


def _error_line(message: str) -> None:
    message = " ".join(str(message).split())  # one line, whatever the message held
    console_err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["--help"]
    command = typer.main.get_command(app)
    state.debug = "--debug" in argv
    try:
        command.main(args=argv, prog_name="nsn", standalone_mode=False)
    except NsnError as exc:
        if state.debug:
            raise
        _error_line(str(exc))
        return 2
    except KeyboardInterrupt:
        _error_line("interrupted; completed outputs were kept, partial ones removed")
        return 130
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.Abort:
        _error_line("aborted")
        return 130
    except Exception as exc:  # usage errors of the CLI framework (bad option, missing argument)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if state.debug:
                raise
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            _error_line(where + exc.format_message())
            return 2
        raise
    return 0


#: OpenMP waiting policy of the ``nsn`` process unless the user sets one. numba's OpenMP
#: threads otherwise spin for a while after every parallel loop, taking a core from the
#: main thread's Python between loops and from other processes: ``nsn sample -n 20000``
#: used 8.3 s of CPU and 15.9 s of wall time spinning, 5.3 s and 10.3 s passive (2 cores,
#: shared); ``nsn train`` was the same either way.
OMP_WAIT_POLICY = "PASSIVE"


def configure_process() -> None:
    """Settings of an ``nsn`` process (not of a library user's): OpenMP's waiting policy,
    read when numba first starts its threads, later in this process, and inherited by the
    Dask workers ``--workers`` starts."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


def main() -> None:
    """Console-script entry point."""
    configure_process()
    sys.exit(run())
