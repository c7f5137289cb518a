"""``nsn sample``, ``nsn style`` and ``nsn inpaint``: everything that runs NSN-Gen."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from nsn_cli import config, interrupts, priors
from nsn_cli.cli._common import app, console, console_err, default_model_path, progress_bar, task_advancer
from nsn_cli.errors import Interrupted, NsnError
from nsn_cli.model import DecodeParams, load_model
from nsn_cli.sample import (
    H5_SUFFIXES,
    arithmetic,
    check_images_output,
    check_room,
    decode_bytes,
    generate,
    interpolate,
    one_filter,
    parse_arithmetic,
    sample_shape,
    stream_to_h5,
    stream_to_npy,
    write_images,
)

_GEN = "NSN-Gen"
_DENSITY = ", ".join(priors.DENSITY_PRIORS[:-1]) + " and " + priors.DENSITY_PRIORS[-1]
#: Help of the NSN-Gen options shared by sample, style and inpaint (defaults differ).
_GEN_HELP = {
    "delta1": "Sharpness of softmax(delta1 * v).",
    "delta2": "Filter noise scale (Eq. 5).",
    "delta3": "Contrast of generated patches (paper: 1).",
    "draws": "Multinomial draws n per position (Eq. 4); 0: their limit, the expected weights softmax(delta1 * v).",
    "calibrate": "The raw decoder's pixels, without the model's pixel calibration.",
    "noise_layers": "Where delta2 noise applies: all or pixel.",
    "noise_scale": "sigma as in Eq. 5 (rms) or per dimension, sigma/sqrt(D) (dim).",
    "seed": "Seed of NSN-Gen's random draws: the same seed gives the same images.",
}


def _params(delta1, delta2, delta3, draws, noise_layers, noise_scale, pixel_draws=None) -> DecodeParams:
    return DecodeParams(delta1, delta2, delta3, draws, noise_layers, noise_scale, pixel_draws).validate()


@app.command("sample")
def sample_cli(
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    n: int = typer.Option(64, "-n", help="Number of samples."),
    layer: int | None = typer.Option(None, "--layer", help="Start from layer k (1..L, default L): patches of its receptive field."),
    output: str = typer.Option("samples.png", "-o", "--output", help=".png grid, .npz/.npy/.h5 arrays, or a folder/ of PNGs."),
    prior: str | None = typer.Option(None, "--prior", help=priors.cli_help()),
    delta1: float = typer.Option(config.SAMPLE_DELTA1, "--delta1", help=_GEN_HELP["delta1"], rich_help_panel=_GEN),
    delta2: float = typer.Option(config.DELTA2, "--delta2", help=_GEN_HELP["delta2"], rich_help_panel=_GEN),
    delta3: float = typer.Option(config.SAMPLE_DELTA3, "--delta3", help=_GEN_HELP["delta3"], rich_help_panel=_GEN),
    draws: int | None = typer.Option(
        None, "--draws", help=_GEN_HELP["draws"] + f" Default: 0 after the {_DENSITY} priors, else 1.",
        rich_help_panel=_GEN),
    pixel_draws: int | None = typer.Option(
        None, "--pixel-draws", help="Draws at layer 1, the step that writes pixels (default: as --draws).",
        rich_help_panel=_GEN),
    noise_layers: str = typer.Option(config.NOISE_LAYERS, "--noise-layers", help=_GEN_HELP["noise_layers"], rich_help_panel=_GEN),
    noise_scale: str = typer.Option(config.NOISE_SCALE, "--noise-scale", help=_GEN_HELP["noise_scale"], rich_help_panel=_GEN),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help=_GEN_HELP["calibrate"], rich_help_panel=_GEN),
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
    params = _params(delta1, delta2, delta3, draws, noise_layers, noise_scale, pixel_draws)
    if n < 1:
        raise NsnError(f"-n must be at least 1, got {n}")
    if prior is not None:
        priors.get(prior)  # a misspelt prior is refused before the model is read
    chosen = [o for o in (filter_index, interpolate_pair, arithmetic_expr) if o is not None]
    if len(chosen) > 1:
        raise NsnError("give at most one of --filter, --interpolate, --arithmetic")
    model_file = default_model_path(str(model_path) if model_path else None)
    model = load_model(model_file)
    if not model.complete:
        console_err.print(f"[yellow]note:[/] the model has {len(model.layers)} of {len(model.arch)} layers; sampling from layer {len(model.layers)}")
    top = len(model.layers)
    model.check_layer(top if layer is None else layer)
    # what will be written, checked before any image is generated
    count, shape, held = n, sample_shape(model, top), decode_bytes(model, top)
    if interpolate_pair is not None:
        try:
            a, b = (int(v) for v in interpolate_pair.split(":"))
        except ValueError:
            raise NsnError(f"--interpolate: '{interpolate_pair}' must be i:j with two filter numbers") from None
        count, held = steps, 0
    elif arithmetic_expr is not None:
        count = (len(parse_arithmetic(arithmetic_expr)) + 1) * n
    elif filter_index is None:
        shape, held = sample_shape(model, top if layer is None else layer), 0  # generated batch by batch
    streamed = not chosen and output.lower().endswith((*H5_SUFFIXES, ".npy"))
    check_images_output(output, force, [model_file], count)
    check_room(output, count, shape, held, streamable=not chosen)
    columns = grid
    calibrate = not no_calibrate
    if filter_index is not None:
        images = one_filter(model, filter_index, n, params, seed, calibrate)
    elif interpolate_pair is not None:
        images = interpolate(model, a, b, steps, params, seed, calibrate)
        columns = columns or steps
    elif arithmetic_expr is not None:
        images = arithmetic(model, arithmetic_expr, n, params, seed, calibrate)
        columns = columns or n
    elif streamed:
        # arrays go to the file batch by batch, never held whole
        stream = stream_to_npy if output.lower().endswith(".npy") else stream_to_h5
        with progress_bar(quiet) as progress:
            advance = task_advancer(progress, "sample")(n, 1)
            written = stream(output, n, force, lambda sink: generate(
                model, n, layer=layer, prior=prior, params=params, seed=seed, progress=advance, sink=sink,
                calibrate=calibrate), inputs=[model_file])
        console.print(f"wrote {n} samples to {written.path} ({written.kind})", highlight=False)
        return
    else:
        with progress_bar(quiet) as progress:
            images = generate(model, n, layer=layer, prior=prior, params=params, seed=seed,
                              progress=task_advancer(progress, "sample")(n, 1), calibrate=calibrate)
    written = write_images(images, output, columns=columns, force=force, inputs=[model_file])
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


def _note(text: str, quiet: bool) -> None:
    if not quiet:
        console_err.print(f"[yellow]note:[/] {text}", highlight=False)


@app.command("style")
def style_cli(
    image: Path = typer.Argument(..., help="Content image (any size for models without ZCA)."),
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    output: str = typer.Option("styled.png", "-o", "--output", help="Output: .png strip (original + variants), .npz, or folder/."),
    layer: int = typer.Option(config.STYLE_LAYER, "--layer", help="Encode up to this layer, then decode back down."),
    variants: int = typer.Option(config.STYLE_VARIANTS, "--variants", help="How many styled versions."),
    delta1: float = typer.Option(config.DELTA1, "--delta1", help=_GEN_HELP["delta1"], rich_help_panel=_GEN),
    delta2: float = typer.Option(config.DELTA2, "--delta2", help=_GEN_HELP["delta2"], rich_help_panel=_GEN),
    delta3: float = typer.Option(config.DELTA3, "--delta3", help=_GEN_HELP["delta3"], rich_help_panel=_GEN),
    draws: int = typer.Option(config.DRAWS, "--draws", help=_GEN_HELP["draws"], rich_help_panel=_GEN),
    noise_layers: str = typer.Option(config.NOISE_LAYERS, "--noise-layers", help=_GEN_HELP["noise_layers"], rich_help_panel=_GEN),
    noise_scale: str = typer.Option(config.NOISE_SCALE, "--noise-scale", help=_GEN_HELP["noise_scale"], rich_help_panel=_GEN),
    seed: int = typer.Option(0, "--seed", help=_GEN_HELP["seed"]),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help=_GEN_HELP["calibrate"], rich_help_panel=_GEN),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No notes (cropping, channel conversion)."),
) -> None:
    """Restyle an image: encode to a layer, decode with NSN-Gen (paper section 4.3)."""
    import numpy as np

    from nsn_cli.restore import load_for_model
    from nsn_cli.style import style

    params = _params(delta1, delta2, delta3, draws, noise_layers, noise_scale)
    if variants < 1:
        raise NsnError(f"--variants must be at least 1, got {variants}")
    model_file = default_model_path(str(model_path) if model_path else None)
    model = load_model(model_file)
    model.check_layer(layer)
    check_images_output(output, force, [image, model_file], variants + 1)
    prepared = load_for_model(image, model, layer)
    for note in prepared.notes:
        _note(note, quiet)
    styled = prepared.back(style(model, prepared.image, layer=layer, variants=variants, params=params, seed=seed,
                                 calibrate=not no_calibrate))
    shown = prepared.image if prepared.original is None else prepared.original
    written = write_images(np.concatenate([shown[None], styled]), output, columns=variants + 1, force=force,
                           inputs=[image, model_file])
    console.print(f"wrote the original and {variants} styled version(s) to {written.path}", highlight=False)


def inpaint_targets(output: str | None, paths: list[Path], from_folder: bool = False) -> list[Path]:
    """Where each inpainted image goes: one input file to a .png file (default inpainted.png), or
    into a folder as <name>.png (``-o`` ending in / or an existing folder; several inputs or a
    folder input always, default inpainted/, made if missing)."""
    from nsn_cli.sample import GRID_SUFFIXES, is_folder_output

    single = len(paths) == 1 and not from_folder
    if output is None:
        output = "inpainted.png" if single else "inpainted/"
    if single and not is_folder_output(output):
        if Path(output).suffix.lower() not in GRID_SUFFIXES:
            raise NsnError(f"-o {output}: give an image file name (.png) for one image, or a folder ending in /")
        return [Path(output)]
    if Path(output).suffix.lower() in GRID_SUFFIXES and not Path(output).is_dir():
        raise NsnError(f"-o {output}: {len(paths)} images are written to a folder; give a folder name (made if missing)")
    targets = [Path(output) / f"{path.stem}.png" for path in paths]
    seen: dict[Path, Path] = {}
    for path, target in zip(paths, targets):
        if target in seen:
            raise NsnError(f"{seen[target]} and {path} would both be written to {target}; inpaint them separately")
        seen[target] = path
    return targets


@app.command("inpaint")
def inpaint_cli(
    images: List[Path] = typer.Argument(..., help="Images, or folders of images, to fill."),
    mask: Path = typer.Option(..., "--mask", help="Mask image (white = hole, black = keep), or a folder with one mask per image (sorted order)."),
    model_path: Path | None = typer.Option(None, "-m", "--model", help="Model file (default $NSN_MODEL or model.h5)."),
    output: str | None = typer.Option(None, "-o", "--output", help="One image: a .png (default inpainted.png) or a folder/; several, or a folder: a folder, made if missing (default inpainted/)."),
    method: str = typer.Option("posterior", "--method", help="posterior: the mean of decoded training members (and their mixes) weighted by how well they fit the known pixels; layers: the paper's conditioning of NSN-Gen at every layer."),
    sample: bool = typer.Option(False, "--sample", help="posterior: one plausible fill drawn by the weights, instead of their mean (the best PSNR)."),
    candidates: int = typer.Option(config.INPAINT_CANDIDATES, "--candidates", help="posterior: members (and mixes) the fill averages."),
    pairs: int = typer.Option(config.INPAINT_PAIRS, "--pairs", help="posterior: mixes of every pair of this many nearest members join the candidates (0: none)."),
    temperature: float = typer.Option(config.INPAINT_TEMPERATURE, "--temperature", help="posterior: weights exp(-d / (2 t^2)) of the mean squared distance d on the known pixels."),
    boundary: float = typer.Option(config.INPAINT_BOUNDARY, "--boundary", help="posterior: pixels over which the known residual fades into the hole (0: none)."),
    focus: float = typer.Option(config.INPAINT_FOCUS, "--focus", help="posterior: known pixels within about this many pixels of the hole count most in ranking candidates (0: all equally)."),
    mix_penalty: float = typer.Option(config.INPAINT_MIX_PENALTY, "--mix-penalty", help="posterior: added to a mix's distance, times the hole's share over the known share (0: mixes rank as members)."),
    draws: int = typer.Option(config.INPAINT_DRAWS, "--draws", help="layers: decodings averaged per image."),
    rounds: int = typer.Option(config.INPAINT_ROUNDS, "--rounds", help="layers: re-encode the filled image and fill again this many times."),
    delta1: float = typer.Option(config.DELTA1, "--delta1", help=_GEN_HELP["delta1"], rich_help_panel=_GEN),
    delta2: float = typer.Option(config.DELTA2, "--delta2", help=_GEN_HELP["delta2"], rich_help_panel=_GEN),
    delta3: float = typer.Option(config.DELTA3, "--delta3", help=_GEN_HELP["delta3"], rich_help_panel=_GEN),
    seed: int = typer.Option(0, "--seed", help=_GEN_HELP["seed"]),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help=_GEN_HELP["calibrate"], rich_help_panel=_GEN),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no notes."),
) -> None:
    """Fill the white part of a mask in each image from what the model knows about whole images
    (see nsn_cli/inpaint.py); known pixels are kept exactly."""
    from nsn_cli.files import InputFiles
    from nsn_cli.inpaint import METHODS, InpaintOptions

    if method not in METHODS:
        raise NsnError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    options = InpaintOptions(sample=sample, seed=seed, calibrate=not no_calibrate, candidates=candidates,
                             pairs=pairs, temperature=temperature, boundary=boundary, focus=focus,
                             mix_penalty=mix_penalty).validate()
    params = _params(delta1, delta2, delta3, config.DRAWS, config.NOISE_LAYERS, config.NOISE_SCALE)
    if draws < 1 or rounds < 1:
        raise NsnError(f"--draws and --rounds must be at least 1, got {draws} and {rounds}")
    model_file = default_model_path(str(model_path) if model_path else None)
    model = load_model(model_file)
    paths = _image_paths(images)
    if not mask.exists():
        raise NsnError(f"{mask}: no such mask file or folder")
    masks = _image_paths([mask]) if mask.is_dir() else [mask] * len(paths)
    if len(masks) != len(paths):
        raise NsnError(f"{mask}: {len(masks)} masks for {len(paths)} images (give one mask, or one per image)")
    if method == "posterior" and (model.top is None or not model.complete):
        raise NsnError(f"{model_file}: --method posterior needs a complete model with top-layer statistics; "
                       "use --method layers")
    targets = inpaint_targets(output, paths, from_folder=any(item.is_dir() for item in images))
    inputs = InputFiles([*paths, *masks, model_file])
    for target in targets:  # every output is checked before the first image is filled
        # a folder still to make: where it will be made must be writable
        check_images_output(target if target.parent.is_dir() else f"{target.parent}/", force, inputs)
    fill = _fill_posterior if method == "posterior" else _fill_layers
    written = 0

    def write(target: Path, filled) -> None:
        nonlocal written
        target.parent.mkdir(parents=True, exist_ok=True)
        with interrupts.held():  # a Ctrl-C between the file's rename and the count would miscount
            write_images(filled[None], target, columns=1, force=force, inputs=inputs)
            written += 1
        interrupts.check()
        console.print(f"wrote {target}", highlight=False)

    try:
        with progress_bar(quiet or len(paths) == 1) as progress:
            advance = task_advancer(progress, "inpaint")(len(paths), 1)
            fill(model, paths, masks, targets, write, advance, lambda text: _note(text, quiet),
                 options=options, params=params, draws=draws, rounds=rounds)
    except KeyboardInterrupt:
        if not written:
            raise
        raise Interrupted(f"{written} of {len(paths)} images were written to {targets[0].parent}/ "
                          "(each complete); the rest were not started") from None


def _load_pair(model, path: Path, mask_path: Path, note):
    """An image at its own size, matched to the model's channels, in [0, 1], and its hole."""
    from nsn_cli.prep import to_channels
    from nsn_cli.readers import load_image
    from nsn_cli.restore import load_mask

    image = load_image(path)
    channels = model.image_shape[2]
    if image.shape[-1] != channels:
        note(f"{path}: converted {'RGB to gray' if channels == 1 else 'gray to RGB'} for a "
             f"{'gray' if channels == 1 else 'RGB'} model")
        image = to_channels(image, channels)
    hole, notes = load_mask(mask_path, image.shape[:2])
    for text in notes:
        note(text)
    return image.astype("float32") / 255.0, hole


def _fill_posterior(model, paths, masks, targets, write, advance, note, *, options, **_) -> None:
    """All images brought to the model's size, filled in batches, each resized back and written."""
    import numpy as np

    from nsn_cli.inpaint import BATCH, from_model_size, inpaint_posterior, to_model_size

    for a in range(0, len(paths), BATCH):
        batch = []
        for path, mask_path in zip(paths[a : a + BATCH], masks[a : a + BATCH]):
            resized = to_model_size(*_load_pair(model, path, mask_path, note), model, f"{path}: ")
            if resized.note:
                note(resized.note)
            batch.append(resized)
        filled = inpaint_posterior(model, np.stack([r.image for r in batch]), np.stack([r.hole for r in batch]),
                                   options, first=a)
        for resized, image, target in zip(batch, filled, targets[a : a + BATCH]):
            write(target, from_model_size(image, resized))
            advance(1)


def _fill_layers(model, paths, masks, targets, write, advance, note, *, params, draws, rounds, options, **_) -> None:
    """The paper's method, image by image: any size a non-ZCA model's geometry tiles (cropped),
    a ZCA model's size (resized there and back)."""
    from nsn_cli.inpaint import from_model_size, to_model_size
    from nsn_cli.restore import inpaint, load_for_model, load_mask

    for path, mask_path, target in zip(paths, masks, targets):
        if model.zca is not None:
            resized = to_model_size(*_load_pair(model, path, mask_path, note), model, f"{path}: ")
            if resized.note:
                note(resized.note)
            filled = inpaint(model, resized.image, resized.hole, draws=draws, rounds=rounds, params=params,
                             seed=options.seed)
            write(target, from_model_size(filled, resized))
        else:
            prepared = load_for_model(path, model, len(model.layers))
            hole, notes = load_mask(mask_path, prepared.original_shape)
            for text in prepared.notes + notes:
                note(text)
            write(target, inpaint(model, prepared.image, prepared.crop_like(hole), draws=draws, rounds=rounds,
                                  params=params, seed=options.seed))
        advance(1)
