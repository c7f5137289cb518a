"""nsn from Python: an NSN as an estimator in the scikit-learn / UMAP style, :func:`load` and
:func:`score`::

    from nsn_cli import NSN, load, score

    nsn = NSN(iterations=4, seed=0).fit(images)  # (N, H, W[, C]) uint8, or float in [0, 1]
    samples = nsn.sample(64, seed=1)              # (64, H, W, C) float32 in [0, 1]
    nsn.save("model.h5")                          # the file `nsn sample -m model.h5` reads
    score(samples, images, metrics="swd")

Every method runs the code of the matching ``nsn`` command, so the same data, options and seeds
give the same bits as the CLI (tests/test_api.py checks fit and sample against the commands).
An array is fitted by writing it as a data set with ``nsn prep``'s code to a temporary folder
and training on that, as ``nsn prep`` then ``nsn train`` would.

Errors about a parameter are ``ValueError``\\ s naming the parameter (``max_filters must be at
least 1``; the CLI says ``--max-filters``); other problems a user can fix (a missing or corrupt
file) are :class:`~nsn_cli.errors.NsnError`. No call leaves the process changed: numba's and
BLAS's thread counts are restored, glibc's malloc is left alone (``nsn train`` tunes it for its
own process only), and no environment variable or signal handler is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from nsn_cli.errors import Interrupted, ParameterError
from nsn_cli.train import TrainOptions

#: Every training option's default, from its one home (TrainOptions, which takes config's).
_TRAIN = TrainOptions()
#: The estimator's parameters, in order (``get_params``, ``repr``, :func:`load`).
PARAMS = ("arch", "alpha", "filters", "iterations", "max_patches", "max_filters", "activation",
          "reference_images", "seed", "memory", "threads", "workers", "dask_address")


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model called before :meth:`NSN.fit` (as scikit-learn's)."""


@contextlib.contextmanager
def python_errors() -> Iterator[None]:
    """Raise an option's error as a ``ValueError`` naming the Python parameter, not its flag."""
    try:
        yield
    except ParameterError as exc:
        raise ValueError(exc.python_message()) from None


def as_images(X, name: str = "X") -> np.ndarray:
    """Images (N, H, W, C) as given (uint8, or float in [0, 1]), with a channel axis; refused
    with a ``ValueError`` naming ``name`` when they are not images."""
    images = np.asarray(X)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must be (N, H, W) or (N, H, W, C) with C 1 or 3, got shape {np.shape(X)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {images.dtype}")
    if not np.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: float pixels must lie in [0, 1], found [{lo:.3g}, {hi:.3g}] (divide 0..255 data by 255)")
    return images


def as_pixels(X, name: str = "X") -> np.ndarray:
    """:func:`as_images` as float32 in [0, 1] (uint8 divided by 255, as ``nsn prep`` does)."""
    images = as_images(X, name)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32, copy=False)


def _one_image(image, name: str) -> np.ndarray:
    """One image (H, W[, C]) as (H, W, C) float32 pixels."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be one image (H, W) or (H, W, C), got shape {array.shape}")
    return as_pixels(array[None], name)[0]


def write_dataset(X, folder: Path) -> Path:
    """Array images as an nsn data set in ``folder``, written by ``nsn prep``'s code (so
    training on it gives the bits ``nsn prep`` + ``nsn train`` give)."""
    from nsn_cli.prep import prep

    images = as_images(X)
    array = folder / "images.npy"
    np.save(array, images if images.dtype == np.uint8 else images.astype(np.float32))
    dataset = folder / "images.h5"
    prep([array], dataset, channels=images.shape[-1])
    array.unlink()
    return dataset


def _decode_params(base, overrides: dict):
    """NSN-Gen parameters: ``base`` with the keyword ``overrides`` (DecodeParams' fields)."""
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown NSN-Gen parameter {unknown[0]!r}; choose from {', '.join(sorted(fields))}")
    return dataclasses.replace(base, **overrides).validate()


class NSN:
    """A Normal Similarity Network, fitted layer by layer with non-parametric EM.

    arch: ``"mnist"``, ``"lfw64"`` or ``"PxP/S,..."`` (default: by image size). alpha: creation
    threshold per layer, or filters: target filters per layer (alpha searched); neither: the
    measured defaults. iterations, max_patches, max_filters, activation, reference_images, seed:
    as ``nsn train``'s options of those names. memory: the process's budget in bytes or as
    ``"2G"`` (a layer that does not fit is streamed from the data set); None: all in memory.
    threads: numba threads while fitting (default: all cores). workers / dask_address: run
    streamed layers on a local Dask cluster of that many processes, or on that scheduler.

    After :meth:`fit`: ``model_`` (the :class:`~nsn_cli.model.NSNModel`), ``layers_``,
    ``n_filters_`` and ``n_iter_`` (EM iterations run) per layer, ``notes_`` (what ``nsn train``
    would print as notes)."""

    def __init__(self, arch: str | None = _TRAIN.arch, alpha: Sequence[float] | None = _TRAIN.alphas,
                 filters: Sequence[int] | None = _TRAIN.targets, iterations: int = _TRAIN.iterations,
                 max_patches: int | None = _TRAIN.max_patches, max_filters: int = _TRAIN.max_filters,
                 activation: str = _TRAIN.activation, reference_images: int = _TRAIN.reference_images,
                 seed: int = _TRAIN.seed, memory: int | str | None = None, threads: int | None = None,
                 workers: int | None = None, dask_address: str | None = None):
        self.arch = arch
        self.alpha = alpha
        self.filters = filters
        self.iterations = iterations
        self.max_patches = max_patches
        self.max_filters = max_filters
        self.activation = activation
        self.reference_images = reference_images
        self.seed = seed
        self.memory = memory
        self.threads = threads
        self.workers = workers
        self.dask_address = dask_address

    # ------------------------------------------------------------------ parameters

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params) -> NSN:
        for name, value in params.items():
            if name not in PARAMS:
                raise ValueError(f"unknown parameter {name!r}; NSN takes {', '.join(PARAMS)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = NSN()
        changed = [f"{name}={getattr(self, name)!r}" for name in PARAMS if getattr(self, name) != getattr(defaults, name)]
        return f"NSN({', '.join(changed)})"

    def _options(self) -> TrainOptions:
        """A fresh TrainOptions (``train`` fills in its defaults; the estimator keeps its own)."""

        def per_layer(name: str, values, kind):
            if values is None:
                return None
            if np.ndim(values) != 1:
                raise ValueError(f"{name} must be a list of one value per layer, got {values!r}")
            return [kind(v) for v in values]

        return TrainOptions(arch=self.arch, alphas=per_layer("alpha", self.alpha, float),
                            targets=per_layer("filters", self.filters, int), iterations=self.iterations,
                            max_patches=self.max_patches, max_filters=self.max_filters, activation=self.activation,
                            seed=self.seed, reference_images=self.reference_images)

    def _budget(self) -> int | None:
        from nsn_cli.train import parse_memory, working_memory

        if self.memory is None:
            return None
        return working_memory(parse_memory(self.memory) if isinstance(self.memory, str) else int(self.memory))

    # ------------------------------------------------------------------ fit

    def fit(self, X, checkpoint: str | os.PathLike | None = None, resume: bool = False, force: bool = False) -> NSN:
        """Fit every layer on ``X``: images (N, H, W[, C]) uint8 or float in [0, 1], or the path of
        an nsn data set (``nsn prep``). checkpoint: a model file kept after every layer (else a
        temporary one); resume: continue from the layers it holds (same data and options);
        force: start over even if it exists. Returns the estimator."""
        from nsn_cli.train import train

        notes: list[str] = []
        with python_errors(), tempfile.TemporaryDirectory(prefix="nsn-") as temp:
            options, budget = self._options(), self._budget()
            output = Path(temp) / "model.h5" if checkpoint is None else Path(checkpoint)
            if checkpoint is not None and output.exists() and not (resume or force):
                raise ValueError(f"checkpoint {output} already exists; pass resume=True to continue it "
                                 "or force=True to start over")
            from_array = not isinstance(X, (str, os.PathLike))
            data = write_dataset(X, Path(temp)) if from_array else X
            try:
                model = train(data, output, options, resume=resume, force=force, threads=self.threads,
                              reporter=_Notes(notes), memory=budget, workers=self.workers,
                              dask_address=self.dask_address,
                              source=f"array of {len(X)} images" if from_array else None)
            except Interrupted:  # train's message names the CLI's --resume (and maybe a temporary file)
                kept = (f"{output} keeps the layers completed so far; continue with fit(X, checkpoint="
                        f"{str(output)!r}, resume=True)") if checkpoint is not None else \
                    "nothing was kept (fit(X, checkpoint=path) keeps every completed layer)"
                raise KeyboardInterrupt(kept) from None
        self._set_model(model)
        self.notes_ = notes
        return self

    def _set_model(self, model) -> None:
        self.model_ = model
        self.layers_ = model.layers
        self.n_filters_ = [layer.filters for layer in model.layers]
        self.n_iter_ = [len(layer.history) for layer in model.layers]

    def _fitted(self):
        model = getattr(self, "model_", None)
        if model is None:
            raise NotFittedError("this NSN is not fitted yet; call fit(X) or load(path) first")
        return model

    # ------------------------------------------------------------------ generate

    def sample(self, n: int, layer: int | None = None, prior: str | None = None, seed: int = 0,
               calibrate: bool = True, **decode) -> np.ndarray:
        """``n`` samples (n, H, W, C) float32 in [0, 1], the images ``nsn sample`` writes with the
        same options: from ``layer`` (default: the top; a hidden layer gives patches of its
        receptive field), with ``prior`` (default: mix where the model has top statistics, else
        counts). ``decode``: NSN-Gen's parameters (delta1, delta2, delta3, draws, pixel_draws,
        noise_layers, noise_scale), by default ``nsn sample``'s."""
        from nsn_cli.model import DecodeParams
        from nsn_cli.sample import generate

        model = self._fitted()
        with python_errors():
            params = _decode_params(DecodeParams.for_sampling(), decode)
            return generate(model, n, layer=layer, prior=prior, params=params, seed=seed, calibrate=calibrate)

    def encode(self, X, layer: int | None = None) -> np.ndarray:
        """The maps F[layer] (N, h, w, K) float32 of images ``X`` (N, H, W[, C]); default: the top."""
        model = self._fitted()
        images = as_pixels(X)
        with python_errors():
            layer = len(model.layers) if layer is None else layer
            model.check_layer(layer)
            self._check_size(images.shape[1:], "X")
            return model.encode(images, upto=layer)[layer]

    def decode(self, maps, layer: int | None = None, seed: int = 0, calibrate: bool = True, **decode) -> np.ndarray:
        """Images (N, H, W, C) in [0, 1] decoded by NSN-Gen from maps F[layer] (N, h, w, K), e.g.
        :meth:`encode`'s. ``decode``: NSN-Gen's parameters, by default ``nsn style``'s."""
        from nsn_cli.model import DecodeParams

        model = self._fitted()
        maps = np.asarray(maps, dtype=np.float32)
        with python_errors():
            layer = len(model.layers) if layer is None else layer
            model.check_layer(layer)
            params = _decode_params(DecodeParams(), decode)
        filters = model.layers[layer - 1].filters
        if maps.ndim != 4 or maps.shape[-1] != filters:
            raise ValueError(f"maps must be (N, h, w, {filters}) for layer {layer}, got shape {maps.shape}")
        return model.finish_images(model.decode(maps, layer, params, seed=seed, calibrate=calibrate), calibrate)

    def style(self, image, layer: int = 1, variants: int = 4, seed: int = 0, calibrate: bool = True,
              **decode) -> np.ndarray:
        """``variants`` restyled versions (variants, h, w, C) of one image (H, W[, C]), as
        ``nsn style``: encoded to ``layer``, decoded back with NSN-Gen (an image the layers do
        not tile exactly comes back a little smaller)."""
        from nsn_cli.model import DecodeParams
        from nsn_cli.style import style

        model = self._fitted()
        pixels = _one_image(image, "image")
        with python_errors():
            self._check_size(pixels.shape, "image")
            params = _decode_params(DecodeParams(), decode)
            return style(model, pixels, layer=layer, variants=variants, params=params, seed=seed, calibrate=calibrate)

    def inpaint(self, image, hole, method: str = "posterior", seed: int = 0, calibrate: bool = True,
                **options) -> np.ndarray:
        """Fill the ``hole`` (bool, True = unknown) of an image (H, W[, C]), or of each of a batch
        (N, H, W[, C]) with holes (N, H, W), as ``nsn inpaint``; known pixels are kept exactly.
        Images of another size are brought to the model's and the fill back. method
        ``posterior`` (options: sample, candidates, pairs, temperature, boundary, focus, mix_penalty) or ``layers``
        (options: draws, rounds and NSN-Gen's parameters)."""
        from nsn_cli.inpaint import METHODS, InpaintOptions, from_model_size, inpaint_posterior, to_model_size

        model = self._fitted()
        single = np.ndim(image) in (2, 3) and np.ndim(hole) == 2
        images = as_pixels(np.asarray(image)[None] if single else image, "image")
        holes = np.asarray(hole)[None] if single else np.asarray(hole)
        if holes.dtype != bool or holes.shape != images.shape[:3]:
            raise ValueError(f"hole must be a bool array of the image's height and width {images.shape[1:3]}, "
                             f"got {holes.dtype} {np.asarray(hole).shape}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        with python_errors():
            if method == "layers":
                filled = np.stack([self._inpaint_layers(x, h, seed, options) for x, h in zip(images, holes)])
            else:
                settings = InpaintOptions(seed=seed, calibrate=calibrate, **options)
                resized = [to_model_size(x, h, model) for x, h in zip(images, holes)]
                out = inpaint_posterior(model, np.stack([r.image for r in resized]),
                                        np.stack([r.hole for r in resized]), settings)
                filled = np.stack([from_model_size(x, r) for x, r in zip(out, resized)])
        return filled[0] if single else filled

    def _inpaint_layers(self, image: np.ndarray, hole: np.ndarray, seed: int, options: dict) -> np.ndarray:
        """The paper's method on one image (``nsn inpaint --method layers``)."""
        from nsn_cli.model import DecodeParams
        from nsn_cli.restore import inpaint

        options = dict(options)
        draws, rounds = options.pop("draws", 8), options.pop("rounds", 1)
        return inpaint(self._fitted(), image, hole, draws=draws, rounds=rounds,
                       params=_decode_params(DecodeParams(), options), seed=seed)

    def _check_size(self, shape: tuple[int, ...], name: str) -> None:
        """Refuse images a ZCA model cannot whiten (another size) or of other channels."""
        model = self._fitted()
        if shape[-1] != model.image_shape[2]:
            raise ValueError(f"{name} has {shape[-1]} channels, the model {model.image_shape[2]}")
        if model.zca is not None and tuple(shape[:2]) != tuple(model.image_shape[:2]):
            raise ValueError(f"{name} is {shape[0]}x{shape[1]}; the model whitens {model.image_shape[0]}x"
                             f"{model.image_shape[1]} images only")

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the model file (atomically; ``nsn`` commands read it). An existing file is kept
        unless ``force``."""
        from nsn_cli.files import check_output_path, output_lock

        model = self._fitted()
        path = Path(path)
        if path.exists() and not path.is_dir() and not force:
            raise FileExistsError(f"{path}: already exists (pass force=True to overwrite)")
        check_output_path(path, True)  # its folder exists and is writable, it is no folder
        with output_lock(path):
            model.save(path)
        return path


class _Notes:
    """A train reporter that keeps only the notes (``nsn train`` prints them)."""

    def __init__(self, notes: list[str]):
        self.notes = notes

    def note(self, text: str) -> None:
        self.notes.append(text)

    def __getattr__(self, name):  # every progress call: nothing to show
        return lambda *args, **kwargs: None


def load(path: str | os.PathLike) -> NSN:
    """An :class:`NSN` from a model file (``nsn train``'s or :meth:`NSN.save`'s), its parameters
    those the model was trained with."""
    from nsn_cli.model import NSNModel

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    model = NSNModel.load(path)
    config = dict(model.config)
    names = {"alphas": "alpha", "targets": "filters"}
    params = {names.get(key, key): value for key, value in config.items() if names.get(key, key) in PARAMS}
    estimator = NSN(**params)
    estimator._set_model(model)
    estimator.notes_ = []
    return estimator


# --------------------------------------------------------------------------- score


def score(samples, reference, metrics: str | Sequence[str] | None = None, n: int | None = None, seed: int = 0,
          labels=None, train=None, resize: bool = False) -> dict:
    """``nsn score`` of one sample set: ``{metric: value, ..., "images": count, "notes": [...]}``.

    samples: images (N, H, W[, C]) uint8 or float in [0, 1], a fitted :class:`NSN` (``n``
    samples drawn with ``seed``), or a path ``nsn score`` reads (model file, .npz/.npy, data
    set, folder). reference: images or an nsn data set path; ``labels`` (N,) for array
    references (with labels the judge is a CNN trained on them, cached; else a seeded random
    network). metrics: names or ``"is,fid"`` (default: all). n: samples drawn from a model, at
    most this many read from other inputs (default ``nsn score``'s). train: the generator's
    training images or data set (the memorisation metric). resize: bring other sizes and
    channels to the reference's, as ``nsn score --resize``."""
    from nsn_cli.score import METRICS, Matcher, Reference, ScoreOptions, Scorer, check_input, parse_metrics
    from nsn_cli.score.inputs import SampleSet, enough, load_reference, load_train, open_input, read_input
    from nsn_cli.score.judges import cache_dir

    n = ScoreOptions().n if n is None else n
    with python_errors():
        if n < 1:
            raise ParameterError("n", f"must be at least 1, got {n}", flag="-n")
        names = parse_metrics(",".join([metrics] if isinstance(metrics, str) else metrics or METRICS))
        if isinstance(reference, (str, os.PathLike)):
            ref = load_reference(reference)
        else:
            pixels = as_pixels(reference, "reference")
            enough(len(pixels), "reference")
            ref = Reference("reference", pixels, None if labels is None else np.asarray(labels, dtype=np.int64))
        matcher = Matcher(ref, resize)
        notes: list[str] = []
        if isinstance(samples, NSN):
            item, where = samples._fitted(), "model"
        elif isinstance(samples, (str, os.PathLike)):
            item, where = open_input(samples), str(samples)
        else:
            item, where = as_images(samples, "samples")[:n], "samples"
        if isinstance(item, np.ndarray):
            enough(len(item), where)
            note = matcher.check(item.shape[1:], where)
            sample_set = SampleSet.of(where, matcher.match(list(item), where))
        else:
            note = check_input(item, matcher, where, n)
            sample_set = read_input(item, matcher, where, n, seed)
        notes.extend([note] if note else [])
        if train is None or "memo" not in names:
            train_images = None
        elif isinstance(train, (str, os.PathLike)):
            train_images = load_train(train, matcher)
        else:
            train_images = matcher.match(list(as_images(train, "train")), "train")
        scorer = Scorer(ref, names, train=train_images, seed=seed, cache=cache_dir(), notes=notes)
        row = scorer.score(sample_set)
    return {**row, "images": sample_set.count, "notes": list(scorer.notes)}
