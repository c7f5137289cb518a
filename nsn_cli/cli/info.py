"""``nsn info``: summarise a data set or model file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from nsn_cli.cli._common import app, console
from nsn_cli.info import describe


@app.command("info")
def info_cli(
    path: Path = typer.Argument(..., help="An nsn data set or model file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show what a data set or model file holds."""
    summary = describe(path)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=f"{path} ({summary['encoding-type']} v{summary['encoding-version']})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key in ("layers", "history"):
            continue
        table.add_row(key, str(value))
    console.print(table)
    if "layers" in summary:
        layers = Table(title="layers")
        for col in ("layer", "patch", "stride", "in", "out", "filters", "alpha", "iterations", "seconds"):
            layers.add_column(col, justify="right")
        for layer in summary["layers"]:
            layers.add_row(*(str(layer[k]) for k in ("layer", "patch", "stride", "in", "out", "filters", "alpha", "iterations", "seconds")))
        console.print(layers)
        for layer in summary["layers"]:
            curve = layer.get("history")
            if not curve:
                continue
            hist = Table(title=f"layer {layer['layer']}: EM iterations")
            columns = [k for k in ("filters", "created", "dropped", "merged", "changed", "mean_sim", "seconds") if k in curve[0]]
            for col in ("iteration", *columns):
                hist.add_column(col, justify="right")
            for i, row in enumerate(curve, 1):
                hist.add_row(str(i), *(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in columns))
            console.print(hist)
