"""The compiled kernel of the fast path (avsl_core.metrics_kernel): bit for bit the numpy path and the exact
path on random and adversarial maps, its per-chunk outputs equal to _bracket_chunk's, its fast values within
the bound the exactness argument uses, and its selection equal to np.partition."""
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
    for settle in (True, False):  # the kernel's clean-map settlement and band narrowing on and off
        monkeypatch.setattr(FP, "KERNEL_SETTLE", settle)
        st: dict = {}
        got = M.binarize_packed(maps, p, stats=st, kernel=True)
        bad = np.flatnonzero((got != want).any(1))
        assert len(bad) == 0, f"{name} {shape} settle={settle}: maps {bad} differ"
        sts.append(st)
    assert sts[0] == sts[1]  # the same maps clean, near-tied and exact either way
    assert sts[0]["maps"] == 40 and sts[0]["clean"] > 10


def test_kernel_other_sizes_and_score_first():
    """Evaluation sizes whose S² is not a multiple of 8 (a partial last byte) or of 32, and SLAVC's score
    of cos and of cos/τ."""
    rng = np.random.default_rng(3)
    cos = np.tanh(rng.standard_normal((24, 7, 9))).astype(np.float32)
    cos[:4] = np.round(cos[:4] * 4) / 4
    for size in (50, 64, 30, 100):
        for name in ("official", "ezvsl_val", "acl"):
            q = replace(M.PROTOCOLS[name], size=size)
            x = (1 / (1 + np.exp(-3 * cos))).astype(np.float32) if q.threshold is not None else cos
            np.testing.assert_array_equal(M.binarize_packed(x, q, kernel=True), _exact_bits(x, q),
                                          err_msg=f"{size} {name}")
    p = M.PROTOCOLS["slavc"]
    for tau, maps in ((None, cos), (0.07, cos / np.float32(0.07))):
        np.testing.assert_array_equal(M.binarize_packed(maps, p, tau, kernel=True), _exact_bits(maps, p, tau))


# ----------------------------------------------------------------------------- the kernel against _bracket_chunk
def _kernel_chunk(m, ui, p, op, beta=None, settle=False, narrow=0):
    """median_maps on maps m (or fast maps ui), its outputs shaped as _bracket_chunk's."""
    B = len(m) if not len(ui) else len(ui)
    S = p.size
    k = S * S // 2
    k0, k1, w0, w1 = FP._sub_ranks(S, k)
    taps = FP._kernel_taps(op.mode, m.shape[1], m.shape[2], S)
    pk = np.zeros((B, (S * S + 7) // 8), np.uint8)
    cap = B * FP._BAND_MAX + FP._BAND_MAX
    bpos, bval = np.empty(cap, np.int64), np.empty(cap, np.float32)
    starts = np.empty(B + 1, np.int64)
    a, b = np.empty(B, np.float32), np.empty(B, np.float32)
    nbl, ok, clean = np.empty(B, np.int64), np.empty(B, bool), np.empty(B, bool)
    beta = np.zeros(B) if beta is None else beta
    done = K.median_maps(m, ui, *taps[:6], k, k0, k1, w0, w1, 1, 2, FP._SUB_STEP, FP._BAND_MAX, settle, beta,
                         p.strict, narrow, pk, bpos, bval, starts, a, b, nbl, ok, clean)
    assert done == B
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
    K.fast_maps(m, *FP._kernel_taps(mode, 14, 14, S)[:6], uk)
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
    """The kernel's fast values (and its row stage) are within _fast_op(...).err·max|M| of the exact
    upsampling: the bound the exactness argument relies on."""
    rng = np.random.default_rng(5)
    for mode in M.UPSAMPLERS:
        for h, w in ((14, 14), (7, 7), (12, 9)):
            m = rng.standard_normal((6, h, w)).astype(np.float32)
            m[1] *= np.float32(1e-4)
            op = FP._fast_op(mode, h, w, 224)
            taps = FP._kernel_taps(mode, h, w, 224)
            uk = np.empty((6, 224, 224), np.float32)
            K.fast_maps(m, *taps[:6], uk)
            exact = M.upsample(torch.from_numpy(m), mode).numpy()
            bound = op.err * np.abs(m).max((1, 2))
            assert (np.abs(uk - exact).max((1, 2)) <= bound).all(), (mode, h, w)
            rt = np.empty((6, w, 224), np.float32)
            K.row_stage_t(m, *taps[6:], rt)
            r64 = np.einsum("sh,bhw->bws", op.uh, m.astype(np.float64))
            assert (np.abs(rt - r64).max((1, 2)) <= bound).all(), (mode, h, w)


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
    """Several kernel blocks, worker threads, and band buffers that fill up (all bands kept: the kernel
    resumes with larger buffers; huge fixed-threshold bands) change nothing."""
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
    """Where numba cannot be imported, metrics_kernel says so and binarize_packed takes the numpy path."""
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
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(root)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
