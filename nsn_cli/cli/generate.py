"""``nsn sample``, ``nsn style`` and ``nsn inpaint``: everything that runs NSN-Gen."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from nsn_cli import config
from nsn_cli.cli._common import app, console, console_err, default_model_path, progress_bar, task_advancer
from nsn_cli.errors import NsnError
from nsn_cli.model import DecodeParams, load_model
from nsn_cli.sample import arithmetic, generate, interpolate, one_filter, stream_to_h5, stream_to_npy, write_images

_GEN = "NSN-Gen"


def _params(delta1, delta2, delta3, draws, noise_layers, noise_scale) -> DecodeParams:
    return DecodeParams(delta1, delta2, delta3, draws, noise_layers, noise_scale).validate()


@app.command("sample")
def sample_cli(
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    n: int = typer.Option(64, "-n", help="Number of samples."),
    layer: int | None = typer.Option(None, "--layer", help="Start from layer k (1..L, default L): patches of its receptive field."),
    output: str = typer.Option("samples.png", "-o", "--output", help=".png grid, .npz/.npy/.h5 arrays, or a folder/ of PNGs."),
    prior: str | None = typer.Option(None, "--prior", help="normal (paper), counts, mix, pca or knn. Default: mix where the model has top statistics, else counts."),
    delta1: float = typer.Option(config.SAMPLE_DELTA1, "--delta1", help="Sharpness of softmax(delta1 * v).", rich_help_panel=_GEN),
    delta2: float = typer.Option(0.0, "--delta2", help="Filter noise scale (Eq. 5).", rich_help_panel=_GEN),
    delta3: float = typer.Option(config.SAMPLE_DELTA3, "--delta3", help="Contrast of generated patches (paper: 1).", rich_help_panel=_GEN),
    draws: int = typer.Option(1, "--draws", help="Multinomial draws n per position (Eq. 4).", rich_help_panel=_GEN),
    noise_layers: str = typer.Option("all", "--noise-layers", help="Where delta2 noise applies: all or pixel.", rich_help_panel=_GEN),
    noise_scale: str = typer.Option("rms", "--noise-scale", help="sigma as in Eq. 5 (rms) or per dimension, sigma/sqrt(D) (dim).", rich_help_panel=_GEN),
    filter_index: int | None = typer.Option(None, "--filter", help="Sample from one top filter (one-hot top vector)."),
    interpolate_pair: str | None = typer.Option(None, "--interpolate", help="i:j - interpolate between top filters i and j."),
    steps: int = typer.Option(8, "--steps", help="Steps for --interpolate."),
    arithmetic_expr: str | None = typer.Option(None, "--arithmetic", help="'a+b-c' on the generated F[L-1] maps of top filters."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images (any batch size, any thread count)."),
    grid: int | None = typer.Option(None, "--grid", help="Columns of the PNG grid."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Generate images with NSN-Gen (from the top or any hidden layer)."""
    params = _params(delta1, delta2, delta3, draws, noise_layers, noise_scale)
    if n < 1:
        raise NsnError(f"-n must be at least 1, got {n}")
    chosen = [o for o in (filter_index, interpolate_pair, arithmetic_expr) if o is not None]
    if len(chosen) > 1:
        raise NsnError("give at most one of --filter, --interpolate, --arithmetic")
    model = load_model(default_model_path(str(model_path) if model_path else None))
    if not model.complete:
        console_err.print(f"[yellow]note:[/] the model has {len(model.layers)} of {len(model.arch)} layers; sampling from layer {len(model.layers)}")
    columns = grid
    if filter_index is not None:
        images = one_filter(model, filter_index, n, params, seed)
    elif interpolate_pair is not None:
        try:
            a, b = (int(v) for v in interpolate_pair.split(":"))
        except ValueError:
            raise NsnError(f"--interpolate: '{interpolate_pair}' must be i:j with two filter numbers") from None
        images = interpolate(model, a, b, steps, params, seed)
        columns = columns or steps
    elif arithmetic_expr is not None:
        images = arithmetic(model, arithmetic_expr, n, params, seed)
        columns = columns or n
    elif output.lower().endswith((".h5", ".hdf5", ".npy")):
        # arrays go to the file batch by batch, never held whole
        stream = stream_to_npy if output.lower().endswith(".npy") else stream_to_h5
        with progress_bar(quiet) as progress:
            advance = task_advancer(progress, "sample")(n, 1)
            written = stream(output, n, force, lambda sink: generate(
                model, n, layer=layer, prior=prior, params=params, seed=seed, progress=advance, sink=sink))
        console.print(f"wrote {n} samples to {written.path} ({written.kind})", highlight=False)
        return
    else:
        with progress_bar(quiet) as progress:
            images = generate(model, n, layer=layer, prior=prior, params=params, seed=seed,
                              progress=task_advancer(progress, "sample")(n, 1))
    written = write_images(images, output, columns=columns, force=force)
    h, w, c = images.shape[1:]
    console.print(f"wrote {written.count} samples ({h}x{w}x{c}) to {written.path} ({written.kind})", highlight=False)


def _image_paths(inputs: List[Path]) -> list[Path]:
    from nsn_cli.readers import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise NsnError(f"{item}: no images in the folder")
            paths.extend(found)
        elif not item.exists():
            raise NsnError(f"{item}: no such file or folder")
        else:
            paths.append(item)
    return paths


def _save_png(image, path: Path, force: bool) -> None:
    from nsn_cli.sample import write_images

    write_images(image[None], path, columns=1, force=force)


@app.command("style")
def style_cli(
    image: Path = typer.Argument(..., help="Content image (any size for models without ZCA)."),
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    output: Path = typer.Option(Path("styled.png"), "-o", "--output", help="Output: .png strip (original + variants), .npz, or folder/."),
    layer: int = typer.Option(1, "--layer", help="Encode up to this layer, then decode back down."),
    variants: int = typer.Option(4, "--variants", help="How many styled versions."),
    delta1: float = typer.Option(100.0, "--delta1", rich_help_panel=_GEN),
    delta2: float = typer.Option(0.0, "--delta2", rich_help_panel=_GEN),
    delta3: float = typer.Option(1.0, "--delta3", rich_help_panel=_GEN),
    draws: int = typer.Option(1, "--draws", rich_help_panel=_GEN),
    noise_layers: str = typer.Option("all", "--noise-layers", rich_help_panel=_GEN),
    noise_scale: str = typer.Option("rms", "--noise-scale", rich_help_panel=_GEN),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Restyle an image: encode to a layer, decode with NSN-Gen (paper section 4.3)."""
    import numpy as np

    from nsn_cli.restore import load_for_model, style
    from nsn_cli.sample import write_images

    params = _params(delta1, delta2, delta3, draws, noise_layers, noise_scale)
    model = load_model(default_model_path(str(model_path) if model_path else None))
    model.check_layer(layer)
    prepared = load_for_model(image, model, layer)
    for note in prepared.notes:
        console_err.print(f"[yellow]note:[/] {note}", highlight=False)
    styled = style(model, prepared.image, layer=layer, variants=variants, params=params, seed=seed)
    written = write_images(np.concatenate([prepared.image[None], styled]), output, columns=variants + 1, force=force)
    console.print(f"wrote the original and {variants} styled version(s) to {written.path}", highlight=False)


@app.command("inpaint")
def inpaint_cli(
    images: List[Path] = typer.Argument(..., help="Images, or folders of images, to fill."),
    mask: Path = typer.Option(..., "--mask", help="Mask image (white = hole, black = keep), or a folder with one mask per image (sorted order)."),
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="One image: a .png (default inpainted.png); several: a folder (default inpainted/)."),
    draws: int = typer.Option(8, "--draws", help="Decodings averaged per image (8 helped on digits)."),
    rounds: int = typer.Option(1, "--rounds", help="Re-encode the filled image and fill again this many times."),
    delta1: float = typer.Option(100.0, "--delta1", rich_help_panel=_GEN),
    delta2: float = typer.Option(0.0, "--delta2", rich_help_panel=_GEN),
    delta3: float = typer.Option(1.0, "--delta3", rich_help_panel=_GEN),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Fill the white part of a mask in each image, conditioning NSN-Gen at every layer."""
    from nsn_cli.restore import inpaint, load_for_model, load_mask

    params = _params(delta1, delta2, delta3, 1, "all", "rms")
    model = load_model(default_model_path(str(model_path) if model_path else None))
    paths = _image_paths(images)
    masks = _image_paths([mask]) if mask.is_dir() else [mask] * len(paths)
    if not mask.exists():
        raise NsnError(f"{mask}: no such mask file or folder")
    if len(masks) != len(paths):
        raise NsnError(f"{mask}: {len(masks)} masks for {len(paths)} images (give one mask, or one per image)")
    single = len(paths) == 1
    target = output or (Path("inpainted.png") if single else Path("inpainted"))
    if not single:
        target.mkdir(parents=True, exist_ok=True)
    for path, mask_path in zip(paths, masks):
        prepared = load_for_model(path, model, len(model.layers))
        hole, notes = load_mask(mask_path, prepared.original_shape)
        hole = prepared.crop_like(hole)
        for note in prepared.notes + notes:
            console_err.print(f"[yellow]note:[/] {note}", highlight=False)
        filled = inpaint(model, prepared.image, hole, draws=draws, rounds=rounds, params=params, seed=seed)
        out = target if single else target / f"{path.stem}.png"
        _save_png(filled, out, force)
        console.print(f"wrote {out}", highlight=False)
