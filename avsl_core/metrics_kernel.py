"""Compiled (numba) kernel of the fast path: steps 1-2 of :mod:`avsl_core.metrics_fast`, one map at a time.

For each native map M [h, w], :func:`median_maps` computes the fast upsampled values, selects the value
bracket [a, b] from the sub-sample, and in one pass over the S×S pixels writes the packed ``u > b`` row
(np.packbits order: MSB first, row-major pixels) and the band ``a <= u <= b`` (pixel positions and fast
values, in pixel order), counting the pixels above b and in the band. With ``settle`` off and ``narrow`` 0
its outputs are exactly those of :func:`~avsl_core.metrics_fast._bracket_chunk` for the same fast values
(given as ``ui``, the kernel takes those instead of computing its own: the tests do both), so
:func:`~avsl_core.metrics_fast_ties._settle`, ``_or_bits``, ``_exact_into`` and the exactness argument are
reused as they are. :func:`fixed_maps` does the same for a fixed threshold (band ``lo <= u <= hi``).

* *Fast values* (:func:`_col_stage`, :func:`_rows_into`). ``c = M @ U_w.T`` first ([h, S], by blocks of
  32 output columns over the source columns with a non-zero weight in the block), then each output row
  ``u[y] = Σ_t U_h[y, i_t] · c[i_t]`` over the t_h non-zero weights of U_h[y] (contiguous rows of c:
  vectorised over x). Both are float32 sums in a fixed order, without fast-math (no reassociation; a
  fused multiply-add would only round less). The column sums also add the block's zero weights' products,
  which are exact ±0 and leave every partial sum as it was: each value is the float32 sum of the t_w
  non-zero products, then of the t_h non-zero row products, which is what the bound of
  :func:`~avsl_core.metrics_fast._fast_op`, ``|fast − exact| ≤ (t_h + t_w + 3)·u·gain·max|M|``, assumes.
  Its first-order terms are symmetric in the two stages (t_w roundings of the column sums, t_h of the row
  sums, 2u for the float32 weights, u for the exact value's rounding), so taking the column stage first
  changes nothing; only the values' last bits differ from torch's matmuls, which the bound covers
  (tested against the exact upsampling). The sub-sample is computed by the same code on the grid's
  columns of c, so its values are those of the pass.
* *Selection* (:func:`_select2`). a and b are the values of ranks k0 and k1 of the sub-sample (every
  ``step``-th row from ``row0`` and column from ``col0``, the grid of ``_bracket_chunk``): values, so
  whatever the algorithm they equal np.partition's. Here by counting passes (32 values a step) that move
  two thresholds by interpolation on the counts until each lies within _PAD ranks outside k0 and k1,
  then the few values between sorted. Maps whose rank k falls outside the bracket are redone once with
  ranks w0, w1 (the widening of ``_bracket_chunk``); ``ok`` as there.
* *The pass* (:func:`_pass`). 16 rows at a time, then 32 pixels at a time: one vector load, two ordered
  compares and their bit masks in packbits order (LLVM intrinsics: ``fcmp`` on ``<32 x float>``, a
  shuffle within bytes, bitcast to ``i32``: vcmpps, packs, vpshufb, vpmovmskb), the packed bytes stored
  as they come; the 32-pixel groups holding band pixels are noted without a branch and scanned after.
* *Clean maps* (``settle``; :func:`_settle_clean`): step 1 of ``_settle``, done here: with thr = the band
  value of rank k − n_below and its sorted neighbours prev and next, the map is settled when
  ``thr − max(prev, a) > beta`` and ``min(next, b) − thr > beta`` (float64, as there; beta = 2·eps +
  merge); its band pixels ``> thr`` (``>=`` unless strict) are set and its band dropped. The other bands
  are narrowed (``narrow``; :func:`_narrow`) to the ranks _settle can look at. The tests check that the
  bits and the counts of clean, near-tied and exact maps are the same with and without these two steps.

``HAVE_NUMBA`` is False when numba is not importable; :mod:`avsl_core.metrics_fast` then uses its numpy
path. Nothing runs in parallel inside the kernel (no prange); ``workers`` threads run blocks (``nogil``).
Functions are compiled with ``cache=True`` (the first compile takes ~30 s; later imports load the cache);
where numba finds no writable cache directory they compile in memory instead (:func:`_jit`).
Calls between compiled functions pass each array with atomic reference counting, so the hot loops call
no helper with array arguments per row or per pixel.
"""
from __future__ import annotations

import math

import numpy as np

try:  # pragma: no cover - exercised through HAVE_NUMBA
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any failure to import means: use the numpy path
    HAVE_NUMBA = False

_SORT_SMALL = 64   # selection: insertion sort up to this many values, np.sort above
_PAD = 12          # selection: the bracket's ends are looked for within _PAD ranks outside the wanted ranks
_ROWS = 16         # the pass computes this many rows of a map at a time (a multiple of 8; 14 KB at S = 224)


def _jit(fn=None, inline: bool = False):
    """njit(cache=True, nogil=True), or without the cache when numba has no writable cache directory
    (numba raises RuntimeError at decoration time then). ``inline``: inlined into its callers by numba
    (helpers without array arguments: an inlined array argument still costs atomic reference counting)."""
    if fn is None:
        return lambda f: _jit(f, inline)
    kw = dict(nogil=True, inline="always") if inline else dict(nogil=True)
    try:
        return njit(cache=True, **kw)(fn)
    except RuntimeError:
        return njit(**kw)(fn)


if HAVE_NUMBA:
    # ------------------------------------------------------------------------- compare masks
    def _masks_codegen(width: int, out_bits: int):
        """Code of the packbits bytes of ``v > b`` (bits 0 .. width − 1 of the result) and ``v >= a`` (the
        next width bits) for the ``width`` values v = arr.flat[start:start + width] of a C-contiguous float32
        array: byte q of each half holds values 8q..8q+7, the first in the high bit (np.packbits order). One
        vector load, two ordered compares (NaN: 0), the bits reversed within bytes, bit masks (LLVM: vcmpps,
        packs, vpshufb, vpmovmskb for 32 values; vmovmskps for 8)."""
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], signature.args[1], types.intp)
            i32 = ir.IntType(32)
            vec = ir.VectorType(ir.FloatType(), width)
            v = builder.load(builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), vec.as_pointer()),
                             align=4)
            rev = ir.Constant(ir.VectorType(i32, width), [8 * (p // 8) + 7 - p % 8 for p in range(width)])
            wide = ir.IntType(out_bits)

            def mask(val, ty, op):
                t = context.cast(builder, val, ty, types.float32)
                sp = builder.insert_element(ir.Constant(vec, ir.Undefined), t, ir.Constant(i32, 0))
                sp = builder.shuffle_vector(sp, sp, ir.Constant(ir.VectorType(i32, width), [0] * width))
                c = builder.fcmp_ordered(op, v, sp)
                c = builder.shuffle_vector(c, c, rev)
                return builder.zext(builder.bitcast(c, ir.IntType(width)), wide)
            g = mask(args[3], signature.args[3], ">")
            e = mask(args[2], signature.args[2], ">=")
            return builder.or_(g, builder.shl(e, ir.Constant(wide, width)))
        return codegen

    def _is_f32_c(arr):
        return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"

    @intrinsic
    def _masks8(typingctx, arr, start, a, b):
        """uint32: packbits byte of ``v > b`` (bits 0-7) and of ``v >= a`` (bits 8-15), 8 values from start."""
        if not _is_f32_c(arr):
            return None
        return types.uint32(arr, start, a, b), _masks_codegen(8, 32)

    @intrinsic
    def _masks32(typingctx, arr, start, a, b):
        """uint64: the 4 packbits bytes of ``v > b`` (bits 0-31, little-endian: the first byte lowest) and of
        ``v >= a`` (bits 32-63), 32 values from start."""
        if not _is_f32_c(arr):
            return None
        return types.uint64(arr, start, a, b), _masks_codegen(32, 64)

    @intrinsic
    def _store32(typingctx, arr, start, val):
        """arr[start:start + 4] = the 4 bytes of val, little-endian (arr: C-contiguous uint8, 1-D)."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.layout == "C" and arr.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], signature.args[1], types.intp)
            v = builder.trunc(context.cast(builder, args[2], signature.args[2], types.uint64), ir.IntType(32))
            p = builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), ir.IntType(32).as_pointer())
            builder.store(v, p, align=1)
            return context.get_dummy_value()
        return types.void(arr, start, val), codegen

    @intrinsic
    def _cttz(typingctx, x):
        """Trailing zero bits of a non-zero integer (llvm.cttz on 64 bits)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.cttz(context.cast(builder, args[0], signature.args[0], types.int64),
                                ir.Constant(ir.IntType(1), 1))
        return types.int64(x), codegen

    @_jit(inline=True)
    def _lsb_first(w):
        """Bits reversed within each byte of a 32-bit mask: packbits order → bit j of byte q is value 8q + j."""
        w = ((w >> 1) & 0x55555555) | ((w & 0x55555555) << 1)
        w = ((w >> 2) & 0x33333333) | ((w & 0x33333333) << 2)
        return ((w >> 4) & 0x0F0F0F0F) | ((w & 0x0F0F0F0F) << 4)

    @intrinsic
    def _popcount(typingctx, x):
        """Set bits of a non-negative integer (llvm.ctpop on 64 bits)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.ctpop(context.cast(builder, args[0], signature.args[0], types.int64))
        return types.int64(x), codegen

    # ------------------------------------------------------------------------- fast values
    # (no array views in the loops: each view costs atomic reference counting in numba)
    @_jit
    def _col_stage(m, uwt, jlo, jhi, c):
        """c[i, x] = Σ_j m[i, j] · uwt[j, x] (m [h, w], uwt = U_w.T [w, S] float32, c [h, S]) by blocks of 32
        output columns, j over jlo[blk]..jhi[blk] (the source columns with a non-zero weight in the block): a
        float32 sum over j in order, vectorised over x. A zero weight gives an exact ±0 product (m finite),
        which leaves the partial sum unchanged: this is the float32 sum of the t_w non-zero products of U_w[x]
        in order, the sum the fast bound assumes."""
        h = m.shape[0]
        S = c.shape[1]
        for blk in range(jlo.shape[0]):
            # unsigned column indices (numba adds a negative-index branch to signed ones, which stops
            # vectorisation) and a run-time bound (a constant one gets the loop unrolled instead)
            x0 = np.uint64(blk * 32)
            x1 = np.uint64(min(blk * 32 + 32, S))
            jl, jh = jlo[blk], jhi[blk]
            for i in range(h):
                for x in range(x0, x1):
                    c[i, x] = np.float32(0.0)
                for j in range(jl, jh + 1):
                    mij = m[i, j]
                    for x in range(x0, x1):
                        c[i, x] = c[i, x] + mij * uwt[j, x]

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

    @_jit
    def _rows_copy(ui, row, y0, y1, out):
        """out[y − y0, x] = ui[row, y·S + x] for y0 <= y < y1: rows of given fast maps ui [B, S·S]."""
        S = out.shape[1]
        for y in range(y0, y1):
            for x in range(S):
                out[y - y0, x] = ui[row, y * S + x]

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
        """Min and max of x[:n]."""
        mn = x[0]
        mx = x[0]
        for i in range(n):
            v = x[i]
            mn = min(mn, v)
            mx = max(mx, v)
        return mn, mx

    @_jit
    def _count2(x, n, tl, th):
        """(#(x[:n] < tl), #(x[:n] <= th)), 32 values at a time."""
        cl = 0
        ch = 0
        n32 = n - n % 32
        for i in range(0, n32, 32):
            r = _masks32(x, i, tl, th)  # bits 0-31: v > th; bits 32-63: v >= tl
            ch += 32 - _popcount(r & np.uint64(0xFFFFFFFF))
            cl += 32 - _popcount(r >> np.uint64(32))
        for i in range(n32, n):
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
            r = _masks32(x, i, lo, hi)
            hit = (r >> np.uint64(32)) & ~r & np.uint64(0xFFFFFFFF)  # lo <= v and not v > hi
            if hit:
                bits = _lsb_first(np.int64(hit))
                while bits:
                    out[m] = x[i + _cttz(bits)]
                    bits &= bits - 1
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
            return _select_core(x, n, k0, k1, work, work2)
        return _select_core(x, n, k0, k0, work, work2)[0], _select_core(x, n, k1, k1, work, work2)[0]

    @_jit
    def _select_core(x, n, k0, k1, work, work2):
        """Values of ranks k0 <= k1 (0-based, as np.partition) of x[:n] (x unchanged; work, work2: scratch of
        n values each).

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
            return la, la
        if into2:
            m = _compact(cur, ncur, la, hb, work2)
            _sort_small(work2, m)
            return work2[k0 - ca], work2[k1 - ca]
        m = _compact(cur, ncur, la, hb, work)
        _sort_small(work, m)
        return work[k0 - ca], work[k1 - ca]

    # ------------------------------------------------------------------------- the pass
    @_jit
    def _pass(c, ui, row, rh_idx, rh_w, rh_n, a, b, pk, bpos, bval, o, band_max, buf, hits):
        """One map: pk (its packed row, uint8 [⌈S²/8⌉]) = packed ``u > b``; band pixels ``a <= u <= b``
        appended at bpos/bval[o:] in pixel order (at most band_max stored, all counted). Rows go R at a time
        (buf [R, S], R a multiple of 8), 32 then 8 pixels at a time; the groups holding band pixels are
        noted in hits (≥ R·S/8 + 1) and scanned after their rows. Returns (pixels above b, in the band)."""
        S = c.shape[1]
        R = buf.shape[0]
        flat = buf.reshape(R * S)  # (indexing buf[p // S, p % S] would divide twice a band pixel)
        n_above = 0
        n_band = 0
        for y0 in range(0, S, R):
            y1 = min(y0 + R, S)
            if ui.shape[0] > 0:
                _rows_copy(ui, row, y0, y1, buf)
            else:
                _rows_into(c, y0, y1, rh_idx, rh_w, rh_n, buf)
            L = (y1 - y0) * S
            L8 = L - L % 8
            L32 = L - L % 32
            base = y0 * S  # a multiple of 8 (R is)
            nh = 0
            for i in range(0, L32, 32):
                r = _masks32(buf, i, a, b)
                g = r & np.uint64(0xFFFFFFFF)
                _store32(pk, (base + i) >> 3, g)
                n_above += _popcount(g)
                bnd = (r >> np.uint64(32)) & ~g
                hits[nh] = (i << 32) | np.int64(bnd)  # kept only when bnd != 0 (branch-free)
                nh += bnd != 0
            for i in range(L32, L8, 8):
                r8 = _masks8(buf, i, a, b)
                g8 = r8 & np.uint32(255)
                pk[(base + i) >> 3] = g8
                n_above += _popcount(g8)
                bnd8 = (r8 >> np.uint32(8)) & ~g8
                hits[nh] = (i << 32) | np.int64(bnd8)
                nh += bnd8 != 0
            for h in range(nh):
                i = hits[h] >> 32
                bits = _lsb_first(hits[h] & 0xFFFFFFFF)  # bit t: pixel i + t
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
    def _settle_clean(bval, o, nb, rk, a, b, beta, strict, bpos, pkr, vals, work, work2):
        """Step 1 of ``_settle`` for one map whose band (nb values at bval/bpos[o:]) holds rank k at band rank
        rk: when the value there is alone within beta, set its band pixels that are on and return True.
        vals, work, work2: scratch of ≥ nb values."""
        for i in range(nb):
            vals[i] = bval[o + i]
        thr = _select2(vals, nb, rk, rk, work, work2)[0]
        n_lt = 0
        n_le = 0
        below = -np.inf
        above = np.inf
        for i in range(nb):  # branch-free: half the values lie on either side
            v = vals[i]
            lt = v < thr
            n_lt += lt
            n_le += v <= thr
            below = max(below, np.float64(v) if lt else -np.inf)
            above = min(above, np.float64(v) if v > thr else np.inf)
        # the sorted neighbours of rank rk (equal to thr inside a tie), as _settle's prev and next
        prev = -np.inf if rk == 0 else (np.float64(thr) if n_lt <= rk - 1 else below)
        nxt = np.inf if rk + 1 >= nb else (np.float64(thr) if n_le > rk + 1 else above)
        t64 = np.float64(thr)
        lo = max(prev, np.float64(a))
        hi = min(nxt, np.float64(b))
        if not (t64 - lo > beta and hi - t64 > beta):
            return False
        for i in range(nb):
            v = vals[i]
            on = (v > thr) if strict else (v >= thr)
            p = bpos[o + i]
            pkr[p >> 3] |= np.uint8(on) << np.uint8(7 - (p & 7))
        return True

    @_jit
    def _narrow(bval, bpos, o, nb, rk, W, a, b, pkr, vals, work, work2):
        """Narrow the band of a map that _settle will see (nb values at bval/bpos[o:], rank k at band rank rk)
        to the values in [a2, b2] = [value of band rank rk − W, value of band rank rk + W] (either end kept
        where the band ends first); the pixels above b2 are set in pkr. With W > _CLUSTER_WIN, _settle
        decides the same bits from the narrowed band: the neighbours of rank k, its near-tie window and
        cluster are the same values, the pixels dropped above are on and those below off in every case,
        and a2 <= prev, next <= b2 leave its bracket tests unchanged. Returns (kept, dropped below, a2, b2)."""
        lo_r = rk - W
        hi_r = rk + W
        if lo_r <= 0 and hi_r >= nb - 1:
            return nb, 0, a, b
        for i in range(nb):
            vals[i] = bval[o + i]
        va, vb = _select2(vals, nb, max(lo_r, 0), min(hi_r, nb - 1), work, work2)
        a2 = va if lo_r > 0 else a
        b2 = vb if hi_r < nb - 1 else b
        j = 0
        n_lt = 0
        for i in range(nb):  # branch-free: the values come in pixel order, not value order
            v = bval[o + i]
            p = bpos[o + i]
            lt = v < a2
            gt = v > b2
            n_lt += lt
            pkr[p >> 3] |= np.uint8(gt) << np.uint8(7 - (p & 7))
            bval[o + j] = v
            bpos[o + j] = p
            j += not (lt or gt)
        return j, n_lt, a2, b2

    # ------------------------------------------------------------------------- per block of maps
    @_jit
    def median_maps(m, ui, uwt, jlo, jhi, rh_idx, rh_w, rh_n, k, k0, k1, w0, w1, row0, col0, step, band_max,
                    settle, beta, strict, narrow, pk, bpos, bval, starts, a_out, b_out, n_below, ok, clean):
        """Median protocols, maps m [B, h, w] (or their fast maps ui [B, S·S] when ui has rows): the outputs
        of ``_bracket_chunk`` (pk [B, nb]; band at bpos/bval[starts[i]:starts[i+1]], row-major; a, b,
        n_below, ok), and, with ``settle``, maps settled as clean (``clean``; their bits set, band empty).
        ``narrow`` > 0: the other bands narrowed to ``narrow`` ranks either side of rank k (:func:`_narrow`;
        a, b, n_below and pk follow).
        Returns the number of maps done: fewer than B when the band buffers (≥ band_max) run out of room;
        the caller then resumes from there with emptied buffers."""
        B = pk.shape[0]
        cap = bpos.shape[0]
        S = rh_idx.shape[0]
        N = S * S
        c = np.empty((m.shape[1], S), np.float32)
        buf = np.empty((_ROWS, S), np.float32)
        hits = np.empty(buf.size // 8 + 1, np.int64)
        rows_sub = (S - row0 + step - 1) // step
        cols_sub = (S - col0 + step - 1) // step
        ms = rows_sub * cols_sub
        sub = np.empty(ms, np.float32)
        sub2 = sub.reshape((rows_sub, cols_sub))
        c_sub = np.empty((m.shape[1], cols_sub), np.float32)
        rh_sub_idx = rh_idx[row0::step].copy()  # the row weights of the grid rows
        rh_sub_w = rh_w[row0::step].copy()
        rh_sub_n = rh_n[row0::step].copy()
        work = np.empty(max(ms, band_max), np.float32)
        work2 = np.empty(max(ms, band_max), np.float32)
        vals = np.empty(band_max, np.float32)
        o = 0
        for i in range(B):
            starts[i] = o
            if o + band_max > cap:
                return i
            pkr = pk[i]
            # the sub-sample: rows row0::step, columns col0::step (from the grid's columns of c: the same
            # float32 operations as the pass, so the same values)
            if ui.shape[0] == 0:
                _col_stage(m[i], uwt, jlo, jhi, c)
                for ii in range(c.shape[0]):
                    for xx in range(cols_sub):
                        c_sub[ii, xx] = c[ii, col0 + xx * step]
                _rows_into(c_sub, 0, rows_sub, rh_sub_idx, rh_sub_w, rh_sub_n, sub2)
            else:
                for yy in range(rows_sub):
                    for xx in range(cols_sub):
                        sub2[yy, xx] = ui[i, (row0 + yy * step) * S + col0 + xx * step]
            a, b = _select2(sub, ms, k0, k1, work, work2)
            n_ab, n_bd = _pass(c, ui, i, rh_idx, rh_w, rh_n, a, b, pkr, bpos, bval, o, band_max, buf, hits)
            nbl = N - n_ab - n_bd
            if nbl > k or k >= nbl + n_bd:  # missed: the wide bracket, once
                a, b = _select2(sub, ms, w0, w1, work, work2)
                n_ab, n_bd = _pass(c, ui, i, rh_idx, rh_w, rh_n, a, b, pkr, bpos, bval, o, band_max, buf, hits)
                nbl = N - n_ab - n_bd
            good = nbl <= k and k < nbl + n_bd and n_bd <= band_max
            ok[i] = good
            clean[i] = False
            if good:
                if settle and _settle_clean(bval, o, n_bd, k - nbl, a, b, beta[i], strict, bpos, pkr, vals, work,
                                            work2):
                    clean[i] = True
                else:
                    if narrow > 0:
                        n_bd, n_lt, a, b = _narrow(bval, bpos, o, n_bd, k - nbl, narrow, a, b, pkr, vals, work, work2)
                        nbl += n_lt
                    o += n_bd
            a_out[i] = a
            b_out[i] = b
            n_below[i] = nbl
        starts[B] = o
        return B

    @_jit
    def fixed_maps(m, uwt, jlo, jhi, rh_idx, rh_w, rh_n, lo, hi, pk, bpos, bval, starts):
        """Fixed thresholds: pk [B, nb] = packed ``u > hi[i]``, band ``lo[i] <= u <= hi[i]`` at
        bpos/bval[starts[i]:starts[i+1]]. Returns the number of maps done: fewer than B when the band
        buffers ran out of room (the caller grows them and resumes from there)."""
        B = pk.shape[0]
        S = rh_idx.shape[0]
        c = np.empty((m.shape[1], S), np.float32)
        buf = np.empty((_ROWS, S), np.float32)
        hits = np.empty(buf.size // 8 + 1, np.int64)
        none = np.empty((0, S * S), np.float32)
        cap = bpos.shape[0]
        o = 0
        for i in range(B):
            starts[i] = o
            _col_stage(m[i], uwt, jlo, jhi, c)
            n_ab, n_bd = _pass(c, none, i, rh_idx, rh_w, rh_n, lo[i], hi[i], pk[i], bpos, bval, o, cap - o, buf, hits)
            if n_bd > cap - o:
                return i
            o += n_bd
        starts[B] = o
        return B

    @_jit
    def fast_maps(m, uwt, jlo, jhi, rh_idx, rh_w, rh_n, out):
        """The kernel's fast values of maps m [B, h, w]: out [B, S, S] (for tests)."""
        S = rh_idx.shape[0]
        c = np.empty((m.shape[1], S), np.float32)
        for i in range(m.shape[0]):
            _col_stage(m[i], uwt, jlo, jhi, c)
            _rows_into(c, 0, S, rh_idx, rh_w, rh_n, out[i])

    @_jit
    def row_stage_t(m, uht, hlo, hhi, out):
        """(U_h @ M) transposed, for maps m [B, h, w]: out [B, w, S] float32 = M.T @ U_h.T by the column stage's
        code (uht = U_h.T [h, S]; hlo, hhi its blocks' non-zero source rows): per value a float32 sum of the
        t_h non-zero products in order (the row stage's share of the fast bound, as the matmul's)."""
        mt = np.empty((m.shape[2], m.shape[1]), np.float32)
        for i in range(m.shape[0]):
            for a in range(m.shape[1]):
                for b in range(m.shape[2]):
                    mt[b, a] = m[i, a, b]
            _col_stage(mt, uht, hlo, hhi, out[i])

    @_jit
    def select2(x, k0, k1):
        """Values of ranks k0 <= k1 of x (for tests)."""
        return _select2(x, x.shape[0], k0, k1, np.empty(x.shape[0], np.float32), np.empty(x.shape[0], np.float32))


# ----------------------------------------------------------------------------- the operator's taps
def _taps(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero entries of each row of a float32 matrix u [S, n]: indices [S, T] int64, weights [S, T]
    float32 (padded with index 0, weight 0), counts [S] int64 (≥ 1: an all-zero row keeps one zero tap)."""
    nz = u != 0
    cnt = np.maximum(nz.sum(1), 1)
    T = int(cnt.max())
    idx = np.zeros((len(u), T), np.int64)
    wt = np.zeros((len(u), T), np.float32)
    for x in range(len(u)):
        j = np.flatnonzero(nz[x])
        idx[x, :len(j)] = j
        wt[x, :len(j)] = u[x, j]
    return idx, wt, cnt.astype(np.int64)


def kernel_taps(op) -> tuple:
    """(uwt, jlo, jhi, rh_idx, rh_w, rh_n, uht, hlo, hhi) of a ``_FastOp``: U_w.T [w, S] float32 (op.uwt32)
    with, per block of 32 output columns, the first and last source column of a non-zero weight (the
    column stage); the non-zero float32 weights of U_h (op.uh32: the row stage of the fast maps); U_h.T
    with its blocks (the row stage U_h @ M itself, transposed: :func:`row_stage_t`)."""
    uwt = np.ascontiguousarray(op.uwt32.numpy())  # [w, S] float32
    uh = np.ascontiguousarray(op.uh32.numpy())    # [S, h] float32
    uht = np.ascontiguousarray(uh.T)               # [h, S] float32: the row stage, transposed
    return (uwt,) + _blocks(uwt) + _taps(uh) + (uht,) + _blocks(uht)


def _blocks(ut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block of 32 columns of ut [n, S]: the first and last row with a non-zero entry (-1 when none)."""
    lo, hi = [], []
    for x0 in range(0, ut.shape[1], 32):
        j = np.flatnonzero((ut[:, x0:x0 + 32] != 0).any(1))
        lo.append(j.min() if len(j) else 0)
        hi.append(j.max() if len(j) else -1)
    return np.array(lo, np.int64), np.array(hi, np.int64)
