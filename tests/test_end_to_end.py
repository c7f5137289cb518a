"""Whole pipelines through the CLI: ZCA faces, an RGB texture model, a partly trained model."""

from __future__ import annotations

import numpy as np
import pytest

from nsn_cli.files import load_images
from nsn_cli.model import NSNModel

from .conftest import DATA, FACES


@pytest.mark.slow
def test_zca_faces_train_sample_inpaint(cli, tmp_path):
    data, model = tmp_path / "faces.h5", tmp_path / "faces-model.h5"
    assert cli("prep", FACES, "--size", "28", "--zca", "-o", data, "-q")[0] == 0
    code, _, err = cli("train", data, "--filters", "12,12,6", "--iterations", "3", "-o", model, "-q")
    assert code == 0, err
    trained = NSNModel.load(model)
    assert trained.zca is not None and [layer.filters for layer in trained.layers] != []
    code, _, err = cli("sample", "-m", model, "-n", "4", "-o", tmp_path / "s.npz", "-q")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npz")["images"]
    assert samples.shape == (4, 28, 28, 1) and 0 <= samples.min() and samples.max() <= 1
    # a whitened model refuses an image of another size, with one line
    code, _, err = cli("style", DATA / "astronaut.png", "-m", model, "-o", tmp_path / "x.png")
    assert code == 2 and "needs 28x28 inputs" in err


def test_rgb_texture_model_styles_a_gray_image(cli, tmp_path):
    import imageio.v3 as iio

    data, model = tmp_path / "coffee.h5", tmp_path / "coffee-model.h5"
    assert cli("prep", DATA / "coffee.png", "--size", "8", "--crops", "300", "-o", data, "-q")[0] == 0
    assert load_images(data)[0].shape == (300, 8, 8, 3)
    code, _, err = cli("train", data, "--arch", "4x4/2,3x3/1", "--alpha", "-1.5,-2", "--iterations", "3",
                       "-o", model, "-q")
    assert code == 0, err
    gray = (np.random.default_rng(0).random((21, 30)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "gray.png", gray)
    code, out, err = cli("style", tmp_path / "gray.png", "-m", model, "--variants", "2", "-o", tmp_path / "st.npz")
    assert code == 0, err
    assert "converted gray to RGB" in err and "cropped 21x30 to 20x30" in err
    assert np.load(tmp_path / "st.npz")["images"].shape == (3, 20, 30, 3)


def test_partly_trained_model_samples_from_its_last_layer(cli, tmp_path, tiny_model):
    path, model = tiny_model
    partial = NSNModel.load(path)
    partial.layers = partial.layers[:2]
    partial.top = None
    partial.save(tmp_path / "partial.h5")
    code, out, err = cli("sample", "-m", tmp_path / "partial.h5", "-n", "3", "-o", tmp_path / "p.npz", "-q")
    assert code == 0 and "2 of 3 layers" in err
    assert np.load(tmp_path / "p.npz")["images"].shape == (3, 8, 8, 1)
    code, _, err = cli("sample", "-m", tmp_path / "partial.h5", "--layer", "3", "-o", tmp_path / "q.png")
    assert code == 2 and "trained 2 of 3" in err
