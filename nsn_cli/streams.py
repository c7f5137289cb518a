"""Every random stream of nsn, named in one table, so no two uses share one by accident.

Two kinds of stream:

- **Sample streams** of the counter-based sampler (:func:`nsn_cli.engine.decode.normal_draws`,
  :func:`~nsn_cli.engine.decode.uniform_draws` and the decoder): sample ``i`` of seed ``s``
  draws from stream ``(s, i, id)``, so a sample's bits do not depend on the batch it is in.
  Decoding uses ids below :data:`DECODE_LIMIT`; the priors use ids above it.
- **Generator tags**: a numpy ``Generator`` seeded ``[seed, ..., tag]`` for one seeded choice
  outside sampling (which patches EM sees, which images a file keeps, ...).

Changing any number here changes the bits of every seed's results: the values are frozen.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- sample streams

#: Decode rounds are ``LAYERS_PER_ROUND`` stream ids apart (a model has fewer layers).
LAYERS_PER_ROUND = 64
#: Every decode stream id is below this; the prior streams are at or above it.
DECODE_LIMIT = 1 << 20

#: ``normal`` and ``counts`` priors: the top vector of a sample.
TOP_VECTOR = 1 << 20
#: Top-density priors (``mix``, ``pca``, ``knn``): the filter/member picks and the mix weight.
DENSITY_PICK = 1 << 21
#: ``pca`` prior: the Gaussian coordinates along a filter's principal directions.
DENSITY_PCA = (1 << 21) + 1
#: ``mix`` prior: the second member.
DENSITY_SECOND = (1 << 21) + 2

#: Every named sample stream id (tested to be distinct and clear of the decode streams).
SAMPLE_STREAMS = {
    "TOP_VECTOR": TOP_VECTOR,
    "DENSITY_PICK": DENSITY_PICK,
    "DENSITY_PCA": DENSITY_PCA,
    "DENSITY_SECOND": DENSITY_SECOND,
}


def decode_stream(layer: int, round_index: int = 0) -> int:
    """The stream decoding ``F[layer-1]`` from ``F[layer]`` in decode round ``round_index``
    (sampling is round 0)."""
    return round_index * LAYERS_PER_ROUND + layer


def restore_stream(layer: int, round_index: int) -> int:
    """The stream of ``layer`` in round ``round_index`` of masked restoration (``style``/inpaint
    by resampling): even ids, twice :func:`decode_stream`."""
    return 2 * decode_stream(layer, round_index)


# ---------------------------------------------------------------------------- generator tags

#: ``[seed, layer, TRAIN_PATCHES]``: the patches a layer's EM sees when subsampled.
TRAIN_PATCHES = 1
#: ``[seed, TOP_MEMBERS]``: the training images stored as top-statistics members.
TOP_MEMBERS = 7
#: ``[seed, JUDGE_WEIGHTS]``: the judge classifier's initial weights.
JUDGE_WEIGHTS = 11
#: ``[seed, JUDGE_SPLIT]``: the judge's held-out split.
JUDGE_SPLIT = 12
#: ``[seed, CALIBRATION_VALUES]``: the pixel values a calibration keeps.
CALIBRATION_VALUES = 13
#: ``[seed, FILL_IMAGES]``: the training images the fill filter is fitted on.
FILL_IMAGES = 14

#: Every named generator tag (tested to be distinct).
GENERATOR_TAGS = {
    "TRAIN_PATCHES": TRAIN_PATCHES,
    "TOP_MEMBERS": TOP_MEMBERS,
    "JUDGE_WEIGHTS": JUDGE_WEIGHTS,
    "JUDGE_SPLIT": JUDGE_SPLIT,
    "CALIBRATION_VALUES": CALIBRATION_VALUES,
    "FILL_IMAGES": FILL_IMAGES,
}
