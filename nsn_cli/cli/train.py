"""``nsn train``: layer-wise EM with a checkpoint per layer."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from nsn_cli import config
from nsn_cli.cli._common import app, console, console_err, parse_float_list, parse_int_list, progress_bar
from nsn_cli.train import TrainOptions, parse_memory, train, working_memory


class _ProgressReporter:
    """Draws one progress bar per layer (filters, created, changed and seconds per iteration;
    while --filters searches alpha, the iterations of the probe under way) and one per step
    after the layers (the top-layer statistics, the save, the pixel calibration); notes always
    print, even with -q."""

    def __init__(self, progress, quiet: bool, iterations: int):
        self.progress = progress
        self.quiet = quiet
        self.iterations = iterations
        self.tasks: dict[int, int] = {}
        self.probes: dict[int, int] = {}
        self.steps: dict[str, int] = {}

    def layer_start(self, layer, layers, patches, dims, resumed):
        if self.quiet:
            return
        if resumed:
            console_err.print(f"layer {layer}/{layers}: kept from the checkpoint (--resume)")
            return
        console_err.print(f"layer {layer}/{layers}: {patches:,} patches of {dims} dims")
        self._task(layer, self.iterations)  # on screen, its clock running, before the first iteration ends

    def _task(self, layer, total):
        if self.progress is None:
            return None
        if layer not in self.tasks:
            self.tasks[layer] = self.progress.add_task(f"layer {layer}", total=total)
        return self.tasks[layer]

    def iteration(self, layer, iteration, iterations, stats):
        task = self._task(layer, iterations)
        if task is not None:
            probe = f"alpha probe {self.probes[layer] + 1}: " if layer in self.probes else ""
            self.progress.update(task, total=iterations, completed=iteration + 1, status=(
                f"{probe}filters {stats.filters}  created {stats.created}  changed {stats.changed:,}  "
                f"{stats.seconds:.2f} s/it"))

    def pass_progress(self, layer, iteration, iterations, done, total, filters):
        task = self._task(layer, iterations)
        if task is not None:
            self.progress.update(task, completed=iteration + done / max(total, 1),
                                 status=f"pass {iteration + 1}: {done / max(total, 1):.0%}, filters {filters} so far")

    def probe(self, layer, alpha, count):
        self.probes[layer] = self.probes.get(layer, 0) + 1
        task = self._task(layer, None)
        if task is not None:
            self.progress.update(task, status=f"alpha probe {self.probes[layer]}: alpha {alpha:.3f} -> {count} filters")

    def step(self, name, done, total):
        if self.progress is None:
            return
        if name not in self.steps:
            self.steps[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.steps[name], total=total, completed=done)

    def note(self, text):
        console_err.print(f"[yellow]note:[/] {text}", highlight=False)

    def top_start(self, images):
        if not self.quiet:
            console_err.print(f"top-layer statistics of {images:,} images (for the mix, pca and knn priors)")

    def layer_done(self, layer, fitted):
        task = self._task(layer, len(fitted.history))
        if task is not None:
            self.progress.update(task, total=len(fitted.history), completed=len(fitted.history),
                                 status=f"{fitted.filters} filters, alpha {fitted.alpha:.3f}, {fitted.seconds:.1f} s")


@app.command("train")
def train_cli(
    data: Path = typer.Argument(..., help="An nsn data set (.h5) from nsn prep."),
    output: Path = typer.Option(Path("model.h5"), "-o", "--output", help="Model file (rewritten after every layer)."),
    arch: str | None = typer.Option(None, "--arch", help="mnist, lfw64 or 'PxP/S,...'. Default: by image size (28 -> mnist, 64 -> lfw64)."),
    alpha: str | None = typer.Option(None, "--alpha", help="Creation threshold per layer, e.g. -2.09,-2.04,-2.47."),
    filters: str | None = typer.Option(None, "--filters", help="Target filters per layer (alpha found by search), e.g. 96,130,131."),
    iterations: int = typer.Option(config.ITERATIONS, "--iterations", help="EM iterations per layer (stops early when stable)."),
    max_patches: int | None = typer.Option(None, "--max-patches", help="EM on a seeded random subsample of this many patches per layer."),
    max_filters: int = typer.Option(config.MAX_FILTERS, "--max-filters", help="Stop with an error when a layer grows past this."),
    reference_images: int = typer.Option(
        config.REFERENCE_IMAGES, "--reference-images",
        help="EM on more images than this runs as on this many (filters are started and kept at that scale), "
             "so filter counts do not grow with the data; 0: the paper's EM at any size."),
    activation: str = typer.Option("sigmoid", "--activation", help="Layer output: sigmoid (paper) or relative."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same model bits."),
    threads: int | None = typer.Option(None, "--threads", help="Numba threads (default: all cores)."),
    memory: str = typer.Option("2G", "--memory", help="Peak memory of this process, e.g. 512M, 2G (at least 352M): a layer whose patches do not fit is streamed from the data file in chunks."),
    workers: int | None = typer.Option(None, "--workers", help="Run streamed layers on a local Dask cluster of N processes (pip install 'nsn\\[dask]')."),
    dask: str | None = typer.Option(None, "--dask", help="Run streamed layers on the Dask scheduler at this address, e.g. tcp://host:8786."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last completed layer in the output."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train an NSN layer by layer with non-parametric hard EM."""
    budget = working_memory(parse_memory(memory))
    options = TrainOptions(
        arch=arch, alphas=parse_float_list(alpha, "--alpha"), targets=parse_int_list(filters, "--filters"),
        iterations=iterations, max_patches=max_patches, max_filters=max_filters, activation=activation, seed=seed,
        reference_images=reference_images,
    )
    with progress_bar(quiet or as_json) as progress:
        model = train(data, output, options, resume=resume, force=force, threads=threads,
                      reporter=_ProgressReporter(progress, quiet or as_json, iterations), memory=budget,
                      workers=workers, dask_address=dask, tune_malloc=True)
    rows = [
        {"layer": i, "patch": str(layer.shape), "filters": layer.filters,
         "alpha": round(layer.alpha, 4), "iterations": len(layer.history), "seconds": round(layer.seconds, 2)}
        for i, layer in enumerate(model.layers, 1)
    ]
    if as_json:
        print(json.dumps({"model": str(output), "layers": rows}, indent=2))
        return
    table = Table(title=f"trained {output}")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
