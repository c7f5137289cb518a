"""Training speed on the bundled 4,000 digits, against peers measured in the same run.

Per MNIST layer: seconds per EM iteration of nsn and of scikit-learn's
``KMeans(algorithm="lloyd")`` on the same patches with the same number of clusters (ratio
<= 1 means nsn is at least as fast); GFLOP/s of nsn's E-step matrix product against a numpy
float32 matrix product of the same machine; the whole 3-layer train; peak RSS. Writes
bench/results/train.json.
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np
from common import OUT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.engine.em import em_step, sigma_new
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import row_norms
from nsn_cli.train import TrainOptions, train


def matmul_peak(n: int = 2048) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def time_nsn_iterations(patches, mu, sigma, alpha, repeats=3) -> float:
    """Median seconds of one EM iteration as fit_layer runs it (row norms kept across steps)."""
    rng = np.random.default_rng(0)
    norms = row_norms(patches)
    kwargs = dict(alpha=alpha, sigma_floor=sigma_new(alpha) / 32, rng=rng, norms=norms)
    em_step(patches, mu, sigma, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        em_step(patches, mu, sigma, **kwargs)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_kmeans_iteration(patches, mu, iterations=5) -> float:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=mu.shape[0], init=mu, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd")
    t = time.perf_counter()
    km.fit(patches)
    return (time.perf_counter() - t) / max(km.n_iter_, 1)


def main() -> dict:

    images, _ = bundled_digits()
    data = write_dataset(images, "mnist4k.h5")
    started = time.perf_counter()
    model = train(data, OUT / "bench-model.h5", TrainOptions(seed=0), force=True)
    total = time.perf_counter() - started
    peak = matmul_peak()
    rows = []
    maps = images
    for index, layer in enumerate(model.layers, 1):
        patches = extract_patches(maps, layer.shape.patch, layer.shape.stride)
        mu, sigma = layer.flat_mu, layer.sigma
        nsn = time_nsn_iterations(patches, mu, sigma, layer.alpha)
        km = time_kmeans_iteration(patches, mu)
        flops = 2.0 * patches.shape[0] * patches.shape[1] * mu.shape[0]
        rows.append({
            "layer": index, "patches": int(patches.shape[0]), "dims": int(patches.shape[1]),
            "filters": int(mu.shape[0]), "nsn_s_per_iter": nsn, "kmeans_s_per_iter": km,
            "ratio": nsn / km, "gflops": flops / nsn / 1e9, "fraction_of_peak": flops / nsn / 1e9 / peak,
        })
        if index < len(model.layers):
            maps = model.encode_layer(maps, index)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"train_seconds": total, "matmul_peak_gflops": peak, "peak_rss_mb": rss, "layers": rows}
    (OUT / "train.json").write_text(json.dumps(result, indent=2))
    print(f"3-layer MNIST-4k train: {total:.1f} s; numpy float32 matmul peak {peak:.1f} GFLOP/s; peak RSS {rss:.0f} MB")
    print(f"{'layer':>5s} {'patches':>8s} {'dims':>5s} {'K':>4s} {'nsn s/it':>9s} {'kmeans s/it':>11s} {'ratio':>6s} {'GFLOP/s':>8s} {'of peak':>7s}")
    for r in rows:
        print(f"{r['layer']:5d} {r['patches']:8d} {r['dims']:5d} {r['filters']:4d} {r['nsn_s_per_iter']:9.3f} "
              f"{r['kmeans_s_per_iter']:11.3f} {r['ratio']:6.2f} {r['gflops']:8.1f} {r['fraction_of_peak']:7.1%}")
    return result


if __name__ == "__main__":
    main()
