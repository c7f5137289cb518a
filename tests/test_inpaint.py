"""``nsn inpaint``'s posterior fill: its distances by hand, known pixels kept, a member found
again, batches, sampling, an all-hole mask, other sizes, and the command on folders."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from nsn_cli.errors import NsnError
from nsn_cli.files import load_images
from nsn_cli.inpaint import (
    InpaintOptions,
    from_model_size,
    inpaint_posterior,
    known_distances,
    member_images,
    to_model_size,
)
from nsn_cli.sample import generate


def _holes(count: int, kind: str = "centre") -> np.ndarray:
    holes = np.zeros((count, 28, 28), bool)
    if kind == "centre":
        holes[:, 9:19, 9:19] = True
    else:
        holes[:, 14:] = True
    return holes


def test_known_distances_by_hand(rng):
    images = rng.random((3, 5, 4, 2), dtype=np.float32)
    known = rng.random((3, 5, 4)) < 0.6
    candidates = rng.random((7, 5, 4, 2), dtype=np.float32)
    d = known_distances(images, known, candidates)
    for i in range(3):
        for j in range(7):
            diff = (images[i] - candidates[j])[known[i]]
            assert d[i, j] == pytest.approx(np.mean(diff**2) * 1.0, rel=1e-4, abs=1e-6)


def test_posterior_fill_keeps_known_pixels_and_finds_a_member_again(tiny_model):
    _, model = tiny_model
    members = member_images(model)
    holes = _holes(4)
    queries = members[[3, 50, 120, 300]]
    filled = inpaint_posterior(model, queries, holes)
    assert np.array_equal(filled[~holes], queries[~holes])
    # each query is a decoded member, its own nearest candidate (distance 0): with a small
    # temperature its weight is all but 1 and the hole is the member's own
    sharp = inpaint_posterior(model, queries, holes, InpaintOptions(temperature=0.01))
    assert np.abs(sharp - queries).max() < 1 / 255  # float32 distances: its own is ~1e-7, not 0
    assert np.mean((filled - queries)[holes] ** 2) > 1e-4  # the default averages several
    # batches change nothing: one image at a time gives the same bits
    alone = np.concatenate([inpaint_posterior(model, queries[i : i + 1], holes[i : i + 1]) for i in range(4)])
    assert np.array_equal(alone, filled)


def test_sample_fill_is_one_candidate_and_seeded(tiny_model, mnist_small):
    _, model = tiny_model
    digits = load_images(mnist_small)[0][:6]
    holes = _holes(6, "bottom")
    options = InpaintOptions(sample=True, seed=4, boundary=0.0)
    one = inpaint_posterior(model, digits, holes, options)
    assert np.array_equal(one, inpaint_posterior(model, digits, holes, options))
    assert np.array_equal(one[~holes], digits[~holes])
    assert not np.array_equal(one, inpaint_posterior(model, digits, holes, InpaintOptions(sample=True, seed=5,
                                                                                            boundary=0.0)))
    # one candidate is a digit: fewer mid-grey pixels in the hole than the mean of many
    mean = inpaint_posterior(model, digits, holes, InpaintOptions(boundary=0.0))
    grey = lambda x: np.mean((x[holes] > 0.2) & (x[holes] < 0.8))  # noqa: E731
    assert grey(one) < grey(mean)


def test_a_mask_with_nothing_known_samples_the_model(tiny_model):
    _, model = tiny_model
    blank = np.zeros((3, 28, 28, 1), np.float32)
    holes = np.ones((3, 28, 28), bool)
    filled = inpaint_posterior(model, blank, holes, InpaintOptions(seed=9), first=5)
    assert np.array_equal(filled, generate(model, 3, seed=9, first=5))


def test_other_sizes_go_through_the_model_size_and_back(tiny_model, mnist_small):
    _, model = tiny_model
    from nsn_cli.prep import resize_image

    digit = resize_image(load_images(mnist_small)[0][7], (25, 25))
    hole = np.zeros((25, 25), bool)
    hole[8:17, 6:19] = True
    resized = to_model_size(digit, hole, model, "d.png: ")
    assert resized.image.shape == (28, 28, 1) and "25x25 brought to the model's 28x28" in resized.note
    assert resized.hole.sum() >= hole.sum() * (28 / 25) ** 2 * 0.9  # every touched model pixel
    filled = from_model_size(inpaint_posterior(model, resized.image[None], resized.hole[None])[0], resized)
    assert filled.shape == digit.shape and np.array_equal(filled[~hole], digit[~hole])
    with pytest.raises(NsnError, match="must be the model's"):
        inpaint_posterior(model, digit[None], hole[None])
    # the fill does not depend on what the hole holds: resizing reaches across its edge, and
    # zeros there once darkened the known pixels the fill is fitted to (faces: 16.2 -> 18.8 dB)
    blanked = np.where(hole[..., None], 0.0, digit).astype(np.float32)
    blank = to_model_size(blanked, hole, model)
    again = from_model_size(inpaint_posterior(model, blank.image[None], blank.hole[None])[0], blank)
    assert np.array_equal(again, filled)


def test_inpaint_command_on_folders(cli, tmp_path, tiny_model, mnist_small):
    path, _ = tiny_model
    digits = np.rint(load_images(mnist_small)[0][:3, ..., 0] * 255).astype(np.uint8)
    (tmp_path / "one").mkdir()
    iio.imwrite(tmp_path / "one" / "seven.png", digits[0])
    mask = np.zeros((28, 28), np.uint8)
    mask[10:18, 10:18] = 255
    iio.imwrite(tmp_path / "mask.png", mask)
    code, out, err = cli("inpaint", tmp_path / "one", "--mask", tmp_path / "mask.png", "-m", path,
                         "-o", tmp_path / "filled")
    assert code == 0, err
    written = iio.imread(tmp_path / "filled" / "seven.png")  # a folder of one keeps the name
    assert np.array_equal(written[mask == 0], digits[0][mask == 0])
    iio.imwrite(tmp_path / "white.png", np.full((28, 28), 255, np.uint8))
    code, _, err = cli("inpaint", tmp_path / "one" / "seven.png", "--mask", tmp_path / "white.png", "-m", path,
                       "-o", tmp_path / "w.png")
    assert code == 0 and "nothing is known, so the fill is a sample" in " ".join(err.split())
    code, _, err = cli("inpaint", tmp_path / "one" / "seven.png", "--mask", tmp_path / "mask.png", "-m", path,
                       "-o", tmp_path / "x.png", "--method", "nope")
    assert code == 2 and "--method must be one of posterior, layers" in err
    code, _, err = cli("inpaint", tmp_path / "one" / "seven.png", "--mask", tmp_path / "mask.png", "-m", path,
                       "-o", tmp_path / "x.png", "--temperature", "0")
    assert code == 2 and "--temperature must be a number > 0" in err


def test_known_weights_by_hand():
    from nsn_cli.inpaint import FOCUS_FLOOR, known_weights

    holes = np.zeros((2, 1, 6), bool)
    holes[0, 0, 4:] = True  # a hole at the right end of a row of six
    weights = known_weights(holes, focus=2.0)
    distance = np.array([4.0, 3.0, 2.0, 1.0])  # of pixels 0..3 to the hole
    assert np.allclose(weights[0, 0, :4], np.exp(-(distance - 1) / 2.0) + FOCUS_FLOOR)
    assert np.all(weights[0, 0, 4:] == 0) and np.all(np.diff(weights[0, 0, :4]) > 0)
    assert np.all(weights[1] == 1.0)  # nothing to fill: every pixel known, equal weights
    assert np.array_equal(known_weights(holes, focus=0.0), ~holes)
