"""``nsn score``: every metric against known values, and the command's bad inputs."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest

import nsn_cli.score.inputs as inputs_module
import nsn_cli.score.plugins as plugins_module
from nsn_cli.engine.geometry import LayerShape
from nsn_cli.engine.patches import extract_patches
from nsn_cli.errors import NsnError
from nsn_cli.files import load_images
from nsn_cli.metrics import (
    FeatureMoments,
    InceptionScoreAccumulator,
    frechet_distance,
    frechet_distance_from_moments,
    inception_score,
    isotropic_log_normal,
    kernel_inception_distance,
    laplacian_pyramid,
    parzen_log_density,
    parzen_log_likelihood,
    precision_recall,
    sliced_wasserstein,
)
from nsn_cli.model import Layer, NSNModel
from nsn_cli.prep import prep, resize_image, to_channels
from nsn_cli.readers import open_source
from nsn_cli.sample import generate
from nsn_cli.score import (
    PARZEN_SIGMAS,
    Matcher,
    Reference,
    SampleSet,
    Scorer,
    open_input,
    parse_metrics,
    patch_nll,
    pick_rows,
    read_input,
    reference_judge,
)

from .conftest import MNIST_IMAGES

SAMPLE_METRICS = ("is", "fid", "kid", "swd", "parzen", "pr")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nsn-cache")


@pytest.fixture(scope="module", autouse=True)
def _fewer_swd_descriptors():
    """SWD on at most 8,192 neighbourhoods per level instead of 65,536: the same descriptors,
    projections and sorts, an eighth of the work (600 reference digits give 13 per image, the
    picks still vary by image). Module-wide, so the module's scorers are built with it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugins_module, "SWD_MAX_DESCRIPTORS", 1 << 13)
        yield


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


@pytest.mark.slow
def test_reference_against_itself(scorer, reference):
    row = scorer.score(SampleSet.of("ref", reference.images))
    assert abs(row["frechet_distance"]) < 1e-3
    assert row["precision"] == 1.0 and row["recall"] == 1.0
    assert row["swd_level_28"] == row["swd_level_14"] == row["swd_mean"] == 0.0
    assert row["inception_score_mean"] > 5  # ten classes, confidently told apart


@pytest.mark.slow
def test_noise_is_far_worse_than_real_digits_on_every_metric(scorer, held_out):
    real = scorer.score(SampleSet.of("real", held_out))
    noise = scorer.score(SampleSet.of("noise", _noise()))
    assert real["inception_score_mean"] > 2 * noise["inception_score_mean"]
    assert noise["frechet_distance"] > 10 * real["frechet_distance"]
    assert noise["kernel_inception_distance_mean"] > 10 * real["kernel_inception_distance_mean"]
    assert noise["swd_mean"] > 10 * real["swd_mean"]
    for level in (28, 14):
        assert noise[f"swd_level_{level}"] > 5 * real[f"swd_level_{level}"]
    assert noise["parzen_ll_mean"] < real["parzen_ll_mean"] - 300
    assert real["precision"] > 0.6 and real["recall"] > 0.6
    # noise covers none of the digits (k-NN precision in a classifier's features is the weak
    # one: noise lands inside the balls of outlying real digits, see the plug-in's notes)
    assert noise["recall"] == 0.0


def test_one_confident_class_has_inception_score_near_one(scorer, reference, cache):
    probs = scorer.judge.probabilities(reference.images)
    confident = probs.max(axis=1) > 0.99
    top = np.bincount(probs.argmax(axis=1)[confident]).argmax()
    one_class = reference.images[confident & (probs.argmax(axis=1) == top)]
    assert len(one_class) >= 20
    row = Scorer(reference, ("is",), cache=cache).score(SampleSet.of("one class", one_class))
    assert 1.0 <= row["inception_score_mean"] < 1.05
    mean, _ = inception_score(scorer.judge.probabilities(one_class))
    assert row["inception_score_mean"] == pytest.approx(mean)


@pytest.mark.slow
def test_judge_is_cached_by_content(reference, cache, scorer):
    again, cached = reference_judge(reference, cache)
    assert cached and again.accuracy == scorer.judge.accuracy > 0.8
    assert all(np.array_equal(again.weights[k], scorer.judge.weights[k]) for k in again.weights)
    assert len(list(cache.glob("judge-*.npz"))) == 1
    fewer = Reference("fewer", reference.images[:300], reference.labels[:300])
    _, cached = reference_judge(fewer, None)
    assert not cached and len(list(cache.glob("judge-*.npz"))) == 1
    # a damaged entry is refitted, not trusted
    entry = next(cache.glob("judge-*.npz"))
    entry.write_bytes(b"not a judge")
    refit, cached = reference_judge(reference, cache)
    assert not cached and refit.accuracy == scorer.judge.accuracy


def test_without_labels_the_random_judge_gives_fid_kid_and_pr_but_no_is(reference, held_out):
    unlabelled = Reference("plain", reference.images)
    scorer = Scorer(unlabelled, ("is", "fid", "kid", "pr"))
    assert scorer.judge.kind == "random" and [p.name for p in scorer.plugins] == ["fid", "kid", "pr"]
    assert any("IS needs a reference with labels" in n for n in scorer.notes)
    assert any("randomly initialised CNN" in n for n in scorer.notes)
    real, noise = (scorer.score(SampleSet.of(name, x)) for name, x in (("real", held_out), ("noise", _noise())))
    assert real["recall"] > 0.6 and noise["recall"] == 0.0 and noise["precision"] < real["precision"] - 0.2
    assert noise["frechet_distance"] > 10 * real["frechet_distance"]
    assert noise["kernel_inception_distance_mean"] > 10 * real["kernel_inception_distance_mean"]
    # the reference against itself (KID left out: its 100 subsets of 600 x 600 kernels are most
    # of this test's time, and KID of a set with itself is not a check of the random judge)
    itself = Scorer(unlabelled, ("fid", "pr")).score(SampleSet.of("self", reference.images))
    assert itself["precision"] == itself["recall"] == 1.0 and abs(itself["frechet_distance"]) < 1e-3
    with pytest.raises(NsnError, match="none of the metrics asked for can run"):
        Scorer(unlabelled, ("is",))


# --------------------------------------------------------------------------- streaming


@pytest.mark.slow
@pytest.mark.parametrize("caps", [None, (60, 90)], ids=["every image", "capped subsets"])
def test_small_chunks_give_the_numbers_of_one_chunk(reference, held_out, cache, monkeypatch, caps):
    """Chunks of 7 images (not dividing 150, the cap or the picks) against one chunk of all 150;
    with caps below 150 the precision/recall rows and the image subset are picked mid-chunk."""
    if caps is not None:
        monkeypatch.setattr(plugins_module, "PR_MAX", caps[0])
        monkeypatch.setattr(plugins_module, "KID_MAX", caps[0])
        monkeypatch.setattr(plugins_module, "SUBSET_MAX", caps[1])
    samples, train = held_out[:150], held_out[150:]
    scorer = Scorer(reference, (*SAMPLE_METRICS, "memo"), train=train, cache=cache)
    rows = {}
    for chunk in (7, 10**6):
        monkeypatch.setattr(inputs_module, "CHUNK", chunk)
        rows[chunk] = scorer.score(SampleSet.of("digits", samples))
    small, whole = rows[7], rows[10**6]
    assert small.keys() == whole.keys() and len(whole) == 17
    # IS, FID and KID to float32 precision: the judge's float32 products round differently in
    # batches of 7 rows (another BLAS kernel), and the sums go in another order; KID, a small
    # difference of large kernel sums, amplifies the rounding tenfold
    sums = ("inception_score_mean", "inception_score_std", "frechet_distance", "kernel_inception_distance_mean",
            "kernel_inception_distance_std")
    assert {k: small[k] for k in sums} == pytest.approx({k: whole[k] for k in sums}, rel=1e-5)
    assert {k: v for k, v in small.items() if k not in sums} == {k: v for k, v in whole.items() if k not in sums}
    # and they are what the whole-array metrics give on the picked rows
    features = scorer.judge.features(samples)
    pr_rows = features[pick_rows(len(samples), plugins_module.PR_MAX, scorer.seed)]
    pr_reference = plugins_module.subsample(scorer.context.features, plugins_module.PR_MAX, scorer.seed)
    assert (whole["precision"], whole["recall"]) == precision_recall(pr_reference, pr_rows, k=plugins_module.PR_K)
    kid_rows = features[pick_rows(len(samples), plugins_module.KID_MAX, scorer.seed)]
    assert whole["kernel_inception_distance_mean"] == kernel_inception_distance(
        scorer.context.features, kid_rows, seed=scorer.seed)[0]
    subset = samples[pick_rows(len(samples), plugins_module.SUBSET_MAX, scorer.seed)]
    assert len(subset) == (150 if caps is None else 90) and whole["parzen_samples"] == len(subset)
    swd = next(p for p in scorer.plugins if p.name == "swd")
    assert [whole["swd_level_28"], whole["swd_level_14"]] == swd.reference.distances(subset, lambda n: None)
    mean, _ = inception_score(scorer.judge.probabilities(samples))
    assert whole["inception_score_mean"] == pytest.approx(mean, rel=1e-12)


def test_pick_rows_takes_every_row_in_order_up_to_the_limit():
    assert np.array_equal(pick_rows(5, 5, seed=3), np.arange(5))
    picked = pick_rows(1000, 10, seed=3)
    assert len(np.unique(picked)) == 10 and np.all(np.diff(picked) > 0) and picked[-1] < 1000
    assert np.array_equal(picked, pick_rows(1000, 10, seed=3))


def test_model_samples_stream_as_generate_makes_them(tiny_model, reference, monkeypatch):
    model = open_input(tiny_model[0])
    matcher = Matcher(reference)
    expected = matcher.match(generate(model, 50, seed=4), "model")
    monkeypatch.setattr(inputs_module, "CHUNK", 16)
    advances: list[int] = []
    samples = read_input(model, matcher, "model", 50, seed=4, tracker=lambda text, total: advances.append)
    chunks: list[np.ndarray] = []
    samples.feed(chunks.append)
    assert samples.count == 50 and [len(c) for c in chunks] == advances == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate(chunks), expected)


def test_a_bad_pixel_in_a_late_chunk_is_refused(scorer, held_out, monkeypatch):
    monkeypatch.setattr(inputs_module, "CHUNK", 16)
    images = held_out.copy()
    images[-1, 3, 3, 0] = np.inf
    with pytest.raises(NsnError, match="late: the images contain NaN or infinite values"):
        scorer.score(SampleSet.of("late", images))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # the dead unit's singular covariance
def test_fid_from_streamed_moments_is_the_array_formula():
    from scipy import linalg

    rng = np.random.default_rng(11)
    # far from zero, correlated, one dead unit: what one-pass sums about zero would get wrong
    a = 1e5 + rng.standard_normal((3000, 12)) @ rng.standard_normal((12, 12))
    b = 1e5 - 1.0 + 1.3 * rng.standard_normal((2000, 12)) @ rng.standard_normal((12, 12))
    a[:, 4] = b[:, 4] = 0.0
    moments = []
    for x in (a, b):
        streamed = FeatureMoments()
        for start, stop in zip((0, 1, 500, 1700), (1, 500, 1700, len(x))):
            streamed.add(x[start:stop].astype(np.float32) if start == 1 else x[start:stop])
        moments.append(streamed)
    a[1:500], b[1:500] = a[1:500].astype(np.float32), b[1:500].astype(np.float32)  # as fed
    for streamed, x in zip(moments, (a, b)):
        assert streamed.count == len(x)
        assert np.allclose(streamed.mean, x.mean(axis=0), rtol=1e-12, atol=0)
        assert np.allclose(streamed.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    # the formula as nsn score had it before it streamed
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
                     + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real))
    (ma, mb) = moments
    assert frechet_distance_from_moments(ma.mean, ma.cov, mb.mean, mb.cov) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_from_moments(ma.mean, ma.cov, ma.mean, ma.cov) == pytest.approx(0.0, abs=1e-6)


def test_inception_score_from_chunks_is_the_split_formula():
    p = np.random.default_rng(12).dirichlet(np.full(10, 0.3), size=1003)
    expected = []
    for part in np.array_split(p, 10):  # uneven splits: 101 rows in the first three
        marginal = part.mean(axis=0, keepdims=True)
        expected.append(np.exp(np.sum(part * (np.log(part + 1e-12) - np.log(marginal + 1e-12)), axis=1).mean()))
    streamed = InceptionScoreAccumulator(len(p), 10)
    for start in range(0, len(p), 64):
        streamed.add(p[start : start + 64])
    assert streamed.result() == pytest.approx((np.mean(expected), np.std(expected)), rel=1e-12)
    assert inception_score(p) == pytest.approx(streamed.result(), rel=1e-12)
    with pytest.raises(ValueError, match="1000 of 1003 rows"):
        partial = InceptionScoreAccumulator(len(p), 10)
        partial.add(p[:1000])
        partial.result()


@pytest.mark.slow
def test_scoring_memory_does_not_grow_with_n(reference, held_out, cache, tmp_path, monkeypatch):
    """A 12,000-image .npy scored in chunks of 64 with subsets of at most 100: the memory traced
    while scoring 12,000 is that of scoring 1,000, far below the 38 MB the matched images alone
    would take. (The reader holds the opened .npy array itself; it is opened before tracing.)
    SWD is left out: its working memory is set by the reference's descriptors, not by n."""
    monkeypatch.setattr(inputs_module, "CHUNK", 64)
    monkeypatch.setattr(plugins_module, "SUBSET_MAX", 100)
    monkeypatch.setattr(plugins_module, "PR_MAX", 100)
    monkeypatch.setattr(plugins_module, "KID_MAX", 100)
    digits = np.rint(np.concatenate([reference.images, held_out]) * 255).astype(np.uint8)
    np.save(tmp_path / "many.npy", np.tile(digits, (15, 1, 1, 1)))
    item = open_input(tmp_path / "many.npy")
    scorer = Scorer(reference, ("is", "fid", "kid", "pr", "parzen", "memo"), train=held_out, cache=cache)
    peaks, advances = {}, []
    for n in (1000, 12000):  # the smaller first: it also pays for what is allocated once
        samples = read_input(item, Matcher(reference), "many.npy", n, seed=0,
                             tracker=lambda text, total: advances.append)
        tracemalloc.start()
        try:
            row = scorer.score(samples)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert samples.count == n and math.isfinite(row["frechet_distance"])
    assert sum(advances) == 13000 and max(advances) == 64
    matched = 12000 * 28 * 28 * 4
    assert peaks[12000] < peaks[1000] + (1 << 20) and peaks[12000] < matched / 3, peaks


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


@pytest.mark.slow
def test_memorisation_flags_a_copied_training_set(reference, held_out):
    train, ref = reference.images[:400], Reference("held", reference.images[400:], reference.labels[400:])
    scorer = Scorer(ref, ("memo",), train=train)
    assert scorer.score(SampleSet.of("copy", train[:200]))["near_copy_fraction"] == 1.0
    real = scorer.score(SampleSet.of("real", held_out))
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


def test_other_sizes_are_refused_unless_resized_like_prep(reference):
    rgb = np.random.default_rng(5).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    with pytest.raises(NsnError, match="images are 56x56x3, the reference .* is 28x28x1; .* --resize"):
        Matcher(reference).match(list(rgb), "x")
    matcher = Matcher(reference, resize=True)
    assert "--resize brought 56x56x3 images to 28x28x1" in matcher.check(rgb.shape[1:], "x")
    matched = matcher.match(list(rgb), "x")
    assert matched.shape == (2, 28, 28, 1)
    assert np.array_equal(matched[0], resize_image(to_channels(rgb[0], 1), (28, 28)))
    assert matcher.check((28, 28, 1), "same") is None
    with pytest.raises(NsnError, match="cannot be matched"):
        matcher.check((28, 14, 1), "wide.npy")
    whitened = Matcher(Reference("zca.h5", reference.images, whitened=True), resize=True)
    with pytest.raises(NsnError, match="ZCA-whitened at 28x28"):
        whitened.check((56, 56, 1), "big.npy")


def test_parse_metrics():
    assert parse_metrics("nll, IS,swd,kid") == ("is", "kid", "swd", "nll")
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
    assert "model.h5" in stdout and "features: a CNN trained on the reference's labels" in " ".join(err.split())
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["kind"] == "model" and row["images"] == 200
    assert report["judge"] == "trained" and 0.8 < report["judge_accuracy"] <= 1.0
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
        (["--metrics", "is"], digits, "IS needs a reference with labels"),
    ]
    for options, sample, message in cases:
        ref = unlabelled / "plain.h5" if "needs a reference" in message else mnist_small
        code, _, err = cli("score", sample, "--ref", ref, *options)
        assert code == 2 and message in _error(err), (options, err)
    (tmp_path / "empty").mkdir()
    arrays = {"nan.npy": np.full((20, 28, 28), np.nan, np.float32), "wide.npy": np.zeros((20, 28, 14), np.float32)}
    for name, array in arrays.items():
        np.save(tmp_path / name, array)
    for sample, ref, message in [
        (tmp_path / "empty", mnist_small, "the folder is empty"),
        (tmp_path / "nan.npy", mnist_small, "NaN"),
        (tmp_path / "wide.npy", mnist_small, "images are 28x14x1, the reference"),
        (digits, unlabelled / "zca14.h5", "images are 28x28x1, the reference"),
        (tmp_path / "missing.npz", mnist_small, "no such file or folder"),
    ]:
        code, _, err = cli("score", sample, "--ref", ref, "--metrics", "pr")
        assert code == 2 and message in _error(err), (sample, err)
    for sample, ref, message in [
        (tmp_path / "wide.npy", mnist_small, "28x14 images cannot be matched to the reference's 28x28"),
        (digits, unlabelled / "zca14.h5", "ZCA-whitened at 14x14"),
    ]:
        code, _, err = cli("score", sample, "--ref", ref, "--metrics", "pr", "--resize")
        assert code == 2 and message in _error(err), (sample, err)
