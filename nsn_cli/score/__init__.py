"""``nsn score``: sample quality against a reference data set, and an NSN's patch likelihood.

Inputs must have the reference's size and channels; ``--resize`` brings other sizes to it as
``nsn prep`` does and says so. All metrics work on pixels in [0, 1] (a ZCA-whitened reference
is de-whitened first). The judge (:mod:`nsn_cli.judge`, a small CNN) is trained on the
reference's labels, or is the seeded random network when it has none; ``score`` says which.

Sample sets are read (or sampled from a model) in chunks of 1,024 images and never held whole,
so memory does not grow with ``-n``: each metric keeps running sums or a fixed-size subset of
rows picked before reading (:mod:`nsn_cli.score.plugins` defines every metric).
"""

from __future__ import annotations

import math
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nsn_cli import config, interrupts
from nsn_cli.errors import NsnError, ParameterError
from nsn_cli.readers import ImageSource
from nsn_cli.score import plugins as _plugins
from nsn_cli.score.inputs import (
    CHUNK,
    Matcher,
    Reference,
    SampleSet,
    Tracker,
    check_input,
    dataset_pixels,
    load_reference,
    load_train,
    no_progress,
    open_input,
    read_input,
)
from nsn_cli.score.judges import cache_dir, reference_judge
from nsn_cli.score.plugins import (
    METRICS,
    PARZEN_SIGMAS,
    REGISTRY,
    SUBSET_MAX,
    Chunk,
    Column,
    Context,
    Metric,
    RowPicker,
    Skip,
    patch_nll,
    pick_rows,
)

__all__ = [
    "CHUNK", "METRICS", "PARZEN_SIGMAS", "SUBSET_MAX", "Matcher", "Reference", "SampleSet", "ScoreOptions",
    "ScoreReport", "Scorer", "check_input", "dataset_pixels", "load_reference", "open_input", "parse_metrics",
    "patch_nll", "pick_rows", "read_input", "reference_judge", "score",
]


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"is,fid"`` -> ``("is", "fid")`` in canonical order; unknown names are refused."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ParameterError("metrics", f"{{name}}: unknown metric '{unknown[0]}'; choose from {', '.join(METRICS)}")
    if not names:
        raise ParameterError("metrics", f"{{name}}: name at least one of {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in names)


@dataclass
class Scorer:
    """The reference-side work done once (judge, its features, each metric's preparation),
    then :meth:`score` for each sample set."""

    reference: Reference
    metrics: tuple[str, ...] = METRICS
    train: np.ndarray | None = None
    seed: int = 0
    cache: Path | None = None
    tracker: Tracker = no_progress
    notes: list[str] = field(default_factory=list)
    judge_cached: bool = field(default=False, init=False)
    plugins: list[Metric] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.judge, self.judge_cached = reference_judge(self.reference, self.cache, self._judge_progress())
        features, probabilities = self.judge.both(self.reference.images)
        self.context = Context(self.reference, self.judge, features, probabilities, train=self.train,
                               seed=self.seed, tracker=self.tracker, notes=self.notes)
        for name in self.metrics:
            try:
                self.plugins.append(REGISTRY[name](self.context))
            except Skip as skip:
                self.context.note(str(skip))
        if not self.plugins:
            raise NsnError(f"{self.reference.name}: none of the metrics asked for can run ({'; '.join(self.notes)})")
        self.context.note(f"features: {self.judge.describe()}{'; cached' if self.judge_cached else ''}")

    def _judge_progress(self):
        """The judge's epoch progress; its task appears only when a judge is really trained."""
        from nsn_cli.judge import EPOCHS

        task: list = []

        def advance(n: int, status: str = "") -> None:
            if not task:
                task.append(self.tracker("training the judge", EPOCHS))
            task[0](n, status=status)

        return advance

    @property
    def columns(self) -> list[Column]:
        return [column for plugin in self.plugins for column in plugin.columns]

    def score(self, samples: SampleSet) -> dict[str, float]:
        """Every metric of one sample set, under its JSON names; the set is fed once."""
        tallies = [plugin.start(samples) for plugin in self.plugins]
        subset = None
        if any(plugin.uses_subset for plugin in self.plugins):
            subset = RowPicker(pick_rows(samples.count, _plugins.SUBSET_MAX, self.seed))
        seen = 0

        def add(images: np.ndarray) -> None:
            nonlocal seen
            interrupts.check()  # a Ctrl-C held while numba loaded its kernels (see nsn_cli.interrupts)
            if not np.isfinite(images).all():
                raise NsnError(f"{samples.name}: the images contain NaN or infinite values")
            chunk = Chunk(images, seen, self.judge)
            for tally in tallies:
                tally.add(chunk)
            if subset is not None:
                subset.take(seen, images)
            seen += len(images)

        samples.feed(add)
        if seen != samples.count:
            raise RuntimeError(f"{samples.name}: fed {seen} of {samples.count} images")
        row: dict[str, float] = {}
        for tally in tallies:
            row.update(tally.result(subset.values if subset is not None else None))
        return row


@dataclass
class ScoreOptions:
    """What ``nsn score`` computes: metric names, samples per model (and cap on other inputs),
    the seed of every random choice, the generator's training set, the judge cache, and
    whether other sizes and channels are resized to the reference's."""

    metrics: tuple[str, ...] = METRICS
    n: int = config.SCORE_SAMPLES
    seed: int = 0
    train: str | os.PathLike | None = None
    cache: Path | None = None  # None: cache_dir()
    resize: bool = False


@dataclass
class ScoreReport:
    """One row per input (its path, kind, image count and metrics), the table's columns,
    notes, and what the judge was."""

    reference: str
    reference_images: int
    metrics: tuple[str, ...]
    rows: list[dict]
    columns: list[Column]
    notes: list[str]
    judge: str = ""
    judge_kind: str = ""
    judge_accuracy: float | None = None
    judge_cached: bool = False

    def to_json(self, options: ScoreOptions) -> dict:
        """Plain numbers (NaN as null) with torch-fidelity-like names."""

        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        return {
            "reference": self.reference, "reference_images": self.reference_images,
            "metrics": list(self.metrics), "n": options.n, "seed": options.seed,
            "judge": self.judge_kind, "judge_accuracy": self.judge_accuracy,
            "results": [{k: clean(v) for k, v in row.items()} for row in self.rows],
            "notes": self.notes,
        }


def comparability_notes(rows: list[dict], plugins: Sequence[Metric]) -> list[str]:
    """Notes for metrics biased by the sample count when the rows' counts differ."""
    notes = []
    for plugin in plugins:
        key = plugin.sample_count_key
        counts = sorted({row[key] for row in rows if key in row})
        if len(counts) > 1:
            shown = " and ".join(f"{c:,}" for c in counts)
            notes.append(f"{plugin.columns[0].header.replace(chr(10), ' ')} depends on the number of samples and the "
                         f"rows have {shown}: compare rows of equal counts"
                         + (" (or KID, which is unbiased)" if plugin.name == "fid" else ""))
    return notes


def score(
    inputs: Sequence[str | os.PathLike],
    reference_path: str | os.PathLike,
    options: ScoreOptions | None = None,
    tracker: Tracker = no_progress,
) -> ScoreReport:
    """Score every input against the reference. Cheap checks on every input come first, so a
    bad one fails before any model is sampled or judge trained."""
    options = options or ScoreOptions()
    if options.n < 1:
        raise ParameterError("n", f"must be at least 1, got {options.n}", flag="-n")
    if not inputs:
        raise NsnError("score: give at least one samples input (model, .npz/.npy/.h5, or folder)")
    reference = load_reference(reference_path)
    matcher = Matcher(reference, options.resize)
    notes: list[str] = []
    opened = [(str(path), open_input(path)) for path in inputs]
    for name, item in opened:
        note = check_input(item, matcher, name, options.n)
        if note is not None:
            notes.append(note)
        if isinstance(item, ImageSource):
            notes.extend(item.notes)
    train = load_train(options.train, matcher) if options.train is not None and "memo" in options.metrics else None
    cache = options.cache if options.cache is not None else cache_dir()
    scorer = Scorer(reference, options.metrics, train=train, seed=options.seed, cache=cache, tracker=tracker,
                    notes=notes)
    rows = []
    for name, item in opened:
        samples = read_input(item, matcher, name, options.n, options.seed, tracker)
        kind = "model" if samples.model is not None else "images"
        rows.append({"input": name, "kind": kind, "images": samples.count, **scorer.score(samples)})
    return ScoreReport(
        reference=str(reference_path), reference_images=len(reference.images),
        metrics=tuple(plugin.name for plugin in scorer.plugins), rows=rows, columns=scorer.columns,
        notes=scorer.notes + comparability_notes(rows, scorer.plugins), judge=scorer.judge.describe(),
        judge_kind=scorer.judge.kind, judge_accuracy=scorer.judge.accuracy, judge_cached=scorer.judge_cached,
    )


class _CallableModule(types.ModuleType):
    """``from nsn_cli import score`` finds this package once it is imported (Python binds a
    subpackage to its parent's attribute of that name), so calling it is
    :func:`nsn_cli.api.score`, the library's scoring function."""

    def __call__(self, *args, **kwargs):
        from nsn_cli.api import score as score_samples

        return score_samples(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
