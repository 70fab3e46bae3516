"""Ground-truth maps: VGG-SS box unions, Flickr annotator consensus, masks, as the peers paint them.

Boxes are normalised (x1, y1, x2, y2); the peers' ``int(clip(v, 0, 1) * 224)`` gives the painted pixel
slice ``[y1:y2, x1:x2]`` (exclusive ends). VGG-SS takes the union (binary), Flickr Σ boxes / 2 clipped at 1
(notes/peer_codebases.md §4.1). :func:`gt_union_packed` builds the union straight in the bit-packed layout
of :mod:`avsl_core.metrics_fast`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avsl_core.metrics_protocol import EVAL_SIZE


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
    :func:`~avsl_core.metrics_fast.binarize_packed`: uint8 [B, size·size/8] (size a multiple of 8). Each box
    ORs its packed column mask into its rows: one slice per box, 1/8 of the bytes of painting (a Python loop
    over boxes measured ~5× faster than fancy-indexed writes of every painted row)."""
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
