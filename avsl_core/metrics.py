"""Localization metrics of the paper and its peers, vectorised over the batch.

Tensors in, tensors out (CPU); the arithmetic after upsampling runs in numpy on zero-copy views: the
same IEEE float32 results as the peers' numpy code, without torch's page-faulting large temporaries.

Every peer codebase computes the same *consensus IoU* (cIoU) but makes small, silent choices that move
the numbers (notes/peer_codebases.md §1.5, §2.5, §3, §4). Each choice is a field of :class:`Protocol`;
``PROTOCOLS`` names each peer's exact combination:

* upsampling of the native map to 224×224 (cv2 ``INTER_LINEAR`` = half-pixel-centre bilinear, bilinear
  with ``align_corners=True``, bicubic with or without corner alignment);
* normalisation: min-max (``normalize_img``: a constant map is left unchanged), or LVS/SSLalignment's
  ``1 - minmax(-h)`` (equal in exact arithmetic, not always in float32);
* threshold: the value at sorted index ``N//2`` of the normalised map (N = 224·224), compared with
  ``>`` (LVS, SSL-TIE, SSLalignment) or ``>=`` (EZ-VSL, SLAVC, FNAC), or a fixed value (ACL-SSL).

Per sample, ``cIoU = Σ(infer·gt) / (Σgt + Σ(infer·[gt == 0]))``; the tables' "cIoU" is the fraction of
samples with cIoU ≥ 0.5 and AUC is the trapezoid area of "fraction ≥ t" over t = 0, 0.05, …, 1 (the
peers' ``sklearn.metrics.auc``). Empty ground truth (two VGG-SS items) is kept, as the peers keep it:
its cIoU is 0 whenever the prediction is non-empty, and 0/0 = NaN (never ≥ t, so a failure at every
threshold) when the prediction is empty too. The official repository's adaptive cIoU and iIoU (TPAMI
extension, notes §2.5) are :func:`adaptive_ciou` and :func:`group_min_indicator`.

Upsampling is defined exactly (:func:`upsample`: the kernel in float64, rounded once to float32), so
that structural ties (constant maps, flat regions, cv2's clamped borders) stay ties and a fast path can be
proven equal to it. :func:`binarize_packed` / :func:`ciou_fast` are that fast path: the kernel as two
matrices (:func:`upsample_matrices`) applied by float32 matmuls, the median by selection inside a counted
value bracket, and exact float64 pixel values only where float32 rounding could move a pixel across the
threshold (see the comment above ``_U32``); bit-packed masks throughout.

Pixel-level, retrieval, extended-set, pointing/swap and bootstrap metrics are in
:mod:`avsl_core.metrics_extended`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

EVAL_SIZE = 224
# The peers build the AUC abscissa as [0.05 * i for i in range(21)] (python floats, not linspace).
AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))
UPSAMPLERS = ("cv2_linear", "bilinear", "bilinear_ac", "bicubic", "bicubic_ac", "nearest")
NORMALISERS = ("minmax", "one_minus_minmax_neg", "none")


@dataclass(frozen=True)
class Protocol:
    """One peer's exact localization pipeline (map → binary prediction)."""
    name: str
    upsample: str              # one of UPSAMPLERS
    normalise: str             # one of NORMALISERS
    strict: bool               # True: infer = pred > thr; False: infer = pred >= thr
    threshold: float | None = None  # None: value at sorted index N//2 (top 50 %); float: fixed cut
    lvs_binarize: bool = False      # LVS test.py: pixels equal to 1 stay on even when thr == 1
    score_first: bool = False       # SLAVC: normalise the absolute score (S + 1/τ)/(2/τ), not S itself
    size: int = EVAL_SIZE
    source: str = ""           # where the peer does this

    def __post_init__(self):
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"protocol {self.name}: upsample must be one of {UPSAMPLERS}")
        if self.normalise not in NORMALISERS:
            raise ValueError(f"protocol {self.name}: normalise must be one of {NORMALISERS}")


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("lvs", "cv2_linear", "one_minus_minmax_neg", True, lvs_binarize=True,
             source="hche11/Localizing-Visual-Sounds-the-Hard-Way test.py"),
    Protocol("ssltie", "cv2_linear", "one_minus_minmax_neg", True, lvs_binarize=True,
             source="jinxiang-liu/SSL-TIE (LVS evaluation)"),
    Protocol("ezvsl", "bilinear_ac", "minmax", False, source="stoneMo/EZ-VSL test.py"),
    Protocol("ezvsl_val", "bicubic", "minmax", False,
             source="stoneMo/EZ-VSL train.py validate; OpenNLPLab/FNAC_AVL validate2"),
    Protocol("fnac", "bilinear_ac", "minmax", False, source="OpenNLPLab/FNAC_AVL test.py validate"),
    Protocol("slavc", "bicubic_ac", "minmax", False, score_first=True,
             source="stoneMo/SLAVC test.py --relative_prediction"),
    Protocol("official", "cv2_linear", "one_minus_minmax_neg", True,
             source="kaistmm/SSLalignment test.py validate_lvs on VGG-SS (Evaluator_iiou)"),
    Protocol("official_ac", "bilinear_ac", "one_minus_minmax_neg", True,
             source="kaistmm/SSLalignment test.py validate_lvs on Flickr and other sets"),
    Protocol("official_peers", "bilinear_ac", "minmax", True,
             source="kaistmm/SSLalignment test.py validate (EZ-VSL/SLAVC/FNAC checkpoints, any set)"),
    Protocol("acl", "bilinear", "none", False, threshold=0.5,
             source="swimmiing/ACL-SSL VGGSS/eval_utils.py (fixed threshold on the sigmoid map)"),
]}
PROTOCOL_ALIASES = {"official_iiou": "official", "ours": "official"}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    key = PROTOCOL_ALIASES.get(name, name)
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS) + sorted(PROTOCOL_ALIASES)}")
    return PROTOCOLS[key]


# ----------------------------------------------------------------------------- map preparation
_KERNELS = {"cv2_linear": ("bilinear", False), "bilinear": ("bilinear", False),
            "bilinear_ac": ("bilinear", True), "bicubic": ("bicubic", False),
            "bicubic_ac": ("bicubic", True), "nearest": ("nearest", None)}


def _interpolate(x: torch.Tensor, mode: str, out_hw: tuple[int, int]) -> torch.Tensor:
    """torch's kernel for an upsampling mode: [B, 1, h, w] → [B, 1, H, W], in x's dtype."""
    if mode not in _KERNELS:
        raise ValueError(f"unknown upsampling {mode!r}")
    kind, ac = _KERNELS[mode]
    if kind == "nearest":
        return F.interpolate(x, size=out_hw, mode="nearest")
    return F.interpolate(x, size=out_hw, mode=kind, align_corners=ac)


def upsample(maps: torch.Tensor, mode: str, size: int = EVAL_SIZE) -> torch.Tensor:
    """[B, h, w] → [B, size, size] float32: the kernel evaluated in float64, rounded once to float32.

    Upsampling is a linear map; this is it to within float64 rounding, i.e. the correctly rounded
    float32 result (bar a ~1e-8-per-pixel chance of a last-bit tie break). The peers' float32
    kernels (torch CPU/GPU, cv2) each round differently, by up to ~4 float32 ulps of the map's
    magnitude (≤ 1e-6 here for |map| ≤ 1), so at near-ties they disagree with each other; the
    exact operator is the one every fast path (:func:`binarize_packed`) can be proven equal to.
    Structural ties (constant maps, cv2's clamped border strips, flat regions) stay exact ties.

    ``cv2_linear`` is cv2.resize(INTER_LINEAR): half-pixel centres with edge clamping, which is
    torch's bilinear with ``align_corners=False`` (checked against cv2 5.0: ≤ 1.5e-6 when upsampling).
    """
    x = maps.detach().to("cpu", torch.float64)[:, None]  # [B, 1, h, w]
    if x.shape[-2:] == (size, size):
        return maps.detach().cpu().float().clone()
    return _interpolate(x, mode, (size, size))[:, 0].float()


def as_rows(x) -> np.ndarray:
    """[B, ...] tensor or array → a [B, N] numpy view (no copy for CPU tensors)."""
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return a.reshape(a.shape[0], -1)


def popcount_rows(a: np.ndarray) -> np.ndarray:
    """Number of True per row of a bool [B, N] array (bit-packed popcount), int64 [B]."""
    return np.bitwise_count(np.packbits(a, axis=1)).sum(1, dtype=np.int64)


def _minmax_rows(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """In place on rows of ``a`` [B, n]: (a - lo) / (hi - lo), a row with hi == lo left unchanged."""
    rng = hi - lo
    const = rng == 0
    lo = np.where(const, 0, lo).astype(a.dtype)
    rng = np.where(const, 1, rng).astype(a.dtype)
    np.subtract(a, lo[:, None], out=a)
    np.divide(a, rng[:, None], out=a)


def minmax(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Per-sample (x - min) / (max - min) in float32, as the peers' ``normalize_img`` (a constant map
    is left unchanged). Numpy does the work: identical IEEE results, far fewer allocations."""
    t = x if inplace and x.is_contiguous() else x.float().contiguous().clone()
    a = as_rows(t)  # a view: writes land in t
    _minmax_rows(a, a.min(1), a.max(1))
    return t


def _normalise_rows(a: np.ndarray, how: str, lo: np.ndarray, hi: np.ndarray) -> None:
    """In place on float32 rows ``a`` [B, n] whose per-row min and max are ``lo`` and ``hi`` (the
    values may be any subset of the map's pixels: the arithmetic is elementwise)."""
    if how == "minmax":
        _minmax_rows(a, lo, hi)
    elif how == "one_minus_minmax_neg":  # LVS / SSLalignment: pred = 1 - normalize_img(-h)
        np.negative(a, out=a)
        _minmax_rows(a, -hi, -lo)
        np.subtract(1, a, out=a)
    elif how != "none":
        raise ValueError(f"unknown normalisation {how!r}")


def normalise(x: torch.Tensor, how: str, inplace: bool = False) -> torch.Tensor:
    if how not in NORMALISERS:
        raise ValueError(f"unknown normalisation {how!r}")
    if how == "none":
        return x if inplace else x.float().clone()
    t = x if inplace and x.is_contiguous() else x.float().contiguous().clone()
    a = as_rows(t)
    _normalise_rows(a, how, a.min(1), a.max(1))
    return t


def prepare(maps: torch.Tensor, protocol: Protocol | str, tau: float | None = None) -> torch.Tensor:
    """Native maps [B, h, w] → the protocol's normalised prediction map [B, 224, 224] (float32).
    ``tau``: the maps are cos/τ (only used by protocols with ``score_first``, i.e. SLAVC)."""
    p = get_protocol(protocol)
    u = upsample(maps, p.upsample, p.size)
    if p.score_first:
        u = absolute_av_score(u, tau)
    return normalise(u, p.normalise, inplace=True)


def kth_smallest(flat, k: int | np.ndarray | torch.Tensor) -> torch.Tensor:
    """``np.sort(row)[k]`` for every row of ``flat`` [B, N]; ``k`` an int or a per-row array (0-based).
    Introselect (np.partition), O(N) per row: ~4× faster than the peers' full sort and ~10× faster
    than torch.kthvalue on CPU. A per-row k costs the same as one batched call (the selection
    dominates); np.partition with many kth values is far slower."""
    a = as_rows(flat)
    if a.shape[0] == 0:
        return torch.zeros(0, dtype=torch.from_numpy(a).dtype)
    if isinstance(k, (int, np.integer)):
        return torch.from_numpy(np.partition(a, int(k), axis=1)[:, int(k)].copy())
    k = np.asarray(k.cpu() if torch.is_tensor(k) else k, dtype=np.int64)
    return torch.from_numpy(np.array([np.partition(a[i], k[i])[k[i]] for i in range(a.shape[0])],
                                     dtype=a.dtype))


def median_threshold(pred: torch.Tensor) -> torch.Tensor:
    """The peers' ``np.sort(pred.flatten())[int(H*W/2)]`` per sample: [B, H, W] → [B]."""
    a = as_rows(pred)
    return kth_smallest(a, a.shape[1] // 2)


def binarize(pred: torch.Tensor, protocol: Protocol | str, thr: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Prediction map [B, S, S] → bool [B, S, S] with the protocol's threshold and comparison."""
    p = get_protocol(protocol)
    a = as_rows(pred)
    if thr is None:
        thr = median_threshold(a) if p.threshold is None else np.full(a.shape[0], p.threshold, a.dtype)
    t = np.asarray(thr, dtype=a.dtype)[:, None]
    infer = np.greater(a, t) if p.strict else np.greater_equal(a, t)
    if p.lvs_binarize:  # pred[pred > thr] = 1; pred[pred < 1] = 0  keeps values >= 1 switched on
        infer |= a >= 1
    return torch.from_numpy(infer.reshape(pred.shape))


def ciou_from_levels(infer, g1, g2) -> torch.Tensor:
    """cIoU for a GT of values {0, 0.5, 1} given as two masks: g1 = gt > 0, g2 = gt == 1 (for a binary
    GT pass the same mask twice). Counting by popcount; exact. [B] float64, NaN for 0/0."""
    same = g1 is g2
    inf, a, b = as_rows(infer), as_rows(g1), as_rows(g2)
    on1 = popcount_rows(inf & a)
    on2 = on1 if same else popcount_rows(inf & b)
    n1 = popcount_rows(a)
    n2 = n1 if same else popcount_rows(b)
    inter = 0.5 * (on1 + on2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.from_numpy(inter / (0.5 * (n1 + n2) + (popcount_rows(inf) - on1)))


def ciou_from_binary(infer: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample consensus IoU Σ(infer·gt) / (Σgt + Σ(infer·[gt == 0])) for any GT map [B, S, S];
    float64 [B], NaN when both the prediction and the GT are empty."""
    inf = as_rows(infer)
    g = as_rows(gt).astype(np.float64)
    inter = np.einsum("ij,ij->i", inf.astype(np.float64), g)
    n_inf_off = popcount_rows(inf) - popcount_rows(inf & (g > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.from_numpy(inter / (g.sum(1) + n_inf_off))


def ciou(maps: torch.Tensor, gt: torch.Tensor, protocol: Protocol | str, tau: float | None = None
         ) -> torch.Tensor:
    """Native maps [B, h, w] and GT maps [B, 224, 224] → per-sample cIoU [B] (float64)."""
    pred = prepare(maps, protocol, tau)
    return ciou_from_binary(binarize(pred, protocol), gt)


def adaptive_binarize(pred: torch.Tensor, n_gt) -> torch.Tensor:
    """SSLalignment's adaptive threshold (TPAMI metric): thr = sort(pred)[N - g] with g = #(gt ≠ 0)
    (N//2 when g = 0), infer = pred > thr, so the predicted area roughly equals the GT area."""
    a = as_rows(pred)
    N = a.shape[1]
    g = np.asarray(n_gt, dtype=np.int64)
    g = np.where(g == 0, N // 2, g)
    thr = kth_smallest(a, np.clip(N - g, 0, N - 1)).numpy()
    return torch.from_numpy((a > thr[:, None]).reshape(pred.shape))


def adaptive_ciou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """cIoU of :func:`adaptive_binarize` against a GT map. [B] float64."""
    return ciou_from_binary(adaptive_binarize(pred, popcount_rows(as_rows(gt) != 0)), gt)


# ----------------------------------------------------------------------------- fast path
# The protocol's binary map from a float32 matmul upsampling, proven equal to the exact path.
#
# The exact path (``binarize(prepare(...))``) upsamples with the exact operator, thresholds the
# normalised float32 map at its sorted index N//2 and compares. The fast path upsamples with float32
# matmuls, within eps of the exact values (a bound from the matrices: :func:`_fast_op`). Normalising
# is monotone, so the threshold pixel is the one of rank N//2 in the fast map, found by selection
# inside a value bracket taken from a sub-sample (every 4th row and column) and checked by counting
# (two compares, bit-packed). Only where
# floating point could change the answer are exact values computed: pixels whose fast values lie
# within beta = 2·eps + merge of the threshold pixel, chained (merge: the widest gap that the
# float32 normalisation can close, so that pixels further apart keep their order and stay
# distinct). Their exact values, normalised with the map's exact min and max when two of them are
# closer than ``merge``, settle the threshold and the comparison. Maps the argument cannot settle
# cheaply (a constant map, a cluster of > _CLUSTER_MAX near-tied pixels, a missed bracket) take
# the exact path whole.
_U32 = 2.0 ** -24       # float32 unit roundoff
_SUB_STEP = 4           # median bracket from every 4th row and column (3136 of 50176 pixels)
_SUB_NARROW = 14        # bracket half-width in sub-sample ranks (~2 sd of the rank error)...
_SUB_WIDE = 40          # ...and for the maps it misses (~6 sd)
_BAND_MAX = 16384       # pixels inside the bracket, at most
_CLUSTER_MAX = 4096     # near-tie cluster size, at most


@functools.lru_cache(maxsize=32)
def upsample_matrices(mode: str, h: int, w: int, size: int = EVAL_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The upsampling kernel as float64 matrices U_h [size, h], U_w [size, w]: upsample(M) equals
    fl32(U_h @ M @ U_w.T). Built once per (mode, h, w, size) by applying the kernel (torch's, in float64)
    to identity bases; taps clamped onto the same source pixel appear summed (cv2's edge rule)."""
    eh = torch.eye(h, dtype=torch.float64).reshape(h, 1, h, 1)
    ew = torch.eye(w, dtype=torch.float64).reshape(w, 1, 1, w)
    uh = _interpolate(eh, mode, (size, 1))[:, 0, :, 0].T.contiguous()
    uw = _interpolate(ew, mode, (1, size))[:, 0, 0, :].T.contiguous()
    return uh, uw


@dataclass(frozen=True)
class _FastOp:
    uh32: torch.Tensor   # [S, h] float32
    uwt32: torch.Tensor  # [w, S] float32
    uh: np.ndarray       # [S, h] float64
    uw: np.ndarray       # [S, w] float64
    gain: float          # max row Σ|U_h| · max row Σ|U_w|: |upsampled| ≤ gain · max|M|
    err: float           # |fast − exact| ≤ err · max|M| per pixel


@functools.lru_cache(maxsize=32)
def _fast_op(mode: str, h: int, w: int, size: int) -> _FastOp:
    """Float32 matrices and the error bound of the fast upsampling. Per output pixel the float32
    GEMM rounds the weights (u), sums t_h then t_w non-zero products (γ_t = t·u each, zero products
    being exact) and the exact value is rounded once (u): |fast − exact| ≤ (t_h + t_w + 3)·u·gain·max|M|
    to first order (second-order terms < 1e-13 relative; 1 % margin)."""
    uh, uw = upsample_matrices(mode, h, w, size)
    th, tw = int((uh != 0).sum(1).max()), int((uw != 0).sum(1).max())
    gain = float(uh.abs().sum(1).max() * uw.abs().sum(1).max())
    return _FastOp(uh.float().contiguous(), uw.T.float().contiguous(), uh.numpy(), uw.numpy(), gain,
                   1.01 * (th + tw + 3) * _U32 * gain)


def upsample_fast(maps: torch.Tensor, mode: str, size: int = EVAL_SIZE) -> torch.Tensor:
    """[B, h, w] → [B, size, size] float32 by two float32 matmuls ``U_h @ M @ U_w.T``: within
    ``_fast_op(...).err · max|M|`` of :func:`upsample` (a few float32 ulps)."""
    m = maps.detach().cpu().float().contiguous()
    op = _fast_op(mode, m.shape[1], m.shape[2], size)
    return torch.matmul(torch.matmul(op.uh32, m), op.uwt32)


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
    of maps ``rows``: what :func:`upsample` gives there. [n] float32."""
    S = op.uh.shape[0]
    if len(pos) > 4 * S:  # many pixels: whole rows of the map in float64, then pick
        ur, inv = np.unique(rows * S + pos // S, return_inverse=True)
        full = np.einsum("nh,nhw->nw", op.uh[ur % S], m[ur // S].astype(np.float64)) @ op.uw.T
        return full[inv, pos % S].astype(np.float32)
    t = np.einsum("nh,nhw->nw", op.uh[pos // S], m[rows].astype(np.float64))
    return (t * op.uw[pos % S]).sum(1).astype(np.float32)


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)  # [256, 8]
_BYTE_COUNT = _BYTE_BITS.sum(1)
_BYTE_POS = np.argsort(~_BYTE_BITS, axis=1, kind="stable").astype(np.int64).reshape(-1)  # set bits first


def _set_bits(pb: np.ndarray):
    """The set bits of packed rows pb [B, nb] (np.packbits order), row-major: rows, flat positions in
    the row, and the bytes holding them (for :func:`_or_bits`). Flat 1-D indexing throughout (numpy's
    2-D fancy indexing is several times slower)."""
    nb = pb.shape[1]
    flat = pb.reshape(-1)
    byt = np.flatnonzero(flat != 0)
    val = flat[byt].astype(np.int64)
    cnt = _BYTE_COUNT[val]
    first = np.cumsum(cnt) - cnt
    rep = np.repeat(np.arange(len(byt)), cnt)
    bit = _BYTE_POS[(val * 8)[rep] + np.arange(len(rep)) - first[rep]]
    g = byt[rep] * 8 + bit  # bit index over all rows
    return g // (nb * 8), g % (nb * 8), (byt, first, bit)


def _or_bits(pb: np.ndarray, where, on: np.ndarray) -> None:
    """Set, in packed rows pb, the bits listed by ``where`` (from :func:`_set_bits`) that are ``on``."""
    byt, first, bit = where
    if len(byt):
        v = np.add.reduceat(np.where(on, 128 >> bit, 0), first)  # distinct bits: sum == or
        flat = pb.reshape(-1)
        flat[byt] |= v.astype(np.uint8)


def _popcount(pb: np.ndarray) -> np.ndarray:
    if pb.shape[1] % 8 == 0:
        pb = pb.view(np.uint64)
    return np.bitwise_count(pb).sum(1, dtype=np.int64)


def _pad_rows(rows: np.ndarray, vals: np.ndarray, n_rows: int, fill) -> np.ndarray:
    """Values grouped by row (rows sorted) → [n_rows, width] left-aligned, ``fill`` after them."""
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    width = int(max(counts.max(), 1)) if n_rows else 1
    out = np.full((n_rows, width), fill, vals.dtype)
    out.reshape(-1)[rows * width + np.arange(len(rows)) - starts[rows]] = vals
    return out


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
    max are ``lo``, ``hi`` [n]: the float32 operations of :func:`prepare`, elementwise."""
    a = np.stack([v, lo, hi], 1).astype(np.float32)  # [n, 3]: the value, its map's min and max
    if p.score_first:
        a = absolute_av_score(torch.from_numpy(a), tau).numpy().astype(np.float32)
    _normalise_rows(a, p.normalise, a[:, 1].copy(), a[:, 2].copy())
    return a[:, 0]


def _exact_min_max(u: np.ndarray, m: np.ndarray, rows: np.ndarray, eps: np.ndarray, op: _FastOp):
    """Exact min and max of upsampled maps ``rows``: the extremes over pixels within 2·eps of the fast
    ones. Returns two float32 [len(rows)]."""
    uu = u[rows]
    n = len(rows)
    lo_t = _f32_up(uu.min(1).astype(np.float64) + 2 * eps[rows])
    hi_t = _f32_down(uu.max(1).astype(np.float64) - 2 * eps[rows])
    out = []
    for cand, red, init in ((uu <= lo_t[:, None], np.minimum, np.inf), (uu >= hi_t[:, None], np.maximum, -np.inf)):
        r, pos, _ = _set_bits(np.packbits(cand, axis=1))
        ext = np.full(n, init, np.float32)
        red.at(ext, r, _exact_values(m, rows[r], pos, op))
        out.append(ext)
    return out[0], out[1]


def _median_chunk(u, m, srows, p: Protocol, tau, op: _FastOp, eps, merge, ge, gt):
    """Median-threshold protocols on one chunk (u [B, N] fast maps, m [B, h, w] native maps; ge, gt bool
    [B, N] scratch): (packed on-bits [B, ⌈N/8⌉], rows needing the exact path, rows settled exactly)."""
    B, N = u.shape
    k = N // 2
    # 1. value bracket [a, b] around rank k from a sub-sample (every 4th row and column, by its own
    #    small matmul from the height-interpolated maps ``srows``), checked by counting
    sub = torch.matmul(srows[:, 1::_SUB_STEP, :], op.uwt32[:, 2::_SUB_STEP]).reshape(B, -1).numpy()
    ms = sub.shape[1]
    q = int((k + 0.5) * ms / N)
    kth = [max(q - _SUB_WIDE, 0), max(q - _SUB_NARROW, 0), min(q + _SUB_NARROW, ms - 1), min(q + _SUB_WIDE, ms - 1)]
    sub.partition(kth[0], axis=1)  # single-kth partitions: numpy's multi-kth one is ~5× slower
    for k0, k1 in zip(kth, kth[1:]):
        if k1 > k0:
            sub[:, k0:].partition(k1 - k0, axis=1)
    a, b = sub[:, kth[1]].copy(), sub[:, kth[2]].copy()
    np.greater_equal(u, a[:, None], out=ge)
    np.greater(u, b[:, None], out=gt)
    pge, pgt = np.packbits(ge, axis=1), np.packbits(gt, axis=1)
    n_below, n_above = N - _popcount(pge), _popcount(pgt)
    miss = np.flatnonzero((n_below > k) | (k >= N - n_above))
    for r in miss:  # widen the bracket for these maps
        a[r], b[r] = sub[r, kth[0]], sub[r, kth[3]]
        pge[r], pgt[r] = np.packbits(u[r] >= a[r]), np.packbits(u[r] > b[r])
        n_below[r], n_above[r] = N - int(np.bitwise_count(pge[r]).sum()), int(np.bitwise_count(pgt[r]).sum())
    n_band = N - n_below - n_above
    ok = (n_below <= k) & (k < N - n_above) & (n_band <= _BAND_MAX)
    pband = pge & ~pgt
    pband[~ok] = 0
    rows, pos, where = _set_bits(pband)
    vals = u.reshape(-1)[rows * N + pos]
    # 2. each map's band sorted: rank k is at column rk; its neighbours decide whether it is alone
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
    n_near = 0
    if len(flag):
        # 3. flagged maps: the cluster of band values chained by gaps ≤ beta around rank k
        fv = sv[flag]
        with np.errstate(invalid="ignore"):
            big = ~(np.diff(fv, axis=1) <= beta[flag, None])  # the +inf pad counts as a big gap
        j = np.arange(W - 1)[None, :]
        rkf = rk[flag][:, None]
        s = np.where(big & (j < rkf), j, -1).max(1) + 1
        e = np.where(big & (j >= rkf), j, W - 1).min(1)
        fr = np.arange(len(flag))
        lo_c, hi_c = fv[fr, s].astype(np.float64), fv[fr, e].astype(np.float64)
        bad = ((e - s + 1) > _CLUSTER_MAX) \
            | ((s == 0) & (lo_c - a[flag] <= beta[flag])) \
            | ((e == n_band[flag] - 1) & (b[flag] - hi_c <= beta[flag]))
        exact_rows += list(flag[bad])
        good = flag[~bad]
        n_near = len(good)
        s, lo_c, hi_c = s[~bad], lo_c[~bad].astype(np.float32), hi_c[~bad].astype(np.float32)
        gi = np.full(B, -1)
        gi[good] = np.arange(len(good))
        fidx = gi[rows]
        sel = np.flatnonzero(fidx >= 0)
        fi = fidx[sel]
        on[sel] = vals[sel] > hi_c[fi]  # above the cluster: on; below: off
        incl = sel[(vals[sel] >= lo_c[fi]) & (vals[sel] <= hi_c[fi])]
        if len(incl):
            # 4. exact values of the cluster; the threshold is its (rk − s)-th smallest
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
                lo, hi = _exact_min_max(u, m, good[mr], eps, op)
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
    _or_bits(pgt, where, on)
    return pgt, exact_rows, n_near


def _fixed_chunk(u, m, p: Protocol, op: _FastOp, eps, ge, gt):
    """Fixed-threshold protocols without normalisation (ACL-SSL: upsampled map ≥ 0.5)."""
    t = np.float32(p.threshold)
    np.greater_equal(u, _f32_down(float(t) - eps)[:, None], out=ge)
    np.greater(u, _f32_up(float(t) + eps)[:, None], out=gt)
    pgt = np.packbits(gt, axis=1)
    rows, pos, where = _set_bits(np.packbits(ge, axis=1) & ~pgt)
    if len(rows):
        v = _exact_values(m, rows, pos, op)
        _or_bits(pgt, where, v > t if p.strict else v >= t)
    return pgt, [], len(np.unique(rows))


def binarize_packed(maps, protocol: Protocol | str, tau: float | None = None, chunk: int = 32,
                    stats: dict | None = None, workers: int = 1) -> np.ndarray:
    """The protocol's binary prediction for native maps [B, h, w], bit-packed (np.packbits order,
    row-major pixels): uint8 [B, ⌈S²/8⌉].

    Bit for bit ``np.packbits(binarize(prepare(maps, protocol, tau), protocol))`` (the argument is in
    the comment above ``_U32``), an order of magnitude faster. ``stats`` (a dict) counts the maps
    settled from fast values alone (``clean``), through exact values of near-tied pixels
    (``near_tie``) and on the exact path (``exact``). Fixed thresholds after a normalisation (no
    protocol of PROTOCOLS) and non-finite maps go the exact path. ``workers`` > 1 splits the maps
    over threads (numpy and MKL release the GIL; each thread keeps one torch thread).
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
    if B == 0 or (fixed and (p.normalise != "none" or p.score_first)) or N < 64 \
            or not np.isfinite(m).all():
        st["exact"] += B
        return np.packbits(as_rows(binarize(prepare(torch.from_numpy(m), p, tau), p)), axis=1)
    out = np.empty((B, (N + 7) // 8), np.uint8)
    parts = np.array_split(np.arange(B), max(1, min(workers, B // chunk or 1)))
    if len(parts) == 1:
        _binarize_block(m, p, tau, chunk, out, st)
        return out
    from concurrent.futures import ThreadPoolExecutor
    sts = [dict(clean=0, near_tie=0, exact=0) for _ in parts]
    with ThreadPoolExecutor(len(parts)) as ex:
        list(ex.map(lambda j: _binarize_block(m[parts[j]], p, tau, chunk, out[parts[j][0]:parts[j][-1] + 1],
                                              sts[j]), range(len(parts))))
    for d in sts:
        for key in d:
            st[key] += d[key]
    return out


def _binarize_block(m: np.ndarray, p: Protocol, tau, chunk: int, out: np.ndarray, st: dict) -> None:
    """:func:`binarize_packed` on maps m [B, h, w] into out [B, nb], chunk by chunk."""
    B, h, w = m.shape
    S = p.size
    N = S * S
    op = _fast_op(p.upsample, h, w, S)
    c = max(1, min(chunk, B))
    ut, sbuf = torch.empty(c, N), torch.empty(c, S, w)  # torch's 64-byte alignment: MKL is ~2× faster
    ubuf, ge, gt = ut.numpy(), np.empty((c, N), bool), np.empty((c, N), bool)
    for s0 in range(0, B, c):
        mc = m[s0:s0 + c]
        n = len(mc)
        u = ubuf[:n]
        torch.matmul(op.uh32, torch.from_numpy(mc), out=sbuf[:n])
        torch.mm(sbuf[:n].view(n * S, w), op.uwt32, out=ut[:n].view(n * S, S))
        amax = np.abs(mc.reshape(n, -1)).max(1).astype(np.float64)
        eps = op.err * amax + 1e-30
        if p.threshold is not None:
            on, exact_rows, n_near = _fixed_chunk(u, mc, p, op, eps, ge[:n], gt[:n])
        else:
            on, exact_rows, n_near = _median_chunk(u, mc, sbuf[:n], p, tau, op, eps,
                                                   _merge_width(p, amax, op.gain, tau), ge[:n], gt[:n])
        out[s0:s0 + n] = on
        if exact_rows:
            r = np.asarray(exact_rows)
            out[s0 + r] = np.packbits(as_rows(binarize(prepare(torch.from_numpy(mc[r]), p, tau), p)), axis=1)
        st["exact"] += len(exact_rows)
        st["near_tie"] += n_near
        st["clean"] += n - n_near - len(exact_rows)


def binarize_fast(maps, protocol: Protocol | str, tau: float | None = None, chunk: int = 32) -> torch.Tensor:
    """:func:`binarize_packed` unpacked: bool [B, S, S], equal to ``binarize(prepare(maps, protocol, tau))``."""
    p = get_protocol(protocol)
    bits = np.unpackbits(binarize_packed(maps, p, tau, chunk), axis=1, count=p.size * p.size)
    return torch.from_numpy(bits.astype(bool).reshape(-1, p.size, p.size))


def ciou_from_packed(infer: np.ndarray, g1: np.ndarray, g2: np.ndarray | None = None) -> torch.Tensor:
    """:func:`ciou_from_levels` on bit-packed rows (uint8 [B, nb], np.packbits order): prediction,
    g1 = gt > 0 and g2 = gt == 1 (None: a binary GT). [B] float64, NaN for 0/0."""
    pc = lambda x: np.bitwise_count(x).sum(1, dtype=np.int64)  # noqa: E731
    on1, n1 = pc(infer & g1), pc(g1)
    on2, n2 = (on1, n1) if g2 is None else (pc(infer & g2), pc(g2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.from_numpy(0.5 * (on1 + on2) / (0.5 * (n1 + n2) + (pc(infer) - on1)))


def ciou_fast(maps, g1, g2=None, protocol: Protocol | str = "ezvsl", tau: float | None = None,
              chunk: int = 16, stats: dict | None = None) -> torch.Tensor:
    """Per-item cIoU [B] float64 of native maps [B, h, w] against GT masks g1 = gt > 0 and g2 = gt == 1
    (bool [B, S, S]; g2 None for a binary GT) through :func:`binarize_packed`: equal to
    ``ciou_from_levels(binarize(prepare(maps, protocol, tau), protocol), g1, g2)``."""
    pk = lambda g: np.packbits(as_rows(np.asarray(g) if not torch.is_tensor(g) else g) != 0, axis=1)  # noqa: E731
    return ciou_from_packed(binarize_packed(maps, protocol, tau, chunk, stats), pk(g1),
                            None if g2 is None else pk(g2))


# ----------------------------------------------------------------------------- aggregates
def _as_f64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64)) if not torch.is_tensor(x) else x.double()


def success_curve(ciou_values) -> torch.Tensor:
    """Indicator [N, 21]: cIoU_i ≥ t_j for the 21 AUC thresholds (NaN never succeeds)."""
    c = _as_f64(ciou_values)
    t = torch.tensor(AUC_THRESHOLDS, dtype=torch.float64)
    return c[:, None] >= t[None, :]


def trapezoid_weights() -> torch.Tensor:
    """w such that trapz(x=AUC_THRESHOLDS, y) = w · y (sklearn.metrics.auc on a monotone x)."""
    x = torch.tensor(AUC_THRESHOLDS, dtype=torch.float64)
    dx = x[1:] - x[:-1]
    w = torch.zeros(len(AUC_THRESHOLDS), dtype=torch.float64)
    w[:-1] += dx / 2
    w[1:] += dx / 2
    return w


def per_item_auc(ciou_values) -> torch.Tensor:
    """AUC contribution of each item; AUC = mean over items (the curve is linear in the items)."""
    return success_curve(ciou_values).double() @ trapezoid_weights()


def auc(ciou_values) -> float:
    """Trapezoid area under "fraction of samples with cIoU ≥ t", t = 0, 0.05, …, 1."""
    c = _as_f64(ciou_values)
    if c.numel() == 0:
        return float("nan")
    y = success_curve(c).double().mean(0)
    x = torch.tensor(AUC_THRESHOLDS, dtype=torch.float64)
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2).sum())


def summarize_ciou(ciou_values, prefix: str = "") -> dict:
    """The tables' numbers from per-sample cIoU: cIoU@0.5 (fraction ≥ 0.5), AUC, mean cIoU.

    ``mean_ciou`` counts a NaN cIoU (empty GT and empty prediction) as 0; the peers would print nan.
    """
    c = _as_f64(ciou_values)
    n = int(c.numel())
    if n == 0:
        return {f"{prefix}ciou@0.5": None, f"{prefix}auc": None, f"{prefix}mean_ciou": None}
    return {f"{prefix}ciou@0.5": float((c >= 0.5).double().mean()),
            f"{prefix}auc": auc(c),
            f"{prefix}mean_ciou": float(torch.nan_to_num(c, nan=0.0).mean())}


def group_codes(groups: Sequence[str | None]) -> torch.Tensor:
    """Integer group index per item; items without a group are their own group. [N] int64."""
    codes, table = [], {}
    for i, g in enumerate(groups):
        key = ("g", g) if g is not None else ("i", i)
        codes.append(table.setdefault(key, len(table)))
    return torch.tensor(codes, dtype=torch.int64)


def group_min_indicator(ciou_values, codes: torch.Tensor) -> torch.Tensor:
    """iIoU building block (SSLalignment ``finalize_cIoU`` / ``finalize_IAUC``): per group, the minimum
    over its members of [cIoU ≥ t] for the 21 thresholds. Returns [G, 21] float64 (column 10 is t=0.5).
    """
    ind = success_curve(ciou_values).double()  # [N, 21]
    G = int(codes.max()) + 1 if codes.numel() else 0
    out = torch.ones(G, ind.shape[1], dtype=torch.float64)
    return out.scatter_reduce(0, codes[:, None].expand_as(ind), ind, reduce="amin", include_self=True)


def summarize_iiou(ciou_values, codes: torch.Tensor, prefix: str = "") -> dict:
    """iIoU (fraction of groups whose every member has cIoU ≥ 0.5) and iAUC (its 21-point curve)."""
    gm = group_min_indicator(ciou_values, codes)
    if gm.shape[0] == 0:
        return {f"{prefix}iiou": None, f"{prefix}iauc": None, f"{prefix}n_groups": 0}
    y = gm.mean(0)
    return {f"{prefix}iiou": float(y[10]), f"{prefix}iauc": float(trapezoid_weights() @ y),
            f"{prefix}n_groups": int(gm.shape[0])}


# ----------------------------------------------------------------------------- ground-truth maps
def pad_boxes(box_lists: Sequence[Sequence[Sequence[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of normalised (x1, y1, x2, y2) boxes → boxes [B, K, 4] float64 and valid [B, K] bool."""
    B = len(box_lists)
    lens = np.fromiter((len(b) for b in box_lists), np.int64, B)
    K = max(int(lens.max()) if B else 0, 1)
    boxes = np.zeros((B, K, 4))
    valid = np.zeros((B, K), bool)
    if lens.sum():
        flat = np.asarray([float(c) for bl in box_lists for b in bl for c in b]).reshape(-1, 4)
        rows = np.repeat(np.arange(B), lens)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        boxes[rows, cols] = flat
        valid[rows, cols] = True
    return torch.from_numpy(boxes), torch.from_numpy(valid)


def box_pixels(boxes: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """The peers' ``(np.clip(bbox, 0, 1) * 224).astype(int)``: [..., 4] float64 → int64.

    For Flickr, whose raw boxes are 256-px integers v, the normalised box v/256 is exact in binary, so
    ``int(224 * (v / 256))`` equals the peers' ``int(224 * v / 256)``.
    """
    b = boxes.detach().cpu().numpy() if torch.is_tensor(boxes) else np.asarray(boxes, np.float64)
    return torch.from_numpy(np.floor(np.clip(b.astype(np.float64), 0.0, 1.0) * size).astype(np.int64))


def box_masks(boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """Painted boxes ``temp[y1:y2, x1:x2] = 1``: [B, K, 4] → bool [B, K, size, size]."""
    px = box_pixels(boxes, size)
    r = torch.arange(size)
    in_y = (r >= px[..., 1, None]) & (r < px[..., 3, None]) & valid[..., None]  # [B, K, S]
    in_x = (r >= px[..., 0, None]) & (r < px[..., 2, None])
    return in_y[..., :, None] & in_x[..., None, :]


def box_counts(boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE) -> np.ndarray:
    """Σ over valid boxes of the painted box ``temp[y1:y2, x1:x2] = 1``: [B, K, 4] → uint8 [B, S, S].

    One slice write per box (cost ∝ box area; a broadcast outer product over the full map is ~20×
    slower on CPU). An empty box (x2 <= x1) paints nothing, as an empty numpy slice."""
    px = box_pixels(boxes, size).numpy()
    ok = valid.numpy() & (px[..., 2] > px[..., 0]) & (px[..., 3] > px[..., 1])
    out = np.zeros((ok.shape[0], size, size), np.uint8)
    for i, k in zip(*np.nonzero(ok)):
        x1, y1, x2, y2 = px[i, k]
        out[i, y1:y2, x1:x2] += 1
    return out


def gt_levels(boxes: torch.Tensor, valid: torch.Tensor, consensus: bool = False, size: int = EVAL_SIZE
              ) -> tuple[np.ndarray, np.ndarray]:
    """Box GT as the two masks of :func:`ciou_from_levels`: union (VGG-SS) → (g, g); consensus
    (Flickr) → (≥ 1 box, ≥ 2 boxes)."""
    c = box_counts(boxes, valid, size)
    g1 = c >= 1
    return (g1, c >= 2) if consensus else (g1, g1)


def gt_union_packed(boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE) -> np.ndarray:
    """VGG-SS ground truth (union of the painted boxes) straight in the bit-packed layout of
    :func:`binarize_packed`: uint8 [B, size·size/8] (size a multiple of 8). Each box ORs its packed
    column mask into its rows (one slice per box, 1/8 of the bytes of painting)."""
    if size % 8:
        raise ValueError("gt_union_packed needs size % 8 == 0")
    px = box_pixels(boxes, size).numpy().reshape(-1, 4)  # [B*K, 4]
    ok = valid.numpy().reshape(-1) & (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
    B, K = valid.shape[:2]
    out = np.zeros((B, size, size // 8), np.uint8)
    idx = np.flatnonzero(ok)
    if len(idx):
        r = np.arange(size)
        cols = np.packbits((r >= px[idx, 0, None]) & (r < px[idx, 2, None]), axis=1)  # [n, size/8]
        for j, i in enumerate(idx):
            out[i // K, px[i, 1]:px[i, 3]] |= cols[j]
    return out.reshape(B, -1)


def gt_box_union(boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """VGG-SS ground truth: union of the boxes, binary. [B, size, size] float32."""
    return torch.from_numpy((box_counts(boxes, valid, size) > 0).astype(np.float32))


def gt_box_consensus(boxes: torch.Tensor, valid: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """Flickr-SoundNet ground truth: Σ_boxes box / 2, clipped at 1 (1 where ≥ 2 boxes overlap, 0.5
    where one). Every box counts, as in the peers' ``bbox2gtmap(format='flickr')``. [B, S, S] float32."""
    return torch.from_numpy(np.minimum(box_counts(boxes, valid, size), 2).astype(np.float32) / 2)


def gt_from_masks(masks: torch.Tensor | np.ndarray, size: int = EVAL_SIZE) -> torch.Tensor:
    """Binary masks [B, H, W] (> 0 = object) → [B, size, size] float32, resized with nearest neighbour
    (cv2 INTER_NEAREST rule, as ACL-SSL's ``mask2gtmap``)."""
    m = (torch.as_tensor(np.asarray(masks)) > 0).float()
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m[:, None], size=(size, size), mode="nearest")[:, 0]
    return m


# ----------------------------------------------------------------------------- OGL fusion
def ogl_relative(av_pred: torch.Tensor, obj_pred: torch.Tensor, alpha: float = 0.4) -> torch.Tensor:
    """EZ-VSL / SSLalignment object-guided localization on the normalised 224×224 maps:
    ``normalize_img(pred * α + pred_obj * (1 − α))``, α = 0.4."""
    fused = torch.from_numpy(av_pred.numpy() * alpha + obj_pred.numpy() * (1 - alpha))
    return minmax(fused, inplace=True)


def absolute_av_score(av_up: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """SLAVC absolute AV score: min-max with the fixed range [-1/τ, 1/τ] of a cos/τ map, i.e.
    (cos + 1)/2, computed as SLAVC does ``(S - lo) / (hi - lo)``. ``tau=None``: the map is a cosine."""
    scale = 1.0 if tau is None else 1.0 / tau
    lo, hi = -scale, scale
    return torch.from_numpy((av_up.numpy() - lo) / (hi - lo))


def ogl_absolute(av_score: torch.Tensor, obj_up: torch.Tensor, alpha: float = 0.9,
                 obj_max: float = 2.5) -> torch.Tensor:
    """SLAVC absolute fusion ``s_av * α + s_obj * (1 − α)`` with s_obj = obj / 2.5 (objectness range
    fixed to [0, 2.5]), α = 0.9 in SLAVC's scripts."""
    return torch.from_numpy(av_score.numpy() * alpha + ((obj_up.numpy() - 0.0) / (obj_max - 0.0)) * (1 - alpha))
