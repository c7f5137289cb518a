"""``nsn calibrate``: fit (or refit) a model's calibration against its training data."""

from __future__ import annotations

from pathlib import Path

import typer

from nsn_cli import config
from nsn_cli.cli._common import app, console, console_err, progress_bar, task_advancer
from nsn_cli.errors import NsnError


@app.command("calibrate")
def calibrate_cli(
    model_path: Path = typer.Argument(..., help="A complete model file (rewritten atomically)."),
    data: Path | None = typer.Option(None, "--data", help="Its training data set (default: the one the model was trained on)."),
    samples: int = typer.Option(config.CALIBRATION_SAMPLES, "--samples", min=1, help="Images NSN-Gen draws for the fit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Fit the model's calibration: monotone maps per channel from NSN-Gen's decoded layer-1
    maps and pixels (default sampler) to the training data's encoded maps and pixels; sample,
    style and inpaint apply them."""
    from nsn_cli.calibrate import calibrate_model, generated_images
    from nsn_cli.files import fingerprint, open_dataset
    from nsn_cli.model import load_model

    model = load_model(model_path)
    data_path = data if data is not None else Path(model.source)
    if not data_path.is_file():
        raise NsnError(f"{data_path}: the model's training data set is not there; give it with --data")
    with open_dataset(data_path) as dataset:
        if model.fingerprint and fingerprint(dataset.images) != model.fingerprint:
            raise NsnError(f"{data_path}: not the data set {model_path} was trained on (fingerprints differ)")
    with progress_bar(quiet) as progress:
        advance = task_advancer(progress, "calibration")(generated_images(model, samples), 1)
        model.calibration = calibrate_model(model, data_path, samples=samples, progress=advance)
    model.save(model_path)
    if model.calibration.sampler:
        console_err.print(f"[yellow]note:[/] fitted with the sampler {model.calibration.sampler}", highlight=False)
    console.print(f"wrote {model_path}: calibration from {samples} samples", highlight=False)
