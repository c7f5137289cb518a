"""``nsn train``: layer-wise non-parametric EM with an atomic checkpoint after every layer."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numba
import numpy as np

from nsn_cli import config as defaults
from nsn_cli.engine.em import FilterCapError, LayerFit, StepStats, fit_layer, fit_layer_to_count
from nsn_cli.engine.geometry import arch_string, check_reaches_one, default_arch, map_sizes, parse_arch, preset_name
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import ACTIVATIONS
from nsn_cli.errors import NsnError
from nsn_cli.files import check_output_path, fingerprint, load_images
from nsn_cli.model import Layer, NSNModel
from nsn_cli.top import compute_top_stats

#: alphas checked on MNIST-4k (SPEC.md), used when neither --alpha nor --filters is given.
DEFAULT_ALPHAS = {
    ("mnist", "sigmoid"): [-2.09, -2.04, -2.47],
    ("mnist", "relative"): [-2.09, -3.17, -3.82],
}
#: Otherwise a target filter count per layer (the paper's LFW counts for lfw64).
DEFAULT_TARGETS = {"lfw64": [284, 242, 240, 235, 161]}
FALLBACK_TARGET = 128


class TrainReporter(Protocol):
    """What ``train`` tells its caller while it runs (the CLI draws progress from it)."""

    def layer_start(self, layer: int, layers: int, patches: int, dims: int, resumed: bool) -> None: ...

    def iteration(self, layer: int, iteration: int, iterations: int, stats: StepStats) -> None: ...

    def probe(self, layer: int, alpha: float, count: float) -> None: ...

    def layer_done(self, layer: int, fitted: Layer) -> None: ...


class _Silent:
    def layer_start(self, *args) -> None: ...

    def iteration(self, *args) -> None: ...

    def probe(self, *args) -> None: ...

    def layer_done(self, *args) -> None: ...


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

    def as_config(self) -> dict:
        """The options that define the model (a resumed run must match them)."""
        return {
            "arch": self.arch, "alphas": self.alphas, "targets": self.targets,
            "iterations": self.iterations, "max_patches": self.max_patches,
            "max_filters": self.max_filters, "activation": self.activation, "seed": self.seed,
        }


def _validate(options: TrainOptions, layers: int) -> None:
    if options.iterations < 1:
        raise NsnError(f"--iterations must be at least 1, got {options.iterations}")
    if options.max_filters < 1:
        raise NsnError(f"--max-filters must be at least 1, got {options.max_filters}")
    if options.max_patches is not None and options.max_patches < 1:
        raise NsnError(f"--max-patches must be at least 1, got {options.max_patches}")
    if options.activation not in ACTIVATIONS:
        raise NsnError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {options.activation!r}")
    if options.alphas is not None and options.targets is not None:
        raise NsnError("give --alpha or --filters, not both")
    for name, values in (("--alpha", options.alphas), ("--filters", options.targets)):
        if values is not None and len(values) != layers:
            raise NsnError(f"{name}: {len(values)} values for an architecture of {layers} layers")
    if options.alphas is not None and not all(np.isfinite(options.alphas)):
        raise NsnError("--alpha values must be finite numbers")
    if options.targets is not None and any(t < 1 for t in options.targets):
        raise NsnError("--filters values must be at least 1")


def _choose_patches(n_images: int, positions: int, max_patches: int | None, seed: int, layer: int):
    """Images and positions of the patches EM sees: all, or a seeded uniform subsample."""
    total = n_images * positions
    if max_patches is None or max_patches >= total:
        return None, None
    rng = np.random.default_rng([seed, layer, 1])
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
) -> NSNModel:
    """Train every layer of an NSN on a data set; checkpoint ``output`` after each layer."""
    reporter = reporter or _Silent()
    output = Path(output)
    if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise NsnError(f"--threads must lie in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
    images, _labels, zca = load_images(data_path)
    n, height, width, channels = images.shape
    arch = parse_arch(options.arch or default_arch(height, width))
    options.arch = preset_name(arch) or arch_string(arch)
    check_reaches_one(arch, height, width)
    if options.alphas is None and options.targets is None:
        key = (options.arch, options.activation)
        if key in DEFAULT_ALPHAS:
            options.alphas = list(DEFAULT_ALPHAS[key])
        else:
            options.targets = list(DEFAULT_TARGETS.get(options.arch, [FALLBACK_TARGET] * len(arch)))
    _validate(options, len(arch))
    print_fp = fingerprint(images)
    config = options.as_config()

    model = None
    if resume and output.exists():
        model = NSNModel.load(output)
        if model.fingerprint != print_fp:
            raise NsnError(f"--resume: {output} was trained on other data (fingerprint {model.fingerprint}, this data set {print_fp})")
        if model.config != config:
            changed = sorted(k for k in config if model.config.get(k) != config[k])
            raise NsnError(f"--resume: {output} was trained with other options ({', '.join(changed)}); use --force to start over")
    else:
        check_output_path(output, force)
    if model is None:
        model = NSNModel(arch=arch, image_shape=(height, width, channels), activation=options.activation,
                         zca=zca, config=config, source=str(data_path), fingerprint=print_fp)

    previous_threads = numba.get_num_threads()
    try:
        if threads is not None:
            numba.set_num_threads(threads)
        maps = images
        sizes = map_sizes(arch, height, width)
        for index, shape in enumerate(arch, 1):
            done = index <= len(model.layers)
            h, w = sizes[index]
            if not done:
                image_idx, position = _choose_patches(n, h * w, options.max_patches, options.seed, index)
                patches = extract_patches(maps, shape.patch, shape.stride, image_idx, position)
                reporter.layer_start(index, len(arch), patches.shape[0], patches.shape[1], False)
                started = time.perf_counter()
                fitted = _fit(patches, index, options, reporter)
                layer = Layer(
                    shape=shape,
                    mu=fitted.mu.reshape(-1, shape.patch, shape.patch, maps.shape[-1]),
                    sigma=fitted.sigma, counts=fitted.counts, alpha=float(fitted.alpha),
                    history=fitted.history_table(), seconds=time.perf_counter() - started,
                    patches=int(patches.shape[0]),
                )
                del patches
                model.layers.append(layer)
                model.save(output)  # the checkpoint: atomic, so a kill leaves the last one intact
                reporter.layer_done(index, layer)
            else:
                reporter.layer_start(index, len(arch), 0, 0, True)
            if index < len(arch):
                maps = model.encode_layer(maps, index)
        if model.top is None:
            # maps is now F[L-1] of every training image: the top density's data
            top_layer = model.layers[-1]
            model.top = compute_top_stats(maps, top_layer.flat_mu, top_layer.sigma, options.seed)
            model.save(output)
    finally:
        numba.set_num_threads(previous_threads)
    return model


def _fit(patches: np.ndarray, index: int, options: TrainOptions, reporter: TrainReporter) -> LayerFit:
    seed = int(np.random.SeedSequence([options.seed, index]).generate_state(1)[0])

    def on_iteration(iteration: int, stats: StepStats) -> None:
        reporter.iteration(index, iteration, options.iterations, stats)

    try:
        if options.targets is not None:
            return fit_layer_to_count(
                patches, options.targets[index - 1], iterations=options.iterations, seed=seed,
                max_filters=options.max_filters, on_fit=lambda a, c: reporter.probe(index, a, c),
            )
        return fit_layer(patches, options.alphas[index - 1], iterations=options.iterations, seed=seed,
                         max_filters=options.max_filters, on_iteration=on_iteration)
    except FilterCapError as exc:
        raise NsnError(
            f"layer {index} grew to {exc.filters} filters, past --max-filters {exc.cap}; "
            f"use a lower alpha for layer {index} (it was {options.alphas[index - 1] if options.alphas else 'searched'}) "
            "or raise --max-filters"
        ) from None
