"""Inputs and the panel for the inpainting figure (used by `make figures`).

    python bench/inpaint_inputs.py IDX_IMAGES OUTDIR        # 8 held-out digits + a centre mask
    python bench/inpaint_inputs.py --panel INPUTS FILLED OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from nsn_cli.readers import read_idx
from nsn_cli.sample import image_grid


def make_inputs(idx: str, out: Path) -> None:
    digits = read_idx(idx)[-8:]  # the last digits: the ones bench/ models never train on
    (out / "digits").mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(digits):
        iio.imwrite(out / "digits" / f"digit{i}.png", digit)
    mask = np.zeros((28, 28), np.uint8)
    mask[9:19, 9:19] = 255
    iio.imwrite(out / "mask.png", mask)


def make_panel(inputs: Path, filled: Path, out: Path) -> None:
    names = sorted((inputs / "digits").glob("*.png"))
    originals = np.stack([iio.imread(p) for p in names]).astype(np.float32)[..., None] / 255
    hole = iio.imread(inputs / "mask.png") > 127
    occluded = originals.copy()
    occluded[:, hole] = 0.5
    restored = np.stack([iio.imread(filled / p.name) for p in names]).astype(np.float32)
    restored = restored.reshape(originals.shape) / 255
    iio.imwrite(out, image_grid(np.concatenate([originals, occluded, restored]), columns=len(names)))


if __name__ == "__main__":
    if sys.argv[1] == "--panel":
        make_panel(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        make_inputs(sys.argv[1], Path(sys.argv[2]))
