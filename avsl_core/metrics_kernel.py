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

* *Fast values.* The column stage c = M @ U_w.T [h, S] by blocks of 32 output columns (:func:`_col_stage`:
  per block the float32 sum over the W source columns from the first with a non-zero weight, 32 lanes at a
  time), then each row u[y] = Σ_t U_h[y, i_t]·c[i_t] over U_h's T non-zero taps (zero-padded to T = 2, or 4
  for the cubic kernels), computed inside the pass. Both are float32 sums in a fixed order without fused
  multiply-adds, the same operations in the vector code, the scalar recomputation of band values
  (:func:`_tap_value`) and :func:`fast_maps` (the tests' view of them); a zero weight's product is an exact
  ±0 and leaves every partial sum as it was, so each value is the float32 sum of the t_w non-zero products,
  then of the t_h non-zero row products, which is what the bound of :func:`~avsl_core.metrics_fast._fast_op`,
  ``|fast − exact| ≤ (t_h + t_w + 3)·u·gain·max|M|``, assumes (tested against the exact upsampling; only
  the values' last bits differ from torch's matmuls, which the bound covers). The tap counts are
  compile-time tuple lengths (``tags``; :func:`_row_tuple`, :func:`_tuple_at`), so the sums compile to
  straight-line vector code. Where S % 8 == 0, c's columns are stored reversed within each 8 (U_w.T's columns
  so permuted), so that the sign bits of 8 compares (vmovmskps) come out as one packed byte; other sizes
  go through :func:`_pass_rows` (rows into a buffer, then flat groups of pixels).
* *Selection* (:func:`_select_core`). a and b are the values of ranks k0 and k1 of the sub-sample (every
  ``step``-th row from ``row0`` and column from ``col0``, the grid of ``_bracket_chunk``, computed from c's
  grid columns by the same sums): values, so whatever the algorithm they equal np.partition's. Here by
  counting passes (8 lanes of compare masks summed) that move two thresholds by interpolation on the counts
  until each lies within _PAD ranks outside k0 and k1, then the few values between gathered and sorted.
  Maps whose rank k falls outside the bracket are redone once with ranks w0, w1; ``ok`` as there.
* *The pass* (:func:`_pass`). Row by row, 32 pixels at a time: the T-tap sums, two ordered compares and
  their bit masks (vcmpps, vmovmskps), the packed bytes stored as they come; the 32-pixel groups holding
  band pixels are noted without a branch and scanned after the map, their values recomputed.
* *Settlement* (``settle``; ``_settle``'s steps, decided the same way). :func:`_settle_clean`: the band values
  of ranks rk − 1, rk, rk + 1 (rk: rank k's place in the band); where the threshold value is alone within
  beta = 2·eps + merge, the band pixels above it are set. Otherwise :func:`_settle_near`: the cluster of band
  values chained to it by gaps ≤ beta (:func:`_cluster`), too wide or too close to the bracket's ends: the
  exact path (state EXACT, done by metrics_fast); else exact values at its pixels (:func:`_exact_at`, float64
  sums over the non-zero taps rounded once to float32, as ``_exact_values``) decide, and where the
  threshold's exact neighbours lie within merge of it, the cluster is normalised exactly (:func:`_normalise`,
  the protocol's float32 operations) with the map's exact extremes (:func:`_exact_extremes`: bounds per
  block of the column stage select the few blocks, then pixels, that can hold them).
* *Box counts* (:func:`box_counts`): cIoU's counts of packed predictions against the union of boxes,
  interval by interval, without building the ground truth.

``HAVE_NUMBA`` is False when numba is not importable; :mod:`avsl_core.metrics_fast` then uses its numpy
path. Nothing runs in parallel inside the kernel (no prange); ``workers`` threads run blocks (``nogil``).
Functions are compiled with ``cache=True`` (the first compile takes ~40 s, ~15 s more for each further
pair of tap counts; later imports load the cache); where numba finds no writable cache directory they
compile in memory instead (:func:`_jit`). The hot loops call no helper with array arguments per row or per
pixel (numba passes each array with reference counting).
"""
from __future__ import annotations

import math
from typing import NamedTuple

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
_ROWS = 16         # the row-block pass computes this many rows at a time (a multiple of 8; 14 KB at S = 224)
# what settled a map (median_maps' and fixed_maps' ``state``)
BAND = 0    # nothing yet: its band is left for metrics_fast_ties._settle (median_maps without settle)
CLEAN = 1   # fast values alone (the threshold value alone within beta; fixed: no pixel within eps)
NEAR = 2    # exact values of the near-tied pixels
EXACT = 3   # the exact path (metrics_fast._exact_into): bracket missed twice, band or cluster too wide
NORMS = {"none": 0, "minmax": 1, "one_minus_minmax_neg": 2}  # the protocols' normalisations, by number


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
    # ------------------------------------------------------------------------- intrinsics
    def _splat(builder, val, width: int):
        """<width x float> with every lane val."""
        i32 = ir.IntType(32)
        sp = builder.insert_element(ir.Constant(ir.VectorType(ir.FloatType(), width), ir.Undefined), val,
                                    ir.Constant(i32, 0))
        return builder.shuffle_vector(sp, sp, ir.Constant(ir.VectorType(i32, width), [0] * width))

    def _f32(context, builder, val, ty):
        return context.cast(builder, val, ty, types.float32)

    def _is_f32_c(arr):
        return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"

    def _tap_sum(context, builder, sig, args, width: int, first: int = 0):
        """Code of u_l = Σ_t ws[t]·arr[rows[t]·S + x + l], lanes l < width (width 1: a float32 scalar) of a
        C-contiguous 1-D float32 arr, args[first:] = (arr, rows, S, x, ws): float32 products summed left to
        right, ((w0·p0 + w1·p1) + w2·p2) + …, without fused multiply-adds (numba's ``w0 * p0 + w1 * p1``)."""
        sig_args, args = sig.args[first:], args[first:]
        ary = context.make_array(sig_args[0])(context, builder, args[0])
        S = context.cast(builder, args[2], sig_args[2], types.intp)
        x = context.cast(builder, args[3], sig_args[3], types.intp)
        s = None
        for t in range(sig_args[1].count):
            row = context.cast(builder, builder.extract_value(args[1], t), sig_args[1].dtype, types.intp)
            ptr = cgutils.gep_inbounds(builder, ary.data, builder.add(builder.mul(row, S), x))
            w = _f32(context, builder, builder.extract_value(args[4], t), sig_args[4].dtype)
            if width == 1:
                p = builder.load(ptr)
            else:
                p = builder.load(builder.bitcast(ptr, ir.VectorType(ir.FloatType(), width).as_pointer()), align=4)
                w = _splat(builder, w, width)
            p = builder.fmul(w, p)
            s = p if s is None else builder.fadd(s, p)
        return s

    def _taps_ok(arr, rows, ws):
        return (_is_f32_c(arr) and arr.ndim == 1 and isinstance(rows, types.UniTuple)
                and isinstance(rows.dtype, types.Integer) and isinstance(ws, types.UniTuple)
                and ws.count == rows.count and ws.dtype == types.float32)

    @intrinsic
    def _tap_value(typingctx, arr, rows, S, x, ws):
        """float32 Σ_t ws[t]·arr[rows[t]·S + x]: one fast value, the sum of :func:`_tap_masks32`'s lanes."""
        if not _taps_ok(arr, rows, ws):
            return None
        return types.float32(arr, rows, S, x, ws), lambda ctx, bld, sig, args: _tap_sum(ctx, bld, sig, args, 1)

    def _tap_masks_codegen(width: int):
        """Code of the ``u > b`` and ``u >= a`` bits of the width fast values u_l of :func:`_tap_sum` (bits 0 ..
        width − 1 and the next width): per 8 lanes an ordered compare and its sign bits (vcmpps, vmovmskps),
        lane l to bit l. On columns stored reversed within each 8 (lane j holds pixel 8q + 7 − j) each byte
        is in np.packbits order."""
        def codegen(context, builder, sig, args):
            s = _tap_sum(context, builder, sig, args, width)
            i32 = ir.IntType(32)
            wide = ir.IntType(2 * width)

            def mask(val, ty, op):
                t = _splat(builder, _f32(context, builder, val, ty), 8)
                out = None
                for q in range(width // 8):
                    lanes = ir.Constant(ir.VectorType(i32, 8), list(range(8 * q, 8 * q + 8)))
                    part = builder.shuffle_vector(s, s, lanes)
                    bits = builder.zext(builder.bitcast(builder.fcmp_ordered(op, part, t), ir.IntType(8)), wide)
                    bits = builder.shl(bits, ir.Constant(wide, 8 * q)) if q else bits
                    out = bits if out is None else builder.or_(out, bits)
                return out
            g = mask(args[6], sig.args[6], ">")
            e = mask(args[5], sig.args[5], ">=")
            r = builder.or_(g, builder.shl(e, ir.Constant(wide, width)))
            return r if width == 32 else builder.zext(r, ir.IntType(64))
        return codegen

    @intrinsic
    def _tap_masks32(typingctx, arr, rows, S, x, ws, a, b):
        """uint64: ``u > b`` (bits 0-31) and ``u >= a`` (bits 32-63) for the fast values
        u_l = Σ_t ws[t]·arr[rows[t]·S + x + l], l < 32 (:func:`_tap_masks_codegen`)."""
        if not _taps_ok(arr, rows, ws):
            return None
        return types.uint64(arr, rows, S, x, ws, a, b), _tap_masks_codegen(32)

    @intrinsic
    def _tap_masks8(typingctx, arr, rows, S, x, ws, a, b):
        """uint64: ``u > b`` (bits 0-7) and ``u >= a`` (bits 8-15) for 8 fast values (:func:`_tap_masks32`)."""
        if not _taps_ok(arr, rows, ws):
            return None
        return types.uint64(arr, rows, S, x, ws, a, b), _tap_masks_codegen(8)

    @intrinsic
    def _tap_store32(typingctx, dst, start, arr, rows, S, x, ws):
        """dst[start:start + 32] = the 32 sums of :func:`_tap_masks32` (dst: C-contiguous float32, 1-D)."""
        if not (_is_f32_c(dst) and dst.ndim == 1 and _taps_ok(arr, rows, ws)):
            return None

        def codegen(context, builder, sig, args):
            s = _tap_sum(context, builder, sig, args, 32, first=2)
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i),
                                  ir.VectorType(ir.FloatType(), 32).as_pointer())
            builder.store(s, ptr, align=4)
            return context.get_dummy_value()
        return types.void(dst, start, arr, rows, S, x, ws), codegen

    def _tuple_codegen(count: int, row: bool):
        """Code of a tuple of ``count`` consecutive elements of a C-contiguous array from flat index args[1]
        (``row``: row args[1] of a 2-D array)."""
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            if row:
                i = builder.mul(i, builder.extract_value(ary.shape, 1))
            vals = [builder.load(cgutils.gep_inbounds(builder, ary.data, builder.add(i, ir.Constant(i.type, t))))
                    for t in range(count)]
            return context.make_tuple(builder, sig.return_type, vals)
        return codegen

    @intrinsic
    def _tuple_at(typingctx, arr, start, tag):
        """(arr[start], …, arr[start + T − 1]) of a C-contiguous 1-D array, T = len(tag): a tuple of compile-time
        length, so that the tap sums compile to straight-line code."""
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
                and isinstance(tag, types.UniTuple)):
            return None
        return types.UniTuple(arr.dtype, tag.count)(arr, start, tag), _tuple_codegen(tag.count, False)

    @intrinsic
    def _row_tuple(typingctx, arr, y, tag):
        """(arr[y, 0], …, arr[y, T − 1]) of a C-contiguous 2-D array, T = len(tag) (:func:`_tuple_at`)."""
        if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
                and isinstance(tag, types.UniTuple)):
            return None
        return types.UniTuple(arr.dtype, tag.count)(arr, y, tag), _tuple_codegen(tag.count, True)

    @intrinsic
    def _iota(typingctx, start, tag):
        """(start, start + 1, …, start + T − 1), T = len(tag)."""
        if not (isinstance(start, types.Integer) and isinstance(tag, types.UniTuple)):
            return None
        ret = types.UniTuple(types.intp, tag.count)

        def codegen(context, builder, sig, args):
            i = context.cast(builder, args[0], sig.args[0], types.intp)
            return context.make_tuple(builder, ret, [builder.add(i, ir.Constant(i.type, t)) for t in range(tag.count)])
        return ret(start, tag), codegen

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

    @intrinsic
    def _count_lt_le(typingctx, arr, n, tl, th):
        """(#(v < tl), #(v <= th)) over arr[:n], n a multiple of 8 (C-contiguous float32): 8 values at a time,
        the compare masks (−1 or 0 per lane) subtracted into lane counters (vcmpps, vpsubd), summed at the
        end."""
        if not _is_f32_c(arr):
            return None
        ret = types.UniTuple(types.int64, 2)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            n = context.cast(builder, args[1], sig.args[1], types.intp)
            vi = ir.VectorType(ir.IntType(32), 8)
            vf = ir.VectorType(ir.FloatType(), 8)
            lim = [_splat(builder, _f32(context, builder, args[k], sig.args[k]), 8) for k in (2, 3)]
            acc = [cgutils.alloca_once_value(builder, ir.Constant(vi, [0] * 8)) for _ in range(2)]
            with cgutils.for_range_slice(builder, ir.Constant(n.type, 0), n, ir.Constant(n.type, 8)) as (i, _):
                v = builder.load(builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), vf.as_pointer()), align=4)
                for a_, op, t in zip(acc, ("<", "<="), lim):
                    builder.store(builder.sub(builder.load(a_), builder.sext(builder.fcmp_ordered(op, v, t), vi)), a_)
            out = []
            for a_ in acc:
                a_ = builder.load(a_)
                s = ir.Constant(ir.IntType(64), 0)
                for lane in range(8):
                    s = builder.add(s, builder.zext(builder.extract_element(a_, ir.Constant(ir.IntType(32), lane)),
                                                    ir.IntType(64)))
                out.append(s)
            return context.make_tuple(builder, ret, out)
        return ret(arr, n, tl, th), codegen

    @intrinsic
    def _in_range32(typingctx, arr, start, lo, hi):
        """uint64 with bit l set where lo <= arr[start + l] <= hi, l < 32 (C-contiguous float32): per 8 lanes two
        ordered compares and their sign bits (vcmpps, vandps, vmovmskps)."""
        if not _is_f32_c(arr):
            return None

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            vf = ir.VectorType(ir.FloatType(), 8)
            t_lo = _splat(builder, _f32(context, builder, args[2], sig.args[2]), 8)
            t_hi = _splat(builder, _f32(context, builder, args[3], sig.args[3]), 8)
            i64 = ir.IntType(64)
            out = ir.Constant(i64, 0)
            for q in range(4):
                ptr = cgutils.gep_inbounds(builder, ary.data, builder.add(i, ir.Constant(i.type, 8 * q)))
                v = builder.load(builder.bitcast(ptr, vf.as_pointer()), align=4)
                c = builder.and_(builder.fcmp_ordered(">=", v, t_lo), builder.fcmp_ordered("<=", v, t_hi))
                bits = builder.zext(builder.bitcast(c, ir.IntType(8)), i64)
                out = builder.or_(out, builder.shl(bits, ir.Constant(i64, 8 * q)))
            return out
        return types.uint64(arr, start, lo, hi), codegen

    @intrinsic
    def _minmax32(typingctx, arr, start):
        """(min, max) of arr[start:start + 32] (C-contiguous float32, no NaN): one vector load, halving
        compares and selects."""
        if not _is_f32_c(arr):
            return None
        ret = types.UniTuple(types.float32, 2)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            v = builder.load(builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i),
                                             ir.VectorType(ir.FloatType(), 32).as_pointer()), align=4)
            lo = hi = v
            i32 = ir.IntType(32)
            for w in (16, 8, 4, 2, 1):
                def half(x, j):
                    return builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, w), list(range(j, j + w))))
                a, b = half(lo, 0), half(lo, w)
                lo = builder.select(builder.fcmp_ordered("<", a, b), a, b)
                a, b = half(hi, 0), half(hi, w)
                hi = builder.select(builder.fcmp_ordered(">", a, b), a, b)
            z = ir.Constant(i32, 0)
            return context.make_tuple(builder, ret, [builder.extract_element(lo, z), builder.extract_element(hi, z)])
        return ret(arr, start), codegen

    # ------------------------------------------------------------------------- fast values
    # (no array views in the loops: each view costs atomic reference counting in numba)
    @intrinsic
    def _load64(typingctx, arr, start):
        """arr[start:start + 8] as a little-endian uint64 (arr: C-contiguous uint8, 1-D; unaligned load)."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.layout == "C" and arr.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], signature.args[1], types.intp)
            p = builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), ir.IntType(64).as_pointer())
            return builder.load(p, align=1)
        return types.uint64(arr, start), codegen

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


# ----------------------------------------------------------------------------- the operator's taps
class KernelTaps(NamedTuple):
    """The fast operator and the exact one in the kernel's layout (:func:`kernel_taps`)."""
    fast: tuple   # (uwt, jlo, rh_idx, rh_w, rh_n): U_w.T [w + W, S] float32, its columns reversed within each 8
                  # when S % 8 == 0 (the pass's layout), W zero rows appended; per block of 32 columns the first
                  # source column of a non-zero weight; U_h's non-zero float32 taps [S, T], padded with zeros
    tags: tuple   # (T zeros, W zeros): the row taps (2, or 4 for the cubic kernels) and the source columns per
                  # block of the column stage (a power of two ≥ 4) that the kernel is compiled for
    exact: tuple  # (eh_idx, eh_w, eh_n, ew_idx, ew_w, ew_n): U_h's and U_w's non-zero float64 taps


def _taps(u: np.ndarray, T: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero entries of each row of a matrix u [S, n]: indices [S, T] int64, weights [S, T] (u's dtype),
    padded with index 0 and weight 0 (T: at least the most of any row), counts [S] int64 (≥ 1: an all-zero
    row keeps one zero tap)."""
    nz = u != 0
    cnt = np.maximum(nz.sum(1), 1)
    T = max(int(cnt.max()), T or 0)
    idx = np.zeros((len(u), T), np.int64)
    wt = np.zeros((len(u), T), u.dtype)
    for x in range(len(u)):
        j = np.flatnonzero(nz[x])
        idx[x, :len(j)] = j
        wt[x, :len(j)] = u[x, j]
    return idx, wt, cnt.astype(np.int64)


def _first_rows(ut: np.ndarray) -> tuple[np.ndarray, int]:
    """Per block of 32 columns of ut [n, S]: the first row with a non-zero entry (0 when none), and the most
    rows any block spans from there to its last non-zero row."""
    lo, span = [], 1
    for x0 in range(0, ut.shape[1], 32):
        j = np.flatnonzero((ut[:, x0:x0 + 32] != 0).any(1))
        lo.append(j.min() if len(j) else 0)
        span = max(span, j.max() - j.min() + 1 if len(j) else 1)
    return np.array(lo, np.int64), int(span)


def kernel_taps(op) -> KernelTaps:
    """:class:`KernelTaps` of a ``_FastOp`` (op.uwt32, op.uh32: the fast operator; op.uh, op.uw: the exact one)."""
    uwt = op.uwt32.numpy()  # [w, S] float32
    S = uwt.shape[1]
    if S % 8 == 0:
        uwt = uwt[:, np.arange(S) ^ 7]
    jlo, span = _first_rows(uwt)
    W = 1 << max(2, (span - 1).bit_length())
    uwt = np.concatenate([uwt, np.zeros((W, S), np.float32)])
    n_taps = int(np.maximum((op.uh32.numpy() != 0).sum(1), 1).max())
    if n_taps > 4:
        raise ValueError(f"metrics_kernel: U_h has rows of {n_taps} non-zero taps; the pass takes at most 4")
    rows = _taps(op.uh32.numpy(), 2 if n_taps <= 2 else 4)
    return KernelTaps((uwt, jlo) + rows, ((0,) * rows[0].shape[1], (0,) * W), _taps(op.uh) + _taps(op.uw))


def identity_taps(S: int) -> KernelTaps:
    """:class:`KernelTaps` whose fast values are given ones (median_maps' ``ui``: row y of the map is row y of
    c, weight 1); no column stage and no exact operator."""
    rows = _taps(np.eye(S, dtype=np.float32), 2)
    none_i, none_f = np.zeros((1, 1), np.int64), np.zeros((1, 1))
    return KernelTaps((np.zeros((4, S), np.float32), np.zeros(0, np.int64)) + rows, ((0, 0), (0, 0, 0, 0)),
                      (none_i, none_f, np.zeros(1, np.int64), none_i, none_f, np.zeros(1, np.int64)))
