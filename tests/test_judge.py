"""The judge of ``nsn score`` (a small CNN) and the metrics computed in its features: its
gradient against finite differences, the fold (col2im) against a loop, KID against its
formula, and the validation of Heusel et al. (2017): FID and KID grow strictly with every
disturbance, on digits (trained judge) and faces (random judge)."""

from __future__ import annotations

import numpy as np
import pytest

from nsn_cli.disturb import LEVELS, disturbed_sets
from nsn_cli.engine.patches import extract_patches, fold_patches
from nsn_cli.judge import (
    ConvNet,
    _backward,
    _forward,
    fit_judge,
    initial_weights,
    random_judge,
)
from nsn_cli.metrics import KID_SUBSETS, frechet_distance, kernel_inception_distance, memorisation
from nsn_cli.readers import open_source

from .conftest import FACES, MNIST_IMAGES, MNIST_LABELS


def test_fold_is_the_adjoint_of_extract(rng):
    """<extract(x), p> == <x, fold(p)> for every x and p: what the backward conv relies on."""
    x = rng.standard_normal((3, 9, 11, 2)).astype(np.float32)
    p = rng.standard_normal((3, 5, 7, 5 * 5 * 2)).astype(np.float32)
    cols = extract_patches(x, 5, 1).reshape(p.shape)
    folded = fold_patches(p, 5, 1, 2)
    assert folded.shape == x.shape
    assert np.sum(cols * p, dtype=np.float64) == pytest.approx(np.sum(x * folded, dtype=np.float64), rel=1e-5)
    loop = np.zeros_like(x)
    for r in range(5):
        for c in range(7):
            loop[:, r : r + 5, c : c + 5] += p[:, r, c].reshape(3, 5, 5, 2)
    assert np.allclose(folded, loop, atol=1e-5)


def test_gradient_matches_finite_differences(rng):
    images = rng.uniform(size=(4, 16, 18, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    weights = {k: v.astype(np.float64) for k, v in initial_weights((16, 18, 1), 3, seed=5).items()}
    weights["out"] *= 10  # a loss far from log(3), so every gradient is sizable
    loss, grads = _backward(_forward(images.astype(np.float64), weights), labels, weights)
    for name in ("conv1", "conv1_b", "conv2", "hidden", "out_b"):
        flat = weights[name].reshape(-1)
        for index in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            step = 1e-3  # the convolutions run in float32: a smaller step drowns in rounding
            saved = flat[index]
            flat[index] = saved + step
            up, _ = _backward(_forward(images.astype(np.float64), weights), labels, weights)
            flat[index] = saved - step
            down, _ = _backward(_forward(images.astype(np.float64), weights), labels, weights)
            flat[index] = saved
            numeric = (up - down) / (2 * step)
            assert grads[name].reshape(-1)[index] == pytest.approx(numeric, rel=2e-2, abs=1e-4), (name, index)


def test_kid_is_the_unbiased_mmd_formula(rng):
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal((30, 6)) + 0.5
    mean, std = kernel_inception_distance(a, b, subsets=1, subset_size=1000)
    k = lambda x, y: (x @ y.T / 6 + 1) ** 3  # noqa: E731
    m = 30
    # one subset of 30 rows each: which 30 of a's 40 follows the seed, so rebuild them
    pick = np.random.default_rng(0)
    x, y = a[pick.choice(40, m, replace=False)], b[pick.choice(30, m, replace=False)]
    expected = ((k(x, x).sum() - np.trace(k(x, x))) + (k(y, y).sum() - np.trace(k(y, y)))) / (m * (m - 1)) \
        - 2 * k(x, y).mean()
    assert mean == pytest.approx(expected, rel=1e-6) and std == 0.0  # the product runs in float32
    # unbiased: two samples of one distribution give 0 up to the subsets' noise
    same = kernel_inception_distance(rng.standard_normal((3000, 6)), rng.standard_normal((3000, 6)), subsets=50)
    assert abs(same[0]) < 3 * same[1] / np.sqrt(50) + 1e-3


def test_judge_files_round_trip(tmp_path):
    judge = random_judge((20, 20, 3), seed=4)
    with open(tmp_path / "j.npz", "wb") as handle:
        np.savez(handle, **judge.to_arrays())
    with np.load(tmp_path / "j.npz") as arrays:
        again = ConvNet.from_arrays(arrays)
    x = np.random.default_rng(1).uniform(size=(3, 20, 20, 3)).astype(np.float32)
    assert again.kind == "random" and again.accuracy is None and again.image_shape == (20, 20, 3)
    assert np.array_equal(again.features(x), judge.features(x))
    with pytest.raises(ValueError, match="too small for the judge"):
        random_judge((12, 12, 1))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    source = open_source(MNIST_IMAGES)
    images = np.stack(source.read(0, len(source))).astype(np.float32) / 255.0
    from nsn_cli.readers import read_labels

    return images, read_labels(MNIST_LABELS)


def _monotone_table(judge, reference: np.ndarray, held: np.ndarray, labels, subsets: int = KID_SUBSETS) -> dict:
    """``{family: {level: (FID, KID)}}`` of the disturbed ``held`` images against ``reference``,
    level 0 the undisturbed set (measured once, shared by every family)."""
    reference_features = judge.features(reference)

    def measure(images: np.ndarray) -> tuple[float, float]:
        features = judge.features(images)
        return (frechet_distance(reference_features, features),
                kernel_inception_distance(reference_features, features, subsets=subsets)[0])

    clean = measure(held)
    table = {}
    for (family, level), images in disturbed_sets(held, labels, seed=1).items():
        table.setdefault(family, {0: clean})[level] = measure(images)
    return table


def _assert_monotone(table: dict, first: int) -> None:
    """FID and KID grow strictly from level ``first`` (0: the undisturbed set) to level 3."""
    for family, levels in table.items():
        fids = [levels[k][0] for k in range(first, 4)]
        kids = [levels[k][1] for k in range(first, 4)]
        assert all(np.diff(fids) > 0), (family, fids)
        assert all(np.diff(kids) > 0), (family, kids)


#: The test's judge: 2,000 digits, 4 epochs (5 s on one thread; held-out accuracy 0.93). The
#: product's judge (3,000 digits, 15 epochs, accuracy 0.98) takes two minutes: ``make judge``
#: measures it and its table.
TEST_IMAGES, TEST_EPOCHS = 2000, 4
#: KID subsets of the digit table: its smallest step (mild salt-and-pepper) more than doubles
#: KID, far beyond the spread of 5 subsets; each subset costs a second of products.
TEST_SUBSETS = 5


@pytest.mark.slow
def test_fid_and_kid_grow_with_every_disturbance_of_held_out_digits():
    """Heusel et al.'s check with a trained judge: fitted on 2,000 bundled digits, FID and KID
    against the first 3,000, the last 1,000 held out and disturbed (every family at three
    levels, class dropping included)."""
    images, labels = _digits()
    judge = fit_judge(images[:TEST_IMAGES], labels[:TEST_IMAGES], epochs=TEST_EPOCHS)
    assert judge.accuracy > 0.9  # an untrained judge scores 0.1
    table = _monotone_table(judge, images[:3000], images[3000:], labels[3000:], subsets=TEST_SUBSETS)
    assert set(table) == set(LEVELS)
    _assert_monotone(table, first=0)
    # memorised copies are not a defect FID can see (they are the data): they show in memo
    copies = images[:1000]
    reference_features = judge.features(images[:3000])
    assert frechet_distance(reference_features, judge.features(copies)) < table["noise"][1][0]
    _, copied, real = memorisation(copies, images[:3000], held_out=images[3000:])
    assert copied == 1.0 and real < 0.1


@pytest.mark.slow
def test_random_judge_sees_every_disturbance_of_faces():
    """Faces have no labels: the random judge, 40 faces as reference and the other 40 disturbed.
    (With 40 faces the mildest noise is within KID's noise of the clean set, so the check starts
    at level 1, as the issue's table does.)"""
    source = open_source(FACES)
    faces = np.stack(source.read(0, len(source))).astype(np.float32) / 255.0
    judge = random_judge(faces.shape[1:])
    table = _monotone_table(judge, faces[:40], faces[40:], None)
    assert "class-drop" not in table and len(table) == len(LEVELS) - 1
    _assert_monotone(table, first=1)
