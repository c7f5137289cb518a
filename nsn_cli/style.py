"""``nsn style``: encode an image up to layer ``k`` with the engine and decode it back down
with NSN-Gen (paper section 4.3, "fractal style"): the image's layout in the patterns of the
model's layers 1..k."""

from __future__ import annotations

import numpy as np

from nsn_cli import config
from nsn_cli.errors import ParameterError
from nsn_cli.model import DecodeParams, NSNModel


def style(model: NSNModel, image: np.ndarray, *, layer: int = config.STYLE_LAYER, variants: int = config.STYLE_VARIANTS,
          params: DecodeParams | None = None, seed: int = 0, calibrate: bool = True) -> np.ndarray:
    """``variants`` restyled versions (variants, H, W, C) of one image (H, W, C) in [0, 1]."""
    params = (params or DecodeParams()).validate()
    model.check_layer(layer)
    if variants < 1:
        raise ParameterError("variants", f"must be at least 1, got {variants}")
    encoded = model.encode(image[None], upto=layer)[layer]
    maps = np.repeat(encoded, variants, axis=0)
    return model.finish_images(model.decode(maps, layer, params, seed=seed), calibrate)
