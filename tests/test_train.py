"""nsn train: checkpoints, resume, reproducibility, filter targets and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from nsn_cli.model import NSNModel
from nsn_cli.prep import prep
from nsn_cli.train import TrainOptions, train

from .conftest import MNIST_IMAGES


def _same_model(a: NSNModel, b: NSNModel) -> bool:
    return len(a.layers) == len(b.layers) and all(
        np.array_equal(x.mu, y.mu) and np.array_equal(x.sigma, y.sigma) and np.array_equal(x.counts, y.counts)
        for x, y in zip(a.layers, b.layers)
    )


def test_same_seed_same_bits_on_any_thread_count_and_checkpoint_contents(tmp_path, mnist_small, tiny_model):
    path, model = tiny_model  # trained on numba's default threads (every core)
    again = train(mnist_small, tmp_path / "again.h5", TrainOptions(iterations=4, seed=3), threads=1)
    assert _same_model(model, again)
    other = train(mnist_small, tmp_path / "other.h5", TrainOptions(iterations=4, seed=4))
    assert not _same_model(model, other)
    loaded = NSNModel.load(path)
    assert _same_model(model, loaded)
    assert [layer.mu.shape[1:] for layer in loaded.layers] == [
        (4, 4, 1), (3, 3, loaded.layers[0].filters), (6, 6, loaded.layers[1].filters)]
    for layer in loaded.layers:
        assert layer.counts.sum() > 0 and np.all(layer.sigma > 0)
        assert len(layer.history) >= 1 and set(layer.history[0]) >= {"filters", "created", "merged", "changed", "mean_sim"}
    with h5py.File(path) as handle:
        assert handle.attrs["encoding-type"] == "nsn-model"
        assert handle.attrs["layers-complete"] == 3


def test_max_patches_subsample(tmp_path, mnist_small):
    model = train(mnist_small, tmp_path / "m.h5", TrainOptions(iterations=2, max_patches=5000, seed=1))
    assert model.layers[0].patches == 5000 and model.layers[2].patches == 600


def test_bad_train_inputs(cli, tmp_path, mnist_small):
    out = tmp_path / "m.h5"
    cases = [
        (["--alpha", "-2,-2"], "2 values for an architecture of 3 layers"),
        (["--filters", "10,10"], "2 values for an architecture of 3 layers"),
        (["--alpha", "-2,-2,-2", "--filters", "1,2,3"], "not both"),
        (["--arch", "4x4/2,3x3/2"], "reaches 1x1 from sizes"),
        (["--alpha", "0,-2,-2", "--max-filters", "20"], "layer 1 grew to"),
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--reference-images", "-1"], "--reference-images must be at least 0"),
        (["--activation", "tanh"], "--activation must be one of"),
    ]
    for extra, message in cases:
        code, _, err = cli("train", mnist_small, "-o", out, "-q", *extra)
        assert code == 2 and message in err, (extra, err)
    code, _, err = cli("train", MNIST_IMAGES, "-o", out, "-q")
    assert code == 2 and "not an HDF5 file" in err
    out.write_text("precious")
    code, _, err = cli("train", mnist_small, "-o", out, "-q")
    assert code == 2 and "use --force" in err and out.read_text() == "precious"


def test_resume_refuses_other_data_or_options(cli, tmp_path, mnist_small, tiny_model):
    path, _ = tiny_model
    code, _, err = cli("train", mnist_small, "-o", path, "--resume", "--iterations", "5", "--seed", "3", "-q")
    assert code == 2 and "other options (iterations)" in err
    other = tmp_path / "other.h5"
    prep([MNIST_IMAGES], other, limit=300)
    code, _, err = cli("train", other, "-o", path, "--resume", "--iterations", "4", "--seed", "3", "-q")
    assert code == 2 and "trained on other data" in err


def test_resume_of_a_checkpoint_from_before_the_reference_scale(cli, tmp_path, mnist_small, tiny_model):
    """A model file written before --reference-images existed was trained with the paper's EM:
    resumable by default on at most 4,000 images (where the default is the paper's EM), and
    with --reference-images 0 at any size; not with a reference smaller than the data."""
    path, _ = tiny_model
    old = tmp_path / "old.h5"
    model = NSNModel.load(path)  # a copy: the fixture's model is shared
    model.config = {k: v for k, v in model.config.items() if k != "reference_images"}
    model.save(old)
    for extra, code_expected in (([], 0), (["--reference-images", "0"], 0), (["--reference-images", "100"], 2)):
        code, _, err = cli("train", mnist_small, "-o", old, "--resume", "--iterations", "4", "--seed", "3", "-q",
                           *extra)
        assert code == code_expected, (extra, err)
    assert "other options (reference_images)" in err


@pytest.mark.slow
def test_kill_after_first_layer_then_resume_equals_uninterrupted(tmp_path, mnist_small, tiny_model):
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "nsn_cli", "train", str(mnist_small), "-o", str(out), "--iterations", "4",
           "--seed", "3", "-q"]  # tiny_model's options: it is the uninterrupted run
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = NSNModel.load(out)  # the checkpoint is intact after kill -9
    assert 1 <= len(partial.layers) <= 3
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_model(NSNModel.load(out), tiny_model[1])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
def test_filter_targets_on_bundled_digits(tmp_path, mnist_small):
    """The count search reaches every layer's target within 10% (600 digits, 5 iterations:
    the same search as on all 4,000, which took CI minutes; 1,000 digits took twice as long)."""
    targets = [64, 96, 80]
    model = train(mnist_small, tmp_path / "m.h5", TrainOptions(targets=targets, iterations=5))
    for layer, target in zip(model.layers, targets, strict=True):
        assert abs(layer.filters - target) <= 0.1 * target


def _datasets(path) -> dict:
    """Every array of a model file except the timings: the layers' filters and the top statistics."""
    out = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset) and not name.endswith("history/seconds"):
            out[name] = item[()]

    with h5py.File(path) as handle:
        handle.visititems(keep)
    return out


@pytest.mark.slow
def test_blas_thread_count_does_not_change_the_bits(tmp_path, mnist_small):
    """OPENBLAS_NUM_THREADS as a user sets it (a fresh process each): the same model bits,
    filters and top statistics alike. Layer 2's patches here are longer than OpenBLAS's
    blocking of the inner dimension (5x5 x 43 filters), where its float32 products change
    with its thread count (layer 3's means and the top components did, before BLAS was
    pinned to one thread inside the engine)."""
    runs = {}
    for threads in ("1", "2"):  # side by side: the bits may not depend on the machine's load either
        out = tmp_path / f"blas{threads}.h5"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
        runs[out] = subprocess.Popen([sys.executable, "-m", "nsn_cli", "train", str(mnist_small), "-o", str(out),
                                      "--arch", "4x4/2,5x5/1,9x9/1", "--alpha", "-2.0,-2.6,-3", "--iterations", "2",
                                      "--seed", "2", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    models = []
    for out, proc in runs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        models.append(_datasets(out))
    assert models[0].keys() == models[1].keys() and "top/components" in models[0]
    for name, value in models[0].items():
        assert np.array_equal(value, models[1][name]), name


@pytest.fixture(scope="module")
def digits200(tmp_path_factory):
    """The first 200 bundled digits (one encoding chunk): for the command's step names, not
    for what it learns or for progress within a step."""
    path = tmp_path_factory.mktemp("data") / "mnist200.h5"
    prep([MNIST_IMAGES], path, limit=200)
    return path


def test_every_long_step_reports_progress(tmp_path, mnist_small):
    """The alpha search reports every EM iteration of every probe; encoding between layers,
    the top statistics and the final save report as steps, each ending complete."""
    from nsn_cli.train import CALIBRATION_STEP, SAVE_STEP, TOP_STEP

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *args: self.calls.append((name, *args))

    recorder = Recorder()
    train(mnist_small, tmp_path / "m.h5", TrainOptions(targets=[20, 8, 4], iterations=2, seed=1), reporter=recorder)
    names = [call[0] for call in recorder.calls if call[0] in ("iteration", "probe") and call[1] == 1]
    assert names.count("probe") >= 2
    probes = "".join("p" if name == "probe" else "i" for name in names)
    assert "ip" in probes  # a probe's iterations show before the probe ends
    steps = {}
    for call in recorder.calls:
        if call[0] == "step":
            steps.setdefault(call[1], []).append(call[2:])
    assert set(steps) == {"encoding with layer 1", "encoding with layer 2", TOP_STEP, CALIBRATION_STEP, SAVE_STEP}
    for name, reports in steps.items():
        done, total = reports[-1]
        assert done == total and len(reports) >= 2, name
    assert steps[TOP_STEP][-1] == (1200, 1200)  # 600 images, then 600 members searched


def test_train_command_shows_its_steps(cli, tmp_path, digits200):
    code, _, err = cli("train", digits200, "-o", tmp_path / "m.h5", "--iterations", "2")
    assert code == 0
    for name in ("layer 1", "encoding with layer 1", "top statistics", "saving the model"):
        assert name in err, name
