"""The unified evaluator's speed bar: cIoU + AUC for N random 14×14 maps at 224×224 under every protocol, the
vectorised path (avsl_core.metrics' :func:`binarize_packed`, then avsl_core.metrics_fast's
:func:`ciou_packed_boxes`: cIoU counted inside the boxes) against a straightforward per-sample loop written
the way the peers write it, on the same inputs, in one run. Prints a table (loop and vectorised time,
speed-up, largest per-item difference, how the fast path settled the maps), the machine's load and the
thread counts.

    .venv/bin/python benchmarks/bench_metrics.py [--n 5158] [--workers 1] [--chunk 8] [--no-kernel] [--f32-loop]

The vectorised path runs the compiled numba kernel (avsl_core.metrics_kernel: the binary maps, near-ties
settled, and the cIoU counts) when numba imports, else (or with ``--no-kernel``) numpy/torch (the
ground truth then packed by ``gt_union_packed`` and counted by ``ciou_from_packed``). The kernel has no
parallel loops: it runs one map at a time on each of the ``--workers`` threads; the header prints numba's
own thread count for the record (unused). Its first compile takes ~40 s (~15 s more for the cubic
kernels' tap counts) and is cached; the warm-up calls absorb it: one untimed call of the
first protocol on all N maps (the process's first touch of its large buffers), then one on 64 maps before
each protocol's timing.

The loop, per item: upsample that one map with ``metrics.upsample`` (torch's kernel in float64, rounded once
to float32: the evaluator's definition), min-max normalise, threshold at the value of sorted index N//2,
build the ground-truth map from the boxes, cIoU in float64 numpy; then the 21-point AUC. ``--f32-loop``
adds the same loop with float32 ``F.interpolate`` (the peers' own CPU arithmetic) and counts the items
whose cIoU differs from the exact definition by more than 1e-6: float32 kernels break near-ties at the
median differently (see metrics.upsample).

Ground truth: the real VGG-SS boxes (first N of vggss.json) when ../shared/reference_data or
$AVSL_REFERENCE_DATA has them, else seeded random boxes. Both paths start from the box lists.
Times are wall-clock and process CPU time (CPU time is the fairer ratio on a shared machine: the load
average, printed before and after, says how shared it was). One torch thread per worker: on a shared
2-core machine, 2 OpenMP threads made a 14×224 matmul 10–100× slower whenever the other core was busy
(threads spin at barriers); ``--workers 2`` runs blocks of maps on two Python threads instead.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS: one thread, like torch's

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import metrics as M  # noqa: E402
from avsl_core import metrics_fast as FP  # noqa: E402
from avsl_core import metrics_kernel as KM  # noqa: E402


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


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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


def _interp_f32(m: np.ndarray, mode: str) -> np.ndarray:
    return M._interpolate(torch.from_numpy(m)[None, None], mode, (224, 224))[0, 0].numpy()


def loop(maps: np.ndarray, boxes: list, p: M.Protocol, f32: bool = False) -> tuple[np.ndarray, float, float]:
    cious = []
    for i in range(len(maps)):
        if f32:
            u = _interp_f32(maps[i], p.upsample)
        else:
            u = M.upsample(torch.from_numpy(maps[i])[None], p.upsample)[0].numpy()
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
    return cious, float(np.mean(cious >= 0.5)), auc


# ----------------------------------------------------------------------------- the vectorised path
def vectorised(maps: np.ndarray, boxes: list, p: M.Protocol, chunk: int, workers: int, stats: dict,
               kernel: bool = True) -> tuple[np.ndarray, float, float]:
    b, v = M.pad_boxes(boxes)  # [N, K, 4], [N, K]
    pred = M.binarize_packed(maps, p, chunk=chunk, stats=stats, workers=workers, kernel=kernel)  # [N, 6272]
    c = FP.ciou_packed_boxes(pred, b, v, kernel=kernel).numpy()  # against the union of the boxes
    sm = M.summarize_ciou(c)
    return c, sm["ciou@0.5"], sm["auc"]


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    r = fn()
    return r, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5158)
    ap.add_argument("--size", type=int, default=14, help="native map side")
    ap.add_argument("--workers", type=int, default=1, help="threads of the vectorised path (one torch thread each)")
    ap.add_argument("--chunk", type=int, default=8, help="maps upsampled at a time (numpy path)")
    ap.add_argument("--no-kernel", action="store_true", help="the numpy path even where numba imports")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocols", default=",".join(M.PROTOCOLS))
    ap.add_argument("--f32-loop", action="store_true",
                    help="also run the loop with float32 F.interpolate and count the items it moves")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    maps = rng.standard_normal((a.n, a.size, a.size)).astype(np.float32)
    boxes, src = load_boxes(a.n, a.seed)
    kernel = not a.no_kernel and KM.HAVE_NUMBA
    if kernel:
        import numba
        steps = (f"steps 1-2: numba {numba.version_info.string} kernel, one map at a time per worker "
                 f"(numba's threads: {numba.get_num_threads()}, unused)")
    else:
        steps = f"steps 1-2: numpy/torch, chunk {a.chunk}"
    print(f"{a.n} random {a.size}x{a.size} maps -> 224x224; GT: {src}; torch {torch.__version__}, numpy "
          f"{np.__version__}; {os.cpu_count()} CPUs {platform.machine()}; threads: loop 1, vectorised {a.workers} "
          f"(torch {torch.get_num_threads()} each); {steps}; load average at start: {load_avg()}")
    hdr = ("| protocol       | upsample    | cmp | loop s (cpu) | vector s (cpu) | speed-up wall (cpu) "
           "| max abs diff | cIoU@0.5 | AUC    | clean / near-tie / exact | load  |" +
           (" f32 loop: items moved |" if a.f32_loop else ""))
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    worst, speed = 0.0, []
    # one untimed full-size call first: the process's first touch of ~50 MB of outputs and buffers (page
    # faults, allocator growth) would otherwise land on whichever protocol is timed first (~20 µs a map)
    vectorised(maps, boxes, M.get_protocol(a.protocols.split(",")[0]), a.chunk, a.workers, {}, kernel)
    for name in a.protocols.split(","):
        p = M.get_protocol(name)
        maps_p = 1 / (1 + np.exp(-maps)) if p.threshold is not None else maps  # ACL: a sigmoid map
        vectorised(maps_p[:64], boxes[:64], p, a.chunk, a.workers, {}, kernel)  # warm-up (matrices, compile)
        st: dict = {}
        (cv, ap50_v, auc_v), tv, cpv = _timed(lambda: vectorised(maps_p, boxes, p, a.chunk, a.workers, st, kernel))
        (cl, ap50_l, auc_l), tl, cpl = _timed(lambda: loop(maps_p, boxes, p))
        both = ~(np.isnan(cv) & np.isnan(cl))
        d = float(np.abs(cv - cl)[both].max()) if both.any() else 0.0
        d = d if np.array_equal(np.isnan(cv), np.isnan(cl)) else float("inf")
        d = max(d, abs(ap50_v - ap50_l), abs(auc_v - auc_l))
        worst = max(worst, d)
        speed.append((tl / tv, cpl / cpv))
        extra = ""
        if a.f32_loop:
            c32, _, _ = loop(maps_p, boxes, p, f32=True)
            moved = int((~(np.abs(c32 - cl) <= 1e-6) & ~(np.isnan(c32) & np.isnan(cl))).sum())
            extra = f" {moved:21d} |"
        print(f"| {name:<14} | {p.upsample:<11} | {'>' if p.strict else '>=':<3} | {tl:5.1f} ({cpl:5.1f}) | "
              f"{tv:6.2f} ({cpv:5.2f}) | {tl / tv:8.1f}x ({cpl / cpv:5.1f}x) | {d:12.1e} | {ap50_v:8.4f} | "
              f"{auc_v:.4f} | {st['clean']:5d} / {st['near_tie']:4d} / {st['exact']:3d}     | "
              f"{os.getloadavg()[0]:5.2f} |" + extra, flush=True)
    sw, sc = min(s[0] for s in speed), min(s[1] for s in speed)
    print(f"largest difference over all protocols (per-item cIoU, cIoU@0.5, AUC): {worst:.1e} "
          f"({'OK' if worst <= 1e-6 else 'FAIL'}: 1e-6); slowest speed-up {sw:.1f}x wall, {sc:.1f}x cpu "
          f"(bar: 20x); load average at end: {load_avg()}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
