"""Every bad input gets one clear line on stderr and exit code 2."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from .conftest import FACES, MNIST_IMAGES


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_file(cli, tmp_path):
    code, _, err = cli("prep", tmp_path / "nothere", "-o", tmp_path / "x.h5")
    assert code == 2 and "no such file or folder" in _one_line(err)


def test_empty_folder_and_folder_without_images(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("prep", empty, "-o", tmp_path / "x.h5")
    assert code == 2 and "the folder is empty" in _one_line(err)
    (empty / "a.txt").write_text("x")
    code, _, err = cli("prep", empty, "-o", tmp_path / "x.h5")
    assert code == 2 and "no images in the folder" in _one_line(err)


def test_bad_idx(cli, tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x04" + b"\x00" * 16))
    code, _, err = cli("prep", bad, "-o", tmp_path / "x.h5")
    assert code == 2 and "magic number" in _one_line(err)
    cut = tmp_path / "cut-images-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(gzip.open(MNIST_IMAGES).read()[:1000]))
    code, _, err = cli("prep", cut, "-o", tmp_path / "x.h5")
    assert code == 2 and "truncated" in _one_line(err)


def test_label_count_mismatch(cli, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n2\n3\n")
    code, _, err = cli("prep", FACES, "-o", tmp_path / "x.h5", "--labels", labels)
    assert code == 2 and "3 labels for 80 images" in _one_line(err)


def test_npy_nan_and_bad_shape(cli, tmp_path):
    arr = np.zeros((3, 5, 5), np.float32)
    arr[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    code, _, err = cli("prep", tmp_path / "nan.npy", "-o", tmp_path / "x.h5")
    assert code == 2 and "NaN" in _one_line(err)
    np.save(tmp_path / "flat.npy", np.zeros((10,), np.float32))
    code, _, err = cli("prep", tmp_path / "flat.npy", "-o", tmp_path / "x.h5")
    assert code == 2 and "unsupported array shape" in _one_line(err)


@pytest.mark.parametrize("size, message", [("0", "must be at least 1x1"), ("abc", "is not a size")])
def test_bad_size(cli, tmp_path, size, message):
    code, _, err = cli("prep", FACES, "-o", tmp_path / "x.h5", "--size", size)
    assert code == 2 and message in _one_line(err)


def test_output_in_missing_directory(cli, tmp_path):
    code, _, err = cli("prep", FACES, "-o", tmp_path / "no" / "x.h5")
    assert code == 2 and "does not exist" in _one_line(err)


def test_existing_output_needs_force(cli, tmp_path):
    out = tmp_path / "x.h5"
    out.write_text("keep me")
    code, _, err = cli("prep", FACES, "-o", out)
    assert code == 2 and "use --force" in _one_line(err)
    assert out.read_text() == "keep me"
    code, _, _ = cli("prep", FACES, "-o", out, "--force", "-q")
    assert code == 0


def test_info_on_non_hdf5(cli, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = cli("info", text)
    assert code == 2 and "not an HDF5 file" in _one_line(err)


def test_unknown_option_is_one_line(cli, tmp_path):
    code, _, err = cli("prep", FACES, "--bogus")
    assert code == 2 and "No such option" in _one_line(err)


def test_prep_and_info(cli, tmp_path):
    out = tmp_path / ("a-long-folder-name-" * 6) / "m.h5"  # messages stay one line past 80 columns
    out.parent.mkdir()
    code, stdout, _ = cli("prep", MNIST_IMAGES, "-o", out, "--limit", "100", "-q")
    assert code == 0 and stdout.strip() == f"wrote {out}: 100 x 28 x 28 x 1, labels", stdout
    code, stdout, _ = cli("info", out, "--json")
    assert code == 0 and '"shape": "100 x 28 x 28 x 1"' in stdout and "10 classes" in stdout


def test_damaged_image_chunks_are_one_line(cli, tmp_path, mnist_small):
    """A data set whose compressed /images chunks are damaged: info, score and a streamed train
    name the file and stop with exit code 2 instead of an HDF5 traceback."""
    import h5py

    from nsn_cli.files import DATASET_TYPE, stamp

    path = tmp_path / "damaged.h5"
    images = np.random.default_rng(0).random((600, 28, 28, 1), dtype=np.float32)
    with h5py.File(path, "w") as handle:
        stamp(handle, DATASET_TYPE, "test")
        handle.create_dataset("images", data=images, chunks=(50, 28, 28, 1), compression="gzip")
        offset = handle["images"].id.get_chunk_info(6).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 64] = bytes(64)  # chunk 6 (images 300..349) no longer inflates
    path.write_bytes(raw)
    for argv in (("info", path), ("score", path, "--ref", mnist_small, "--metrics", "swd"),
                 ("train", path, "-o", tmp_path / "m.h5", "--memory", "360M", "-q")):
        code, _, err = cli(*argv)
        assert code == 2 and "damaged.h5: /images cannot be read" in _one_line(err), (argv, err)


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_the_command_line_waits_passively_unless_told_otherwise(monkeypatch, capsys, preset):
    """`nsn` sets OpenMP's waiting policy for its own process (numba's threads would spin
    between parallel loops), keeping one the user set."""
    from nsn_cli.cli import main

    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    monkeypatch.setattr("sys.argv", ["nsn", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0 and "Normal Similarity Network" in capsys.readouterr().out
    assert os.environ["OMP_WAIT_POLICY"] == (preset or "PASSIVE")
