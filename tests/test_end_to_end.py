"""Whole pipelines through the CLI: ZCA faces, an RGB texture model, a partly trained model."""

from __future__ import annotations

import numpy as np
import pytest

from nsn_cli.files import load_images
from nsn_cli.model import NSNModel

from .conftest import DATA, FACES


@pytest.mark.slow
def test_zca_faces_train_sample_inpaint(cli, tmp_path):
    """The README's faces workflow with default settings: a small data set, so the layers are
    capped; samples are not copies and have the faces' contrast; a 25x25 face is filled and
    restyled through the 28x28 ZCA model."""
    import imageio.v3 as iio

    data, model = tmp_path / "faces.h5", tmp_path / "faces-model.h5"
    assert cli("prep", FACES, "--size", "28", "--zca", "-o", data, "-q")[0] == 0
    code, _, err = cli("train", data, "-o", model, "-q")
    assert code == 0, err
    assert "refitted to" in " ".join(err.split())  # the small-data caps said what they did
    trained = NSNModel.load(model)
    assert trained.zca is not None and trained.calibration is not None
    assert trained.layers[-1].filters <= 80 // 8 and trained.layers[1].filters <= 80 * 36 // 64
    assert trained.memorisation["near_copies"] <= 0.05
    code, _, err = cli("sample", "-m", model, "-n", "200", "-o", tmp_path / "s.npz", "-q")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npz")["images"]
    faces = np.stack([iio.imread(p) for p in sorted(FACES.glob("*.png"))]).astype(np.float32) / 255
    assert samples.shape == (200, 28, 28, 1)
    assert abs(samples.std() - faces.std()) < 0.15 * faces.std()  # contrast restored by calibration
    # a 25x25 face and a rectangular hole: filled through the 28x28 model, known pixels exact
    mask = np.zeros((25, 25), np.uint8)
    mask[6:15, 5:17] = 255
    iio.imwrite(tmp_path / "mask.png", mask)
    face = sorted(FACES.glob("*.png"))[3]
    code, _, err = cli("inpaint", face, "--mask", tmp_path / "mask.png", "-m", model, "-o", tmp_path / "f.png")
    assert code == 0 and "25x25 brought to the model's 28x28" in " ".join(err.split()), err
    filled, original = iio.imread(tmp_path / "f.png"), iio.imread(face)
    assert filled.shape == (25, 25) and np.array_equal(filled[mask == 0], original[mask == 0])
    assert not np.array_equal(filled[mask > 0], original[mask > 0])
    code, _, err = cli("style", face, "-m", model, "--variants", "2", "-o", tmp_path / "st.png")
    assert code == 0 and "brought to the ZCA model's 28x28" in " ".join(err.split()), err
    assert iio.imread(tmp_path / "st.png").shape[0] == 1 + 25 + 1  # the strip, at the face's own size


@pytest.mark.slow
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
