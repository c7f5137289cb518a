"""``nsn score``: every metric against known values, and the command's bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nsn_cli.engine.geometry import LayerShape
from nsn_cli.engine.patches import extract_patches
from nsn_cli.errors import NsnError
from nsn_cli.files import load_images
from nsn_cli.metrics import (
    inception_score,
    isotropic_log_normal,
    laplacian_pyramid,
    parzen_log_density,
    parzen_log_likelihood,
    sliced_wasserstein,
)
from nsn_cli.model import Layer, NSNModel
from nsn_cli.prep import prep, resize_image, to_channels
from nsn_cli.readers import open_source
from nsn_cli.score import (
    PARZEN_SIGMAS,
    Reference,
    SampleSet,
    Scorer,
    check_size,
    match_images,
    parse_metrics,
    patch_nll,
    reference_classifier,
    usable_metrics,
)

from .conftest import MNIST_IMAGES

SAMPLE_METRICS = ("is", "fid", "swd", "parzen", "pr")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nsn-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("NSN_CACHE", str(cache))  # never write into the real ~/.cache


@pytest.fixture(scope="module")
def reference(mnist_small):
    images, labels, _ = load_images(mnist_small)
    return Reference(str(mnist_small), images, labels)


@pytest.fixture(scope="module")
def held_out():
    """200 bundled digits that are not in ``mnist_small`` (its first 600)."""
    return np.stack(open_source(MNIST_IMAGES).read(600, 800)).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def scorer(reference, cache):
    return Scorer(reference, SAMPLE_METRICS, cache=cache)


def _noise(n: int = 200) -> np.ndarray:
    return np.random.default_rng(7).uniform(size=(n, 28, 28, 1)).astype(np.float32)


# --------------------------------------------------------------------------- sample metrics


def test_reference_against_itself(scorer, reference):
    row = scorer.score(SampleSet("ref", reference.images))
    assert abs(row["frechet_distance"]) < 1e-3
    assert row["precision"] == 1.0 and row["recall"] == 1.0
    assert row["swd_level_28"] == row["swd_level_14"] == row["swd_mean"] == 0.0
    assert row["inception_score_mean"] > 5  # ten classes, confidently told apart


def test_noise_is_far_worse_than_real_digits_on_every_metric(scorer, held_out):
    real = scorer.score(SampleSet("real", held_out))
    noise = scorer.score(SampleSet("noise", _noise()))
    assert real["inception_score_mean"] > 2 * noise["inception_score_mean"]
    assert noise["frechet_distance"] > 10 * real["frechet_distance"]
    assert noise["swd_mean"] > 10 * real["swd_mean"]
    for level in (28, 14):
        assert noise[f"swd_level_{level}"] > 5 * real[f"swd_level_{level}"]
    assert noise["parzen_ll_mean"] < real["parzen_ll_mean"] - 300
    assert real["precision"] > 0.6 and real["recall"] > 0.6
    assert noise["precision"] < 0.05 and noise["recall"] < 0.05


def test_one_confident_class_has_inception_score_near_one(scorer, reference, cache):
    probs = scorer.classifier.probabilities(reference.images)
    confident = probs.max(axis=1) > 0.99
    top = np.bincount(probs.argmax(axis=1)[confident]).argmax()
    one_class = reference.images[confident & (probs.argmax(axis=1) == top)]
    assert len(one_class) >= 20
    row = Scorer(reference, ("is",), cache=cache).score(SampleSet("one class", one_class))
    assert 1.0 <= row["inception_score_mean"] < 1.05
    mean, _ = inception_score(scorer.classifier.probabilities(one_class))
    assert row["inception_score_mean"] == pytest.approx(mean)


def test_classifier_is_cached_by_content(reference, cache, scorer):
    again, cached = reference_classifier(reference.images, reference.labels, cache)
    assert cached and again.accuracy == scorer.classifier.accuracy > 0.8
    entries = list(cache.glob("classifier-*.pkl"))
    assert len(entries) == 1
    other, cached = reference_classifier(reference.images[:300], reference.labels[:300], None)
    assert not cached and len(list(cache.glob("classifier-*.pkl"))) == 1


def test_without_labels_pr_uses_pca_and_is_fid_are_dropped(reference, held_out):
    unlabelled = Reference("plain", reference.images)
    metrics, notes = usable_metrics(("is", "fid", "pr"), unlabelled)
    assert metrics == ("pr",) and "need a reference with labels" in notes[0]
    with pytest.raises(NsnError, match="IS need a reference with labels"):
        usable_metrics(("is",), unlabelled)
    scorer = Scorer(unlabelled, metrics)
    assert scorer.classifier is None and any("PCA-50" in n for n in scorer.notes)
    assert scorer.score(SampleSet("self", reference.images)) == {"precision": 1.0, "recall": 1.0}
    assert scorer.score(SampleSet("real", held_out))["recall"] > 0.6
    # PCA-50 cannot see what lies outside its 50 components (noise keeps its precision), but
    # noise covers none of the digits
    assert scorer.score(SampleSet("noise", _noise()))["recall"] == 0.0


# --------------------------------------------------------------------------- SWD pieces


def test_sliced_wasserstein_of_a_shift_in_one_dimension():
    a = np.random.default_rng(0).standard_normal((4000, 1)).astype(np.float32)
    # in 1-D every direction is +-1: the distance is exactly the shift
    assert sliced_wasserstein(a, a + 0.5) == pytest.approx(0.5, abs=1e-5)
    # unequal sizes compare quantiles
    assert sliced_wasserstein(a, a[::2] + 0.5) == pytest.approx(0.5, abs=0.03)
    assert sliced_wasserstein(a, a) == 0.0


def test_laplacian_pyramid_of_a_constant_is_zero_but_the_low_pass():
    images = np.full((2, 28, 28, 1), 0.3, np.float32)
    levels = laplacian_pyramid(images, 3)
    assert [lv.shape[1] for lv in levels] == [28, 14, 7]
    assert np.abs(levels[0]).max() < 1e-6 and np.abs(levels[1]).max() < 1e-6
    assert np.allclose(levels[2], 0.3)


# --------------------------------------------------------------------------- Parzen


def test_parzen_matches_the_closed_form_of_a_gaussian_kde():
    rng = np.random.default_rng(1)
    dims, s, sigma = 3, 1.0, 0.3
    centres = rng.normal(0.0, s, (40000, dims))
    points = rng.normal(0.0, s, (300, dims))
    estimate = parzen_log_density(centres, points, [sigma])[:, 0]
    # E[KDE](x) = N(x; 0, (s^2 + sigma^2) I)
    exact = isotropic_log_normal(np.sum(points**2, axis=1), s**2 + sigma**2, dims)
    error = estimate - exact
    bulk = np.sum(points**2, axis=1) < dims  # in the tails few kernels reach a point: more noise
    assert np.abs(error[bulk]).max() < 0.15 and np.abs(error).mean() < 0.06
    assert abs(error.mean()) < 0.02


def test_parzen_picks_sigma_on_validation_and_reports_the_entropy():
    rng = np.random.default_rng(2)
    s, dims = 0.3, 2
    samples, validation, test = (rng.normal(0.0, s, (n, dims)) for n in (5000, 500, 2000))
    mean, se, sigma = parzen_log_likelihood(samples, validation, test, PARZEN_SIGMAS)
    assert sigma == PARZEN_SIGMAS[0]  # the narrowest: the best for 5,000 samples at s = 0.3
    assert mean == pytest.approx(-0.5 * dims * math.log(2 * math.pi * math.e * s**2), abs=0.1)
    assert 0 < se < 0.05


# --------------------------------------------------------------------------- memorisation


def test_memorisation_flags_a_copied_training_set(reference, held_out):
    train, ref = reference.images[:400], Reference("held", reference.images[400:], reference.labels[400:])
    scorer = Scorer(ref, ("memo",), train=train)
    assert scorer.score(SampleSet("copy", train[:200]))["near_copy_fraction"] == 1.0
    real = scorer.score(SampleSet("real", held_out))
    assert real["near_copy_fraction"] < 0.2 and 0.5 < real["nn_ratio_median"] < 2
    with pytest.raises(NsnError, match="also in the training set"):
        Scorer(ref, ("memo",), train=ref.images)


# --------------------------------------------------------------------------- NLL


def _model(mu: np.ndarray, sigma: list[float], counts: list[int]) -> NSNModel:
    layer = Layer(LayerShape(2, 2), mu.astype(np.float32), np.asarray(sigma, float), np.asarray(counts), alpha=0.5)
    return NSNModel(arch=[LayerShape(2, 2)], image_shape=(4, 4, 1), layers=[layer])


def test_nll_of_one_filter_by_hand():
    images = np.random.default_rng(3).uniform(size=(5, 4, 4, 1)).astype(np.float32)
    mu = np.full((1, 2, 2, 1), 0.375)  # exact in float32, as the model stores it
    nll = patch_nll(_model(mu, [0.6], [7]), images)
    patches = extract_patches(images, 2, 2).astype(np.float64)  # 5 images x 4 patches of 4 dims
    variance = 0.6**2 / 4
    ll = -2 * np.log(2 * np.pi * variance) - ((patches - 0.375) ** 2).sum(axis=1) / (2 * variance)
    assert nll.patches == 20 and nll.dims == 4
    assert nll.nats_per_patch == pytest.approx(-ll.mean(), rel=1e-9)
    assert nll.bits_per_dim == pytest.approx(-ll.mean() / (4 * np.log(2)), rel=1e-9)
    s2 = ((patches - patches.mean(axis=0)) ** 2).sum() / patches.size
    assert nll.gaussian_nats_per_patch == pytest.approx(2 * (np.log(2 * np.pi * s2) + 1), rel=1e-9)


def test_nll_mixture_weights_follow_counts_and_skip_empty_filters():
    images = np.random.default_rng(4).uniform(size=(3, 4, 4, 1)).astype(np.float32)
    mu = np.stack([np.full((2, 2, 1), 0.25), np.full((2, 2, 1), 0.75), np.full((2, 2, 1), 0.5)])
    nll = patch_nll(_model(mu, [0.5, 0.8, 0.1], [1, 3, 0]), images)
    d2 = ((extract_patches(images, 2, 2).astype(np.float64)[:, None, :] - mu.reshape(1, 3, 4)[:, :2]) ** 2).sum(axis=2)
    ll = np.logaddexp(np.log(0.25) + isotropic_log_normal(d2[:, 0], 0.5**2 / 4, 4),
                      np.log(0.75) + isotropic_log_normal(d2[:, 1], 0.8**2 / 4, 4))
    assert nll.nats_per_patch == pytest.approx(-ll.mean(), rel=1e-9)


# --------------------------------------------------------------------------- matching


def test_samples_are_matched_like_prep(reference):
    rgb = np.random.default_rng(5).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    matched = match_images(list(rgb), reference, "x")
    assert matched.shape == (2, 28, 28, 1)
    assert np.array_equal(matched[0], resize_image(to_channels(rgb[0], 1), (28, 28)))
    with pytest.raises(NsnError, match="cannot be matched"):
        check_size((28, 14), reference, "wide.npy")
    whitened = Reference("zca.h5", reference.images, whitened=True)
    with pytest.raises(NsnError, match="ZCA-whitened at 28x28"):
        check_size((56, 56), whitened, "big.npy")


def test_parse_metrics():
    assert parse_metrics("nll, IS,swd") == ("is", "swd", "nll")
    with pytest.raises(NsnError, match="unknown metric 'foo'"):
        parse_metrics("is,foo")


# --------------------------------------------------------------------------- CLI


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_scores_a_model_and_writes_json(cli, tiny_model, mnist_small, tmp_path):
    model_path, _ = tiny_model
    out = tmp_path / "scores.json"
    code, stdout, err = cli("score", model_path, "--ref", mnist_small, "-n", "200", "--metrics",
                            "is,fid,pr,parzen,nll", "--json", out, "-q")
    assert code == 0, err
    assert "model.h5" in stdout and "not Inception features" in " ".join(err.split())
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["kind"] == "model" and row["images"] == 200
    assert 0.8 < report["classifier_accuracy"] <= 1.0
    assert 1.0 < row["inception_score_mean"] < 10 and row["frechet_distance"] > 0
    assert 0.0 <= row["precision"] <= 1.0 and math.isfinite(row["parzen_ll_mean"])
    # the filters fit the patches far better than one Gaussian does
    assert row["nll_bits_per_dim"] < row["nll_gaussian_bits_per_dim"]
    code, _, err = cli("score", model_path, "--ref", mnist_small, "--json", out)
    assert code == 2 and "already exists" in _error(err)
    code, _, err = cli("score", model_path, "--ref", mnist_small, "-n", "5")
    assert code == 2 and "5 images; scoring needs at least 10" in _error(err)


@pytest.fixture(scope="module")
def unlabelled(mnist_small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlabelled")
    np.save(folder / "digits.npy", load_images(mnist_small)[0][:100])
    prep([folder / "digits.npy"], folder / "plain.h5")
    prep([folder / "digits.npy"], folder / "zca14.h5", size=(14, 14), zca=True)
    return folder


def test_cli_bad_inputs(cli, mnist_small, unlabelled, tmp_path):
    digits = unlabelled / "digits.npy"
    cases = [
        (["--metrics", "is,foo"], digits, "unknown metric 'foo'"),
        (["-n", "0"], digits, "-n must be at least 1"),
        (["--metrics", "is"], digits, "need a reference with labels"),
    ]
    for options, sample, message in cases:
        ref = unlabelled / "plain.h5" if "need a reference" in message else mnist_small
        code, _, err = cli("score", sample, "--ref", ref, *options)
        assert code == 2 and message in _error(err), (options, err)
    (tmp_path / "empty").mkdir()
    arrays = {"nan.npy": np.full((20, 28, 28), np.nan, np.float32), "wide.npy": np.zeros((20, 28, 14), np.float32)}
    for name, array in arrays.items():
        np.save(tmp_path / name, array)
    for sample, ref, message in [
        (tmp_path / "empty", mnist_small, "the folder is empty"),
        (tmp_path / "nan.npy", mnist_small, "NaN"),
        (tmp_path / "wide.npy", mnist_small, "28x14 images cannot be matched to the reference's 28x28"),
        (digits, unlabelled / "zca14.h5", "ZCA-whitened at 14x14"),
        (tmp_path / "missing.npz", mnist_small, "no such file or folder"),
    ]:
        code, _, err = cli("score", sample, "--ref", ref, "--metrics", "pr")
        assert code == 2 and message in _error(err), (sample, err)
