"""File formats: every version nsn ever wrote still loads (tests/data keeps a tiny file of each,
made by tests/data/make_old_files.py), and a file from a newer nsn is one line asking to upgrade."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from nsn_cli.calibrate import CALIBRATION_VERSION
from nsn_cli.errors import NsnError
from nsn_cli.files import DATASET_TYPE, FORMAT_VERSIONS, MODEL_TYPE, OLDEST_VERSIONS, fingerprint, load_images
from nsn_cli.model import NSNModel
from nsn_cli.priors import PRIORS
from nsn_cli.sample import generate
from nsn_cli.top import TOP_VERSION, TopStats

DATA = Path(__file__).resolve().parent / "data"
KINDS = {"dataset": DATASET_TYPE, "model": MODEL_TYPE}


def _files(kind: str) -> dict[int, Path]:
    return {int(re.fullmatch(rf"{kind}-v(\d+)\.h5", p.name).group(1)): p for p in DATA.glob(f"{kind}-v*.h5")}


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_of_every_version_is_kept(kind):
    """A version bump without its file in tests/data fails here."""
    assert sorted(_files(kind)) == list(range(OLDEST_VERSIONS[KINDS[kind]], FORMAT_VERSIONS[KINDS[kind]] + 1))
    for version, path in _files(kind).items():
        with h5py.File(path, "r") as handle:
            assert handle.attrs["encoding-version"] == str(version) and handle.attrs["encoding-type"] == KINDS[kind]


@pytest.mark.parametrize("version", sorted(_files("dataset")))
def test_every_data_set_version_loads(version):
    images, labels, zca = load_images(_files("dataset")[version])
    assert images.shape == (100, 10, 10, 1) and labels.shape == (100,) and set(labels) <= set(range(10))
    # the whitening read back undoes itself, and the model files were trained on these images
    pixels = zca.invert(images)
    assert 0.0 <= pixels.min() + 1e-3 and pixels.max() <= 1.0 + 1e-3
    assert np.allclose(zca.apply(pixels), images, atol=1e-4)
    for model in _files("model").values():
        assert NSNModel.load(model).fingerprint == fingerprint(images)


@pytest.mark.parametrize("version", sorted(_files("model")))
def test_every_model_version_loads_and_samples(version, tmp_path):
    model = NSNModel.load(_files("model")[version])
    assert model.complete and [layer.filters for layer in model.layers] == [25, 12]
    assert model.top is not None and model.calibration is not None and model.zca is not None
    for prior in PRIORS:
        samples = generate(model, 5, prior=prior, seed=2)
        assert samples.shape == (5, 10, 10, 1) and np.isfinite(samples).all()
        assert samples.min() >= 0 and samples.max() <= 1 and samples.std() > 0, prior
        assert np.array_equal(samples, generate(model, 5, prior=prior, seed=2))
    # saved again, it is a file of the current version with the same contents and samples
    model.save(tmp_path / "again.h5")
    with h5py.File(tmp_path / "again.h5", "r") as handle:
        assert handle.attrs["encoding-version"] == str(FORMAT_VERSIONS[MODEL_TYPE])
        assert handle["top"].attrs["version"] == TOP_VERSION
    again = NSNModel.load(tmp_path / "again.h5")
    for key in TopStats.STORED:
        assert np.array_equal(getattr(again.top, key), getattr(model.top, key)), key
    assert np.array_equal(generate(again, 5, seed=3), generate(model, 5, seed=3))


def test_versions_differ_only_in_their_number():
    """Model versions 1 and 2 were written from the same data and options: read, they are the
    same model and sample the same bits."""
    models = [NSNModel.load(path) for _, path in sorted(_files("model").items())]
    first = models[0]
    for other in models[1:]:
        for a, b in zip(first.layers, other.layers):
            assert np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma) and np.array_equal(a.counts, b.counts)
        for key in TopStats.STORED:
            assert np.array_equal(getattr(first.top, key), getattr(other.top, key)), key
        assert np.array_equal(generate(first, 6, seed=1), generate(other, 6, seed=1))


def _newest_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.h5"
    shutil.copy(_files("model")[FORMAT_VERSIONS[MODEL_TYPE]], path)
    return path


@pytest.mark.parametrize("where, attribute, version", [
    ("/", "encoding-version", str(FORMAT_VERSIONS[MODEL_TYPE] + 1)),
    ("top", "version", TOP_VERSION + 1),
    ("calibration", "version", CALIBRATION_VERSION + 1),
])
def test_a_model_from_a_newer_nsn_is_one_line_asking_to_upgrade(tmp_path, where, attribute, version):
    path = _newest_model(tmp_path)
    with h5py.File(path, "a") as handle:
        handle[where].attrs[attribute] = version
    with pytest.raises(NsnError, match=f"{version} was written by a newer nsn.*upgrade nsn"):
        NSNModel.load(path)
    run = subprocess.run([sys.executable, "-m", "nsn_cli", "sample", "-m", str(path), "-n", "2", "-o",
                          str(tmp_path / "s.png")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "upgrade nsn" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "s.png").exists()


def test_a_data_set_from_a_newer_nsn_and_damaged_versions(tmp_path):
    path = tmp_path / "d.h5"
    shutil.copy(_files("dataset")[FORMAT_VERSIONS[DATASET_TYPE]], path)
    with h5py.File(path, "a") as handle:
        handle.attrs["encoding-version"] = str(FORMAT_VERSIONS[DATASET_TYPE] + 1)
    with pytest.raises(NsnError, match="was written by a newer nsn.*upgrade nsn"):
        load_images(path)
    for bad in ("one", "-1"):
        with h5py.File(path, "a") as handle:
            handle.attrs["encoding-version"] = bad
        with pytest.raises(NsnError, match=f"encoding-version '{bad}' is not a version"):
            load_images(path)
    with h5py.File(path, "a") as handle:
        del handle.attrs["encoding-version"]
    with pytest.raises(NsnError, match="no encoding-version attribute; the file is damaged"):
        load_images(path)


def test_top_version_1_may_lack_neighbours_and_version_2_may_not(tmp_path):
    path = _newest_model(tmp_path)
    with h5py.File(path, "a") as handle:
        expected = handle["top/member_neighbours"][()]
        del handle["top/member_neighbours"]
    with pytest.raises(NsnError, match="missing HDF5 key /top/member_neighbours"):
        NSNModel.load(path)
    with h5py.File(path, "a") as handle:
        handle["top"].attrs["version"] = 1
    model = NSNModel.load(path)
    assert model.top.member_neighbours is None
    assert np.array_equal(model.top.neighbours(), expected)


def test_committed_outputs_are_recorded_only_within_a_recording_block(tmp_path):
    """The CLI names the outputs a stray Ctrl-C left complete from a recording block: every
    rename into place inside it, in order, nested blocks alike; a failed write is not one,
    and nothing is kept once the blocks end."""
    from nsn_cli import files

    def write(name: str, fail: bool = False) -> None:
        with files.atomic_path(tmp_path / name) as temp:
            temp.write_text(name)
            if fail:
                raise RuntimeError("the job failed before its rename")

    write("before.txt")
    with files.recording_commits() as outer:
        write("a.txt")
        with files.recording_commits() as inner:
            write("b.txt")
            with pytest.raises(RuntimeError):
                write("c.txt", fail=True)
        write("a.txt")
    write("after.txt")
    assert outer == [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "a.txt"]
    assert inner == [tmp_path / "b.txt"]
    assert not (tmp_path / "c.txt").exists() and not files._RECORDS
