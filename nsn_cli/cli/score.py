"""``nsn score``: sample-quality and likelihood metrics, one table row per input."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import List

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from nsn_cli import config
from nsn_cli.cli._common import app, console, console_err, progress_bar
from nsn_cli.files import atomic_path, check_output_path
from nsn_cli.readers import SkippedFilesWarning
from nsn_cli.score import CHUNK, METRICS, SUBSET_MAX, ScoreOptions, ScoreReport, parse_metrics, score


def _number(value: float | None) -> str:
    """About four significant digits; no "-0.000"."""
    if value is None or not math.isfinite(value):
        return "-"
    digits = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1 if abs(value) < 1000 else 0
    return f"{round(value, digits) + 0.0:.{digits}f}"


def _cell(row: dict, key: str, spread: str | None) -> str:
    if key not in row:
        return "-"
    text = _number(row[key])
    return f"{text}\n±{_number(row[spread])}" if spread is not None and spread in row else text


def report_table(report: ScoreReport) -> Table:
    """A rich table: one row per input, one column per metric column any row has."""
    columns = [c for c in report.columns if any(c.key in row for row in report.rows)]
    table = Table(title=f"nsn score against {report.reference} ({report.reference_images} images)",
                  box=box.SIMPLE_HEAD)
    table.add_column("samples", overflow="fold")
    table.add_column("images", justify="right")
    for column in columns:
        table.add_column(column.header, justify="right", no_wrap=True)
    for row in report.rows:
        table.add_row(row["input"], str(row["images"]), *(_cell(row, c.key, c.spread) for c in columns))
    return table


def _tracker(progress):
    """The scorer's ``tracker(description, total) -> advance(n, status="")`` on a progress display."""

    def start(description: str, total: int):
        if progress is None:
            return lambda n, status="": None
        task = progress.add_task(description, total=total)

        def advance(n: int, status: str = "") -> None:
            progress.advance(task, n)
            if status:
                progress.update(task, status=status)

        return advance

    return start


def _print_wide(table: Table) -> None:
    """Print a table; into a file or pipe at its natural width rather than cut to 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    Console(file=console.file, width=max(console.width, natural)).print(table)


@app.command("score")
def score_cli(
    samples: List[Path] = typer.Argument(..., help="Model files (sampled on the fly), .npz/.npy arrays, nsn .h5 data sets, or folders of images."),
    ref: Path = typer.Option(..., "--ref", help="Reference nsn data set (.h5); with labels it also gives IS and FID."),
    metrics: str = typer.Option(",".join(METRICS), "--metrics", help=f"Comma-separated, from {','.join(METRICS)}."),
    n: int = typer.Option(
        config.SCORE_SAMPLES, "-n",
        help=f"Samples drawn from each model; at most this many images read from other inputs. Read in chunks "
        f"of {CHUNK:,} (memory does not grow with -n); SWD, Parzen and memorisation use at most "
        f"{SUBSET_MAX:,} of them (a subset chosen by --seed when there are more)."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling models and for every random choice of the metrics."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
    train: Path | None = typer.Option(None, "--train", help="The data set the generator was trained on (memorisation)."),
    resize: bool = typer.Option(
        False, "--resize",
        help="Bring inputs of another size or channel count to the reference's (Pillow LANCZOS, as nsn prep); "
        "without it they are refused."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Score samples against a reference: IS, FID, KID and precision/recall in a small CNN's
    features (trained on the reference's labels, else random), SWD, Parzen, memorisation, and a
    model's patch likelihood (see nsn_cli/score/plugins.py for the definitions)."""
    options = ScoreOptions(metrics=parse_metrics(metrics), n=n, seed=seed, train=train, resize=resize)
    if json_path is not None:
        check_output_path(json_path, force, [*samples, ref, *([train] if train else [])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)  # reported from the notes instead
        with progress_bar(quiet) as progress:
            report = score(samples, ref, options, tracker=_tracker(progress))
    if json_path is not None:  # first: a failed write is then the only line on stderr
        with atomic_path(json_path) as temp:
            temp.write_text(json.dumps(report.to_json(options), indent=2) + "\n")
    for note in report.notes:
        console_err.print(f"[yellow]note:[/] {note}", highlight=False)
    _print_wide(report_table(report))
    if json_path is not None:
        console.print(f"wrote {json_path}", highlight=False)
