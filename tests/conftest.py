"""Shared fixtures: the bundled data, small prepped data sets, and a CLI runner."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from nsn_cli.cli import run
from nsn_cli.kernel_cache import PACKAGE, forget_stale_kernels

ROOT = Path(__file__).resolve().parents[1]
# the tests' own kernels (tests/unfused.py) inline the engine's: compiled afresh when either changed
forget_stale_kernels(ROOT / "tests", depends=(PACKAGE,))
DATA = ROOT / "data"
MNIST_IMAGES = DATA / "mnist-4k-images-idx3-ubyte.gz"
MNIST_LABELS = DATA / "mnist-4k-labels-idx1-ubyte.gz"
FACES = DATA / "lfw25-faces"


class Cli:
    """Run ``nsn`` in-process through the real error boundary; capture out, err, code."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = run([str(a) for a in argv])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


@pytest.fixture
def cli(capsys):
    return Cli(capsys)


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory):
    """The first 600 bundled digits as an nsn data set."""
    from nsn_cli.prep import prep

    path = tmp_path_factory.mktemp("data") / "mnist600.h5"
    prep([MNIST_IMAGES], path, limit=600)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, mnist_small):
    """A 3-layer model trained briefly on 600 digits (shared by the generation tests)."""
    from nsn_cli.train import TrainOptions, train

    path = tmp_path_factory.mktemp("model") / "model.h5"
    return path, train(mnist_small, path, TrainOptions(iterations=4, seed=3))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
