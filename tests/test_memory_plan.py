"""The memory plan of a budgeted train, on cases computed by hand (digits: 28x28 gray, the
mnist architecture 4x4/2, 3x3/2, 6x6/2; layer 1 has 13x13 positions of 16 values)."""

from __future__ import annotations

import pytest

from nsn_cli import memory_plan
from nsn_cli.memory_plan import LayerPlan, TopPlan, image_chunk, keep_maps, map_bytes, plan_layer, plan_top

MIB = 1 << 20
DIGIT = 4 * 28 * 28  # bytes of one digit's F[0]: 3,136
LAYER1 = {"maps": [DIGIT], "dims": 16}


def test_map_bytes_are_four_bytes_a_value_per_level():
    assert map_bytes([(28, 28), (13, 13), (6, 6), (1, 1)], [1, 43, 60]) == [3136, 4 * 169 * 43, 4 * 36 * 60]


def test_no_budget_keeps_everything_in_memory():
    assert plan_layer(None, 600, **LAYER1, n_patches=600 * 169, maps_in_memory=True) == \
        LayerPlan(streamed=False, chunk=0, labels_on_disk=False, hold_maps=True, encode_chunk=0, reuse_heap=True)
    assert image_chunk(None, DIGIT) == memory_plan.UNBUDGETED_CHUNK


def test_a_layer_that_fits_is_trained_in_memory_its_maps_encoded_in_chunks_beside_them():
    # 600 digits: 600 * 3,136 + 101,400 patches * (8 * 16 + 32) = 18,105,600 bytes <= 64M.
    # Encoding F[0] from the file: 64M less the 1,881,600 of the maps being filled is 65,227,264,
    # less a quarter (16,306,816) = 48,920,448 // 3,136 = 15,599 images, rounded down to 15,360.
    plan = plan_layer(64 * MIB, 600, **LAYER1, n_patches=600 * 169, maps_in_memory=False)
    assert plan == LayerPlan(streamed=False, chunk=0, labels_on_disk=False, hold_maps=True, encode_chunk=15360,
                             reuse_heap=True)  # 2 * 18,105,600 <= 64M: freed memory may stay for reuse


def test_a_layer_that_fits_but_not_twice_returns_freed_memory():
    # 18,105,600 <= 32M (33,554,432) < 2 * 18,105,600: in memory, freed chunks go back to the OS
    plan = plan_layer(32 * MIB, 600, **LAYER1, n_patches=600 * 169, maps_in_memory=True)
    assert not plan.streamed and not plan.reuse_heap
    assert plan_layer(36_211_200, 600, **LAYER1, n_patches=600 * 169, maps_in_memory=True).reuse_heap
    assert not plan_layer(36_211_199, 600, **LAYER1, n_patches=600 * 169, maps_in_memory=True).reuse_heap


def test_what_follows_the_layers_reuses_freed_memory_only_when_it_fits_twice():
    from nsn_cli.top import top_stats_bytes

    assert memory_plan.reuse_heap(None, 10**12) and memory_plan.reuse_heap(100, 50)
    assert not memory_plan.reuse_heap(99, 50)
    # the top statistics beside the held F[L-1], or the calibration's 2,048 samples in flight
    top = top_stats_bytes(4000, 3996)
    assert memory_plan.after_layers_bytes(4000, 5 * MIB, 3996, 1000) == top + 5 * MIB
    assert memory_plan.after_layers_bytes(4000, 0, 3996, 10**6) == 2048 * 10**6 > top


def test_a_layer_past_the_budget_is_streamed_with_its_maps_held():
    # 18,105,600 > 16M (16,777,216): streamed. Labels 405,600 <= 16M / 8: in memory, leaving
    # 16,371,616. A chunk's image: 3 * 4 bytes * (169 + 1) * 16 patch values + 3,136 = 35,776;
    # (16,371,616 - 4,092,904 overhead) // 35,776 = 343 images, rounded down to 256.
    # Held: 1,881,600 + 12 * 2,720 * 256 + 4,092,904 = 14,330,344 <= 16,371,616, encoded in
    # (16,371,616 - 1,881,600 - 4,092,904) // 3,136 = 3,315 -> 3,072 images a chunk.
    kw = {**LAYER1, "n_patches": 600 * 169}
    assert plan_layer(16 * MIB, 600, **kw, maps_in_memory=False) == \
        LayerPlan(streamed=True, chunk=256, labels_on_disk=False, hold_maps=True, encode_chunk=3072)
    assert plan_layer(16 * MIB, 600, **kw, maps_in_memory=True) == \
        LayerPlan(streamed=True, chunk=256, labels_on_disk=False, hold_maps=True, encode_chunk=0)


def test_labels_go_to_disk_past_an_eighth_and_odd_chunks_hold_nothing():
    # 1,000 digits under 4M: labels 676,000 > 524,288 go to disk, the whole 4M is room;
    # (4,194,304 - 1,048,576) // 35,776 = 87 images: not a multiple of 256, so nothing is held.
    assert plan_layer(4 * MIB, 1000, **LAYER1, n_patches=1000 * 169, maps_in_memory=True) == \
        LayerPlan(streamed=True, chunk=87, labels_on_disk=True, hold_maps=False, encode_chunk=0)


def test_maps_too_big_to_hold_beside_a_chunk_are_dropped():
    # 20,000 digits under 256M: labels 13,520,000 stay in memory, room 254,915,456;
    # (254,915,456 - 32M) // 35,776 = 6,187 -> 6,144 images. Holding would need 62,720,000 +
    # 12 * 2,720 * 6,144 + 32M = 296,814,592 > room.
    assert plan_layer(256 * MIB, 20000, **LAYER1, n_patches=20000 * 169, maps_in_memory=True) == \
        LayerPlan(streamed=True, chunk=6144, labels_on_disk=False, hold_maps=False, encode_chunk=0)


def test_maps_are_kept_for_the_next_layer_while_both_and_a_copy_fit():
    assert keep_maps(None, 1 << 40, 1 << 40)
    assert keep_maps(100, 30, 40) and not keep_maps(100, 30, 41)


def test_top_members_halve_until_they_fit_half_the_budget(monkeypatch):
    monkeypatch.setattr(memory_plan, "top_stats_bytes", lambda n, dims, limit: 1000 * limit)
    # 3,000,000 // 2 = 1,500,000: 4,096 and 2,048 members do not fit, 1,024 (1,024,000) do;
    # chunks in the 1,976,000 left: (1,976,000 - 494,000) // (3,136 + 10,000) = 112 images.
    assert plan_top(3_000_000, 4000, [DIGIT, 10_000], dims=100) == TopPlan(members=1024, chunk=112)
    assert plan_top(None, 4000, [DIGIT, 10_000], dims=100) == TopPlan(members=4096, chunk=1024)


@pytest.mark.parametrize("memory", [5 * MIB, 16 * MIB, 40 * MIB, 80 * MIB])
def test_what_a_plan_holds_fits_the_room_the_labels_leave(memory):
    """The property every plan keeps, in both of a streamed layer's phases: while the held
    maps are encoded (they, the overhead and one encoding chunk) and while it streams (the
    held maps or a chunk's own maps, a chunk's three patch copies, the overhead)."""
    n, n_patches, dims = 3000, 3000 * 169, 16
    plan = plan_layer(memory, n, [DIGIT], dims, n_patches, maps_in_memory=False)
    assert plan.streamed and plan.chunk >= 1
    room = memory - (0 if plan.labels_on_disk else 4 * n_patches)
    overhead = min(memory_plan.CHUNK_OVERHEAD, room // 4)
    patches = plan.chunk * 12 * (n_patches // n + 1) * dims
    if plan.hold_maps:
        assert n * DIGIT + overhead + plan.encode_chunk * DIGIT <= room
        assert n * DIGIT + patches + overhead <= room
    else:
        assert plan.chunk * DIGIT + patches + overhead <= room
