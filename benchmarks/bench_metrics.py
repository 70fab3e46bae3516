"""cIoU + AUC for N random 14×14 maps at 224×224 under every protocol: the vectorised path of
avsl_core.metrics against a straightforward per-sample loop written the way the peers write it, on the
same inputs, in one run. Prints a table (time, speed-up, largest per-sample difference).

    .venv/bin/python benchmarks/bench_metrics.py [--n 5158] [--threads 1] [--chunk 32]

Ground truth: the real VGG-SS boxes (first N of vggss.json) when ../shared/reference_data or
$AVSL_REFERENCE_DATA has them, else seeded random boxes. Both paths build the GT maps themselves.
Upsampling is the same kernel in both paths (torch's, one call per sample in the loop); its fidelity to
cv2 / the peers is tested in tests/test_metrics.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import metrics as M  # noqa: E402


def load_boxes(n: int, seed: int) -> tuple[list, str]:
    base = os.environ.get("AVSL_REFERENCE_DATA") or str(Path(__file__).resolve().parents[2] / "shared"
                                                        / "reference_data")
    path = Path(base) / "hche11__Localizing-Visual-Sounds-the-Hard-Way" / "metadata" / "vggss.json"
    if path.is_file():
        ann = json.loads(path.read_text())
        return [a["bbox"] for a in (ann * (n // len(ann) + 1))[:n]], "VGG-SS boxes (vggss.json)"
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = rng.integers(1, 4)
        xy = rng.uniform(0, 0.7, (k, 2))
        out.append(np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (k, 2))], 1).tolist())
    return out, "seeded random boxes"


# ----------------------------------------------------------------------------- the per-sample loop
def _normalize_img(v):
    vmin, vmax = v.min(), v.max()
    return (v - vmin) / (vmax - vmin) if vmax - vmin != 0 else v


def _gtmap(bboxes):
    gt_map = np.zeros([224, 224])
    for b in bboxes:
        xmin, ymin, xmax, ymax = (np.clip(np.array(b), 0, 1) * 224).astype(int)
        temp = np.zeros([224, 224])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    gt_map[gt_map > 0] = 1
    return gt_map


def loop(maps: np.ndarray, boxes: list, p: M.Protocol) -> tuple[np.ndarray, float, float, float]:
    cious, t_up = [], 0.0
    for i in range(len(maps)):
        t = time.perf_counter()
        u = M.upsample(torch.from_numpy(maps[i])[None], p.upsample)[0].numpy()
        t_up += time.perf_counter() - t
        if p.score_first:
            u = (u - -1.0) / (1.0 - -1.0)
        pred = {"minmax": lambda: _normalize_img(u), "none": lambda: u,
                "one_minus_minmax_neg": lambda: 1 - _normalize_img(-u)}[p.normalise]()
        thr = np.sort(pred.flatten())[int(224 * 224 / 2)] if p.threshold is None else p.threshold
        infer_map = np.zeros((224, 224))
        if p.lvs_binarize:
            pred = pred.copy()
            pred[pred > thr] = 1
            pred[pred < 1] = 0
            infer_map[pred >= 0.5] = 1
        elif p.strict:
            infer_map[pred > thr] = 1
        else:
            infer_map[pred >= thr] = 1
        gt = _gtmap(boxes[i])
        with np.errstate(invalid="ignore"):
            cious.append(np.sum(infer_map * gt) / (np.sum(gt) + np.sum(infer_map * (gt == 0))))
    cious = np.array(cious)
    y = [np.sum(cious >= 0.05 * i) / len(cious) for i in range(21)]
    x = [0.05 * i for i in range(21)]
    auc = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(20))
    return cious, float(np.mean(cious >= 0.5)), auc, t_up


# ----------------------------------------------------------------------------- the vectorised path
def vectorised(maps: np.ndarray, boxes: list, p: M.Protocol, chunk: int
               ) -> tuple[np.ndarray, float, float, float]:
    out, t_up = np.empty(len(maps)), 0.0
    for s in range(0, len(maps), chunk):
        t = time.perf_counter()
        u = M.upsample(torch.from_numpy(maps[s:s + chunk]), p.upsample)  # [B, 224, 224]
        t_up += time.perf_counter() - t
        pred = M.normalise(M.absolute_av_score(u) if p.score_first else u, p.normalise, inplace=True)
        b, v = M.pad_boxes(boxes[s:s + chunk])
        g1, g2 = M.gt_levels(b, v)
        out[s:s + chunk] = M.ciou_from_levels(M.binarize(pred, p), g1, g2).numpy()
    s = M.summarize_ciou(out)
    return out, s["ciou@0.5"], s["auc"], t_up


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5158)
    ap.add_argument("--size", type=int, default=14, help="native map side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocols", default=",".join(M.PROTOCOLS))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    maps = rng.standard_normal((a.n, a.size, a.size)).astype(np.float32)
    boxes, src = load_boxes(a.n, a.seed)
    print(f"{a.n} random {a.size}x{a.size} maps -> 224x224; GT: {src}; torch {torch.__version__}, "
          f"numpy {np.__version__}, {a.threads} thread(s), {os.cpu_count()} CPUs, {platform.processor()}")
    hdr = (f"| {'protocol':<11} | {'upsample':<11} | cmp | loop s | vector s | speed-up | excl. upsampling "
           f"| max abs diff cIoU_i | cIoU@0.5 | diff  | AUC    | diff  |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    worst = 0.0
    for name in a.protocols.split(","):
        p = M.get_protocol(name)
        maps_p = 1 / (1 + np.exp(-maps)) if p.threshold is not None else maps  # ACL: a sigmoid map
        vectorised(maps_p[:64], boxes[:64], p, a.chunk)  # warm-up
        t0 = time.perf_counter()
        cv, ap50_v, auc_v, up_v = vectorised(maps_p, boxes, p, a.chunk)
        t1 = time.perf_counter()
        cl, ap50_l, auc_l, up_l = loop(maps_p, boxes, p)
        t2 = time.perf_counter()
        d = float(np.nanmax(np.abs(cv - cl))) if not np.isnan(cv).all() else 0.0
        same_nan = bool(np.array_equal(np.isnan(cv), np.isnan(cl)))
        worst = max(worst, d, abs(ap50_v - ap50_l), abs(auc_v - auc_l), 0.0 if same_nan else 1.0)
        tv, tl = t1 - t0, t2 - t1
        print(f"| {name:<11} | {p.upsample:<11} | {'>' if p.strict else '>=':<3} | {tl:6.1f} | {tv:8.2f} | "
              f"{tl / tv:7.1f}x | {(tl - up_l) / (tv - up_v):15.1f}x | {d:19.1e} | {ap50_v:8.4f} | "
              f"{abs(ap50_v - ap50_l):.0e} | {auc_v:.4f} | {abs(auc_v - auc_l):.0e} |")
    print(f"largest difference over all protocols: {worst:.1e} ({'OK' if worst <= 1e-6 else 'FAIL'}: 1e-6)")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
