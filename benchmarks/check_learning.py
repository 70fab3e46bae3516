"""Does the main method learn? Train with a config, then score it against the audio-blind floors (issue 3).

    python benchmarks/check_learning.py --config quick --section train.main \\
        --out runs/quick/ckpt/check_main [--set loss.pooling=mean] [--reuse] [--threads 2]

Trains (`avsl_core.train.train`; `--reuse` skips training when `--out` holds a finished run), then on
each test set (default: test_seen, the bar; test_heldout, reported) scores the localization items
(`extra.kind == "loc"`) and the swap items of four maps through `avsl_core.evaluate.evaluate_maps`
(protocol ezvsl, 1000 bootstrap resamples, 95 % percentile intervals):

* `model`       the trained model's cos(V, a) map (paper Eq. 3 summand);
* `centre`      a centred Gaussian (σ = 0.25 of the side);
* `random`      i.i.d. uniform maps at the model's map resolution (seeded);
* `objectness`  the same model's audio-blind channel-mean |V| (visual-only floor).

Bar (issue 3, "It must learn", on test_seen): pointing >= best floor + 20 points, and cIoU@0.5 above
the best floor with non-overlapping intervals. Prints a table and writes `<out>/check_learning.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import metrics_extended as X  # noqa: E402
from avsl_core import train as T  # noqa: E402
from avsl_core.data.datasets import TestDataset, collate  # noqa: E402
from avsl_core.evaluate import EvalConfig, evaluate_maps  # noqa: E402
from avsl_core.models import AVModel  # noqa: E402
from avsl_core.provenance import atomic_write_json, environment, git_commit  # noqa: E402

FLOORS = ("centre", "random", "objectness")


@torch.no_grad()
def maps_for(model: AVModel, set_dir: Path, cfg: T.TrainConfig) -> tuple[list, list[str], dict]:
    """Items, ids and {name: maps [N, h, w]} for the model and the three floors on one test set."""
    ds = TestDataset(set_dir / "manifest.jsonl", set_dir, image_size=cfg.data.image_size,
                     frontend=cfg.data.frontend)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, collate_fn=collate)
    ids, av, obj = [], [], []
    model.eval()
    for b in loader:
        av.append(model.localization_map(b["image"], b["spec"]).numpy())
        obj.append(model.visual_objectness(b["image"]).numpy())
        ids += list(b["id"])
    av, obj = np.concatenate(av), np.concatenate(obj)
    n, h, w = av.shape
    return ds.items, ids, {"model": av, "centre": X.centre_prior_maps(n, h, w).numpy(),
                           "random": X.random_maps(n, h, w, seed=0).numpy(), "objectness": obj}


def score(items, ids, maps: dict) -> dict:
    """{name: {pointing, ciou, auc, swap, discrimination: (value, [lo, hi])}} on loc and swap items."""
    kind = {it.id: str(it.extra.get("kind")) for it in items}
    sub = {k: ([it for it in items if kind[it.id] == k], np.array([kind[i] == k for i in ids])) for k in ("loc", "swap")}
    out = {}
    for name, m in maps.items():
        loc = evaluate_maps(sub["loc"][0], [i for i, s in zip(ids, sub["loc"][1]) if s], m[sub["loc"][1]])
        sw = evaluate_maps(sub["swap"][0], [i for i, s in zip(ids, sub["swap"][1]) if s], m[sub["swap"][1]])
        lm, li = loc["metrics"], loc["intervals"]
        r = {"n_loc": loc["n_scored"],
             "pointing": (lm["pointing"]["accuracy"], li["pointing"]["accuracy"]),
             "ciou@0.5": (lm["localization"]["ciou@0.5"], li["localization"]["ciou@0.5"]),
             "auc": (lm["localization"]["auc"], li["localization"]["auc"])}
        if "object_discrimination" in lm:
            r["discrimination"] = (lm["object_discrimination"]["accuracy"], li["object_discrimination"]["accuracy"])
        if "swap" in sw["metrics"]:
            r["swap"] = (sw["metrics"]["swap"]["query_accuracy"], sw["intervals"]["swap"]["query_accuracy"])
            r["n_swap"] = sw["metrics"]["swap"]["n_queries"]
        out[name] = r
    return out


# VGG-SS quartiles of the sounding box's area (SPEC §3): the centre prior wins the large half
AREA_EDGES = (0.12, 0.25, 0.46)


def breakdown(items, ids, maps: dict) -> dict:
    """Pointing on the localization items by the sounding object's area (VGG-SS quartile bins) and by
    the number of objects in the scene: {map: {group: [hits, n]}} (where the misses are)."""
    by_id = {it.id: it for it in items}
    sel = np.array([str(by_id[i].extra.get("kind")) == "loc" for i in ids])
    loc_ids = [i for i, s in zip(ids, sel) if s]
    loc = [by_id[i] for i in loc_ids]
    labels = ["<12%", "12-25%", "25-46%", ">=46%"]
    out = {}
    for name, m in maps.items():
        r = evaluate_maps(loc, loc_ids, m[sel], EvalConfig(per_item=True, n_bootstrap=0))
        hit = dict(zip(r["per_item"]["ids"], r["per_item"]["pointing"]))
        groups: dict[str, list[int]] = {}
        for it in loc:
            ex = it.extra
            area = float(ex["objects"][ex["sounding"]]["area"])
            for g in (f"area {labels[int(np.searchsorted(AREA_EDGES, area, side='right'))]}",
                      f"{ex['n_objects']} obj"):
                h = groups.setdefault(g, [0, 0])
                h[0] += int(bool(hit[it.id]))
                h[1] += 1
        order = [f"area {b}" for b in labels] + [f"{k} obj" for k in range(1, 9)]
        out[name] = {g: groups[g] for g in order if g in groups}
    return out


def breakdown_table(bd: dict) -> str:
    cols = list(next(iter(bd.values())))
    lines = ["pointing by sounding-object area / objects in the scene (loc items; hits/n)",
             f"{'map':<11}" + "".join(f"{c:>13}" for c in cols)]
    for k, g in bd.items():
        lines.append(f"{k:<11}" + "".join(f"{g[c][0] / max(g[c][1], 1):>8.3f} /{g[c][1]:>3}" for c in cols))
    return "\n".join(lines)


def verdict(res: dict) -> dict:
    best_p = max(FLOORS, key=lambda f: res[f]["pointing"][0])
    best_c = max(FLOORS, key=lambda f: res[f]["ciou@0.5"][0])
    p, c = res["model"]["pointing"][0], res["model"]["ciou@0.5"]
    return {"pointing_margin": p - res[best_p]["pointing"][0], "best_pointing_floor": best_p,
            "pointing_ok": p >= res[best_p]["pointing"][0] + 0.20,
            "best_ciou_floor": best_c, "ciou_ok": c[1][0] > res[best_c]["ciou@0.5"][1][1]}


def table(name: str, res: dict) -> str:
    def f(v):
        return f"{v[0]:.3f} [{v[1][0]:.3f}, {v[1][1]:.3f}]" if v else "-"
    cols = ("pointing", "ciou@0.5", "auc", "swap", "discrimination")
    lines = [f"{name} (loc items: {res['model']['n_loc']}, swap queries: {res['model'].get('n_swap', 0)})",
             f"{'map':<11}" + "".join(f"{c:>25}" for c in cols)]
    for k, r in res.items():
        lines.append(f"{k:<11}" + "".join(f"{f(r.get(c)):>25}" for c in cols))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--section", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--test-sets", default="test_seen,test_heldout",
                    help="comma-separated set names beside data.train_dir")
    ap.add_argument("--reuse", action="store_true", help="skip training if --out holds a finished run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--curve", default=None, metavar="S1,S2,...",
                    help="learning curve: train to each step count in turn (resuming), score the first "
                         "test set at each; the last count is the run's length (overrides max_steps)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = T.load_config(a.config, a.section, a.set)
    out = Path(a.out)
    sets_root = T._resolve(cfg.data.train_dir).parent
    curve = []
    if a.curve:
        first = a.test_sets.split(",")[0]
        for n in [int(x) for x in a.curve.split(",")]:
            c = dataclasses.replace(cfg, max_steps=n)
            s = T.train(c, out, resume=(out / T.CKPT_NAME).exists(), progress=False)
            items, ids, maps = maps_for(AVModel.from_checkpoint(out / T.CKPT_NAME), sets_root / first, cfg)
            res = score(items, ids, {"model": maps["model"]})["model"]
            curve.append({"step": s["steps"], "elapsed_s": s["elapsed_s"], "set": first,
                          **{k: res[k][0] for k in ("pointing", "ciou@0.5", "swap") if k in res}})
            print(f"curve: step {s['steps']:>5} loop {s['elapsed_s']:>7.0f} s  {first}: pointing "
                  f"{res['pointing'][0]:.3f} cIoU@0.5 {res['ciou@0.5'][0]:.3f} swap {res.get('swap', [0])[0]:.3f}",
                  flush=True)
        cfg = dataclasses.replace(cfg, max_steps=int(a.curve.split(",")[-1]))
    t0 = time.perf_counter()
    if a.reuse and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    else:
        summary = T.train(cfg, out, resume=(out / T.CKPT_NAME).exists(), progress=not a.curve)
    wall = time.perf_counter() - t0
    model = AVModel.from_checkpoint(out / T.CKPT_NAME)
    report = {"config": cfg.to_dict(), "train": {k: summary.get(k) for k in ("steps", "elapsed_s", "stop_reason")},
              "wall_s_train_call": round(wall, 1), "git_commit": git_commit(), "environment": environment(),
              "command": " ".join(sys.argv), "curve": curve, "sets": {}}
    ep = summary.get("epochs") or []
    print(f"trained {summary.get('steps')} steps in {summary.get('elapsed_s')} s of loop "
          f"({wall:.0f} s with data loading / set-up); stop: {summary.get('stop_reason')}; "
          f"mean loss first/last epoch: {ep[0]['mean_loss'] if ep else '-'} / {ep[-1]['mean_loss'] if ep else '-'}")
    for name in a.test_sets.split(","):
        items, ids, maps = maps_for(model, sets_root / name, cfg)
        res = score(items, ids, maps)
        v = verdict(res)
        bd = breakdown(items, ids, maps)
        report["sets"][name] = {"scores": res, "verdict": v, "breakdown": bd}
        print(table(name, res))
        print(breakdown_table(bd))
        print(f"  pointing margin over best floor ({v['best_pointing_floor']}): {v['pointing_margin']:+.3f} "
              f"-> {'PASS' if v['pointing_ok'] else 'FAIL'} (bar +0.20); cIoU@0.5 CI above best floor "
              f"({v['best_ciou_floor']}): {'PASS' if v['ciou_ok'] else 'FAIL'}\n")
    atomic_write_json(out / "check_learning.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
