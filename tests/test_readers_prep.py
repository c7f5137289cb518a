"""Readers, resizing, ZCA and the data set file (foundation issue)."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest
from PIL import Image

from nsn_cli.errors import NsnError
from nsn_cli.files import load_images, open_dataset
from nsn_cli.prep import parse_size, prep, resize_image
from nsn_cli.readers import open_source, read_idx, read_labels
from nsn_cli.zca import fit_zca

from .conftest import FACES, MNIST_IMAGES, MNIST_LABELS


def test_idx_bundled_digits_have_400_per_class():
    images = read_idx(MNIST_IMAGES)
    labels = read_labels(MNIST_LABELS)
    assert images.shape == (4000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [400] * 10


def test_idx_raw_equals_gzip(tmp_path):
    raw = tmp_path / "x-images-idx3-ubyte"
    raw.write_bytes(gzip.open(MNIST_IMAGES).read())
    assert np.array_equal(read_idx(raw), read_idx(MNIST_IMAGES))


def test_idx_wrong_magic(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(NsnError, match="magic number 0x00000903"):
        read_idx(bad)


def test_idx_truncated(tmp_path):
    bad = tmp_path / "cut-images-idx3-ubyte"
    bad.write_bytes(gzip.open(MNIST_IMAGES).read()[:5000])
    with pytest.raises(NsnError, match="truncated"):
        read_idx(bad)


def test_folder_reads_80_faces_in_sorted_order():
    source = open_source(FACES)
    assert len(source) == 80
    first = source.read(0, 1)[0]
    direct = np.asarray(Image.open(FACES / "face000.png").convert("L"))
    assert np.array_equal(first[..., 0], direct)


def test_folder_skips_non_images_with_warning(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((5, 5), 10 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipped 1 non-image"):
        source = open_source(tmp_path)
    assert len(source) == 2


def test_resize_matches_pillow_directly():
    image = np.asarray(Image.open(FACES / "face003.png").convert("L"))
    ours = resize_image(image[..., None], (13, 17))
    theirs = np.asarray(Image.fromarray(image).resize((17, 13), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    assert ours.shape == (13, 17, 1)
    assert np.array_equal(ours[..., 0], theirs)


@pytest.mark.parametrize("text, expected", [("28", (28, 28)), ("64x48", (64, 48)), (" 7X9 ", (7, 9))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_zca_whitens_and_inverts(rng):
    # correlated 6x6 "images": smooth fields plus noise
    base = rng.normal(size=(3000, 6, 6, 2)).cumsum(axis=1).cumsum(axis=2) * 0.05 + 0.5
    images = base.astype(np.float32)
    zca = fit_zca(images, eps=1e-6)
    white = zca.apply(images)
    for ch in range(2):
        x = white[..., ch].reshape(len(white), -1).astype(np.float64)
        cov = np.cov(x, rowvar=False, bias=True)
        assert np.allclose(cov, np.eye(36), atol=0.02)
    assert np.max(np.abs(zca.invert(white) - images)) < 1e-4


def test_zca_eps_only_whitens_components_above_eps(rng):
    images = (rng.normal(size=(2000, 4, 4, 1)) * 0.3 + 0.5).astype(np.float32)
    zca = fit_zca(images, eps=1e-2)
    x = zca.apply(images)[..., 0].reshape(2000, -1)
    variances = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
    # lambda / (lambda + eps) with lambda ~ 0.09: close to, and below, 1
    assert np.all(variances < 1.0) and np.all(variances > 0.85)


def test_prep_round_trips_through_reader(tmp_path):
    out = tmp_path / "m.h5"
    result = prep([MNIST_IMAGES], out, limit=50)
    assert result.shape == (50, 28, 28, 1) and result.labels
    images, labels, zca = load_images(out)
    assert zca is None
    assert np.array_equal(images[..., 0], read_idx(MNIST_IMAGES)[:50] / np.float32(255))
    assert np.array_equal(labels, read_labels(MNIST_LABELS)[:50])
    with open_dataset(out) as dataset:
        assert dataset.attrs["encoding-type"] == "nsn-dataset"
        assert dataset.images.compression == "gzip"
    # an nsn data set is itself an input
    again = tmp_path / "again.h5"
    prep([out], again)
    assert np.array_equal(load_images(again)[0], images)


def test_prep_zca_faces_stores_matrices(tmp_path):
    out = tmp_path / "f.h5"
    prep([FACES], out, zca=True)
    images, _, zca = load_images(out)
    assert images.shape == (80, 25, 25, 1)
    assert zca.whiten.shape == (1, 625, 625) and zca.eps == pytest.approx(1e-2)
    raw = np.stack([np.asarray(Image.open(FACES / f"face{i:03d}.png").convert("L")) for i in range(80)])
    assert np.max(np.abs(zca.invert(images)[..., 0] - raw / 255.0)) < 1e-4


def test_prep_rgb_and_gray_conversion(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", arr)
    prep([tmp_path / "rgb.npy"], tmp_path / "g.h5", channels=1)
    gray = load_images(tmp_path / "g.h5")[0]
    expected = np.asarray(Image.fromarray(arr[0]).convert("L"), dtype=np.float32) / 255
    assert np.max(np.abs(gray[0, ..., 0] - expected)) <= 1 / 255 + 1e-6
    prep([tmp_path / "rgb.npy"], tmp_path / "c.h5")
    assert load_images(tmp_path / "c.h5")[0].shape == (4, 8, 8, 3)


def test_dataset_reader_names_bad_key(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["encoding-type"] = "nsn-dataset"
        handle.attrs["encoding-version"] = "1"
    with pytest.raises(NsnError, match="missing HDF5 key /images"):
        load_images(path)
    with h5py.File(path, "a") as handle:
        handle.attrs["encoding-version"] = "99"
    with pytest.raises(NsnError, match="encoding-version 99 was written by a newer nsn.*upgrade nsn"):
        load_images(path)


@pytest.mark.slow
def test_prep_crops_are_seeded_windows_of_the_image(tmp_path):
    from .conftest import DATA

    out = tmp_path / "brick.h5"
    prep([DATA / "brick.png"], out, size=(28, 28), crops=20, seed=3)
    images = load_images(out)[0]
    assert images.shape == (20, 28, 28, 1)
    full = np.asarray(Image.open(DATA / "brick.png").convert("L"), dtype=np.float32) / 255
    # each crop occurs in the image at some position
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(full, (28, 28))
    for crop in images[:3, ..., 0]:
        assert np.any(np.all(np.isclose(windows, crop, atol=1e-6), axis=(2, 3)))
    prep([DATA / "brick.png"], tmp_path / "again.h5", size=(28, 28), crops=20, seed=3)
    assert np.array_equal(load_images(tmp_path / "again.h5")[0], images)


def _peak_traced_bytes(action) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_big_array_and_sample_files_are_read_slice_by_slice(tmp_path, suffix, monkeypatch):
    """A 25 MB float32 file (50 MB as the .npy's float64) read 500 images at a time never holds
    more than a few 1.6-3.1 MB slices (measured peak: 8.4 MB; a whole-file read traces at least
    the file), and the slices are the file's pixels."""
    from nsn_cli import readers
    from nsn_cli.files import DATASET_TYPE, stamp

    monkeypatch.setattr(readers, "CHECK_BLOCK", 500)
    images = np.random.default_rng(0).random((8000, 28, 28, 1), dtype=np.float32)
    path = tmp_path / f"samples{suffix}"
    if suffix == ".npy":
        np.save(path, images.astype(np.float64)[..., 0])  # (N, H, W) float64: converted per slice
    else:
        with h5py.File(path, "w") as handle:
            stamp(handle, DATASET_TYPE, "test")
            handle.create_dataset("images", data=images, chunks=(256, 28, 28, 1))

    def read_all():
        source = open_source(path)
        for start in range(0, source.count, 500):
            block = np.stack(source.read(start, start + 500))
            assert block.dtype == np.float32 and block.shape == (500, 28, 28, 1)
            np.testing.assert_array_equal(block, images[start : start + 500])

    assert _peak_traced_bytes(read_all) < images.nbytes // 2


def test_nan_late_in_a_big_array_is_still_refused(tmp_path, monkeypatch):
    from nsn_cli import readers

    monkeypatch.setattr(readers, "CHECK_BLOCK", 100)
    images = np.full((1000, 8, 8), 0.5)
    images[950, 3, 3] = np.nan
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(NsnError, match="NaN"):
        open_source(tmp_path / "x.npy")
    images[950, 3, 3] = 1.5
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(NsnError, match=r"\[0.5, 1.5\]"):
        open_source(tmp_path / "x.npy")


def test_every_data_set_writer_writes_one_layout(tmp_path):
    """prep, sample's .h5 (whole and streamed) and the benchmarks all write through
    files.dataset_output: the same chunking and compression, the images and labels given."""
    from nsn_cli.files import DATASET_CHUNK_FLOATS, dataset_output, write_dataset
    from nsn_cli.sample import stream_to_h5, write_images

    images = np.random.default_rng(0).random((300, 28, 28, 1), dtype=np.float32)
    labels = np.arange(300) % 10
    prep([MNIST_IMAGES], tmp_path / "prep.h5", limit=300)
    write_dataset(tmp_path / "whole.h5", images, "test", labels)
    write_images(images, tmp_path / "sample.h5")
    stream_to_h5(tmp_path / "stream.h5", 300, False, lambda sink: [sink(a, images[a : a + 128]) for a in range(0, 300, 128)])
    for name in ("prep", "whole", "sample", "stream"):
        with open_dataset(tmp_path / f"{name}.h5") as dataset:
            assert dataset.images.chunks == (DATASET_CHUNK_FLOATS // 784, 28, 28, 1), name
            assert (dataset.images.compression, dataset.images.shuffle) == ("gzip", True), name
            assert dataset.attrs["encoding-version"] == "1"
        if name != "prep":
            read, read_labels_, _ = load_images(tmp_path / f"{name}.h5")
            assert np.array_equal(read, images), name
            assert (read_labels_ is not None) == (name == "whole")
    assert np.array_equal(load_images(tmp_path / "whole.h5")[1], labels)
    with pytest.raises(ValueError, match="labels have shape"):
        write_dataset(tmp_path / "bad.h5", images, "test", labels[:10])
    with pytest.raises(ValueError, match="no images were written"), dataset_output(tmp_path / "empty.h5", 3, "test"):
        pass
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "empty.h5").exists()
