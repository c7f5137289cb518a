"""Summaries of nsn files for ``nsn info`` (plain dicts, so ``--json`` is free)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nsn_cli.files import DATASET_TYPE, file_kind, open_dataset


def describe(path: str | os.PathLike) -> dict:
    """A summary of a data set or model file, by its ``encoding-type``."""
    kind = file_kind(path)
    if kind == DATASET_TYPE:
        return describe_dataset(path)
    from nsn_cli.model import describe_model

    return describe_model(path)


def describe_dataset(path: str | os.PathLike) -> dict:
    """Shape, labels, ZCA and pixel statistics of a data set (read in chunks)."""
    with open_dataset(path) as dataset:
        n, h, w, c = dataset.shape
        lo, hi, total = np.inf, -np.inf, 0.0
        step = 4096
        for start in range(0, n, step):
            block = dataset.read(slice(start, start + step))
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            total += float(block.sum(dtype=np.float64))
        summary = {
            "encoding-type": dataset.attrs.get("encoding-type"),
            "encoding-version": dataset.attrs.get("encoding-version"),
            "nsn-version": dataset.attrs.get("nsn-version"),
            "created": dataset.attrs.get("created"),
            "source": dataset.attrs.get("source"),
            "file": str(Path(path)),
            "images": n,
            "height": h,
            "width": w,
            "channels": c,
            "shape": f"{n} x {h} x {w} x {c}",
            "pixel range": f"[{lo:.4g}, {hi:.4g}], mean {total / (n * h * w * c):.4g}",
            "labels": "none",
            "zca": "none" if dataset.zca is None else f"channel-wise, eps {dataset.zca.eps:g}",
        }
        if dataset.labels is not None:
            classes, counts = np.unique(dataset.labels, return_counts=True)
            summary["labels"] = f"{len(classes)} classes, {counts.min()}..{counts.max()} per class"
    return summary
