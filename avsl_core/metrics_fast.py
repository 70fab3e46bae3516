"""The fast path: each protocol's binary prediction from float32 fast values, proven equal to the exact path.

The exact path (:mod:`avsl_core.metrics_maps`: ``binarize(prepare(maps, protocol))``) upsamples with the
exact operator, normalises in float32, thresholds at the value of sorted index N//2 and compares. This
module computes the same bits more than an order of magnitude faster, for a batch of native maps:

1. *Upsampling* to float32 fast values, each within ``eps = err·max|M|`` of the exact one, a bound from
   the matrices (:func:`_fast_op`): a float32 sum of the t_h non-zero products of U_h and of the t_w of
   U_w per pixel, in any order.
2. *Selection*. Normalising is monotone, so the threshold pixel is the one of rank N//2 in the fast map.
   A value bracket [a, b] around that rank comes from the ranks k0, k1 of a sub-sample (every 4th row from
   row 1 and column from column 2); counting checks that rank N//2 lies inside the bracket (else it is
   widened once, to ranks w0, w1), and the few pixels inside it (~1 %, the band) are gathered with their
   fast values. The pixels above b are packed as they are.
3. *Exactness*. Only where floating point could change the answer are exact values computed
   (:mod:`avsl_core.metrics_fast_ties`, :func:`_settle`): pixels whose fast values lie within beta = 2·eps +
   merge of the threshold pixel, chained (merge: the widest gap that the float32 normalisation can close).
   Maps the argument cannot settle cheaply (a constant map, a cluster of > _CLUSTER_WIN near-tied pixels
   either side, a bracket missed twice, a band of more than _BAND_MAX pixels) take the exact path whole.

Two implementations of steps 1-2 give the same outputs for the same fast values (tested):

* *The kernel* (:mod:`avsl_core.metrics_kernel`, numba; used when numba imports, ``USE_KERNEL``): one map at
  a time, the column stage M @ U_w.T then each row from the non-zero weights of U_h inside the pass over
  the pixels (the same bound, computed in that order), the sub-sample's ranks by counting passes, and one
  pass that writes the packed ``u > b`` row and the band. With ``KERNEL_SETTLE`` it does step 3 as well,
  _settle's decisions for each map there (exact values, exact extremes and the normalisation compiled);
  only the maps that take the exact path come back (state EXACT, ~0.2 % of random maps). Without it, the
  bands go to _settle as on the numpy path (the tests compare the two).
* *The numpy path* (:func:`_bracket_chunk`): two float32 matmuls (the row stage for a block of maps in one
  matmul, the column stage a chunk at a time), the sub-sample's ranks by np.partition, two full compares,
  a sparse band scan; chunk by chunk (a few maps at a time: ~35 numpy calls a chunk against cache
  misses), step 3 per block of _BLOCK maps.

:func:`ciou_packed_boxes` turns the packed predictions into per-item cIoU against the VGG-SS box ground
truth, counting inside the boxes (:func:`~avsl_core.metrics_kernel.box_counts`) rather than building it.

``workers`` > 1 splits the blocks over threads (the kernel, torch and numpy release the GIL; each thread
keeps one torch thread, since OpenMP threads spin at barriers when the other core is busy). That only pays
where a core is idle.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from avsl_core import metrics_kernel as _K
from avsl_core.metrics_ciou import ciou_from_packed, popcount_packed
from avsl_core.metrics_fast_ties import (_CLUSTER_WIN, _U32, _exact_values, _f32_down, _f32_up, _merge_width, _or_bits,
                                         _settle)
from avsl_core.metrics_gt import box_pixels, gt_union_packed
from avsl_core.metrics_maps import as_rows, binarize, prepare, upsample_matrices
from avsl_core.metrics_protocol import EVAL_SIZE, Protocol, get_protocol

USE_KERNEL = _K.HAVE_NUMBA  # steps 1-2 by the compiled kernel (metrics_kernel); False: the numpy path
KERNEL_SETTLE = True        # the kernel also does step 3 (False: its bands go to _settle; same bits, same stats)

_SUB_STEP = 4           # median bracket from every 4th row and column (3136 of 50176 pixels)
_SUB_NARROW = 14        # bracket half-width in sub-sample ranks (~2 sd of the rank error)...
_SUB_WIDE = 48          # ...and for the maps it misses (~6 sd)
_BAND_MAX = 16384       # pixels inside the bracket, at most
_BLOCK = 256            # maps settled together (step 3)
_KERNEL_BLOCK = 4096    # maps per kernel call (its Python side costs ~0.1 ms a call)
_NO_UI = np.empty((0, 0), np.float32)  # median_maps' input of given fast maps (the tests'), unused here


# ----------------------------------------------------------------------------- the fast operator
@dataclass(frozen=True)
class _FastOp:
    uh32: torch.Tensor   # [S, h] float32
    uwt32: torch.Tensor  # [w, S] float32
    uh: np.ndarray       # [S, h] float64
    uw: np.ndarray       # [S, w] float64
    gain: float          # max row Σ|U_h| · max row Σ|U_w|: |upsampled| ≤ gain · max|M|
    err: float           # |fast − exact| ≤ err · max|M| per pixel
    neg: float           # max over output columns x of Σ_j max(−U_w[x, j], 0): the kernel's negative lobes
    mode: str            # the upsampling


@functools.lru_cache(maxsize=32)
def _fast_op(mode: str, h: int, w: int, size: int) -> _FastOp:
    """Float32 matrices and the error bound of the fast upsampling. Per output pixel the float32
    matmuls round the weights (u), sum t_h then t_w non-zero products (γ_t = t·u each, in any order; the
    zero products of the dense matrices are exact) and the exact value is rounded once (u):
    |fast − exact| ≤ (t_h + t_w + 3)·u·gain·max|M| to first order (second-order terms < 1e-13 relative;
    1 % margin). Fused multiply-adds only round less."""
    uh, uw = upsample_matrices(mode, h, w, size)
    th, tw = int((uh != 0).sum(1).max()), int((uw != 0).sum(1).max())
    gain = float(uh.abs().sum(1).max() * uw.abs().sum(1).max())
    return _FastOp(uh.float().contiguous(), uw.T.float().contiguous(), uh.numpy(), uw.numpy(), gain,
                   1.01 * (th + tw + 3) * _U32 * gain, float((-uw).clamp(min=0).sum(1).max()), mode)


def upsample_fast(maps: torch.Tensor, mode: str, size: int = EVAL_SIZE) -> torch.Tensor:
    """[B, h, w] → [B, size, size] float32 by two float32 matmuls ``U_h @ M @ U_w.T``: within
    ``_fast_op(...).err · max|M|`` of :func:`~avsl_core.metrics_maps.upsample` (a few float32 ulps)."""
    m = maps.detach().cpu().float().contiguous()
    op = _fast_op(mode, m.shape[1], m.shape[2], size)
    return torch.matmul(torch.matmul(op.uh32, m), op.uwt32)


def _row_stage(m: np.ndarray, op: _FastOp) -> torch.Tensor:
    """U_h @ M for maps m [B, h, w] in one float32 matmul: r [B, S, w] (contiguous, for the 2-D column
    matmul; measured ~15 % faster than a batched one on a transposed layout)."""
    B, h, w = m.shape
    rt = (torch.from_numpy(m).transpose(1, 2).reshape(B * w, h) @ op.uh32.T).view(B, w, -1)  # [B, w, S]
    return rt.transpose(1, 2).contiguous()


def _column_stage(r: torch.Tensor, op: _FastOp, out: torch.Tensor) -> np.ndarray:
    """(U_h @ M) @ U_w.T from r [n, S, w] (:func:`_row_stage`): the fast maps [n, S·S], written into out
    (float32, ≥ n·S² elements) and returned as a numpy view."""
    n, S, w = r.shape
    o = out[:n * S * S].view(n * S, S)
    torch.mm(r.view(n * S, w), op.uwt32, out=o)
    return o.numpy().reshape(n, S * S)


# ----------------------------------------------------------------------------- steps 1-2, chunk by chunk
def _band_pixels(ge: np.ndarray, gt: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Flat indices of ``ge & ~gt`` (bool arrays; band: scratch of the same size), sparse. np.flatnonzero
    is fast on bool arrays only, so the scan runs over 8 pixels at a time (a bool per uint64 word), then
    over the bytes of the non-zero words (np.take: fancy indexing of rows is several times slower)."""
    if ge.size % 8:
        return np.flatnonzero(ge & ~gt)
    w = np.bitwise_and(ge.reshape(-1).view(np.uint64), ~gt.reshape(-1).view(np.uint64),
                       out=band.reshape(-1).view(np.uint64))  # bool bytes: 1 & ~1 = 0, 1 & ~0 = 1
    nzw = np.flatnonzero(w != 0)
    j = np.flatnonzero(np.take(w, nzw).view(np.bool_))
    return nzw[j >> 3] * 8 + (j & 7)


def _bracket_chunk(u: np.ndarray, k: int, S: int, ge: np.ndarray, gt: np.ndarray, band: np.ndarray):
    """Median protocols, one chunk of fast maps u [n, S·S]: a value bracket [a, b] around rank k per map,
    from the sub-sample (every _SUB_STEP-th row and column), checked by counting (widened once for the
    maps it misses). Returns the packed ``u > b`` [n, nb], the band ``a <= u <= b`` as (rows, pixel
    positions, fast values), a, b, the count below a, and whether rank k lies in a band of at most
    _BAND_MAX pixels. ge, gt, band: bool scratch of ≥ u.size."""
    n, N = u.shape
    ge, gt, band = ge[:u.size].reshape(n, N), gt[:u.size].reshape(n, N), band[:u.size].reshape(n, N)
    grid = u.reshape(n, S, S)[:, 1::_SUB_STEP, 2::_SUB_STEP]
    sub = np.empty((n, grid.shape[1] * grid.shape[2]), u.dtype)  # a copy: partitioned in place below
    sub.reshape(grid.shape)[...] = grid
    ms = sub.shape[1]
    q = int((k + 0.5) * ms / N)
    k0, k1 = max(q - _SUB_NARROW, 0), min(q + _SUB_NARROW, ms - 1)
    sub.partition(k0, axis=1)  # single-kth partitions: numpy's multi-kth one is ~5× slower
    sub[:, k0:].partition(k1 - k0, axis=1)
    a, b = sub[:, k0].copy(), sub[:, k1].copy()
    np.greater_equal(u, a[:, None], out=ge)
    np.greater(u, b[:, None], out=gt)
    idx = _band_pixels(ge, gt, band)  # a <= u <= b: ~1 % of the pixels
    rows = idx // N
    pgt = np.packbits(gt, axis=1)
    n_above = popcount_packed(pgt)
    n_band = np.bincount(rows, minlength=n)
    n_below = N - n_above - n_band
    miss = np.flatnonzero((n_below > k) | (k >= n_below + n_band))
    if len(miss):  # widen the bracket for these maps (ranks q ± _SUB_WIDE of the sub-sample) and redo them
        w0, w1 = max(q - _SUB_WIDE, 0), min(q + _SUB_WIDE, ms - 1)
        if w0 < k0:
            a[miss] = np.partition(sub[miss, :k0], w0, axis=1)[:, w0]
        if w1 > k1:
            b[miss] = np.partition(sub[miss, k1 + 1:], w1 - k1 - 1, axis=1)[:, w1 - k1 - 1]
        um = u[miss]
        g1, g2 = um >= a[miss, None], um > b[miss, None]
        pgt[miss] = np.packbits(g2, axis=1)
        n_above[miss] = popcount_packed(pgt[miss])
        keep = ~np.isin(rows, miss)
        idx_m = _band_pixels(g1, g2, np.empty_like(g1))
        idx = np.concatenate([idx[keep], miss[idx_m // N] * N + idx_m % N])
        idx.sort()
        rows = idx // N
        n_band = np.bincount(rows, minlength=n)
        n_below = N - n_above - n_band
    ok = (n_below <= k) & (k < n_below + n_band) & (n_band <= _BAND_MAX)
    if not ok.all():
        idx = idx[ok[idx // N]]
        rows = idx // N
    return pgt, (rows, idx % N, u.reshape(-1)[idx]), a, b, n_below, ok


# ----------------------------------------------------------------------------- steps 1-3, per block
def _median_block(m: np.ndarray, p: Protocol, tau, op: _FastOp, chunk: int, out: np.ndarray, st: dict,
                  bufs) -> None:
    """Median-threshold protocols on maps m [B, h, w]: packed prediction rows into out [B, nb]."""
    B = len(m)
    S = p.size
    k = S * S // 2
    amax = np.abs(m.reshape(B, -1)).max(1).astype(np.float64)
    eps = op.err * amax + 1e-30
    merge = _merge_width(p, amax, op.gain, tau)
    r = _row_stage(m, op)
    parts = []
    for s0 in range(0, B, chunk):
        u = _column_stage(r[s0:s0 + chunk], op, bufs[0])
        pgt, (rows, pos, vals), a, b, n_below, ok = _bracket_chunk(u, k, S, *bufs[1:])
        out[s0:s0 + len(pgt)] = pgt
        parts.append((rows + s0, pos, vals, a, b, n_below, ok))
    rows, pos, vals, a, b, n_below, ok = (np.concatenate(x) for x in zip(*parts))
    on, exact_rows, n_near = _settle((rows, pos, vals), a, b, n_below, ok, k, eps, merge, m, r, p, tau, op)
    _or_bits(out, rows[on], pos[on])
    _exact_into(m, p, tau, exact_rows, out)
    st["exact"] += len(exact_rows)
    st["near_tie"] += n_near
    st["clean"] += B - n_near - len(exact_rows)


def _fixed_block(m: np.ndarray, p: Protocol, tau, op: _FastOp, chunk: int, out: np.ndarray, st: dict,
                 bufs) -> None:
    """Fixed thresholds without normalisation (ACL-SSL: upsampled map ≥ 0.5): pixels within eps of the
    threshold get exact values."""
    B = len(m)
    t = np.float32(p.threshold)
    eps = op.err * np.abs(m.reshape(B, -1)).max(1).astype(np.float64) + 1e-30
    lo, hi = _f32_down(float(t) - eps), _f32_up(float(t) + eps)
    r = _row_stage(m, op)
    rows_l, pos_l = [], []
    for s0 in range(0, B, chunk):
        u = _column_stage(r[s0:s0 + chunk], op, bufs[0])
        n, N = u.shape
        ge, gt, band = (x[:u.size].reshape(n, N) for x in bufs[1:])
        np.greater_equal(u, lo[s0:s0 + n, None], out=ge)
        np.greater(u, hi[s0:s0 + n, None], out=gt)
        out[s0:s0 + n] = np.packbits(gt, axis=1)
        idx = _band_pixels(ge, gt, band)
        rows_l.append(idx // N + s0)
        pos_l.append(idx % N)
    _settle_fixed(m, p, t, op, np.concatenate(rows_l), np.concatenate(pos_l), out, st)


# ----------------------------------------------------------------------------- steps 1-3 with the kernel
@functools.lru_cache(maxsize=32)
def _kernel_taps(mode: str, h: int, w: int, size: int) -> _K.KernelTaps:
    return _K.kernel_taps(_fast_op(mode, h, w, size))


def _sub_ranks(S: int, k: int) -> tuple[int, int, int, int]:
    """The sub-sample ranks of _bracket_chunk: the bracket k0, k1 and its widening w0, w1."""
    ms = len(range(1, S, _SUB_STEP)) * len(range(2, S, _SUB_STEP))
    q = int((k + 0.5) * ms / (S * S))
    return (max(q - _SUB_NARROW, 0), min(q + _SUB_NARROW, ms - 1), max(q - _SUB_WIDE, 0),
            min(q + _SUB_WIDE, ms - 1))


def _norm_args(p: Protocol, tau) -> tuple:
    """The protocol's float32 normalisation for the kernel: (how, score_first, lo, hi − lo of SLAVC's score
    as :func:`~avsl_core.metrics_maps.absolute_av_score` rounds them, strict, lvs_binarize)."""
    scale = 1.0 if tau is None else 1.0 / tau
    return (_K.NORMS[p.normalise], p.score_first, np.float32(-scale), np.float32(scale - -scale), p.strict,
            p.lvs_binarize)


class _KernelBufs:
    """Per-thread band buffers of the kernel (grown on demand, reused across blocks)."""

    def __init__(self, n: int):
        self.bpos = np.empty(n, np.int64)
        self.bval = np.empty(n, np.float32)

    def ensure(self, n: int) -> None:
        if len(self.bpos) < n:
            self.__init__(max(n, 2 * len(self.bpos)))


def _kernel_median(m: np.ndarray, p: Protocol, tau, op: _FastOp, out: np.ndarray, eps: np.ndarray,
                   merge: np.ndarray, settle: bool, kb: _KernelBufs):
    """The kernel over maps m [B, h, w]: packed rows into out [B, nb]. With ``settle`` every map is settled
    there or marked for the exact path (state); without, the bands are returned for _settle, the kernel
    resuming when the band buffers fill. Returns the band (rows, pos, vals), a, b, n_below, ok, state."""
    B = len(out)
    S = p.size
    k = S * S // 2
    taps = _kernel_taps(op.mode, m.shape[1], m.shape[2], S)
    a, b = np.empty(B, np.float32), np.empty(B, np.float32)
    n_below, ok, state = np.empty(B, np.int64), np.empty(B, bool), np.empty(B, np.int8)
    starts = np.empty(B + 1, np.int64)
    rows_l, pos_l, vals_l = [], [], []
    kb.ensure(_BAND_MAX if settle else min(B, 64) * 1024 + _BAND_MAX)
    s = 0
    while s < B:
        sl = slice(s, B)
        done = _K.median_maps(m[sl], _NO_UI, taps.fast, taps.tags, taps.exact, (k,) + _sub_ranks(S, k),
                              (1, 2, _SUB_STEP), _BAND_MAX, settle, eps[sl], merge[sl], _CLUSTER_WIN,
                              _norm_args(p, tau), out[sl], kb.bpos, kb.bval, starts[s:], a[sl], b[sl],
                              n_below[sl], ok[sl], state[sl])
        e = starts[s + done]
        rows_l.append(np.repeat(np.arange(s, s + done), np.diff(starts[s:s + done + 1])))
        pos_l.append(kb.bpos[:e].copy())
        vals_l.append(kb.bval[:e].copy())
        s += done
        if s < B:
            kb.ensure(2 * len(kb.bpos))
    rows, pos, vals = (np.concatenate(x) for x in (rows_l, pos_l, vals_l))
    return (rows, pos, vals), a, b, n_below, ok, state



def _median_block_kernel(m: np.ndarray, p: Protocol, tau, op: _FastOp, out: np.ndarray, st: dict,
                         kb: _KernelBufs) -> None:
    """:func:`_median_block` with steps 1-3 in the kernel (``KERNEL_SETTLE``): only the maps it marks go the
    exact path here. Without KERNEL_SETTLE, steps 1-2 there and _settle here, as the numpy path."""
    B = len(m)
    k = p.size * p.size // 2
    amax = np.abs(m.reshape(B, -1)).max(1).astype(np.float64)
    eps = op.err * amax + 1e-30
    merge = _merge_width(p, amax, op.gain, tau)
    (rows, pos, vals), a, b, n_below, ok, state = _kernel_median(m, p, tau, op, out, eps, merge, KERNEL_SETTLE, kb)
    if KERNEL_SETTLE:
        exact_rows = np.flatnonzero(state == _K.EXACT)
        n_near = int((state == _K.NEAR).sum())
    else:
        on, exact_rows, n_near = _settle((rows, pos, vals), a, b, n_below, ok, k, eps, merge, m, _row_stage(m, op),
                                         p, tau, op)
        _or_bits(out, rows[on], pos[on])
    _exact_into(m, p, tau, exact_rows, out)
    st["exact"] += len(exact_rows)
    st["near_tie"] += n_near
    st["clean"] += B - n_near - len(exact_rows)


def _fixed_block_kernel(m: np.ndarray, p: Protocol, tau, op: _FastOp, out: np.ndarray, st: dict,
                        kb: _KernelBufs) -> None:
    """:func:`_fixed_block` in the kernel: fast values, packed ``u > hi``, exact values of the pixels within
    eps of the threshold."""
    B = len(m)
    eps = op.err * np.abs(m.reshape(B, -1)).max(1).astype(np.float64) + 1e-30
    t = float(np.float32(p.threshold))
    lo, hi = _f32_down(t - eps).astype(np.float32), _f32_up(t + eps).astype(np.float32)
    taps = _kernel_taps(op.mode, m.shape[1], m.shape[2], p.size)
    state = np.empty(B, np.int8)
    _K.fixed_maps(m, taps.fast, taps.tags, taps.exact, lo, hi, np.float32(t), p.strict, out, state)
    n_near = int((state == _K.NEAR).sum())
    st["near_tie"] += n_near
    st["clean"] += B - n_near


def _settle_fixed(m: np.ndarray, p: Protocol, t, op: _FastOp, rows, pos, out: np.ndarray, st: dict) -> None:
    """Fixed thresholds: exact values for the band pixels (rows, pos) within eps of t, their bits ORed
    into out; maps with any such pixel counted as near-tie, the others as clean."""
    if len(rows):
        v = _exact_values(m, rows, pos, op)
        on = v > t if p.strict else v >= t
        _or_bits(out, rows[on], pos[on])
    n_near = len(np.unique(rows))
    st["near_tie"] += n_near
    st["clean"] += len(m) - n_near


def _exact_into(m: np.ndarray, p: Protocol, tau, rows, out: np.ndarray) -> None:
    """The exact path for maps ``rows`` of m, packed into the same rows of out."""
    if len(rows):
        r = np.asarray(rows)
        out[r] = np.packbits(as_rows(binarize(prepare(torch.from_numpy(m[r]), p, tau), p)), axis=1)


# ----------------------------------------------------------------------------- public entry points
def binarize_packed(maps, protocol: Protocol | str, tau: float | None = None, chunk: int = 8,
                    stats: dict | None = None, workers: int = 1, kernel: bool | None = None) -> np.ndarray:
    """The protocol's binary prediction for native maps [B, h, w], bit-packed (np.packbits order,
    row-major pixels): uint8 [B, ⌈S²/8⌉].

    Bit for bit ``np.packbits(binarize(prepare(maps, protocol, tau), protocol))`` (the argument is in the
    module docstring), more than an order of magnitude faster. ``kernel``: steps 1-2 by the compiled kernel
    (None: ``USE_KERNEL``, i.e. when numba imports; without numba the numpy path runs whatever is asked).
    ``chunk`` (numpy path) maps are upsampled at a time (8: 1.6 MB of float32; 8 and 16 measured best, 2-4
    pay more in numpy calls than they gain in cache). ``stats`` (a dict) counts the maps settled from fast
    values alone (``clean``), through exact values of near-tied pixels (``near_tie``) and on the exact path
    (``exact``). Fixed thresholds after a normalisation (no protocol of PROTOCOLS) and non-finite maps go
    the exact path. ``workers`` > 1 processes blocks of maps on that many threads.
    """
    p = get_protocol(protocol)
    m = np.ascontiguousarray(maps.detach().cpu().float().numpy() if torch.is_tensor(maps)
                             else np.asarray(maps, np.float32))
    B, h, w = m.shape
    S = p.size
    N = S * S
    st = stats if stats is not None else {}
    for key in ("maps", "clean", "near_tie", "exact"):
        st.setdefault(key, 0)
    st["maps"] += B
    fixed = p.threshold is not None
    out = np.empty((B, (N + 7) // 8), np.uint8)
    if B == 0 or (fixed and (p.normalise != "none" or p.score_first)) or N < 64 \
            or not np.isfinite(m).all():
        st["exact"] += B
        _exact_into(m, p, tau, np.arange(B), out)
        return out
    op = _fast_op(p.upsample, h, w, S)
    use_kernel = (USE_KERNEL if kernel is None else kernel) and _K.HAVE_NUMBA
    chunk = max(1, min(chunk, B))
    size = -(-B // max(1, workers))
    size = min(_KERNEL_BLOCK, size) if use_kernel else min(_BLOCK, -(-size // chunk) * chunk)
    blocks = [(s, min(s + size, B)) for s in range(0, B, size)]

    def run(todo):
        sts = dict(clean=0, near_tie=0, exact=0)
        if use_kernel:
            kb = _KernelBufs(0)
            for s, e in todo:
                (_fixed_block_kernel if fixed else _median_block_kernel)(m[s:e], p, tau, op, out[s:e], sts, kb)
            return sts
        bufs = (torch.empty(chunk * N),) + tuple(np.empty(chunk * N, bool) for _ in range(3))
        for s, e in todo:
            (_fixed_block if fixed else _median_block)(m[s:e], p, tau, op, chunk, out[s:e], sts, bufs)
        return sts

    n_threads = max(1, min(workers, len(blocks)))
    if n_threads == 1:
        results = [run(blocks)]
    else:
        with ThreadPoolExecutor(n_threads) as ex:
            results = list(ex.map(run, [blocks[j::n_threads] for j in range(n_threads)]))
    for d in results:
        for key in d:
            st[key] += d[key]
    return out


def binarize_fast(maps, protocol: Protocol | str, tau: float | None = None, chunk: int = 8) -> torch.Tensor:
    """:func:`binarize_packed` unpacked: bool [B, S, S], equal to ``binarize(prepare(maps, protocol, tau))``."""
    p = get_protocol(protocol)
    bits = np.unpackbits(binarize_packed(maps, p, tau, chunk), axis=1, count=p.size * p.size)
    return torch.from_numpy(bits.astype(bool).reshape(-1, p.size, p.size))


def ciou_fast(maps, g1, g2=None, protocol: Protocol | str = "ezvsl", tau: float | None = None,
              chunk: int = 8, stats: dict | None = None, workers: int = 1) -> torch.Tensor:
    """Per-item cIoU [B] float64 of native maps [B, h, w] against GT masks g1 = gt > 0 and g2 = gt == 1
    (bool [B, S, S]; g2 None for a binary GT) through :func:`binarize_packed`: equal to
    ``ciou_from_levels(binarize(prepare(maps, protocol, tau), protocol), g1, g2)``."""
    def pack(g):
        return np.packbits(as_rows(g) != 0, axis=1)
    return ciou_from_packed(binarize_packed(maps, protocol, tau, chunk, stats, workers), pack(g1),
                            None if g2 is None else pack(g2))


def ciou_packed_boxes(pred: np.ndarray, boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE,
                      kernel: bool | None = None) -> torch.Tensor:
    """Per-item cIoU [B] float64 (NaN for 0/0) of packed predictions pred [B, ⌈size²/8⌉] (:func:`binarize_packed`)
    against the VGG-SS ground truth of boxes [B, K, 4] / valid [B, K] (:func:`~avsl_core.metrics_gt.pad_boxes`),
    the union of the painted boxes: ``ciou_from_packed(pred, gt_union_packed(boxes, valid, size))``. The
    kernel (``kernel``: as in binarize_packed) paints each item's boxes into one packed row and counts there
    (:func:`~avsl_core.metrics_kernel.box_counts`), without building the ground truth of the batch."""
    if not ((USE_KERNEL if kernel is None else kernel) and _K.HAVE_NUMBA):
        return ciou_from_packed(pred, gt_union_packed(boxes, valid, size))
    px = np.ascontiguousarray(box_pixels(boxes, size).numpy())  # [B, K, 4] x1, y1, x2, y2
    cnt = np.empty((len(pred), 3), np.int64)
    _K.box_counts(np.ascontiguousarray(pred), px, np.ascontiguousarray(valid.numpy()), size, cnt)
    on, n, pc = cnt.T
    with np.errstate(invalid="ignore", divide="ignore"):  # as ciou_from_packed with g2 = g1
        return torch.from_numpy(0.5 * (on + on) / (0.5 * (n + n) + (pc - on)))
