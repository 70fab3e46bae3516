"""The unified evaluator: score anyone's localization maps (or our models) under any peer protocol.

Command line (``python -m avsl_core.evaluate``)::

    python -m avsl_core.evaluate --heatmaps maps.npz --manifest test.jsonl --protocol ezvsl \\
        --out results.json [--embeddings emb.npz] [--objectness obj.npz] [--root DATA_ROOT] [--floors]
    python -m avsl_core.evaluate --checkpoint runs/x/last.pt --manifest test.jsonl [--protocol P] \\
        [--out results.json] [--objectness-checkpoint other.pt] [--floors] [--records records.npz]

``maps.npz`` holds ``ids`` (strings) and ``maps`` (float [N, h, w], any h, w); ``emb.npz`` holds ``ids``,
``audio`` [N, D] and ``image`` [N, D]; ``obj.npz`` (for OGL rows) ``ids`` and ``maps``. The manifest is
the project's JSONL schema (:mod:`avsl_core.data.manifest`). Every family of metrics that the manifest
supports is computed: localization (cIoU@0.5, AUC, mean cIoU, adaptive cIoU, iIoU), extended sets (AP,
max-F1, LocAcc) when it has negatives, AVSBench pixel metrics when it has masks, pointing, sound-swap
and object discrimination where groups / object lists exist, retrieval with ``--embeddings``, each with a
seeded bootstrap interval. All values are fractions in [0, 1].

A checkpoint (ours or a baseline, ``baselines.load_method_checkpoint``) is run over the manifest's
``TestDataset`` at its training image size and audio front-end; the results add the checkpoint's hash,
method, step, training config and commit. ``--floors`` adds audio-blind floors on the same items (centre
prior, seeded random maps, and with a checkpoint the model's visual objectness) under ``floors``.

In Python, :func:`evaluate_maps` does the same on arrays, :func:`evaluate_checkpoint` on a checkpoint,
and :func:`evaluate_model` runs any model with ``localization_map(images, specs) -> [B, h, w]`` and
``embed(images, specs) -> (img [B, D], aud [B, D])``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avsl_core import metrics as M
from avsl_core import metrics_extended as X
from avsl_core.errors import DataError

SCHEMA = "avsl_core.evaluate/v1"


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = "ezvsl"          # a key of metrics.PROTOCOLS
    gt: str = "auto"                 # auto | boxes | consensus | mask (auto: Flickr consensus when boxes
    #                                  carry annotators, else union of boxes, else mask)
    score_mode: str = "relative"     # relative: the protocol's min-max + median; absolute: SLAVC (cos+1)/2 >= 0.5
    tau: float | None = None         # maps are cos/τ (EZ-VSL/SLAVC logits): absolute score uses τ
    ogl_mode: str | None = None      # relative (EZ-VSL/official, α 0.4) | absolute (SLAVC, α 0.9); None: by protocol
    ogl_alpha: float | None = None   # None: 0.4 relative, 0.9 absolute
    pixel_threshold: str = "median"  # mIoU cut on the normalised map: "median" (ACL) or a number (official 0.5)
    frames_per_batch: int = 20       # AVSBench official per-batch forms (4 videos × 5 frames)
    n_bootstrap: int = 1000
    seed: int = 0
    chunk: int = 32                  # maps per vectorised step (small chunks stay in cache)
    allow_missing: bool = False      # manifest items without a map are skipped (counted) instead of an error
    include_kinds: tuple[str, ...] | None = None  # keep only items whose extra["kind"] is listed
    per_item: bool = False           # add per-item arrays to the results


# ----------------------------------------------------------------------------- inputs
def load_npz_maps(path, key: str = "maps") -> tuple[list[str], np.ndarray]:
    """``ids`` + ``maps`` [N, h, w] from an .npz; DataError naming the file for every problem."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "ids" not in z or key not in z:
                raise DataError(path, f"expected arrays 'ids' and '{key}', found {sorted(z.files)}")
            ids, maps = z["ids"], z[key]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"not a readable .npz of plain arrays ({e})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DataError(path, f"'ids' must be a 1-D string array, got {ids.dtype} {ids.shape}", field="ids")
    if maps.ndim != 3:
        raise DataError(path, f"'{key}' must be [N, h, w], got shape {maps.shape}", field=key)
    if maps.dtype.kind not in "fiu" or maps.shape[1] < 1 or maps.shape[2] < 1:
        raise DataError(path, f"'{key}' must be a non-empty numeric array, got {maps.dtype}", field=key)
    if len(ids) != len(maps):
        raise DataError(path, f"{len(ids)} ids for {len(maps)} maps", field="ids")
    ids = [str(i) for i in ids]
    _check_unique(ids, path)
    bad = ~np.isfinite(maps.reshape(len(maps), -1)).all(1) if maps.dtype.kind == "f" else np.zeros(0, bool)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(path, f"{int(bad.sum())} maps have NaN/inf values (first: id {ids[i]!r})",
                        row=i, field=key)
    return ids, maps.astype(np.float32, copy=False)


def load_npz_embeddings(path) -> tuple[list[str], np.ndarray, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("ids", "audio", "image") if k not in z]
            if missing:
                raise DataError(path, f"missing arrays {missing}; found {sorted(z.files)}")
            ids, aud, img = z["ids"], z["audio"], z["image"]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"not a readable .npz of plain arrays ({e})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DataError(path, "'ids' must be a 1-D string array", field="ids")
    for name, a in (("audio", aud), ("image", img)):
        if a.ndim != 2 or a.shape[0] != len(ids) or a.dtype.kind not in "fiu":
            raise DataError(path, f"'{name}' must be numeric [N={len(ids)}, D], got {a.dtype} {a.shape}",
                            field=name)
        if not np.isfinite(a).all():
            raise DataError(path, "NaN/inf values", field=name)
    if aud.shape[1] != img.shape[1]:
        raise DataError(path, f"audio dim {aud.shape[1]} != image dim {img.shape[1]}")
    ids = [str(i) for i in ids]
    _check_unique(ids, path)
    return ids, aud.astype(np.float32), img.astype(np.float32)


def _check_unique(ids, path):
    dup = [k for k, v in collections.Counter(ids).items() if v > 1]
    if dup:
        raise DataError(path, f"duplicate ids, e.g. {dup[:3]}", field="ids")


def _match(items, ids, path, allow_missing, what="map"):
    """Row of each manifest item in ``ids`` (None if absent and allowed); extra ids are an error."""
    index = {k: i for i, k in enumerate(ids)}
    known = {it.id for it in items}
    extra = [k for k in ids if k not in known]
    if extra:
        raise DataError(path, f"{len(extra)} ids are not in the manifest, e.g. {extra[:3]}", field="ids")
    rows = [index.get(it.id) for it in items]
    missing = [it.id for it, r in zip(items, rows) if r is None]
    if missing and not allow_missing:
        raise DataError(path, f"no {what} for {len(missing)} manifest items, e.g. {missing[:3]} "
                              f"(use --allow-missing to skip them)", field="ids")
    return rows


def _load_mask(root, rel) -> np.ndarray:
    from PIL import Image
    from avsl_core.data.manifest import resolve
    p = resolve(root, rel)
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("L")) > 0
    except OSError as e:
        raise DataError(p, f"unreadable mask ({e})") from None


def _gt_kind(item, how: str) -> str | None:
    """How the item's GT map is built: union / consensus of boxes, mask, zeros (negatives and annotated
    items whose boxes were all dropped as degenerate, ``extra.dropped_boxes``: the two empty VGG-SS
    maps, which the peers keep and score 0), or None (no annotation: skipped)."""
    if item.negative:
        return "zeros"
    if how not in ("auto", "boxes", "consensus", "mask"):
        raise ValueError(f"unknown gt kind {how!r}")
    if how in ("auto", "mask") and item.mask and (how == "mask" or not item.boxes):
        return "mask"
    if item.boxes and how != "mask":
        return "consensus" if how == "consensus" or (how == "auto" and item.box_annotators is not None) \
            else "union"
    if not item.boxes and item.extra.get("dropped_boxes", 0) and how != "mask":
        return "zeros"
    return None


def _other_boxes(item) -> list:
    """Boxes of the image's other objects (AVScenes ``extra.objects`` minus ``extra.sounding``)."""
    objs, snd = item.extra.get("objects"), item.extra.get("sounding")
    if not isinstance(objs, list) or not isinstance(snd, int) or isinstance(snd, bool):
        return []
    return [tuple(o["box"]) for j, o in enumerate(objs) if j != snd and isinstance(o, dict) and "box" in o]


# ----------------------------------------------------------------------------- scoring
def score_items(items, maps: np.ndarray, cfg: EvalConfig, obj_maps: np.ndarray | None = None,
                root=None) -> dict:
    """Per-item scores for ``items`` (all scorable: a GT kind each) and their maps [N, h, w] (aligned)."""
    proto = M.get_protocol(cfg.protocol)
    ogl_mode = cfg.ogl_mode or ("absolute" if proto.name == "slavc" else "relative")
    alpha = cfg.ogl_alpha if cfg.ogl_alpha is not None else (0.9 if ogl_mode == "absolute" else 0.4)
    N, S = len(items), proto.size
    out = {k: np.full(N, np.nan) for k in ("ciou", "ciou_adaptive", "confidence", "pointing",
                                           "discrimination", "pixel_iou")}
    out["peak"] = np.zeros(N, np.int64)
    out["gt_area"] = np.zeros(N, np.int64)
    curves = np.zeros((N, X.F_NUM_THRESHOLDS))
    curve_valid = np.zeros(N, bool)
    if obj_maps is not None:
        out.update({k: np.full(N, np.nan) for k in ("ogl_ciou", "ogl_confidence", "ogl_pointing")})
    kinds = [_gt_kind(it, cfg.gt) for it in items]
    for s in range(0, N, cfg.chunk):
        sl = slice(s, min(s + cfg.chunk, N))
        its, ks = items[sl], kinds[sl]
        U = M.upsample(torch.from_numpy(np.ascontiguousarray(maps[sl])), proto.upsample, S)  # [B, S, S]
        absolute = M.absolute_av_score(U, cfg.tau)  # SLAVC absolute score, for confidence
        P = M.normalise(absolute.clone() if proto.score_first else U, proto.normalise, inplace=True)
        # ground truth as two masks: g1 = gt > 0, g2 = gt == 1 (differ only for Flickr consensus)
        boxes, valid = M.pad_boxes([it.boxes if k in ("union", "consensus") else () for it, k in zip(its, ks)])
        counts = M.box_counts(boxes, valid, S)
        g1 = counts >= 1
        g2 = g1.copy()
        cons = [i for i, k in enumerate(ks) if k == "consensus"]
        g2[cons] = counts[cons] >= 2
        mask_idx = [i for i, it in enumerate(its) if it.mask and not it.negative and root is not None]
        masks = (np.concatenate([M.gt_from_masks(_load_mask(root, its[i].mask)[None], S).numpy() > 0
                                 for i in mask_idx]) if mask_idx else None)  # native sizes may differ
        for j, i in enumerate(mask_idx):
            if ks[i] == "mask":
                g1[i] = g2[i] = masks[j]
        infer = M.binarize(P, proto) if cfg.score_mode == "relative" else torch.from_numpy(absolute.numpy() >= 0.5)
        out["ciou"][sl] = M.ciou_from_levels(infer, g1, g2).numpy()
        n_gt = M.popcount_rows(g1.reshape(len(its), -1))
        out["gt_area"][sl] = n_gt
        out["ciou_adaptive"][sl] = M.ciou_from_levels(M.adaptive_binarize(P, n_gt), g1, g2).numpy()
        out["confidence"][sl] = X.topquarter_confidence(absolute).numpy()
        out["pointing"][sl] = X.pointing_hits(P, g1).double().numpy()
        out["peak"][sl] = X.peak_index(P).numpy()
        others = [_other_boxes(it) for it in its]
        if any(others):
            ob, ov = M.pad_boxes(others)
            tb, tv = M.pad_boxes([it.boxes for it in its])
            out["discrimination"][sl] = X.object_discrimination(P, tb, tv, ob, ov).numpy()
        if masks is not None:
            Pm = P[mask_idx]
            t = M.median_threshold(Pm) if cfg.pixel_threshold == "median" else float(cfg.pixel_threshold)
            rows = np.arange(s, s + len(its))[mask_idx]
            out["pixel_iou"][rows] = X.mask_iou(Pm, masks, t).numpy()
            c, v = X.fscore_curves(Pm, masks)
            curves[rows], curve_valid[rows] = c.numpy(), v.numpy()
        if obj_maps is not None:
            Uo = M.upsample(torch.from_numpy(np.ascontiguousarray(obj_maps[sl])), proto.upsample, S)
            if ogl_mode == "relative":
                o_score = M.ogl_relative(P, M.normalise(Uo, proto.normalise, inplace=True), alpha)
                o_inf = M.binarize(o_score, proto)
            else:
                o_score = M.ogl_absolute(absolute, Uo, alpha)
                o_inf = (M.binarize(M.minmax(o_score), proto) if cfg.score_mode == "relative"
                         else torch.from_numpy(o_score.numpy() >= 0.5))
            out["ogl_ciou"][sl] = M.ciou_from_levels(o_inf, g1, g2).numpy()
            out["ogl_confidence"][sl] = X.topquarter_confidence(o_score).numpy()
            out["ogl_pointing"][sl] = X.pointing_hits(o_score, g1).double().numpy()
    out["curves"], out["curve_valid"] = curves, curve_valid
    out["ogl"] = {"mode": ogl_mode, "alpha": alpha} if obj_maps is not None else None
    return out


# ----------------------------------------------------------------------------- summaries
class _Acc:
    """Collects metrics and their bootstrap intervals under the same nested keys."""

    def __init__(self, cfg):
        self.cfg, self.metrics, self.intervals = cfg, {}, {}

    def put(self, family, name, value, stat=None, n=0):
        self.metrics.setdefault(family, {})[name] = value
        if stat is not None and value is not None:
            self.intervals.setdefault(family, {})[name] = X.bootstrap_ci(
                stat, n, self.cfg.n_bootstrap, self.cfg.seed)

    def mean(self, family, name, values):
        v = np.asarray(values, np.float64)
        self.put(family, name, float(np.nan_to_num(v).mean()) if v.size else None, X.mean_stat(v), v.size)


def _localization(acc, fam, ciou, groups, adaptive=None):
    acc.metrics[fam] = {"n": int(ciou.size), "n_nan_ciou": int(np.isnan(ciou).sum())}
    for pre, c in (("", ciou), ("adaptive_", adaptive)):
        if c is None:
            continue
        s = M.summarize_ciou(c)
        acc.put(fam, pre + "ciou@0.5", s["ciou@0.5"], X.mean_stat(c >= 0.5), c.size)
        acc.put(fam, pre + "auc", s["auc"], X.mean_stat(M.per_item_auc(c).numpy()), c.size)
        acc.put(fam, pre + "mean_ciou", s["mean_ciou"], X.mean_stat(c), c.size)
        gm = M.group_min_indicator(c, M.group_codes(groups)).numpy()  # [G, 21]
        if gm.shape[0] and gm.shape[0] < c.size:  # iIoU only where some group has several members
            acc.put(fam, pre + "iiou", float(gm[:, 10].mean()), X.mean_stat(gm[:, 10]), gm.shape[0])
            tw = M.trapezoid_weights().numpy()
            acc.put(fam, pre + "iauc", float((gm @ tw).mean()), X.mean_stat(gm @ tw), gm.shape[0])


def _extended(acc, fam, ciou, conf, positive):
    r = X.extended_ap_f1(conf, ciou, positive)
    stat = lambda key: (lambda w: X.extended_ap_f1(conf, ciou, positive, weights=w)[key])  # noqa: E731
    acc.metrics[fam] = {"n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}
    acc.put(fam, "ap", r["ap"], stat("ap"), conf.size)
    acc.put(fam, "max_f1", r["max_f1"], stat("max_f1"), conf.size)
    acc.mean(fam, "loc_acc", ciou[positive] > 0.5)


def summarize(items, sc: dict, cfg: EvalConfig, embeddings=None) -> tuple[dict, dict, dict, dict]:
    """Per-item scores → (metrics, intervals, per_category, by_kind)."""
    acc = _Acc(cfg)
    neg = np.array([it.negative for it in items], bool)
    pos = ~neg
    groups = [it.group for it in items]
    pos_groups = [g for g, p in zip(groups, pos) if p]
    _localization(acc, "localization", sc["ciou"][pos], pos_groups, sc["ciou_adaptive"][pos])
    acc.metrics["localization"]["n_empty_gt"] = int((sc["gt_area"][pos] == 0).sum())
    acc.mean("pointing", "accuracy", sc["pointing"][pos])
    d = sc["discrimination"][pos]
    if (~np.isnan(d)).any():
        acc.mean("object_discrimination", "accuracy", d[~np.isnan(d)])
        acc.metrics["object_discrimination"]["n"] = int((~np.isnan(d)).sum())
    if neg.any() and pos.any():
        _extended(acc, "extended", sc["ciou"], sc["confidence"], pos)
        acc.put("extended", "auc_positives", M.auc(sc["ciou"][pos]))
    # sound swap: positives of groups with >= 2 positive members
    counts = collections.Counter(g for g, p in zip(groups, pos) if p and g is not None)
    sw = np.array([p and g is not None and counts[g] >= 2 for g, p in zip(groups, pos)], bool)
    if sw.any():
        codes = M.group_codes([g for g, s in zip(groups, sw) if s])
        boxes, valid = M.pad_boxes([it.boxes for it, s in zip(items, sw) if s])
        pairs = X.swap_pair_success(codes, torch.from_numpy(sc["pointing"][sw] > 0),
                                    torch.from_numpy(sc["peak"][sw]), boxes, valid).numpy()
        acc.mean("swap", "query_accuracy", sc["pointing"][sw])
        acc.mean("swap", "pair_accuracy", pairs)
        acc.metrics["swap"].update(n_queries=int(sw.sum()), n_pairs=int(pairs.size),
                                   n_images=int(codes.max()) + 1)
    pix = ~np.isnan(sc["pixel_iou"])
    if pix.any():
        iou, cur, val = (torch.from_numpy(sc["pixel_iou"][pix]), torch.from_numpy(sc["curves"][pix]),
                         torch.from_numpy(sc["curve_valid"][pix]))
        acc.metrics["pixel"] = X.avsbench_summary(iou, cur, val, cfg.frames_per_batch)
        acc.metrics["pixel"]["threshold"] = cfg.pixel_threshold
        acc.mean("pixel", "miou_dataset", iou.numpy())
        vv = val.double()
        acc.put("pixel", "fscore_dataset", acc.metrics["pixel"]["fscore_dataset"],
                lambda w: ((w * vv) @ cur / (w @ vv)[:, None]).max(1).values, int(pix.sum()))
    if "ogl_ciou" in sc:
        _localization(acc, "ogl_localization", sc["ogl_ciou"][pos], pos_groups)
        acc.metrics["ogl_localization"].update(sc["ogl"])
        acc.mean("ogl_pointing", "accuracy", sc["ogl_pointing"][pos])
        if neg.any() and pos.any():
            _extended(acc, "ogl_extended", sc["ogl_ciou"], sc["ogl_confidence"], pos)
    if embeddings is not None:
        _retrieval(acc, [it for it, p in zip(items, pos) if p], *embeddings)
    per_cat, by_kind = {}, {}
    cats = np.array([it.category or "" for it in items])
    for c in sorted(set(cats[pos]) - {""}):
        m = pos & (cats == c)
        per_cat[c] = dict(n=int(m.sum()), **M.summarize_ciou(sc["ciou"][m]),
                          pointing=float(np.nan_to_num(sc["pointing"][m]).mean()))
    kinds = np.array([str(it.extra.get("kind", "")) for it in items])
    for k in sorted(set(kinds[pos]) - {""}):
        m = pos & (kinds == k)
        by_kind[k] = dict(n=int(m.sum()), **M.summarize_ciou(sc["ciou"][m]),
                          pointing=float(np.nan_to_num(sc["pointing"][m]).mean()))
    return acc.metrics, acc.intervals, per_cat, by_kind


def _retrieval(acc, items, emb_ids, aud, img):
    index = {k: i for i, k in enumerate(emb_ids)}
    rows = [index[it.id] for it in items if it.id in index]
    its = [it for it in items if it.id in index]
    if len(rows) < 2:
        return
    a, v = torch.from_numpy(aud[rows]), torch.from_numpy(img[rows])
    labels = [it.category for it in its]
    lab = labels if all(lab is not None for lab in labels) else None
    for name, q, g in (("audio_to_image", a, v), ("image_to_audio", v, a)):
        r = X.retrieval_hits(q, g, (1, 5, 10), lab, lab)
        fam = f"retrieval_{name}"
        for k, hits in r["instance"].items():
            acc.mean(fam, f"instance_{k}", hits.double().numpy())
        if r["category"] is not None:
            for k, hits in r["category"].items():
                acc.mean(fam, f"category_{k}", hits.double().numpy())
        acc.metrics[fam].update(n=len(rows), median_rank=float(r["rank"].double().median() + 1))


# ----------------------------------------------------------------------------- entry points
def _clean(obj):
    """JSON-safe: NaN/inf → None, numpy scalars → python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def evaluate_maps(items, map_ids, maps, cfg: EvalConfig = EvalConfig(), *, obj_ids=None, obj_maps=None,
                  embeddings=None, root=None, sources: dict | None = None, return_scores: bool = False):
    """Score ``maps`` [N, h, w] (rows named by ``map_ids``) against manifest ``items``.

    ``obj_maps`` (rows named by ``obj_ids``) adds OGL rows; ``embeddings`` = (ids, audio, image) adds
    retrieval; ``root`` (the data root) is needed for masks. ``sources`` names the input files in
    errors. Returns the results dict (and the per-item scores with ``return_scores``).
    """
    proto = M.get_protocol(cfg.protocol)
    sources = sources or {}
    if cfg.score_mode not in ("relative", "absolute"):
        raise ValueError(f"score_mode must be relative or absolute, got {cfg.score_mode!r}")
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    manifest_ids = {it.id for it in items}
    if cfg.include_kinds is not None:
        keep = set(cfg.include_kinds)
        for it in items:
            if str(it.extra.get("kind")) not in keep:
                skipped["excluded kind"].append(it.id)
        items = [it for it in items if str(it.extra.get("kind")) in keep]
    rows = _match(items, list(map_ids), sources.get("heatmaps", "maps"), cfg.allow_missing)
    orows = (_match(items, list(obj_ids), sources.get("objectness", "objectness"), cfg.allow_missing,
                    "objectness map") if obj_maps is not None else None)
    use = []
    for i, it in enumerate(items):
        kind = _gt_kind(it, cfg.gt)
        if rows[i] is None or (orows is not None and orows[i] is None):
            skipped["no map"].append(it.id)
        elif kind is None:
            skipped["no ground truth (no boxes or mask)"].append(it.id)
        elif kind == "mask" and root is None:
            skipped["mask ground truth needs a data root"].append(it.id)
        else:
            use.append(i)
    sel = [items[i] for i in use]
    sc = score_items(sel, np.asarray(maps)[[rows[i] for i in use]], cfg,
                     None if obj_maps is None else np.asarray(obj_maps)[[orows[i] for i in use]], root)
    if embeddings is not None:  # items without an embedding are left out of retrieval (n is reported)
        extra = set(embeddings[0]) - manifest_ids
        if extra:
            raise DataError(sources.get("embeddings", "embeddings"),
                            f"{len(extra)} ids are not in the manifest, e.g. {sorted(extra)[:3]}", field="ids")
    metrics, intervals, per_cat, by_kind = summarize(sel, sc, cfg, embeddings)
    res = {"schema": SCHEMA, "protocol": dataclasses.asdict(proto), "config": dataclasses.asdict(cfg),
           "seed": cfg.seed, "n_items": len(items) + len(skipped.get("excluded kind", [])),
           "n_scored": len(sel), "n_negative": int(sum(it.negative for it in sel)),
           "skipped": {"count": sum(map(len, skipped.values())),
                       "reasons": {k: len(v) for k, v in skipped.items()},
                       "examples": {k: v[:5] for k, v in skipped.items()}},
           "metrics": metrics,
           "intervals": intervals,
           "bootstrap": {"n_resamples": cfg.n_bootstrap, "seed": cfg.seed, "level": 0.95,
                         "method": "percentile; test items resampled with replacement (groups for "
                                   "iIoU, queries for retrieval, pairs for swap pairs)"},
           "per_category": per_cat, "by_kind": by_kind}
    if cfg.per_item:
        res["per_item"] = {"ids": [it.id for it in sel],
                           **{k: sc[k].tolist() for k in ("ciou", "ciou_adaptive", "confidence",
                                                          "pointing", "discrimination", "pixel_iou")}}
    res = _clean(res)
    return (res, {"ids": [it.id for it in sel], **sc}) if return_scores else res


def _provenance(res: dict, inputs: dict) -> dict:
    from avsl_core.provenance import environment, file_sha256, git_commit
    res["git_commit"] = git_commit()
    res["inputs"] = {k: {"path": str(v), "sha256": file_sha256(v)} for k, v in inputs.items() if v}
    res["environment"] = environment()
    return res


def write_results(path, res: dict) -> None:
    """Atomic JSON write (temp file beside ``path`` + os.replace)."""
    import json
    from avsl_core.provenance import atomic_write_text
    atomic_write_text(path, json.dumps(_clean(res), indent=1, sort_keys=True, allow_nan=False) + "\n")


def score_floors(items, ids, shape, cfg: EvalConfig, *, root=None, objectness_maps=None) -> dict:
    """Audio-blind floors on the same items, scored like any maps: a centre prior, seeded random maps
    (``cfg.seed``) and, when given, a model's visual objectness [N, h, w] (its map with the audio
    removed). ``shape`` = (h, w) of the native maps. {name: {metrics, intervals, n_scored}}."""
    n, (h, w) = len(ids), shape
    floors = {"centre_prior": X.centre_prior_maps(n, h, w).numpy(),
              "random": X.random_maps(n, h, w, seed=cfg.seed).numpy()}
    if objectness_maps is not None:
        floors["visual_objectness"] = np.asarray(objectness_maps, np.float32)
    out = {}
    fcfg = dataclasses.replace(cfg, per_item=False)
    for name, maps in floors.items():
        r = evaluate_maps(items, ids, maps, fcfg, root=root, sources={"heatmaps": f"floor {name}"})
        out[name] = {k: r[k] for k in ("metrics", "intervals", "n_scored")}
    return out


@torch.no_grad()
def evaluate_model(model, loader, items, cfg: EvalConfig = EvalConfig(), *, objectness=None, root=None,
                   device="cpu", out=None, checkpoint=None, floors: bool = False):
    """Run ``model`` over ``loader`` (dicts with "image" [B,3,S,S], "spec" [B,1,F,T], "id" list[str])
    and score it like external maps. ``objectness(images) -> [B, h, w]`` adds OGL rows; ``floors``
    adds :func:`score_floors` under ``results["floors"]`` (with the model's ``visual_objectness`` when
    it has one). ``checkpoint``: a path, hashed into the results, or a dict from
    :func:`checkpoint_info` (path, hash, method, training step, config and commit).

    Returns (results, records): records hold per item the id, map at native resolution, confidence,
    image/audio embeddings and category.
    """
    if torch.device(device).type == "cpu":
        torch.set_flush_denormal(True)   # denormal activations make x86 convolutions 2-10x slower
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    ids, maps, img_e, aud_e, objs, vis = [], [], [], [], [], []
    own_obj = floors and hasattr(model, "visual_objectness")
    try:
        for batch in loader:
            im, sp = batch["image"].to(device), batch["spec"].to(device)
            m = model.localization_map(im, sp)
            maps.append((m[:, 0] if m.ndim == 4 else m).float().cpu().numpy())
            ie, ae = model.embed(im, sp)
            img_e.append(ie.float().cpu().numpy())
            aud_e.append(ae.float().cpu().numpy())
            if objectness is not None:
                o = objectness(im)
                objs.append((o[:, 0] if o.ndim == 4 else o).float().cpu().numpy())
            if own_obj:
                o = model.visual_objectness(im)
                vis.append((o[:, 0] if o.ndim == 4 else o).float().cpu().numpy())
            ids.extend(str(i) for i in batch["id"])
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    maps = np.concatenate(maps)
    img_e, aud_e = np.concatenate(img_e), np.concatenate(aud_e)
    _check_unique(ids, "loader")
    if not np.isfinite(maps).all():
        raise DataError("model output", "NaN/inf in localization maps")
    res, sc = evaluate_maps(items, ids, maps, cfg,
                            obj_ids=ids if objs else None, obj_maps=np.concatenate(objs) if objs else None,
                            embeddings=(ids, aud_e, img_e), root=root, sources={"heatmaps": "loader"},
                            return_scores=True)
    if floors:
        res["floors"] = _clean(score_floors(items, ids, maps.shape[1:], cfg, root=root,
                                            objectness_maps=np.concatenate(vis) if vis else None))
    by_id = {it.id: it for it in items}
    conf = dict(zip(sc["ids"], sc["confidence"]))
    records = {"ids": ids, "maps": maps, "image_emb": img_e, "audio_emb": aud_e,
               "category": [by_id[i].category if i in by_id else None for i in ids],
               "confidence": np.array([conf.get(i, np.nan) for i in ids])}
    res = _provenance(res, {})
    if checkpoint is not None:
        if isinstance(checkpoint, dict):
            res["checkpoint"] = checkpoint
        else:
            try:
                res["checkpoint"] = checkpoint_info(checkpoint)
            except DataError:  # not a trainer checkpoint: its hash only
                res["checkpoint"] = {"path": str(checkpoint), "sha256": _sha(checkpoint)}
    if out is not None:
        write_results(out, res)
    return res, records


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_info(path) -> dict:
    """Provenance of a trainer checkpoint (avsl_core.train): path, sha256, method, training step,
    stop reason, the commit it was trained at and its full TrainConfig (a dict)."""
    from avsl_core.provenance import file_sha256
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - unpickling refused, truncated, not a torch file
        raise DataError(path, f"not a loadable checkpoint (torch.load weights_only=True): {e}") from None
    cfg = ck.get("config") if isinstance(ck, dict) else None
    if not isinstance(cfg, dict):
        raise DataError(path, "expected a trainer checkpoint with a 'config' dict", field="config")
    return {"path": str(path), "sha256": file_sha256(path), "method": cfg.get("method", "ours"),
            "step": ck.get("step"), "stop_reason": ck.get("stop_reason"), "train_git_commit": ck.get("git_commit"),
            "train_config": cfg}


def make_test_loader(manifest, train_config: dict, root=None, batch_size: int = 32, num_workers: int = 0):
    """The test DataLoader a checkpoint expects: ``TestDataset`` at the training run's image size and
    audio front-end (``config["data"]``; its ``options`` audio_seconds / logmel_kwargs carry over).
    Returns (loader, items)."""
    from torch.utils.data import DataLoader

    from avsl_core.data.datasets import TestDataset, collate
    data = train_config.get("data") or {}
    opts = {k: v for k, v in (data.get("options") or {}).items() if k in ("audio_seconds", "logmel_kwargs")}
    ds = TestDataset(manifest, root, image_size=int(data.get("image_size", 96)),
                     frontend=str(data.get("frontend", "logmel")), **opts)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    return loader, ds.items


def _objectness_fn(path, image_size: int, device):
    """``images -> [B, h, w]``: the visual objectness of another checkpoint (OGL), at its own input size."""
    from avsl_core.baselines import load_method_checkpoint
    net = load_method_checkpoint(path, map_location=device)
    size = int(((checkpoint_info(path)["train_config"].get("data") or {}).get("image_size", image_size)))

    def fn(images):
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True)
        return net.visual_objectness(images)
    return fn


def evaluate_checkpoint(checkpoint, manifest, cfg: EvalConfig = EvalConfig(), *, root=None, out=None,
                        objectness_checkpoint=None, floors: bool = False, batch_size: int = 32,
                        device: str = "cpu", num_workers: int = 0):
    """A trained method (any avsl_core.train checkpoint: ours or a baseline, through
    ``baselines.load_method_checkpoint``) on a manifest: per-item records and the results dict (metrics,
    intervals, eval config, seed, checkpoint hash and provenance, git commit; floors on request)."""
    from avsl_core.baselines import load_method_checkpoint
    info = checkpoint_info(checkpoint)
    model = load_method_checkpoint(checkpoint, map_location=device)
    loader, items = make_test_loader(manifest, info["train_config"], root, batch_size, num_workers)
    size = int((info["train_config"].get("data") or {}).get("image_size", 96))
    obj = _objectness_fn(objectness_checkpoint, size, device) if objectness_checkpoint else None
    res, records = evaluate_model(model, loader, items, cfg, objectness=obj, root=loader.dataset.root,
                                  device=device, checkpoint=info, floors=floors)
    res["inputs"] = {k: {"path": str(v), "sha256": _sha(v)} for k, v in
                     (("manifest", manifest), ("objectness_checkpoint", objectness_checkpoint)) if v}
    if out is not None:
        write_results(out, res)
    return res, records


def _sha(path):
    from avsl_core.provenance import file_sha256
    return file_sha256(path)


def save_records(path, records: dict) -> None:
    """Per-item records as an .npz (ids, maps [N, h, w], image_emb, audio_emb, confidence, category),
    written atomically; ``maps`` is the --heatmaps format, so a records file can be re-scored."""
    import os
    import tempfile
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, ids=np.array(records["ids"]), maps=records["maps"], image_emb=records["image_emb"],
                 audio_emb=records["audio_emb"], confidence=records["confidence"],
                 category=np.array([c or "" for c in records["category"]]))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m avsl_core.evaluate", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--heatmaps", help="npz with ids [N] and maps [N, h, w] (anyone's method)")
    src.add_argument("--checkpoint", help="a trainer checkpoint (last.pt) of ours or a baseline")
    ap.add_argument("--manifest", required=True, help="JSONL manifest (avsl_core.data.manifest)")
    ap.add_argument("--out", default="results.json", help="results JSON (written atomically)")
    ap.add_argument("--objectness-checkpoint", default=None,
                    help="with --checkpoint: OGL rows from this checkpoint's visual objectness")
    ap.add_argument("--floors", action="store_true",
                    help="also score audio-blind floors: centre prior, random maps (and, with --checkpoint, "
                         "the model's visual objectness), under 'floors' in the results")
    ap.add_argument("--records", default=None, help="with --checkpoint: per-item records .npz")
    ap.add_argument("--batch-size", type=int, default=32, help="with --checkpoint")
    ap.add_argument("--device", default="cpu", help="with --checkpoint")
    ap.add_argument("--protocol", default="ezvsl", choices=sorted(M.PROTOCOLS) + sorted(M.PROTOCOL_ALIASES))
    ap.add_argument("--root", default=None, help="data root for masks (default: the manifest's folder)")
    ap.add_argument("--embeddings", default=None, help="npz with ids, audio [N, D], image [N, D]")
    ap.add_argument("--objectness", default=None, help="npz with ids and maps: objectness for OGL rows")
    ap.add_argument("--gt", default="auto", choices=["auto", "boxes", "consensus", "mask"])
    ap.add_argument("--score-mode", default="relative", choices=["relative", "absolute"])
    ap.add_argument("--tau", type=float, default=None, help="maps are cos/tau (absolute scores)")
    ap.add_argument("--ogl-mode", default=None, choices=["relative", "absolute"])
    ap.add_argument("--ogl-alpha", type=float, default=None)
    ap.add_argument("--pixel-threshold", default="median")
    ap.add_argument("--frames-per-batch", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples (0: no intervals)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--allow-missing", action="store_true", help="skip manifest items without a map")
    ap.add_argument("--include-kinds", default=None, help="comma list of extra.kind values to keep")
    ap.add_argument("--per-item", action="store_true", help="add per-item scores to the JSON")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from avsl_core.data.manifest import read_manifest
    if a.pixel_threshold != "median":
        try:
            float(a.pixel_threshold)
        except ValueError:
            raise SystemExit(f"--pixel-threshold must be 'median' or a number, got {a.pixel_threshold!r}")
    cfg = EvalConfig(protocol=a.protocol, gt=a.gt, score_mode=a.score_mode, tau=a.tau, ogl_mode=a.ogl_mode,
                     ogl_alpha=a.ogl_alpha, pixel_threshold=a.pixel_threshold,
                     frames_per_batch=a.frames_per_batch, n_bootstrap=a.bootstrap, seed=a.seed,
                     chunk=a.chunk, allow_missing=a.allow_missing,
                     include_kinds=tuple(a.include_kinds.split(",")) if a.include_kinds else None,
                     per_item=a.per_item)
    root = Path(a.root) if a.root else Path(a.manifest).parent
    if a.checkpoint:
        if a.embeddings or a.objectness:
            raise SystemExit("--embeddings / --objectness go with --heatmaps; a checkpoint computes its own "
                             "(use --objectness-checkpoint for OGL rows)")
        res, records = evaluate_checkpoint(a.checkpoint, a.manifest, cfg, root=root, out=a.out,
                                           objectness_checkpoint=a.objectness_checkpoint, floors=a.floors,
                                           batch_size=a.batch_size, device=a.device)
        if a.records:
            save_records(a.records, records)
    else:
        if a.objectness_checkpoint or a.records:
            raise SystemExit("--objectness-checkpoint / --records go with --checkpoint")
        items = read_manifest(a.manifest, root)
        ids, maps = load_npz_maps(a.heatmaps)
        oids, omaps = load_npz_maps(a.objectness) if a.objectness else (None, None)
        emb = load_npz_embeddings(a.embeddings) if a.embeddings else None
        res = evaluate_maps(items, ids, maps, cfg, obj_ids=oids, obj_maps=omaps, embeddings=emb, root=root,
                            sources={"heatmaps": a.heatmaps, "objectness": a.objectness,
                                     "embeddings": a.embeddings})
        if a.floors:
            have = set(ids)
            sel = [it for it in items if it.id in have]
            res["floors"] = _clean(score_floors(sel, ids, maps.shape[1:], cfg, root=root))
        res = _provenance(res, {"heatmaps": a.heatmaps, "manifest": a.manifest, "objectness": a.objectness,
                                "embeddings": a.embeddings})
        write_results(a.out, res)
    loc = res["metrics"].get("localization", {})
    print(f"{a.out}: {res['n_scored']} items scored ({res['skipped']['count']} skipped), protocol "
          f"{cfg.protocol}: cIoU@0.5 {loc.get('ciou@0.5')}, AUC {loc.get('auc')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
