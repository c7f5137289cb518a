"""An NSN: its layers, encode (up) and decode (down), and its versioned model file.

Model file layout (``encoding-type = "nsn-model"``, version 2; version 1 files load too)::

    attrs: encoding-type, encoding-version, nsn-version, created, source,
           arch, activation, image-shape (H, W, C), layers-complete, dataset-fingerprint
    /config                JSON: every training option, so a run can be resumed or repeated
    /layers/<l>/mu         (K, p, p, C_in) float32     filter means (l = 1..L)
    /layers/<l>/sigma      (K,) float64
    /layers/<l>/counts     (K,) int64                  patches per filter after the last M-step
    /layers/<l>            attrs: alpha, patch, stride, seconds, patches, chunk (images per
                           chunk if trained streamed under --memory, 0 if in memory)
    /layers/<l>/history/*  per EM iteration: filters, created, dropped, merged, changed, mean_sim, seconds
    /zca/{mean,whiten,unwhiten}   the data set's preprocessing, so outputs are de-whitened
    /top/...               optional top-layer statistics for the density priors (top.TopStats),
                           uncompressed (see NSNModel.save)
    /calibration/...       optional calibration of NSN-Gen's layer-1 maps and pixels (see calibrate.py)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from nsn_cli import config
from nsn_cli.calibrate import Calibration
from nsn_cli.engine.decode import decode_maps
from nsn_cli.engine.encode import encoded_levels
from nsn_cli.engine.geometry import LayerShape, arch_string, map_sizes, parse_arch
from nsn_cli.engine.lut import ChannelMap
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import similarity
from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.files import MODEL_TYPE, atomic_h5, open_nsn_file, stamp
from nsn_cli.streams import decode_stream
from nsn_cli.top import TopStats
from nsn_cli.zca import Zca

HISTORY_KEYS = ("filters", "created", "dropped", "merged", "changed", "mean_sim", "seconds")
NOISE_LAYERS = ("all", "pixel")
NOISE_SCALES = ("rms", "dim")


@dataclass
class Layer:
    """One trained layer: ``mu`` (K, p, p, C_in), ``sigma`` (K,), ``counts`` (K,)."""

    shape: LayerShape
    mu: np.ndarray
    sigma: np.ndarray
    counts: np.ndarray
    alpha: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    patches: int = 0
    chunk: int = 0  # images per chunk if the layer was trained streamed, 0 if in memory

    @property
    def filters(self) -> int:
        return int(self.mu.shape[0])

    @property
    def flat_mu(self) -> np.ndarray:
        return self.mu.reshape(self.mu.shape[0], -1)

    @property
    def in_channels(self) -> int:
        return int(self.mu.shape[-1])


@dataclass
class DecodeParams:
    """NSN-Gen hyper-parameters (paper section 4.2; defaults from SPEC.md).

    draws: the paper's multinomial draws n per position in the hidden layers; 0 is their limit
    for many draws, the expected weights (deterministic given the maps). pixel_draws: the same
    at layer 1, the step that writes pixels (None: as ``draws``). ``draws = None``: after a
    top-density prior (mix, pca, knn: its randomness makes samples differ) the expected
    weights in the hidden layers and one draw at the pixels; elsewhere (one-hot and normal top
    vectors, style) one draw everywhere, the multinomial then being what makes samples differ;
    see :meth:`resolved` and config.SAMPLE_DRAWS."""

    delta1: float = config.DELTA1
    delta2: float = config.DELTA2
    delta3: float = config.DELTA3
    draws: int | None = config.DRAWS
    noise_layers: str = config.NOISE_LAYERS
    noise_scale: str = config.NOISE_SCALE
    pixel_draws: int | None = None

    @classmethod
    def for_sampling(cls, **overrides) -> DecodeParams:
        """The measured defaults of ``nsn sample`` (config.SAMPLE_*), with overrides."""
        return cls(**{"delta1": config.SAMPLE_DELTA1, "delta3": config.SAMPLE_DELTA3, "draws": None, **overrides})

    def resolved(self, density_prior: bool = False) -> DecodeParams:
        """``draws = None`` made concrete (see the class), ``pixel_draws = None`` too."""
        if self.draws is None:
            hidden, pixel = config.SAMPLE_DRAWS if density_prior else (config.DRAWS, config.DRAWS)
            return replace(self, draws=hidden, pixel_draws=pixel if self.pixel_draws is None else self.pixel_draws)
        return self if self.pixel_draws is not None else replace(self, pixel_draws=self.draws)

    def draws_at(self, layer: int) -> int:
        """The draws of the step that decodes layer ``layer`` (1 writes the pixels)."""
        resolved = self.resolved()
        return resolved.pixel_draws if layer == 1 else resolved.draws

    def validate(self) -> DecodeParams:
        if not np.isfinite(self.delta1) or self.delta1 < 0:
            raise ParameterError("delta1", f"must be a finite number >= 0, got {self.delta1}")
        if not np.isfinite(self.delta2) or self.delta2 < 0:
            raise ParameterError("delta2", f"must be a finite number >= 0, got {self.delta2}")
        if not np.isfinite(self.delta3) or self.delta3 <= 0:
            raise ParameterError("delta3", f"must be a finite number > 0, got {self.delta3}")
        for name in ("draws", "pixel_draws"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ParameterError(name, f"must be at least 0 (0: the expected weights), got {value}")
        if self.noise_layers not in NOISE_LAYERS:
            raise ParameterError("noise_layers", f"must be one of {', '.join(NOISE_LAYERS)}, got {self.noise_layers!r}")
        if self.noise_scale not in NOISE_SCALES:
            raise ParameterError("noise_scale", f"must be one of {', '.join(NOISE_SCALES)}, got {self.noise_scale!r}")
        return self


@dataclass
class NSNModel:
    """A (possibly partly) trained NSN."""

    arch: list[LayerShape]
    image_shape: tuple[int, int, int]
    activation: str = "sigmoid"
    layers: list[Layer] = field(default_factory=list)
    zca: Zca | None = None
    config: dict = field(default_factory=dict)
    source: str = ""
    fingerprint: str = ""
    top: TopStats | None = None
    calibration: Calibration | None = None
    #: ``train``'s memorisation check: near-copy fractions of samples and of real images
    memorisation: dict | None = None
    #: Values derived from the model once and reused (e.g. its decoded top members); not saved
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ shape facts

    @property
    def complete(self) -> bool:
        return len(self.layers) == len(self.arch)

    def map_shape(self, level: int, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """Shape (h, w, C) of ``F[level]`` for an input of the given (default: training) size."""
        h, w, c = self.image_shape
        sizes = map_sizes(self.arch, height or h, width or w)
        channels = c if level == 0 else self.layers[level - 1].filters
        return sizes[level][0], sizes[level][1], channels

    def check_layer(self, layer: int) -> None:
        """Refuse a layer number outside 1..(trained layers)."""
        if not self.layers:
            raise NsnError("the model has no trained layer yet; run nsn train (with --resume) first")
        if not 1 <= layer <= len(self.layers):
            extra = "" if self.complete else f" (trained {len(self.layers)} of {len(self.arch)})"
            raise ParameterError("layer", f"{{name}} {layer} does not exist: the model has layers 1..{len(self.layers)}{extra}")

    # ------------------------------------------------------------------ up

    def encode_layer(self, maps: np.ndarray, layer: int, chunk: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``F[layer]`` from ``F[layer-1]`` (N, H, W, C_in): (N, h, w, K) float32, in chunks;
        ``progress(done, N)`` after each."""
        spec = self.layers[layer - 1]
        n, height, width, channels = maps.shape
        if channels != spec.in_channels:
            raise NsnError(f"layer {layer} reads {spec.in_channels} channels, the input has {channels}")
        h = spec.shape.out_size(height)
        w = spec.shape.out_size(width)
        if h == 0 or w == 0:
            raise NsnError(f"a {height}x{width} input is smaller than layer {layer}'s {spec.shape.patch}x{spec.shape.patch} patch")
        out = np.empty((n, h, w, spec.filters), dtype=np.float32)
        # one patch buffer for every chunk: a fresh one each time was fresh memory to page in
        # where the heap returns freed memory (layer 2 of the digits: 16 x 33 MB)
        buffer = np.empty((min(chunk, n) * h * w, spec.flat_mu.shape[1]), dtype=np.float32)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            patches = extract_patches(maps[a:b], spec.shape.patch, spec.shape.stride, out=buffer)
            similarity(patches, spec.flat_mu, spec.sigma, self.activation, out=out[a:b].reshape(-1, spec.filters))
            if progress is not None:
                progress(b, n)
        return out

    def prepare_images(self, images: np.ndarray) -> np.ndarray:
        """Pixels in [0, 1] to the model's input space (ZCA-whitened if it was trained so)."""
        return self.zca.apply(images) if self.zca is not None else images.astype(np.float32, copy=False)

    def finish_images(self, maps: np.ndarray, calibrate: bool = True, raw: bool = False) -> np.ndarray:
        """``F[0]`` back to pixels: de-whiten (ZCA models), apply the pixel calibration (when
        the model has one and ``calibrate``), clip to [0, 1]. ``raw``: de-whitened only (what
        the calibration is fitted on)."""
        if self.zca is not None:
            maps = self.zca.invert(maps)
        if raw:
            return maps.astype(np.float32, copy=False)
        if calibrate and self.calibration is not None:
            maps = self.calibration.apply(maps)
        return np.clip(maps, 0.0, 1.0).astype(np.float32, copy=False)

    def encode(self, images: np.ndarray, upto: int | None = None, whitened: bool = False) -> list[np.ndarray]:
        """Maps ``[F[0], F[1], .., F[upto]]`` of images (N, H, W, C) in [0, 1]."""
        upto = len(self.layers) if upto is None else upto
        maps = [images if whitened else self.prepare_images(images)]
        maps.extend(encoded_levels(self, maps[0], upto))
        return maps

    # ------------------------------------------------------------------ down

    def decode_layer(
        self, maps: np.ndarray, layer: int, params: DecodeParams, *, seed: int, first_sample: int, stream: int,
        input_map: ChannelMap | None = None,
    ) -> np.ndarray:
        """One NSN-Gen step: ``F[layer-1]`` (N, H, W, C_in) from ``F[layer]`` (N, h, w, K), the
        latter through ``input_map`` first if given."""
        spec = self.layers[layer - 1]
        noisy = params.noise_layers == "all" or layer == 1
        scale = 1.0 if params.noise_scale == "rms" else 1.0 / np.sqrt(spec.flat_mu.shape[1])
        return decode_maps(
            maps, spec.flat_mu, spec.sigma * scale, patch=spec.shape.patch, stride=spec.shape.stride,
            channels=spec.in_channels, delta1=params.delta1, delta2=params.delta2 if noisy else 0.0,
            delta3=params.delta3, draws=params.draws_at(layer), seed=seed, first_sample=first_sample, stream=stream,
            input_map=input_map,
        )

    def decode(
        self,
        maps: np.ndarray,
        from_layer: int,
        params: DecodeParams,
        *,
        seed: int,
        first_sample: int = 0,
        stream: int = 0,
        to_layer: int = 0,
        calibrate: bool = False,
    ) -> np.ndarray:
        """Decode ``F[from_layer]`` down to ``F[to_layer]`` (raw maps; pixels need :meth:`finish_images`).

        calibrate: apply the calibration's map of decoded ``F[1]`` maps (if the model has one)
        where the decoding passes through them, as sampling does (see calibrate.py)."""
        from nsn_cli.calibrate import MAP_LAYER

        pending = None  # the map of the maps just decoded, applied as the next step reads them
        for layer in range(from_layer, to_layer, -1):
            maps = self.decode_layer(maps, layer, params, seed=seed, first_sample=first_sample,
                                     stream=decode_stream(layer, stream), input_map=pending)
            pending = None
            if calibrate and layer - 1 == MAP_LAYER and self.calibration is not None:
                pending = self.calibration.maps_channel_map()
        if pending is not None:  # decoding stops at the mapped layer: map every value
            maps = self.calibration.apply_maps(maps)
        return maps

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (temporary file, then rename)."""
        with atomic_h5(path) as out:
            handle = out.file
            stamp(handle, MODEL_TYPE, self.source)
            handle.attrs["arch"] = arch_string(self.arch)
            handle.attrs["activation"] = self.activation
            handle.attrs["image-shape"] = np.asarray(self.image_shape, dtype=np.int64)
            handle.attrs["layers-complete"] = len(self.layers)
            handle.attrs["dataset-fingerprint"] = self.fingerprint
            handle.create_dataset("config", data=json.dumps(self.config, sort_keys=True))
            group = handle.create_group("layers")
            for index, layer in enumerate(self.layers, 1):
                g = group.create_group(str(index))
                # uncompressed: gzip saved 31% of layer 3's 1.9 MB and took 42 ms in every one
                # of train's three saves of it (older files' gzip still reads)
                g.create_dataset("mu", data=layer.mu)
                g.create_dataset("sigma", data=layer.sigma)
                g.create_dataset("counts", data=layer.counts)
                g.attrs.update(alpha=layer.alpha, patch=layer.shape.patch, stride=layer.shape.stride,
                               seconds=layer.seconds, patches=layer.patches, chunk=layer.chunk)
                hist = g.create_group("history")
                for key in HISTORY_KEYS:
                    hist.create_dataset(key, data=np.asarray([row.get(key, 0) for row in layer.history]))  # merged: 0 before it was kept
            if self.zca is not None:
                self.zca.write(handle)
            if self.calibration is not None:
                self.calibration.write(handle)
            if self.memorisation is not None:
                handle.attrs["memorisation"] = json.dumps(self.memorisation, sort_keys=True)
            if self.top is not None:
                self.top.to_h5(handle)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NSNModel:
        """Read a model file, checking type, version and every key it needs."""
        where = str(path)
        with open_nsn_file(path, MODEL_TYPE) as handle:
            try:
                arch = parse_arch(str(handle.attrs["arch"]))
                image_shape = tuple(int(v) for v in handle.attrs["image-shape"])
                activation = str(handle.attrs["activation"])
                complete = int(handle.attrs["layers-complete"])
                config = json.loads(handle["config"][()]) if "config" in handle else {}
            except KeyError as exc:
                raise NsnError(f"{where}: missing HDF5 key or attribute {exc}") from None
            layers = []
            for index in range(1, complete + 1):
                key = f"layers/{index}"
                if key not in handle:
                    raise NsnError(f"{where}: missing HDF5 key /{key}")
                g = handle[key]
                for part in ("mu", "sigma", "counts"):
                    if part not in g:
                        raise NsnError(f"{where}: missing HDF5 key /{key}/{part}")
                hist = g.get("history")
                history = []
                if hist is not None:
                    columns = {k: hist[k][()] for k in HISTORY_KEYS if k in hist}
                    rows = len(next(iter(columns.values()))) if columns else 0
                    history = [{k: columns[k][i].item() for k in columns} for i in range(rows)]
                layers.append(Layer(
                    shape=LayerShape(int(g.attrs["patch"]), int(g.attrs["stride"])),
                    mu=g["mu"][()].astype(np.float32), sigma=g["sigma"][()].astype(np.float64),
                    counts=g["counts"][()].astype(np.int64), alpha=float(g.attrs["alpha"]),
                    history=history, seconds=float(g.attrs.get("seconds", 0.0)),
                    patches=int(g.attrs.get("patches", 0)), chunk=int(g.attrs.get("chunk", 0)),
                ))
            top = TopStats.from_h5(handle, where)
            model = cls(
                arch=arch, image_shape=image_shape, activation=activation, layers=layers,
                zca=Zca.read(handle, where), config=config, source=str(handle.attrs.get("source", "")),
                fingerprint=str(handle.attrs.get("dataset-fingerprint", "")), top=top,
                calibration=Calibration.read(handle, where),
                memorisation=json.loads(handle.attrs["memorisation"]) if "memorisation" in handle.attrs else None,
            )
        for index, layer in enumerate(model.layers, 1):
            expected_channels = image_shape[2] if index == 1 else model.layers[index - 2].filters
            if layer.mu.ndim != 4 or layer.in_channels != expected_channels or layer.sigma.shape != (layer.filters,):
                raise NsnError(f"{where}: /layers/{index} has inconsistent shapes (mu {layer.mu.shape})")
        return model


def load_model(path: str | os.PathLike) -> NSNModel:
    """Load a model, with a hint when the default file is missing."""
    path = Path(path)
    if not path.exists():
        raise NsnError(f"{path}: no such model file (train one with: nsn train DATA.h5 -o {path})")
    return NSNModel.load(path)


def describe_model(path: str | os.PathLike) -> dict:
    """Summary of a model file for ``nsn info``."""
    model = NSNModel.load(path)
    with h5py.File(path, "r") as handle:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
    sizes = map_sizes(model.arch, model.image_shape[0], model.image_shape[1])
    layers = []
    for index, layer in enumerate(model.layers, 1):
        layers.append({
            "layer": index,
            "patch": f"{layer.shape.patch}x{layer.shape.patch}",
            "stride": layer.shape.stride,
            "in": f"{sizes[index - 1][0]}x{sizes[index - 1][1]}x{layer.in_channels}",
            "out": f"{sizes[index][0]}x{sizes[index][1]}x{layer.filters}",
            "filters": layer.filters,
            "alpha": round(layer.alpha, 4),
            "iterations": len(layer.history),
            "seconds": round(layer.seconds, 2),
            "streamed": f"{layer.chunk} images a chunk" if layer.chunk else "no",
            "history": layer.history,
        })
    h, w, c = model.image_shape
    return {
        "encoding-type": attrs.get("encoding-type"),
        "encoding-version": attrs.get("encoding-version"),
        "nsn-version": attrs.get("nsn-version"),
        "created": attrs.get("created"),
        "source": attrs.get("source"),
        "file": str(path),
        "architecture": arch_string(model.arch),
        "image size": f"{h} x {w} x {c}",
        "activation": model.activation,
        "layers trained": f"{len(model.layers)} of {len(model.arch)}",
        "filters per layer": ", ".join(str(layer.filters) for layer in model.layers) or "-",
        "training seconds": round(sum(layer.seconds for layer in model.layers), 2),
        "zca": "none" if model.zca is None else f"channel-wise, eps {model.zca.eps:g}",
        "top statistics": "yes" if model.top is not None else "no",
        "near copies": "-" if model.memorisation is None else
        f"{model.memorisation['near_copies']:.1%} of samples (real images: {model.memorisation['near_copies_real']:.1%})",
        "pixel calibration": "no" if model.calibration is None else
        f"yes ({model.calibration.samples} samples, {model.calibration.sampler.get('prior', '?')} prior)",
        "layers": layers,
    }
