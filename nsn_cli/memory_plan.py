"""The memory plan of a budgeted ``train``: per layer, in memory or streamed, and how.

``train(memory=...)`` has ``memory`` bytes for data (``--memory`` less the process's own
reserve). Before each layer the plan is worked out from sizes alone, no data read:

- in memory (:attr:`LayerPlan.streamed` False) when the layer's peak working set
  (:func:`layer_bytes`) fits, as without a budget;
- else streamed (:mod:`nsn_cli.engine.stream`): images ``chunk`` at a time, encoded through
  the layers below on every pass, with the patches' labels in a temporary file when they
  would take more than 1 / :data:`LABELS_DIVISOR` of the budget, and ``F[l-1]`` of every
  image held in memory when it fits beside a chunk.

Filter counts are only known once a layer is trained, so the plan is made one layer at a
time (:func:`plan_layer`), from the bytes of one image's maps ``F[0..l-1]``
(:func:`map_bytes`). Every map is float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nsn_cli.top import MAX_MEMBERS, top_stats_bytes

#: Bytes per chunk set aside for the E-step's blocks, the filters and their float64 moments
#: (a quarter of the budget when that is smaller).
CHUNK_OVERHEAD = 32 << 20
#: Images per block of :meth:`~nsn_cli.model.NSNModel.encode_layer`: chunks at least this big
#: are rounded down to a multiple of it, so maps held in memory are the bits a chunk encoded
#: from the file gets (the model does not depend on whether they were held).
ENCODE_BLOCK = 256
#: Images per chunk without a budget.
UNBUDGETED_CHUNK = 1024
#: The labels (4 bytes a patch) go to a temporary file when they would take more than
#: 1 / LABELS_DIVISOR of the budget.
LABELS_DIVISOR = 8
#: Float32 copies of a chunk's patches alive at once while streaming: the patches, the
#: creation pass's candidates and a contiguous copy.
PATCH_COPIES = 3
#: A layer in memory whose working set fits the budget this many times over lets freed
#: arrays' pages serve the next ones (:mod:`nsn_cli.heap`'s "reuse"), at the cost of the
#: heap's fragmentation: the digits' peak RSS went from 1.04 to 1.15 GB.
REUSE_HEADROOM = 2
#: Samples whose maps the calibration may hold at once: its batches of 1,024, each decoded
#: in batches of 256 with two per thread ahead.
CALIBRATION_IN_FLIGHT = 2048
#: The top statistics never keep fewer members than this, however small the budget.
MIN_MEMBERS = 256


def map_bytes(sizes: Sequence[tuple[int, int]], channels: Sequence[int]) -> list[int]:
    """Bytes of one image's float32 maps ``F[0], F[1], ..``: ``4 h w C`` per level, for as many
    levels as ``channels`` gives (the image's channels, then each trained layer's filters)."""
    return [4 * h * w * c for (h, w), c in zip(sizes, channels)]


def layer_bytes(n: int, in_bytes: int, dims: int, n_patches: int) -> int:
    """Peak bytes of training a layer in memory: its input maps (``in_bytes`` an image, ``n``
    images), its ``n_patches`` patches of ``dims`` values twice (the creation pass copies the
    candidates, nearly all patches in the first step) and 32 bytes of labels, similarities and
    norms per patch."""
    return n * in_bytes + n_patches * (8 * dims + 32)


def image_chunk(memory: int | None, per_image: int, patch_values: int = 0) -> int:
    """Images per chunk: a chunk's maps (``per_image`` bytes an image, every level it goes
    through) and :data:`PATCH_COPIES` float32 copies of its ``patch_values`` patch values an
    image fit in ``memory`` less :data:`CHUNK_OVERHEAD`; a multiple of :data:`ENCODE_BLOCK`
    when at least that. None: :data:`UNBUDGETED_CHUNK`."""
    if memory is None:
        return UNBUDGETED_CHUNK
    cost = 4 * PATCH_COPIES * patch_values + per_image
    chunk = max(1, (memory - min(CHUNK_OVERHEAD, memory // 4)) // cost)
    return chunk - chunk % ENCODE_BLOCK if chunk >= ENCODE_BLOCK else chunk


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is trained under a budget (see :func:`plan_layer`)."""

    #: Patches come in chunks from the data file (else all are cut in memory).
    streamed: bool
    #: Images per chunk of a streamed layer's passes (the model records it); 0 in memory.
    chunk: int
    #: The patches' labels go to a temporary file beside the output, not in memory.
    labels_on_disk: bool
    #: ``F[l-1]`` of every image is in memory during the layer: always in memory; streamed,
    #: when it fits beside a chunk (the patches are then cut from it on every pass).
    hold_maps: bool
    #: Images per chunk for encoding ``F[l-1]`` from the file into memory; 0 when they are in
    #: memory already or not held.
    encode_chunk: int
    #: The layer is in memory with :data:`REUSE_HEADROOM` to spare: a process that is this
    #: train may keep freed memory for reuse (:mod:`nsn_cli.heap`).
    reuse_heap: bool = False


def reuse_heap(memory: int | None, working_set: int) -> bool:
    """Whether a phase of ``working_set`` bytes may keep freed memory for reuse: when it fits
    the budget :data:`REUSE_HEADROOM` times over (or there is no budget)."""
    return memory is None or REUSE_HEADROOM * working_set <= memory


def after_layers_bytes(n: int, held_maps: int, dims: int, decode_bytes: int) -> int:
    """Peak bytes of what ``train`` does after its layers: the top statistics (members and
    neighbour blocks, :func:`~nsn_cli.top.top_stats_bytes`) beside ``F[L-1]`` if held
    (``held_maps`` bytes), then the calibration and the copy check, which decode samples in
    batches: :data:`CALIBRATION_IN_FLIGHT` samples of ``decode_bytes`` each."""
    return max(top_stats_bytes(n, dims) + held_maps, CALIBRATION_IN_FLIGHT * decode_bytes)


def plan_layer(memory: int | None, n: int, maps: Sequence[int], dims: int, n_patches: int,
               maps_in_memory: bool) -> LayerPlan:
    """The plan of layer ``l`` under ``memory`` bytes (None: no budget, all in memory).

    n: images; maps: bytes of one image's ``F[0..l-1]`` (:func:`map_bytes`); dims: values of a
    patch; n_patches: patches the layer sees; maps_in_memory: ``F[l-1]`` of every image is in
    memory already (the previous layer's plan and :func:`keep_maps` left it there)."""
    below = len(maps) - 1
    working_set = layer_bytes(n, maps[below], dims, n_patches)
    if memory is None or working_set <= memory:
        # the encoding chunks' maps share the budget with the whole F[l-1] being filled
        encode_chunk = 0 if maps_in_memory else image_chunk(
            None if memory is None else memory - n * maps[below], sum(maps))
        return LayerPlan(streamed=False, chunk=0, labels_on_disk=False, hold_maps=True, encode_chunk=encode_chunk,
                         reuse_heap=reuse_heap(memory, working_set))
    labels = 4 * n_patches
    on_disk = labels > memory // LABELS_DIVISOR
    room = memory - (0 if on_disk else labels)
    patch_values = (n_patches // n + 1) * dims
    chunk = image_chunk(room, sum(maps), patch_values)
    hold, encode_chunk = _hold(room, n, maps, chunk, patch_values, maps_in_memory)
    return LayerPlan(streamed=True, chunk=chunk, labels_on_disk=on_disk, hold_maps=hold, encode_chunk=encode_chunk)


def _hold(room: int, n: int, maps: Sequence[int], chunk: int, patch_values: int,
          maps_in_memory: bool) -> tuple[bool, int]:
    """Whether a streamed layer holds ``F[l-1]`` of every image in ``room`` beside one chunk's
    patches, and the chunk to encode them in (0: in memory already).

    Only for chunks that are multiples of :data:`ENCODE_BLOCK`: then the held maps are the
    bits a chunk encoded from the file gets, and the model does not depend on the choice
    (tested). Worth it: at 16x the digits with Dask, workers reading and encoding layer 3's
    input on every pass took 50 s, the whole layer here 0.5 s after one encoding of the maps."""
    if chunk % ENCODE_BLOCK:
        return False, 0
    held = n * maps[-1]
    overhead = min(CHUNK_OVERHEAD, room // 4)
    if held + 4 * PATCH_COPIES * patch_values * chunk + overhead > room:
        return False, 0
    if maps_in_memory:
        return True, 0
    fill = (room - held - overhead) // sum(maps) // ENCODE_BLOCK * ENCODE_BLOCK  # encoding chunks beside them
    return (True, fill) if fill >= ENCODE_BLOCK else (False, 0)


def keep_maps(memory: int | None, held: int, out_bytes: int) -> bool:
    """After a layer whose input maps (``held`` bytes) are in memory: whether to encode its
    output maps (``out_bytes``) in memory too, which needs both plus an encoding's copy."""
    return memory is None or 2 * held + out_bytes <= memory


@dataclass(frozen=True)
class TopPlan:
    """How the top-layer statistics are gathered from the data file (see :func:`plan_top`)."""

    #: Images the top statistics keep as members.
    members: int
    #: Images per chunk encoded through the layers below the top.
    chunk: int


def plan_top(memory: int | None, n: int, maps: Sequence[int], dims: int) -> TopPlan:
    """The top statistics' plan when ``F[L-1]`` is not in memory: as many members as fit
    (:data:`~nsn_cli.top.MAX_MEMBERS`, halved only under budgets too small for them, at most
    half of it) and chunks in what they leave. maps: bytes of one image's ``F[0..L-1]``;
    dims: values of a top patch."""
    members = MAX_MEMBERS
    while memory is not None and members > MIN_MEMBERS and top_stats_bytes(n, dims, members) > memory // 2:
        members //= 2
    chunk = image_chunk(None if memory is None else memory - top_stats_bytes(n, dims, members), sum(maps))
    return TopPlan(members=members, chunk=chunk)
