"""NSN-Gen through the model: sampling, controls, top priors, style and inpaint."""

from __future__ import annotations

import numpy as np
import pytest

from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.files import load_images
from nsn_cli.model import DecodeParams, NSNModel
from nsn_cli.priors import PRIORS
from nsn_cli.restore import hole_maps, inpaint
from nsn_cli.sample import arithmetic, generate, generated_batches, interpolate, one_filter
from nsn_cli.style import style
from nsn_cli.top import TopStats, compute_top_stats


def test_same_seed_same_images_across_batch_sizes(tiny_model):
    _, model = tiny_model
    params = DecodeParams(delta1=20, delta2=0.02, draws=2)
    for prior in ("normal", "counts", "mix", "pca"):
        a = generate(model, 10, prior=prior, params=params, seed=4, batch=10)
        b = generate(model, 10, prior=prior, params=params, seed=4, batch=3)
        assert np.array_equal(a, b), prior
        assert a.shape == (10, 28, 28, 1) and a.min() >= 0 and a.max() <= 1
        assert not np.array_equal(a, generate(model, 10, prior=prior, params=params, seed=5))


def test_generated_batches_are_generate_in_order_and_check_arguments_at_once(tiny_model):
    """The batch stream calibration takes its groups from: offsets in order, the images of
    generate to the bit; a bad argument fails at the call, not at the first batch."""
    _, model = tiny_model
    whole = generate(model, 37, seed=4, first=5, raw=True)
    got = list(generated_batches(model, 37, seed=4, first=5, raw=True, batch=8))
    assert [offset for offset, _ in got] == list(range(0, 37, 8))
    assert np.array_equal(np.concatenate([images for _, images in got]), whole)
    with pytest.raises(ParameterError):
        generated_batches(model, 0)


def test_hidden_layer_samples_have_receptive_field_size(tiny_model):
    _, model = tiny_model
    assert generate(model, 3, layer=1, prior="normal").shape == (3, 4, 4, 1)
    assert generate(model, 3, layer=2, prior="counts").shape == (3, 8, 8, 1)


def test_one_hot_decodes_deterministically_and_to_filter_means(tiny_model):
    _, model = tiny_model
    # a delta1 this large makes every softmax an argmax: no randomness is left
    params = DecodeParams(delta1=1e6, delta2=0, draws=1)
    a = one_filter(model, 2, 3, params, seed=0)
    b = one_filter(model, 2, 3, params, seed=9)
    assert np.array_equal(a, b) and np.array_equal(a[0], a[1])
    # from layer 1 a one-hot decodes to exactly that filter's mean patch
    vec = np.zeros((1, 1, 1, model.layers[0].filters), np.float32)
    vec[..., 5] = 1.0
    patch = model.decode(vec, 1, params, seed=0)
    assert np.allclose(patch[0], model.layers[0].mu[5], atol=1e-6)


def test_interpolation_endpoints_are_the_filters(tiny_model):
    _, model = tiny_model
    params = DecodeParams()
    strip = interpolate(model, 1, 4, 5, params, seed=0)
    assert strip.shape == (5, 28, 28, 1)
    assert np.array_equal(strip[0], one_filter(model, 1, 1, params, 0)[0])
    assert np.array_equal(strip[-1], one_filter(model, 4, 1, params, 0)[0])


def test_arithmetic_rows(tiny_model):
    _, model = tiny_model
    out = arithmetic(model, "0+1-2", 2, DecodeParams(), seed=0)
    assert out.shape == (8, 28, 28, 1)
    with pytest.raises(NsnError, match="must look like"):
        arithmetic(model, "0+x", 2, DecodeParams(), seed=0)


def test_top_stats_match_numpy(rng):
    below = rng.random((40, 2, 2, 3)).astype(np.float32)
    mu = below[:3].reshape(3, -1)
    sigma = np.array([0.5, 0.5, 0.5])
    stats = compute_top_stats([below], 40, mu, sigma, seed=0)
    flat = below.reshape(40, -1).astype(np.float64)
    stored = flat.astype(np.float16).astype(np.float64)  # members are kept as they are stored
    d2 = ((flat[:, None, :] - mu[None]) ** 2).sum(-1)
    labels = d2.argmin(axis=1)
    assert np.array_equal(stats.member_filter, labels)
    for j in range(3):
        mean = flat[labels == j].mean(axis=0)
        assert stats.image_counts[j] == np.sum(labels == j)
        assert np.allclose(stats.mean[j], mean, atol=1e-6)
        centred = stored[labels == j] - mean
        eig = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1][:10]
        assert np.allclose(stats.variances[j][: len(eig)], eig[: stats.variances.shape[1]], atol=1e-5)


@pytest.mark.parametrize("m, d", [(40, 300), (300, 12), (5, 5)])
def test_principal_components_match_numpy_svd(rng, m, d):
    """The Gram (m <= D) or scatter (m > D) eigen-decomposition gives the SVD's leading
    directions (up to sign; here the largest entry is positive) and variances s^2 / m."""
    from nsn_cli.top import principal_components

    centred = rng.normal(size=(m, d)) * np.linspace(3.0, 0.1, d)  # distinct spreads
    centred -= centred.mean(axis=0)
    directions, variances = principal_components(centred, 10)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    p = min(10, m, d)
    spread = s[:p] ** 2 / m
    assert directions.shape == (p, d) and variances.shape == (p,)
    assert np.allclose(variances, np.where(spread > spread[0] * 1e-12, spread, 0.0), rtol=1e-9, atol=1e-12)
    for got, want, var in zip(directions, vt[:p], variances):
        if var == 0:  # no spread along it (the centred rows have rank m - 1): left zero
            assert not got.any()
            continue
        assert np.allclose(got, want * np.sign(want[np.abs(want).argmax()]), atol=1e-8)
        assert got[np.abs(got).argmax()] > 0


def test_half_to_float_is_exact_for_every_float16():
    from nsn_cli.top import _half_to_float

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    out = np.empty(bits.shape, dtype=np.float32)
    _half_to_float(bits, out)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # -0.0 and subnormals too


def test_top_stats_from_chunks_and_a_member_subsample(rng):
    """Chunks give the statistics of the whole; past the member limit, means and counts still
    cover every image while members are a seeded subset."""
    below = rng.random((300, 2, 2, 2)).astype(np.float32)
    mu, sigma = below[:4].reshape(4, -1), np.full(4, 0.6)
    whole = compute_top_stats([below], 300, mu, sigma, seed=3)
    chunked = compute_top_stats((below[a : a + 64] for a in range(0, 300, 64)), 300, mu, sigma, seed=3)
    for key in TopStats.STORED:
        assert np.allclose(getattr(whole, key), getattr(chunked, key), rtol=1e-6, atol=1e-7), key
    few = compute_top_stats([below], 300, mu, sigma, seed=3, max_members=50)
    assert few.members.shape == (50, 8) and np.array_equal(few.image_counts, whole.image_counts)
    assert np.allclose(few.mean, whole.mean)
    rows = [np.flatnonzero((below.reshape(300, -1).astype(np.float16) == m).all(axis=1))[0] for m in few.members]
    assert len(set(rows)) == 50 and np.array_equal(few.member_filter, whole.member_filter[rows])
    with pytest.raises(ValueError, match="expected 301"):
        compute_top_stats([below], 301, mu, sigma, seed=3)


def test_pca_samples_have_stored_mean_and_variance(rng):
    from types import SimpleNamespace

    from nsn_cli.top import COMPONENTS

    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    components = np.zeros((1, COMPONENTS, d), np.float32)
    components[0] = q[:COMPONENTS]
    variances = np.linspace(0.004, 0.0004, COMPONENTS, dtype=np.float32)[None]
    mean = np.full((1, d), 0.5, np.float32)  # far from the clip at 0 and 1
    top = TopStats(mean=mean, components=components, variances=variances, image_counts=np.array([5]),
                   members=np.zeros((0, d), np.float16), member_filter=np.zeros(0, np.int64))
    fake = SimpleNamespace(top=top, layers=[None, None], map_shape=lambda level: (1, 1, d))
    n = 40000
    maps = PRIORS["pca"].draw(fake, 2, seed=0, first=0, count=n).reshape(n, d)
    proj = (maps - mean[0]) @ components[0].T
    se = np.sqrt(variances[0] / n)
    assert np.all(np.abs(proj.mean(axis=0)) < 4 * se)  # mean along each component
    assert np.allclose(proj.var(axis=0), variances[0], rtol=0.05)  # variance along each component


def test_mix_samples_lie_in_the_members_hull(tiny_model):
    _, model = tiny_model
    maps = PRIORS["mix"].draw(model, 3, seed=1, first=0, count=500).reshape(500, -1)
    members = model.top.members.astype(np.float32)
    # every sample lies between the per-element min and max of its filter's members
    from nsn_cli.engine.decode import uniform_draws
    from nsn_cli.priors import pick_by_counts
    from nsn_cli.streams import DENSITY_PICK

    counts = np.bincount(model.top.member_filter, minlength=model.top.mean.shape[0])
    picked = pick_by_counts(counts, uniform_draws(1, 0, 500, 3, DENSITY_PICK)[:, 0])
    for i in range(500):
        own = members[model.top.member_filter == picked[i]]
        assert np.all(maps[i] >= own.min(axis=0) - 1e-5) and np.all(maps[i] <= own.max(axis=0) + 1e-5)


def test_old_model_without_top_stats(tmp_path, tiny_model):
    path, model = tiny_model
    old = NSNModel.load(path)
    old.top = None
    old.save(tmp_path / "old.h5")
    old = NSNModel.load(tmp_path / "old.h5")
    with pytest.raises(NsnError, match="needs top-layer statistics"):
        generate(old, 2, prior="pca")
    assert generate(old, 2).shape == (2, 28, 28, 1)  # default falls back to counts


def test_inpaint_keeps_known_pixels(tiny_model, mnist_small):
    _, model = tiny_model
    images, _, _ = load_images(mnist_small)
    hole = np.zeros((28, 28), bool)
    hole[9:19, 9:19] = True
    filled = inpaint(model, images[0], hole, draws=3, rounds=2)
    assert np.array_equal(filled[~hole], images[0][~hole])
    assert not np.array_equal(filled[hole], np.zeros_like(filled[hole]))


def test_hole_maps_propagate(tiny_model):
    _, model = tiny_model
    hole = np.zeros((28, 28), bool)
    hole[0, 0] = True
    levels = hole_maps(model, hole)
    assert [lv.shape for lv in levels] == [(28, 28), (13, 13), (6, 6), (1, 1)]
    assert levels[1].sum() == 1 and levels[1][0, 0] and levels[3][0, 0]


def test_style_shapes_and_variants(tiny_model, mnist_small):
    _, model = tiny_model
    images, _, _ = load_images(mnist_small)
    out = style(model, images[1], layer=1, variants=3, params=DecodeParams(delta1=5, draws=2))
    assert out.shape == (3, 28, 28, 1)
    assert not np.array_equal(out[0], out[1])


def test_sample_cli_outputs_and_errors(cli, tmp_path, tiny_model):
    path, _ = tiny_model
    code, out, err = cli("sample", "-m", path, "-n", "6", "-o", tmp_path / "s.npz", "-q")
    assert code == 0, err
    arr = np.load(tmp_path / "s.npz")["images"]
    assert arr.shape == (6, 28, 28, 1) and arr.dtype == np.float32
    code, _, _ = cli("sample", "-m", path, "-n", "4", "-o", tmp_path / "grid.png", "-q")
    assert code == 0 and (tmp_path / "grid.png").exists()
    code, _, _ = cli("sample", "-m", path, "-n", "3", "-o", f"{tmp_path}/dir/", "-q")
    assert code == 0 and len(list((tmp_path / "dir").glob("*.png"))) == 3
    for args, message in [
        (["--layer", "4"], "--layer 4 does not exist"),
        (["--layer", "0"], "--layer 0 does not exist"),
        (["-n", "0"], "-n must be at least 1"),
        (["--delta1", "-1"], "--delta1 must be"),
        (["--prior", "uniform"], "--prior must be one of"),
        (["--filter", "9999"], "filter 9999 does not exist"),
    ]:
        code, _, err = cli("sample", "-m", path, "-o", tmp_path / "x.png", *args)
        assert code == 2 and message in err, (args, err)
    code, _, err = cli("sample", "-m", tmp_path / "missing.h5")
    assert code == 2 and "no such model file" in err
    code, _, err = cli("sample", "-m", tmp_path / "s.npz")
    assert code == 2 and "not an HDF5 file" in err


def test_inpaint_cli_mask_errors(cli, tmp_path, tiny_model):
    import imageio.v3 as iio

    path, _ = tiny_model
    iio.imwrite(tmp_path / "digit.png", np.zeros((28, 28), np.uint8))
    iio.imwrite(tmp_path / "small.png", np.zeros((20, 20), np.uint8))
    code, _, err = cli("inpaint", tmp_path / "digit.png", "--mask", tmp_path / "small.png", "-m", path,
                       "-o", tmp_path / "o.png")
    assert code == 2 and "mask is 20x20, the image is 28x28" in err
    grey = np.zeros((28, 28), np.uint8)
    grey[5:10, 5:10] = 128
    grey[10:15, 10:15] = 255
    iio.imwrite(tmp_path / "grey.png", grey)
    code, _, err = cli("inpaint", tmp_path / "digit.png", "--mask", tmp_path / "grey.png", "-m", path,
                       "-o", tmp_path / "o.png", "--draws", "2")
    assert code == 0 and "thresholded at 50%" in err


def test_nearest_members_match_brute_force(rng):
    from nsn_cli.top import nearest_members

    x = rng.random((50, 7)).astype(np.float16)  # as members are stored
    x[7] = x[3]  # a tie: the lower index first
    got = nearest_members(x, k=3, block=16)
    d = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.array_equal(got, np.argsort(d, axis=1, kind="stable")[:, :3])


def test_knn_samples_lie_between_a_member_and_its_neighbour(tiny_model):
    _, model = tiny_model
    maps = PRIORS["knn"].draw(model, 3, seed=2, first=0, count=50).reshape(50, -1)
    members = model.top.members.astype(np.float32)
    neighbours = model.top.member_neighbours
    for sample in maps:
        # some member a and neighbour b give sample = t a + (1 - t) b with t in [0.2, 0.8]
        d = members - sample
        found = False
        for a in np.argsort((d**2).sum(axis=1))[:20]:
            for b in neighbours[a]:
                direction = members[a] - members[b]
                t = float(direction @ (sample - members[b]) / max(direction @ direction, 1e-12))
                if 0.2 - 1e-4 <= t <= 0.8 + 1e-4 and np.allclose(t * members[a] + (1 - t) * members[b], sample, atol=1e-4):
                    found = True
        assert found


def test_streamed_h5_output_equals_in_memory(tmp_path, tiny_model):
    from nsn_cli.sample import stream_to_h5

    _, model = tiny_model
    expected = generate(model, 700, seed=6)
    stream_to_h5(tmp_path / "big.h5", 700, False,
                 lambda sink: generate(model, 700, seed=6, batch=128, sink=sink))
    assert np.array_equal(load_images(tmp_path / "big.h5")[0], expected)


def test_streamed_npy_output_equals_in_memory(cli, tmp_path, tiny_model):
    """`sample -o x.npy` writes batch by batch into the file; the array is the in-memory one,
    and a second run without --force leaves the file alone."""
    path, model = tiny_model
    expected = generate(model, 700, seed=6, batch=4096)
    code, out, _ = cli("sample", "-m", path, "-n", 700, "--seed", 6, "-o", tmp_path / "big.npy", "-q")
    assert code == 0 and "700 samples" in out
    assert np.array_equal(np.load(tmp_path / "big.npy"), expected)
    assert not list(tmp_path.glob(".*.tmp"))
    code, _, err = cli("sample", "-m", path, "-n", 5, "-o", tmp_path / "big.npy", "-q")
    assert code == 2 and "already exists" in err
    assert np.array_equal(np.load(tmp_path / "big.npy"), expected)


def test_random_stream_ids_are_distinct_and_clear_of_the_decode_streams():
    from nsn_cli import streams

    ids = list(streams.SAMPLE_STREAMS.values())
    assert len(set(ids)) == len(ids) and min(ids) >= streams.DECODE_LIMIT
    # every module-level stream constant is in its table (a new one cannot be left out)
    named = {k: v for k, v in vars(streams).items() if k.isupper() and isinstance(v, int)}
    tables = {**streams.SAMPLE_STREAMS, **streams.GENERATOR_TAGS}
    assert {k: v for k, v in named.items() if k not in ("LAYERS_PER_ROUND", "DECODE_LIMIT")} == tables
    tags = list(streams.GENERATOR_TAGS.values())
    assert len(set(tags)) == len(tags)
    # decode streams: distinct per (round, layer), and below the prior streams for 1,000 rounds
    decode = {streams.decode_stream(layer, r) for r in range(1000) for layer in range(1, streams.LAYERS_PER_ROUND)}
    assert len(decode) == 1000 * (streams.LAYERS_PER_ROUND - 1)
    assert max(streams.restore_stream(layer, 999) for layer in range(1, 64)) < streams.DECODE_LIMIT


def test_priors_table_drives_sampling_help_and_validation(cli, tmp_path, tiny_model, monkeypatch):
    """Every prior in the table samples (same seed, same bits; density priors only from the
    top), is listed in --prior's help, and a prior added to the table alone is usable."""
    from dataclasses import replace

    from nsn_cli import priors

    path, model = tiny_model
    for name, prior in PRIORS.items():
        assert f"{name}: {prior.help}" in priors.cli_help()
        a = generate(model, 4, prior=name, seed=8)
        assert np.array_equal(a, generate(model, 4, prior=name, seed=8)), name
        if prior.density:
            with pytest.raises(NsnError, match="samples the top layer"):
                generate(model, 2, layer=2, prior=name)
    assert priors.DENSITY_PRIORS == ("mix", "pca", "knn")
    assert priors.default_prior(model, 3) == "mix" and priors.default_prior(model, 2) == "counts"
    # a new prior: one entry in the table; its maps are what the decoder starts from
    ones = replace(PRIORS["normal"], name="ones", help="all ones",
                   draw=lambda m, layer, seed, first, count: np.ones((count, 1, 1, m.layers[layer - 1].filters), np.float32))
    monkeypatch.setitem(PRIORS, "ones", ones)
    params = DecodeParams.for_sampling().resolved()
    expected = model.finish_images(model.decode(np.ones((3, 1, 1, model.layers[2].filters), np.float32), 3, params, seed=1,
                                                calibrate=True))
    assert np.array_equal(generate(model, 3, prior="ones", seed=1), expected)
    code, _, err = cli("sample", "-m", path, "-n", 3, "--prior", "ones", "-o", tmp_path / "o.npz", "-q")
    assert code == 0, err
    # a misspelt prior is refused before the model is read (the model path does not exist)
    code, _, err = cli("sample", "-m", tmp_path / "missing.h5", "--prior", "uniform", "-o", tmp_path / "x.png")
    assert code == 2 and "--prior must be one of normal, counts, mix, pca, knn, ones" in err


def test_generation_defaults_have_one_home():
    """The CLI's NSN-Gen and inpaint defaults, DecodeParams', InpaintOptions' and the library
    functions' are the values in nsn_cli.config (a literal left in one of them fails here once
    config changes)."""
    import inspect
    from dataclasses import fields

    import typer

    from nsn_cli import config
    from nsn_cli.cli import app
    from nsn_cli.inpaint import InpaintOptions
    from nsn_cli.restore import inpaint as inpaint_layers

    command = typer.main.get_command(app)
    defaults = {name: {p.name: p.default for p in command.commands[name].params} for name in ("sample", "style", "inpaint")}
    gen = {"delta1": config.DELTA1, "delta2": config.DELTA2, "delta3": config.DELTA3, "draws": config.DRAWS,
           "noise_layers": config.NOISE_LAYERS, "noise_scale": config.NOISE_SCALE}
    assert {f.name: f.default for f in fields(DecodeParams) if f.name in gen} == gen
    assert {k: defaults["style"][k] for k in gen} == gen
    assert (defaults["style"]["layer"], defaults["style"]["variants"]) == (config.STYLE_LAYER, config.STYLE_VARIANTS)
    assert {k: defaults["inpaint"][k] for k in ("delta1", "delta2", "delta3")} == {k: gen[k] for k in ("delta1", "delta2", "delta3")}
    assert defaults["sample"]["delta1"] == config.SAMPLE_DELTA1 and defaults["sample"]["delta3"] == config.SAMPLE_DELTA3
    assert {k: defaults["sample"][k] for k in ("delta2", "noise_layers", "noise_scale")} == {
        k: gen[k] for k in ("delta2", "noise_layers", "noise_scale")}
    posterior = {"candidates": config.INPAINT_CANDIDATES, "pairs": config.INPAINT_PAIRS,
                 "temperature": config.INPAINT_TEMPERATURE, "boundary": config.INPAINT_BOUNDARY}
    assert {f.name: f.default for f in fields(InpaintOptions) if f.name in posterior} == posterior
    assert {k: defaults["inpaint"][k] for k in posterior} == posterior
    layers = {"draws": config.INPAINT_DRAWS, "rounds": config.INPAINT_ROUNDS}
    assert {k: defaults["inpaint"][k] for k in layers} == layers
    signature = inspect.signature(inpaint_layers).parameters
    assert {k: signature[k].default for k in layers} == layers
    signature = inspect.signature(style).parameters
    assert (signature["layer"].default, signature["variants"].default) == (config.STYLE_LAYER, config.STYLE_VARIANTS)
    # calibration and score: the CLI and the library functions
    from nsn_cli.calibrate import FIT_SAMPLES
    from nsn_cli.score import ScoreOptions

    assert {p.name: p.default for p in command.commands["calibrate"].params}["samples"] == FIT_SAMPLES == config.CALIBRATION_SAMPLES
    assert {p.name: p.default for p in command.commands["score"].params}["n"] == ScoreOptions().n == config.SCORE_SAMPLES


def test_top_stats_round_trip_through_a_file(tmp_path, tiny_model):
    """TopStats writes exactly its stored arrays (never the float32 cache) and reads them back;
    a file without member_neighbours finds them on first use; a missing array is one error."""
    import h5py

    from nsn_cli.top import nearest_members

    _, model = tiny_model
    top = model.top
    assert top.members_f32().dtype == np.float32 and np.array_equal(top.members_f32(), top.members.astype(np.float32))
    with h5py.File(tmp_path / "t.h5", "w") as handle:
        top.to_h5(handle)
    with h5py.File(tmp_path / "t.h5", "r") as handle:
        assert sorted(handle["top"]) == sorted(TopStats.STORED) and handle["top"].attrs["version"] >= 1
        assert handle["top/members"].dtype == np.float16 and handle["top/members"].compression is None
        back = TopStats.from_h5(handle, "t.h5")
    for key in TopStats.STORED:
        assert np.array_equal(getattr(back, key), getattr(top, key)) and getattr(back, key).dtype == getattr(top, key).dtype
    with h5py.File(tmp_path / "t.h5", "a") as handle:
        del handle["top/member_neighbours"]
        handle["top"].attrs["version"] = 1  # written before the knn prior
    with h5py.File(tmp_path / "t.h5", "r") as handle:
        old = TopStats.from_h5(handle, "t.h5")
    assert old.member_neighbours is None
    assert np.array_equal(old.neighbours(), nearest_members(top.members)) and old.member_neighbours is not None
    with h5py.File(tmp_path / "t.h5", "a") as handle:
        del handle["top/variances"]
    with h5py.File(tmp_path / "t.h5", "r") as handle, pytest.raises(NsnError, match="missing HDF5 key /top/variances"):
        TopStats.from_h5(handle, "t.h5")
