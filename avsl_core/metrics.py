"""Localization metrics of the paper and its peers, vectorised over the batch: the public API.

Tensors in, tensors out (CPU). Every peer codebase computes the same *consensus IoU* (cIoU) but makes
small, silent choices that move the numbers (notes/peer_codebases.md §1.5, §2.5, §3, §4). Each choice
is a field of :class:`Protocol`; ``PROTOCOLS`` names each peer's exact combination:

* upsampling of the native map to 224×224 (cv2 ``INTER_LINEAR`` = half-pixel-centre bilinear, bilinear
  with ``align_corners=True``, bicubic with or without corner alignment);
* normalisation: min-max (``normalize_img``: a constant map is left unchanged), or LVS/SSLalignment's
  ``1 - minmax(-h)`` (equal in exact arithmetic, not always in float32);
* threshold: the value at sorted index ``N//2`` of the normalised map (N = 224·224), compared with
  ``>`` (LVS, SSL-TIE, SSLalignment) or ``>=`` (EZ-VSL, SLAVC, FNAC), or a fixed value (ACL-SSL).

The pieces, one module each (all re-exported here, so ``avsl_core.metrics.X`` is the stable name):

* :mod:`avsl_core.metrics_protocol`: :class:`Protocol`, ``PROTOCOLS``, :func:`get_protocol`.
* :mod:`avsl_core.metrics_maps`: the exact path, i.e. the definition. :func:`upsample` evaluates the kernel
  in float64 and rounds once to float32, so that structural ties (constant maps, flat regions, cv2's
  clamped borders) stay ties and a fast path can be proven equal to it; :func:`normalise`,
  :func:`prepare`, :func:`binarize`; the adaptive threshold; OGL fusion.
* :mod:`avsl_core.metrics_ciou`: per-item cIoU (:func:`ciou_from_levels`, :func:`ciou_from_packed`),
  cIoU@0.5, AUC and the official repository's adaptive cIoU and iIoU (TPAMI extension, notes §2.5).
* :mod:`avsl_core.metrics_gt`: ground-truth maps (VGG-SS box unions, Flickr consensus, masks).
* :mod:`avsl_core.metrics_fast`: :func:`binarize_packed` / :func:`ciou_fast`, the same bits as the exact
  path from float32 matmuls and a median by selection inside a counted value bracket;
  :mod:`avsl_core.metrics_fast_ties` computes exact values only where float32 rounding could move a pixel
  across the threshold.

Pixel-level, retrieval, extended-set, pointing/swap and bootstrap metrics are in
:mod:`avsl_core.metrics_extended`.
"""
from __future__ import annotations

from avsl_core.metrics_ciou import (_as_f64, adaptive_ciou, auc, ciou, ciou_from_binary, ciou_from_levels,
                                    ciou_from_packed, group_codes, group_min_indicator, per_item_auc,
                                    popcount_packed, success_curve, summarize_ciou, summarize_iiou, trapezoid_weights)
from avsl_core.metrics_fast import (_FastOp, _fast_op, binarize_fast, binarize_packed, ciou_fast,
                                    upsample_fast)
from avsl_core.metrics_gt import (box_counts, box_masks, box_pixels, gt_box_consensus, gt_box_union,
                                  gt_from_masks, gt_levels, gt_union_packed, pad_boxes)
from avsl_core.metrics_maps import (_KERNELS, _interpolate, _minmax_rows, _normalise_rows, absolute_av_score,
                                    adaptive_binarize, as_rows, binarize, kth_smallest, median_threshold,
                                    minmax, normalise, ogl_absolute, ogl_relative, popcount_rows, prepare,
                                    upsample, upsample_matrices)
from avsl_core.metrics_protocol import (AUC_THRESHOLDS, EVAL_SIZE, NORMALISERS, PROTOCOL_ALIASES, PROTOCOLS,
                                        UPSAMPLERS, Protocol, get_protocol)

__all__ = [
    "AUC_THRESHOLDS", "EVAL_SIZE", "NORMALISERS", "PROTOCOLS", "PROTOCOL_ALIASES", "UPSAMPLERS", "Protocol",
    "get_protocol",
    "absolute_av_score", "adaptive_binarize", "as_rows", "binarize", "kth_smallest", "median_threshold",
    "minmax", "normalise", "ogl_absolute", "ogl_relative", "popcount_rows", "prepare", "upsample",
    "upsample_matrices",
    "adaptive_ciou", "auc", "ciou", "ciou_from_binary", "ciou_from_levels", "ciou_from_packed", "group_codes",
    "group_min_indicator", "per_item_auc", "popcount_packed", "success_curve", "summarize_ciou", "summarize_iiou",
    "trapezoid_weights",
    "box_counts", "box_masks", "box_pixels", "gt_box_consensus", "gt_box_union", "gt_from_masks", "gt_levels",
    "gt_union_packed", "pad_boxes",
    "binarize_fast", "binarize_packed", "ciou_fast", "upsample_fast",
]
_PRIVATE = (_FastOp, _KERNELS, _as_f64, _fast_op, _interpolate, _minmax_rows, _normalise_rows)  # re-exported too
