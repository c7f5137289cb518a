"""``nsn train``: layer-wise non-parametric EM with an atomic checkpoint after every layer."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import h5py
import numba
import numpy as np

from nsn_cli import config as defaults
from nsn_cli import interrupts, streams
from nsn_cli.calibrate import MAP_LAYER, calibrate_model, generated_images, map_data_bytes, map_data_values
from nsn_cli.engine.em import FilterCapError, LayerFit, StepStats, fit_layer, fit_layer_to_count, reference_scale
from nsn_cli.engine.encode import LayerPatches, encoded_chunks, encoded_maps
from nsn_cli.engine.geometry import arch_string, check_reaches_one, default_arch, map_sizes, parse_arch, preset_name
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import ACTIVATIONS
from nsn_cli.engine.stream import fit_layer_stream, fit_layer_stream_to_count
from nsn_cli.errors import Interrupted, NsnError, ParameterError, WriteError
from nsn_cli.files import check_output_path, fingerprint, load_images, open_dataset, output_lock, same_file
from nsn_cli.heap import set_heap_mode
from nsn_cli.memorise import check_model
from nsn_cli.memory_plan import (
    LayerPlan,
    after_layers_bytes,
    keep_maps,
    layer_bytes,
    map_bytes,
    plan_layer,
    plan_top,
    reuse_heap,
)
from nsn_cli.model import Layer, NSNModel
from nsn_cli.sample import decode_bytes
from nsn_cli.top import compute_top_stats

#: alphas checked on MNIST-4k (SPEC.md), used when neither --alpha nor --filters is given.
DEFAULT_ALPHAS = {
    ("mnist", "sigmoid"): [-2.09, -2.04, -2.47],
    ("mnist", "relative"): [-2.09, -3.17, -3.82],
}
#: Otherwise a target filter count per layer (the paper's LFW counts for lfw64).
DEFAULT_TARGETS = {"lfw64": [284, 242, 240, 235, 161]}
FALLBACK_TARGET = 128
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """``--memory``: bytes from "512M", "2G", "1.5G", "64k" (binary units) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ParameterError("memory", f"{{name}}: expected a size such as 512M, 2G or a number of bytes, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < defaults.MIN_MEMORY:
        raise ParameterError("memory", f"{{name}} {text.strip()} is below the minimum of {defaults.MIN_MEMORY >> 20}M: "
                             f"nsn itself (Python, numba, HDF5) takes about {defaults.PROCESS_RESERVE >> 20}M of the budget")
    return value


def working_memory(budget: int) -> int:
    """Bytes left for data from a whole-process ``--memory`` budget (less the process's own)."""
    if budget < defaults.MIN_MEMORY:
        raise ParameterError(
            "memory",
            f"{{name}} {budget / (1 << 20):.0f}M is below the minimum of {defaults.MIN_MEMORY >> 20}M: "
            f"nsn itself (Python, numba, HDF5) takes about {defaults.PROCESS_RESERVE >> 20}M of the budget"
        )
    return budget - defaults.PROCESS_RESERVE


class TrainReporter(Protocol):
    """What ``train`` tells its caller while it runs (the CLI draws progress from it)."""

    def layer_start(self, layer: int, layers: int, patches: int, dims: int, resumed: bool) -> None: ...

    def iteration(self, layer: int, iteration: int, iterations: int, stats: StepStats) -> None: ...

    def pass_progress(self, layer: int, iteration: int, iterations: int, done: int, total: int,
                      filters: int) -> None: ...

    def probe(self, layer: int, alpha: float, count: float) -> None: ...

    def layer_done(self, layer: int, fitted: Layer) -> None: ...

    def top_start(self, images: int) -> None: ...

    def step(self, name: str, done: int, total: int) -> None:
        """Progress of a step outside the layers' EM (the top-layer statistics, calibration)."""

    def note(self, text: str) -> None:
        """Something the user should know about the model (a capped layer, memorisation)."""


class _Silent:
    def layer_start(self, *args) -> None: ...

    def iteration(self, *args) -> None: ...

    def pass_progress(self, *args) -> None: ...

    def probe(self, *args) -> None: ...

    def layer_done(self, *args) -> None: ...

    def top_start(self, *args) -> None: ...

    def step(self, *args) -> None: ...

    def note(self, *args) -> None: ...


@dataclass
class TrainOptions:
    arch: str | None = None
    alphas: list[float] | None = None
    targets: list[int] | None = None
    iterations: int = defaults.ITERATIONS
    max_patches: int | None = None
    max_filters: int = defaults.MAX_FILTERS
    activation: str = "sigmoid"
    seed: int = 0
    reference_images: int = defaults.REFERENCE_IMAGES

    def as_config(self) -> dict:
        """The options that define the model (a resumed run must match them)."""
        return {
            "arch": self.arch, "alphas": self.alphas, "targets": self.targets,
            "iterations": self.iterations, "max_patches": self.max_patches,
            "max_filters": self.max_filters, "activation": self.activation, "seed": self.seed,
            "reference_images": self.reference_images,
        }


def _validate(options: TrainOptions, layers: int) -> None:
    if options.iterations < 1:
        raise ParameterError("iterations", f"must be at least 1, got {options.iterations}")
    if options.max_filters < 1:
        raise ParameterError("max_filters", f"must be at least 1, got {options.max_filters}")
    if options.max_patches is not None and options.max_patches < 1:
        raise ParameterError("max_patches", f"must be at least 1, got {options.max_patches}")
    if options.reference_images < 0:
        raise ParameterError("reference_images",
                             f"must be at least 0 (0: the paper's EM), got {options.reference_images}")
    if options.activation not in ACTIVATIONS:
        raise ParameterError("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {options.activation!r}")
    if options.alphas is not None and options.targets is not None:
        raise ParameterError("alpha", "give {name} or {filters}, not both", others=("filters",))
    for name, values in (("alpha", options.alphas), ("filters", options.targets)):
        if values is not None and len(values) != layers:
            raise ParameterError(name, f"{{name}}: {len(values)} values for an architecture of {layers} layers")
    if options.alphas is not None and not all(np.isfinite(options.alphas)):
        raise ParameterError("alpha", "values must be finite numbers")
    if options.targets is not None and any(t < 1 for t in options.targets):
        raise ParameterError("filters", "values must be at least 1")


def filter_cap(top: bool, images: int, patches: int) -> int:
    """Most filters a layer fitted with the default alphas may keep (config.MIN_FILTER_PATCHES,
    config.TOP_MIN_IMAGES): a filter's mean must summarise several patches, or decoding pastes
    training patches back together; a top filter must hold several images for the top density
    to mix. Only small data sets reach it (80 faces: 254 -> 33 and 39 -> 7 filters)."""
    if top:
        return max(1, images // defaults.TOP_MIN_IMAGES)
    return max(1, patches // defaults.MIN_FILTER_PATCHES)


def _cap_unit(top: bool) -> str:
    return f"{defaults.TOP_MIN_IMAGES} images" if top else f"{defaults.MIN_FILTER_PATCHES} patches"


def _choose_patches(n_images: int, positions: int, max_patches: int | None, seed: int, layer: int):
    """Images and positions of the patches EM sees: all, or a seeded uniform subsample."""
    total = n_images * positions
    if max_patches is None or max_patches >= total:
        return None, None
    rng = np.random.default_rng([seed, layer, streams.TRAIN_PATCHES])
    chosen = np.sort(rng.choice(total, size=max_patches, replace=False))
    return chosen // positions, chosen % positions


def train(
    data_path: str | os.PathLike,
    output: str | os.PathLike,
    options: TrainOptions,
    *,
    resume: bool = False,
    force: bool = False,
    threads: int | None = None,
    reporter: TrainReporter | None = None,
    memory: int | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    tune_malloc: bool = False,
    source: str | None = None,
) -> NSNModel:
    """Train every layer of an NSN on a data set; checkpoint ``output`` after each layer.

    memory: bytes for data (``--memory`` less :data:`~nsn_cli.config.PROCESS_RESERVE`, see
    :func:`working_memory`). A layer whose working set fits in it is trained in memory as
    without a budget; a larger one is streamed (:mod:`nsn_cli.engine.stream`): images are
    read from ``data_path`` in chunks and encoded through the layers below on every pass, and
    the patches' labels go to a temporary file beside ``output`` when they would take more
    than an eighth of the budget. The top-layer statistics are gathered the same way.
    None: everything in memory. A resumed run may use another budget (say, after running
    out of memory); each layer records the chunk size it was trained with.
    workers, dask_address: run the streamed layers' chunk E-steps on a local Dask cluster of
    that many processes, or on the scheduler at that address (same bits as locally).
    tune_malloc: with a budget, change glibc's malloc for the rest of the process, layer by
    layer as the memory plan says: freed chunks leave it, or (a layer that fits twice over)
    stay for reuse (:mod:`nsn_cli.heap`). For a process that is this train (the CLI), never
    for a library caller's process (no setting of it can be restored).
    source: what the model records it was trained on (default: ``data_path``).
    """
    output = Path(output)
    if resume and output.exists():
        if same_file(output, data_path):
            raise NsnError(f"{output}: is the data set; write the model to another file")
    else:
        check_output_path(output, force, [data_path])  # before any data is read
    with output_lock(output):  # a second train (or prep, sample) writing the same file is refused
        return _train(data_path, output, options, resume=resume, force=force, threads=threads, reporter=reporter,
                      memory=memory, workers=workers, dask_address=dask_address, tune_malloc=tune_malloc,
                      source=source)


def _train(data_path, output: Path, options: TrainOptions, *, resume: bool, force: bool, threads: int | None,
           reporter: TrainReporter | None, memory: int | None, workers: int | None,
           dask_address: str | None, tune_malloc: bool, source: str | None) -> NSNModel:
    """:func:`train` once its output is checked and locked."""
    options = replace(options)  # defaults are filled in below; the caller's options stay as given
    reporter = reporter or _Silent()
    output = Path(output)
    tune_heap = memory is not None and tune_malloc
    if tune_heap:
        set_heap_mode("return")  # until a layer's plan says its memory may be kept for reuse
    if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ParameterError("threads", f"must lie in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
    if memory is None:
        images, _labels, zca = load_images(data_path)
        n, height, width, channels = images.shape
    else:
        with open_dataset(data_path) as dataset:
            (n, height, width, channels), zca = dataset.shape, dataset.zca
        images = None
    arch = parse_arch(options.arch or default_arch(height, width))
    options.arch = preset_name(arch) or arch_string(arch)
    check_reaches_one(arch, height, width)
    defaulted = options.alphas is None and options.targets is None  # the cap below guards defaults only
    if options.alphas is None and options.targets is None:
        key = (options.arch, options.activation)
        if key in DEFAULT_ALPHAS:
            options.alphas = list(DEFAULT_ALPHAS[key])
        else:
            options.targets = list(DEFAULT_TARGETS.get(options.arch, [FALLBACK_TARGET] * len(arch)))
    _validate(options, len(arch))
    sizes = map_sizes(arch, height, width)
    first_patches = n * sizes[1][0] * sizes[1][1]
    if options.max_patches is not None:
        first_patches = min(first_patches, options.max_patches)
    if memory is not None and layer_bytes(n, map_bytes(sizes, [channels])[0], arch[0].patch**2 * channels,
                                          first_patches) <= memory:
        images, _labels, zca = load_images(data_path)  # layer 1 fits: all images in memory
    if images is not None:
        print_fp = fingerprint(images)
    else:
        with open_dataset(data_path) as dataset:
            print_fp = fingerprint(dataset.images)
    config = options.as_config()

    model = None
    if resume and output.exists():
        model = NSNModel.load(output)
        if model.fingerprint != print_fp:
            raise ParameterError("resume", f"{{name}}: {output} was trained on other data (fingerprint {model.fingerprint}, this data set {print_fp})")
        stored = dict(model.config)
        if "reference_images" not in stored:  # written before the option: the paper's EM, the same at <= reference
            stored["reference_images"] = config["reference_images"] if n <= options.reference_images else 0
        if stored != config:
            changed = sorted(k for k in config if stored.get(k) != config[k])
            raise ParameterError("resume", f"{{name}}: {output} was trained with other options ({', '.join(changed)}); "
                                 "use {force} to start over", others=("force",))
    else:
        check_output_path(output, force)
    if model is None:
        model = NSNModel(arch=arch, image_shape=(height, width, channels), activation=options.activation,
                         zca=zca, config=config, source=source or str(data_path), fingerprint=print_fp)

    previous_threads = numba.get_num_threads()
    stack = contextlib.ExitStack()
    saved = len(model.layers)  # layers in the output file as it is now
    try:
        if workers is not None or dask_address is not None:
            from nsn_cli.dask_backend import dask_client

            client = stack.enter_context(dask_client(workers, dask_address))
        else:
            client = None
        if threads is not None:
            numba.set_num_threads(threads)
        maps = images  # F[index - 1] of every image, or None while streaming
        map_data = None  # what the calibration keeps of F[MAP_LAYER] of every image, once encoded
        for index, shape in enumerate(arch, 1):
            interrupts.check()
            done = index <= len(model.layers)
            h, w = sizes[index]
            if not done:
                image_idx, position = _choose_patches(n, h * w, options.max_patches, options.seed, index)
                n_patches = n * h * w if image_idx is None else int(image_idx.size)
                in_channels = channels if index == 1 else model.layers[index - 2].filters
                dims = shape.patch * shape.patch * in_channels
                plan = plan_layer(memory, n, _map_bytes(model, sizes), dims, n_patches, maps is not None)
                if tune_heap:
                    set_heap_mode("reuse" if plan.reuse_heap else "return")
                if not plan.streamed:
                    reporter.layer_start(index, len(arch), n_patches, dims, False)  # before the patches are cut
                    maps = _input_maps(plan, maps, data_path, model, index - 1)
                    patches = extract_patches(maps, shape.patch, shape.stride, image_idx, position)
                    started = time.perf_counter()
                    fitted = _fit(index, options, reporter, h * w, patches=patches)
                    cap = filter_cap(index == len(arch), n, patches.shape[0])
                    if defaulted and fitted.mu.shape[0] > cap:
                        reporter.note(
                            f"layer {index}: {fitted.mu.shape[0]} filters for {patches.shape[0]:,} patches would copy "
                            f"training images; refitted to {cap}, at least {_cap_unit(index == len(arch))} each "
                            "(--alpha or --filters choose for you)")
                        fitted = _fit(index, replace(options, alphas=None, targets=[cap] * len(arch)), reporter,
                                      h * w, patches=patches)
                    del patches
                else:
                    maps = _input_maps(plan, maps, data_path, model, index - 1)
                    label_dir = output.parent if plan.labels_on_disk else None
                    source = LayerPatches(str(Path(data_path).resolve()),  # a Dask worker has its own cwd
                                          model, index - 1, shape.patch, shape.stride, n, plan.chunk, image_idx,
                                          position, maps=maps)
                    reporter.layer_start(index, len(arch), n_patches, dims, False)
                    started = time.perf_counter()
                    fitted = _fit(index, options, reporter, h * w, source=source, n_patches=n_patches,
                                  client=client if maps is None else None, label_dir=label_dir)
                layer = Layer(
                    shape=shape,
                    mu=fitted.mu.reshape(-1, shape.patch, shape.patch, in_channels),
                    sigma=fitted.sigma, counts=fitted.counts, alpha=float(fitted.alpha),
                    history=fitted.history_table(), seconds=time.perf_counter() - started,
                    patches=n_patches, chunk=plan.chunk,
                )
                del fitted
                model.layers.append(layer)
                saved = _checkpoint(model, output, saved)  # atomic: a kill leaves the last one intact
                reporter.layer_done(index, layer)
            else:
                reporter.layer_start(index, len(arch), 0, 0, True)
            if index < len(arch) and maps is not None:
                if keep_maps(memory, maps.nbytes, n * _map_bytes(model, sizes)[index]):
                    maps = model.encode_layer(maps, index, progress=functools.partial(
                        reporter.step, f"encoding with layer {index}"))
                    if index == MAP_LAYER and zca is None and model.calibration is None and \
                            (memory is None or MAP_DATA_SHARE * map_data_bytes(model.layers[index - 1].filters) <= memory):
                        map_data = map_data_values(maps)  # the calibration's training side, while at hand
                else:
                    maps = None
        if tune_heap:  # the top statistics and the calibration have a working set of their own
            held = 0 if maps is None else maps.nbytes
            set_heap_mode("reuse" if reuse_heap(memory, after_layers_bytes(
                n, held, model.layers[-1].flat_mu.shape[1], decode_bytes(model, len(model.layers)))) else "return")
        if model.top is None:
            reporter.top_start(n)
            model.top = _top_stats(data_path, model, sizes, n, maps, memory, options.seed,
                                   functools.partial(reporter.step, TOP_STEP))
            reporter.step(SAVE_STEP, 0, 1)  # tens of MB of top statistics
            _checkpoint(model, output, saved)
            reporter.step(SAVE_STEP, 1, 1)
        if model.calibration is None:
            del maps  # the calibration samples in batches; F[L-1] is no longer needed
            done = [0]

            def advance(count: int) -> None:
                interrupts.check()
                done[0] += count
                reporter.step(CALIBRATION_STEP, done[0], generated_images(model))

            model.calibration = calibrate_model(model, data_path, progress=advance, map_data=map_data)
            check = check_model(model, data_path)
            model.memorisation = {"near_copies": check.samples, "near_copies_real": check.reference}
            if check.memorises:
                reporter.note(check.message())
            _checkpoint(model, output, saved)
    except KeyboardInterrupt:
        raise Interrupted(_kept(output, saved, len(arch))) from None
    finally:
        stack.close()
        numba.set_num_threads(previous_threads)
    return model


#: The calibration's share of F[MAP_LAYER] (:func:`~nsn_cli.calibrate.map_data_values`) is held
#: from that layer's encoding to the end when it takes at most 1 / MAP_DATA_SHARE of the budget.
MAP_DATA_SHARE = 16

#: The names :meth:`TrainReporter.step` reports the top-layer statistics, the save after them
#: and the pixel calibration under.
TOP_STEP = "top statistics"
SAVE_STEP = "saving the model"
CALIBRATION_STEP = "calibration"


def _kept(output: Path, saved: int, layers: int) -> str:
    """What ``output`` holds when a train stops with ``saved`` of ``layers`` checkpointed, and
    how to go on."""
    if saved == 0:
        return f"nothing was written to {output}"
    if saved < layers:
        return f"{output} keeps {saved} of {layers} completed layers; continue with the same command and --resume"
    missing = "the top-layer statistics"
    with contextlib.suppress(OSError):  # the file is the truth: what its last checkpoint holds
        with h5py.File(output, "r") as handle:
            if "top" in handle:
                missing = "the calibration"
    return f"{output} keeps all {layers} layers but not {missing}; finish with the same command and --resume"


def _checkpoint(model: NSNModel, output: Path, saved: int) -> int:
    """Save ``model`` to ``output``; return the layers now in the file. A failed write says
    what the file still holds (``saved`` layers, from the last checkpoint)."""
    try:
        model.save(output)
    except WriteError as exc:
        raise NsnError(f"{output}: cannot write: {exc.reason}; {_kept(output, saved, len(model.arch))}") from None
    return len(model.layers)


def _top_stats(data_path, model: NSNModel, sizes, n: int, maps: np.ndarray | None, memory: int | None,
               seed: int, progress) -> dict:
    """The top density's statistics of F[L-1] of every image: from ``maps`` if they are in
    memory, else encoded chunk by chunk from the file, with as many members as fit.
    progress(done, total) as :func:`~nsn_cli.top.compute_top_stats` calls it."""
    top = model.layers[-1]
    below = len(model.layers) - 1
    if maps is not None:
        return compute_top_stats([maps], n, top.flat_mu, top.sigma, seed, progress=progress)
    plan = plan_top(memory, n, _map_bytes(model, sizes)[: below + 1], top.flat_mu.shape[1])
    return compute_top_stats(encoded_chunks(data_path, model, below, plan.chunk), n, top.flat_mu, top.sigma, seed,
                             max_members=plan.members, progress=progress)


def _input_maps(plan: LayerPlan, maps: np.ndarray | None, data_path, model: NSNModel, below: int
                ) -> np.ndarray | None:
    """F[below] of every image as ``plan`` holds them: ``maps`` if in memory already, else
    encoded from the file; None when the plan does not hold them."""
    if not plan.hold_maps:
        return None
    return maps if maps is not None else encoded_maps(data_path, model, below, plan.encode_chunk)


def _map_bytes(model: NSNModel, sizes) -> list[int]:
    """Bytes of one image's maps F[0..] for the layers trained so far (:func:`~nsn_cli.memory_plan.map_bytes`)."""
    return map_bytes(sizes, [model.image_shape[2]] + [layer.filters for layer in model.layers])



def _fit(index: int, options: TrainOptions, reporter: TrainReporter, positions: int, *,
         patches: np.ndarray | None = None, source: LayerPatches | None = None, n_patches: int = 0, client=None,
         label_dir=None) -> LayerFit:
    """Fit layer ``index`` on ``patches`` in memory, or streamed from ``source`` (its chunk
    E-steps on the Dask ``client`` if given, its labels in a temporary file in ``label_dir``
    if given)."""
    seed = int(np.random.SeedSequence([options.seed, index]).generate_state(1)[0])

    def on_iteration(iteration: int, stats: StepStats) -> None:
        interrupts.check()  # a Ctrl-C held while numba loaded its kernels (see nsn_cli.interrupts)
        reporter.iteration(index, iteration, options.iterations, stats)

    def on_fit(alpha: float, count: float) -> None:
        interrupts.check()
        reporter.probe(index, alpha, count)

    def on_progress(iteration: int, done: int, filters: int) -> None:
        reporter.pass_progress(index, iteration, options.iterations, done, n_patches, filters)

    n_patches = n_patches if patches is None else patches.shape[0]
    common = {"iterations": options.iterations, "seed": seed, "max_filters": options.max_filters,
              "share": reference_scale(options.reference_images, n_patches, positions),
              "on_iteration": on_iteration}
    try:
        if patches is not None and options.targets is not None:
            return fit_layer_to_count(patches, options.targets[index - 1], on_fit=on_fit, **common)
        if patches is not None:
            return fit_layer(patches, options.alphas[index - 1], **common)
        if client is not None:
            from nsn_cli.dask_backend import dask_runner

            common["runner"] = dask_runner(client, source)
        common["label_dir"] = label_dir
        if options.targets is not None:
            return fit_layer_stream_to_count(source, n_patches, options.targets[index - 1], on_fit=on_fit, **common)
        return fit_layer_stream(source, n_patches, options.alphas[index - 1], on_progress=on_progress, **common)
    except FilterCapError as exc:
        raise ParameterError(
            "max_filters",
            f"layer {index} grew to {exc.filters} filters{exc.when()}, past {{name}} {exc.cap}; "
            f"use a lower alpha for layer {index} (it was {options.alphas[index - 1] if options.alphas else 'searched'}) "
            "or raise {name}"
        ) from None
