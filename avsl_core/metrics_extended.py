"""Metrics beyond cIoU/AUC, vectorised over items (torch): AVSBench pixel metrics, cross-modal retrieval,
SLAVC extended-set AP / max-F1 / LocAcc, pointing, swap, object discrimination, floors, bootstrap CIs.

Peer protocols reproduced (notes/peer_codebases.md):
* AVSBench S4 (§3.7, OpenNLPLab/AVSBench ``utility.mask_iou`` / ``Eval_Fmeasure``; ACL-SSL's dataset-level
  F-score fix, §3.6): :func:`mask_iou`, :func:`fscore_curves`, :func:`avsbench_summary`.
* SLAVC extended sets (§3.3, ``utils.EvaluatorFull``): :func:`topquarter_confidence`,
  :func:`extended_ap_f1` (exact threshold stepping), :func:`loc_acc`.
* Retrieval (paper Table 6; no peer implements it): :func:`retrieval_hits`.
* AVScenes measures an audio-blind map cannot pass (SPEC §3): :func:`pointing_hits`,
  :func:`swap_pair_success`, :func:`object_discrimination`.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch

from avsl_core.metrics import as_rows, box_counts, box_pixels, popcount_rows

F_BETA2 = 0.3
F_NUM_THRESHOLDS = 255


# ----------------------------------------------------------------------------- AVSBench pixel level
def mask_iou(pred: torch.Tensor, gt: torch.Tensor, thr: float | torch.Tensor, eps: float = 1e-7
             ) -> torch.Tensor:
    """AVSBench per-frame IoU of ``pred > thr`` against a binary mask; an empty GT scores the fraction
    of pixels where both are 0 (the official empty-mask rule). [B, H, W] → [B] float64."""
    a = as_rows(pred)
    t = np.asarray(thr.cpu() if torch.is_tensor(thr) else thr, dtype=a.dtype)
    p = a > (t.reshape(-1, 1) if t.ndim else t)
    g = as_rows(gt) > 0
    n = p.shape[1]
    inter = popcount_rows(p & g).astype(np.float64)
    union = popcount_rows(p | g).astype(np.float64)
    empty = popcount_rows(g) == 0
    inter = np.where(empty, n - union, inter)  # both 0 = n - |p ∪ g| = n - |p| when g is empty
    union = np.where(empty, float(n), union)
    return torch.from_numpy(inter / (union + eps))


def fscore_curves(pred: torch.Tensor, gt: torch.Tensor, num: int = F_NUM_THRESHOLDS,
                  beta2: float = F_BETA2) -> tuple[torch.Tensor, torch.Tensor]:
    """AVSBench ``_eval_pr`` + F-measure per frame: P/R of ``pred >= th`` for th in
    ``torch.linspace(0, 1 - 1e-10, 255)`` (float32, so the last threshold is 1.0), F = (1+β²)PR/(β²P+R)
    with NaN → 0. Returns curves [B, num] float64 and valid [B] (frames with a non-empty GT; the
    official code skips the others). Counting by histogram, not by 255 passes."""
    th = torch.linspace(0, 1 - 1e-10, num).numpy()  # float32, as the official code
    flat = as_rows(pred).astype(np.float32, copy=False)
    B = flat.shape[0]
    g = as_rows(gt) > 0
    c = np.searchsorted(th, flat, side="right")  # thresholds <= value: on at threshold i iff i < c
    off = (c + np.arange(B)[:, None] * (num + 1)).reshape(-1)
    hist_all = np.bincount(off, minlength=B * (num + 1)).reshape(B, num + 1).astype(np.float64)
    hist_pos = np.bincount(off[g.reshape(-1)], minlength=B * (num + 1)).reshape(B, num + 1).astype(np.float64)
    n_pred = np.cumsum(hist_all[:, ::-1], 1)[:, ::-1][:, 1:]  # [B, num]: #(pred >= th_i)
    tp = np.cumsum(hist_pos[:, ::-1], 1)[:, ::-1][:, 1:]
    n_gt = popcount_rows(g).astype(np.float64)[:, None]
    prec = tp / (n_pred + 1e-20)
    rec = tp / (n_gt + 1e-20)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    return torch.from_numpy(np.nan_to_num(f, nan=0.0)), torch.from_numpy(n_gt[:, 0] > 0)


def avsbench_summary(iou: torch.Tensor, curves: torch.Tensor, valid: torch.Tensor,
                     frames_per_batch: int = 20) -> dict:
    """mIoU and F-score in both forms.

    * ``*_official``: the official test loop over consecutive batches of ``frames_per_batch`` frames:
      mIoU = mean of batch means; F = mean over batches of max_th(mean F over the batch's non-empty
      frames), a batch without such frames counting 0. Depends on the batch size (notes §3.7).
    * ``*_dataset``: mIoU = mean over frames; F = max_th(mean F over all non-empty frames) (ACL-SSL).
    """
    N = int(iou.numel())
    if N == 0:
        return {k: None for k in ("miou_official", "miou_dataset", "fscore_official", "fscore_dataset")}
    b = torch.arange(N) // frames_per_batch
    nb = int(b.max()) + 1
    cnt = torch.zeros(nb, dtype=torch.float64).index_add_(0, b, torch.ones(N, dtype=torch.float64))
    miou_b = torch.zeros(nb, dtype=torch.float64).index_add_(0, b, iou.double()) / cnt
    v = valid.double()
    fsum = torch.zeros(nb, curves.shape[1], dtype=torch.float64).index_add_(0, b, curves * v[:, None])
    vcnt = torch.zeros(nb, dtype=torch.float64).index_add_(0, b, v)
    fmean = torch.where(vcnt[:, None] > 0, fsum / vcnt.clamp(min=1)[:, None], torch.zeros_like(fsum))
    out = {"miou_official": float(miou_b.mean()), "miou_dataset": float(iou.double().mean()),
           "fscore_official": float(fmean.max(1).values.mean()),
           "fscore_dataset": (float(curves[valid].mean(0).max()) if bool(valid.any()) else None),
           "frames_per_batch": frames_per_batch, "n_frames": N, "n_nonempty": int(valid.sum())}
    return out


# ----------------------------------------------------------------------------- retrieval
def retrieval_hits(query: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                   q_labels: Sequence | None = None, g_labels: Sequence | None = None,
                   chunk: int = 1024) -> dict:
    """Recall@k per query by cosine similarity. Query i's paired item is gallery i (instance level);
    with labels, a hit is any of the top k sharing the query's label (category level). Ties are broken
    by gallery index (a stable sort). Returns {"instance": {"R@k": bool [Q]}, "rank": int [Q] (0-based),
    "category": {...} or None}."""
    q = torch.nn.functional.normalize(query.double(), dim=1)
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    Q, G = q.shape[0], g.shape[0]
    if Q != G:
        raise ValueError(f"instance retrieval pairs query i with gallery i; got {Q} vs {G}")
    ranks = torch.empty(Q, dtype=torch.int64)
    cat = {f"R@{k}": torch.zeros(Q, dtype=torch.bool) for k in ks} if q_labels is not None else None
    if cat is not None:
        codes = {lab: i for i, lab in enumerate(sorted(set(map(str, q_labels)) | set(map(str, g_labels))))}
        ql = torch.tensor([codes[str(x)] for x in q_labels])
        gl = torch.tensor([codes[str(x)] for x in g_labels])
    j = torch.arange(G)[None, :]

    def stable_rank(sim, s_ref, j_ref):  # position of gallery j_ref in a stable descending sort
        return ((sim > s_ref[:, None]) | ((sim == s_ref[:, None]) & (j < j_ref[:, None]))).sum(1)
    for s in range(0, Q, chunk):
        sim = q[s:s + chunk] @ g.T  # [c, G]
        idx = torch.arange(s, min(s + chunk, Q))
        ranks[idx] = stable_rank(sim, sim[torch.arange(len(idx)), idx], idx)
        if cat is not None:  # rank of the best same-class item (highest sim, then lowest index)
            same = gl[None, :] == ql[idx][:, None]  # [c, G]
            s_best = torch.where(same, sim, torch.full_like(sim, -math.inf)).max(1).values
            j_best = (same & (sim == s_best[:, None])).int().argmax(1)
            r_cat = stable_rank(sim, s_best, j_best)
            for k in ks:
                cat[f"R@{k}"][idx] = r_cat < k
    inst = {f"R@{k}": ranks < k for k in ks}
    return {"instance": inst, "rank": ranks, "category": cat}


# ----------------------------------------------------------------------------- extended sets (SLAVC)
def topquarter_confidence(score: torch.Tensor) -> torch.Tensor:
    """SLAVC confidence: ``np.sort(score.flatten())[-n//4:].mean()`` per sample (the top ⌈n/4⌉
    values of the 224×224 absolute score map). [B, H, W] → [B] float64."""
    a = as_rows(score)
    n = a.shape[1]
    m = -((-n) // 4)  # len(x[-n//4:]) = ceil(n/4)
    top = np.partition(a, n - m, axis=1)[:, n - m:]  # the m largest values
    return torch.from_numpy(top.sum(1, dtype=np.float64) / m)


def _weighted_pr(conf, hit, positive, weights, positions):
    """P and R at thresholds = values at ``positions`` of the (weighted) ascending-sorted confidences.

    ``weights`` [R, N] are item multiplicities (bootstrap counts; ones for the plain metric); a weighted
    list equals the list with each item repeated, so this is SLAVC's computation on that list.
    """
    order = torch.argsort(conf, stable=True)
    cs = conf[order]
    w = weights[:, order]  # [R, N]
    tpable = (positive & hit)[order].double()
    pos = positive[order].double()
    cum = w.cumsum(1)
    q = torch.as_tensor(positions, dtype=torch.float64)[None, :].expand(w.shape[0], -1).contiguous()
    at = torch.searchsorted(cum, q, right=True).clamp(max=cs.numel() - 1)  # [R, T]
    th = cs[at]
    lo = torch.searchsorted(cs, th.contiguous(), right=False)  # first sorted index with conf >= th

    def suffix(v):  # [R, N + 1]: Σ_{j >= i} w_j v_j
        s = (w * v).flip(1).cumsum(1).flip(1)
        return torch.cat([s, torch.zeros(w.shape[0], 1, dtype=s.dtype)], 1)
    tp = suffix(tpable).gather(1, lo)
    above = suffix(torch.ones_like(pos)).gather(1, lo)
    fn = (w * pos).sum(1, keepdim=True) - suffix(pos).gather(1, lo)
    fp = above - tp
    prec = torch.where(tp + fp == 0, torch.ones_like(tp), tp / (tp + fp).clamp(min=1e-300))
    rec = torch.where(tp + fn == 0, torch.ones_like(tp), tp / (tp + fn).clamp(min=1e-300))
    return prec, rec


def extended_ap_f1(conf, ciou, positive, ciou_thr: float = 0.5, weights: torch.Tensor | None = None
                   ) -> dict:
    """SLAVC ``EvaluatorFull``: AP and max-F1 over confidence thresholds.

    A negative above the threshold is a false positive; a positive above it is a true positive only if
    its cIoU ≥ ``ciou_thr`` (else a false positive); a positive below it is a false negative;
    P = 1 when nothing is detected, R = 1 when there is nothing to find.
    AP thresholds: ``np.sort(conf)[:-1][::-max(1, N//200)]`` (largest dropped, descending);
    precision made monotone by a running max from the right; AP = Σ Pmax[i]·(R[i+1] − R[i]).
    F1 thresholds: ``sorted(conf)[::max(1, N//10)]``; max-F1 = max of 2PR/(P+R) (0 when P+R = 0).
    With ``weights`` [R, N] (bootstrap counts) returns tensors [R]; else floats.
    """
    conf = torch.as_tensor(np.asarray(conf, dtype=np.float64)) if not torch.is_tensor(conf) else conf.double()
    c = torch.as_tensor(np.asarray(ciou, dtype=np.float64)) if not torch.is_tensor(ciou) else ciou.double()
    positive = torch.as_tensor(np.asarray(positive, dtype=bool))
    N = conf.numel()
    single = weights is None
    w = torch.ones(1, N, dtype=torch.float64) if single else weights.double()
    hit = c >= ciou_thr  # NaN never hits
    ap_pos = list(range(N - 2, -1, -max(1, N // 200)))
    f1_pos = list(range(0, N, max(1, N // 10)))
    if len(ap_pos) >= 2:
        P, R = _weighted_pr(conf, hit, positive, w, ap_pos)
        pmax = P.flip(1).cummax(1).values.flip(1)
        ap = (pmax[:, :-1] * (R[:, 1:] - R[:, :-1])).sum(1)
    else:
        ap = torch.zeros(w.shape[0], dtype=torch.float64)
    if f1_pos:
        P, R = _weighted_pr(conf, hit, positive, w, f1_pos)
        f1 = torch.where(P + R > 0, 2 * P * R / (P + R).clamp(min=1e-300), torch.zeros_like(P))
        mf1 = f1.max(1).values
    else:
        mf1 = torch.zeros(w.shape[0], dtype=torch.float64)
    if single:
        return {"ap": float(ap[0]), "max_f1": float(mf1[0])}
    return {"ap": ap, "max_f1": mf1}


def loc_acc(ciou, positive) -> float:
    """SLAVC ``precision_at_50`` ("LocAcc"): mean of cIoU > 0.5 (strict) over positives."""
    c = np.asarray(ciou, dtype=np.float64)[np.asarray(positive, dtype=bool)]
    return float(np.mean(c > 0.5)) if c.size else float("nan")


# ----------------------------------------------------------------------------- pointing, swap, discrimination
def peak_index(maps: torch.Tensor) -> torch.Tensor:
    """Flat index of the first maximum (row-major) per map: [B, H, W] → [B] int64."""
    return torch.from_numpy(np.argmax(as_rows(maps), axis=1))


def pointing_hits(maps: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Pointing game: does the map's peak fall on the sounding object (gt > 0)? [B] bool."""
    g = as_rows(gt)
    return torch.from_numpy(np.take_along_axis(g, peak_index(maps).numpy()[:, None], 1)[:, 0] > 0)


def point_in_boxes(rows: torch.Tensor, cols: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor,
                   size: int = 224) -> torch.Tensor:
    """Is pixel (row, col) inside any valid box (painted with the GT rule)? rows/cols [B], boxes
    [B, K, 4] normalised → [B] bool."""
    px = box_pixels(boxes, size)
    r, c = rows[:, None], cols[:, None]
    inside = (c >= px[..., 0]) & (c < px[..., 2]) & (r >= px[..., 1]) & (r < px[..., 3]) & valid
    return inside.any(1)


def swap_pair_success(group_codes: torch.Tensor, hits: torch.Tensor, peaks: torch.Tensor,
                      boxes: torch.Tensor, valid: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Sound-swap pairs: for every two queries i < j of one image (same group) with different sounding
    objects, success if each map peaks inside its own object and not inside the other's — the peak
    moved to the right object when the sound changed. Returns [n_pairs] bool."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_codes.tolist()):
        members.setdefault(g, []).append(i)
    pi, pj = [], []
    for m in members.values():
        for a in range(len(m)):
            for b in range(a + 1, len(m)):
                pi.append(m[a])
                pj.append(m[b])
    if not pi:
        return torch.zeros(0, dtype=torch.bool)
    pi, pj = torch.tensor(pi), torch.tensor(pj)
    rows, cols = peaks // size, peaks % size
    i_in_j = point_in_boxes(rows[pi], cols[pi], boxes[pj], valid[pj], size)
    j_in_i = point_in_boxes(rows[pj], cols[pj], boxes[pi], valid[pi], size)
    return hits[pi] & hits[pj] & ~i_in_j & ~j_in_i


def object_discrimination(pred: torch.Tensor, target_boxes: torch.Tensor, target_valid: torch.Tensor,
                          other_boxes: torch.Tensor, other_valid: torch.Tensor) -> torch.Tensor:
    """Is the map's mean inside the sounding object's box(es) higher than inside every other object's
    box? An audio-blind map scores about 1/objects. [B] float64: 1, 0, or NaN (no other object)."""
    S = pred.shape[-1]
    p = pred.detach().cpu().double().reshape(-1, S, S)
    tm = torch.from_numpy(box_counts(target_boxes, target_valid, S) > 0).reshape(p.shape[0], -1).double()
    t_area = tm.sum(1)
    t_mean = (tm * p.reshape(p.shape[0], -1)).sum(1) / t_area  # NaN if empty
    # other objects: each box's sum = rows @ map @ cols (one small matmul per box)
    px = box_pixels(other_boxes, S)
    r = torch.arange(S)
    rows = ((r >= px[..., 1, None]) & (r < px[..., 3, None])).double()  # [B, M, S]
    cols = ((r >= px[..., 0, None]) & (r < px[..., 2, None])).double()
    o_sum = ((rows @ p) * cols).sum(-1)  # [B, M]
    o_area = rows.sum(-1) * cols.sum(-1)
    ok = other_valid & (o_area > 0)
    o_mean = torch.where(ok, o_sum / o_area.clamp(min=1), torch.full_like(o_sum, -math.inf))
    win = (t_mean[:, None] > o_mean).all(1) & (t_area > 0)
    return torch.where(ok.any(1), win.double(), torch.full_like(t_mean, math.nan))


# ----------------------------------------------------------------------------- floors
def centre_prior_maps(n: int, h: int, w: int, sigma: float = 0.25) -> torch.Tensor:
    """Audio-blind floor: an isotropic Gaussian at the image centre (σ as a fraction of the side),
    on pixel centres. [n, h, w] float32, peak 1."""
    y = (torch.arange(h, dtype=torch.float64) + 0.5) / h - 0.5
    x = (torch.arange(w, dtype=torch.float64) + 0.5) / w - 0.5
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))
    return g.float().expand(n, h, w).clone()


def random_maps(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Floor: i.i.d. uniform maps from a seeded generator. [n, h, w] float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=gen)


# ----------------------------------------------------------------------------- bootstrap
@functools.lru_cache(maxsize=4)
def bootstrap_counts(n: int, n_resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    """Multiplicities of n items in each of ``n_resamples`` resamples with replacement: [R, n] float64.
    The same (n, R, seed) gives the same resamples, so metrics of one item set share them."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    off = (idx + np.arange(n_resamples)[:, None] * n).reshape(-1)
    counts = np.bincount(off, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)
    return torch.from_numpy(counts)  # cached: callers must not modify it in place


def mean_stat(values) -> Callable[[torch.Tensor], torch.Tensor]:
    """Statistic for :func:`bootstrap_ci`: the weighted mean of per-item values (NaN counted as 0)."""
    v = torch.nan_to_num(torch.as_tensor(np.asarray(values, dtype=np.float64)), nan=0.0)
    return lambda w: (w @ v) / w.sum(1)


def bootstrap_ci(stat: Callable[[torch.Tensor], torch.Tensor], n: int, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95, chunk: int = 250) -> list[float] | None:
    """Percentile interval of ``stat(weights [R, n]) -> [R]`` over seeded resamples of the n items."""
    if n == 0 or n_resamples <= 0:
        return None
    w = bootstrap_counts(n, n_resamples, seed)
    vals = torch.cat([torch.as_tensor(stat(w[s:s + chunk])).double().reshape(-1)
                      for s in range(0, n_resamples, chunk)])
    vals = vals[~torch.isnan(vals)]
    if vals.numel() == 0:
        return None
    a = (1 - level) / 2
    q = torch.quantile(vals, torch.tensor([a, 1 - a], dtype=torch.float64))
    return [float(q[0]), float(q[1])]
