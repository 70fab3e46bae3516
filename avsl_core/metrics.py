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

Pixel-level, retrieval, extended-set, pointing/swap and bootstrap metrics are in
:mod:`avsl_core.metrics_extended`.
"""
from __future__ import annotations

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
def upsample(maps: torch.Tensor, mode: str, size: int = EVAL_SIZE) -> torch.Tensor:
    """[B, h, w] → [B, size, size] float32.

    ``cv2_linear`` is cv2.resize(INTER_LINEAR): half-pixel centres with edge clamping, which is
    torch's bilinear with ``align_corners=False`` (checked against cv2 5.0: ≤ 1.5e-6 when upsampling).
    """
    x = maps.float()[:, None]  # [B, 1, h, w]
    if mode in ("cv2_linear", "bilinear"):
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    elif mode == "bilinear_ac":
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    elif mode == "bicubic":
        y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    elif mode == "bicubic_ac":
        y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    elif mode == "nearest":
        y = F.interpolate(x, size=(size, size), mode="nearest")
    else:
        raise ValueError(f"unknown upsampling {mode!r}")
    return y[:, 0]


def as_rows(x) -> np.ndarray:
    """[B, ...] tensor or array → a [B, N] numpy view (no copy for CPU tensors)."""
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return a.reshape(a.shape[0], -1)


def popcount_rows(a: np.ndarray) -> np.ndarray:
    """Number of True per row of a bool [B, N] array (bit-packed popcount), int64 [B]."""
    return np.bitwise_count(np.packbits(a, axis=1)).sum(1, dtype=np.int64)


def minmax(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Per-sample (x - min) / (max - min) in float32, as the peers' ``normalize_img`` (a constant map
    is left unchanged). Numpy does the work: identical IEEE results, far fewer allocations."""
    t = x if inplace and x.is_contiguous() else x.float().contiguous().clone()
    a = as_rows(t)  # a view: writes land in t
    lo, hi = a.min(1), a.max(1)
    rng = hi - lo
    const = rng == 0
    lo[const], rng[const] = 0, 1
    np.subtract(a, lo[:, None], out=a)
    np.divide(a, rng[:, None], out=a)
    return t


def normalise(x: torch.Tensor, how: str, inplace: bool = False) -> torch.Tensor:
    if how == "minmax":
        return minmax(x, inplace)
    if how == "one_minus_minmax_neg":  # LVS / SSLalignment: pred = 1 - normalize_img(-h)
        t = x if inplace and x.is_contiguous() else x.float().contiguous().clone()
        a = as_rows(t)
        np.negative(a, out=a)
        minmax(t, inplace=True)
        np.subtract(1, a, out=a)
        return t
    if how == "none":
        return x if inplace else x.float().clone()
    raise ValueError(f"unknown normalisation {how!r}")


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
