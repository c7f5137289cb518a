"""Shared pieces of the CLI: the app, consoles, progress bars, small option parsers."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nsn_cli import __version__
from nsn_cli.errors import NsnError

app = typer.Typer(
    name="nsn",
    help="Normal Similarity Network: prep data, train layer-wise, sample, style, inpaint, score.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# soft_wrap: a message is one line however long its paths (rich would break it at the
# terminal's width, 80 columns when piped); tables still fit the width.
console = Console(soft_wrap=True)
console_err = Console(stderr=True, soft_wrap=True)


@dataclass
class _State:
    debug: bool = False
    quiet: bool = False


state = _State()


def _show_version(value: bool) -> None:
    if value:
        console.print(f"nsn {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Normal Similarity Network toolkit."""
    state.debug = debug


def tidy_help(command):
    """Help pages that read right: a flag shows no ``<bool>`` (it takes no value) and a list
    argument shows ``<path>...`` rather than ``<list[Path]>``. Typer has no option for either,
    so the built command's parameters are adjusted here, once, for every subcommand."""
    for sub in [command, *getattr(command, "commands", {}).values()]:

        def help_option(ctx, made=sub.get_help_option):  # --help is made on demand, not in params
            option = made(ctx)
            if option is not None:
                option.metavar = ""
            return option

        sub.get_help_option = help_option
        for param in sub.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper()  # the usage line reads {IMAGES}...
                if param.nargs != 1 and hasattr(param, "display_type_rich"):
                    single = re.sub(r"^<list\[(\w+)\]>$", lambda m: f"<{m.group(1).lower()}>", param.display_type(None))
                    param.display_type_rich = lambda ctx, label=single: f"{label}..."
    return command


class LazyProgress:
    """A rich Progress on stderr that only draws once the first task is added, so an error
    raised before any work starts is the only line the user sees."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console_err,
        )
        self.started = False

    def add_task(self, description: str, total: float | None, status: str = "") -> int:
        if not self.started:
            self.progress.start()
            self.started = True
        return self.progress.add_task(description, total=total, status=status)

    def advance(self, task: int, n: float) -> None:
        self.progress.advance(task, n)

    def update(self, task: int, **fields) -> None:
        self.progress.update(task, **fields)

    def stop(self) -> None:
        if self.started:
            self.progress.stop()


@contextlib.contextmanager
def progress_bar(quiet: bool = False) -> Iterator[LazyProgress | None]:
    """A lazily started rich progress display on stderr; ``None`` when quiet."""
    if quiet:
        yield None
        return
    progress = LazyProgress()
    try:
        yield progress
    finally:
        progress.stop()


def task_advancer(progress: LazyProgress | None, description: str) -> Callable[[int, int], Callable[[int], None]]:
    """Adapt a progress display to the jobs' ``progress(total, passes) -> advance(n)`` protocol."""

    def start(total: int, passes: int = 1) -> Callable[[int], None]:
        if progress is None:
            return lambda n: None
        task = progress.add_task(description, total=total * passes)
        return lambda n: progress.advance(task, n)

    return start


def default_model_path(model: str | None) -> str:
    """``-m`` if given, else ``$NSN_MODEL``, else ``model.h5``."""
    return model or os.environ.get("NSN_MODEL") or "model.h5"


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise NsnError(f"{name}: '{text}' is not a comma-separated list of integers") from None


def parse_float_list(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise NsnError(f"{name}: '{text}' is not a comma-separated list of numbers") from None
