"""Exact values and the settlement of median maps in the compiled kernel (:mod:`avsl_core.metrics_kernel`):
``_settle``'s steps (:mod:`avsl_core.metrics_fast_ties`), decided the same way, map by map.

* *Exact values.* :func:`_exact_at`: the exact upsampled value at one pixel (float64 sums over the non-zero
  taps rounded once to float32, as ``_exact_values``); :func:`_exact_extremes`: the map's exact min and max
  (bounds per block of the column stage, :func:`_bound`, select the few blocks, then pixels, that can hold
  them; :func:`_extreme`); :func:`_normalise`: the protocol's float32 normalisation of an exact value.
* *Settlement.* :func:`_settle_clean`: the band values of ranks rk − 1, rk, rk + 1; where the threshold value
  is alone within beta = 2·eps + merge, the band pixels above it are set. Otherwise :func:`_settle_near`: the
  cluster of band values chained to it by gaps ≤ beta (:func:`_cluster`, :func:`_sort_pairs`), too wide or
  too close to the bracket's ends: the exact path (state EXACT); else exact values at its pixels decide, and
  where the threshold's exact neighbours lie within merge of it, the cluster is normalised exactly with the
  map's exact extremes.

The states a map can end in (``median_maps``' and ``fixed_maps``' ``state``) are defined here.
"""
from __future__ import annotations

import numpy as np

from avsl_core.metrics_kernel_intrinsics import HAVE_NUMBA, _jit
from avsl_core.metrics_kernel_select import _SORT_SMALL

if HAVE_NUMBA:
    from avsl_core.metrics_kernel_intrinsics import _minmax32, _row_tuple, _tap_value
    from avsl_core.metrics_kernel_select import _minmax, _select_core, _sort_small

# what settled a map (median_maps' and fixed_maps' ``state``)
BAND = 0    # nothing yet: its band is left for metrics_fast_ties._settle (median_maps without settle)
CLEAN = 1   # fast values alone (the threshold value alone within beta; fixed: no pixel within eps)
NEAR = 2    # exact values of the near-tied pixels
EXACT = 3   # the exact path (metrics_fast._exact_into): bracket missed twice, band or cluster too wide


if HAVE_NUMBA:
    # ------------------------------------------------------------------------- exact values
    @_jit
    def _exact_at(m, y, x, ex):
        """The exact upsampled value of map m [h, w] at pixel (y, x): Σ_j (Σ_i U_h[y, i]·M[i, j])·U_w[x, j] over
        the non-zero taps ex = (eh_idx, eh_w, eh_n, ew_idx, ew_w, ew_n) in float64, rounded once to float32:
        ``_exact_values``' sums (like them, it differs from torch's float64 kernel only in the float64 sum's
        last bits; see metrics_fast_ties)."""
        eh_idx, eh_w, eh_n, ew_idx, ew_w, ew_n = ex
        s = 0.0
        for tw in range(ew_n[x]):
            j = ew_idx[x, tw]
            t = 0.0
            for th in range(eh_n[y]):
                t += eh_w[y, th] * np.float64(m[eh_idx[y, th], j])
            s += t * ew_w[x, tw]
        return np.float32(s)

    @_jit(inline=True)
    def _bound(ext, rh_idx, rh_w, y, k, sign):
        """Upper bound of sign·Σ_t w_t·c[i_t, x] over the columns x of block k, the taps of row y (ext [h, blocks,
        2]: the least and largest c of each source row there), in float64."""
        s = 0.0
        for t in range(rh_idx.shape[1]):
            w = sign * np.float64(rh_w[y, t])
            s += w * ext[rh_idx[y, t], k, 1] if w >= 0 else w * ext[rh_idx[y, t], k, 0]
        return s

    @_jit
    def _extreme(m, cf, S, xm, rh_idx, rh_w, tag, ex, eps, sign, f, ext, row_b, cand, cval):
        """sign·max(sign·u) over the exact upsampled map (float32; :func:`_exact_extremes`); f: a fast value's
        sign·u (or −inf)."""
        nblk = (S + 31) // 32
        ys = 0
        for y in range(S):
            row_b[y] = _bound(ext, rh_idx, rh_w, y, nblk, sign)
            if row_b[y] > row_b[ys]:
                ys = y
        kb = 0
        for k in range(1, nblk):
            if _bound(ext, rh_idx, rh_w, ys, k, sign) > _bound(ext, rh_idx, rh_w, ys, kb, sign):
                kb = k
        rows = _row_tuple(rh_idx, ys, tag)
        ws = _row_tuple(rh_w, ys, tag)
        for xs in range(32 * kb, min(32 * kb + 32, S)):
            f = max(f, sign * np.float64(_tap_value(cf, rows, S, xs, ws)))
        nc = 0  # the blocks that can hold a pixel within 2·eps of the largest fast value, by decreasing bound
        for y in range(S):
            if row_b[y] < f - 3.0 * eps:
                continue
            for k in range(nblk):
                bk = _bound(ext, rh_idx, rh_w, y, k, sign)
                if bk < f - 3.0 * eps:
                    continue
                j = nc
                while j > 0 and cval[j - 1] < bk:
                    cval[j] = cval[j - 1]
                    cand[j] = cand[j - 1]
                    j -= 1
                cval[j] = bk
                cand[j] = y * nblk + k
                nc += 1
        for j in range(nc):  # their fast values, while a block's bound can still reach f − 3·eps
            if cval[j] < f - 3.0 * eps:
                nc = j
                break
            y, k = divmod(cand[j], nblk)
            rows = _row_tuple(rh_idx, y, tag)
            ws = _row_tuple(rh_w, y, tag)
            fm = -np.inf
            for xs in range(32 * k, min(32 * k + 32, S)):
                fm = max(fm, sign * np.float64(_tap_value(cf, rows, S, xs, ws)))
            cval[j] = fm  # now the block's largest fast value
            f = max(f, fm)
        best = -np.inf
        for j in range(nc):  # exact values where the fast ones are within 2·eps of the largest
            if cval[j] < f - 2.0 * eps:
                continue
            y, k = divmod(cand[j], nblk)
            rows = _row_tuple(rh_idx, y, tag)
            ws = _row_tuple(rh_w, y, tag)
            for xs in range(32 * k, min(32 * k + 32, S)):
                if sign * np.float64(_tap_value(cf, rows, S, xs, ws)) >= f - 2.0 * eps:
                    best = max(best, sign * np.float64(_exact_at(m, y, xs ^ xm, ex)))
        return np.float32(sign * best)

    @_jit
    def _exact_extremes(m, cf, S, xm, rh_idx, rh_w, tag, ex, eps, lo, hi, ext, row_b, cand, cval):
        """The exact upsampled map's (min, max), float32, from the fast values of the few blocks of 32 pixels
        that can hold them and exact values at the few pixels that can.

        cf: the map's column stage c [h, S] (flat; column x stored at x ^ xm). A fast value of row y is
        Σ_t w_t·c[i_t, x] rounded in float32 (within eps of it), so sign·u ≤ B + eps over a block of row y,
        B the bound of :func:`_bound` from the ranges of c per source row and block (ext; per whole row,
        to skip rows). With f the largest sign·u found so far, a pixel of the exact extreme E has
        sign·u ≥ E − eps ≥ F − 2·eps ≥ f − 2·eps (F the largest fast value), so only blocks with
        B ≥ f − 3·eps can hold it: they are visited by decreasing bound, f rising, and exact values at the
        pixels with sign·u ≥ F − 2·eps give E (as ``_exact_min_max``, from the column stage rather than the
        row stage). lo, hi: the least and largest of some of the map's fast values (the sub-sample's: f's
        start, fewer blocks to visit where the bounds are loose, as the cubic kernels' negative lobes make
        them), or ±inf.
        Scratch: ext [h, ⌈S/32⌉ + 1, 2], row_b [S], cand and cval [S·⌈S/32⌉]."""
        hc = cf.shape[0] // S
        nblk = (S + 31) // 32
        for i in range(hc):
            ext[i, nblk, 0] = np.inf
            ext[i, nblk, 1] = -np.inf
            for k in range(nblk):
                if 32 * k + 32 <= S:
                    blo, bhi = _minmax32(cf, i * S + 32 * k)
                else:
                    blo = bhi = cf[i * S + 32 * k]
                    for xs in range(32 * k, S):
                        blo = min(blo, cf[i * S + xs])
                        bhi = max(bhi, cf[i * S + xs])
                ext[i, k, 0] = blo
                ext[i, k, 1] = bhi
                ext[i, nblk, 0] = min(ext[i, nblk, 0], blo)
                ext[i, nblk, 1] = max(ext[i, nblk, 1], bhi)
        return (_extreme(m, cf, S, xm, rh_idx, rh_w, tag, ex, eps, -1.0, -np.float64(lo), ext, row_b, cand, cval),
                _extreme(m, cf, S, xm, rh_idx, rh_w, tag, ex, eps, 1.0, np.float64(hi), ext, row_b, cand, cval))

    @_jit(inline=True)
    def _normalise(v, lo, hi, how, score, s_lo, s_rng):
        """The protocol's normalised value of an exact value v in a map whose exact min and max are lo, hi:
        the float32 operations of :func:`~avsl_core.metrics_maps.prepare` (SLAVC's score (v − s_lo)/s_rng
        first when ``score``; how: NORMS)."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        if score:
            v = (v - s_lo) / s_rng
            lo = (lo - s_lo) / s_rng
            hi = (hi - s_lo) / s_rng
        if how == 1:  # (v − lo) / (hi − lo), a constant map unchanged
            r = hi - lo
            if r == zero:
                lo = zero
                r = one
            return (v - lo) / r
        if how == 2:  # 1 − minmax(−v)
            r = (-lo) - (-hi)
            nlo = -hi
            if r == zero:
                nlo = zero
                r = one
            return one - ((-v) - nlo) / r
        return v

    # ------------------------------------------------------------------------- settlement
    @_jit
    def _settle_clean(band, nb, rk, a, b, beta, strict, bpos, o, pkr, work, work2):
        """Step 1 of ``_settle`` for one map whose band (nb values band = bval[o:o + nb], pixels at bpos[o:])
        holds rank k at band rank rk: thr, the value there, and whether it is alone within beta of its sorted
        neighbours (ranks rk ± 1, selected with it) and the bracket [a, b] (then its band pixels that are on
        are set in pkr). work, work2: scratch of ≥ nb values. Returns (thr, settled)."""
        v_lo, thr, v_hi = _select_core(band, nb, max(rk - 1, 0), rk, min(rk + 1, nb - 1), work, work2)
        prev = -np.inf if rk == 0 else np.float64(v_lo)
        nxt = np.inf if rk + 1 >= nb else np.float64(v_hi)
        t64 = np.float64(thr)
        lo = max(prev, np.float64(a))
        hi = min(nxt, np.float64(b))
        if not (t64 - lo > beta and hi - t64 > beta):
            return thr, False
        for i in range(nb):
            v = band[i]
            on = (v > thr) if strict else (v >= thr)
            p = bpos[o + i]
            pkr[p >> 3] |= np.uint8(on) << np.uint8(7 - (p & 7))
        return thr, True

    @_jit
    def _cluster(bval, o, nb, thr, beta, wv, wi):
        """_settle's cluster around the band value thr (nb values at bval[o:]): the values chained to it by gaps
        ≤ beta between consecutive sorted values (float64 differences, as _settle's). The values within W of
        thr are gathered (wv, wi: scratch of ≥ nb; W = 16·beta first) and sorted, and the chain walked
        there; where it reaches the window's edge within beta (a value outside could continue it), W grows
        256-fold and the walk is redone. Returns the cluster's lowest and highest values lo, hi, the band
        ranks s (the first of lo) and e (the last of hi), and in wv/wi[j0:j1] its values and band indices."""
        t64 = np.float64(thr)
        W = 16.0 * beta
        while True:
            n_under = 0
            nw = 0
            for i in range(nb):  # branch-free: most values lie outside the window
                v = np.float64(bval[o + i])
                n_under += v < t64 - W
                wv[nw] = bval[o + i]
                wi[nw] = i
                nw += (v >= t64 - W) and (v <= t64 + W)
            _sort_pairs(wv, wi, nw)
            j0 = 0
            while wv[j0] != thr:
                j0 += 1
            j1 = j0
            while j0 > 0 and np.float64(wv[j0]) - np.float64(wv[j0 - 1]) <= beta:
                j0 -= 1
            while j1 + 1 < nw and np.float64(wv[j1 + 1]) - np.float64(wv[j1]) <= beta:
                j1 += 1
            if ((j0 > 0 or n_under == 0 or np.float64(wv[j0]) - (t64 - W) > beta)
                    and (j1 < nw - 1 or n_under + nw == nb or (t64 + W) - np.float64(wv[j1]) > beta)):
                return wv[j0], wv[j1], n_under + j0, n_under + j1, j0, j1 + 1
            W *= 256.0

    @_jit
    def _sort_pairs(v, idx, n):
        """Sort v[:n] in place, idx[:n] along: insertion sort up to _SORT_SMALL values, a stable argsort above."""
        if n <= _SORT_SMALL:
            for i in range(1, n):
                x = v[i]
                xi = idx[i]
                j = i - 1
                while j >= 0 and v[j] > x:
                    v[j + 1] = v[j]
                    idx[j + 1] = idx[j]
                    j -= 1
                v[j + 1] = x
                idx[j + 1] = xi
        else:
            order = np.argsort(v[:n], kind="mergesort")
            v[:n] = v[:n][order]
            idx[:n] = idx[:n][order]

    @_jit
    def _settle_near(m, cf, S, xm, rh_idx, rh_w, tag, ex, bpos, bval, o, nb, rk, thr, a, b, eps, merge, win, norm,
                     pkr, wv, wi, cval, scratch):
        """Steps 2-3 of ``_settle`` for map m [h, w] whose threshold value thr (band rank rk of its nb band
        pixels at bpos/bval[o:]) is not alone within beta = 2·eps + merge: the cluster around it
        (:func:`_cluster`; reaching win ranks from rk, or the band's end within beta of the bracket: the
        exact path), its pixels' exact values (:func:`_exact_at`), the threshold the (rk − s)-th of them;
        where an exact neighbour lies within merge of it, the cluster's values normalised exactly with the
        map's exact extremes (:func:`_exact_extremes`, :func:`_normalise`). Sets the band pixels that are on
        in pkr (wv, wi: scratch of ≥ nb + 1, cval of ≥ nb; scratch: the sub-sample and _exact_extremes').
        Returns NEAR, or EXACT for the exact path."""
        beta = 2.0 * eps + merge
        lo, hi, s, e, j0, j1 = _cluster(bval, o, nb, thr, beta, wv, wi)
        if ((rk >= win and s <= rk - win) or (rk + win < nb and e >= rk + win)
                or (s == 0 and np.float64(lo) - np.float64(a) <= beta)
                or (e == nb - 1 and np.float64(b) - np.float64(hi) <= beta)):
            return EXACT
        for i in range(nb):  # above the cluster: on; below: off; inside: exact values decide
            p = bpos[o + i]
            pkr[p >> 3] |= np.uint8(bval[o + i] > hi) << np.uint8(7 - (p & 7))
        n = j1 - j0
        for j in range(n):
            p = bpos[o + wi[j0 + j]]
            wi[j] = p  # now the member's pixel
            cval[j] = _exact_at(m, p // S, p % S, ex)
            wv[j] = cval[j]
        _sort_small(wv, n)
        want = rk - s
        tv = wv[want]
        nb_lo = np.float64(wv[want - 1]) if want > 0 else -np.inf
        nb_hi = np.float64(wv[want + 1]) if want + 1 < n else np.inf
        merged = not (np.float64(tv) - nb_lo > merge and nb_hi - np.float64(tv) > merge)
        how, score, s_lo, s_rng, strict, lvs = norm
        lo_m = np.float32(0.0)
        hi_m = np.float32(0.0)
        if merged:  # the normalisation may tie them: normalise exactly (monotone: the threshold's rank stays)
            sub, ext, row_b, cand, cbound = scratch
            g_lo, g_hi = _minmax(sub, sub.shape[0])  # the sub-sample's fast values
            lo_m, hi_m = _exact_extremes(m, cf, S, xm, rh_idx, rh_w, tag, ex, eps, g_lo, g_hi, ext, row_b, cand,
                                         cbound)
            tv = _normalise(tv, lo_m, hi_m, how, score, s_lo, s_rng)
        for j in range(n):
            v = cval[j]
            if merged:
                v = _normalise(v, lo_m, hi_m, how, score, s_lo, s_rng)
            on = (v > tv) if strict else (v >= tv)
            if merged and lvs and v >= np.float32(1.0):  # LVS keeps pixels at 1 on
                on = True
            if on:
                p = wi[j]
                pkr[p >> 3] |= np.uint8(128 >> (p & 7))
        return NEAR
