"""Selection for the compiled kernel (:mod:`avsl_core.metrics_kernel`): the values of given ranks of a float32
array, equal to np.partition's.

:func:`_select_core` (by :func:`_select2` for two ranks) moves two value thresholds by counting passes
(:func:`_count2`: 8 lanes of compare masks summed, :func:`~avsl_core.metrics_kernel_intrinsics._count_lt_le`),
by interpolation on the counts (:func:`_inside`), until each lies within ``_PAD`` ranks outside the wanted
ranks; the values left between are gathered (:func:`_compact`) and sorted (:func:`_sort_small`). The kernel
selects the value bracket [a, b] of each map's sub-sample with it, and the settlement the band values
around the threshold.
"""
from __future__ import annotations

import math

import numpy as np

from avsl_core.metrics_kernel_intrinsics import HAVE_NUMBA, _jit

if HAVE_NUMBA:
    from avsl_core.metrics_kernel_intrinsics import _count_lt_le, _cttz, _in_range32, _minmax32

_SORT_SMALL = 64   # selection: insertion sort up to this many values, np.sort above
_PAD = 12          # selection: the bracket's ends are looked for within _PAD ranks outside the wanted ranks


if HAVE_NUMBA:
    # ------------------------------------------------------------------------- selection
    @_jit(inline=True)
    def _inside(lo, hi, c_lo, c_hi, target, bisect):
        """A float32 strictly between lo < hi, aimed at the value of rank target by interpolating the counts
        c_lo < target < c_hi at lo and hi (or the midpoint); lo itself when there is none."""
        f = 0.5 if bisect else min(max((target - c_lo + 0.5) / (c_hi - c_lo), 0.02), 0.98)
        t = lo + (hi - lo) * np.float32(f)
        if not (lo < t < hi):
            t = lo + (hi - lo) * np.float32(0.5)
            if not math.isfinite(t):
                t = lo * np.float32(0.5) + hi * np.float32(0.5)
            if not (lo < t < hi):
                return lo
        return t

    @_jit
    def _minmax(x, n):
        """Min and max of x[:n] (no NaN): 32 values at a time (:func:`_minmax32`), then the rest."""
        mn = x[0]
        mx = x[0]
        n32 = n - n % 32
        for i in range(0, n32, 32):
            lo, hi = _minmax32(x, i)
            mn = min(mn, lo)
            mx = max(mx, hi)
        for i in range(n32, n):
            mn = min(mn, x[i])
            mx = max(mx, x[i])
        return mn, mx

    @_jit
    def _count2(x, n, tl, th):
        """(#(x[:n] < tl), #(x[:n] <= th)): 8 values at a time (:func:`_count_lt_le`), then the rest."""
        n8 = n - n % 8
        cl, ch = _count_lt_le(x, n8, tl, th)
        for i in range(n8, n):
            v = x[i]
            cl += v < tl
            ch += v <= th
        return cl, ch

    @_jit
    def _compact(x, n, lo, hi, out):
        """The values of x[:n] in [lo, hi] into out, in order; returns how many."""
        m = 0
        n32 = n - n % 32
        for i in range(0, n32, 32):
            bits = _in_range32(x, i, lo, hi)
            while bits:
                out[m] = x[i + _cttz(bits)]
                bits &= bits - np.uint64(1)
                m += 1
        for i in range(n32, n):
            v = x[i]
            if v >= lo and v <= hi:
                out[m] = v
                m += 1
        return m

    @_jit
    def _sort_small(a, m):
        """Sort a[:m] in place: insertion sort up to _SORT_SMALL values, np.sort above."""
        if m <= _SORT_SMALL:
            for i in range(1, m):
                v = a[i]
                j = i - 1
                while j >= 0 and a[j] > v:
                    a[j + 1] = a[j]
                    j -= 1
                a[j + 1] = v
        else:
            a[:m] = np.sort(a[:m])

    @_jit
    def _select2(x, n, k0, k1, work, work2):
        """Values of ranks k0 <= k1 (0-based, as np.partition) of x[:n] (x unchanged; work, work2: scratch of
        n values each): :func:`_select_core`, once for ranks close together, else once per rank (the values
        between are not needed, and sorting them would cost more than a second search)."""
        if k1 - k0 <= 2 * _PAD + 8:
            v0, _, v1 = _select_core(x, n, k0, k0, k1, work, work2)
            return v0, v1
        return _select_core(x, n, k0, k0, k0, work, work2)[0], _select_core(x, n, k1, k1, k1, work, work2)[0]

    @_jit
    def _select_core(x, n, k0, km, k1, work, work2):
        """Values of ranks k0 <= km <= k1 (0-based, as np.partition) of x[:n] (x unchanged; work, work2: scratch
        of n values each).

        Two value thresholds are searched at once, one counting pass for both each round: lo with
        #(x < lo) in [k0 − _PAD, k0] and hi with #(x <= hi) in [k1 + 1, k1 + 1 + _PAD], by interpolation on
        the counts (bisection after a round that cut the count range by less than a tenth). Once [lo's bracket, hi's
        bracket] holds at most an eighth of the values scanned, those values are gathered and the rounds
        go on over them alone. The values in [lo, hi] (ranks #(x < lo) .. #(x <= hi) − 1) are finally
        sorted. Ties: where no threshold lands in a window (a run of equal values across it), the search
        stops at the last valid threshold."""
        mn, mx = _minmax(x, n)
        inf = np.float32(np.inf)
        # lower search: #(x < la) = ca <= k0 < cb = #(x < lb); upper: #(x <= ha) = da <= k1 < db = #(x <= hb)
        la, ca, lb, cb = mn, 0, np.nextafter(mx, inf), n
        ha, da, hb, db = np.nextafter(mn, -inf), 0, mx, n
        lo_done = ca >= k0 - _PAD
        hi_done = db <= k1 + 1 + _PAD
        lo_bis = False
        hi_bis = False
        cur = x     # the values scanned: all of x, or those in [la, hb] (then base = #(x < la))
        ncur = n
        base = 0
        into2 = False  # the next gathering goes into work2 (else work)
        while not (lo_done and hi_done):
            if 8 * (db - ca) <= ncur and ncur > 256:
                if into2:
                    ncur = _compact(cur, ncur, la, hb, work2)
                    cur = work2
                else:
                    ncur = _compact(cur, ncur, la, hb, work)
                    cur = work
                into2 = not into2
                base = ca
            tl = -inf
            th = -inf
            if not lo_done:
                tl = _inside(la, lb, ca, cb, k0 - _PAD // 2, lo_bis)
                if tl == la:  # no float left between: la stands
                    lo_done = True
                    tl = -inf
            if not hi_done:
                th = _inside(ha, hb, da, db, k1 + 1 + _PAD // 2, hi_bis)
                if th == ha:
                    hi_done = True
                    th = -inf
            cl, ch = _count2(cur, ncur, tl, th)
            if not lo_done:
                cl += base
                span = cb - ca
                if cl > k0:
                    lb, cb = tl, cl
                else:
                    la, ca = tl, cl
                    lo_done = cl >= k0 - _PAD
                lo_bis = 10 * (cb - ca) > 9 * span
            if not hi_done:
                ch += base
                span = db - da
                if ch <= k1:
                    ha, da = th, ch
                else:
                    hb, db = th, ch
                    hi_done = ch <= k1 + 1 + _PAD
                hi_bis = 10 * (db - da) > 9 * span
        if la == hb:  # all the wanted ranks hold one value
            return la, la, la
        if into2:
            m = _compact(cur, ncur, la, hb, work2)
            _sort_small(work2, m)
            return work2[k0 - ca], work2[km - ca], work2[k1 - ca]
        m = _compact(cur, ncur, la, hb, work)
        _sort_small(work, m)
        return work[k0 - ca], work[km - ca], work[k1 - ca]
