"""``nsn inpaint`` by the layers, and the input images ``nsn style`` and ``nsn inpaint`` share
(read, channels matched, cropped to a size the layers tile; :mod:`nsn_cli.style` restyles).

- inpaint (mask white = hole): encode the occluded image to the top; decode top-down and, at
  every layer, keep the encoded vectors where the hole does not reach and take the generated
  ones where it does; paste the known pixels back. ``draws`` decodings are averaged and
  ``rounds`` re-encode the filled image and fill again (SPEC "Style, inpaint").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from nsn_cli import config
from nsn_cli.engine.geometry import exact_input_size
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import masked_similarity
from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.model import DecodeParams, NSNModel
from nsn_cli.prep import to_channels
from nsn_cli.readers import load_image
from nsn_cli.streams import restore_stream


@dataclass
class Prepared:
    """An input image brought to the model: ``image`` (H, W, C) in [0, 1], with notes."""

    image: np.ndarray
    notes: list[str] = field(default_factory=list)
    original_shape: tuple[int, int] = (0, 0)
    offset: tuple[int, int] = (0, 0)
    original: np.ndarray | None = None  # set when ``image`` was resized to a ZCA model's size

    def back(self, images: np.ndarray) -> np.ndarray:
        """Outputs (n, h, w, C) at the original image's size (resized back if it was resized)."""
        if self.original is None:
            return images
        from nsn_cli.prep import resize_image

        return np.stack([resize_image(x, self.original_shape) for x in images])

    def crop_like(self, array: np.ndarray) -> np.ndarray:
        """Crop an array of the original image's size the way the image was cropped."""
        top, left = self.offset
        return array[top : top + self.image.shape[0], left : left + self.image.shape[1]]


def reachable_size(model: NSNModel, size: int, layer: int) -> int:
    """The largest input size <= ``size`` that layers 1..``layer`` tile exactly."""
    layers = model.arch[:layer]
    best, top = 0, 1
    while True:
        candidate = top
        for shape in reversed(layers):
            candidate = shape.in_size(candidate)
        if candidate > size:
            return best
        best, top = candidate, top + 1


def load_for_model(path: str | os.PathLike, model: NSNModel, layer: int) -> Prepared:
    """Read an image, match the model's channels, and crop it to a size the geometry reaches."""
    notes = []
    image = load_image(path)
    channels = model.image_shape[2]
    if image.shape[-1] != channels:
        notes.append(f"{path}: converted {'RGB to gray' if channels == 1 else 'gray to RGB'} for a "
                     f"{'gray' if channels == 1 else 'RGB'} model")
        image = to_channels(image, channels)
    image = image.astype(np.float32) / 255.0
    h, w = image.shape[:2]
    if model.zca is not None:  # whitened at one size: bring the image to it (and back, see back())
        if (h, w) == model.image_shape[:2]:
            return Prepared(image, notes, (h, w))
        from nsn_cli.prep import resize_image

        size = model.image_shape[:2]
        notes.append(f"{path}: {h}x{w} brought to the ZCA model's {size[0]}x{size[1]} (Pillow LANCZOS), "
                     "the output resized back")
        return Prepared(resize_image(image, size), notes, (h, w), original=image)
    th, tw = reachable_size(model, h, layer), reachable_size(model, w, layer)
    if th == 0 or tw == 0:
        need = exact_input_size(model.arch[:layer])
        raise NsnError(f"{path}: {h}x{w} is smaller than layer {layer}'s receptive field ({need}x{need})")
    prepared = Prepared(image, notes, (h, w), ((h - th) // 2, (w - tw) // 2))
    if (th, tw) != (h, w):
        notes.append(f"{path}: cropped {h}x{w} to {th}x{tw}, the nearest size layers 1..{layer} tile exactly")
        prepared.image = image[prepared.offset[0] : prepared.offset[0] + th, prepared.offset[1] : prepared.offset[1] + tw]
    return prepared


def load_mask(path: str | os.PathLike, shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """A hole mask (H, W) bool from an image: white (> 50%) = hole.

    Masks that are not purely black and white are thresholded at 50% (noted, not refused:
    anti-aliased masks drawn in an editor are common)."""
    raw = load_image(path).astype(np.float32).mean(axis=-1) / 255.0
    notes = []
    if raw.shape != shape:
        raise NsnError(f"{path}: mask is {raw.shape[0]}x{raw.shape[1]}, the image is {shape[0]}x{shape[1]}")
    grey = np.count_nonzero((raw > 0.02) & (raw < 0.98))
    if grey:
        notes.append(f"{path}: {grey} grey mask pixels thresholded at 50% (white = hole)")
    hole = raw > 0.5
    if not hole.any():
        notes.append(f"{path}: the mask has no hole (no white pixel); the image is returned unchanged")
    elif hole.all():
        notes.append(f"{path}: the mask covers the whole image: nothing is known, so the fill is a sample of "
                     "the model (nsn sample)")
    return hole, notes


def hole_maps(model: NSNModel, hole: np.ndarray) -> list[np.ndarray]:
    """For F[0]..F[L]: (h, w) bool, True where a position's receptive field touches the hole."""
    levels = [hole]
    for shape in model.arch[: len(model.layers)]:
        current = levels[-1].astype(np.float32)[None, :, :, None]
        patches = extract_patches(current, shape.patch, shape.stride)
        h = shape.out_size(current.shape[1])
        w = shape.out_size(current.shape[2])
        levels.append(patches.max(axis=1).reshape(h, w) > 0)
    return levels


#: A layer-1 position whose patch is at least this fraction known is encoded from its known
#: pixels (masked similarity) instead of being generated (hole PSNR on held-out digits,
#: random 5x5 blocks: 9.8 -> 11.3 dB; 0.01 and 0.6 were worse).
MASKED_MIN_KNOWN = 0.3


def masked_first_layer(model: NSNModel, image: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F[1] of an image from its known pixels only, and where enough of each patch is known.

    image: (H, W, C) in [0, 1]; known: (H, W) bool. Returns maps (1, h, w, K) and (h, w) bool.
    """
    layer = model.layers[0]
    white = model.prepare_images(image[None])
    p, s = layer.shape.patch, layer.shape.stride
    patches = extract_patches(white, p, s)
    mask = np.repeat(known[None, :, :, None], image.shape[-1], axis=-1).astype(np.float32)
    weights = extract_patches(mask, p, s)
    h, w = layer.shape.out_size(image.shape[0]), layer.shape.out_size(image.shape[1])
    maps = masked_similarity(patches, weights, layer.flat_mu, layer.sigma, model.activation)
    enough = weights.mean(axis=1) >= MASKED_MIN_KNOWN
    return maps.reshape(1, h, w, -1), enough.reshape(h, w)


def inpaint(model: NSNModel, image: np.ndarray, hole: np.ndarray, *, draws: int = config.INPAINT_DRAWS,
            rounds: int = config.INPAINT_ROUNDS,
            params: DecodeParams | None = None, seed: int = 0) -> np.ndarray:
    """Fill ``hole`` (H, W) bool of ``image`` (H, W, C) in [0, 1]; known pixels are kept exactly.

    Each round encodes the current image to the top and decodes ``draws`` times: at every layer
    the encoded vectors are kept where the hole does not reach, and at layer 1 positions with
    enough known pixels take their masked encoding; the rest is generated. The draws are
    averaged, the known pixels pasted back, and the next round starts from the result.
    """
    params = (params or DecodeParams()).validate()
    if draws < 1 or rounds < 1:
        raise ParameterError("draws", f"{{name}} and {{rounds}} must be at least 1, got {draws} and {rounds}",
                             others=("rounds",))
    if not model.layers:
        raise NsnError("the model has no trained layer")
    levels = hole_maps(model, hole)
    top = len(model.layers)
    known = ~hole[..., None]
    first, enough = masked_first_layer(model, image, ~hole)
    conditioned = [~level[None, :, :, None] for level in levels]
    conditioned[1] = conditioned[1] | enough[None, :, :, None]
    current = image.copy()
    current[hole] = 0.0  # the occluded pixels carry no information
    for round_index in range(rounds):
        encoded = model.encode(current[None], upto=top)
        encoded[1] = np.where(levels[1][None, :, :, None], first, encoded[1])
        maps = np.repeat(encoded[top], draws, axis=0)
        for layer in range(top, 0, -1):
            below = model.decode_layer(maps, layer, params, seed=seed, first_sample=0,
                                       stream=restore_stream(layer, round_index))
            maps = np.where(conditioned[layer - 1], encoded[layer - 1], below) if layer > 1 else below
        filled = model.finish_images(maps).mean(axis=0)
        current = np.where(known, image, filled)
    return current.astype(np.float32)
