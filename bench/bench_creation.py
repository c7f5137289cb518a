"""The creation pass, serial kernel against the parallel one (optimistic concurrency control).

A first EM pass of a layer sends every patch to the creation pass (one filter exists), the
heaviest pass there is. On the default model trained on the bundled digits it times
``creation_pass(..., parallel=False)`` and ``parallel=True`` (best of 3 each, the same
process, default threads, numba's kernels compiled beforehand) on:

- layer 2's first pass on the 4,000 digits (144,000 patches of 891 values, share 1);
- layer 3's first pass on the 16x synthetic digits of ``make bench-scale`` if present
  (64,000 patches; share 1, the paper's EM, and 1/16, the default at that size);

and checks the two give the same labels and filters. Writes bench/results/creation.json.
"""

from __future__ import annotations

import json
import time

import numpy as np
from common import OUT, ROOT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.engine.em import creation_pass, reference_scale, sigma_new
from nsn_cli.engine.patches import extract_patches
from nsn_cli.files import load_images
from nsn_cli.model import NSNModel
from nsn_cli.train import TrainOptions, train

SYNTHETIC = ROOT / "out" / "scale" / "digits-16x.h5"
REPEATS = 3


def best_of(fn, repeats: int = REPEATS) -> tuple[float, tuple]:
    """Smallest wall time of ``repeats`` calls, and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def first_pass(model: NSNModel, images: np.ndarray, layer: int) -> np.ndarray:
    """Layer ``layer``'s patches of ``images`` in a seeded random order (its first pass's candidates)."""
    maps = images
    for level in range(1, layer):
        maps = model.encode_layer(maps, level)
    shape = model.arch[layer - 1]
    patches = extract_patches(maps, shape.patch, shape.stride)
    return patches[np.random.default_rng(layer).permutation(patches.shape[0])]


def measure(name: str, candidates: np.ndarray, alpha: float, share: float) -> dict:
    may_start = None if share >= 1 else np.random.default_rng(0).random(candidates.shape[0]) < share
    radius = sigma_new(alpha)
    serial_s, serial = best_of(lambda: creation_pass(candidates, radius, may_start=may_start, parallel=False))
    parallel_s, parallel = best_of(lambda: creation_pass(candidates, radius, may_start=may_start, parallel=True))
    same = bool(np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1]))
    return {"case": name, "candidates": int(candidates.shape[0]), "dims": int(candidates.shape[1]),
            "share": share, "filters": int(serial[1].size), "serial_s": serial_s, "parallel_s": parallel_s,
            "serial_over_parallel": serial_s / parallel_s, "same_bits": same}


def main() -> dict:
    images, _ = bundled_digits()
    path = OUT / "creation-model.h5"
    train(write_dataset(images, "mnist4000.h5"), path, TrainOptions(seed=0), force=True)
    model = NSNModel.load(path)
    creation_pass(np.zeros((4, 3), np.float32), 1.0, parallel=True)  # compile both paths
    creation_pass(np.zeros((4, 3), np.float32), 1.0, parallel=False)
    rows = [measure("layer 2, 4,000 digits", first_pass(model, images, 2), model.layers[1].alpha, 1.0)]
    if SYNTHETIC.exists():
        big, _, _ = load_images(SYNTHETIC)
        top = first_pass(model, big, 3)
        share = reference_scale(4000, top.shape[0], 1)
        for name, s in (("layer 3, 64,000 digits, paper's EM", 1.0), ("layer 3, 64,000 digits, default", share)):
            rows.append(measure(name, top, model.layers[2].alpha, s))
    else:
        print(f"({SYNTHETIC.relative_to(ROOT)} missing: make bench-scale builds it; layer 3 cases skipped)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "creation.json").write_text(json.dumps(rows, indent=2))
    print(f"{'case':38s} {'candidates':>10s} {'dims':>5s} {'share':>6s} {'filters':>7s} "
          f"{'serial s':>8s} {'parallel s':>10s} {'ratio':>6s} same bits")
    for r in rows:
        print(f"{r['case']:38s} {r['candidates']:10,d} {r['dims']:5d} {r['share']:6.3f} {r['filters']:7d} "
              f"{r['serial_s']:8.2f} {r['parallel_s']:10.2f} {r['serial_over_parallel']:6.2f} {r['same_bits']}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
