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
the best floor with non-overlapping intervals. Also printed, to tell where the misses come from: pointing
by object size and object count (`breakdown`), where the model's peak lands (sounding object, another
object, background: `peak_places`), and which encoder knows the categories (`feature_probe`: audio 1-NN
category accuracy; the sounding box's visual feature classified by the nearest audio category mean).
Prints a table and writes `<out>/check_learning.json`.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core import metrics as M  # noqa: E402
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


def _loc_items(items, ids) -> tuple[list, list[str], np.ndarray]:
    """The localization items (`extra.kind == "loc"`) in map order: (items, ids, row mask over ids)."""
    by_id = {it.id: it for it in items}
    sel = np.array([str(by_id[i].extra.get("kind")) == "loc" for i in ids])
    loc_ids = [i for i, s in zip(ids, sel) if s]
    return [by_id[i] for i in loc_ids], loc_ids, sel


def breakdown(items, ids, maps: dict) -> dict:
    """Pointing on the localization items by the sounding object's area (VGG-SS quartile bins) and by
    the number of objects in the scene: {map: {group: [hits, n]}} (where the misses are)."""
    loc, loc_ids, sel = _loc_items(items, ids)
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


PLACES = ("sounding object", "another object", "background")


def peak_places(items, ids, maps: dict) -> dict:
    """Where each map's peak (at the protocol's 224×224, as pointing scores it) lands on the localization
    items: on the sounding object, on another object of the scene only, or on neither:
    {map: {place: count}}. Splits the misses into binding errors and background peaks."""
    loc, loc_ids, sel = _loc_items(items, ids)
    cfg = EvalConfig(n_bootstrap=0)
    size = M.get_protocol(cfg.protocol).size
    out = {}
    for name, m in maps.items():
        _, sc = evaluate_maps(loc, loc_ids, m[sel], cfg, return_scores=True)
        at = {i: (int(p) // size, int(p) % size, h > 0) for i, p, h in zip(sc["ids"], sc["peak"], sc["pointing"])}
        counts = dict.fromkeys(PLACES, 0)
        for it in loc:
            r, c, hit = at[it.id]
            others = [o["box"] for k, o in enumerate(it.extra.get("objects", [])) if k != it.extra.get("sounding")]
            on_other = bool(others) and bool(X.point_in_boxes(
                torch.tensor([r]), torch.tensor([c]), torch.tensor([others], dtype=torch.float64),
                torch.ones(1, len(others), dtype=torch.bool), size)[0])
            counts[PLACES[0] if hit else PLACES[1] if on_other else PLACES[2]] += 1
        out[name] = counts
    return out


def probe_scores(v_map: torch.Tensor, a: torch.Tensor, categories: list, audio_ids: list, boxes: list) -> dict:
    """Which side of the model knows the categories? v_map [N, c, h, w], a [N, c] (one row per item);
    boxes: the sounding box (x1, y1, x2, y2, normalised) or None per item.

    * audio_1nn: the category of each clip's nearest other clip (cosine of a), excluding clips of the
      same recording (audio_ids): does the audio embedding group sounds by category?
    * box_to_audio: each sounding box's mean feature (cells whose centres fall in the box, at least the
      box centre's cell) classified by the nearest per-category mean of the normalised audio vectors: do
      the visual features inside the object point at its category's sounds?
    Returns both accuracies, their item counts and the chance level (1 / categories)."""
    n, _, h, w = v_map.shape
    an = F.normalize(a.float(), dim=1)
    sim = an @ an.T
    rec = np.array(audio_ids, dtype=object)
    sim[torch.from_numpy(rec[:, None] == rec[None, :])] = -np.inf       # same recording (and self)
    cat = np.array(categories, dtype=object)
    best, nn = sim.max(1)
    ok_nn = [cat[j] == cat[i] for i, (j, f) in enumerate(zip(nn.tolist(), torch.isfinite(best).tolist())) if f]
    cats = sorted(set(categories))
    protos = F.normalize(torch.stack([an[torch.from_numpy(cat == k)].mean(0) for k in cats]), dim=1)
    ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    ok_box = []
    for i, b in enumerate(boxes):
        if b is None:
            continue
        x1, y1, x2, y2 = b
        m = ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
        if not m.any():
            m[min(h - 1, int((y1 + y2) / 2 * h)), min(w - 1, int((x1 + x2) / 2 * w))] = True
        f = F.normalize(v_map[i].float()[:, m].mean(1), dim=0)
        ok_box.append(cats[int((protos @ f).argmax())] == categories[i])
    return {"audio_1nn": float(np.mean(ok_nn)) if ok_nn else float("nan"), "n_audio": len(ok_nn),
            "box_to_audio": float(np.mean(ok_box)) if ok_box else float("nan"), "n_box": len(ok_box),
            "chance": 1.0 / len(cats)}


@torch.no_grad()
def feature_probe(model: AVModel, set_dir: Path, cfg: T.TrainConfig) -> dict:
    """`probe_scores` on one test set's items that have a category (the model's V maps and audio vectors)."""
    ds = TestDataset(set_dir / "manifest.jsonl", set_dir, image_size=cfg.data.image_size,
                     frontend=cfg.data.frontend)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, collate_fn=collate)
    model.eval()
    v, a, ids = [], [], []
    for b in loader:
        v.append(model.encode_image(b["image"]).float())
        a.append(model.encode_audio(b["spec"]).float())
        ids += list(b["id"])
    by_id = {it.id: it for it in ds.items}
    keep = [k for k, i in enumerate(ids) if by_id[i].category]        # negatives carry no category
    its = [by_id[ids[k]] for k in keep]
    return probe_scores(torch.cat(v)[keep], torch.cat(a)[keep], [it.category for it in its],
                        [it.extra.get("audio_asset_id") or it.audio for it in its],
                        [tuple(it.boxes[0]) if it.boxes else None for it in its])


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
        places = peak_places(items, ids, {"model": maps["model"]})["model"]
        probe = feature_probe(model, sets_root / name, cfg)
        report["sets"][name] = {"scores": res, "verdict": v, "breakdown": bd, "peak_places": places,
                                "feature_probe": probe}
        print(table(name, res))
        print(breakdown_table(bd))
        print("model peak on (loc items): " + ", ".join(f"{k} {n}" for k, n in places.items()))
        print(f"feature probe: audio 1-NN category {probe['audio_1nn']:.3f} (n {probe['n_audio']}), sounding-box "
              f"feature -> nearest audio category {probe['box_to_audio']:.3f} (n {probe['n_box']}); "
              f"chance {probe['chance']:.3f}")
        print(f"  pointing margin over best floor ({v['best_pointing_floor']}): {v['pointing_margin']:+.3f} "
              f"-> {'PASS' if v['pointing_ok'] else 'FAIL'} (bar +0.20); cIoU@0.5 CI above best floor "
              f"({v['best_ciou_floor']}): {'PASS' if v['ciou_ok'] else 'FAIL'}\n")
    atomic_write_json(out / "check_learning.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
