"""Figures 3-5 (avsl_core.figures): run and item selection, maps as the evaluator scores them, peak
hits, the figure grids on a tiny random model and fake items; and the swap hits on runs/smoke
against the evaluator's swap accuracy when those outputs exist."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avsl_core import figures as FG
from avsl_core.data.manifest import ManifestItem
from avsl_core.models import AVModel, ModelConfig, ResNet18Trunk

ROOT = Path(__file__).resolve().parents[1]
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
OBJS = [{"category": "dog", "box": list(LEFT)}, {"category": "car", "box": list(RIGHT)}]


def loc(i, kind="loc", negative=False, group=None, sounding=0):
    return ManifestItem(id=f"s-{kind}-{i:05d}", image="images/x.png", audio="audio/x.wav",
                        category=OBJS[sounding]["category"], boxes=() if negative else (OBJS[sounding]["box"],),
                        group=group, negative=negative,
                        extra={"kind": kind, "objects": OBJS, "sounding": sounding, "n_objects": 2})


# ------------------------------------------------------------------------------ selection
def test_pick_items_is_seeded_and_skips_negatives_and_swaps():
    items = [loc(i) for i in range(10)] + [loc(20, negative=True), loc(21, kind="swap", group="g")]
    a, b = FG.pick_items(items, 4, seed=0), FG.pick_items(items, 4, seed=0)
    assert [it.id for it in a] == [it.id for it in b] and len(a) == 4
    assert all(it.extra["kind"] == "loc" and not it.negative for it in a)
    assert [it.id for it in FG.pick_items(items, 10, seed=1)] != [it.id for it in FG.pick_items(items, 10, seed=0)]
    assert [it.id for it in FG.pick_items(items, 4, seed=0)] == FG.hash_order([it.id for it in items[:10]], 0)[:4]


def test_pick_swap_groups_orders_queries_and_needs_two():
    items = [loc(1, "swap", group="g1", sounding=1), loc(2, "swap", group="g1", sounding=0),
             loc(3, "swap", group="g2", sounding=0), loc(4)]
    groups = FG.pick_swap_groups(items, 5, seed=0)
    assert len(groups) == 1                                        # g2 has one query only
    assert [q.extra["sounding"] for q in groups[0]] == [0, 1]


def test_main_runs_catalogue_fallback_and_full_only():
    cat = {"ours": {"method": "ours", "train_set": "train"}, "ezvsl": {"method": "ezvsl", "train_set": "train"},
           "abl_B": {"method": "ours", "train_set": "train"},
           "single_ours": {"method": "ours", "train_set": "single_train"}}
    train = {"checkpoints": {k: f"ck/{k}.pt" for k in cat}, "catalogue": cat,
             "full_only": {"slavc": {"method": "slavc", "train_set": "train", "command": "make book PROFILE=full"}}}
    runs, missing = FG.main_runs(train)
    assert list(runs) == ["ours", "ezvsl"] and runs["ezvsl"]["checkpoint"] == "ck/ezvsl.pt"
    assert "full profile only" in missing["slavc"]
    old_layout = {"checkpoints": {"ezvsl": "e.pt", "ours": "o.pt"}, "runs": {"ezvsl": {"method": "ezvsl"}}}
    runs, missing = FG.main_runs(old_layout)
    assert list(runs) == ["ours", "ezvsl"] and not missing


def test_strongest_baseline_reads_the_results():
    rows = [("test_seen", m, "localization", k, v) for m, c, a in
            [("ours", 0.5, 0.5), ("lvs", 0.3, 0.4), ("ezvsl", 0.3, 0.45), ("slavc", 0.9, 0.9)]
            for k, v in (("ciou@0.5", c), ("auc", a))]
    res = pd.DataFrame(rows, columns=["test_set", "model", "family", "metric", "value"])
    runs = {m: {"method": m, "checkpoint": ""} for m in ("ours", "lvs", "ezvsl")}   # slavc not trained here
    assert FG.strongest_baseline(res, runs) == "ezvsl"                              # tie on cIoU, better AUC
    assert FG.strongest_baseline(res, {"ours": runs["ours"]}) is None


# ------------------------------------------------------------------------------ maps and hits
def test_batch_maps_on_a_tiny_random_model():
    torch.manual_seed(0)
    model = AVModel(ModelConfig(width=0.125)).eval()
    trunk = ResNet18Trunk(3, 8).eval()
    out = FG.batch_maps(model, torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 48), ogl_trunk=trunk)
    assert out["maps"].shape == out["objectness"].shape == out["ogl"].shape == (2, 2, 2)
    assert np.abs(out["maps"]).max() <= 1 + 1e-5 and (out["objectness"] >= 0).all()


def test_display_maps_peaks_hits_and_ogl():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 0] = 1.0                                  # peak on the left half
    maps[1, 2, 3] = 1.0                                  # peak on the right half
    disp = FG.display_maps(maps)
    assert disp.shape == (2, 224, 224) and disp.min() >= 0 and disp.max() == pytest.approx(1.0)
    assert FG.peak_hits(disp, [[LEFT], [LEFT]]).tolist() == [True, False]
    assert FG.peak_object(disp[1], OBJS) == "car"
    assert FG.peak_object(disp[0], [OBJS[1]]) == "background"
    obj = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    assert np.allclose(FG.ogl_maps(maps, obj, alpha=1.0), disp, atol=1e-6)         # α = 1: the map alone
    assert np.allclose(FG.ogl_maps(maps, obj, alpha=0.0), FG.display_maps(obj), atol=1e-6)
    with pytest.raises(ValueError):
        FG.ogl_maps(maps, obj, mode="other")


def test_figure_grids_on_fake_items(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    items = [loc(0), loc(1, sounding=1)]
    d = FG.display_maps(rng.random((2, 3, 3)).astype(np.float32))
    fig = FG.heatmap_grid(images, items, [("a", d), ("b", d)], title="t")
    assert len(fig.axes) == 2 * 3
    png = FG.save_png(fig, tmp_path / "f3.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    queries = [loc(2, "swap", group="s-swap-00002", sounding=0), loc(3, "swap", group="s-swap-00002", sounding=1)]
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 0] = maps[1, 1, 3] = 1.0                  # follows the sound: left, then right
    fig, hits = FG.swap_grid([(images[0], queries)], {"ours": [FG.display_maps(maps)],
                                                      "blind": [FG.display_maps(maps[[0, 0]])]})
    assert len(fig.axes) == 2 * 3
    assert hits["ours"][0].tolist() == [True, True] and hits["blind"][0].tolist() == [True, False]


# ------------------------------------------------------------------------------ on runs/smoke
SMOKE = ROOT / "runs" / "smoke"


@pytest.mark.skipif(not (SMOKE / "results" / "eval" / "test_seen").exists()
                    or not (ROOT / "data" / "avscenes" / "smoke" / "test_seen" / "manifest.jsonl").exists(),
                    reason="runs/smoke outputs or data/avscenes/smoke missing")
def test_smoke_swap_hits_match_the_evaluator():
    from avsl_core.data.manifest import read_manifest
    from avsl_core.provenance import file_sha256
    train = json.loads((SMOKE / "results" / "train.json").read_text())
    runs, _ = FG.main_runs(train)
    name = next(n for n, r in runs.items() if r["method"] == "ours")
    ref = json.loads((SMOKE / "results" / "eval" / "test_seen" / f"{name}.json").read_text())
    ckpt = runs[name]["checkpoint"]
    if ref.get("checkpoint", {}).get("sha256") != file_sha256(ckpt):
        pytest.skip("runs/smoke results were computed from another checkpoint")
    d = ROOT / "data" / "avscenes" / "smoke" / "test_seen"
    groups = FG.pick_swap_groups(read_manifest(d / "manifest.jsonl", d), 10 ** 6)
    queries = [q for g in groups for q in g]
    model, tcfg = FG.load_run(ckpt)
    out = FG.item_maps(model, tcfg, queries, d)
    disp = FG.display_maps(out["maps"], ref["config"]["protocol"])
    hits = FG.peak_hits(disp, [q.boxes for q in queries])
    assert len(queries) == ref["metrics"]["swap"]["n_queries"]
    assert hits.mean() == pytest.approx(ref["metrics"]["swap"]["query_accuracy"])
