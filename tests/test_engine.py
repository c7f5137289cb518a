"""Every engine kernel against the slow references in tests/reference.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numba
import numpy as np
import pytest

from nsn_cli.engine import em
from nsn_cli.engine.decode import normal_draws, uniform_draws
from nsn_cli.engine.em import (
    FilterCapError,
    creation_pass,
    draw_candidates,
    em_step,
    fit_layer,
    floor_count,
    m_step,
    moments,
    reference_scale,
    sigma_new,
)
from nsn_cli.engine.geometry import check_reaches_one, map_sizes, parse_arch
from nsn_cli.engine.patches import extract_patches
from nsn_cli.engine.similarity import BLOCK_ROWS, activate, best_filter, row_norms, similarity
from nsn_cli.errors import NsnError

from . import reference as ref
from .unfused import decode_patches


@pytest.mark.parametrize("shape, patch, stride", [((2, 7, 9, 3), 3, 2), ((1, 4, 4, 1), 4, 1), ((3, 6, 6, 2), 2, 2)])
def test_extract_patches(rng, shape, patch, stride):
    maps = rng.random(shape, dtype=np.float32)
    assert np.array_equal(extract_patches(maps, patch, stride), ref.patches(maps, patch, stride))


def test_extract_selected_patches(rng):
    maps = rng.random((3, 8, 8, 2), dtype=np.float32)
    full = extract_patches(maps, 4, 2)  # 3x3 positions per image
    image, position = np.array([2, 0, 1]), np.array([8, 4, 0])
    assert np.array_equal(extract_patches(maps, 4, 2, image, position), full[image * 9 + position])


def test_extract_patches_into_a_reused_buffer(rng):
    """A buffer of at least the rows needed takes the patches in its first rows; a wrong one
    is refused rather than written past or converted."""
    maps = rng.random((3, 8, 8, 2), dtype=np.float32)
    buffer = np.full((40, 32), np.nan, dtype=np.float32)
    got = extract_patches(maps[:2], 4, 2, out=buffer)
    assert got.shape == (18, 32) and np.shares_memory(got, buffer)
    assert np.array_equal(got, ref.patches(maps[:2], 4, 2)) and np.isnan(buffer[18:]).all()
    for wrong in (np.empty((17, 32), np.float32), np.empty((40, 32), np.float64), np.empty((40, 31), np.float32),
                  np.empty((32, 40), np.float32).T):
        with pytest.raises(ValueError, match="out must be"):
            extract_patches(maps[:2], 4, 2, out=wrong)


def test_reference_stitch_inverts_extract(rng):
    """The numpy stitch the fused decode is checked against averages overlaps back to the maps."""
    maps = rng.random((2, 13, 13, 3), dtype=np.float32)
    patches = extract_patches(maps, 3, 2).reshape(2, 6, 6, -1)
    assert np.allclose(ref.stitch(patches, 3, 2, 3), maps, atol=1e-6)


def test_similarity_and_best_filter(rng):
    x = rng.random((50, 12), dtype=np.float32)
    mu = rng.random((7, 12), dtype=np.float32)
    sigma = rng.uniform(0.2, 2.0, size=7)
    expected = ref.sim_matrix(x, mu, sigma)
    assert np.allclose(similarity(x, mu, sigma), expected, rtol=1e-4, atol=1e-4)
    labels, best = best_filter(x, mu, sigma)
    assert np.array_equal(labels, expected.argmax(axis=1))
    assert np.allclose(best, expected.max(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, dims, k", [(BLOCK_ROWS + 1, 40, 17), (2 * BLOCK_ROWS + 88, 5, 33), (1, 64, 1)])
def test_blocked_e_step_matches_reference(rng, n, dims, k):
    """Several blocks of BLOCK_ROWS rows (the last one short), filters padded to a multiple
    of PAD_FILTERS: the same argmax, Sim and activations as the float64 reference. Filters 0
    and K-1 are one filter: a tie in float64, which the float32 product may round either way
    (BLAS's kernels for different columns sum in different orders), so there the label is
    either of them."""
    x = rng.random((n, dims), dtype=np.float32)
    mu = rng.random((k, dims), dtype=np.float32)
    mu[-1] = mu[0]
    sigma = rng.uniform(0.5, 2.0, size=k)
    sigma[-1] = sigma[0]
    expected = ref.sim_matrix(x, mu, sigma)
    labels, best = best_filter(x, mu, sigma)
    wanted = expected.argmax(axis=1)
    assert np.array_equal(np.where(labels == k - 1, 0, labels), wanted)  # argmax of a float64 tie: the first
    assert np.allclose(best, expected.max(axis=1), rtol=1e-5, atol=1e-5)
    assert np.allclose(similarity(x, mu, sigma), expected, rtol=1e-4, atol=1e-4)
    assert np.allclose(similarity(x, mu, sigma, "sigmoid"), 1 / (1 + np.exp(-expected)), atol=1e-5)


def test_all_zero_rows_are_found_once_and_the_rest_keep_their_bits(rng):
    """Blocks with a few, many and only all-zero rows (+0.0 and -0.0), and one with a single
    other row: the float64 reference's labels and Sim; every zero row gets the result of a zero
    row's product; the other rows, with their product run on them copied together, get the bits
    they get with no zero row among them."""
    from nsn_cli.engine.similarity import ZERO_ROWS_TO_GATHER

    dims, k = 12, 9
    x = rng.random((5 * BLOCK_ROWS + 7, dims), dtype=np.float32)
    zero = np.zeros(len(x), dtype=bool)
    zero[: ZERO_ROWS_TO_GATHER - 1] = True  # block 0: too few to copy the others for
    zero[BLOCK_ROWS : 2 * BLOCK_ROWS : 2] = True  # block 1: half
    zero[2 * BLOCK_ROWS : 3 * BLOCK_ROWS] = True  # block 2: only zeros
    zero[3 * BLOCK_ROWS : 4 * BLOCK_ROWS - 1] = True  # block 3: one other row
    x[zero] = 0.0
    x[np.flatnonzero(zero)[::3]] = -0.0
    mu = rng.random((k, dims), dtype=np.float32)
    sigma = rng.uniform(0.5, 2.0, size=k)
    expected = ref.sim_matrix(x, mu, sigma)
    labels, best = best_filter(x, mu, sigma)
    assert np.array_equal(labels, expected.argmax(axis=1))
    assert np.allclose(best, expected.max(axis=1), rtol=1e-5, atol=1e-5)
    # a zero row's Sim as the product path computes it: ||x||^2 = 0, x.mu = 0, Eq. 1's order
    from nsn_cli.engine.similarity import log_norm

    mm = np.einsum("kd,kd->k", mu, mu, dtype=np.float64)
    zero_sims = log_norm(sigma) - np.maximum(0.0 - 2.0 * 0.0 + mm, 0.0) * (0.5 / sigma**2)
    assert set(labels[zero]) == {zero_sims.argmax()} and set(best[zero]) == {zero_sims.max()}
    other_labels, other_best = best_filter(x[~zero], mu, sigma)
    assert np.array_equal(labels[~zero], other_labels) and np.array_equal(best[~zero], other_best)
    # the layer outputs (encoding) likewise: a zero row's output is found once and copied
    for activation in (None, "sigmoid", "relative"):
        out = similarity(x, mu, sigma, activation)
        want = zero_sims.astype(np.float32)[None]
        want = want if activation is None else activate(want, activation)
        assert np.array_equal(out[zero].view(np.uint32), np.repeat(want, zero.sum(), axis=0).view(np.uint32))
        others = similarity(x[~zero], mu, sigma, activation)
        assert np.array_equal(out[~zero].view(np.uint32), others.view(np.uint32)), activation


def test_a_tie_in_sim_goes_to_the_lower_filter():
    """Equal Sim (here from equal dots): the first filter holding the maximum, as argmax."""
    from nsn_cli.engine.similarity import _MAXIMA, _best_of_row

    k = 2 * _MAXIMA + 3  # the maxima's lanes and the remainder
    for first, second in ((2, 11), (5, k - 1), (0, k - 2)):
        dots = np.zeros(k)
        dots[[first, second]] = 3.0
        label, top = _best_of_row(10.0, dots, np.ones(k), np.zeros(k), np.ones(k), np.empty(k), np.empty(_MAXIMA))
        assert (label, top) == (first, -5.0)  # -(10 - 2 * 3 + 1) * 1; the others -(10 + 1)


def test_engine_calls_leave_the_blas_thread_limits_as_they_were(rng):
    """BLAS runs on one thread inside the engine and the caller's limits come back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from nsn_cli.engine.threads import one_blas_thread
    from nsn_cli.top import compute_top_stats

    def blas_threads():
        return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas")

    x = rng.random((300, 40), dtype=np.float32)
    with one_blas_thread():
        assert {threads for _, threads in blas_threads()} == {1}
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        best_filter(x, x[:5], np.ones(5))
        similarity(x, x[:5], np.ones(5), "sigmoid")
        em_step(x, x[:5], np.ones(5), alpha=-3.0, sigma_floor=0.01, rng=np.random.default_rng(0))
        compute_top_stats([x.reshape(300, 2, 2, 10)], 300, x[:5], np.ones(5), seed=0)
        assert blas_threads() == before


def test_similarity_edge_cases():
    # a constant patch equal to its one filter: distance 0, Sim = -log(sqrt(2 pi) sigma)
    x = np.full((3, 16), 0.25, np.float32)
    labels, best = best_filter(x, x[:1], np.array([0.5]))
    assert labels.tolist() == [0, 0, 0]
    assert np.allclose(best, -math.log(math.sqrt(2 * math.pi) * 0.5))


def test_activations(rng):
    sims = rng.normal(size=(20, 9)).astype(np.float32) * 5
    assert np.allclose(activate(sims, "sigmoid"), 1 / (1 + np.exp(-sims.astype(np.float64))), atol=1e-6)
    rel = activate(sims, "relative")
    assert np.allclose(rel, np.exp(sims - sims.max(axis=1, keepdims=True)), atol=1e-6)
    assert np.allclose(rel.max(axis=1), 1.0)


@pytest.mark.parametrize("block", [3, 16, 2048])
def test_creation_pass_matches_sequential(rng, block):
    cand = rng.random((300, 5), dtype=np.float32)
    labels, seeds = creation_pass(cand, radius=0.45, block=block)
    ref_labels, ref_seeds = ref.sequential_creation(cand, 0.45)
    assert np.array_equal(seeds, ref_seeds)
    assert np.array_equal(labels, ref_labels)


def test_activations_far_from_zero_are_exactly_what_exp_gives():
    """Similarities past the underflow bound skip exp; the values are the formula's: float32
    exp is 0 below about -103.97, and 1 / (1 + exp(-s)) is exactly 1 for s past ~37."""
    sims = np.array([[-1e6, -200.0, -110.5, -109.5, -104.0, -100.0, 37.5, 109.5, 110.5, 200.0, 1e6]], np.float32)
    sig = activate(sims, "sigmoid")[0]
    assert np.array_equal(sig[:5], np.zeros(5)) and np.array_equal(sig[6:], np.ones(5))
    assert 0.0 < sig[5] == np.float32(math.exp(-100.0))  # a subnormal float32, exp's own
    rel = activate(np.array([[0.0, -109.5, -110.5, -1e6, -5.0]], np.float32), "relative")[0]
    assert np.array_equal(rel[:4], [1.0, 0.0, 0.0, 0.0]) and rel[4] == np.float32(math.exp(-5.0))


def test_nearest_is_the_brute_force_argmin_ties_to_the_lower_centre(rng):
    from nsn_cli.engine.similarity import nearest

    x = rng.random((600, 9), dtype=np.float32)
    centres = rng.random((21, 9), dtype=np.float32)
    centres[7] = centres[3]  # a tie: the lower centre wins
    x[:5] = centres[3]
    labels, d2 = nearest(x, centres)
    exact = ((x[:, None, :].astype(np.float64) - centres[None].astype(np.float64)) ** 2).sum(axis=2)
    assert np.array_equal(labels, exact.argmin(axis=1)) and np.allclose(d2, exact.min(axis=1), atol=1e-5)
    assert np.array_equal(labels[:5], [3] * 5) and (labels != 7).all()


def test_take_rows_is_numpy_fancy_indexing(rng):
    source = rng.random((50, 7), dtype=np.float32)
    rows = rng.integers(0, 50, size=123)
    assert np.array_equal(em.take_rows(source, rows), source[rows])
    assert em.take_rows(source, rows[:0]).shape == (0, 7)


def _creation_case(rng, m, dims, duplicates, thinned, existing):
    x = rng.random((m, dims), dtype=np.float32)
    if duplicates:  # exact repeats: distance 0, ties between seeds
        x = x[rng.integers(0, max(1, m // 4), size=m)]
    may_start = rng.random(m) < 0.3 if thinned else None
    old = rng.random((7, dims), dtype=np.float32) if existing else None
    return x, may_start, old


@pytest.mark.parametrize("block", [1, 5, 64, 2048])
@pytest.mark.parametrize("duplicates, thinned, existing", [(False, False, False), (True, False, False),
                                                          (False, True, False), (True, True, True),
                                                          (False, False, True)])
def test_parallel_creation_pass_is_the_serial_pass(rng, monkeypatch, block, duplicates, thinned, existing):
    """The OCC pass (serial validation of the uncovered rows, parallel labelling) gives the
    serial kernel's bits, and both the fully sequential rule's filters and labels. (Blocks
    of any size take the OCC kernels here; by default small ones take the serial kernel.)"""
    monkeypatch.setattr(em, "_PARALLEL_MIN_ROWS", 1)
    x, may_start, old = _creation_case(rng, 350, 6, duplicates, thinned, existing)
    radius = 0.35
    serial = creation_pass(x, radius, block=block, may_start=may_start, existing=old, parallel=False)
    parallel = creation_pass(x, radius, block=block, may_start=may_start, existing=old, parallel=True)
    assert np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])
    ref_labels, ref_seeds = ref.sequential_creation(x, radius, may_start, old)
    assert np.array_equal(parallel[1], ref_seeds)
    assert np.array_equal(parallel[0], ref_labels)
    assert parallel[1].size > 3 and (not thinned or (parallel[0] == -1).any())  # the cases do what they say


@pytest.mark.parametrize("parallel", [False, True])
def test_creation_pass_edge_cases(rng, parallel):
    empty_labels, empty_seeds = creation_pass(np.empty((0, 4), np.float32), 0.5, parallel=parallel)
    assert empty_labels.size == 0 and empty_seeds.size == 0
    x = np.repeat(rng.random((5, 3), dtype=np.float32), 4, axis=0)  # 5 points, each 4 times in a row
    labels, seeds = creation_pass(x, 0.0, parallel=parallel)  # radius 0: exact copies join
    assert seeds.tolist() == [0, 4, 8, 12, 16] and labels.tolist() == [k for k in range(5) for _ in range(4)]
    labels, seeds = creation_pass(x, 0.0, may_start=np.zeros(20, bool), parallel=parallel)
    assert seeds.size == 0 and (labels == -1).all()  # nothing may start: everything stays
    # an earlier filter (distances by the matrix product, exact to ~1e-7) still takes its copies
    labels, seeds = creation_pass(x, 1e-3, may_start=np.zeros(20, bool), existing=x[:1], parallel=parallel)
    assert labels.tolist() == [0] * 4 + [-1] * 16
    labels, seeds = creation_pass(x[:1], 1.0, parallel=parallel)
    assert labels.tolist() == [0] and seeds.tolist() == [0]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("block", [3, 2048])
def test_creation_pass_cap_stops_at_the_same_count(rng, parallel, block):
    x = rng.random((500, 8), dtype=np.float32)  # radius 0.01: every row starts a filter
    with pytest.raises(FilterCapError) as caught:
        creation_pass(x, 0.01, block=block, max_new=40, parallel=parallel)
    assert caught.value.filters == 41 and caught.value.cap == 40


def test_thinned_starts_are_dp_means_of_the_drawn_rows(rng):
    """Rows that may not start a filter never decide where one starts: the filters a thinned
    pass starts are exactly DP-means over the drawn rows alone."""
    x = rng.random((3000, 5), dtype=np.float32)
    may_start = rng.random(3000) < 0.25
    labels, seeds = creation_pass(x, 0.3, may_start=may_start)
    drawn = np.flatnonzero(may_start)
    _, drawn_seeds = creation_pass(x[drawn], 0.3)
    assert np.array_equal(seeds, drawn[drawn_seeds])
    assert ((labels == -1) <= ~may_start).all()


def test_draw_candidates(rng):
    below = np.arange(10000)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    order, may_start = draw_candidates(below, 1.0, a)
    assert may_start is None and np.array_equal(order, below[b.permutation(below.size)])
    assert a.random() == b.random()  # share 1 draws nothing more: the paper's pass is unchanged
    order, may_start = draw_candidates(below, 0.25, np.random.default_rng(3))
    assert np.array_equal(order, below[np.random.default_rng(3).permutation(below.size)])
    assert abs(may_start.mean() - 0.25) < 0.02


def test_reference_scale_counts_do_not_grow_with_the_data(rng):
    """A fixed distribution (20 tight clusters and a wide background of lone points) at 2,000,
    8,000 and 32,000 points: the paper's rule starts a filter for nearly every lone point, so
    its count grows with the data; at the scale of 2,000 points (share 2,000 / n) the counts at
    8,000 and 32,000 agree, keep the 20 clusters and drop the lone points' filters (each holds
    less than one reference point's share)."""
    centres = rng.random((20, 8)) * 4

    def draw(n):
        tight = centres[rng.integers(0, 20, size=n)] + rng.normal(0, 0.05, size=(n, 8))
        wide = rng.random((n, 8)) * 4
        return np.where((rng.random(n) < 0.9)[:, None], tight, wide).astype(np.float32)

    def count(x, share=1.0):
        return fit_layer(x, -1.2, iterations=6, seed=1, max_filters=5000, share=share).mu.shape[0]

    reference = count(draw(2000))
    big = draw(32000)
    assert count(big) > 4 * reference  # the paper's EM: about one filter per lone point
    mid, top = count(draw(8000), 2000 / 8000), count(big, 2000 / 32000)
    assert 20 <= mid <= reference and 20 <= top <= reference
    assert max(mid, top) <= 1.5 * min(mid, top)


def test_reference_scale_and_floor():
    assert reference_scale(4000, 676_000, 169) == 1.0  # the reference size: the paper's EM
    assert reference_scale(4000, 16 * 676_000, 169) == pytest.approx(1 / 16)
    assert reference_scale(0, 16 * 676_000, 169) == 1.0  # 0: the paper's EM at any size
    assert [floor_count(s) for s in (1.0, 0.5, 1 / 16, 4000 / 60000, 0.3)] == [0, 2, 16, 15, 4]


def test_batched_e_step_matches_fully_sequential_rule(rng):
    x = rng.random((400, 4), dtype=np.float32)
    mu = x[:3].copy()
    sigma = np.array([0.3, 0.2, 0.25])
    alpha = -0.2
    labels, best = best_filter(x, mu, sigma)
    order = np.flatnonzero(best < alpha)[rng.permutation(np.count_nonzero(best < alpha))]
    new_labels, seeds = creation_pass(x[order], sigma_new(alpha))
    labels[order] = 3 + new_labels
    ref_labels, ref_new = ref.sequential_e_step(x, mu, sigma, alpha, order, sigma_new(alpha))
    assert [order[s] for s in seeds] == ref_new
    assert np.array_equal(labels, ref_labels)


def test_sigma_new_is_the_alpha_radius():
    alpha = -2.0
    s = sigma_new(alpha)
    mu = np.zeros(5)
    edge = np.zeros(5)
    edge[0] = s
    assert ref.sim(edge, mu, s) == pytest.approx(alpha)


@pytest.mark.parametrize("n, dims", [(200, 6), (9000, 6), (300, 70)])  # chunks of rows; filter by filter
def test_m_step(rng, n, dims):
    x = rng.random((n, dims), dtype=np.float32)
    labels = rng.integers(0, 5, size=n)
    labels[labels == 3] = 4  # filter 3 left empty
    mu, rms, counts = m_step(x, labels, 5)
    ref_mu, ref_rms, ref_counts = ref.m_step(x, labels, 5)
    assert np.array_equal(counts, ref_counts)
    assert np.allclose(mu, ref_mu, atol=1e-6) and np.allclose(rms, ref_rms, atol=1e-6)
    # rows labelled K are left out (the streamed E-step's candidates)
    skipped = labels.copy()
    skipped[::3] = 5
    sums, squares, kept = moments(x, skipped, 5)
    keep = skipped < 5
    assert np.array_equal(kept, np.bincount(labels[keep], minlength=5))
    assert np.allclose(sums, [x[keep & (labels == k)].sum(axis=0, dtype=np.float64) for k in range(5)])
    assert np.allclose(squares, [(np.float64(x[keep & (labels == k)]) ** 2).sum() for k in range(5)])
    numba.set_num_threads(1)
    try:
        assert all(np.array_equal(a, b) for a, b in zip(moments(x, skipped, 5), (sums, squares, kept)))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("n, dims", [(5000, 16), (3000, 891), (800, 3996), (777, 13)])
def test_m_step_with_the_row_norms_gives_the_same_bits(rng, n, dims):
    """The EM passes the norms it keeps to the M-step, which then reads ||x||^2 instead of
    summing it: the same sum, so the same bits as summed inline."""
    x = (rng.standard_normal((n, dims)) * 3.7).astype(np.float32)
    labels = rng.integers(0, 8, size=n)  # 7: a candidate, left out
    inline = moments(x, labels, 7)
    given = moments(x, labels, 7, row_norms(x))
    assert all(np.array_equal(a, b) for a, b in zip(inline, given))


def test_m_step_filter_groups_give_the_same_bits(rng):
    """One chunk of rows split into groups of filters, one task each (as many as threads):
    any number of groups gives the one-task bits, and the float64 reference sums."""
    x = rng.normal(size=(3000, 37)).astype(np.float32)
    labels = rng.integers(0, 9, size=x.shape[0])
    labels[::7] = 9  # left out
    bounds = np.array([0, x.shape[0]])
    results = []
    for groups in (1, 2, 3, 9, 10):
        out = np.zeros((1, 9, 37)), np.zeros((1, 9)), np.zeros((1, 9), dtype=np.int64)
        em._chunk_moments(x, labels, np.empty(0), False, bounds, groups, *out)
        results.append(out)
    assert all(np.array_equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    keep = labels < 9
    assert np.allclose(results[0][0][0], [x[keep & (labels == k)].sum(axis=0, dtype=np.float64) for k in range(9)])
    assert np.array_equal(results[0][2][0], np.bincount(labels[keep], minlength=9))


def _total_sim(x, mu, sigma, labels):
    d2 = ((np.float64(x) - np.float64(mu[labels])) ** 2).sum(axis=1)
    return float(np.sum(-np.log(math.sqrt(2 * math.pi) * sigma[labels]) - d2 / (2 * sigma[labels] ** 2)))


def test_em_step_without_creation_never_lowers_total_sim(rng):
    centres = rng.random((4, 8)) * 3
    x = (centres[rng.integers(0, 4, 600)] + rng.normal(size=(600, 8)) * 0.3).astype(np.float32)
    mu = x[:6].copy()
    sigma = np.full(6, 1.0)
    labels, _ = best_filter(x, mu, sigma)
    previous = _total_sim(x, mu, sigma, labels)
    for _ in range(6):
        mu, sigma, counts, labels, stats = em_step(x, mu, sigma, alpha=-np.inf, sigma_floor=1e-6,
                                                   rng=rng, previous_labels=labels)
        assert stats.created == 0
        now = _total_sim(x, mu, sigma, labels)
        assert now >= previous - 1e-6 * abs(previous)
        labels, _ = best_filter(x, mu, sigma)
        after_e = _total_sim(x, mu, sigma, labels)
        assert after_e >= now - 1e-6 * abs(now)
        previous = after_e


def test_em_step_drops_empty_and_floors_sigma(rng):
    x = np.repeat(rng.random((3, 4), dtype=np.float32), 10, axis=0)  # 3 exact clusters
    mu = np.concatenate([x[[0, 10, 20]], np.full((1, 4), 50.0, np.float32)])  # 4th filter far away
    mu2, sigma2, counts, labels, stats = em_step(x, mu, np.ones(4), alpha=-np.inf, sigma_floor=0.01,
                                                 rng=rng)
    assert stats.dropped == 1 and mu2.shape[0] == 3
    assert counts.tolist() == [10, 10, 10]
    assert np.allclose(sigma2, 0.01)


def test_fit_layer_is_reproducible_and_creates_filters(rng):
    x = (rng.random((3000, 6)) ** 3).astype(np.float32)
    a = fit_layer(x, -0.5, iterations=5, seed=7, max_filters=500)
    b = fit_layer(x, -0.5, iterations=5, seed=7, max_filters=500)
    assert a.mu.shape[0] > 3
    assert np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma)
    assert sum(a.counts) == 3000


def test_fit_layer_one_filter_when_radius_is_huge(rng):
    x = rng.random((100, 3), dtype=np.float32)
    fit = fit_layer(x, -10.0, iterations=3, seed=0, max_filters=10)
    assert fit.mu.shape[0] == 1
    assert np.allclose(fit.mu[0], x.mean(axis=0), atol=1e-6)


def test_geometry():
    arch = parse_arch("mnist")
    assert map_sizes(arch, 28, 28) == [(28, 28), (13, 13), (6, 6), (1, 1)]
    assert map_sizes(parse_arch("lfw64"), 64, 64)[-1] == (1, 1)
    with pytest.raises(NsnError, match="reaches 1x1 from sizes 28 to 35"):
        check_reaches_one(arch, 40, 40)
    with pytest.raises(NsnError, match="not a layer"):
        parse_arch("4x4-2")


def test_decode_patches_matches_reference(rng):
    maps = rng.random((3, 2, 2, 5), dtype=np.float32)
    mu = rng.random((5, 4), dtype=np.float32)
    sigma = rng.uniform(0.1, 0.5, size=5)
    ours = decode_patches(maps, mu, sigma, delta1=3.0, delta2=0.4, delta3=1.5, draws=3, seed=11,
                          first_sample=4, stream=2)
    expected = ref.decode_step(maps, mu, sigma, 3.0, 0.4, 1.5, 3, 11, 4, 2)
    assert np.allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("delta1", [3.0, 60.0])
def test_expected_weights_decode_matches_reference_and_is_the_limit_of_many_draws(rng, delta1):
    maps = rng.random((3, 2, 2, 5), dtype=np.float32)
    mu = rng.random((5, 4), dtype=np.float32)
    sigma = rng.uniform(0.1, 0.5, size=5)
    kw = dict(delta1=delta1, delta3=1.5, seed=11, first_sample=4, stream=2)
    ours = decode_patches(maps, mu, sigma, delta2=0.4, draws=0, **kw)
    assert np.allclose(ours, ref.decode_step(maps, mu, sigma, delta1, 0.4, 1.5, 0, 11, 4, 2), atol=1e-5)
    # without noise it is deterministic: the seed does not matter
    quiet = decode_patches(maps, mu, sigma, delta2=0.0, draws=0, **kw)
    assert np.array_equal(quiet, decode_patches(maps, mu, sigma, delta2=0.0, draws=0, **{**kw, "seed": 99}))
    many = decode_patches(maps, mu, sigma, delta2=0.0, draws=4000, **kw)
    assert np.allclose(many, quiet, atol=0.03)


def test_one_draw_noise_matches_literal_sampler_in_mean_and_variance(rng):
    # literal Eq. 5: delta3 * sum_j w_j (mu_j + delta2 sigma_j M_j) with independent M_j
    k, d, n = 4, 3, 40000
    mu = rng.random((k, d), dtype=np.float32)
    sigma = np.array([0.2, 0.5, 0.3, 0.4])
    maps = np.tile(np.array([0.5, 0.2, 0.9, 0.1], np.float32), (n, 1, 1, 1))
    ours = decode_patches(maps, mu, sigma, delta1=4.0, delta2=1.0, delta3=1.0, draws=2, seed=1,
                          first_sample=0, stream=0).reshape(n, d)
    p = np.exp(4.0 * maps[0, 0, 0] - 4.0 * maps[0, 0, 0].max())
    p /= p.sum()
    counts = rng.multinomial(2, p, size=n) / 2.0
    literal = counts @ mu + np.einsum("nk,nkd->nd", counts * sigma, rng.normal(size=(n, k, d)))
    # means within 4 standard errors, variances within 4%
    se = np.sqrt(literal.var(axis=0) / n) * np.sqrt(2)
    assert np.all(np.abs(ours.mean(axis=0) - literal.mean(axis=0)) < 4 * se)
    assert np.allclose(ours.var(axis=0), literal.var(axis=0), rtol=0.04)


def test_random_streams_do_not_depend_on_batching():
    whole = normal_draws(5, 0, 10, 3, stream=1)
    parts = np.concatenate([normal_draws(5, 0, 4, 3, stream=1), normal_draws(5, 4, 6, 3, stream=1)])
    assert np.array_equal(whole, parts)
    u = uniform_draws(5, 0, 20000, 1, stream=2)
    assert 0.49 < u.mean() < 0.51 and u.min() >= 0 and u.max() < 1
    z = normal_draws(9, 0, 20000, 1, stream=3)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_no_hard_coded_fastmath():
    engine = Path(__file__).resolve().parents[1] / "nsn_cli"
    offenders = [p.name for p in engine.rglob("*.py") if p.name != "config.py" and re.search(r"fastmath\s*=", p.read_text())]
    assert offenders == []


def test_fused_decode_equals_decode_then_stitch(rng):
    from nsn_cli.engine.decode import decode_maps

    maps = rng.random((4, 3, 3, 6), dtype=np.float32)
    mu = rng.random((6, 3 * 3 * 2), dtype=np.float32)
    sigma = rng.uniform(0.1, 0.5, size=6)
    kw = dict(delta1=5.0, delta2=0.3, delta3=1.2, draws=2, seed=3, first_sample=7, stream=1)
    fused = decode_maps(maps, mu, sigma, patch=3, stride=2, channels=2, **kw)
    two_step = ref.stitch(decode_patches(maps, mu, sigma, **kw), 3, 2, 2)
    assert np.allclose(fused, two_step, atol=1e-6)


@pytest.mark.parametrize("draws, delta2, delta3", [(0, 0.0, 1.0), (1, 0.0, 1.0), (0, 0.0, 1.2), (1, 0.3, 1.0)])
def test_fused_decode_is_decode_then_stitch_to_the_bit(rng, draws, delta2, delta3):
    """Where a patch is one filter's mean (a single draw, or one filter within a sharp
    softmax's cutoff) the fused decode adds the mean itself: the same bits as writing the
    patch and stitching, -0.0 means included."""
    from nsn_cli.engine.decode import decode_maps
    from nsn_cli.engine.patches import fold_patches, inverse_coverage

    maps = rng.random((5, 4, 4, 7), dtype=np.float32)
    mu = rng.normal(size=(7, 3 * 3 * 2)).astype(np.float32)
    mu[2, :4] = -0.0
    sigma = rng.uniform(0.1, 0.5, size=7)
    for delta1 in (400.0, 20.0):  # most positions a single filter, then a few mixed
        kw = dict(delta1=delta1, delta2=delta2, delta3=delta3, draws=draws, seed=3, first_sample=7, stream=1)
        fused = decode_maps(maps, mu, sigma, patch=3, stride=2, channels=2, **kw)
        # the engine's fold (summing in the fused decode's order), then the mean over coverage
        two_step = fold_patches(decode_patches(maps, mu, sigma, **kw), 3, 2, 2) * inverse_coverage(9, 9, 3, 2)[..., None]
        assert np.array_equal(fused.view(np.uint32), two_step.view(np.uint32)), delta1


def _quantile_like_knots(rng, channels: int, knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots as a calibration's look: crowded around an atom (gaps down to one float32 step),
    a few denormal ones, flat stretches of the target."""
    source = np.empty((channels, knots), np.float32)
    for c in range(channels):
        atom = np.float32(rng.uniform(0.01, 0.1))
        crowd = atom + np.arange(knots // 2, dtype=np.float32) * np.float32(rng.choice([1e-9, 1e-7, 1e-5]))
        spread = np.sort(rng.uniform(0.0, 1.0, knots - knots // 2 - 3)).astype(np.float32)
        row = np.unique(np.concatenate([[0.0, 1e-45, 3e-45], crowd, spread]).astype(np.float32))
        row = row[:knots] if len(row) >= knots else np.concatenate(
            [row, row[-1] + np.float32(1e-3) * np.arange(1, knots - len(row) + 1, dtype=np.float32)])
        source[c] = row
    target = np.sort(rng.random((channels, knots)), axis=1).astype(np.float32)
    target[:, knots // 4 : knots // 2] = target[:, knots // 4 : knots // 4 + 1]  # a flat stretch
    return source, np.maximum.accumulate(target, axis=1)


def test_channel_map_bounds_hold_and_the_lookup_is_np_interp(rng):
    """Every value (inside, on a knot, on a bucket edge, below, above, crowded) maps exactly
    as np.interp maps it, and into its bucket's [lower, upper]."""
    from nsn_cli.engine.lut import ChannelMap, bucket_of, interp_channels

    source, target = _quantile_like_knots(rng, 5, 217)
    table = ChannelMap.of(source, target, buckets=16)
    values = [rng.uniform(-0.2, 1.2, (4000, 5)), source.T[rng.integers(0, 217, 3000)], np.full((10, 5), 1e-45),
              np.tile(source[:, :1].T, (3, 1)) - 1, np.tile(source[:, -1:].T, (3, 1)) + 1]
    edges = table.origin + np.arange(17)[:, None] / table.scale  # bucket edges, and a step either side
    values += [edges, np.nextafter(edges.astype(np.float32), np.float32(-1)), np.nextafter(edges.astype(np.float32), 2)]
    values.append(source.T[108] + (source.T[109] - source.T[108]) * rng.random((2000, 5)))  # inside the crowd
    values = np.concatenate([np.asarray(v, np.float32) for v in values])
    mapped = interp_channels(values, source, target)
    expected = np.stack([np.interp(values[:, c], source[c], target[c]) for c in range(5)], axis=1).astype(np.float32)
    assert np.array_equal(mapped, expected) and not np.isnan(mapped).any()
    for c in range(5):
        buckets = np.array([bucket_of(float(x), c, table.origin, table.scale, 16) for x in values[:, c]])
        assert np.all(table.lower[c, buckets] <= mapped[:, c]) and np.all(mapped[:, c] <= table.upper[c, buckets])
        assert np.all(table.upper[c, buckets] - table.lower[c, buckets] < target[c, -1] - target[c, 0])  # they bound


def test_channel_map_reach_table_holds(rng):
    """A value whose map (as np.interp gives it) reaches a level is at or above the level's
    reach, and the reach rules out values (it is not all -inf)."""
    from nsn_cli.engine.lut import ChannelMap, interp_channels

    source, target = _quantile_like_knots(rng, 5, 217)
    table = ChannelMap.of(source, target, buckets=16)
    values = np.concatenate([rng.uniform(-0.2, 1.2, (4000, 5)), source.T, source.T[108:109] + 1e-9,
                             table.reach, np.nextafter(table.reach, np.float32(-1))]).astype(np.float32)
    values = values[np.isfinite(values).all(axis=1)]
    mapped = interp_channels(values, source, target).astype(np.float64)
    assert table.levels[0] == -np.inf and np.all(np.diff(table.levels) > 0)
    for g, level in enumerate(table.levels):
        reaches = mapped >= level
        assert np.all(values[reaches] >= np.broadcast_to(table.reach[g], values.shape)[reaches]), g
    assert np.isinf(table.reach[0]).all() and np.mean(values >= table.reach[len(table.levels) // 2]) < 0.9


@pytest.mark.parametrize("draws, delta2", [(0, 0.0), (0, 0.4), (1, 0.0), (3, 0.2)])
def test_decoding_through_an_input_map_equals_mapping_first(rng, draws, delta2):
    """decode_maps with input_map (only the channels that can reach the cutoff are mapped) gives
    the bits of mapping every value first, at a sharp softmax where most channels are left out
    and at a soft one where none is."""
    from nsn_cli.engine.decode import decode_maps
    from nsn_cli.engine.lut import ChannelMap, interp_channels

    source, target = _quantile_like_knots(rng, 12, 65)
    maps = rng.random((6, 4, 4, 12), dtype=np.float32)
    maps[0, 0, 0] = source[:, 3]  # on knots
    maps[0, 0, 1] = -1.0  # below every knot
    maps[1, 1, 1, 2] = source[2, 40] + 1e-9  # in the crowd
    maps[2, 0, 0] = -rng.random(12, dtype=np.float32)  # the largest a tie of -0.0 and +0.0 (in float order)
    maps[2, 0, 0, [3, 5]] = -0.0, 0.0
    maps[2, 0, 1, 4] = np.nan  # a NaN: every channel mapped, the softmax as after mapping first
    mu = rng.random((12, 2 * 2 * 3), dtype=np.float32)
    sigma = rng.uniform(0.1, 0.5, size=12)
    table = ChannelMap.of(source, target)
    for delta1 in (400.0, 200.0, 3.0, 0.0):
        kw = dict(patch=2, stride=2, channels=3, delta1=delta1, delta2=delta2, delta3=1.1, draws=draws, seed=5,
                  first_sample=9, stream=1)
        fused = decode_maps(maps, mu, sigma, input_map=table, **kw)
        first = decode_maps(interp_channels(maps, source, target), mu, sigma, **kw)
        assert np.array_equal(fused, first, equal_nan=True), delta1


def test_few_draws_come_from_the_same_streams_as_many(rng):
    """A prior's few draws (drawn on one thread) are rows of a large block (drawn in parallel)."""
    from nsn_cli.engine.decode import SERIAL_DRAWS

    many = uniform_draws(3, 0, SERIAL_DRAWS, 3, stream=4)
    assert np.array_equal(uniform_draws(3, 100, 7, 3, stream=4), many[100:107])
    assert np.array_equal(normal_draws(3, 50, 2, 5, stream=1), normal_draws(3, 0, SERIAL_DRAWS, 5, stream=1)[50:52])


def test_masked_similarity(rng):
    from nsn_cli.engine.similarity import masked_similarity

    x = rng.random((30, 8), dtype=np.float32)
    mu = rng.random((5, 8), dtype=np.float32)
    sigma = rng.uniform(0.3, 1.0, size=5)
    full = masked_similarity(x, np.ones_like(x), mu, sigma)
    assert np.allclose(full, ref.sim_matrix(x, mu, sigma), atol=1e-4)
    known = (rng.random((30, 8)) < 0.5).astype(np.float32)
    known[:, 0] = 1
    got = masked_similarity(x, known, mu, sigma)
    for i in range(30):
        k = known[i] > 0
        for j in range(5):
            d2 = np.sum((np.float64(x[i, k]) - mu[j, k]) ** 2) * 8 / k.sum()
            expected = -math.log(math.sqrt(2 * math.pi) * sigma[j]) - d2 / (2 * sigma[j] ** 2)
            assert got[i, j] == pytest.approx(expected, abs=1e-4)


def test_cached_kernels_go_when_a_source_they_may_inline_changes(tmp_path):
    """numba's cache checks a kernel's own file only; forget_stale_kernels removes every cache
    file under a folder once any source there, or in a folder it depends on, changed."""
    import os

    from nsn_cli.kernel_cache import forget_stale_kernels

    root, engine = tmp_path / "tests", tmp_path / "engine"
    for folder in (root / "__pycache__", root / "sub" / "__pycache__", engine):
        folder.mkdir(parents=True)
    (root / "kernels.py").write_text("x = 1\n")
    (engine / "inlined.py").write_text("y = 1\n")

    def cache_files() -> list[str]:
        for name in ("kernels.f-1.py311.nbi", "kernels.f-1.py311.1.nbc"):
            (root / "__pycache__" / name).write_bytes(b"cached")
        (root / "sub" / "__pycache__" / "a.g-2.py311.nbi").write_bytes(b"cached")
        (root / "__pycache__" / "kernels.cpython-311.pyc").write_bytes(b"bytecode")
        return sorted(p.name for p in root.rglob("*.nb[ic]"))

    cache_files()
    assert forget_stale_kernels(root, depends=(engine,)) == 3  # no record yet: start clean
    assert list(root.rglob("*.nb[ic]")) == [] and (root / "__pycache__" / "kernels.cpython-311.pyc").exists()
    kept = cache_files()
    assert forget_stale_kernels(root, depends=(engine,)) == 0  # nothing changed
    assert sorted(p.name for p in root.rglob("*.nb[ic]")) == kept
    stat = (engine / "inlined.py").stat()
    os.utime(engine / "inlined.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # an inlined module edited
    assert forget_stale_kernels(root, depends=(engine,)) == 3
    cache_files()
    (root / "kernels.py").write_text("x = 22\n")  # the folder's own source
    assert forget_stale_kernels(root, depends=(engine,)) == 3
    cache_files()
    (root / "new.py").write_text("z = 1\n")  # a module added
    assert forget_stale_kernels(root, depends=(engine,)) == 3
