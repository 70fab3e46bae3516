"""The fast path (avsl_core.metrics_fast): bit for bit the exact path of avsl_core.metrics_maps, on maps
built to hit every shortcut (near-ties, exact ties at the median, plateaus at the extremes, constant maps,
empty ground truth), and its helpers against their plain definitions."""
from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from avsl_core import metrics as M
from avsl_core import metrics_fast as FP
from avsl_core import metrics_fast_ties as FT


def _exact_bits(maps, p, tau=None):
    return np.packbits(M.as_rows(M.binarize(M.prepare(torch.as_tensor(maps), p, tau), p)), axis=1)


# ----------------------------------------------------------------------------- upsampling and the fast path
@pytest.mark.parametrize("mode", M.UPSAMPLERS)
def test_upsample_matrices_are_the_kernel(mode):
    rng = np.random.default_rng(len(mode))
    m = torch.from_numpy(rng.standard_normal((6, 14, 11)).astype(np.float32))
    uh, uw = M.upsample_matrices(mode, 14, 11)
    assert uh.shape == (224, 14) and uw.shape == (224, 11)
    assert torch.allclose(uh.sum(1), torch.ones(224, dtype=torch.float64), atol=1e-12)  # a constant stays put
    exact = M.upsample(m, mode)
    via = (uh @ m.double() @ uw.T).float()
    assert (via != exact).float().mean() < 1e-3 and torch.allclose(via, exact, atol=1e-6)  # last-bit ties only
    f32 = M._interpolate(m[:, None], mode, (224, 224))[:, 0]  # torch's float32 kernel: a few ulps away
    assert (f32 - exact).abs().max() <= 8 * 2 ** -24 * 4 * m.abs().max()
    fast = M.upsample_fast(m, mode)
    op = M._fast_op(mode, 14, 11, 224)
    assert ((fast - exact).abs().amax((1, 2)) <= op.err * m.abs().amax((1, 2))).all()  # the bound the guard uses
    c = torch.full((2, 14, 11), 0.3)
    assert torch.equal(M.upsample(c, mode), torch.full((2, 224, 224), 0.3))  # exact ties survive


def _tie_heavy_maps(rng, n, name):
    maps = rng.standard_normal((n, 14, 14)).astype(np.float32)
    maps[:8] = np.round(maps[:8] * 2) / 2  # plateaus: ties at the median
    maps[8] = 0.25  # constant
    maps[9, :, 7:] = maps[9, :, :7]  # repeated halves
    maps[10] = np.float32(1e-3) * maps[10]  # tiny range: normalisation rounds hard
    if name == "acl":
        maps = 1 / (1 + np.exp(-maps))
        maps[11, :7] = 0.5  # a flat region exactly at the fixed threshold
    return maps


@pytest.mark.parametrize("name", sorted(M.PROTOCOLS))
def test_fast_path_equals_exact_path(name):
    p = M.PROTOCOLS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()) + 1)
    maps = torch.from_numpy(_tie_heavy_maps(rng, 48, name))
    st = {}
    fast = M.binarize_packed(maps, p, chunk=16, stats=st)
    exact = np.packbits(M.as_rows(M.binarize(M.prepare(maps, p), p)), axis=1)
    bad = np.flatnonzero((fast != exact).any(1))
    assert len(bad) == 0, f"maps {bad} differ"
    # every route is exercised: plain fast maps, near-ties settled from exact values, whole exact maps
    assert st["maps"] == 48 and st["clean"] > 10 and st["near_tie"] > 0
    assert st["exact"] >= (0 if name == "acl" else 1)  # the constant map
    assert torch.equal(M.binarize_fast(maps[:12], p), M.binarize(M.prepare(maps[:12], p), p))


def test_fast_path_score_first_tau_and_other_sizes():
    rng = np.random.default_rng(7)
    cos = torch.from_numpy(np.tanh(rng.standard_normal((24, 7, 9))).astype(np.float32))
    p = M.PROTOCOLS["slavc"]
    for tau, maps in ((None, cos), (0.07, cos / 0.07)):  # SLAVC's absolute score of cos or of cos/τ
        exact = np.packbits(M.as_rows(M.binarize(M.prepare(maps, p, tau), p)), axis=1)
        assert np.array_equal(M.binarize_packed(maps, p, tau), exact)
    q = replace(M.PROTOCOLS["official"], size=64)
    exact = np.packbits(M.as_rows(M.binarize(M.prepare(cos, q), q)), axis=1)
    assert np.array_equal(M.binarize_packed(cos, q), exact)


def test_ciou_fast_and_packed_ground_truth():
    boxes = [[(0.1, 0.1, 0.6, 0.5), (0.4, 0.3, 0.9, 0.95)], [], [(-0.2, 0.5, 0.3, 1.4)], [(0.5, 0.5, 0.5, 0.9)]]
    b, v = M.pad_boxes(boxes)
    g1, _ = M.gt_levels(b, v)
    assert np.array_equal(M.gt_union_packed(b, v), np.packbits(g1.reshape(4, -1), axis=1))
    maps = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 14, 14)).astype(np.float32))
    ref = M.ciou_from_levels(M.binarize(M.prepare(maps, "ezvsl"), "ezvsl"), g1, g1).numpy()
    got = M.ciou_from_packed(M.binarize_packed(maps, "ezvsl"), M.gt_union_packed(b, v)).numpy()
    np.testing.assert_array_equal(got, ref)
    assert got[1] == 0.0 and got[3] == 0.0  # empty GT (no box; a zero-width box): 0 for a non-empty map
    for kernel in (True, False):
        np.testing.assert_array_equal(FP.ciou_packed_boxes(M.binarize_packed(maps, "ezvsl"), b, v, kernel=kernel), ref)


# ----------------------------------------------------------------------------- the shortcuts, one by one
def test_ties_at_the_median():
    """Exact ties at rank N//2: a plateau straddling the median (many tied pixels, more than the near-tie
    window: the exact path), two tied source values (a few tied pixels: settled from exact values), and
    a map whose two halves are mirror images (every value twice)."""
    rng = np.random.default_rng(11)
    maps = rng.standard_normal((12, 14, 14)).astype(np.float32)
    for i in range(4):  # a plateau at the median value, half the map above it, half below
        maps[i, :, :7] = -1.0 - rng.random((14, 7))
        maps[i, :, 7:] = 1.0 + rng.random((14, 7))
        maps[i, 5:9, 5:9] = 0.25 * i
    maps[4:8, 7, 7] = maps[4:8, 7, 8]  # two equal neighbours near the middle
    maps[8:12, :, 7:] = maps[8:12, :, 6::-1]  # mirror halves: every value occurs twice
    for name in ("ezvsl", "official", "lvs", "slavc", "ezvsl_val"):
        p = M.PROTOCOLS[name]
        st = {}
        assert np.array_equal(M.binarize_packed(maps, p, stats=st), _exact_bits(maps, p)), name
        assert st["near_tie"] + st["exact"] > 0


def test_median_plateau_strict_vs_non_strict():
    """Nearest upsampling of a 2×2 map: a quarter of the pixels share each value, so the value at rank
    N//2 is held by N/4 pixels; '>=' keeps them, '>' drops them (cf. the hand-worked quadrant test)."""
    m = np.array([[[3.0, 0.0], [2.0, 1.0]]], np.float32)
    ge = M.Protocol("nearest_ge", "nearest", "minmax", strict=False)
    gt = replace(ge, name="nearest_gt", strict=True)
    for p, on in ((ge, 2), (gt, 1)):
        bits = M.binarize_packed(m, p)
        assert np.array_equal(bits, _exact_bits(m, p))
        assert M.popcount_packed(bits)[0] == on * 224 * 224 // 4


def test_empty_ground_truth_and_empty_prediction():
    """cIoU of the fast path with an empty GT is 0 for a non-empty prediction, and 0/0 = NaN when the
    prediction is empty too (a constant map under '>': nothing is above the median)."""
    maps = np.stack([np.random.default_rng(5).standard_normal((14, 14)), np.full((14, 14), 0.7)]).astype(np.float32)
    b, v = M.pad_boxes([[], []])
    g = M.gt_union_packed(b, v)
    for name, want in (("ezvsl", [0.0, 0.0]), ("official", [0.0, np.nan])):
        got = M.ciou_from_packed(M.binarize_packed(maps, name), g).numpy()
        g1, g2 = M.gt_levels(b, v)
        ref = M.ciou_from_levels(M.binarize(M.prepare(torch.from_numpy(maps), name), name), g1, g2).numpy()
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, want)
        for kernel in (True, False):  # counted inside the boxes (no box: nothing), or on gt_union_packed
            np.testing.assert_array_equal(FP.ciou_packed_boxes(M.binarize_packed(maps, name), b, v, kernel=kernel),
                                          want)


@pytest.mark.parametrize("mode", M.UPSAMPLERS)
def test_exact_min_max_is_the_upsampled_extremes(mode):
    """The exact extremes from a few rows and pixels equal those of the whole exact map, plateaus at the
    extremes (the exact map's fallback) and constant maps included."""
    rng = np.random.default_rng(len(mode) + 3)
    m = rng.standard_normal((24, 14, 14)).astype(np.float32)
    m[:6] = np.round(m[:6])  # ties at the extremes
    m[6] = 0.5  # constant
    m[7, 3:9, 3:9] = m[7].max() + 1  # a plateau at the maximum
    m[8] *= np.float32(1e-3)
    op = FP._fast_op(mode, 14, 14, 224)
    eps = op.err * np.abs(m.reshape(len(m), -1)).max(1).astype(np.float64) + 1e-30
    lo, hi = FT._exact_min_max(m, FP._row_stage(m, op), eps, op)
    u = M.upsample(torch.from_numpy(m), mode).reshape(len(m), -1)
    np.testing.assert_array_equal(lo, u.amin(1).numpy())
    np.testing.assert_array_equal(hi, u.amax(1).numpy())


@pytest.mark.parametrize("size", [50176, 50177, 64])
def test_band_scan_is_flatnonzero(size):
    rng = np.random.default_rng(size)
    ge = rng.random((3, size)) < 0.6
    gt = ge & (rng.random((3, size)) < 0.98)
    gt[1] = ge[1]  # an empty band
    ge[2, :40] = True  # a dense run
    gt[2, :40] = False
    got = FP._band_pixels(ge, gt, np.empty_like(ge))
    np.testing.assert_array_equal(got, np.flatnonzero(ge & ~gt))


def test_blocks_chunks_and_workers(monkeypatch):
    """Blocks and chunks that do not divide the batch, and two worker threads, change nothing."""
    monkeypatch.setattr(FP, "_BLOCK", 16)
    rng = np.random.default_rng(9)
    maps = rng.standard_normal((45, 14, 14)).astype(np.float32)
    maps[::7] = np.round(maps[::7])
    for name in ("ezvsl", "acl"):
        p = M.PROTOCOLS[name]
        x = 1 / (1 + np.exp(-maps)) if name == "acl" else maps
        want = _exact_bits(x, p)
        for chunk, workers in ((3, 1), (5, 2), (8, 3)):
            assert np.array_equal(M.binarize_packed(x, p, chunk=chunk, workers=workers), want), (name, chunk)


def test_packed_union_with_overlapping_and_degenerate_boxes():
    rng = np.random.default_rng(4)
    boxes = []
    for i in range(30):
        k = i % 7
        xy = rng.uniform(-0.2, 1.0, (k, 2))
        boxes.append([tuple(bx) for bx in np.concatenate([xy, xy + rng.uniform(-0.1, 0.7, (k, 2))], 1)])
    boxes[3] = [(0.2, 0.2, 0.6, 0.6)] * 3  # the same box three times
    boxes[4] = [(0.5, 0.1, 0.5, 0.9), (0.1, 0.5, 0.9, 0.5)]  # zero-width and zero-height
    b, v = M.pad_boxes(boxes)
    g1, _ = M.gt_levels(b, v)
    assert np.array_equal(M.gt_union_packed(b, v), np.packbits(g1.reshape(len(boxes), -1), axis=1))
