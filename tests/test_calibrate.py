"""Pixel calibration: the quantile map by hand, its atoms, the file round trip, and on a real
model: calibrated samples have the training digits' histogram, whatever the batch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nsn_cli.calibrate import Calibration, ValueReservoir, order_statistics, quantile_map
from nsn_cli.errors import NsnError
from nsn_cli.files import load_images
from nsn_cli.model import NSNModel
from nsn_cli.sample import generate


def test_quantile_map_sends_each_quantile_to_the_data_quantile(rng):
    generated = rng.uniform(0.2, 0.6, size=(200000, 1))
    data = rng.beta(0.5, 2.0, size=(150000, 1))
    source, target = quantile_map(generated, data, knots=257)
    mapped = np.interp(generated[:, 0], source[0], target[0])
    probabilities = np.linspace(0.05, 0.95, 19)
    assert np.allclose(np.quantile(mapped, probabilities), np.quantile(data, probabilities), atol=0.01)
    assert np.all(np.diff(source[0]) > 0) and np.all(np.diff(target[0]) >= 0)  # monotone


@pytest.mark.parametrize("m", [1, 2, 3, 10, 4097])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_statistics_are_np_quantile_inverted_cdf_to_the_bit(rng, m, dtype):
    values = rng.random((m, 5)).astype(dtype)
    values[values < 0.3] = 0.25  # ties
    if m > 3:
        values[m // 2, 2] = np.nan  # np.quantile: the whole column NaN
    probabilities = np.linspace(0.0, 1.0, 257)
    expected = np.array([np.quantile(values[:, c].astype(np.float64), probabilities, method="inverted_cdf")
                         for c in range(5)])
    assert np.array_equal(order_statistics(values, probabilities), expected, equal_nan=True)


def test_an_atom_goes_where_the_rank_transform_sends_it(rng):
    """70% of generated pixels are exactly 0.05 (a flat background): they all go to the data's
    lowest value, as ranking them would; the rest spread over the data's upper quantiles."""
    generated = np.where(rng.random(100000) < 0.7, 0.05, rng.uniform(0.1, 0.9, 100000))[:, None]
    data = np.where(rng.random(100000) < 0.8, 0.0, rng.uniform(0.5, 1.0, 100000))[:, None]
    source, target = quantile_map(generated, data)
    mapped = np.interp(generated[:, 0], source[0], target[0])
    assert np.all(mapped[generated[:, 0] == 0.05] == 0.0)
    assert np.mean(mapped > 0.5) == pytest.approx(0.2, abs=0.01)


def test_reservoir_keeps_a_bounded_seeded_subsample(rng):
    images = rng.random((50, 8, 8, 3)).astype(np.float32)
    keep_all = ValueReservoir(3, 50 * 64, limit=10**6)
    bounded = ValueReservoir(3, 50 * 64, limit=800, seed=2)
    again = ValueReservoir(3, 50 * 64, limit=800, seed=2)
    for a in range(0, 50, 7):
        for reservoir in (keep_all, bounded, again):
            reservoir.add(images[a : a + 7])
    assert np.array_equal(keep_all.values(), images.reshape(-1, 3))
    assert 600 < len(bounded.values()) < 1000 and np.array_equal(bounded.values(), again.values())


def test_calibration_file_round_trip_and_damage(tmp_path):
    calibration = Calibration(np.array([[0.0, 0.5, 1.0]], np.float32), np.array([[0.0, 0.2, 1.0]], np.float32),
                              samples=10, seed=3, sampler={"prior": "mix"})
    with h5py.File(tmp_path / "c.h5", "w") as handle:
        calibration.write(handle)
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        again = Calibration.read(handle, "c.h5")
    assert np.array_equal(again.source, calibration.source) and again.sampler == {"prior": "mix"}
    images = np.array([0.25, 0.75], np.float32).reshape(1, 1, 2, 1)
    assert np.allclose(again.apply(images).ravel(), [0.1, 0.6])
    with h5py.File(tmp_path / "c.h5", "a") as handle:
        handle["calibration/source"][...] = np.array([[0.0, 0.5, 0.4]])  # no longer increasing
    with h5py.File(tmp_path / "c.h5", "r") as handle, pytest.raises(NsnError, match="/calibration is damaged"):
        Calibration.read(handle, "c.h5")


@pytest.mark.slow
def test_trained_model_is_calibrated_and_its_samples_have_the_data_histogram(tiny_model, mnist_small):
    path, _ = tiny_model
    model = NSNModel.load(path)
    assert model.calibration is not None and model.calibration.sampler["prior"] == "mix"
    digits, _, _ = load_images(mnist_small)
    samples = generate(model, 400, seed=5)
    raw = generate(model, 400, seed=5, calibrate=False)
    # dark background and full-white strokes, as in the digits; the raw decoder has neither
    for images, close in ((samples, True), (raw, False)):
        for threshold in (0.05, 0.5, 0.9):
            gap = abs(np.mean(images > threshold) - np.mean(digits > threshold))
            assert (gap < 0.02) if close else True
    assert np.mean(raw > 0.9) < 0.5 * np.mean(digits > 0.9)
    # the map is per pixel: the same seed gives the same images at any -n or batch size
    assert np.array_equal(generate(model, 7, seed=5), samples[:7])
    assert np.array_equal(generate(model, 400, seed=5, batch=64), samples)


def test_train_fits_the_calibration_calibrate_fits_from_the_file(tiny_model, mnist_small):
    """train hands the calibration the training images' layer-1 maps it encoded between its
    layers; fitted from the data file instead (as `nsn calibrate` does), every knot is the same."""
    from nsn_cli.calibrate import calibrate_model

    _, model = tiny_model
    refitted = calibrate_model(model, mnist_small)
    for key in ("maps_source", "maps_target", "source", "target", "fill_kernel", "fill_bias"):
        assert np.array_equal(getattr(refitted, key), getattr(model.calibration, key)), key


def test_calibrate_command_refits_and_refuses_other_data(cli, tmp_path, tiny_model, mnist_small):
    import shutil

    path = tmp_path / "m.h5"
    shutil.copy(tiny_model[0], path)
    before = NSNModel.load(path).calibration
    code, out, err = cli("calibrate", path, "--data", mnist_small, "--samples", "512", "-q")
    assert code == 0, err
    after = NSNModel.load(path).calibration
    assert after.samples == 512 and before.samples == 4096
    # fewer samples, the same map up to their noise
    raw = generate(NSNModel.load(path), 200, seed=1, calibrate=False)
    assert np.mean(np.abs(after.apply(raw) - before.apply(raw))) < 0.02
    other = tmp_path / "other.h5"
    digits, _, _ = load_images(mnist_small)
    from nsn_cli.prep import prep

    np.save(tmp_path / "flipped.npy", digits[:100, ::-1])
    prep([tmp_path / "flipped.npy"], other)
    code, _, err = cli("calibrate", path, "--data", other)
    assert code == 2 and "not the data set" in err


def test_layer1_maps_are_calibrated_onto_the_training_images_encoded_maps(tiny_model, mnist_small):
    """The calibration's map of decoded F[1] maps: on samples it was not fitted on (another
    seed), each channel's decoded values, mapped, have the training images' encoded F[1]
    quantiles; sampling applies it (with calibrate) and --no-calibrate does not."""
    from nsn_cli import priors
    from nsn_cli.calibrate import MAP_LAYER, OLDEST_CALIBRATION_VERSION
    from nsn_cli.model import DecodeParams

    _, model = tiny_model
    calibration = model.calibration
    assert calibration.maps_source.shape[0] == model.layers[MAP_LAYER - 1].filters and OLDEST_CALIBRATION_VERSION == 1
    params = DecodeParams.for_sampling().resolved(density_prior=True)
    drawn, start = priors.draw(model, "mix", 3, 77, 0, 600)
    decoded = model.decode(drawn, start, params, seed=77, to_layer=MAP_LAYER)
    mapped = calibration.apply_maps(decoded).reshape(-1, decoded.shape[-1])
    real = model.encode(load_images(mnist_small)[0], upto=MAP_LAYER)[MAP_LAYER].reshape(-1, decoded.shape[-1])
    levels = np.linspace(0.1, 0.9, 9)
    before = np.abs(np.quantile(decoded.reshape(mapped.shape), levels, axis=0) - np.quantile(real, levels, axis=0))
    after = np.abs(np.quantile(mapped, levels, axis=0) - np.quantile(real, levels, axis=0))
    assert after.mean() < 0.02 and after.mean() < before.mean() / 3, (after.mean(), before.mean())
    with_map = model.decode(drawn[:4], start, params, seed=77, calibrate=True)
    without = model.decode(drawn[:4], start, params, seed=77)
    assert not np.array_equal(with_map, without)
    five, _ = priors.draw(model, "mix", 3, 5, 0, 4)
    raw = model.finish_images(model.decode(five, start, params, seed=5), calibrate=False)
    assert np.array_equal(generate(model, 4, seed=5, calibrate=False), raw)


def test_channel_maps_are_np_interp_bit_for_bit(rng):
    """The parallel kernel behind every calibration map gives np.interp's values exactly:
    inside the knots, on them, and clamped outside."""
    from nsn_cli.engine.lut import interp_channels

    channels = 7
    source = np.cumsum(rng.random((channels, 33)) + 1e-3, axis=1).astype(np.float32)
    source /= source[:, -1:]
    target = np.sort(rng.random((channels, 33)), axis=1).astype(np.float32)
    values = (rng.random((5, 9, 11, channels)) * 1.4 - 0.2).astype(np.float32)
    values[0, 0, 0] = source[:, 5]  # exactly on a knot
    expected = np.stack([np.interp(values[..., c], source[c], target[c]) for c in range(channels)], axis=-1)
    got = interp_channels(values, source, target)
    assert got.dtype == np.float32 and np.array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("buckets", [1, 3, 64, 4096])
def test_indexed_maps_are_np_interp_bit_for_bit(rng, buckets):
    """The knot index the pixel calibration maps through gives np.interp's values exactly:
    with knots crowded where the values are (a calibration's quantiles), on the knots, at
    bucket edges, outside the knots, NaN; any bucket count."""
    from nsn_cli.engine.lut import KnotIndex

    channels = 3
    crowded = np.concatenate([1e-4 * rng.random((channels, 200)), rng.random((channels, 60))], axis=1)
    source = np.sort(crowded, axis=1).astype(np.float32)
    assert (np.diff(source, axis=1) > 0).all()
    target = np.sort(rng.random(source.shape), axis=1).astype(np.float32)
    values = np.concatenate([1e-4 * rng.random((4000, channels)), rng.random((4000, channels)) * 1.2 - 0.1])
    values = values.astype(np.float32)
    values[:5] = source[:, [0, 1, 100, -2, -1]].T  # on knots
    first, last = source[:, 0].astype(np.float64), source[:, -1].astype(np.float64)
    values[5:5 + buckets + 1] = (first + (last - first) * np.linspace(0, 1, buckets + 1)[:, None]).astype(np.float32)
    values[-1] = np.nan
    index = KnotIndex.of(source, target, buckets=buckets)
    got = index.apply(values.reshape(-1, 2, channels))
    expected = np.stack([np.interp(values[:, c], source[c], target[c]) for c in range(channels)], axis=-1)
    assert got.shape == (values.shape[0] // 2, 2, channels)
    assert np.array_equal(got.reshape(values.shape), expected.astype(np.float32), equal_nan=True)
    with pytest.raises(ValueError, match="3 channels"):
        index.apply(values[:, :2])


def _filtered_by_hand(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The fill filter with explicit loops: edges repeated, kernel rows in (dy, dx) order."""
    n, height, width, channels = images.shape
    side = round(np.sqrt(kernel.shape[1]))
    radius = side // 2
    out = np.empty(images.shape)
    for i in range(n):
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    total = bias[c]
                    for dy in range(side):
                        for dx in range(side):
                            yy = min(max(y + dy - radius, 0), height - 1)
                            xx = min(max(x + dx - radius, 0), width - 1)
                            total += kernel[c, dy * side + dx] * images[i, yy, xx, c]
                    out[i, y, x, c] = total
    return out


def test_fill_filter_by_hand_and_recovered_by_its_fit(rng):
    from nsn_cli.calibrate import apply_fill_filter, fit_fill_filter

    images = rng.random((5, 6, 7, 2)).astype(np.float32)
    kernel = rng.normal(size=(2, 25)).astype(np.float32)
    bias = np.array([0.3, -0.1], np.float32)
    filtered = apply_fill_filter(images, kernel, bias)
    assert np.allclose(filtered, _filtered_by_hand(images, kernel, bias), atol=1e-5)
    # the least-squares fit, given pairs in two chunks, finds the filter that made them
    pairs = [(images[:2], filtered[:2]), (images[2:], filtered[2:])]
    fitted_kernel, fitted_bias = fit_fill_filter(pairs, channels=2, radius=2)
    assert np.allclose(fitted_kernel, kernel, atol=1e-3) and np.allclose(fitted_bias, bias, atol=1e-3)


def test_fill_filter_file_round_trip_and_damage(tmp_path):
    identity = np.array([[0.0, 1.0]], np.float32)
    kernel = np.zeros((1, 9), np.float32)
    kernel[0, 4] = 2.0
    calibration = Calibration(identity, identity, fill_kernel=kernel, fill_bias=np.array([-0.5], np.float32))
    with h5py.File(tmp_path / "c.h5", "w") as handle:
        calibration.write(handle)
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        again = Calibration.read(handle, "c.h5")
    images = np.array([0.25, 0.75], np.float32).reshape(1, 1, 2, 1)
    assert np.allclose(again.apply_fill(images).ravel(), [0.0, 1.0])  # 2 x - 0.5
    assert np.array_equal(Calibration(identity, identity).apply_fill(images), images)  # none: unchanged
    with h5py.File(tmp_path / "c.h5", "a") as handle:
        del handle["calibration/fill_bias"]
    with h5py.File(tmp_path / "c.h5", "r") as handle, pytest.raises(NsnError, match="fill filter is damaged"):
        Calibration.read(handle, "c.h5")


def test_trained_models_fill_filter_brings_decoded_members_closer_to_their_images(tiny_model, mnist_small):
    """Fitted in train on training images' round trips: on those images (a least-squares fit
    cannot do worse there than no filter) and on others it was not fitted on."""
    from nsn_cli.inpaint import decode_top_maps

    _, model = tiny_model
    assert model.calibration.fill_kernel.shape == (1, 25)
    images = load_images(mnist_small)[0]
    maps = model.encode(images, upto=2)[2]
    decoded = decode_top_maps(model, maps, calibrate=True)
    sharpened = np.clip(model.calibration.apply_fill(decoded), 0, 1)
    before, after = np.mean((decoded - images) ** 2), np.mean((sharpened - images) ** 2)
    assert after < 0.97 * before, (after, before)
