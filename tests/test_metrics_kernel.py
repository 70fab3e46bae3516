"""The compiled kernel of the fast path (avsl_core.metrics_kernel): bit for bit the numpy path and the exact
path on random and adversarial maps, with its settlement and with _settle's, its per-chunk outputs equal to
_bracket_chunk's, its fast values within the bound the exactness argument uses, its selection equal to
np.partition, its exact values, extremes and normalisation equal to the exact path's, its near-tie clusters
equal to _settle's, and its box counts equal to ciou_from_packed on gt_union_packed."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from avsl_core import metrics as M  # noqa: E402
from avsl_core import metrics_fast as FP  # noqa: E402
from avsl_core import metrics_fast_ties as FT  # noqa: E402
from avsl_core import metrics_kernel as K  # noqa: E402

if not K.HAVE_NUMBA:  # pragma: no cover
    pytest.skip("numba is not usable", allow_module_level=True)


def _exact_bits(maps, p, tau=None):
    return np.packbits(M.as_rows(M.binarize(M.prepare(torch.as_tensor(maps), p, tau), p)), axis=1)


def _adversarial(rng, n, h, w, name):
    """Random maps, then: integer-valued maps (many exact ties at the median), constant maps, a single
    non-zero pixel, repeated halves (every value twice), a tiny range, and for the fixed threshold a flat
    region exactly at it. All finite."""
    maps = rng.standard_normal((n, h, w)).astype(np.float32)
    maps[0:6] = np.round(maps[0:6] * 2)             # ties at the median
    maps[6] = 0.25                                  # constant
    maps[7] = 0.0                                   # all zeros but one pixel
    maps[7, h // 2, w // 3] = 1.0
    maps[8] = 0.0
    maps[8, 0, 0] = -2.0
    maps[9, :, w - w // 2:] = maps[9, :, :w // 2][:, ::-1]  # mirror halves
    maps[10] *= np.float32(1e-3)                    # tiny range
    maps[11] = np.round(maps[11])                   # small integers: plateaus
    if name == "acl":
        maps = (1 / (1 + np.exp(-maps))).astype(np.float32)
        maps[12, : h // 2] = 0.5                    # a flat region at the fixed threshold
        maps[13] = 0.5                              # all of it
        maps[14, :, : w // 2] = np.float32(0.5) + np.float32(2 ** -24) * rng.integers(-2, 3, (h, w // 2))
    return maps


@pytest.mark.parametrize("name", sorted(M.PROTOCOLS))
@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (12, 9)])
def test_kernel_path_equals_numpy_path_and_exact_path(name, shape, monkeypatch):
    p = M.PROTOCOLS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    maps = _adversarial(rng, 40, *shape, name)
    want = _exact_bits(maps, p)
    st_np: dict = {}
    np.testing.assert_array_equal(M.binarize_packed(maps, p, stats=st_np, kernel=False), want)
    sts = []
    for settle in (True, False):  # settled in the kernel, or the kernel's bands by _settle
        monkeypatch.setattr(FP, "KERNEL_SETTLE", settle)
        st: dict = {}
        got = M.binarize_packed(maps, p, stats=st, kernel=True)
        bad = np.flatnonzero((got != want).any(1))
        assert len(bad) == 0, f"{name} {shape} settle={settle}: maps {bad} differ"
        sts.append(st)
    assert sts[0] == sts[1]  # the same maps clean, near-tied and exact either way
    assert sts[0]["maps"] == 40 and sts[0]["clean"] > 10


def test_kernel_other_sizes_and_score_first():
    """Evaluation sizes whose S is not a multiple of 8 (the row-block pass; a partial last byte) or of 32 (the
    row pass's 8-pixel groups), and SLAVC's score of cos and of cos/τ."""
    rng = np.random.default_rng(3)
    cos = np.tanh(rng.standard_normal((24, 7, 9))).astype(np.float32)
    cos[:4] = np.round(cos[:4] * 4) / 4
    for size in (50, 64, 30, 100, 72):
        for name in ("official", "ezvsl_val", "acl"):
            q = replace(M.PROTOCOLS[name], size=size)
            x = (1 / (1 + np.exp(-3 * cos))).astype(np.float32) if q.threshold is not None else cos
            np.testing.assert_array_equal(M.binarize_packed(x, q, kernel=True), _exact_bits(x, q),
                                          err_msg=f"{size} {name}")
    p = M.PROTOCOLS["slavc"]
    for tau, maps in ((None, cos), (0.07, cos / np.float32(0.07))):
        np.testing.assert_array_equal(M.binarize_packed(maps, p, tau, kernel=True), _exact_bits(maps, p, tau))


# ----------------------------------------------------------------------------- the kernel against _bracket_chunk
def _kernel_chunk(m, ui, p, op):
    """median_maps without settlement on maps m (or fast maps ui), its outputs shaped as _bracket_chunk's."""
    B = len(m) if not len(ui) else len(ui)
    S = p.size
    k = S * S // 2
    taps = K.identity_taps(S) if len(ui) else FP._kernel_taps(op.mode, m.shape[1], m.shape[2], S)
    pk = np.zeros((B, (S * S + 7) // 8), np.uint8)
    cap = B * FP._BAND_MAX + FP._BAND_MAX
    bpos, bval = np.empty(cap, np.int64), np.empty(cap, np.float32)
    starts = np.empty(B + 1, np.int64)
    a, b = np.empty(B, np.float32), np.empty(B, np.float32)
    nbl, ok, state = np.empty(B, np.int64), np.empty(B, bool), np.empty(B, np.int8)
    done = K.median_maps(m, ui, taps.fast, taps.tags, taps.exact, (k,) + FP._sub_ranks(S, k), (1, 2, FP._SUB_STEP),
                         FP._BAND_MAX, False, np.zeros(B), np.zeros(B), FT._CLUSTER_WIN, FP._norm_args(p, None), pk,
                         bpos, bval, starts, a, b, nbl, ok, state)
    assert done == B and (state == K.BAND).all()
    rows = np.repeat(np.arange(B), np.diff(starts))
    e = starts[B]
    return pk, (rows, bpos[:e], bval[:e]), a, b, nbl, ok


def _assert_chunks_equal(got, ref):
    pk, (rows, pos, vals), a, b, nbl, ok = got
    rpk, (rrows, rpos, rvals), ra, rb, rnbl, rok = ref
    np.testing.assert_array_equal(ok, rok)
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_array_equal(b, rb)
    np.testing.assert_array_equal(nbl, rnbl)
    np.testing.assert_array_equal(pk, rpk)
    # the band as sets of (row, pixel, value) (both are sorted row-major, so as arrays too)
    band = set(zip(rows.tolist(), pos.tolist(), vals.tolist()))
    assert band == set(zip(rrows.tolist(), rpos.tolist(), rvals.tolist()))
    np.testing.assert_array_equal(rows, rrows)
    np.testing.assert_array_equal(pos, rpos)


def _bracket(u, S):
    n = len(u)
    bufs = tuple(np.empty(n * S * S, bool) for _ in range(3))
    return FP._bracket_chunk(np.ascontiguousarray(u), S * S // 2, S, *bufs)


@pytest.mark.parametrize("mode", M.UPSAMPLERS)
def test_kernel_chunk_equals_bracket_chunk(mode):
    """On the same fast values: torch's (_column_stage), the kernel's own (fast_maps), and crafted ones."""
    p = M.Protocol("t", mode, "minmax", False)
    rng = np.random.default_rng(len(mode))
    m = _adversarial(rng, 24, 14, 14, "ezvsl")
    op = FP._fast_op(mode, 14, 14, p.size)
    S, N = p.size, p.size * p.size
    # torch's fast maps, given to the kernel
    u = FP._column_stage(FP._row_stage(m, op), op, torch.empty(len(m) * N)).copy()
    _assert_chunks_equal(_kernel_chunk(m, u, p, op), _bracket(u, S))
    # the kernel's own fast values: computed inside, and written out by fast_maps
    uk = np.empty((len(m), S, S), np.float32)
    taps = FP._kernel_taps(mode, 14, 14, S)
    K.fast_maps(m, taps.fast, taps.tags, uk)
    _assert_chunks_equal(_kernel_chunk(m, np.empty((0, 0), np.float32), p, op), _bracket(uk.reshape(len(m), N), S))


def test_kernel_chunk_misses_and_huge_bands():
    """Crafted fast maps: sub-sample pixels systematically off (the bracket misses: widened once, or not
    ok), plateaus straddling rank k (bands over _BAND_MAX: not ok), a constant map."""
    p = M.PROTOCOLS["ezvsl"]
    S, N = p.size, p.size * p.size
    op = FP._fast_op(p.upsample, 14, 14, S)
    rng = np.random.default_rng(17)
    u = rng.standard_normal((8, S, S)).astype(np.float32)
    u[0, 1::4, 2::4] += np.float32(0.05)   # a small shift: the narrow bracket misses, the wide one holds
    u[1, 1::4, 2::4] += np.float32(0.5)    # a large one: both miss
    u[2, 1::4, 2::4] -= np.float32(0.05)
    u[3] = np.round(u[3])                   # a few values, each held by thousands of pixels
    u[4] = 0.75                             # constant
    u[5, :, : S // 2] = 0.0                 # half the map one value
    u = u.reshape(8, N)
    got = _kernel_chunk(np.zeros((1, 14, 14), np.float32), u, p, op)
    ref = _bracket(u, S)
    _assert_chunks_equal(got, ref)
    assert not ref[-1][1] and ref[-1][0] and not ref[-1][3] and not ref[-1][4]  # the cases above happen


def test_fast_values_within_the_bound():
    """The kernel's fast values are within _fast_op(...).err·max|M| of the exact upsampling: the bound the
    exactness argument relies on."""
    rng = np.random.default_rng(5)
    for mode in M.UPSAMPLERS:
        for h, w in ((14, 14), (7, 7), (12, 9)):
            m = rng.standard_normal((6, h, w)).astype(np.float32)
            m[1] *= np.float32(1e-4)
            op = FP._fast_op(mode, h, w, 224)
            taps = FP._kernel_taps(mode, h, w, 224)
            uk = np.empty((6, 224, 224), np.float32)
            K.fast_maps(m, taps.fast, taps.tags, uk)
            exact = M.upsample(torch.from_numpy(m), mode).numpy()
            bound = op.err * np.abs(m).max((1, 2))
            assert (np.abs(uk - exact).max((1, 2)) <= bound).all(), (mode, h, w)


def test_select2_is_partition():
    rng = np.random.default_rng(8)
    for n in (3136, 777, 64, 33, 9, 2, 1):
        for trial in range(12):
            x = rng.standard_normal(n).astype(np.float32)
            if trial % 4 == 1:
                x = np.round(x * 2) / 2                 # ties
            if trial % 4 == 2:
                x[:] = 0.25                             # constant
            if trial % 4 == 3:
                x[::2] = -0.0                           # signed zeros
                x[1::3] = 0.0
            if trial == 4:
                x = np.float32(3e38) * np.sign(x)       # extremes
            if trial == 8:
                x = np.exp(6 * x).astype(np.float32)    # skewed
            s = np.sort(x)
            for k0, k1 in ((n // 2 - 14, n // 2 + 14), (0, 0), (n - 1, n - 1), (n // 2, n // 2), (1, 40),
                           (n // 2 - 48, n // 2 + 48)):
                k0 = min(max(k0, 0), n - 1)
                k1 = min(max(k1, k0), n - 1)
                a, b = K.select2(x, k0, k1)
                assert a == s[k0] and b == s[k1], (n, trial, k0, k1)


def test_blocks_workers_and_buffer_resumes(monkeypatch):
    """Several kernel blocks, worker threads, band buffers that fill up (without settlement all bands are
    kept: the kernel resumes with larger buffers) and huge fixed-threshold bands change nothing."""
    rng = np.random.default_rng(9)
    maps = rng.standard_normal((300, 14, 14)).astype(np.float32)
    maps[::11] = np.round(maps[::11])
    monkeypatch.setattr(FP, "_KERNEL_BLOCK", 70)
    for settle in (False, True):
        monkeypatch.setattr(FP, "KERNEL_SETTLE", settle)
        for name in ("official", "acl"):
            p = M.PROTOCOLS[name]
            x = (1 / (1 + np.exp(-maps))).astype(np.float32) if name == "acl" else maps.copy()
            if name == "acl":
                x[5:40] = 0.5  # whole maps at the threshold: bands of S² pixels
            want = _exact_bits(x, p)
            for workers in (1, 3):
                got = M.binarize_packed(x, p, workers=workers, kernel=True)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} settle={settle} workers={workers}")


# ----------------------------------------------------------------------------- the settlement's pieces
def _extreme_maps(rng, n):
    m = rng.standard_normal((n, 14, 14)).astype(np.float32)
    m[:6] = np.round(m[:6])                    # ties at the extremes
    m[6] = 0.5                                 # constant
    m[7, 3:9, 3:9] = m[7].max() + 1            # a plateau at the maximum
    m[8, :, :2] = m[8].min() - 1               # ... and at the minimum, at the border
    m[9] *= np.float32(1e-3)
    m[10, 0, 0], m[10, -1, -1] = 4.0, -4.0     # extremes in the corners (cv2's clamped border blocks)
    return m


@pytest.mark.parametrize("mode", M.UPSAMPLERS)
def test_exact_extremes_are_the_upsampled_extremes(mode):
    """The kernel's exact min and max (bounds per block of the column stage, fast values of the blocks that
    can hold them, exact values at their few pixels) equal those of the whole exact map, with and without
    the sub-sample's fast extremes as a start."""
    rng = np.random.default_rng(len(mode) + 11)
    m = _extreme_maps(rng, 40)
    op = FP._fast_op(mode, 14, 14, 224)
    taps = FP._kernel_taps(mode, 14, 14, 224)
    eps = op.err * np.abs(m.reshape(len(m), -1)).max(1).astype(np.float64) + 1e-30
    u = M.upsample(torch.from_numpy(m), mode).reshape(len(m), -1).numpy()
    uk = np.empty((len(m), 224, 224), np.float32)
    K.fast_maps(m, taps.fast, taps.tags, uk)
    grid = uk[:, 1::4, 2::4].reshape(len(m), -1)
    for hints in (np.tile(np.float32([np.inf, -np.inf]), (len(m), 1)), np.stack([grid.min(1), grid.max(1)], 1)):
        out = np.empty((len(m), 2), np.float32)
        K.exact_extremes(m, taps.fast, taps.tags, taps.exact, eps, np.ascontiguousarray(hints), out)
        np.testing.assert_array_equal(out[:, 0], u.min(1))
        np.testing.assert_array_equal(out[:, 1], u.max(1))


@pytest.mark.parametrize("mode", M.UPSAMPLERS)
def test_exact_values_are_the_exact_path(mode):
    """The kernel's exact values equal _exact_values' (the same float64 sums: ties of a constant map and of
    integer maps included; both differ from torch's float64 kernel only in last-bit tie breaks and the sign
    of a tiny residue where the exact value is 0, as metrics_fast_ties says)."""
    rng = np.random.default_rng(len(mode) + 21)
    m = _extreme_maps(rng, 12)
    op = FP._fast_op(mode, 14, 14, 224)
    taps = FP._kernel_taps(mode, 14, 14, 224)
    rows = np.repeat(np.arange(len(m)), 3000)
    pos = rng.integers(0, 224 * 224, len(rows))
    pos[:224] = np.arange(224)  # the first row, with cv2's clamped strip
    got = np.empty(len(pos), np.float32)
    K.exact_values(m, taps.exact, rows, pos, 224, got)
    np.testing.assert_array_equal(got, FT._exact_values(m, rows, pos, op))


@pytest.mark.parametrize("name", ["ezvsl", "lvs", "official_peers", "slavc", "acl"])
def test_normalise_is_exact_norm(name):
    """The kernel's normalisation of exact values is _exact_norm's float32 arithmetic (SLAVC's score of cos and
    of cos/τ, a constant map's range of 0 included)."""
    p = M.PROTOCOLS[name]
    rng = np.random.default_rng(len(name))
    for tau in ((None, 0.07) if p.score_first else (None,)):
        scale = 1 if tau is None else 1 / tau
        lo = (rng.uniform(-1, 0, 500) * scale).astype(np.float32)
        hi = (lo + rng.uniform(0, 2, 500) * scale).astype(np.float32)
        hi[:20] = lo[:20]  # constant maps
        v = (lo + (hi - lo) * rng.uniform(0, 1, 500)).astype(np.float32)
        v[20:40], v[40:60] = lo[20:40], hi[40:60]
        got = np.empty(500, np.float32)
        K.normalise_values(v, lo, hi, FP._norm_args(p, tau), got)
        np.testing.assert_array_equal(got, FT._exact_norm(p, v, lo, hi, tau))


def _cluster_reference(vals, thr, beta):
    """_settle's cluster: consecutive sorted values chained by float64 gaps <= beta around thr."""
    sv = np.sort(vals)
    gaps = np.diff(sv.astype(np.float64)) <= beta
    s = int(np.searchsorted(sv, thr, "left"))
    e = int(np.searchsorted(sv, thr, "right")) - 1
    while s > 0 and gaps[s - 1]:
        s -= 1
    while e < len(sv) - 1 and gaps[e]:
        e += 1
    return sv[s], sv[e], s, e


def test_cluster_is_settles_cluster():
    """The kernel's cluster walk (in a window of values around the threshold, widened where the chain reaches
    its edge) finds _settle's cluster: isolated values, ties, short chains, chains longer than the first
    window, chains reaching the band's ends."""
    rng = np.random.default_rng(12)
    beta = 1e-6
    for trial in range(300):
        n = int(rng.integers(2, 600))
        vals = rng.uniform(-1e-3, 1e-3, n).astype(np.float32)
        kind = trial % 5
        if kind == 1:  # ties
            vals[: n // 3] = vals[0]
        elif kind == 2:  # a short chain around one value
            vals[: min(n, 8)] = np.float32(2e-4) + np.float32(0.7 * beta) * np.arange(min(n, 8), dtype=np.float32)
        elif kind == 3:  # a chain far longer than 16·beta
            m_ = min(n, 120)
            vals[:m_] = np.float32(-3e-4) + np.float32(0.9 * beta) * np.arange(m_, dtype=np.float32)
        elif kind == 4:  # everything chained: the band's ends
            vals = (np.float32(0.5 * beta) * np.arange(n, dtype=np.float32)).astype(np.float32)
        rng.shuffle(vals)
        thr = vals[int(rng.integers(0, n))]
        wv, wi = np.empty(n + 1, np.float32), np.empty(n + 1, np.int64)
        lo, hi, s, e, j0, j1 = K._cluster(vals, 0, n, thr, beta, wv, wi)
        assert (lo, hi, s, e) == _cluster_reference(vals, thr, beta), trial
        np.testing.assert_array_equal(np.sort(vals[wi[j0:j1]]), wv[j0:j1])
        assert j1 - j0 == e - s + 1


@pytest.mark.parametrize("size", [224, 64, 72])
def test_box_counts_are_ciou_from_packed(size):
    """cIoU from the kernel's box counts equals ciou_from_packed on gt_union_packed: overlapping, nested,
    repeated, zero-width, clipped and whole-image boxes, boxes in the first rows (the byte-wise tail), empty
    ground truth, empty and full predictions (0/0 = NaN)."""
    rng = np.random.default_rng(size)
    boxes = []
    for i in range(200):
        k = i % 5
        xy = rng.uniform(-0.2, 1.0, (k, 2))
        boxes.append([tuple(bx) for bx in np.concatenate([xy, xy + rng.uniform(-0.1, 0.8, (k, 2))], 1)])
    boxes[0] = []
    boxes[1] = [(0.0, 0.0, 1.0, 1.0)]
    boxes[2] = [(0.2, 0.2, 0.6, 0.6)] * 3 + [(0.3, 0.3, 0.4, 0.4)]
    boxes[3] = [(0.5, 0.1, 0.5, 0.9), (0.1, 0.5, 0.9, 0.5)]
    boxes[4] = [(0.0, 0.0, 0.05, 0.02), (0.01, 0.0, 0.2, 0.03)]
    boxes[5] = [(0.9, 0.9, 1.3, 1.2)]
    boxes[6] = []
    b, v = M.pad_boxes(boxes)
    pred = rng.integers(0, 256, (len(boxes), size * size // 8), dtype=np.uint8)
    pred[6] = 0  # empty prediction and empty ground truth
    pred[7] = 0
    pred[8] = 255
    want = M.ciou_from_packed(pred, M.gt_union_packed(b, v, size)).numpy()
    got = FP.ciou_packed_boxes(pred, b, v, size, kernel=True).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[6]) and got[0] == 0.0
    np.testing.assert_array_equal(FP.ciou_packed_boxes(pred, b, v, size, kernel=False).numpy(), want)


def test_import_without_a_writable_cache():
    """numba raises RuntimeError at decoration when no cache locator applies (no writable cache directory):
    the kernel then compiles without the cache and works."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_CACHE_DIR="/dev/null/not-a-dir",
               NUMBA_CACHE_LOCATOR_CLASSES="numba.core.caching.UserProvidedCacheLocator",
               PYTHONPATH=str(root))
    code = ("import numpy as np; from avsl_core import metrics_kernel as K; assert K.HAVE_NUMBA; "
            "assert type(K.select2._cache).__name__ == 'NullCache'; "  # compiled in memory, not cached
            "x = np.arange(100, dtype=np.float32)[::-1].copy(); print(K.select2(x, 10, 20))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(10.0, 20.0)"


def test_numpy_path_without_numba():
    """Where numba cannot be imported, metrics_kernel says so and binarize_packed and ciou_packed_boxes take
    the numpy path."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np, torch\n"
            "from avsl_core import metrics as M, metrics_kernel as K, metrics_fast as FP\n"
            "assert not K.HAVE_NUMBA\n"
            "m = np.random.default_rng(0).standard_normal((6, 14, 14)).astype(np.float32)\n"
            "for name in ('ezvsl', 'acl'):\n"
            "    x = 1 / (1 + np.exp(-m)) if name == 'acl' else m\n"
            "    want = np.packbits(M.as_rows(M.binarize(M.prepare(torch.from_numpy(x), name), name)), axis=1)\n"
            "    assert np.array_equal(M.binarize_packed(x, name), want)\n"
            "    assert np.array_equal(M.binarize_packed(x, name, kernel=True), want)\n"
            "b, v = M.pad_boxes([[(0.1, 0.2, 0.7, 0.9)], [], [(0, 0, 1, 1)], [(0.5, 0.5, 0.6, 0.6)] * 2, [], []])\n"
            "pred = M.binarize_packed(m, 'ezvsl')\n"
            "assert np.array_equal(FP.ciou_packed_boxes(pred, b, v, kernel=True),\n"
            "                      M.ciou_from_packed(pred, M.gt_union_packed(b, v)))\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(root)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_stale_kernel_cache_dropped_when_any_kernel_source_changes(tmp_path):
    """numba keys a cached function on its own file only; the kernel's modules call into each other, so
    their whole in-tree cache goes when any of their sources changes, and stays while none does."""
    from avsl_core.metrics_kernel_intrinsics import _drop_stale_cache
    (tmp_path / "metrics_kernel.py").write_text("a = 1\n")
    (tmp_path / "metrics_kernel_pass.py").write_text("b = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    _drop_stale_cache(tmp_path)
    kept = [cache / "metrics_kernel.median_maps-1.py311.nbi", cache / "metrics_kernel_pass._pass-2.py311.1.nbc"]
    other = cache / "metrics.x-1.py311.nbi"
    for f in kept + [other]:
        f.write_bytes(b"x")
    _drop_stale_cache(tmp_path)                        # nothing changed: the cache stays
    assert all(f.exists() for f in kept)
    (tmp_path / "metrics_kernel_pass.py").write_text("b = 3\n")
    _drop_stale_cache(tmp_path)                        # a callee's module changed: every kernel cache goes
    assert not any(f.exists() for f in kept) and other.exists()
