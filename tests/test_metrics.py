"""Hand-worked and peer-parity tests for avsl_core.metrics and avsl_core.metrics_extended."""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsl_core import metrics as M
from avsl_core import metrics_extended as X

N224 = 224 * 224


def quadrant_map(tl, tr, bl, br):
    return torch.tensor([[[tl, tr], [bl, br]]], dtype=torch.float32)


NEAREST = M.Protocol("nearest_ge", "nearest", "minmax", strict=False)


# ----------------------------------------------------------------------------- thresholds and ties
def test_median_tie_strict_vs_nonstrict():
    # half the pixels 1, half 0: sorted[N//2] = 1 -> '>=' keeps the ones, '>' keeps nothing
    m = torch.tensor([[[1.0, 0.0]]])  # 1×2 -> nearest -> left half 1
    gt = torch.zeros(1, 224, 224)
    gt[:, :, :112] = 1
    ge = M.ciou(m, gt, NEAREST)
    gt_ = M.ciou(m, gt, replace(NEAREST, strict=True))
    lvs = M.ciou(m, gt, replace(NEAREST, strict=True, lvs_binarize=True))
    assert ge.item() == 1.0 and gt_.item() == 0.0 and lvs.item() == 1.0


def test_quadrants_hand_worked():
    # values TL 3, TR 0, BL 2, BR 1 -> minmax 1, 0, 2/3, 1/3; sorted[25088] = 2/3
    # GT = top half. '>=': TL+BL on -> 12544 / (25088 + 12544) = 1/3 ; '>': TL only -> 0.5
    m = quadrant_map(3, 0, 2, 1)
    gt = torch.zeros(1, 224, 224)
    gt[:, :112] = 1
    assert M.ciou(m, gt, NEAREST).item() == pytest.approx(1 / 3, abs=1e-12)
    assert M.ciou(m, gt, replace(NEAREST, strict=True)).item() == pytest.approx(0.5, abs=1e-12)
    # the peers' threshold is the value at sorted index N//2
    pred = M.prepare(m, NEAREST)
    assert M.median_threshold(pred).item() == pytest.approx(2 / 3, abs=1e-7)


def test_one_minus_minmax_neg_and_constant_map():
    x = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    assert torch.allclose(M.normalise(x, "one_minus_minmax_neg"), M.minmax(x), atol=1e-7)
    c = torch.full((1, 3, 3), 5.0)
    assert torch.equal(M.minmax(c), c)  # normalize_img leaves a constant map unchanged


def test_empty_gt_and_nan():
    gt = torch.zeros(2, 224, 224)
    maps = torch.tensor([[[0.0, 1.0, 2.0]], [[1.0, 1.0, 1.0]]])  # the second is constant
    c = M.ciou(maps, gt, replace(NEAREST, strict=True))
    assert c[0].item() == 0.0  # non-empty prediction: 0 / (0 + n) = 0
    assert torch.isnan(c[1])  # constant map, '>' selects nothing: 0/0
    s = M.summarize_ciou(c)
    assert s["ciou@0.5"] == 0.0 and s["mean_ciou"] == 0.0
    assert s["auc"] == pytest.approx(0.5 * 0.05 / 2)  # y(0) = 1/2: the NaN item fails even at t = 0


def test_auc_hand_worked():
    c = [0.0, 0.5, 1.0]
    # y = 1 at t=0, 2/3 for t in (0, .5], 1/3 for t in (.5, 1]
    expect = (1 + 2 / 3) / 2 * 0.05 + 0.45 * 2 / 3 + (2 / 3 + 1 / 3) / 2 * 0.05 + 0.45 / 3
    assert M.auc(c) == pytest.approx(expect, abs=1e-12)
    assert float(M.per_item_auc(c).mean()) == pytest.approx(expect, abs=1e-12)
    assert M.summarize_ciou(c)["ciou@0.5"] == pytest.approx(2 / 3)
    # the peers' abscissa is 0.05*i: a cIoU of exactly 0.6 is not >= 0.6000000000000001
    assert not M.success_curve([0.6])[0, 12]


def test_adaptive_ciou_and_iiou():
    v = torch.arange(N224, dtype=torch.float32).reshape(1, 224, 224) / (N224 - 1)
    gt = torch.zeros(1, N224)
    gt[0, -100:] = 1
    # g = 100 -> thr = sorted[N - 100] -> '>' keeps 99 pixels, all inside the GT
    assert M.adaptive_ciou(v, gt.reshape(1, 224, 224)).item() == pytest.approx(0.99)
    codes = M.group_codes(["a", "a", "b", "b", None])
    s = M.summarize_iiou([0.6, 0.7, 0.6, 0.3, 0.9], codes)
    assert s["n_groups"] == 3 and s["iiou"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- ground truth
def test_flickr_consensus_hand_worked():
    # A = [0, .5]^2 -> px 0..112 ; B = [.25, .75]^2 -> px 56..168 ; overlap 56x56 -> 1, rest 0.5
    boxes, valid = M.pad_boxes([[(0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)]])
    gt = M.gt_box_consensus(boxes, valid)
    assert set(gt.unique().tolist()) == {0.0, 0.5, 1.0}
    assert gt.sum().item() == 3136 + 0.5 * 2 * 9408
    infer = torch.zeros(1, 224, 224, dtype=torch.bool)
    infer[:, :112, :112] = True
    assert M.ciou_from_binary(infer, gt).item() == pytest.approx(7840 / 12544)
    # Flickr 256-px boxes: int(224 * v / 256) == int(224 * (v / 256)) for every integer v
    v = torch.arange(257, dtype=torch.float64)
    px = M.box_pixels(torch.stack([v / 256] * 4, 1))[:, 0]
    assert px.tolist() == [int(224 * int(x) / 256) for x in range(257)]


def test_vggss_union_clip():
    boxes, valid = M.pad_boxes([[(-0.1, 0.2, 1.3, 0.5), (0.0, 0.0, 0.1, 0.1)], []])
    assert M.box_pixels(boxes)[0, 0].tolist() == [0, 44, 224, 112]
    gt = M.gt_box_union(boxes, valid)
    assert gt[0].max() == 1 and gt[0].sum() == 224 * 68 + 22 * 22  # boxes overlap nowhere
    assert gt[1].sum() == 0


def test_upsampling_matches_cv2_golden():
    # cv2.resize(a, (7, 5), INTER_LINEAR) and a 14x14 -> 224 case, computed with opencv 5.0
    a = torch.tensor([[0.0, 1.0, 4.0], [2.0, -1.0, 3.0]])
    golden = torch.tensor([
        [0.0, 0.14285715, 0.5714286, 1.0, 2.2857144, 3.5714285, 4.0],
        [0.2, 0.2857143, 0.54285717, 0.8, 2.1285715, 3.4571428, 3.9],
        [1.0, 0.8571428, 0.4285714, 0.0, 1.5, 3.0, 3.5],
        [1.8, 1.4285713, 0.31428567, -0.79999995, 0.8714286, 2.5428572, 3.1],
        [2.0, 1.5714285, 0.2857142, -1.0, 0.71428573, 2.4285715, 3.0]])
    out = F.interpolate(a[None, None], size=(5, 7), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(out, golden, atol=1e-6)
    b = torch.from_numpy(np.sin(np.arange(196, dtype=np.float64).reshape(14, 14) * 0.37).astype(np.float32))
    up = M.upsample(b[None], "cv2_linear")[0]
    for i, j, val in [(0, 0, 0.0), (7, 8, 0.011300481855869293), (8, 7, -0.027895240113139153),
                      (100, 37, 0.47854167222976685), (223, 223, 0.1064290776848793),
                      (223, 0, -0.9792150259017944), (15, 16, -0.2607373297214508),
                      (120, 200, 0.15415072441101074)]:
        assert up[i, j].item() == pytest.approx(val, abs=2e-6)
    m = torch.zeros(5, 6)
    m[1:3, 2:5] = 1  # cv2 INTER_NEAREST 6x5 -> 8x7 puts the object at rows 2-4, cols 3-6
    g = F.interpolate(m[None, None], size=(7, 8), mode="nearest")[0, 0]  # the rule gt_from_masks uses
    assert g.nonzero()[:, 0].unique().tolist() == [2, 3, 4] and g.nonzero()[:, 1].unique().tolist() == [3, 4, 5, 6]


# ----------------------------------------------------------------------------- parity with a per-sample reference
def _ref_normalize_img(v):
    vmin, vmax = v.min(), v.max()
    return (v - vmin) / (vmax - vmin) if vmax - vmin != 0 else v


def _ref_gtmap(boxes, fmt):
    gt_map = np.zeros([224, 224])
    for b in boxes:
        xmin, ymin, xmax, ymax = (np.clip(np.array(b), 0, 1) * 224).astype(int)
        temp = np.zeros([224, 224])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    if fmt == "flickr":
        gt_map = gt_map / 2
        gt_map[gt_map > 1] = 1
    else:
        gt_map[gt_map > 0] = 1
    return gt_map


def _ref_ciou(native, boxes, fmt, p: M.Protocol):
    """One sample, written the way the peers' loops are (see the module docstring of metrics.py).
    Upsampling is the same per-sample call (cv2 is not a dependency; its formula is tested above)."""
    u = M.upsample(torch.from_numpy(native)[None], p.upsample)[0].numpy()
    if p.score_first:  # SLAVC: scores_av = min_max_norm(heatmap, -1/tau, 1/tau), tau = 1 for a cosine
        u = (u - -1.0) / (1.0 - -1.0)
    pred = {"minmax": lambda: _ref_normalize_img(u), "one_minus_minmax_neg": lambda: 1 - _ref_normalize_img(-u),
            "none": lambda: u}[p.normalise]()
    thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] / 2)] if p.threshold is None else p.threshold
    infer_map = np.zeros((224, 224))
    if p.lvs_binarize:  # LVS test.py
        pred = pred.copy()
        pred[pred > thr] = 1
        pred[pred < 1] = 0
        infer_map[pred >= 0.5] = 1
    elif p.strict:
        infer_map[pred > thr] = 1
    else:
        infer_map[pred >= thr] = 1
    gt = _ref_gtmap(boxes, fmt)
    with np.errstate(invalid="ignore"):
        return np.sum(infer_map * gt) / (np.sum(gt) + np.sum(infer_map * (gt == 0)))


def _ref_auc(cious):
    y = [np.sum(np.array(cious) >= 0.05 * i) / len(cious) for i in range(21)]
    x = [0.05 * i for i in range(21)]
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(20))


@pytest.mark.parametrize("name", sorted(M.PROTOCOLS))
def test_parity_with_per_sample_reference(name):
    p = M.PROTOCOLS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n = 16
    maps = rng.standard_normal((n, 7, 7)).astype(np.float32)
    maps[:6] = np.round(maps[:6])  # flat regions: many ties at the median
    maps[6] = 0.3  # constant map
    if name == "acl":
        maps = 1 / (1 + np.exp(-maps))  # ACL thresholds a sigmoid map
    boxes = []
    for i in range(n):
        k = 1 + i % 3
        xy = rng.uniform(-0.1, 0.9, (k, 2))
        wh = rng.uniform(0.05, 0.8, (k, 2))
        boxes.append([tuple(b) for b in np.concatenate([xy, xy + wh], 1)])
    boxes[7] = []  # empty ground truth
    fmt = "flickr" if name in ("lvs", "official_ac") else "vggss"
    b, v = M.pad_boxes(boxes)
    gt = (M.gt_box_consensus if fmt == "flickr" else M.gt_box_union)(b, v)
    fast = M.ciou(torch.from_numpy(maps), gt, p).numpy()
    ref = np.array([_ref_ciou(maps[i], boxes[i], fmt, p) for i in range(n)])
    np.testing.assert_allclose(fast, ref, atol=1e-6, equal_nan=True)
    g1, g2 = M.gt_levels(b, v, consensus=fmt == "flickr")
    np.testing.assert_array_equal(M.ciou_fast(torch.from_numpy(maps), g1, g2, p).numpy(), fast)  # the matmul path
    s = M.summarize_ciou(fast)
    assert s["ciou@0.5"] == pytest.approx(np.mean(ref >= 0.5), abs=1e-6)
    assert s["auc"] == pytest.approx(_ref_auc(ref), abs=1e-6)


def test_real_vggss_ground_truth():
    base = os.environ.get("AVSL_REFERENCE_DATA") or str(Path(__file__).resolve().parents[1] / ".." / "shared"
                                                        / "reference_data")
    path = Path(base) / "hche11__Localizing-Visual-Sounds-the-Hard-Way" / "metadata" / "vggss.json"
    if not path.is_file():
        pytest.skip(f"VGG-SS annotations not found at {path} (set AVSL_REFERENCE_DATA)")
    ann = json.loads(path.read_text())
    assert len(ann) == 5158
    empty, areas = [], []
    for s in range(0, len(ann), 1024):
        chunk = ann[s:s + 1024]
        b, v = M.pad_boxes([a["bbox"] for a in chunk])
        gt = M.gt_box_union(b, v)
        area = gt.sum((1, 2))
        areas.append(area)
        empty += [a["file"] for a, ar in zip(chunk, area.tolist()) if ar == 0]
        for j in range(0, len(chunk), 97):  # spot-check against the peers' bbox2gtmap
            assert np.array_equal(gt[j].numpy(), _ref_gtmap(chunk[j]["bbox"], "vggss"))
    assert sorted(empty) == ["M1P1xla8rg0_000000", "MKC9LvRivTM_000030"]
    q = torch.quantile(torch.cat(areas) / N224, torch.tensor([0.25, 0.5, 0.75]))
    assert q.tolist() == pytest.approx([0.12, 0.25, 0.46], abs=0.01)  # SPEC §3 quartiles


# ----------------------------------------------------------------------------- OGL, confidence
def test_ogl_fusion():
    av = torch.tensor([[[0.0, 1.0]]])
    obj = torch.tensor([[[1.0, 0.0]]])
    assert M.ogl_relative(av, obj, 0.4).tolist() == [[[1.0, 0.0]]]  # 0.4*av + 0.6*obj = .6, .4
    cos = torch.tensor([[[-1.0, 1.0]]])
    assert M.absolute_av_score(cos).tolist() == [[[0.0, 1.0]]]
    assert torch.allclose(M.absolute_av_score(cos / 0.03, tau=0.03), torch.tensor([[[0.0, 1.0]]]), atol=1e-6)
    s = M.ogl_absolute(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[2.5, 0.0]]]), alpha=0.9)
    assert torch.allclose(s, torch.tensor([[[0.1, 0.9]]]))


def test_topquarter_confidence_matches_sort():
    x = torch.rand(3, 224, 224)
    x[1] = torch.round(x[1] * 4) / 4  # ties at the cut
    n = N224
    ref = [np.sort(x[i].numpy().flatten())[-n // 4:].astype(np.float64).mean() for i in range(3)]
    np.testing.assert_allclose(X.topquarter_confidence(x).numpy(), ref, rtol=1e-6)
    y = torch.rand(1, 5, 5)  # n = 25: the top ceil(25/4) = 7 values
    assert X.topquarter_confidence(y).item() == pytest.approx(np.sort(y.numpy().ravel())[-25 // 4:].mean(), rel=1e-6)


# ----------------------------------------------------------------------------- extended sets (SLAVC)
def _ref_slavc(conf, ciou, pos):
    def pr(thr):
        tp = fp = fn = 0
        for c, i, p in zip(conf, ciou, pos):
            if not p:
                fp += c >= thr
            elif c >= thr:
                tp += i >= 0.5
                fp += not i >= 0.5
            else:
                fn += 1
        return (1.0 if tp + fp == 0 else tp / (tp + fp)), (1.0 if tp + fn == 0 else tp / (tp + fn))
    P, R = [], []
    for thr in np.sort(np.array(conf))[:-1][::-max(1, len(conf) // 200)]:
        p, r = pr(thr)
        P.append(p)
        R.append(r)
    pmax = [np.max(P[i:]) for i in range(len(P))]
    ap = sum(pmax[i] * (R[i + 1] - R[i]) for i in range(len(pmax) - 1))
    f1 = [2 * r * p / (r + p) if r + p > 0 else 0.0
          for p, r in (pr(t) for t in sorted(conf)[::max(1, len(conf) // 10)])]
    return ap, max(f1)


def test_ap_stepping_hand_worked():
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    pos = [True, False, True, True, False]
    ciou = [0.8, 0.0, 0.2, 0.6, 0.0]
    r = X.extended_ap_f1(conf, ciou, pos)
    assert r["ap"] == pytest.approx(1 / 3) and r["max_f1"] == pytest.approx(2 / 3)
    assert X.loc_acc(ciou, pos) == pytest.approx(2 / 3)


def test_ap_stepping_matches_reference_and_weights():
    rng = np.random.default_rng(0)
    n = 437  # N//200 = 2 and N//10 = 43: strided thresholds
    conf = np.round(rng.random(n), 2)  # ties
    ciou = rng.random(n)
    ciou[::17] = np.nan
    pos = rng.random(n) < 0.6
    r = X.extended_ap_f1(conf, ciou, pos)
    ap, f1 = _ref_slavc(conf, ciou, pos)
    assert r["ap"] == pytest.approx(ap, abs=1e-12) and r["max_f1"] == pytest.approx(f1, abs=1e-12)
    w = X.bootstrap_counts(n, 3, seed=1)  # weighted = the resampled list
    rw = X.extended_ap_f1(conf, ciou, pos, weights=w)
    for k in range(3):
        idx = np.repeat(np.arange(n), w[k].long().numpy())
        ap_k, f1_k = _ref_slavc(conf[idx], ciou[idx], pos[idx])
        assert rw["ap"][k].item() == pytest.approx(ap_k, abs=1e-12)
        assert rw["max_f1"][k].item() == pytest.approx(f1_k, abs=1e-12)


# ----------------------------------------------------------------------------- AVSBench
def _ref_fscore(pred, gt, num=255):
    th = torch.linspace(0, 1 - 1e-10, num)
    prec, rec = torch.zeros(num), torch.zeros(num)
    for i in range(num):
        y = (pred >= th[i]).float()
        tp = (y * gt).sum()
        prec[i], rec[i] = tp / (y.sum() + 1e-20), tp / (gt.sum() + 1e-20)
    f = (1 + 0.3) * prec * rec / (0.3 * prec + rec)
    f[f != f] = 0
    return f


def test_avsbench_hand_worked():
    pred = torch.tensor([[[0.2, 0.9], [0.6, 0.0]]])
    gt = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    curves, valid = X.fscore_curves(pred, gt)
    assert valid.tolist() == [True]
    assert curves[0, 0].item() == pytest.approx(1.3 * 0.5 / 1.15)  # th = 0: all on, P = .5, R = 1
    assert curves.max().item() == pytest.approx(1.0) and curves[0, -1].item() == 0.0
    torch.testing.assert_close(curves[0].float(), _ref_fscore(pred[0], gt[0]), atol=1e-6, rtol=0)
    # IoU at 0.5: on = {0.9, 0.6} = GT -> 1 ; empty GT: fraction of pixels where both are 0
    assert X.mask_iou(pred, gt, 0.5).item() == pytest.approx(1.0, abs=1e-6)
    assert X.mask_iou(pred, torch.zeros_like(gt), 0.5).item() == pytest.approx(0.5, abs=1e-6)
    # batch forms: frames A (iou 1), B (0.5, empty GT), C (1); batches of 2: mean(.75, 1) vs mean(1, .5, 1)
    iou = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    cur = torch.tensor([[0.2, 0.8], [0.0, 0.0], [0.6, 0.4]], dtype=torch.float64)
    val = torch.tensor([True, False, True])
    s = X.avsbench_summary(iou, cur, val, frames_per_batch=2)
    assert s["miou_official"] == pytest.approx(0.875) and s["miou_dataset"] == pytest.approx(2.5 / 3)
    assert s["fscore_official"] == pytest.approx((0.8 + 0.6) / 2)  # per-batch max, then mean
    assert s["fscore_dataset"] == pytest.approx(0.6)  # mean curve (.4, .6), then max


# ----------------------------------------------------------------------------- retrieval
def test_retrieval_known_rank_and_category():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    aud = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    # audio 0: cos with images = .6, .8, .96 -> its own image ranks third
    r = X.retrieval_hits(aud, img, (1, 2, 5), ["x", "y", "x"], ["x", "y", "x"])
    assert r["rank"].tolist() == [2, 0, 0]
    assert r["instance"]["R@1"].tolist() == [False, True, True]
    assert r["instance"]["R@5"].tolist() == [True, True, True]
    assert r["category"]["R@1"].tolist() == [True, True, True]  # image 2 shares audio 0's class
    tie = X.retrieval_hits(torch.ones(2, 2), torch.ones(2, 2))  # all tied: stable order by index
    assert tie["rank"].tolist() == [0, 1]


# ----------------------------------------------------------------------------- pointing, swap, discrimination, floors
def test_pointing_swap_discrimination():
    maps = torch.zeros(2, 224, 224)
    maps[0, 20, 30] = 1.0  # peak in the left object
    maps[1, 20, 200] = 1.0  # peak in the right object
    left, right = (0.0, 0.0, 0.4, 0.4), (0.6, 0.0, 1.0, 0.4)
    b, v = M.pad_boxes([[left], [right]])
    gt = M.gt_box_union(b, v)
    hits = X.pointing_hits(maps, gt)
    assert hits.tolist() == [True, True]
    pairs = X.swap_pair_success(torch.tensor([0, 0]), hits, X.peak_index(maps), b, v)
    assert pairs.tolist() == [True]
    same = torch.zeros(2, 224, 224)
    same[:, 20, 30] = 1.0  # an audio-blind map: the peak stays on the left object
    h2 = X.pointing_hits(same, gt)
    assert h2.tolist() == [True, False]
    assert X.swap_pair_success(torch.tensor([0, 0]), h2, X.peak_index(same), b, v).tolist() == [False]
    ob, ov = M.pad_boxes([[right], [left]])
    d = X.object_discrimination(maps, b, v, ob, ov)
    assert d.tolist() == [1.0, 1.0]
    assert X.object_discrimination(same, b, v, ob, ov).tolist() == [1.0, 0.0]
    eb, ev = M.pad_boxes([[], []])
    assert torch.isnan(X.object_discrimination(maps, b, v, eb, ev)).all()


def test_floors():
    c = X.centre_prior_maps(2, 14, 14)
    assert c.shape == (2, 14, 14) and c[0].argmax().item() in {6 * 14 + 6, 6 * 14 + 7, 7 * 14 + 6, 7 * 14 + 7}
    assert torch.equal(X.random_maps(3, 7, 7, seed=5), X.random_maps(3, 7, 7, seed=5))
    assert not torch.equal(X.random_maps(3, 7, 7, seed=5), X.random_maps(3, 7, 7, seed=6))


def test_bootstrap():
    v = np.r_[np.ones(30), np.zeros(70)]
    ci = X.bootstrap_ci(X.mean_stat(v), 100, 1000, seed=3)
    assert ci == X.bootstrap_ci(X.mean_stat(v), 100, 1000, seed=3)
    assert ci[0] < 0.3 < ci[1] and 0.1 < ci[1] - ci[0] < 0.25  # ~ ±1.96·sqrt(.21/100)
    assert X.bootstrap_ci(X.mean_stat(np.ones(10)), 10, 200) == [1.0, 1.0]
    w = X.bootstrap_counts(50, 20, seed=0)
    assert torch.all(w.sum(1) == 50)
