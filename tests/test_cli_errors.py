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


def test_empty_npy_is_one_line(cli, tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    code, _, err = cli("prep", tmp_path / "empty.npy", "-o", tmp_path / "x.h5")
    assert code == 2 and "empty.npy: empty or cut short, not a .npy/.npz file" in _one_line(err)
    (tmp_path / "labels.txt").write_text("")
    code, _, err = cli("prep", FACES, "-o", tmp_path / "x.h5", "--labels", tmp_path / "labels.txt")
    assert code == 2 and "labels.txt: the labels file is empty" in _one_line(err)


def test_an_output_is_never_an_input(cli, tmp_path, mnist_small, tiny_model):
    import shutil

    import imageio.v3 as iio

    model = tmp_path / "m.h5"
    shutil.copy(tiny_model[0], model)
    data = tmp_path / "d.h5"
    shutil.copy(mnist_small, data)
    digit = tmp_path / "digit.png"
    iio.imwrite(digit, np.zeros((28, 28), np.uint8))
    (tmp_path / "link.h5").symlink_to(model)
    before = {p: p.read_bytes() for p in (model, data, digit)}
    for argv in (("sample", "-m", model, "-o", model, "--force"),
                 ("sample", "-m", tmp_path / "link.h5", "-o", model, "--force", "--filter", "1"),
                 ("train", data, "-o", data, "--force"),
                 ("prep", data, "-o", data, "--force"),
                 ("score", data, "--ref", data, "--json", data, "--force"),
                 ("style", digit, "-m", model, "-o", digit, "--force"),
                 ("inpaint", digit, "--mask", digit, "-m", model, "-o", digit, "--force")):
        code, _, err = cli(*argv)
        assert code == 2 and "is also an input of this command" in _one_line(err), (argv, err)
    code, _, err = cli("train", data, "-o", data, "--resume")
    assert code == 2 and "is the data set" in _one_line(err)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_huge_n_is_refused_before_any_work(cli, tmp_path, tiny_model, mnist_small):
    model, _ = tiny_model
    for output in ("s.png", "s.npz", "pngs/"):
        code, _, err = cli("sample", "-m", model, "-n", "1000000000000", "-o", f"{tmp_path}/{output}")
        line = _one_line(err)
        assert code == 2 and line.startswith("error: 1,000,000,000,000 samples of 28x28x1 need "), err
        assert " PB of memory, " in line and line.endswith("write them to a .h5 or .npy file (written batch by batch), or lower -n")
    code, _, err = cli("sample", "-m", model, "-n", "1000000000000", "-o", tmp_path / "s.h5")
    assert code == 2 and "(3.14 PB as float32) need at least 196 TB, the disk has" in _one_line(err)
    code, _, err = cli("sample", "-m", model, "-n", "1000000000000", "-o", tmp_path / "s.npy")  # streamed too
    assert code == 2 and "(3.14 PB as float32) need at least 3.14 PB, the disk has" in _one_line(err)
    code, _, err = cli("sample", "-m", model, "-n", "1000000000000", "--filter", "1", "-o", tmp_path / "s.h5")
    assert code == 2 and _one_line(err).endswith("; lower -n")
    code, _, err = cli("score", model, "--ref", mnist_small, "-n", "1000000000000")
    assert code == 2 and "at most 10,000,000 samples are drawn from a model" in _one_line(err)
    assert not list(tmp_path.iterdir())


def test_outputs_are_checked_before_any_work(cli, tmp_path, tiny_model, mnist_small):
    """An existing output without --force is refused at once, not after generating or training
    (10 million samples would take minutes; the data set is not even read)."""
    model, _ = tiny_model
    existing = tmp_path / "out.h5"
    existing.write_text("keep")
    for argv in (("sample", "-m", model, "-n", "10000000", "-o", existing),
                 ("sample", "-m", model, "-n", "10000000", "--filter", "0", "-o", existing),
                 ("train", tmp_path / "unread.h5", "-o", existing),
                 ("prep", tmp_path / "unread", "-o", existing)):
        code, _, err = cli(*argv)
        assert code == 2 and "out.h5: already exists (use --force to overwrite)" in _one_line(err), argv
    assert existing.read_text() == "keep"


def test_inpaint_output_folders(cli, tmp_path, tiny_model):
    import imageio.v3 as iio

    model, _ = tiny_model
    for name in ("a.png", "b.png"):
        iio.imwrite(tmp_path / name, np.zeros((28, 28), np.uint8))
    mask = tmp_path / "a.png"
    common = ("--mask", mask, "-m", model, "--draws", "1")
    code, out, _ = cli("inpaint", tmp_path / "a.png", tmp_path / "b.png", *common, "-o", tmp_path / "new")
    assert code == 0 and sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.png", "b.png"], out
    code, _, err = cli("inpaint", tmp_path / "a.png", *common, "-o", tmp_path / "newdir")
    assert code == 2 and "give an image file name (.png) for one image, or a folder ending in /" in _one_line(err)
    code, _, err = cli("inpaint", tmp_path / "a.png", tmp_path / "b.png", *common, "-o", tmp_path / "x.png")
    assert code == 2 and "2 images are written to a folder" in _one_line(err)
    code, _, _ = cli("inpaint", tmp_path / "a.png", *common, "-o", f"{tmp_path / 'one'}/")
    assert code == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["a.png"]


def test_help_and_version(cli):
    from nsn_cli import __version__

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"nsn {__version__}"
    code, out, _ = cli("train", "--help")
    assert code == 0 and "pip install 'nsn[dask]'" in " ".join(out.replace("│", " ").split())  # help panels wrap
    assert "<bool>" not in out and "at least 352M" in out
    code, out, _ = cli("inpaint", "--help")
    assert code == 0 and "<list[Path]>" not in out and "IMAGES" in out and "<path>..." in out
    for command in ("style", "inpaint"):
        code, out, _ = cli(command, "--help")
        assert "--quiet" in out and "Seed of NSN-Gen" in out and "Sharpness of softmax" in out, command


def test_memory_below_the_minimum_names_the_minimum(cli, tmp_path, mnist_small):
    code, _, err = cli("train", mnist_small, "-o", tmp_path / "m.h5", "--memory", "1K")
    assert code == 2 and "--memory 1K is below the minimum of 352M" in _one_line(err)


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
