"""The Python API (nsn_cli.api): the same bits as the CLI, errors naming parameters, no process
state left changed, files round-trip, inpainting keeps what is known, the README's example runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

from nsn_cli import NSN, load, score
from tests import reference as ref
from tests.conftest import MNIST_IMAGES, ROOT

NSN_BIN = Path(sys.executable).with_name("nsn")
#: The conftest's tiny_model options: 600 digits, 4 iterations, seed 3.
TINY = {"iterations": 4, "seed": 3}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first 600 bundled digits as a uint8 array (600, 28, 28), as a notebook holds them."""
    from nsn_cli.readers import open_source

    return np.stack(open_source(MNIST_IMAGES).read(0, 600))[..., 0]


@pytest.fixture(scope="module")
def fitted(digits) -> NSN:
    return NSN(**TINY).fit(digits)


def _same_model(a, b) -> None:
    """Every array of two models is the same bits: each layer's mu, sigma, counts, the top
    statistics and the pixel calibration's numbers."""
    assert len(a.layers) == len(b.layers) == len(a.arch)
    for x, y in zip(a.layers, b.layers):
        assert x.mu.shape == y.mu.shape
        for part in ("mu", "sigma", "counts"):
            assert np.array_equal(getattr(x, part), getattr(y, part)), part
        assert x.alpha == y.alpha
    for key in ("mean", "components", "variances", "image_counts", "members", "member_filter"):
        assert np.array_equal(getattr(a.top, key), getattr(b.top, key)), key
    for key in ("source", "target"):
        assert np.array_equal(getattr(a.calibration, key), getattr(b.calibration, key)), key


def test_fit_on_an_array_equals_train_on_the_prepped_file(fitted, tiny_model):
    _, trained = tiny_model  # nsn_cli.train.train on prep's data set of the same 600 digits
    _same_model(fitted.model_, trained)
    assert fitted.n_filters_ == [layer.filters for layer in trained.layers]
    assert fitted.n_iter_ == [len(layer.history) for layer in trained.layers]
    assert fitted.layers_ is fitted.model_.layers
    assert 1 <= min(fitted.n_iter_) and max(fitted.n_iter_) <= TINY["iterations"]
    assert fitted.model_.source == "array of 600 images"  # not a temporary file's name
    # the estimator's own parameters are not filled in by the fit (scikit-learn's rule)
    assert fitted.get_params()["alpha"] is None and fitted.arch is None


@pytest.mark.slow
def test_the_cli_and_the_api_give_the_same_bits(fitted, digits, tmp_path):
    """`nsn prep`, `nsn train`, `nsn sample` as real processes against the API on the array."""
    np.save(tmp_path / "digits.npy", digits)

    def nsn(*argv):
        done = subprocess.run([str(NSN_BIN), *map(str, argv)], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    nsn("prep", "digits.npy", "-o", "digits.h5", "-q")
    nsn("train", "digits.h5", "-o", "model.h5", "--iterations", TINY["iterations"], "--seed", TINY["seed"], "-q")
    nsn("sample", "-m", "model.h5", "-n", 40, "--seed", 5, "-o", "samples.npy", "-q")
    _same_model(fitted.model_, load(tmp_path / "model.h5").model_)
    assert np.array_equal(fitted.sample(40, seed=5), np.load(tmp_path / "samples.npy"))


def test_sample_equals_nsn_sample(fitted, tmp_path, cli):
    path = fitted.save(tmp_path / "model.h5")
    for argv, kwargs in [([], {}), (["--layer", "2", "--prior", "counts", "--delta1", "20"],
                                    {"layer": 2, "prior": "counts", "delta1": 20.0})]:
        out = tmp_path / f"s{len(argv)}.npy"
        code, _, err = cli("sample", "-m", path, "-n", 30, "--seed", 7, "-o", out, "-q", *argv)
        assert code == 0, err
        mine = fitted.sample(30, seed=7, **kwargs)
        assert mine.dtype == np.float32 and np.array_equal(mine, np.load(out))
    assert fitted.sample(30, layer=2, prior="counts").shape[1:] == (8, 8, 1)  # layer 2's receptive field: 4 + 2 * 2
    assert not np.array_equal(fitted.sample(8, seed=1), fitted.sample(8, seed=2))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_filters": 0}, "max_filters must be at least 1, got 0"),
    ({"iterations": 0}, "iterations must be at least 1, got 0"),
    ({"alpha": [-2.0]}, "alpha: 1 values for an architecture of 3 layers"),
    ({"alpha": [-2.0] * 3, "filters": [4] * 3}, "give alpha or filters, not both"),
    ({"memory": "100M"}, "memory 100M is below the minimum of 352M"),
    ({"threads": 0}, "threads must lie in 1.."),
    ({"filters": [0, 5, 5]}, "filters values must be at least 1"),
    ({"arch": "3x4/2"}, "arch: '3x4/2': only square patches are supported"),
    ({"workers": 0}, "workers must be at least 1, got 0"),
])
def test_fit_errors_name_the_parameter(kwargs, message, mnist_small, tmp_path, cli):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        NSN(**kwargs).fit(mnist_small)
    flags = []
    for key, value in kwargs.items():
        flags += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else value]
    code, _, err = cli("train", mnist_small, "-o", tmp_path / "m.h5", *flags)
    assert code == 2
    cli_message = re.sub(r"\b(" + "|".join(kwargs) + r")\b", lambda m: "--" + m.group(1).replace("_", "-"), message)
    assert cli_message in " ".join(err.split()), err


def test_a_filter_cap_names_the_parameter(mnist_small):
    with pytest.raises(ValueError) as caught:
        NSN(alpha=[-1.0, -2.0, -2.0], max_filters=3, iterations=1).fit(mnist_small)
    message = str(caught.value)
    assert "past max_filters 3" in message and message.endswith("or raise max_filters")
    assert "--" not in message


def test_generation_errors_name_the_parameter(fitted, tmp_path, cli):
    cases = [({"delta1": -1.0}, "delta1 must be a finite number >= 0, got -1.0", ["--delta1", "-1"]),
             ({"layer": 9}, "layer 9 does not exist: the model has layers 1..3", ["--layer", "9"]),
             ({"prior": "flat"}, "prior must be one of normal, counts, mix, pca, knn, got 'flat'", ["--prior", "flat"]),
             ({"noise_layers": "some"}, "noise_layers must be one of all, pixel", ["--noise-layers", "some"])]
    path = fitted.save(tmp_path / "model.h5")
    for kwargs, message, flags in cases:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            fitted.sample(4, **kwargs)
        code, _, err = cli("sample", "-m", path, "-n", 4, "-o", tmp_path / "s.npy", *flags)
        assert code == 2 and "--" + message.replace("_", "-").split(" ")[0] in err, err
    with pytest.raises(ValueError, match="^n must be at least 1, got 0"):
        fitted.sample(0)
    with pytest.raises(ValueError, match="^temperature must be a number > 0"):
        fitted.inpaint(np.zeros((28, 28)), np.ones((28, 28), bool), temperature=0.0)
    with pytest.raises(ValueError, match="^variants must be at least 1"):
        fitted.style(np.zeros((28, 28)), variants=0)
    with pytest.raises(ValueError, match="^X: float pixels must lie in"):
        NSN().fit(np.full((10, 28, 28), 2.0))
    with pytest.raises(ValueError, match="not fitted yet"):
        NSN().sample(4)


def _process_state() -> dict:
    from threadpoolctl import threadpool_info

    return {"numba": numba.get_num_threads(), "env": dict(os.environ), "sigint": signal.getsignal(signal.SIGINT),
            "pools": [(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()]}


def test_no_process_state_is_left_changed(digits, tmp_path):
    import scipy.linalg.cython_blas  # noqa: F401  the engine's second BLAS: loaded, not a changed setting

    before = _process_state()
    model = NSN(iterations=1, threads=1, memory="400M").fit(digits[:200])
    model.sample(4)
    model.inpaint(digits[0], np.eye(28, dtype=bool))
    assert _process_state() == before  # numba's and BLAS's threads, every environment variable, SIGINT's handler


#: A subprocess's page faults for a fresh 64 MB array after one was freed: with freed memory
#: kept for reuse, none.
_FRESH_FAULTS = """
import resource
import numpy as np
def fresh_faults():
    a = np.ones(64 << 20, np.uint8)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(64 << 20, np.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


@pytest.mark.slow
def test_glibc_malloc_is_tuned_by_the_cli_only(tmp_path, mnist_small):
    """A fresh process: a budgeted fit from Python leaves glibc's malloc alone; `nsn train`
    (the CLI in the same process, default budget, digits that fit it twice over) keeps
    freed memory for reuse: a fresh array after a freed one takes no page faults."""
    script = _FRESH_FAULTS + f"""
from nsn_cli import NSN
from nsn_cli.cli import run
from nsn_cli.heap import heap_mode
NSN(iterations=1, memory="400M").fit({str(mnist_small)!r})
print("heap", heap_mode(), fresh_faults())
assert run(["train", {str(mnist_small)!r}, "-o", {str(tmp_path / "m.h5")!r}, "--iterations", "1", "-q"]) == 0
print("heap", heap_mode(), fresh_faults())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    (library, library_faults), (cli, cli_faults) = [
        line.split()[1:] for line in done.stdout.splitlines() if line.startswith("heap")]
    assert (library, cli) == ("None", "reuse")
    assert int(library_faults) > 0 and int(cli_faults) == 0  # (a fault may map a 2 MB huge page)


def test_heap_modes_keep_or_return_freed_memory():
    """"reuse": a fresh array after a freed one takes no page faults; back to "return", the
    memory the heap kept leaves the process (RSS drops) and fresh arrays fault again."""
    script = _FRESH_FAULTS + """
from nsn_cli.heap import set_heap_mode
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()
set_heap_mode("reuse")
print(fresh_faults())
big = np.ones(256 << 20, np.uint8)
del big
kept = rss()
set_heap_mode("return")
print(fresh_faults(), (kept - rss()) >> 20)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    reuse, back = done.stdout.split("\n")[:2]
    faults, freed_mib = map(int, back.split())
    assert int(reuse) == 0 and faults > 0 and freed_mib >= 200
    with pytest.raises(ValueError, match="heap mode"):
        from nsn_cli.heap import set_heap_mode

        set_heap_mode("keep")


def test_save_and_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "model.h5")
    loaded = load(path)
    _same_model(fitted.model_, loaded.model_)
    assert loaded.n_filters_ == fitted.n_filters_ and loaded.n_iter_ == fitted.n_iter_
    assert (loaded.arch, loaded.alpha, loaded.iterations, loaded.seed) == ("mnist", [-2.09, -2.04, -2.47], 4, 3)
    assert np.array_equal(loaded.sample(12, seed=4), fitted.sample(12, seed=4))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="force=True"):
        fitted.save(path)
    assert path.read_bytes() == before
    fitted.save(path, force=True)
    assert load(path).n_filters_ == fitted.n_filters_
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or lock file left
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.h5")


def test_checkpoint_and_resume(digits, tmp_path):
    path = tmp_path / "ckpt.h5"
    first = NSN(iterations=1, seed=2).fit(digits[:300], checkpoint=path)
    assert load(path).n_filters_ == first.n_filters_
    assert load(path).model_.source == "array of 300 images"
    with pytest.raises(ValueError, match="checkpoint .* already exists; pass resume=True"):
        NSN(iterations=1, seed=2).fit(digits[:300], checkpoint=path)
    again = NSN(iterations=1, seed=2).fit(digits[:300], checkpoint=path, resume=True)
    # every layer kept from the file, not refitted (its recorded fitting time is the file's)
    assert [layer.seconds for layer in again.layers_] == [layer.seconds for layer in first.layers_]
    with pytest.raises(ValueError, match=r"^resume: .* other options \(seed\); use force to start over"):
        NSN(iterations=1, seed=5).fit(digits[:300], checkpoint=path, resume=True)


def test_encode_is_the_similarity_of_the_patches(fitted, digits):
    layer = fitted.layers_[0]
    maps = fitted.encode(digits[:2], layer=1)
    assert maps.shape == (2, 13, 13, layer.filters)
    x = ref.patches(digits[:2, :, :, None].astype(np.float32) / 255.0, layer.shape.patch, layer.shape.stride)
    from scipy.special import expit

    expected = expit(ref.sim_matrix(x, layer.flat_mu, layer.sigma))
    assert np.allclose(maps.reshape(-1, layer.filters), expected, atol=1e-5)
    top = fitted.encode(digits[:2])
    assert top.shape == (2, 1, 1, fitted.n_filters_[-1])
    with pytest.raises(ValueError, match="maps must be"):
        fitted.decode(maps, layer=2)


def test_decode_and_style_equal_the_engine_calls(fitted, digits):
    from nsn_cli.model import DecodeParams
    from nsn_cli.style import style

    maps = fitted.encode(digits[:3], layer=2)
    model = fitted.model_
    expected = model.finish_images(model.decode(maps, 2, DecodeParams(draws=0), seed=1, calibrate=True))
    assert np.array_equal(fitted.decode(maps, layer=2, seed=1, draws=0), expected)
    image = digits[5].astype(np.float32)[..., None] / 255.0
    assert np.array_equal(fitted.style(digits[5], layer=1, variants=3, seed=2),
                          style(model, image, layer=1, variants=3, seed=2))


def test_inpaint_keeps_known_pixels_and_equals_nsn_inpaint(fitted, digits, tmp_path, cli):
    import imageio.v3 as iio

    hole = np.zeros((28, 28), bool)
    hole[8:18, 6:20] = True
    filled = fitted.inpaint(digits[3], hole)
    assert filled.shape == (28, 28, 1) and filled.dtype == np.float32
    assert np.array_equal(filled[~hole, 0], digits[3][~hole].astype(np.float32) / 255.0)
    assert not np.array_equal(filled[hole, 0], digits[3][hole] / 255.0)
    iio.imwrite(tmp_path / "digit.png", digits[3])
    iio.imwrite(tmp_path / "mask.png", (hole * 255).astype(np.uint8))
    path = fitted.save(tmp_path / "model.h5")
    code, _, err = cli("inpaint", tmp_path / "digit.png", "--mask", tmp_path / "mask.png", "-m", path,
                       "-o", tmp_path / "out.png", "-q")
    assert code == 0, err
    assert np.array_equal(iio.imread(tmp_path / "out.png"), np.rint(filled[..., 0] * 255).astype(np.uint8))
    batch = fitted.inpaint(digits[:4], np.stack([hole] * 4))
    assert batch.shape == (4, 28, 28, 1) and np.array_equal(batch[3], filled)


def test_score_equals_nsn_score(fitted, mnist_small, tmp_path, cli):
    samples = fitted.sample(60, seed=3)
    np.save(tmp_path / "s.npy", samples)
    code, _, err = cli("score", tmp_path / "s.npy", "--ref", mnist_small, "--metrics", "kid,parzen", "-n", 60,
                       "--seed", 3, "--json", tmp_path / "scores.json", "-q")
    assert code == 0, err
    expected = json.loads((tmp_path / "scores.json").read_text())["results"][0]
    mine = score(samples, mnist_small, metrics=["kid", "parzen"], n=60, seed=3)
    assert mine["images"] == 60 and mine["parzen_ll_mean"] < 0
    for key in ("kernel_inception_distance_mean", "kernel_inception_distance_std", "parzen_ll_mean", "parzen_sigma"):
        assert mine[key] == expected[key], key
    # a fitted NSN is sampled as nsn score samples a model file: seed 3's first 60 samples
    assert score(fitted, mnist_small, metrics="kid", n=60, seed=3)["kernel_inception_distance_mean"] == \
        expected["kernel_inception_distance_mean"]
    with pytest.raises(ValueError, match="^metrics: unknown metric 'bogus'"):
        score(samples, mnist_small, metrics="bogus")


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    """The README's "From Python" example, as a user runs it from a checkout: its outputs
    checked by the lines it holds (asserts), in a fresh process."""
    (tmp_path / "data").symlink_to(ROOT / "data")
    done = subprocess.run([sys.executable, "-c", _readme_example()], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "digits-model.h5").is_file()


def test_import_stays_cheap_and_score_is_callable_either_way():
    script = """
import sys
import nsn_cli
assert "numba" not in sys.modules and "nsn_cli.api" not in sys.modules, sorted(sys.modules)
import nsn_cli.score
from nsn_cli import NSN, load, score
assert callable(score) and NSN.__module__ == "nsn_cli.api"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes_it(tmp_path, fitted):
    """A real SIGINT during a fit from Python: KeyboardInterrupt saying how to resume, the
    completed layers kept in the checkpoint; resuming gives the uninterrupted fit's bits."""
    script = f"""
import numpy as np
from nsn_cli import NSN
from nsn_cli.readers import open_source
digits = np.stack(open_source({str(MNIST_IMAGES)!r}).read(0, 600))[..., 0]
try:
    NSN(iterations={TINY['iterations']}, seed={TINY['seed']}).fit(digits, checkpoint="ckpt.h5")
except KeyboardInterrupt as exc:
    print("interrupted:", exc)
"""
    # Ctrl-C as at a terminal: a parent that ignores SIGINT (a background job) would pass that on
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(1200):  # the first checkpoint: layer 1 done
        if (tmp_path / "ckpt.h5").exists() or child.poll() is not None:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "keeps the layers completed so far; continue with fit(X, checkpoint='ckpt.h5', resume=True)" in out
    kept = load(tmp_path / "ckpt.h5").model_
    assert 1 <= len(kept.layers) and kept.calibration is None
    from nsn_cli.readers import open_source

    digits = np.stack(open_source(MNIST_IMAGES).read(0, 600))[..., 0]
    resumed = NSN(**TINY).fit(digits, checkpoint=tmp_path / "ckpt.h5", resume=True)
    _same_model(resumed.model_, fitted.model_)
