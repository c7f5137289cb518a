"""Inpainting against its peers, measured in the same run (``make bench-inpaint``).

Digits: NSN (default settings) trained on the first 3,000 bundled digits, the other 1,000 held
out; one mask per held-out digit for each kind: a centre 10x10 square, four random 5x5 blocks
in the digit area, the bottom half. Faces: NSN trained on 60 of the 80 bundled faces (prep
--size 28 --zca, default settings), the other 20 filled at their own 25x25 size through the
28x28 model, with a random 9x11 rectangle each.

Peers: the exemplar fill (the mean of the 5 training images nearest on the known pixels),
scikit-image's biharmonic inpainting, OpenCV's Telea and Navier-Stokes, and the mean training
image. Scores: PSNR on the hole pixels only, and (digits) the accuracy of the CNN judge
trained on the 3,000 training digits on the filled images. Seconds: nsn's whole folder call
(load, fill, write) for the 1,000 digits of each mask kind, in a fresh process as a user runs
``nsn inpaint folder/ --mask masks/``, numba cache warm. Writes bench/results/inpaint.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import OUT, ROOT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.inpaint import from_model_size, inpaint_posterior, to_model_size
from nsn_cli.judge import fit_judge
from nsn_cli.model import NSNModel
from nsn_cli.readers import open_source
from nsn_cli.restore import inpaint as inpaint_layers

TRAIN = 3000
NSN = Path(sys.executable).with_name("nsn")


def digit_masks(kind: str, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, len(kind)])
    holes = np.zeros((count, 28, 28), bool)
    for hole in holes:
        if kind == "centre 10x10":
            hole[9:19, 9:19] = True
        elif kind == "4 random 5x5 blocks":
            for _ in range(4):
                r, c = rng.integers(4, 19, size=2)
                hole[r : r + 5, c : c + 5] = True
        else:
            hole[14:] = True
    return holes


def hole_psnr(filled: np.ndarray, truth: np.ndarray, holes: np.ndarray) -> float:
    """Mean over images of the PSNR on each image's hole pixels."""
    values = []
    for f, t, h in zip(filled, truth, holes):
        mse = float(np.mean((f[h] - t[h]) ** 2))
        values.append(10 * np.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(values))


def exemplar(images: np.ndarray, holes: np.ndarray, train: np.ndarray, k: int = 5) -> np.ndarray:
    """The mean of the ``k`` training images nearest on each image's known pixels."""
    out = images.copy()
    flat = train.reshape(len(train), -1)
    for i, (image, hole) in enumerate(zip(images, holes)):
        known = np.repeat(~hole[..., None], image.shape[-1], axis=-1).ravel()
        d = ((flat[:, known] - image.ravel()[known]) ** 2).sum(axis=1)
        mean = train[np.argsort(d)[:k]].mean(axis=0)
        out[i] = np.where(hole[..., None], mean, image)
    return out


def classic(images: np.ndarray, holes: np.ndarray, how: str) -> np.ndarray:
    import cv2
    from skimage.restoration import inpaint_biharmonic

    out = np.empty_like(images)
    for i, (image, hole) in enumerate(zip(images, holes)):
        if how == "biharmonic":
            out[i] = inpaint_biharmonic(image, hole, channel_axis=-1)
        else:
            flag = cv2.INPAINT_TELEA if how == "telea" else cv2.INPAINT_NS
            u8 = np.rint(image[..., 0] * 255).astype(np.uint8)
            out[i, ..., 0] = cv2.inpaint(u8, hole.astype(np.uint8), 3, flag).astype(np.float32) / 255
    return out


def folder_call_seconds(model_path: Path, images: np.ndarray, holes: np.ndarray) -> float:
    """Wall seconds of ``nsn inpaint DIGITS/ --mask MASKS/`` on these images, a fresh process."""
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "in").mkdir()
        (folder / "masks").mkdir()
        for i, (image, hole) in enumerate(zip(images, holes)):
            iio.imwrite(folder / "in" / f"{i:04d}.png", np.rint(image[..., 0] * 255).astype(np.uint8))
            iio.imwrite(folder / "masks" / f"{i:04d}.png", hole.astype(np.uint8) * 255)
        started = time.perf_counter()
        subprocess.run([str(NSN), "inpaint", str(folder / "in"), "--mask", str(folder / "masks"), "-m",
                        str(model_path), "-o", str(folder / "out"), "-q"], check=True, capture_output=True)
        return time.perf_counter() - started


def digits_table() -> dict:
    images, labels = bundled_digits()
    train_x, held, held_labels = images[:TRAIN], images[TRAIN:], labels[TRAIN:]
    from nsn_cli.train import TrainOptions, train

    model_path = OUT / "inpaint-model.h5"
    train(write_dataset(train_x, f"mnist{TRAIN}.h5"), model_path, TrainOptions(seed=0), force=True)
    model = NSNModel.load(model_path)
    judge = fit_judge(train_x, labels[:TRAIN])
    rows = {}
    for kind in ("centre 10x10", "4 random 5x5 blocks", "bottom half"):
        holes = digit_masks(kind, len(held))
        occluded = np.where(holes[..., None], 0.0, held).astype(np.float32)
        fills = {
            "nsn (posterior)": inpaint_posterior(model, occluded, holes),
            "nsn --method layers (the paper's)": np.stack(
                [inpaint_layers(model, o, h) for o, h in zip(occluded[:200], holes[:200])]),
            "exemplar (5 nearest)": exemplar(occluded, holes, train_x),
            "biharmonic": classic(occluded, holes, "biharmonic"),
            "OpenCV Telea": classic(occluded, holes, "telea"),
            "OpenCV Navier-Stokes": classic(occluded, holes, "ns"),
            "mean training digit": np.where(holes[..., None], train_x.mean(axis=0), occluded),
        }
        row = {}
        for name, filled in fills.items():
            n = len(filled)
            accuracy = float(np.mean(judge.probabilities(filled).argmax(axis=1) == held_labels[:n]))
            row[name] = {"psnr": hole_psnr(filled, held[:n], holes[:n]), "accuracy": accuracy, "images": n}
        assert np.array_equal(fills["nsn (posterior)"][~holes], held[~holes])  # known pixels exact
        row["nsn seconds (folder of 1,000, fresh process)"] = folder_call_seconds(model_path, occluded, holes)
        rows[kind] = row
        print(kind, {k: (round(v["psnr"], 2), round(v["accuracy"], 3)) if isinstance(v, dict) else round(v, 1)
                     for k, v in row.items()}, flush=True)
    return {"judge_accuracy": judge.accuracy, "rows": rows}


def faces_table() -> dict:
    import shutil

    from nsn_cli.prep import prep
    from nsn_cli.train import TrainOptions, train

    source = open_source(ROOT / "data" / "lfw25-faces")
    faces = np.stack(source.read(0, len(source))).astype(np.float32) / 255.0
    folder = OUT / "faces60"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.save(folder / "faces60.npy", np.rint(faces[:60] * 255).astype(np.uint8))
    prep([folder / "faces60.npy"], folder / "faces60.h5", size=(28, 28), zca=True)
    train(folder / "faces60.h5", folder / "model.h5", TrainOptions(seed=0), force=True)
    model = NSNModel.load(folder / "model.h5")
    held = faces[60:]
    rng = np.random.default_rng(0)
    holes = np.zeros((len(held), 25, 25), bool)
    for hole in holes:
        r, c = rng.integers(3, 12, size=2)
        hole[r : r + 9, c : c + 11] = True
    occluded = np.where(holes[..., None], 0.0, held).astype(np.float32)
    nsn = []
    for image, hole in zip(occluded, holes):
        resized = to_model_size(image, hole, model)
        nsn.append(from_model_size(inpaint_posterior(model, resized.image[None], resized.hole[None])[0], resized))
    fills = {"nsn (posterior, through the 28x28 ZCA model)": np.stack(nsn),
             "exemplar (5 nearest)": exemplar(occluded, holes, faces[:60]),
             "biharmonic": classic(occluded, holes, "biharmonic"),
             "OpenCV Telea": classic(occluded, holes, "telea"),
             "mean training face": np.where(holes[..., None], faces[:60].mean(axis=0), occluded)}
    row = {name: {"psnr": hole_psnr(f, held, holes)} for name, f in fills.items()}
    print("faces 9x11 rectangles", {k: round(v["psnr"], 2) for k, v in row.items()}, flush=True)
    return {"filters": [layer.filters for layer in model.layers], "rows": row}


def main() -> dict:
    started = time.perf_counter()
    result = {"digits": digits_table(), "faces": faces_table(), "seconds": time.perf_counter() - started}
    (OUT / "inpaint.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT / 'inpaint.json'} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
