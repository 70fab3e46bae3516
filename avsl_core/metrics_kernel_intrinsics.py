"""The numba layer of the compiled kernel (:mod:`avsl_core.metrics_kernel`): numba's import (``HAVE_NUMBA``),
:func:`_jit`, and the LLVM intrinsics the kernel's loops are written with.

The intrinsics (numba ``@intrinsic``: their code is generated straight into their callers) give the kernel
what numba's own code does not:

* the T-tap float32 sums u_l = Σ_t ws[t]·arr[rows[t]·S + x + l] as straight-line vector code without fused
  multiply-adds (:func:`_tap_sum`): one value (:func:`_tap_value`), the ``u > b`` and ``u >= a`` bits of
  32 or 8 of them (:func:`_tap_masks32`, :func:`_tap_masks8`: vcmpps, vmovmskps), or 32 of them stored
  (:func:`_tap_store32`);
* tuples of compile-time length (``tag``: T = len(tag)) read from arrays (:func:`_tuple_at`,
  :func:`_row_tuple`) or counted (:func:`_iota`), so that the tap sums unroll;
* 8- and 32-lane compares, counts and extremes (:func:`_count_lt_le`, :func:`_in_range32`,
  :func:`_minmax32`);
* bit counts, bit order and unaligned loads and stores (:func:`_popcount`, :func:`_cttz`,
  :func:`_lsb_first`, :func:`_load64`, :func:`_store32`).

Their code generators share the set-up of an array argument and its index (:func:`_array_index`), of a
vector pointer into a float32 array (:func:`_vec_ptr`) and of a scalar argument broadcast to every lane
(:func:`_splat_arg`). Everything numba-specific is defined only where numba imports (``HAVE_NUMBA``): this
module, like the kernel's other modules, imports without it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

try:  # pragma: no cover - exercised through HAVE_NUMBA
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any failure to import means: use the numpy path
    HAVE_NUMBA = False


def _drop_stale_cache(here: Path | None = None) -> None:
    """numba checks a cached function against its own module file only, not against the kernel modules
    whose functions it calls or inlines: after an edit of one kernel module, the cached callers in the
    others would run the old code. So the in-tree cache (``__pycache__/metrics_kernel*.nbi|.nbc``) is
    dropped whenever the sources of the kernel's modules, together, differ from the last import's."""
    here = here or Path(__file__).resolve().parent
    cache = here / "__pycache__"
    digest = hashlib.sha256()
    for src in sorted(here.glob("metrics_kernel*.py")):
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    stamp = cache / "metrics_kernel.sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest.hexdigest():
            return
        for f in list(cache.glob("metrics_kernel*.nbi")) + list(cache.glob("metrics_kernel*.nbc")):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest.hexdigest())
        os.replace(tmp, stamp)
    except OSError:   # a read-only tree: numba then has no in-tree cache either (see _jit)
        pass


if HAVE_NUMBA:
    _drop_stale_cache()


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

    def _is_u8_c1(arr):
        return isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.layout == "C" and arr.ndim == 1

    def _array_index(context, builder, sig, args):
        """(numba's structure of the array args[0] (.data, .shape), args[1] cast to intp): the set-up of the
        intrinsics that address an array from an index."""
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return ary, context.cast(builder, args[1], sig.args[1], types.intp)

    def _vec_ptr(builder, data, i, width: int):
        """data + i (a float32 pointer, an index) as a pointer to <width x float>."""
        return builder.bitcast(cgutils.gep_inbounds(builder, data, i),
                               ir.VectorType(ir.FloatType(), width).as_pointer())

    def _splat_arg(context, builder, sig, args, k: int, width: int):
        """<width x float> with every lane args[k], cast to float32."""
        return _splat(builder, _f32(context, builder, args[k], sig.args[k]), width)

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

            def mask(k, op):
                t = _splat_arg(context, builder, sig, args, k, 8)
                out = None
                for q in range(width // 8):
                    lanes = ir.Constant(ir.VectorType(i32, 8), list(range(8 * q, 8 * q + 8)))
                    part = builder.shuffle_vector(s, s, lanes)
                    bits = builder.zext(builder.bitcast(builder.fcmp_ordered(op, part, t), ir.IntType(8)), wide)
                    bits = builder.shl(bits, ir.Constant(wide, 8 * q)) if q else bits
                    out = bits if out is None else builder.or_(out, bits)
                return out
            g = mask(6, ">")
            e = mask(5, ">=")
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
            ary, i = _array_index(context, builder, sig, args)
            builder.store(s, _vec_ptr(builder, ary.data, i, 32), align=4)
            return context.get_dummy_value()
        return types.void(dst, start, arr, rows, S, x, ws), codegen

    def _tuple_codegen(count: int, row: bool):
        """Code of a tuple of ``count`` consecutive elements of a C-contiguous array from flat index args[1]
        (``row``: row args[1] of a 2-D array)."""
        def codegen(context, builder, sig, args):
            ary, i = _array_index(context, builder, sig, args)
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
        if not _is_u8_c1(arr):
            return None

        def codegen(context, builder, signature, args):
            ary, i = _array_index(context, builder, signature, args)
            v = builder.trunc(context.cast(builder, args[2], signature.args[2], types.uint64), ir.IntType(32))
            p = builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), ir.IntType(32).as_pointer())
            builder.store(v, p, align=1)
            return context.get_dummy_value()
        return types.void(arr, start, val), codegen

    @intrinsic
    def _load64(typingctx, arr, start):
        """arr[start:start + 8] as a little-endian uint64 (arr: C-contiguous uint8, 1-D; unaligned load)."""
        if not _is_u8_c1(arr):
            return None

        def codegen(context, builder, signature, args):
            ary, i = _array_index(context, builder, signature, args)
            p = builder.bitcast(cgutils.gep_inbounds(builder, ary.data, i), ir.IntType(64).as_pointer())
            return builder.load(p, align=1)
        return types.uint64(arr, start), codegen

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
            ary, n = _array_index(context, builder, sig, args)
            vi = ir.VectorType(ir.IntType(32), 8)
            lim = [_splat_arg(context, builder, sig, args, k, 8) for k in (2, 3)]
            acc = [cgutils.alloca_once_value(builder, ir.Constant(vi, [0] * 8)) for _ in range(2)]
            with cgutils.for_range_slice(builder, ir.Constant(n.type, 0), n, ir.Constant(n.type, 8)) as (i, _):
                v = builder.load(_vec_ptr(builder, ary.data, i, 8), align=4)
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
            ary, i = _array_index(context, builder, sig, args)
            t_lo = _splat_arg(context, builder, sig, args, 2, 8)
            t_hi = _splat_arg(context, builder, sig, args, 3, 8)
            i64 = ir.IntType(64)
            out = ir.Constant(i64, 0)
            for q in range(4):
                v = builder.load(_vec_ptr(builder, ary.data, builder.add(i, ir.Constant(i.type, 8 * q)), 8), align=4)
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
            ary, i = _array_index(context, builder, sig, args)
            v = builder.load(_vec_ptr(builder, ary.data, i, 32), align=4)
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
