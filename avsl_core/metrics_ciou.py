"""Consensus IoU and its aggregates: per-item cIoU from binary predictions, cIoU@0.5, AUC, iIoU.

Per sample, ``cIoU = Σ(infer·gt) / (Σgt + Σ(infer·[gt == 0]))``; the tables' "cIoU" is the fraction of
samples with cIoU ≥ 0.5 and AUC is the trapezoid area of "fraction ≥ t" over t = 0, 0.05, …, 1 (the
peers' ``sklearn.metrics.auc``). Empty ground truth (two VGG-SS items) is kept, as the peers keep it:
its cIoU is 0 whenever the prediction is non-empty, and 0/0 = NaN (never ≥ t, so a failure at every
threshold) when the prediction is empty too. Counting is exact: popcounts of (bit-packed) boolean masks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from avsl_core.metrics_maps import adaptive_binarize, as_rows, binarize, popcount_rows, prepare
from avsl_core.metrics_protocol import AUC_THRESHOLDS, Protocol


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


def adaptive_ciou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """cIoU of :func:`adaptive_binarize` against a GT map. [B] float64."""
    return ciou_from_binary(adaptive_binarize(pred, popcount_rows(as_rows(gt) != 0)), gt)


def popcount_packed(pb: np.ndarray) -> np.ndarray:
    """Set bits per row of packed rows pb uint8 [B, nb]: int64 [B] (8 bytes at a time when nb allows)."""
    if pb.shape[1] % 8 == 0 and pb.flags.c_contiguous:
        pb = pb.view(np.uint64)
    return np.bitwise_count(pb).sum(1, dtype=np.int64)


def ciou_from_packed(infer: np.ndarray, g1: np.ndarray, g2: np.ndarray | None = None) -> torch.Tensor:
    """:func:`ciou_from_levels` on bit-packed rows (uint8 [B, nb], np.packbits order): prediction,
    g1 = gt > 0 and g2 = gt == 1 (None: a binary GT). [B] float64, NaN for 0/0."""
    pc = popcount_packed
    on1, n1 = pc(infer & g1), pc(g1)
    on2, n2 = (on1, n1) if g2 is None else (pc(infer & g2), pc(g2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.from_numpy(0.5 * (on1 + on2) / (0.5 * (n1 + n2) + (pc(infer) - on1)))


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
