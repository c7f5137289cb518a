"""The ``nsn`` command: a Typer app, one thin module per subcommand, one error boundary.

:func:`run` is the boundary, and the only one: the project's own
:class:`~nsn_cli.errors.NsnError`, a usage error of the CLI, a failed write (full disk,
read-only folder) and running out of memory become one red line on stderr and exit code 2
(``--debug`` shows the traceback instead); Ctrl-C exits 130 with one line saying what was kept,
after the job's own clean-up has run. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

import typer

from nsn_cli import files, interrupts
from nsn_cli.cli import calibrate as _calibrate  # noqa: F401,E402

# Importing the command modules registers their commands on ``app``.
from nsn_cli.cli import info as _info  # noqa: F401,E402
from nsn_cli.cli import prep as _prep  # noqa: F401,E402
from nsn_cli.cli import sample as _sample  # noqa: F401,E402
from nsn_cli.cli import score as _score  # noqa: F401,E402
from nsn_cli.cli import train as _train  # noqa: F401,E402
from nsn_cli.cli._common import app, console_err, state, tidy_help
from nsn_cli.entry import INTERRUPTED, exit_with
from nsn_cli.errors import WRITE_FAILURES, Interrupted, NsnError, write_reason

#: What a bare Ctrl-C kept: every output is written to a temporary file and renamed at the end.
NOTHING_WRITTEN = "nothing was written (no partial file is left)"


def kept_outputs(paths: Sequence[Path]) -> str:
    """What a Ctrl-C that the job did not catch itself left: the outputs already renamed
    into place (complete; each named once) or nothing (a Ctrl-C after the job's last write,
    while it reported, had said "nothing was written" beside a finished file)."""
    paths = list(dict.fromkeys(paths))
    if not paths:
        return NOTHING_WRITTEN
    names = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"the job had written {names} (complete) before it stopped; nothing else was written"


def _line(label: str, message: str) -> None:
    message = " ".join(str(message).split())  # one line, whatever the message held
    console_err.print(f"[bold red]{label}:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def _usage_error(exc: Exception) -> bool:
    """A usage error of the CLI framework (bad option, missing argument): click's exception
    type, duck-typed because Typer versions vendor click or import it."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _failed_write(exc: OSError) -> str:
    """What could not be written: the file, else the package that wrote (numba's cache
    writes name no file)."""
    if exc.filename:
        return f"{exc.filename}: cannot write"
    frames = traceback.extract_tb(exc.__traceback__)
    package = next((Path(f.filename).parts for f in reversed(frames) if "site-packages" in f.filename), None)
    if package:
        return f"cannot write a file of {package[package.index('site-packages') + 1]}"
    return "cannot write"


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["--help"]
    command = tidy_help(typer.main.get_command(app))
    state.debug = "--debug" in argv
    with files.recording_commits() as written:
        return _run(command, argv, written)


def _run(command, argv: list[str], written: list[Path]) -> int:
    """:func:`run` after the set-up; ``written`` collects the outputs committed meanwhile."""
    try:
        # the command is invoked here rather than through its main(): main() turns Ctrl-C
        # into an exit code the caller must notice and an empty file's EOFError into "Aborted!"
        with interrupts.handled(), command.make_context("nsn", argv) as ctx:
            command.invoke(ctx)
            if interrupts.pending():  # held where it could not be raised, and no loop came by since
                raise Interrupted("the job had finished before it could stop; its output is complete")
    except typer.Exit as exc:  # --help, --version
        return int(getattr(exc, "exit_code", 0) or 0)
    except BrokenPipeError:  # stdout closed early (nsn ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Interrupted as exc:
        _line("interrupted", str(exc))
        return INTERRUPTED
    except (KeyboardInterrupt, typer.Abort):  # Abort: Ctrl-C at a prompt (nsn asks none)
        _line("interrupted", kept_outputs(written))
        return INTERRUPTED
    except NsnError as exc:
        if state.debug:
            raise
        _line("error", str(exc))
        return 2
    except OSError as exc:  # a write no job caught (a compiled-code cache, a temporary file)
        if state.debug or exc.errno not in WRITE_FAILURES:
            raise
        _line("error", f"{_failed_write(exc)}: {write_reason(exc)}")
        return 2
    except MemoryError:
        if state.debug:
            raise
        _line("error", "out of memory; give a smaller job (-n, --memory, fewer images)")
        return 2
    except Exception as exc:
        if not _usage_error(exc) or state.debug:
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        _line("error", where + exc.format_message())
        return 2
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
    """Console-script entry point.

    After Ctrl-C the job has cleaned up and said what it kept; the process exits with status
    130 (:func:`nsn_cli.entry.exit_with`)."""
    configure_process()
    # the job is done and has said so; 130 after a Ctrl-C (see nsn_cli.entry)
    exit_with(run())
