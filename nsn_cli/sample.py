"""``nsn sample``: NSN-Gen from any layer, with the priors of :mod:`nsn_cli.priors` and the
paper's controls (section 6.3)."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nsn_cli import interrupts, priors
from nsn_cli.engine.threads import map_ordered
from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.model import DecodeParams, NSNModel

#: Samples decoded per batch; the same seed gives the same images whatever this is. Small
#: enough that a batch's maps stay in cache and their buffers are reused from the heap, not
#: mapped afresh (one-thread CPU for 8,192 samples: 1.6 s at 256, 2.1 s at 4,096).
BATCH = 256


def generate(
    model: NSNModel,
    n: int,
    *,
    layer: int | None = None,
    prior: str | None = None,
    params: DecodeParams | None = None,
    seed: int = 0,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
    sink: Callable[[int, np.ndarray], None] | None = None,
    calibrate: bool = True,
    first: int = 0,
    raw: bool = False,
) -> np.ndarray | None:
    """``n`` samples (n, H, W, C) in [0, 1] generated from ``layer`` (default: the top).

    From a hidden layer ``k`` the result is a patch of that layer's receptive field.
    With ``sink``, each batch goes to ``sink(first_index, images)`` instead of being kept, so
    any ``n`` needs memory for one batch only, and None is returned.
    ``prior=None`` picks the measured best: ``mix`` for the top layer of a model with top
    statistics (bench/bench_quality.py), else ``counts``.
    calibrate: apply the model's pixel calibration (if it has one). first: the index of the
    first sample (samples ``first .. first + n - 1`` of the seed's streams). raw: the decoder's
    de-whitened pixels, neither calibrated nor clipped (what the calibration is fitted on).
    """
    out = None
    with contextlib.closing(generated_batches(model, n, layer=layer, prior=prior, params=params, seed=seed,
                                              batch=batch, calibrate=calibrate, first=first, raw=raw)) as batches:
        for offset, images in batches:
            count = images.shape[0]
            if sink is not None:
                sink(offset, images)
            else:
                if out is None:
                    out = np.empty((n,) + images.shape[1:], dtype=np.float32)
                out[offset : offset + count] = images
            if progress is not None:
                progress(count)
    return out


def generated_batches(
    model: NSNModel,
    n: int,
    *,
    layer: int | None = None,
    prior: str | None = None,
    params: DecodeParams | None = None,
    seed: int = 0,
    batch: int = BATCH,
    calibrate: bool = True,
    first: int = 0,
    raw: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`generate`'s samples as ``(offset, images)`` batches of ``batch``, in order, the
    batches decoded side by side; a caller that takes them in groups of its own keeps every
    core busy across the groups (one call per group started each group on one core). The
    arguments are checked here, before the first batch is asked for; close the iterator when
    stopping early."""
    params = (params or DecodeParams.for_sampling()).validate()
    layer = len(model.layers) if layer is None else layer
    if prior is None:
        prior = priors.default_prior(model, layer)
    model.check_layer(layer)
    if n < 1:
        raise ParameterError("n", f"must be at least 1, got {n}", flag="-n")
    params = params.resolved(density_prior=priors.get(prior).density)

    def one_batch(offset: int) -> np.ndarray:
        count = min(batch, n - offset)
        index = first + offset  # the sample index: it keys the random streams
        maps, start = priors.draw(model, prior, layer, seed, index, count)
        return model.finish_images(model.decode(maps, start, params, seed=seed, first_sample=index, calibrate=calibrate),
                                   calibrate=calibrate, raw=raw)

    def batches() -> Iterator[tuple[int, np.ndarray]]:
        offsets = range(0, n, batch)
        # batches are independent (each sample has its own random streams): they run side by side
        with contextlib.closing(map_ordered(one_batch, offsets)) as results:
            for offset, images in zip(offsets, results):
                interrupts.check()  # a Ctrl-C held while numba loaded its kernels (see nsn_cli.interrupts)
                yield offset, images

    return batches()


def from_top(model: NSNModel, vectors: np.ndarray, params: DecodeParams, seed: int,
             calibrate: bool = True) -> np.ndarray:
    """Decode given top vectors (m, N_L) to images."""
    maps = vectors.astype(np.float32).reshape(vectors.shape[0], 1, 1, -1)
    return model.finish_images(model.decode(maps, len(model.layers), params, seed=seed, calibrate=calibrate), calibrate)


def check_filter(model: NSNModel, index: int) -> None:
    top = model.layers[-1].filters
    if not 0 <= index < top:
        raise NsnError(f"filter {index} does not exist: the top layer has filters 0..{top - 1}")


def one_filter(model: NSNModel, index: int, n: int, params: DecodeParams, seed: int,
               calibrate: bool = True) -> np.ndarray:
    """``n`` samples from top filter ``index`` (one-hot top vector)."""
    check_filter(model, index)
    vectors = np.zeros((n, model.layers[-1].filters), dtype=np.float32)
    vectors[:, index] = 1.0
    return from_top(model, vectors, params, seed, calibrate)


def interpolate(model: NSNModel, a: int, b: int, steps: int, params: DecodeParams, seed: int,
                calibrate: bool = True) -> np.ndarray:
    """Images along the straight line between the one-hot vectors of filters ``a`` and ``b``."""
    check_filter(model, a)
    check_filter(model, b)
    if steps < 2:
        raise NsnError(f"--steps must be at least 2, got {steps}")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    vectors = np.zeros((steps, model.layers[-1].filters), dtype=np.float32)
    vectors[:, a] += 1.0 - t[:, 0]
    vectors[:, b] += t[:, 0]
    # every step shares the seed's first stream, so the strip changes only through the vector
    maps = vectors.reshape(vectors.shape[0], 1, 1, -1)
    out = [model.finish_images(model.decode(maps[i : i + 1], len(model.layers), params, seed=seed, calibrate=calibrate), calibrate)
           for i in range(len(maps))]
    return np.concatenate(out)


def parse_arithmetic(text: str) -> list[tuple[int, int]]:
    """``"a+b-c"`` -> [(+1, a), (+1, b), (-1, c)]."""
    compact = text.replace(" ", "")
    if not re.fullmatch(r"[+-]?\d+([+-]\d+)*", compact):
        raise NsnError(f"--arithmetic: '{text}' must look like 'a+b-c' with filter numbers")
    terms = re.findall(r"([+-]?)(\d+)", compact)
    return [(-1 if sign == "-" else 1, int(index)) for sign, index in terms]


def arithmetic(model: NSNModel, text: str, n: int, params: DecodeParams, seed: int,
               calibrate: bool = True) -> np.ndarray:
    """Paper section 6.3: generate ``F[L-1]`` from each filter's one-hot vector, combine the
    maps with the signs given, clip to the layer's output range, decode the result.

    Returns ``(terms + 1) * n`` images: each term's own samples, then the combined ones."""
    terms = parse_arithmetic(text)
    top = len(model.layers)
    rows, combined = [], None
    for sign, index in terms:
        check_filter(model, index)
        vectors = np.zeros((n, 1, 1, model.layers[-1].filters), dtype=np.float32)
        vectors[..., index] = 1.0
        below = model.decode(vectors, top, params, seed=seed, to_layer=top - 1)
        rows.append(model.finish_images(model.decode(below, top - 1, params, seed=seed, calibrate=calibrate), calibrate))
        combined = sign * below if combined is None else combined + sign * below
    combined = np.clip(combined, 0.0, 1.0)  # both activations lie in [0, 1]
    rows.append(model.finish_images(model.decode(combined, top - 1, params, seed=seed, calibrate=calibrate), calibrate))
    return np.concatenate(rows)


# --------------------------------------------------------------------------- output


@dataclass
class Written:
    path: Path
    kind: str
    count: int


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one uint8 image with ``pad`` pixel gaps."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 0.5, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    grid = np.rint(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npz", ".npy")
H5_SUFFIXES = (".h5", ".hdf5")
#: The fewest bytes a float32 value of a sample compresses to in .npz/.h5 (gzip does about 1
#: on digits): only what surely cannot fit on the disk is refused before generating.
LEAST_COMPRESSED_BYTES = 0.25


def is_folder_output(output: str | os.PathLike) -> bool:
    """A folder of PNGs: a path ending in ``/`` or an existing folder."""
    return os.fspath(output).endswith(("/", os.sep)) or Path(output).is_dir()


def folder_targets(output: str | os.PathLike, count: int) -> list[Path]:
    """The PNG files of ``count`` images written to the folder ``output``."""
    width = len(str(count - 1))
    return [Path(output) / f"{i:0{width}d}.png" for i in range(count)]


def check_images_output(output: str | os.PathLike, force: bool, inputs=(), count: int | None = None) -> None:
    """Refuse an output of :func:`write_images` before any image is generated: an unknown
    kind, an existing file without ``force``, an input of the command, a folder that cannot
    be written (for a folder: any of the ``count`` files that exists, without ``force``)."""
    from nsn_cli.files import InputFiles, check_output_path, check_writable

    if not is_folder_output(output):
        if Path(output).suffix.lower() not in GRID_SUFFIXES + ARRAY_SUFFIXES + H5_SUFFIXES:
            raise NsnError(f"{output}: unknown output kind; use .png, .npz, .npy, .h5, or a folder ending in /")
        check_output_path(output, force, inputs)
        return
    folder = Path(output)
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the folder and missing parents are made
        existing = existing.parent
    if not existing.is_dir():
        raise NsnError(f"{output}: {existing} is a file, not a folder")
    check_writable(folder if folder.is_dir() else existing, output)
    if count is not None and folder.is_dir():
        inputs = InputFiles.of(inputs)
        for target in folder_targets(folder, count):
            if target.exists() and not force:
                raise NsnError(f"{target}: already exists (use --force to overwrite)")
            if target in inputs:
                raise NsnError(f"{target}: is also an input of this command; write the output to another folder")


def sample_shape(model: NSNModel, layer: int) -> tuple[int, int, int]:
    """(H, W, C) of a sample generated from ``layer``: its receptive field."""
    from nsn_cli.engine.geometry import receptive_field

    side = receptive_field(model.arch[:layer])
    return side, side, model.image_shape[2]


def decode_bytes(model: NSNModel, layer: int) -> int:
    """Bytes of one sample's float32 maps F[layer] .. F[0] while it is decoded from ``layer``."""
    side = sample_shape(model, layer)[0]
    return 4 * sum(int(np.prod(model.map_shape(level, side, side))) for level in range(layer + 1))


def check_room(output: str | os.PathLike, n: int, shape: tuple[int, int, int], held: int = 0,
               streamable: bool = True) -> None:
    """Refuse ``n`` samples of ``shape`` (H, W, C) whose output cannot fit, before generating:
    a .png grid or a .npz array is built in memory (float32 images, and for a grid a float32
    and a uint8 copy), an .h5 or .npy file is written batch by batch; every kind needs its
    size on the disk (a compressed one at least :data:`LEAST_COMPRESSED_BYTES` per value).
    ``held``: bytes per sample the generator holds besides its output (0 when it works in
    batches). ``streamable``: whether an .h5/.npy output would be written batch by batch."""
    from nsn_cli.capacity import check_disk, check_memory, format_bytes

    values = n * int(np.prod(shape))
    suffix = Path(output).suffix.lower()
    what = f"{n:,} samples of {'x'.join(map(str, shape))}"
    if is_folder_output(output) or suffix not in (*H5_SUFFIXES, ".npy") or not streamable:
        memory = 4 * values + n * held + (5 * values if suffix in GRID_SUFFIXES else 0)
        hint = "write them to a .h5 or .npy file (written batch by batch), or lower -n" if streamable else "lower -n"
        check_memory(memory, what, hint)
    if is_folder_output(output):
        least = values + 100 * n  # a PNG per sample: 8-bit pixels and headers
    elif suffix == ".npy":
        least = 4 * values
    elif suffix in GRID_SUFFIXES:
        least = values // 16
    else:
        least = int(values * LEAST_COMPRESSED_BYTES)
    check_disk(output, least, f"{what} ({format_bytes(4 * values)} as float32)")


def encode_image(image: np.ndarray, suffix: str = ".png") -> bytes:
    """An image file's bytes, made in memory: the file itself is written in one plain write,
    so a failed write is one OSError (imageio writing the file would fail again on closing).

    Ctrl-C waits for the encoder to finish, then is raised: one arriving inside it left a
    half-made imageio plugin whose destructor printed a traceback at exit."""
    import imageio.v3 as iio

    with interrupts.held():
        data = iio.imwrite("<bytes>", image, extension=suffix)
    interrupts.check()
    return data


def write_images(images: np.ndarray, output: str | os.PathLike, *, columns: int | None = None,
                 force: bool = False, inputs=()) -> Written:
    """Write samples: ``.png``/``.jpg`` grid, ``.npz``/``.npy``/``.h5`` arrays, or a folder of PNGs
    (a path ending in ``/`` or an existing folder). Every file is written atomically; a folder
    write that fails (a full disk, Ctrl-C) removes the PNGs it had added. ``inputs``: files
    the output must not be (see :func:`check_images_output`)."""
    from nsn_cli.files import atomic_path

    check_images_output(output, force, inputs, len(images))
    if is_folder_output(output):
        return _write_folder(images, Path(output))
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix in H5_SUFFIXES:
        from nsn_cli.files import write_dataset

        write_dataset(output, images, "nsn sample")
        return Written(output, "nsn data set", len(images))
    with atomic_path(output) as temp:
        if suffix in GRID_SUFFIXES:
            # a single image is written as it is, a batch as a grid with 1-pixel gaps
            temp.write_bytes(encode_image(image_grid(images, columns, pad=0 if len(images) == 1 else 1), suffix))
            kind = "grid"
        elif suffix == ".npz":
            with open(temp, "wb") as handle:
                np.savez_compressed(handle, images=images)
            kind = "array (npz)"
        else:
            with open(temp, "wb") as handle:
                np.save(handle, images)
            kind = "array (npy)"
    return Written(output, kind, len(images))


def _write_folder(images: np.ndarray, folder: Path) -> Written:
    """One PNG per image in ``folder`` (made if missing), each written atomically; on any
    failure the PNGs this call added (and the folders it made) are removed again."""
    from nsn_cli.files import atomic_path

    made = [p for p in (folder, *folder.parents) if not p.exists()]
    added: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for image, target in zip(images, folder_targets(folder, len(images))):
            new = not target.exists()
            with atomic_path(target) as temp:
                temp.write_bytes(encode_image(image_grid(image[None], 1, pad=0)))
            if new:
                added.append(target)
    except BaseException:
        for path in added:
            path.unlink(missing_ok=True)
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return Written(folder, "folder of PNGs", len(images))


def stream_to_npy(output: str | os.PathLike, n: int, force: bool, generate_into: Callable, inputs=()) -> Written:
    """Write ``n`` samples to a ``.npy`` file batch by batch (atomic, locked against a second
    writer): the array is never held whole, and each batch is written while it is in cache.
    Plain writes after the header rather than a memory map, so a full disk is an error on the
    write that meets it (a mapped page past the disk's end would kill the process instead).

    ``generate_into(sink)`` must call ``sink(first_index, images)`` for consecutive batches."""
    from numpy.lib import format as npy_format

    from nsn_cli.files import atomic_path, check_output_path, output_lock

    output = check_output_path(output, force, inputs)
    with output_lock(output), atomic_path(output) as temp, open(temp, "wb") as handle:
        state = {"next": 0}

        def sink(first: int, images: np.ndarray) -> None:
            if first != state["next"]:
                raise ValueError(f"batches must come in order: expected sample {state['next']}, got {first}")
            if first == 0:
                header = {"descr": npy_format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (n,) + images.shape[1:]}
                npy_format.write_array_header_1_0(handle, header)
            handle.write(np.ascontiguousarray(images, dtype=np.float32).data)  # the array's memory, not a copy
            state["next"] = first + len(images)
            interrupts.check()

        generate_into(sink)
    return Written(output, "array (npy)", n)


def stream_to_h5(output: str | os.PathLike, n: int, force: bool, generate_into: Callable, inputs=()) -> Written:
    """Write ``n`` samples to an nsn data set file batch by batch (bounded memory, atomic,
    locked against a second writer).

    ``generate_into(sink)`` must call ``sink(first_index, images)`` for consecutive batches.
    """
    from nsn_cli.files import check_output_path, dataset_output, output_lock

    output = check_output_path(output, force, inputs)
    with output_lock(output), dataset_output(output, n, "nsn sample") as out:
        generate_into(out.write)  # a full disk or Ctrl-C stops at the batch that meets it
    return Written(output, "nsn data set (streamed)", n)
