"""Training speed on the bundled 4,000 digits, against scikit-learn's KMeans in the same run.

- The whole ``nsn train`` as a new user runs it: the CLI in a fresh process with default
  thread settings, numba's cache warm (the best of ``--repeats`` runs); a first run on an
  empty numba cache (``NUMBA_CACHE_DIR`` set to a new folder) is reported apart as "cold".
  Against it: the sum of ``KMeans(algorithm="lloyd")`` fits of 10 iterations on each layer's
  patches with that layer's filter count (the best of ``--repeats`` fits per layer).
- Per layer: seconds per EM iteration of nsn (``em_step`` as ``fit_layer`` runs it, five in a
  row from the trained filters) and per Lloyd iteration of KMeans (a fit of five iterations
  from the same filters) on the same patches and cluster count,
  measured in turns (nsn, KMeans, nsn, ...) and taking each one's best, so load from other
  processes on the machine costs both alike, with a pause of ``SETTLE`` seconds before each
  (see there); GFLOP/s of nsn's E-step product against numpy's
  float32 matrix product (all cores) measured in the same run.
Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import OUT, ROOT, bundled_digits, write_dataset  # noqa: E402

from nsn_cli.engine.em import em_step, sigma_new
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import best_filter, row_norms
from nsn_cli.model import NSNModel

KMEANS_ITERATIONS = 10
#: Seconds of quiet before each timed iteration. OpenMP's idle threads (scikit-learn's and
#: numba's) spin for a while after their last parallel loop, taking cores from whatever runs
#: next: nsn's layer-3 iteration measured 35-38 ms right after a KMeans fit, 31 ms after a
#: pause; KMeans right after nsn, 39-49 ms against 38 ms.
SETTLE = 0.5


def settle() -> None:
    """Let the other library's idle threads stop spinning before a measurement."""
    time.sleep(SETTLE)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of numpy's float32 (n, n) product with its default threads (the best of repeats)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def nsn_train_seconds(data, model, env=None) -> float:
    """Wall seconds of ``nsn train DATA -o MODEL`` in a fresh process (start to exit)."""
    argv = [sys.executable, "-m", "nsn_cli", "train", str(data), "-o", str(model), "--force", "-q", "--seed", "0"]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nsn train failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return seconds


#: Iterations per timed run, nsn's and KMeans's alike: both run them back to back from the
#: same filters after the same pause, so the first one's cold caches weigh the same in both.
ITERATIONS_TIMED = 5


def nsn_iterations(patches, mu, sigma, alpha, norms, labels) -> float:
    """Seconds per EM iteration of ITERATIONS_TIMED run as fit_layer runs them (each step from
    the last one's filters and labels, row norms kept across steps)."""
    rng = np.random.default_rng(0)
    settle()
    t = time.perf_counter()
    for _ in range(ITERATIONS_TIMED):
        mu, sigma, _, labels, _ = em_step(patches, mu, sigma, alpha=alpha, sigma_floor=sigma_new(alpha) / 32,
                                          rng=rng, norms=norms, previous_labels=labels)
    return (time.perf_counter() - t) / ITERATIONS_TIMED


def kmeans_fit(patches, k: int, iterations: int, init) -> tuple[float, int]:
    """Seconds of a Lloyd KMeans fit from ``init`` and the iterations it ran."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd")
    settle()
    t = time.perf_counter()
    km.fit(patches)
    return time.perf_counter() - t, int(km.n_iter_)


def layer_patches(model: NSNModel, images: np.ndarray) -> list[np.ndarray]:
    out, maps = [], images
    for index, layer in enumerate(model.layers, 1):
        out.append(extract_patches(maps, layer.shape.patch, layer.shape.stride))
        if index < len(model.layers):
            maps = model.encode_layer(maps, index)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best counts (default 3)")
    args = parser.parse_args(argv)

    images, _ = bundled_digits()
    data = write_dataset(images, "mnist4k.h5")
    model_path = OUT / "bench-model.h5"
    with tempfile.TemporaryDirectory(prefix="nsn-numba-cache-") as cache:
        cold = nsn_train_seconds(data, model_path, {**os.environ, "NUMBA_CACHE_DIR": cache})
    nsn_train_seconds(data, model_path)  # fills the project's own numba cache, if it was empty
    model = NSNModel.load(model_path)
    patches = layer_patches(model, images)
    rng = np.random.default_rng(0)
    inits = [p[np.sort(rng.choice(len(p), layer.filters, replace=False))] for p, layer in zip(patches, model.layers)]
    warm, kmeans = [], [[] for _ in patches]
    for _ in range(args.repeats):  # in turns, so load from other processes costs both alike
        warm.append(nsn_train_seconds(data, model_path))
        for index, (p, layer) in enumerate(zip(patches, model.layers)):
            kmeans[index].append(kmeans_fit(p, layer.filters, KMEANS_ITERATIONS, inits[index]))
    kmeans_fits = [min(runs)[0] for runs in kmeans]
    kmeans_iterations = [min(runs)[1] for runs in kmeans]
    # a fit that converged early ran fewer iterations: count it at 10 iterations' time
    kmeans_10 = sum(s / n * KMEANS_ITERATIONS for s, n in zip(kmeans_fits, kmeans_iterations))

    peak = matmul_peak()
    rows = []
    for index, (p, layer) in enumerate(zip(patches, model.layers), 1):
        mu, sigma = layer.flat_mu, layer.sigma
        norms = row_norms(p)
        labels, _ = best_filter(p, mu, sigma, norms)
        nsn_iterations(p, mu, sigma, layer.alpha, norms, labels)  # warm-up
        kmeans_fit(p, layer.filters, 2, mu)
        nsn_runs, km_runs = [], []
        for _ in range(max(3, args.repeats)):
            nsn_runs.append(nsn_iterations(p, mu, sigma, layer.alpha, norms, labels))
            seconds, iterations = kmeans_fit(p, layer.filters, ITERATIONS_TIMED, mu)
            km_runs.append(seconds / max(iterations, 1))
        nsn, km = min(nsn_runs), min(km_runs)
        flops = 2.0 * p.shape[0] * p.shape[1] * layer.filters
        rows.append({
            "layer": index, "patches": int(p.shape[0]), "dims": int(p.shape[1]), "filters": layer.filters,
            "nsn_s_per_iter": nsn, "kmeans_s_per_iter": km, "ratio": nsn / km,
            "gflops": flops / nsn / 1e9, "fraction_of_peak": flops / nsn / 1e9 / peak,
        })
    result = {
        "train_seconds_warm": min(warm), "train_seconds_warm_runs": warm, "train_seconds_cold": cold,
        "kmeans_10_iterations_seconds": kmeans_10, "kmeans_fit_seconds": kmeans_fits,
        "kmeans_iterations_run": kmeans_iterations, "train_over_kmeans": min(warm) / kmeans_10,
        "matmul_peak_gflops": peak, "cpus": os.cpu_count(), "layers": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train.json").write_text(json.dumps(result, indent=2))
    print(f"whole 'nsn train' on 4,000 digits, fresh process: {min(warm):.1f} s with numba's cache warm "
          f"(runs: {', '.join(f'{s:.1f}' for s in warm)}), {cold:.1f} s cold")
    print(f"KMeans, 10 Lloyd iterations on each layer's patches and filter count: {kmeans_10:.1f} s "
          f"({' + '.join(f'{s:.2f}' for s in kmeans_fits)}); train / KMeans = {min(warm) / kmeans_10:.2f}")
    print(f"numpy float32 matmul peak {peak:.1f} GFLOP/s; {os.cpu_count()} CPUs")
    print(f"{'layer':>5s} {'patches':>8s} {'dims':>5s} {'K':>4s} {'nsn s/it':>9s} {'kmeans s/it':>11s} {'ratio':>6s} "
          f"{'GFLOP/s':>8s} {'of peak':>7s}")
    for r in rows:
        print(f"{r['layer']:5d} {r['patches']:8d} {r['dims']:5d} {r['filters']:4d} {r['nsn_s_per_iter']:9.3f} "
              f"{r['kmeans_s_per_iter']:11.3f} {r['ratio']:6.2f} {r['gflops']:8.1f} {r['fraction_of_peak']:7.1%}")
    return result


if __name__ == "__main__":
    main()
