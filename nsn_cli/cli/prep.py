"""``nsn prep``: build a data set file from images."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import typer

from nsn_cli import config
from nsn_cli.cli._common import app, console, console_err, progress_bar, task_advancer
from nsn_cli.prep import parse_size, prep
from nsn_cli.readers import SkippedFilesWarning


@app.command("prep")
def prep_cli(
    inputs: List[Path] = typer.Argument(..., help="Folders of images, image files, IDX (.gz), .npy/.npz, or .h5 data sets."),
    output: Path = typer.Option(..., "-o", "--output", help="Data set file to write (.h5)."),
    size: str | None = typer.Option(None, "--size", help="Resize to N (square) or HxW, e.g. 28 or 64x64. Default: keep."),
    rgb: bool | None = typer.Option(None, "--rgb/--gray", help="Channels. Default: what most inputs are."),
    zca: bool = typer.Option(False, "--zca/--no-zca", help="Channel-wise ZCA whitening (stored with the data)."),
    zca_eps: float = typer.Option(config.ZCA_EPS, "--zca-eps", help="ZCA regulariser added to the eigenvalues."),
    labels: Path | None = typer.Option(None, "--labels", help="Labels file (IDX, .npy, or text, one per line)."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N images."),
    crops: int | None = typer.Option(None, "--crops", help="Take N random --size crops of every image instead of resizing (textures)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --crops."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Resize, unify channels, optionally ZCA-whiten, and write an HDF5 data set."""
    channels = None if rgb is None else (3 if rgb else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)  # reported from result.notes instead
        with progress_bar(quiet) as progress:
            result = prep(
                inputs,
                output,
                size=parse_size(size),
                channels=channels,
                zca=zca,
                zca_eps=zca_eps,
                labels_path=labels,
                limit=limit,
                force=force,
                crops=crops,
                seed=seed,
                progress=task_advancer(progress, "prep"),
            )
    for note in result.notes:
        console_err.print(f"[yellow]note:[/] {note}", highlight=False)
    n, h, w, c = result.shape
    extras = ", labels" if result.labels else ""
    extras += ", ZCA" if result.zca else ""
    console.print(f"wrote {result.path}: {n} x {h} x {w} x {c}{extras}", highlight=False)
