"""Scaling of ``nsn train`` with the data size, under a memory budget, locally and on Dask.

On the synthetic digits of ``make bench-scale`` (out/scale/digits-Kx.h5, K = 1, 4, 16 times
the 4,000 bundled digits, every copy shifted and deformed alike; bench/make_synthetic.py) it
runs the real CLI with default training settings, ``nsn train DATA --memory BUDGET --seed 0``
(10 EM iterations, the default reference scale), once with the local backend and once with
``--workers 2`` (a local Dask cluster of two worker processes), each in a fresh process, plus
one local run at the paper's size (60,000 images, K = 15), and reports per scale: the
filters per layer and how far apart the scales' counts are, wall seconds (process start to exit, so imports, Numba cache
loading and, for Dask, the cluster's start-up are included: that is what a user waits for),
seconds per 1,000 images, the Dask/local ratio, the train process's peak RSS (its own VmHWM,
printed by the child at exit) against the budget, and for Dask the driver's VmHWM and the
peak summed RSS of its child processes (the nannies and workers), polled every 0.2 s.
Also: patches and filters per layer (``nsn info --json`` of the model), the layer-2
working set the budget avoids holding (its patches, float32), and the machine's load average
around each run (the machine may be shared: a load above the core count inflates the times).
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import psutil
from common import OUT, ROOT  # noqa: E402

from nsn_cli.config import ITERATIONS
from nsn_cli.train import parse_memory

DATA = ROOT / "out" / "scale"
SCALES = (1, 4, 16)
#: The paper trained on all 60,000 MNIST digits: 15 copies of the 4,000.
PAPER_SCALE = 15
POLL_SECONDS = 0.2
MB = 1 << 20
# The child runs the CLI in-process as the nsn command does (configure_process, run), then
# prints its own peak RSS: VmHWM is exact (a poller can miss a short peak) and covers the
# train process alone, not the Dask processes it starts.
CHILD = (
    "import sys; from nsn_cli.cli import configure_process, run; configure_process(); code = run(sys.argv[1:]); "
    "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))); sys.exit(code)"
)


@dataclass
class TrainRun:
    """One ``nsn train`` process: wall seconds, its VmHWM, its children's peak summed RSS, and
    the seconds its layers' fits took (from the model: wall minus start-up, encoding, saving)."""

    seconds: float
    driver_mb: float
    children_mb: float
    children: int
    fit_seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0


class TreePoller(threading.Thread):
    """Polls the summed RSS of every descendant of ``pid`` and keeps the peak.

    A sum sampled at one instant, so its peak is at most the sum of the per-process peaks
    (those need not coincide); processes that exit between listing and reading are skipped.
    """

    def __init__(self, pid: int, interval: float = POLL_SECONDS) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.most = 0
        self.done = threading.Event()

    def sample(self) -> None:
        try:
            children = self.process.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)
        self.most = max(self.most, len(children))

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()


def data_path(scale: int) -> Path:
    return DATA / f"digits-{scale}x.h5"


def train_once(data: Path, model: Path, budget: str, iterations: int, workers: int | None) -> TrainRun:
    """Run ``nsn train`` in a fresh process; exit with its error if it fails."""
    argv = ["train", str(data), "-o", str(model), "--force", "-q", "--memory", budget, "--seed", "0"]
    if iterations != ITERATIONS:
        argv += ["--iterations", str(iterations)]
    if workers:
        argv += ["--workers", str(workers)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    poller = TreePoller(child.pid)
    poller.start()
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    poller.stop()
    if child.returncode != 0:
        raise SystemExit(f"nsn {' '.join(argv)} failed (exit {child.returncode}):\n{stderr.strip()}")
    match = re.search(r"^VmHWM:\s*(\d+)\s*kB", stdout, re.MULTILINE)
    if match is None:
        raise SystemExit(f"nsn {' '.join(argv)}: the child printed no VmHWM line:\n{stdout.strip()}")
    return TrainRun(seconds, int(match.group(1)) / 1024, poller.peak / MB, poller.most,
                    load_before=load_before, load_after=os.getloadavg()[0])


def model_info(model: Path) -> dict:
    """``nsn info --json`` of a model file."""
    done = subprocess.run([sys.executable, "-m", "nsn_cli", "info", "--json", str(model)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nsn info {model} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def layer_geometry(info: dict, images: int) -> list[dict]:
    """Patches, dimensions and in-memory patch bytes of every layer, from ``nsn info``'s
    ``patch`` ("3x3"), ``in`` ("13x13x96") and ``out`` ("6x6x130") strings: one patch per
    output position of every image (no --max-patches here)."""
    rows = []
    for layer in info["layers"]:
        patch = int(layer["patch"].split("x")[0])
        in_channels = int(layer["in"].split("x")[2])
        out_h, out_w, filters = (int(v) for v in layer["out"].split("x"))
        patches = images * out_h * out_w
        dims = patch * patch * in_channels
        rows.append({"layer": layer["layer"], "patches": patches, "dims": dims, "filters": filters,
                     "patch_bytes": 4 * patches * dims, "seconds": layer["seconds"]})
    return rows


def measure(scale: int, budget: str, iterations: int, workers: int, folder: Path) -> dict:
    data = data_path(scale)
    with h5py.File(data, "r") as handle:
        images = int(handle["images"].shape[0])
    model = folder / f"m{scale}.h5"
    local = train_once(data, model, budget, iterations, None)
    layers = layer_geometry(model_info(model), images)
    local.fit_seconds = sum(layer["seconds"] for layer in layers)
    row: dict = {
        "scale": scale, "images": images, "layers": layers,
        "filters": [layer["filters"] for layer in layers],
        "layer1_patches": layers[0]["patches"],
        # the largest array a budget-less run would hold: layer 2's patches (N * 36 * 9 * K1 * 4
        # bytes for the mnist architecture), the thing --memory exists to stream instead
        "layer2_patch_bytes": layers[1]["patch_bytes"] if len(layers) > 1 else layers[0]["patch_bytes"],
        "local": asdict(local),
        "local_s_per_1k_images": local.seconds / images * 1000,
    }
    row["paper_size"] = scale == PAPER_SCALE
    if workers:
        dask = train_once(data, folder / f"m{scale}-dask.h5", budget, iterations, workers)
        dask_layers = layer_geometry(model_info(folder / f"m{scale}-dask.h5"), images)
        dask.fit_seconds = sum(layer["seconds"] for layer in dask_layers)
        row["dask"] = asdict(dask)
        row["dask_s_per_1k_images"] = dask.seconds / images * 1000
        row["dask_over_local"] = dask.seconds / local.seconds
        # Dask promises the local streamed run's model bits; other filter counts would say it broke that
        row["dask_filters"] = [layer["filters"] for layer in dask_layers]
        row["dask_layer_seconds"] = [layer["seconds"] for layer in dask_layers]
    return row


def growth_exponent(rows: list[dict], key: str, field: str = "seconds") -> float | None:
    """``b`` in ``rows[i][key][field] ~ images**b`` between the smallest and the largest scale
    (1 = linear). Wall seconds carry a fixed start-up, so their ``b`` is below the fits' at
    small N."""
    if len(rows) < 2 or min(rows[0][key][field], rows[-1][key][field]) <= 0:
        return None
    first, last = rows[0], rows[-1]
    return math.log(last[key][field] / first[key][field]) / math.log(last["images"] / first["images"])


def filter_spread(rows: list[dict]) -> list[float] | None:
    """Per layer, the largest filter count over the smallest across the rows (1 = the same)."""
    if len(rows) < 2:
        return None
    return [max(r["filters"][i] for r in rows) / max(1, min(r["filters"][i] for r in rows))
            for i in range(len(rows[0]["filters"]))]


def print_table(result: dict) -> None:
    budget_mb = result["budget_bytes"] / MB
    dask = result["workers"] > 0
    print(f"nsn train --memory {result['budget']} --seed 0 ({result['iterations']} EM iterations)"
          + (f"; Dask: --workers {result['workers']}" if dask else "") + f"; {result['cpus']} CPUs")
    head = (f"{'scale':>5s} {'images':>7s} {'L1 patches':>11s} {'filters':>11s} {'L2 patches':>10s} "
            f"{'s local':>7s} {'fit s':>6s} {'s/1k img':>8s} {'RSS MB':>6s} {'budget':>6s} {'load':>9s}")
    if dask:
        head += f" {'s dask':>6s} {'fit s':>6s} {'dask/loc':>8s} {'driver MB':>9s} {'workers MB':>10s}"
    print(head)
    for r in result["rows"]:
        local = r["local"]
        line = (f"{r['scale']:4d}x {r['images']:7d} {r['layer1_patches']:11,d} {','.join(map(str, r['filters'])):>11s} "
                f"{r['layer2_patch_bytes'] / MB:7.0f} MB {local['seconds']:7.1f} {local['fit_seconds']:6.1f} "
                f"{r['local_s_per_1k_images']:8.2f} {local['driver_mb']:6.0f} "
                f"{'under' if local['driver_mb'] <= budget_mb else 'OVER':>6s} "
                f"{local['load_before']:4.1f}/{local['load_after']:4.1f}")
        if dask and "dask" in r:
            d = r["dask"]
            line += (f" {d['seconds']:6.1f} {d['fit_seconds']:6.1f} {r['dask_over_local']:8.2f} "
                     f"{d['driver_mb']:9.0f} {d['children_mb']:10.0f}")
        print(line + ("  (the paper's size)" if r.get("paper_size") else ""))
        if "dask" in r and r["dask_filters"] != r["filters"]:
            print(f"      warning: the Dask run grew other filters ({','.join(map(str, r['dask_filters']))})")
    spread = result.get("filter_spread")
    if spread:
        print("filters, largest over smallest count across the scales, per layer: "
              + ", ".join(f"{v:.2f}" for v in spread) + " (the aim: at most 1.5)")
    rows = [r for r in result["rows"] if not r.get("paper_size")]
    for key in ("local", "dask"):
        wall, fit = result.get(f"{key}_time_exponent"), result.get(f"{key}_fit_exponent")
        if wall is not None and fit is not None:
            print(f"{key}: wall s ~ images^{wall:.2f}, fit s ~ images^{fit:.2f} from {rows[0]['images']:,} to "
                  f"{rows[-1]['images']:,} images (1.00 = linear)")
    print(f"RSS MB: VmHWM of the train process, against the budget {result['budget']} = {budget_mb:.0f} MB; "
          "workers MB: peak summed RSS of its child processes (Dask workers, resource tracker); "
          "fit s: the layers' fit seconds from the model; L2 patches: what layer 2 would hold in memory; "
          f"load: the 1-minute load average before/after the local run (over {result['cpus']}: a shared, busy "
          "machine, times inflated)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="352M", help="nsn train --memory (default 352M, the smallest)")
    parser.add_argument("--scales", default=",".join(map(str, SCALES)),
                        help="comma-separated multiples of the bundled digits (default 1,4,16)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help=f"EM iterations per layer (default {ITERATIONS}, nsn train's)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (0: skip the Dask runs)")
    parser.add_argument("--paper-size", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also a local run at the paper's size ({PAPER_SCALE} x 4,000 = 60,000 images)")
    args = parser.parse_args(argv)
    try:
        scales = sorted({int(s) for s in args.scales.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--scales: expected numbers such as 1,4,16, got {args.scales!r}") from None
    budget_bytes = parse_memory(args.budget)
    paper = [PAPER_SCALE] if args.paper_size and PAPER_SCALE not in scales else []
    missing = [data_path(s) for s in scales + paper if not data_path(s).exists()]
    if missing:
        names = " ".join(str(p.relative_to(ROOT)) for p in missing)
        raise SystemExit(f"missing {names}: run make bench-scale (for other scales: make {names})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nsn-bench-scale-") as folder:
        for scale in scales + paper:
            print(f"scale {scale}x ...", file=sys.stderr, flush=True)
            rows.append(measure(scale, args.budget, args.iterations, 0 if scale in paper else args.workers,
                                Path(folder)))
    scaled = [r for r in rows if not r.get("paper_size")]
    result = {
        "budget": args.budget, "budget_bytes": budget_bytes, "iterations": args.iterations,
        "workers": args.workers, "cpus": psutil.cpu_count(), "rows": rows,
        "filter_spread": filter_spread(rows),
        "local_time_exponent": growth_exponent(scaled, "local"),
        "local_fit_exponent": growth_exponent(scaled, "local", "fit_seconds"),
        "dask_time_exponent": growth_exponent(scaled, "dask") if args.workers else None,
        "dask_fit_exponent": growth_exponent(scaled, "dask", "fit_seconds") if args.workers else None,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    return result


if __name__ == "__main__":
    main()
