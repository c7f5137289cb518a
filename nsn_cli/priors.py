"""The priors of ``nsn sample --prior``: one table, one entry per prior (section 6.3 and SPEC
"Top-layer density").

A prior draws the maps NSN-Gen starts decoding from, for samples ``first .. first + count - 1``
of a seed (each from its own random streams, :mod:`nsn_cli.streams`, so a sample's bits do
not depend on the batch it is drawn in). Two kinds:

- top-vector priors draw ``F[k]`` (count, 1, 1, N_k) for the start layer ``k``;
- density priors (``density=True``) draw ``F[L-1]`` from the top statistics stored at
  training time (:mod:`nsn_cli.top`), so they need them and start at the top layer of a
  complete model.

Adding a prior: write its draw function here, add a :class:`Prior` to :data:`PRIORS`, and
test it; the CLI's ``--prior`` help, the validation and the sampler follow from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit, prange

from nsn_cli import streams
from nsn_cli.config import JIT_PARALLEL
from nsn_cli.engine.decode import normal_draws, uniform_draws
from nsn_cli.errors import NsnError, ParameterError

#: ``mix`` and ``knn`` weigh their two members ``t ~ U(MIX_LOW, 1 - MIX_LOW)``: keeping ``t``
#: away from 0 and 1 keeps samples away from copies of training images.
MIX_LOW = 0.2


@dataclass(frozen=True)
class Prior:
    """One prior: ``draw(model, layer, seed, first, count)`` gives the maps decoding starts
    from, ``F[layer]`` for a top-vector prior, ``F[layer - 1]`` for a density prior."""

    name: str
    #: One line for the CLI's help.
    help: str
    #: Draws F[L-1] from the top statistics (needs /top; top layer of a complete model only).
    density: bool
    draw: Callable[..., np.ndarray]

    def start_layer(self, layer: int) -> int:
        """The layer whose maps :attr:`draw` gives, when sampling from ``layer``."""
        return layer - 1 if self.density else layer


def pick_by_counts(counts: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Filter indices drawn in proportion to ``counts`` by inverse CDF of ``uniforms``."""
    cdf = np.cumsum(counts, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf / cdf[-1], uniforms, side="right"), counts.size - 1)


def _one_hot(index: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((index.size, 1, 1, width), dtype=np.float32)
    out[np.arange(index.size), 0, 0, index] = 1.0
    return out


@njit(**JIT_PARALLEL)
def _mix(members, first, second, t, out):
    """OUT out[i] = t[i] * members[first[i]] + (1 - t[i]) * members[second[i]]."""
    for i in prange(out.shape[0]):
        a, b, ti = members[first[i]], members[second[i]], t[i]
        for d in range(out.shape[1]):
            out[i, d] = ti * a[d] + (1.0 - ti) * b[d]


# ---------------------------------------------------------------------------- top vectors


def draw_normal(model, layer: int, seed: int, first: int, count: int) -> np.ndarray:
    """``z ~ N(0, 1)`` (the paper)."""
    width = model.layers[layer - 1].filters
    z = normal_draws(seed, first, count, width, streams.TOP_VECTOR)
    return z.astype(np.float32).reshape(count, 1, 1, width)


def draw_counts(model, layer: int, seed: int, first: int, count: int) -> np.ndarray:
    """A one-hot vector of a filter drawn in proportion to its training count."""
    u = uniform_draws(seed, first, count, 1, streams.TOP_VECTOR)[:, 0]
    return _one_hot(pick_by_counts(model.layers[layer - 1].counts, u), model.layers[layer - 1].filters)


# ---------------------------------------------------------------------------- top density


def _top(model, prior: str):
    if model.top is None:
        raise NsnError(
            f"--prior {prior} needs top-layer statistics, which this model file does not have "
            "(trained by an older nsn); retrain it, or use --prior counts or normal"
        )
    return model.top


def _top_shape(model) -> tuple[int, int, int]:
    return model.map_shape(len(model.layers) - 1)


def draw_pca(model, layer: int, seed: int, first: int, count: int) -> np.ndarray:
    """A filter drawn by count, ``F[L-1] = mean + sum_k sqrt(var_k) z_k pc_k``, clipped to the
    activations' range [0, 1]."""
    top = _top(model, "pca")
    u = uniform_draws(seed, first, count, 3, streams.DENSITY_PICK)
    filters = pick_by_counts(top.image_counts, u[:, 0])
    z = normal_draws(seed, first, count, top.components.shape[1], streams.DENSITY_PCA)
    scale = np.sqrt(np.maximum(top.variances[filters], 0.0)) * z
    maps = top.mean[filters] + np.einsum("np,npd->nd", scale, top.components[filters])
    return np.clip(maps, 0.0, 1.0).astype(np.float32).reshape(count, *_top_shape(model))


def draw_mix(model, layer: int, seed: int, first: int, count: int) -> np.ndarray:
    """A filter drawn by its stored members, two of its members ``a, b``,
    ``F[L-1] = t a + (1 - t) b``."""
    top = _top(model, "mix")
    u = uniform_draws(seed, first, count, 3, streams.DENSITY_PICK)
    member_filter = top.member_filter
    member_counts = np.bincount(member_filter, minlength=top.mean.shape[0])
    filters = pick_by_counts(member_counts, u[:, 0])
    order = np.argsort(member_filter, kind="stable")
    starts = np.concatenate([[0], np.cumsum(member_counts)])
    size = member_counts[filters]
    first_slot = np.minimum((u[:, 1] * size).astype(np.int64), size - 1)
    # the second member differs from the first whenever the filter has two or more
    v = uniform_draws(seed, first, count, 2, streams.DENSITY_SECOND)
    offset = 1 + np.minimum((v[:, 0] * np.maximum(size - 1, 1)).astype(np.int64), np.maximum(size - 2, 0))
    second_slot = (first_slot + offset) % np.maximum(size, 1)
    t = MIX_LOW + (1 - 2 * MIX_LOW) * u[:, 2]
    members = top.members_f32()
    maps = np.empty((count, members.shape[1]), dtype=np.float32)
    _mix(members, order[starts[filters] + first_slot], order[starts[filters] + second_slot], t, maps)
    return maps.reshape(count, *_top_shape(model))


def draw_knn(model, layer: int, seed: int, first: int, count: int) -> np.ndarray:
    """A stored member drawn uniformly (so top filters come by their image counts), mixed as in
    ``mix`` with one of its nearest members, whatever their top filter: neighbours are closer
    than two random members of a filter, so the mix stays on the data while crossing filter
    borders."""
    top = _top(model, "knn")
    u = uniform_draws(seed, first, count, 3, streams.DENSITY_PICK)
    members = top.members_f32()
    neighbours = top.neighbours()
    first_pick = np.minimum((u[:, 0] * len(members)).astype(np.int64), len(members) - 1)
    slot = np.minimum((u[:, 1] * neighbours.shape[1]).astype(np.int64), neighbours.shape[1] - 1)
    t = MIX_LOW + (1 - 2 * MIX_LOW) * u[:, 2]
    maps = np.empty((count, members.shape[1]), dtype=np.float32)
    _mix(members, first_pick, neighbours[first_pick, slot], t, maps)
    return maps.reshape(count, *_top_shape(model))


# ---------------------------------------------------------------------------- the table

#: Every prior, in the order the CLI lists them.
PRIORS: dict[str, Prior] = {
    p.name: p
    for p in (
        Prior("normal", "z ~ N(0, 1), the paper's", False, draw_normal),
        Prior("counts", "one-hot top vector of a filter drawn by its training count", False, draw_counts),
        Prior("mix", "a mix of two stored members of a top filter", True, draw_mix),
        Prior("pca", "a top filter's Gaussian over its principal components", True, draw_pca),
        Prior("knn", "a stored member mixed with a near neighbour", True, draw_knn),
    )
}
#: The default where density priors apply (best FID and recall of the priors measured,
#: bench/bench_quality.py), and elsewhere.
DEFAULT_DENSITY, DEFAULT_VECTOR = "mix", "counts"
#: The names of the density priors.
DENSITY_PRIORS = tuple(name for name, p in PRIORS.items() if p.density)


def get(name: str) -> Prior:
    """The prior called ``name``; a clear error for any other name."""
    if name not in PRIORS:
        raise ParameterError("prior", f"must be one of {', '.join(PRIORS)}, got {name!r}")
    return PRIORS[name]


def default_prior(model, layer: int) -> str:
    """:data:`DEFAULT_DENSITY` where a density prior applies (the top layer of a complete model
    with top statistics), else :data:`DEFAULT_VECTOR`."""
    usable = model.top is not None and model.complete and layer == len(model.arch)
    return DEFAULT_DENSITY if usable else DEFAULT_VECTOR


def cli_help() -> str:
    """The ``--prior`` help, from the table."""
    names = "; ".join(f"{p.name}: {p.help}" for p in PRIORS.values())
    return (f"{names}. Default: {DEFAULT_DENSITY} where the model has top statistics, "
            f"else {DEFAULT_VECTOR}.")


def draw(model, prior: str, layer: int, seed: int, first: int, count: int) -> tuple[np.ndarray, int]:
    """The maps (count, h, w, C) ``prior`` draws for samples ``first .. first + count - 1`` of
    ``seed`` when sampling from ``layer``, and the layer they are maps of."""
    chosen = get(prior)
    if chosen.density and (layer != len(model.arch) or not model.complete):
        raise ParameterError("prior", f"{{name}} {prior} samples the top layer of a complete model; use normal or "
                             f"counts for {{layer}} {layer}", others=("layer",))
    return chosen.draw(model, layer, seed, first, count), chosen.start_layer(layer)
