"""Generation and inpainting speed and quality on the bundled digits.

- seconds of ``nsn sample -n 50000 -o samples.npy`` as a new user runs it: the CLI in a fresh
  process, default settings, numba's cache warm (the best of three runs; a run on an empty
  numba cache is reported apart as "cold"), and of ``-n 1`` (start-up, model loading);
- inpainting hole PSNR on 500 digits held out from training (the model trains on the other
  3,500), for centre 10x10 holes and random 5x5 blocks, against scikit-image's
  ``inpaint_biharmonic`` and OpenCV's Telea and Navier-Stokes, measured in the same run.
Writes bench/results/generate.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import OUT, ROOT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.model import NSNModel
from nsn_cli.restore import inpaint


def sample_seconds(model, n: int, output, env=None) -> float:
    """Wall seconds of ``nsn sample -m MODEL -n N -o OUTPUT`` in a fresh process."""
    argv = [sys.executable, "-m", "nsn_cli", "sample", "-m", str(model), "-n", str(n), "-o", str(output),
            "--force", "-q", "--seed", "1"]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nsn sample failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return seconds


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def masks(kind: str, count: int, rng) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        hole = np.zeros((28, 28), bool)
        if kind == "centre 10x10":
            hole[9:19, 9:19] = True
        else:  # four random 5x5 blocks inside the digit area
            for _ in range(4):
                r, c = rng.integers(4, 19, size=2)
                hole[r : r + 5, c : c + 5] = True
        out.append(hole)
    return out


def main() -> dict:
    import cv2
    from skimage.restoration import inpaint_biharmonic

    from nsn_cli.train import TrainOptions, train

    images, _ = bundled_digits()
    data = write_dataset(images[:3500], "mnist3500.h5")
    path = OUT / "generate-model.h5"
    train(data, path, TrainOptions(seed=0), force=True)
    model = NSNModel.load(path)

    samples = OUT / "samples.npy"
    with tempfile.TemporaryDirectory(prefix="nsn-numba-cache-") as cache:
        cold = sample_seconds(path, 50000, samples, {**os.environ, "NUMBA_CACHE_DIR": cache})
    sample_seconds(path, 1, samples)  # fills the project's own numba cache, if it was empty
    runs = [sample_seconds(path, 50000, samples) for _ in range(3)]
    startup = min(sample_seconds(path, 1, samples) for _ in range(3))
    gen_seconds = min(runs)
    samples.unlink()

    held = images[3500:]
    rng = np.random.default_rng(0)
    rows = []
    for kind in ("centre 10x10", "random 5x5 blocks"):
        holes = masks(kind, len(held), rng)
        scores = {"nsn": [], "biharmonic": [], "telea": [], "navier-stokes": []}
        started = time.perf_counter()
        for image, hole in zip(held, holes):
            filled = inpaint(model, image, hole, draws=8, rounds=1, seed=0)
            scores["nsn"].append(psnr(filled[hole], image[hole]))
        nsn_seconds = time.perf_counter() - started
        for image, hole in zip(held, holes):
            damaged = image[..., 0].copy()
            damaged[hole] = 0
            scores["biharmonic"].append(psnr(inpaint_biharmonic(damaged, hole)[hole], image[..., 0][hole]))
            u8 = np.rint(damaged * 255).astype(np.uint8)
            m8 = hole.astype(np.uint8)
            for name, flag in (("telea", cv2.INPAINT_TELEA), ("navier-stokes", cv2.INPAINT_NS)):
                out = cv2.inpaint(u8, m8, 3, flag).astype(np.float32) / 255
                scores[name].append(psnr(out[hole], image[..., 0][hole]))
        rows.append({"mask": kind, "nsn_seconds": nsn_seconds, **{k: float(np.mean(v)) for k, v in scores.items()}})
    result = {"seconds_50000_samples": gen_seconds, "seconds_50000_samples_runs": runs,
              "seconds_50000_samples_cold": cold, "seconds_1_sample": startup, "cpus": os.cpu_count(),
              "inpainting_hole_psnr_db": rows}
    (OUT / "generate.json").write_text(json.dumps(result, indent=2))
    print(f"nsn sample -n 50000 -o samples.npy, fresh process: {gen_seconds:.2f} s with numba's cache warm "
          f"(runs: {', '.join(f'{s:.2f}' for s in runs)}), {cold:.2f} s cold; -n 1: {startup:.2f} s")
    print(f"{'mask':20s} {'nsn':>6s} {'biharm':>7s} {'telea':>6s} {'NS':>6s}   (hole PSNR, dB; 500 held-out digits)")
    for r in rows:
        print(f"{r['mask']:20s} {r['nsn']:6.2f} {r['biharmonic']:7.2f} {r['telea']:6.2f} {r['navier-stokes']:6.2f}")
    return result


if __name__ == "__main__":
    main()
