"""Compiled (numba) kernel of the fast path (:mod:`avsl_core.metrics_fast`): steps 1-3 for one map at a time,
and the cIoU counts against box ground truth.

For each native map M [h, w], :func:`median_maps` computes the fast upsampled values, selects the value
bracket [a, b] from the sub-sample, writes in one pass over the S×S pixels the packed ``u > b`` row
(np.packbits order: MSB first, row-major pixels) and the band ``a <= u <= b`` (pixel positions and fast
values), and settles the map: its bits final, or marked for the exact path. Without ``settle`` it stops at
the band instead, its outputs exactly those of :func:`~avsl_core.metrics_fast._bracket_chunk` for the same
fast values (given as ``ui``, the kernel takes those instead of computing its own: the tests do both), so
that :func:`~avsl_core.metrics_fast_ties._settle` can settle them as on the numpy path (the tests check that
both settle every map the same way, bit for bit). :func:`fixed_maps` does the same for a fixed threshold.

The kernel's parts, one module each; this module is the public entry point (every name the fast path, the
benchmarks and the tests use is importable from here):

* :mod:`avsl_core.metrics_kernel` (this module): the entry points, per block of maps (:func:`median_maps`,
  :func:`fixed_maps`; for the tests :func:`fast_maps`, :func:`exact_extremes`, :func:`exact_values`,
  :func:`normalise_values`, :func:`select2`), and :func:`box_counts`; ``NORMS``.
* :mod:`avsl_core.metrics_kernel_intrinsics`: numba's import (``HAVE_NUMBA``), :func:`_jit`, and the LLVM
  intrinsics (tap sums, compare masks, counts, bit operations, unaligned loads and stores).
* :mod:`avsl_core.metrics_kernel_pass`: the fast values (column stage, rows) and the pass.
* :mod:`avsl_core.metrics_kernel_select`: the selection.
* :mod:`avsl_core.metrics_kernel_settle`: exact values, exact extremes, the normalisation and the settlement;
  the states ``BAND``, ``CLEAN``, ``NEAR``, ``EXACT``.
* :mod:`avsl_core.metrics_kernel_taps`: :class:`KernelTaps`, :func:`kernel_taps`, :func:`identity_taps` (numpy).

* *Fast values* (metrics_kernel_pass). The column stage c = M @ U_w.T [h, S] by blocks of 32 output columns
  (:func:`_col_stage`: per block the float32 sum over the W source columns from the first with a non-zero
  weight, 32 lanes at a time), then each row u[y] = Σ_t U_h[y, i_t]·c[i_t] over U_h's T non-zero taps
  (zero-padded to T = 2, or 4 for the cubic kernels), computed inside the pass. Both are float32 sums in a
  fixed order without fused multiply-adds, the same operations in the vector code, the scalar recomputation
  of band values (:func:`_tap_value`) and :func:`fast_maps` (the tests' view of them); a zero weight's
  product is an exact ±0 and leaves every partial sum as it was, so each value is the float32 sum of the t_w
  non-zero products, then of the t_h non-zero row products, which is what the bound of
  :func:`~avsl_core.metrics_fast._fast_op`, ``|fast − exact| ≤ (t_h + t_w + 3)·u·gain·max|M|``, assumes
  (tested against the exact upsampling; only the values' last bits differ from torch's matmuls, which the
  bound covers). The tap counts are compile-time tuple lengths (``tags``; :func:`_row_tuple`,
  :func:`_tuple_at`, metrics_kernel_intrinsics), so the sums compile to straight-line vector code. Where
  S % 8 == 0, c's columns are stored reversed within each 8 (U_w.T's columns so permuted), so that the sign
  bits of 8 compares (vmovmskps) come out as one packed byte; other sizes go through :func:`_pass_rows`
  (rows into a buffer, then flat groups of pixels).
* *Selection* (:func:`_select_core`, metrics_kernel_select). a and b are the values of ranks k0 and k1 of the
  sub-sample (every ``step``-th row from ``row0`` and column from ``col0``, the grid of ``_bracket_chunk``,
  computed from c's grid columns by the same sums): values, so whatever the algorithm they equal
  np.partition's. Here by counting passes (8 lanes of compare masks summed) that move two thresholds by
  interpolation on the counts until each lies within _PAD ranks outside k0 and k1, then the few values
  between gathered and sorted. Maps whose rank k falls outside the bracket are redone once with ranks w0,
  w1; ``ok`` as there.
* *The pass* (:func:`_pass`, metrics_kernel_pass). Row by row, 32 pixels at a time: the T-tap sums, two
  ordered compares and their bit masks (vcmpps, vmovmskps), the packed bytes stored as they come; the
  32-pixel groups holding band pixels are noted without a branch and scanned after the map, their values
  recomputed.
* *Settlement* (``settle``; ``_settle``'s steps, decided the same way; metrics_kernel_settle).
  :func:`_settle_clean`: the band values of ranks rk − 1, rk, rk + 1 (rk: rank k's place in the band); where
  the threshold value is alone within beta = 2·eps + merge, the band pixels above it are set. Otherwise
  :func:`_settle_near`: the cluster of band values chained to it by gaps ≤ beta (:func:`_cluster`), too wide
  or too close to the bracket's ends: the exact path (state EXACT, done by metrics_fast); else exact values
  at its pixels (:func:`_exact_at`, float64 sums over the non-zero taps rounded once to float32, as
  ``_exact_values``) decide, and where the threshold's exact neighbours lie within merge of it, the cluster
  is normalised exactly (:func:`_normalise`, the protocol's float32 operations) with the map's exact
  extremes (:func:`_exact_extremes`: bounds per block of the column stage select the few blocks, then
  pixels, that can hold them).
* *Box counts* (:func:`box_counts`, this module): cIoU's counts of packed predictions against the union of
  boxes, interval by interval, without building the ground truth.

``HAVE_NUMBA`` is False when numba is not importable; :mod:`avsl_core.metrics_fast` then uses its numpy
path (every kernel module imports without numba; the compiled functions then do not exist). Nothing runs
in parallel inside the kernel (no prange); ``workers`` threads run blocks (``nogil``). Functions are
compiled with ``cache=True`` (the first compile takes ~40 s, ~15 s more for each further pair of tap
counts; later imports load the cache); where numba finds no writable cache directory they compile in
memory instead (:func:`_jit`). The hot loops call no helper with array arguments per row or per pixel
(numba passes each array with reference counting). numba checks a cached function against its own module
file only, not against the modules of the functions it calls: so the in-tree cache of all the kernel's
modules is dropped whenever their sources, together, change
(:func:`~avsl_core.metrics_kernel_intrinsics._drop_stale_cache`).
"""
from __future__ import annotations

import numpy as np

from avsl_core.metrics_kernel_intrinsics import HAVE_NUMBA, _jit
from avsl_core.metrics_kernel_settle import BAND, CLEAN, EXACT, NEAR
from avsl_core.metrics_kernel_taps import KernelTaps, identity_taps, kernel_taps

if HAVE_NUMBA:
    from avsl_core.metrics_kernel_intrinsics import _load64, _popcount, _row_tuple, _tap_value
    from avsl_core.metrics_kernel_pass import _col_stage, _map_pass, _rows_into
    from avsl_core.metrics_kernel_select import _select2
    from avsl_core.metrics_kernel_settle import (_cluster, _exact_at, _exact_extremes, _normalise, _settle_clean,
                                                 _settle_near)

__all__ = ["BAND", "CLEAN", "EXACT", "HAVE_NUMBA", "NEAR", "NORMS", "KernelTaps", "identity_taps", "kernel_taps"]
if HAVE_NUMBA:
    __all__ += ["box_counts", "exact_extremes", "exact_values", "fast_maps", "fixed_maps", "median_maps",
                "normalise_values", "select2"]
    _PRIVATE = (_cluster,)  # re-exported too (the tests')

_ROWS = 16         # the row-block pass computes this many rows at a time (a multiple of 8; 14 KB at S = 224)
NORMS = {"none": 0, "minmax": 1, "one_minus_minmax_neg": 2}  # the protocols' normalisations, by number


if HAVE_NUMBA:
    # ------------------------------------------------------------------------- per block of maps
    @_jit
    def median_maps(m, ui, taps, tags, ex, ranks, grid, band_max, settle, eps, merge, win, norm, pk, bpos, bval,
                    starts, a_out, b_out, n_below, ok, state):
        """Median protocols, maps m [B, h, w] (or their fast maps ui [B, S·S] when ui has rows; taps then the
        identity's, and no settle): the outputs of ``_bracket_chunk`` (pk [B, nb]; a, b, n_below, ok) and

        * without ``settle``: the bands at bpos/bval[starts[i]:starts[i+1]] (row-major), state BAND;
        * with ``settle``: every map settled here (state CLEAN, NEAR) or marked EXACT for the exact path, its
          bits in pk; no bands kept (eps, merge [B]: the maps' bounds; win: _CLUSTER_WIN; norm: (how, score,
          s_lo, s_rng, strict, lvs) of the protocol).

        taps, tags, ex: those of :class:`KernelTaps`; ranks: (k, k0, k1, w0,
        w1); grid: the sub-sample's (row0, col0, step). Returns the number of maps done: fewer than B when
        the band buffers (≥ band_max) run out of room; the caller then resumes from there with emptied
        buffers."""
        uwt, jlo, rh_idx, rh_w, rh_n = taps
        tag, tag_w = tags
        k, k0, k1, w0, w1 = ranks
        row0, col0, step = grid
        strict = norm[4]
        B = pk.shape[0]
        cap = bpos.shape[0]
        S = rh_idx.shape[0]
        N = S * S
        xm = 7 if S % 8 == 0 else 0  # column x of c is stored at x ^ xm
        hc = S if ui.shape[0] > 0 else m.shape[1]
        c = np.empty((hc, S), np.float32)
        cf = c.reshape(hc * S)
        mp = np.zeros((m.shape[1], m.shape[2] + len(tag_w)), np.float32)
        buf = np.empty((_ROWS, S), np.float32)
        hits = np.empty(max(S * S, buf.size) // 8 + 1, np.int64)
        rows_sub = (S - row0 + step - 1) // step
        cols_sub = (S - col0 + step - 1) // step
        ms = rows_sub * cols_sub
        sub = np.empty(ms, np.float32)
        sub2 = sub.reshape((rows_sub, cols_sub))
        c_sub = np.empty((hc, cols_sub), np.float32)
        rh_sub_idx = rh_idx[row0::step].copy()  # the row weights of the grid rows
        rh_sub_w = rh_w[row0::step].copy()
        rh_sub_n = rh_n[row0::step].copy()
        work = np.empty(max(ms, band_max), np.float32)
        work2 = np.empty(max(ms, band_max), np.float32)
        wv = np.empty(band_max + 1, np.float32)
        wi = np.empty(band_max + 1, np.int64)
        cval = np.empty(band_max, np.float32)
        nblk = (S + 31) // 32
        scratch = (sub, np.empty((hc, nblk + 1, 2)), np.empty(S), np.empty(S * nblk, np.int64), np.empty(S * nblk))
        o = 0
        for i in range(B):
            starts[i] = o
            if o + band_max > cap:
                return i
            pkr = pk[i]
            if ui.shape[0] == 0:
                _col_stage(m[i], mp, uwt, jlo, tag_w, cf)
            else:
                for y in range(S):
                    for x in range(S):
                        c[y, x ^ xm] = ui[i, y * S + x]
            # the sub-sample: rows row0::step, columns col0::step (from the grid's columns of c: the same
            # float32 operations as the pass, so the same values)
            for ii in range(hc):
                for xx in range(cols_sub):
                    c_sub[ii, xx] = c[ii, (col0 + xx * step) ^ xm]
            _rows_into(c_sub, 0, rows_sub, rh_sub_idx, rh_sub_w, rh_sub_n, sub2)
            a, b = _select2(sub, ms, k0, k1, work, work2)
            n_ab, n_bd = _map_pass(c, cf, rh_idx, rh_w, rh_n, tag, a, b, pkr, bpos, bval, o, band_max, buf, hits)
            nbl = N - n_ab - n_bd
            if nbl > k or k >= nbl + n_bd:  # missed: the wide bracket, once
                a, b = _select2(sub, ms, w0, w1, work, work2)
                n_ab, n_bd = _map_pass(c, cf, rh_idx, rh_w, rh_n, tag, a, b, pkr, bpos, bval, o, band_max, buf,
                                       hits)
                nbl = N - n_ab - n_bd
            good = nbl <= k and k < nbl + n_bd and n_bd <= band_max
            ok[i] = good
            st = BAND
            if settle:
                st = EXACT
                if good:
                    rk = k - nbl
                    thr, clean = _settle_clean(bval[o:o + n_bd], n_bd, rk, a, b, 2.0 * eps[i] + merge[i], strict, bpos,
                                               o, pkr, work, work2)
                    st = CLEAN if clean else _settle_near(m[i], cf, S, xm, rh_idx, rh_w, tag, ex, bpos, bval, o,
                                                          n_bd, rk, thr, a, b, eps[i], merge[i], win, norm, pkr,
                                                          wv, wi, cval, scratch)
            elif good:
                o += n_bd
            state[i] = st
            a_out[i] = a
            b_out[i] = b
            n_below[i] = nbl
        starts[B] = o
        return B

    @_jit
    def fixed_maps(m, taps, tags, ex, lo, hi, t, strict, pk, state):
        """Fixed thresholds t (ACL-SSL's: upsampled map ≥ 0.5): pk [B, nb] = packed ``u > hi[i]``, and the band
        pixels ``lo[i] <= u <= hi[i]`` (within eps of t) on where their exact value is > t (strict) or ≥ t;
        state NEAR for maps with band pixels, CLEAN for the others."""
        uwt, jlo, rh_idx, rh_w, rh_n = taps
        tag, tag_w = tags
        B = pk.shape[0]
        S = rh_idx.shape[0]
        N = S * S
        c = np.empty((m.shape[1], S), np.float32)
        cf = c.reshape(c.size)
        mp = np.zeros((m.shape[1], m.shape[2] + len(tag_w)), np.float32)
        buf = np.empty((_ROWS, S), np.float32)
        hits = np.empty(max(S * S, buf.size) // 8 + 1, np.int64)
        bpos = np.empty(N, np.int64)
        bval = np.empty(N, np.float32)
        for i in range(B):
            mi = m[i]
            pkr = pk[i]
            _col_stage(mi, mp, uwt, jlo, tag_w, cf)
            n_bd = _map_pass(c, cf, rh_idx, rh_w, rh_n, tag, lo[i], hi[i], pkr, bpos, bval, 0, N, buf, hits)[1]
            for j in range(n_bd):
                p = bpos[j]
                v = _exact_at(mi, p // S, p % S, ex)
                if (v > t) if strict else (v >= t):
                    pkr[p >> 3] |= np.uint8(128 >> (p & 7))
            state[i] = NEAR if n_bd else CLEAN

    @_jit
    def fast_maps(m, taps, tags, out):
        """The kernel's fast values of maps m [B, h, w]: out [B, S, S] (for tests), by the pass's float32
        operations (:func:`_tap_value`)."""
        uwt, jlo, rh_idx, rh_w, rh_n = taps
        tag, tag_w = tags
        S = rh_idx.shape[0]
        xm = 7 if S % 8 == 0 else 0
        c = np.empty((m.shape[1], S), np.float32)
        cf = c.reshape(c.size)
        mp = np.zeros((m.shape[1], m.shape[2] + len(tag_w)), np.float32)
        for i in range(m.shape[0]):
            _col_stage(m[i], mp, uwt, jlo, tag_w, cf)
            for y in range(S):
                rows = _row_tuple(rh_idx, y, tag)
                ws = _row_tuple(rh_w, y, tag)
                for x in range(S):
                    out[i, y, x] = _tap_value(cf, rows, S, x ^ xm, ws)

    @_jit
    def exact_extremes(m, taps, tags, ex, eps, hints, out):
        """:func:`_exact_extremes` of maps m [B, h, w] (eps [B]: their fast bounds; hints [B, 2]: lo, hi): out
        [B, 2] (for tests)."""
        uwt, jlo, rh_idx, rh_w, rh_n = taps
        tag, tag_w = tags
        S = rh_idx.shape[0]
        xm = 7 if S % 8 == 0 else 0
        c = np.empty((m.shape[1], S), np.float32)
        cf = c.reshape(c.size)
        mp = np.zeros((m.shape[1], m.shape[2] + len(tag_w)), np.float32)
        nblk = (S + 31) // 32
        ext, row_b = np.empty((m.shape[1], nblk + 1, 2)), np.empty(S)
        cand, cval = np.empty(S * nblk, np.int64), np.empty(S * nblk)
        for i in range(m.shape[0]):
            _col_stage(m[i], mp, uwt, jlo, tag_w, cf)
            out[i, 0], out[i, 1] = _exact_extremes(m[i], cf, S, xm, rh_idx, rh_w, tag, ex, eps[i], hints[i, 0],
                                                   hints[i, 1], ext, row_b, cand, cval)

    @_jit
    def exact_values(m, ex, rows, pos, S, out):
        """:func:`_exact_at` at flat pixels pos of maps rows of m [B, h, w]: out [n] (for tests)."""
        for j in range(pos.shape[0]):
            out[j] = _exact_at(m[rows[j]], pos[j] // S, pos[j] % S, ex)

    @_jit
    def normalise_values(v, lo, hi, norm, out):
        """:func:`_normalise` of values v with their maps' exact extremes lo, hi [n]: out [n] (for tests)."""
        for j in range(v.shape[0]):
            out[j] = _normalise(v[j], lo[j], hi[j], norm[0], norm[1], norm[2], norm[3])

    @_jit
    def select2(x, k0, k1):
        """Values of ranks k0 <= k1 of x (for tests)."""
        return _select2(x, x.shape[0], k0, k1, np.empty(x.shape[0], np.float32), np.empty(x.shape[0], np.float32))

    # ------------------------------------------------------------------------- cIoU counts
    @_jit
    def box_counts(pred, px, valid, S, out):
        """Per item of packed predictions pred [B, S²/8] (np.packbits order, row-major pixels of S×S, S % 8 == 0)
        and boxes px [B, K, 4] (pixel x1, y1, x2, y2, as ``box_pixels``; valid [B, K]): out [B, 3] int64 = set
        bits of pred ∧ gt, of gt and of pred, gt the union of the boxes [y1, y2) × [x1, x2)
        (``gt_union_packed``), never built: between consecutive box edges every row holds the same
        intervals (the boxes' [x1, x2), sorted and merged), whose bytes are counted in each row (the end
        bytes masked, 8 bytes at a time between, the last few by a masked load)."""
        B, nb = pred.shape
        K = px.shape[1]
        R = S // 8  # bytes per row
        ys = np.empty(2 * K, np.int64)
        lo = np.empty(K, np.int64)
        hi = np.empty(K, np.int64)
        nb8 = nb - nb % 8
        for i in range(B):
            prow = pred[i]
            n_pred = 0
            for j in range(0, nb8, 8):
                n_pred += _popcount(_load64(prow, j))
            for j in range(nb8, nb):
                n_pred += _popcount(prow[j])
            ne = 0  # the boxes' row edges, sorted
            for q in range(K):
                if valid[i, q] and px[i, q, 0] < px[i, q, 2] and px[i, q, 1] < px[i, q, 3]:
                    for y in (px[i, q, 1], px[i, q, 3]):
                        j = ne
                        while j > 0 and ys[j - 1] > y:
                            ys[j] = ys[j - 1]
                            j -= 1
                        ys[j] = y
                        ne += 1
            inter = 0
            n_gt = 0
            for e in range(ne - 1):
                ya, yb = ys[e], ys[e + 1]
                n = 0
                for q in range(K):  # the boxes over rows ya .. yb − 1, sorted by x1
                    x1, x2 = px[i, q, 0], px[i, q, 2]
                    if valid[i, q] and x1 < x2 and px[i, q, 1] <= ya and yb <= px[i, q, 3]:
                        j = n
                        while j > 0 and lo[j - 1] > x1:
                            lo[j] = lo[j - 1]
                            hi[j] = hi[j - 1]
                            j -= 1
                        lo[j] = x1
                        hi[j] = x2
                        n += 1
                j = 0
                while j < n:  # one merged interval: columns x1 .. x2 − 1
                    x1, x2 = lo[j], hi[j]
                    j += 1
                    while j < n and lo[j] <= x2:
                        x2 = max(x2, hi[j])
                        j += 1
                    n_gt += (x2 - x1) * (yb - ya)
                    c0 = x1 >> 3
                    c1 = (x2 - 1) >> 3
                    m0 = 0xFF >> (x1 & 7)
                    m1 = (0xFF << (7 - ((x2 - 1) & 7))) & 0xFF
                    if c0 == c1:
                        for y in range(ya, yb):
                            inter += _popcount(prow[y * R + c0] & m0 & m1)
                        continue
                    n8, r = divmod(c1 - c0 - 1, 8)  # the whole bytes between: 8 at a time, then the last r
                    tail = ~((np.uint64(1) << np.uint64(64 - 8 * r)) - np.uint64(1)) if r else np.uint64(0)
                    for y in range(ya, yb):
                        q0 = y * R + c0
                        q1 = y * R + c1
                        inter += _popcount(prow[q0] & m0) + _popcount(prow[q1] & m1)
                        for t in range(n8):
                            inter += _popcount(_load64(prow, q0 + 1 + 8 * t))
                        if r and q1 >= 8:  # the 8 bytes before q1, of which the last r (the high bytes)
                            inter += _popcount(_load64(prow, q1 - 8) & tail)
                        elif r:
                            for q in range(q1 - r, q1):
                                inter += _popcount(prow[q])
            out[i, 0] = inter
            out[i, 1] = n_gt
            out[i, 2] = n_pred
