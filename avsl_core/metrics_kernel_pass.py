"""Fast values and the pass of the compiled kernel (:mod:`avsl_core.metrics_kernel`).

* *Fast values.* :func:`_col_stage`: the column stage c = M @ U_w.T [h, S], by blocks of 32 output columns
  (32 lanes at a time, :func:`~avsl_core.metrics_kernel_intrinsics._tap_store32`); :func:`_rows_into`: rows
  of the fast map from c (the row-block pass's rows, and the sub-sample's).
* *The pass* (:func:`_map_pass`): the packed ``u > b`` row of one map and its band ``a <= u <= b``, by
  :func:`_pass` where S % 8 == 0 (c's columns reversed within each 8, the row sums computed inside the pass),
  else by :func:`_pass_rows` (rows into a buffer, then flat groups of pixels).
"""
from __future__ import annotations

import numpy as np

from avsl_core.metrics_kernel_intrinsics import HAVE_NUMBA, _jit

if HAVE_NUMBA:
    from avsl_core.metrics_kernel_intrinsics import (_cttz, _iota, _lsb_first, _popcount, _row_tuple, _store32,
                                                     _tap_masks8, _tap_masks32, _tap_store32, _tap_value,
                                                     _tuple_at)


if HAVE_NUMBA:
    # ------------------------------------------------------------------------- fast values
    # (no array views in the loops: each view costs atomic reference counting in numba)
    @_jit
    def _col_stage(m, mp, uwt, jlo, tag_w, cf):
        """c = M @ U_w.T into cf (c [h, S] flat; m [h, w]; uwt = U_w.T [w + W, S] float32, padded with W zero
        rows; mp: scratch [h, w + W], its last W columns zero), by blocks of 32 output columns: the float32
        sum over the W = len(tag_w) source columns from jlo[blk] (those with a non-zero weight in the block,
        then zeros), 32 columns at a time (:func:`_tap_store32`; the last partial block one column at a
        time). A zero weight gives an exact ±0 product (m finite), which leaves the partial sum unchanged
        (bar the sign of a zero sum): this is the float32 sum of the t_w non-zero products of U_w[x] in
        order, the sum the fast bound assumes."""
        h, w = m.shape
        S = uwt.shape[1]
        wp = mp.shape[1]
        for i in range(h):
            for j in range(w):
                mp[i, j] = m[i, j]
        mpf = mp.reshape(h * wp)
        uf = uwt.reshape(uwt.size)
        for blk in range(jlo.shape[0]):
            x0 = 32 * blk
            rows = _iota(jlo[blk], tag_w)
            for i in range(h):
                ws = _tuple_at(mpf, i * wp + jlo[blk], tag_w)
                if x0 + 32 <= S:
                    _tap_store32(cf, i * S + x0, uf, rows, S, x0, ws)
                else:
                    for x in range(x0, S):
                        cf[i * S + x] = _tap_value(uf, rows, S, x, ws)

    @_jit
    def _rows_into(c, y0, y1, rh_idx, rh_w, rh_n, out):
        """out[y − y0, x] = Σ_t rh_w[y, t] · c[rh_idx[y, t], x] for y0 <= y < y1, x < S (c [h, S]): rows of the
        fast map, each a float32 sum over the rh_n[y] non-zero weights of U_h[y], left to right (vectorised
        over x). Several rows a call: numba passes each array argument with atomic reference counting."""
        S = c.shape[1]
        y = y0
        while y < y1:
            g = y - y0
            n = rh_n[y]
            w0, i0 = rh_w[y, 0], rh_idx[y, 0]
            if (n == 2 and y + 1 < y1 and rh_n[y + 1] == 2 and rh_idx[y + 1, 0] == i0
                    and rh_idx[y + 1, 1] == rh_idx[y, 1]):  # two rows from the same source rows: loads shared
                w1, i1 = rh_w[y, 1], rh_idx[y, 1]
                v0, v1 = rh_w[y + 1, 0], rh_w[y + 1, 1]
                for x in range(S):
                    p0 = c[i0, x]
                    p1 = c[i1, x]
                    out[g, x] = w0 * p0 + w1 * p1
                    out[g + 1, x] = v0 * p0 + v1 * p1
                y += 2
                continue
            if n == 1:
                for x in range(S):
                    out[g, x] = w0 * c[i0, x]
            elif n == 2:
                w1, i1 = rh_w[y, 1], rh_idx[y, 1]
                for x in range(S):
                    out[g, x] = w0 * c[i0, x] + w1 * c[i1, x]
            elif n == 3:
                w1, i1 = rh_w[y, 1], rh_idx[y, 1]
                w2, i2 = rh_w[y, 2], rh_idx[y, 2]
                for x in range(S):
                    out[g, x] = w0 * c[i0, x] + w1 * c[i1, x] + w2 * c[i2, x]
            elif n == 4:
                w1, i1 = rh_w[y, 1], rh_idx[y, 1]
                w2, i2 = rh_w[y, 2], rh_idx[y, 2]
                w3, i3 = rh_w[y, 3], rh_idx[y, 3]
                for x in range(S):
                    out[g, x] = w0 * c[i0, x] + w1 * c[i1, x] + w2 * c[i2, x] + w3 * c[i3, x]
            else:
                for x in range(S):
                    out[g, x] = w0 * c[i0, x]
                for t in range(1, n):
                    wt, it = rh_w[y, t], rh_idx[y, t]
                    for x in range(S):
                        out[g, x] = out[g, x] + wt * c[it, x]
            y += 1

    # ------------------------------------------------------------------------- the pass
    @_jit
    def _pass(cf, S, rh_idx, rh_w, tag, a, b, pk, bpos, bval, o, band_max, hits):
        """One map, S % 8 == 0, from its column stage cf (c [h, S] flat, columns reversed within each 8):
        pk (its packed row, uint8 [S²/8]) = packed ``u > b``; band pixels ``a <= u <= b`` appended at
        bpos/bval[o:] in pixel order (at most band_max stored, all counted). Row by row, 32 then 8 pixels at
        a time (:func:`_tap_masks32`, the row's T taps of U_h from rh_idx/rh_w, T = len(tag)); the groups
        holding band pixels are noted in hits (≥ S²/8 entries: row, column, bits) and scanned after the map,
        their pixels' fast values recomputed by :func:`_tap_value` (the same float32 operations): two
        pixels a group without a branch (most groups hold one or two), a loop for the others. Returns
        (pixels above b, in the band)."""
        S32 = S - S % 32
        n_above = 0
        nh = np.uint64(0)  # unsigned: no negative-index wraparound in the loop
        for y in range(S):
            rows = _row_tuple(rh_idx, y, tag)
            ws = _row_tuple(rh_w, y, tag)
            base = y * S
            for x in range(0, S32, 32):
                r = _tap_masks32(cf, rows, S, x, ws, a, b)
                g = r & np.uint64(0xFFFFFFFF)
                _store32(pk, (base + x) >> 3, g)
                n_above += _popcount(g)
                bnd = (r >> np.uint64(32)) & ~g
                hits[nh] = (y << 48) | (x << 32) | np.int64(bnd)  # kept only when bnd != 0 (branch-free)
                nh += np.uint64(bnd != 0)
            for x in range(S32, S, 8):
                r = _tap_masks8(cf, rows, S, x, ws, a, b)
                g = r & np.uint64(255)
                pk[(base + x) >> 3] = g
                n_above += _popcount(g)
                bnd = (r >> np.uint64(8)) & ~g
                hits[nh] = (y << 48) | (x << 32) | np.int64(bnd)
                nh += np.uint64(bnd != 0)
        n_band = 0
        for h in range(nh):
            y = hits[h] >> 48
            x0 = (hits[h] >> 32) & 0xFFFF
            bits = _lsb_first(hits[h] & 0xFFFFFFFF)  # bit t: pixel x0 + t
            if n_band + 2 > band_max:
                n_band += _popcount(bits)
                continue
            rows = _row_tuple(rh_idx, y, tag)
            ws = _row_tuple(rh_w, y, tag)
            t1 = _cttz(bits)
            rest = bits & (bits - 1)
            t2 = t1 if rest == 0 else _cttz(rest)  # a second pixel, or the first again (then overwritten)
            bpos[o + n_band] = y * S + x0 + t1
            bval[o + n_band] = _tap_value(cf, rows, S, (x0 + t1) ^ 7, ws)
            bpos[o + n_band + 1] = y * S + x0 + t2
            bval[o + n_band + 1] = _tap_value(cf, rows, S, (x0 + t2) ^ 7, ws)
            n_band += 1 + (rest != 0)
            rest &= rest - 1
            while rest:
                x = x0 + _cttz(rest)
                rest &= rest - 1
                if n_band < band_max:
                    bpos[o + n_band] = y * S + x
                    bval[o + n_band] = _tap_value(cf, rows, S, x ^ 7, ws)
                n_band += 1
        return n_above, n_band

    @_jit
    def _pass_rows(c, rh_idx, rh_w, rh_n, a, b, pk, bpos, bval, o, band_max, buf, hits):
        """:func:`_pass` for any S (c [h, S], columns in order): rows R at a time into buf [R, S] (R a multiple of
        8) by :func:`_rows_into`, then 32, 8 and the last partial byte's pixels of the flat rows (bits in
        pixel order: the packed bytes reversed by :func:`_lsb_first`); hits ≥ R·S/8 + 1 entries."""
        S = c.shape[1]
        R = buf.shape[0]
        flat = buf.reshape(R * S)  # (indexing buf[p // S, p % S] would divide twice a band pixel)
        one = (np.float32(1.0),)  # the tap sums of one value, weight 1: the value itself
        row0 = (0,)
        n_above = 0
        n_band = 0
        for y0 in range(0, S, R):
            y1 = min(y0 + R, S)
            _rows_into(c, y0, y1, rh_idx, rh_w, rh_n, buf)
            L = (y1 - y0) * S
            L8 = L - L % 8
            L32 = L - L % 32
            base = y0 * S  # a multiple of 8 (R is)
            nh = 0
            for i in range(0, L32, 32):
                r = _tap_masks32(flat, row0, 0, i, one, a, b)
                g = r & np.uint64(0xFFFFFFFF)
                _store32(pk, (base + i) >> 3, _lsb_first(np.int64(g)))
                n_above += _popcount(g)
                bnd = (r >> np.uint64(32)) & ~g
                hits[nh] = (i << 32) | np.int64(bnd)
                nh += bnd != 0
            for i in range(L32, L8, 8):
                r = _tap_masks8(flat, row0, 0, i, one, a, b)
                g = r & np.uint64(255)
                pk[(base + i) >> 3] = _lsb_first(np.int64(g))
                n_above += _popcount(g)
                bnd = (r >> np.uint64(8)) & ~g
                hits[nh] = (i << 32) | np.int64(bnd)
                nh += bnd != 0
            for h in range(nh):
                i = hits[h] >> 32
                bits = hits[h] & 0xFFFFFFFF  # bit t: pixel i + t
                while bits:
                    p = i + _cttz(bits)
                    bits &= bits - 1
                    if n_band < band_max:
                        bpos[o + n_band] = base + p
                        bval[o + n_band] = flat[p]
                    n_band += 1
            if L8 < L:  # the last, partial byte (S² not a multiple of 8)
                g = 0
                for j in range(L - L8):
                    v = flat[L8 + j]
                    if v > b:
                        g |= 128 >> j
                        n_above += 1
                    elif v >= a:
                        if n_band < band_max:
                            bpos[o + n_band] = base + L8 + j
                            bval[o + n_band] = v
                        n_band += 1
                pk[(base + L8) >> 3] = g
        return n_above, n_band

    @_jit
    def _map_pass(c, cf, rh_idx, rh_w, rh_n, tag, a, b, pk, bpos, bval, o, band_max, buf, hits):
        """:func:`_pass` where S % 8 == 0 (c's columns reversed within each 8), else :func:`_pass_rows`."""
        S = c.shape[1]
        if S % 8 == 0:
            return _pass(cf, S, rh_idx, rh_w, tag, a, b, pk, bpos, bval, o, band_max, hits)
        return _pass_rows(c, rh_idx, rh_w, rh_n, a, b, pk, bpos, bval, o, band_max, buf, hits)
