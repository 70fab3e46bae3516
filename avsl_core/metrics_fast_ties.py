"""Near-tie settlement for the fast path (:mod:`avsl_core.metrics_fast`): exact values where float32
rounding could move a pixel across the threshold.

The fast path knows each pixel's value to within eps. Around the threshold pixel (rank N//2) it takes the
sorted fast values of the bracket band; where the nearest neighbours are further than beta = 2·eps + merge
(merge: the widest gap the float32 normalisation can close, :func:`_merge_width`), the fast decision is the
exact one. Otherwise the cluster of values chained by gaps ≤ beta gets exact values (:func:`_exact_values`:
float64 sums rounded once to float32, as :func:`~avsl_core.metrics_maps.upsample`); values outside the
cluster are more than merge away from it once exact, so keep their order after normalising. Inside it, the
threshold is the exact value of the cluster's rank, and where two exact values lie closer than merge, both
are normalised exactly as :func:`~avsl_core.metrics_maps.prepare` does, with the map's exact min and max
(:func:`_exact_min_max`, from a few rows and pixels rather than the whole map).

Exact values are float64 sums in a different order from torch's float64 kernel; the two round to different
float32 values only when the float64 sum lies within ~1e-16 (relative) of a float32 rounding boundary, a
~1e-8 chance per value evaluated here.

The compiled kernel makes the same decisions map by map (:mod:`avsl_core.metrics_kernel`, ``settle``: the
same exact values, clusters, extremes and normalisation); these functions are the numpy path's, and the
reference the kernel's tests compare it with.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from avsl_core.metrics_maps import _normalise_rows, absolute_av_score, upsample
from avsl_core.metrics_protocol import Protocol

if TYPE_CHECKING:
    from avsl_core.metrics_fast import _FastOp

_U32 = 2.0 ** -24       # float32 unit roundoff
_CLUSTER_WIN = 64       # near-tie clusters are looked for within this many sorted band values of rank k


# ----------------------------------------------------------------------------- bit and value helpers
def _f32_down(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    f = x.astype(np.float32)
    return np.where(f.astype(np.float64) > x, np.nextafter(f, np.float32(-np.inf)), f)


def _f32_up(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    f = x.astype(np.float32)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float32(np.inf)), f)


def _exact_values(m: np.ndarray, rows: np.ndarray, pos: np.ndarray, op: _FastOp) -> np.ndarray:
    """Exact upsampled values (float64 sums rounded once to float32) at flat pixel positions ``pos``
    of maps ``rows``: what :func:`~avsl_core.metrics_maps.upsample` gives there. [n] float32.
    Per pixel U_h[y] @ M @ U_w[x] by einsum (not BLAS: numpy's may spin threads, torch's float64 GEMM is
    slow on some CPUs), 2048 pixels at a time."""
    S = op.uh.shape[0]
    out = np.empty(len(pos), np.float32)
    for s in range(0, len(pos), 2048):
        r, p = rows[s:s + 2048], pos[s:s + 2048]
        t = np.einsum("nh,nhw->nw", op.uh[p // S], m[r].astype(np.float64))
        out[s:s + 2048] = np.einsum("nw,nw->n", t, op.uw[p % S])
    return out


def _or_bits(pb: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> None:
    """Set bit ``pos`` of packed row ``rows`` of pb [B, nb], for listed bits sorted row-major."""
    if len(rows):
        byt = rows * pb.shape[1] + pos // 8
        start = np.flatnonzero(np.r_[True, byt[1:] != byt[:-1]])
        v = np.add.reduceat(128 >> (pos % 8), start)  # distinct bits of one byte: sum == or
        flat = pb.reshape(-1)
        flat[byt[start]] |= v.astype(np.uint8)


def _pad_rows(rows: np.ndarray, vals: np.ndarray, n_rows: int, fill) -> np.ndarray:
    """Values grouped by row (rows sorted) → [n_rows, width] left-aligned, ``fill`` after them."""
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    width = int(max(counts.max(), 1)) if n_rows else 1
    out = np.full((n_rows, width), fill, vals.dtype)
    out.reshape(-1)[rows * width + np.arange(len(rows)) - starts[rows]] = vals
    return out


# ----------------------------------------------------------------------------- normalisation bounds
def _merge_width(p: Protocol, amax: np.ndarray, gain: float, tau: float | None) -> np.ndarray:
    """Widest gap (upsampled units) that the float32 normalisation can close between two exact values
    x < y, r ≤ 2·gain·max|M| the map's range, u = 2^-24, |fl(z) − z| ≤ u|z|. Min-max: fl(y − lo) −
    fl(x − lo) ≥ (y − x) − 2u·r, and the quotients by fl(r) stay apart if that exceeds 2u·r: y − x > 4u·r
    suffices. ``1 − minmax(−h)`` also rounds 1 − q (2u more in q): 6u·r. SLAVC first rounds x + 1/τ and
    divides (4u·Q, Q = gain·max|M| + 1/τ), then min-max: 4u(r + Q). Taken with a 25 % margin."""
    if p.normalise == "none" and not p.score_first:
        return np.zeros_like(amax)
    r = 2.0 * gain * amax
    c = 6.0 if p.normalise == "one_minus_minmax_neg" else 4.0
    q = gain * amax + (1.0 if tau is None else 1.0 / tau) if p.score_first else 0.0
    return 1.25 * _U32 * (c * r + 4.0 * q)


def _exact_norm(p: Protocol, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, tau) -> np.ndarray:
    """The protocol's normalised value of exact upsampled values ``v`` [n] in maps whose exact min and
    max are ``lo``, ``hi`` [n]: the float32 operations of :func:`~avsl_core.metrics_maps.prepare`."""
    a = np.stack([v, lo, hi], 1).astype(np.float32)  # [n, 3]: the value, its map's min and max
    if p.score_first:
        a = absolute_av_score(torch.from_numpy(a), tau).numpy().astype(np.float32)
    _normalise_rows(a, p.normalise, a[:, 1].copy(), a[:, 2].copy())
    return a[:, 0]


def _exact_min_max(m: np.ndarray, r: torch.Tensor, eps: np.ndarray, op: _FastOp
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact min and max of the upsampled maps m [n, h, w] (r [n, S, w]: their fast row stage U_h @ M;
    eps [n]: their fast-value bounds), from a few fast rows and a few exact pixels.

    Row y of the map interpolates r[y] with weights that sum to 1, so u[y, x] ≤ max r[y] + neg·(max r[y]
    − min r[y]) (neg: the kernel's negative lobes, 0 for the linear kernels); from the fast r this bound
    holds for the exact values within eps. With F0 the fast maximum of the row with the best bound, only
    rows whose bound reaches F0 − 3·eps can hold the exact maximum E (E ≥ F0 − eps). Their fast values
    (one float32 matmul) give the fast maximum F, and E lies at a pixel whose fast value is ≥ F − 2·eps:
    exact values there decide. The minimum likewise, negated. Two float32 [n]."""
    rt = r.transpose(1, 2).contiguous()  # [n, w, S]: reductions over the source columns are elementwise
    n, w, S = rt.shape
    ar = torch.arange(n)
    e = torch.from_numpy(eps)
    r_hi, r_lo = rt.amax(1).double(), rt.amin(1).double()  # [n, S]
    slack = op.neg * (r_hi - r_lo)
    buf = torch.empty(4096 * S)  # fast rows, reused (fresh large tensors cost page faults)
    out = []
    for sign, bound in ((-1.0, r_lo - slack), (1.0, r_hi + slack)):
        sb = sign * bound  # sign·u over row y is at most sb[:, y] (+ eps)
        ext_row = (lambda x: x.amax(1)) if sign > 0 else (lambda x: -x.amin(1))  # noqa: E731
        f0 = ext_row(rt[ar, :, sb.argmax(1)] @ op.uwt32).double()
        ci, cy = torch.nonzero(sb + 3 * e[:, None] >= f0[:, None], as_tuple=True)
        rmax = torch.empty(len(ci), dtype=torch.float64)
        for s in range(0, len(ci), 4096):
            c = slice(s, s + 4096)
            fr = torch.mm(rt[ci[c], :, cy[c]], op.uwt32, out=buf[:len(ci[c]) * S].view(-1, S))
            rmax[c] = ext_row(fr)
        lim = torch.full((n,), -np.inf, dtype=torch.float64).scatter_reduce(0, ci, rmax, "amax") - 2 * e
        keep = torch.nonzero(rmax >= lim[ci]).view(-1)  # the rows holding pixels within 2·eps of the extreme
        kr, x = torch.nonzero(sign * (rt[ci[keep], :, cy[keep]] @ op.uwt32).double() >= lim[ci[keep]][:, None],
                              as_tuple=True)
        rows, pos = ci[keep][kr].numpy(), (cy[keep][kr] * S + x).numpy()
        ext = np.full(n, -np.inf, np.float32)
        many = np.bincount(rows, minlength=n) > 4 * S  # plateaus at the extreme: the exact map instead
        sel = ~many[rows]
        np.maximum.at(ext, rows[sel], np.float32(sign) * _exact_values(m, rows[sel], pos[sel], op))
        if many.any():
            u = upsample(torch.from_numpy(m[many]), op.mode, S).reshape(int(many.sum()), -1)
            ext[many] = (sign * u).amax(1).numpy()
        out.append(np.float32(sign) * ext)
    return out[0], out[1]


# ----------------------------------------------------------------------------- the settlement, per block
def _settle(band, a, b, n_below, ok, k, eps, merge, m, r, p: Protocol, tau, op: _FastOp):
    """Median protocols, a block of maps: which band pixels are on. band = (rows, pos, fast values),
    sorted row-major. Returns (on [n_band_pixels] bool, rows needing the exact path, rows settled
    through exact values)."""
    rows, pos, vals = band
    B = len(ok)
    n_band = np.bincount(rows, minlength=B)
    # 1. each map's band sorted: rank k is at column rk; its neighbours decide whether it is alone
    rk = np.where(ok, k - n_below, 0)
    sv = _pad_rows(rows, vals, B, np.float32(np.inf))
    sv.sort(axis=1)
    W = sv.shape[1]
    ar = np.arange(B)
    thr = sv[ar, rk]
    prev = np.where(rk > 0, sv[ar, np.maximum(rk - 1, 0)], -np.inf)
    nxt = np.where(rk + 1 < n_band, sv[ar, np.minimum(rk + 1, W - 1)], np.inf)
    thr64 = thr.astype(np.float64)
    below = np.maximum(prev, a).astype(np.float64)  # no band value below: the bracket bounds the gap
    above = np.minimum(nxt, b).astype(np.float64)
    beta = 2 * eps + merge
    clean = ok & (thr64 - below > beta) & (above - thr64 > beta)
    flag = np.flatnonzero(ok & ~clean)
    t_row = thr[rows]
    on = vals > t_row if p.strict else vals >= t_row  # right where rank k is alone within beta
    exact_rows = list(np.flatnonzero(~ok))
    if not len(flag):
        return on, exact_rows, 0
    # 2. flagged maps: the cluster of band values chained by gaps ≤ beta around rank k, looked for within
    #    _CLUSTER_WIN sorted values either side (a cluster reaching the window's edge: the exact path)
    rkf, nbf = rk[flag], n_band[flag]
    cols = rkf[:, None] + np.arange(-_CLUSTER_WIN, _CLUSTER_WIN + 1)  # [nf, 2·win + 1], rank k at column win
    inside = (cols >= 0) & (cols < nbf[:, None])
    fv = np.where(inside, sv[flag[:, None], np.clip(cols, 0, W - 1)], np.where(cols < 0, -np.inf, np.inf))
    with np.errstate(invalid="ignore"):
        big = ~(np.diff(fv, axis=1) <= beta[flag, None])  # an infinite pad counts as a big gap
    j = np.arange(2 * _CLUSTER_WIN)[None, :]
    sw = np.where(big & (j < _CLUSTER_WIN), j, -1).max(1) + 1
    ew = np.where(big & (j >= _CLUSTER_WIN), j, 2 * _CLUSTER_WIN).min(1)
    fr = np.arange(len(flag))
    lo_c, hi_c = fv[fr, sw], fv[fr, ew]
    s, e = rkf - _CLUSTER_WIN + sw, rkf - _CLUSTER_WIN + ew  # the cluster's first and last rank in the band
    bad = ((sw == 0) & inside[:, 0]) | ((ew == 2 * _CLUSTER_WIN) & inside[:, -1]) \
        | ((s == 0) & (lo_c - a[flag] <= beta[flag])) \
        | ((e == nbf - 1) & (b[flag] - hi_c <= beta[flag]))
    exact_rows += list(flag[bad])
    good = flag[~bad]
    s, lo_c, hi_c = s[~bad], lo_c[~bad].astype(np.float32), hi_c[~bad].astype(np.float32)
    gi = np.full(B, -1)
    gi[good] = np.arange(len(good))
    fidx = gi[rows]
    sel = np.flatnonzero(fidx >= 0)
    fi = fidx[sel]
    on[sel] = vals[sel] > hi_c[fi]  # above the cluster: on; below: off
    incl = sel[(vals[sel] >= lo_c[fi]) & (vals[sel] <= hi_c[fi])]
    if len(incl):
        # 3. exact values of the cluster; the threshold is its (rk − s)-th smallest
        cr = gi[rows[incl]]
        v = _exact_values(m, rows[incl], pos[incl], op)
        want = rk[good] - s
        sv_ex = _pad_rows(cr, v, len(good), np.float32(np.inf))
        sv_ex.sort(axis=1)
        gr = np.arange(len(good))
        tv = sv_ex[gr, want]
        # exact neighbours of the threshold closer than `merge` may tie with it once normalised
        nb_lo = np.where(want > 0, sv_ex[gr, np.maximum(want - 1, 0)], -np.inf).astype(np.float64)
        nb_hi = sv_ex[gr, np.minimum(want + 1, sv_ex.shape[1] - 1)].astype(np.float64)
        with np.errstate(invalid="ignore"):
            merged = ~((tv - nb_lo > merge[good]) & (nb_hi - tv > merge[good]))
        pv = v.copy()
        mr = np.flatnonzero(merged)
        if len(mr):  # normalise exactly, with the maps' exact min and max
            lo, hi = _exact_min_max(m[good[mr]], r[torch.from_numpy(good[mr])], eps[good[mr]], op)
            rm = np.full(len(good), -1)
            rm[mr] = np.arange(len(mr))
            ms_ = merged[cr]
            pv[ms_] = _exact_norm(p, v[ms_], lo[rm[cr[ms_]]], hi[rm[cr[ms_]]], tau)
            sp = _pad_rows(cr[ms_], pv[ms_], len(good), np.float32(np.inf))
            sp.sort(axis=1)
            tv[mr] = sp[mr, want[mr]]
        oc = pv > tv[cr] if p.strict else pv >= tv[cr]
        if p.lvs_binarize:
            oc |= merged[cr] & (pv >= 1)
        on[incl] = oc
    return on, exact_rows, len(good)
