"""AVScenes render (sets, negatives, swap groups, file separation, idempotence) and the torch datasets."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from avsl_core.data.avscenes import AVScenesConfig, build
from avsl_core.data.datasets import TestDataset, TrainDataset, boxes_to_map, collate
from avsl_core.data.manifest import read_manifest
from fixtures_assets import SPLITS, make_fake_assets

S = 64
SIZES = dict(profile="tiny", seed=0, image_size=S, n_train=16, n_test=8, n_negatives=4,
             n_swap_images=3, n_single_train=6, n_single_test=5, workers=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scenes")
    assets, splits = make_fake_assets(tmp)
    report = build(SIZES, assets, tmp / "avscenes", splits_path=splits, log=lambda *a: None)
    return dict(assets=assets, splits=splits, out=tmp / "avscenes" / "tiny", report=report)


def _items(built, set_name):
    d = built["out"] / set_name
    return read_manifest(d / "manifest.jsonl", root=d, check_files=True), d


def _split_of(built):
    import pandas as pd
    df = pd.read_csv(built["assets"] / "index.csv", dtype=str, keep_default_na=False)
    return dict(zip(df.asset_id, df.split))


def test_sets_and_counts(built):
    sets = built["report"]["sets"]
    assert set(sets) == {"train", "test_seen", "test_heldout", "test_unheard_split1",
                         "test_unheard_split2", "single_train", "single_test"}
    assert sets["train"]["n_items"] == 16 and sets["single_test"]["n_items"] == 5
    for name in ("test_seen", "test_heldout", "test_unheard_split1", "test_unheard_split2"):
        k = sets[name]["kinds"]
        assert (k["loc"], k["offscreen"], k["silent"]) == (8, 2, 2) and k["swap"] >= 6
        assert len(sets[name]["sounding_area_quartiles"]) == 3
    assert built["report"]["skipped"] is False


def test_boxes_match_mask_files_and_audio_lengths(built):
    for set_name, seconds in (("train", 4.0), ("test_seen", 3.0)):
        items, d = _items(built, set_name)
        for it in items:
            assert sf.info(d / it.audio).samplerate == 16000
            assert sf.info(d / it.audio).frames == int(seconds * 16000)
            if it.negative:
                continue
            m = np.asarray(Image.open(d / it.mask)) > 0
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert it.boxes == ((cols[0] / S, rows[0] / S, (cols[-1] + 1) / S, (rows[-1] + 1) / S),)
            assert it.category == it.extra["objects"][it.extra["sounding"]]["category"]


def test_swap_groups(built):
    items, _ = _items(built, "test_heldout")
    groups = defaultdict(list)
    for it in items:
        if it.extra["kind"] == "swap":
            groups[it.group].append(it)
    assert len(groups) == 3
    for g, its in groups.items():
        assert len({it.image for it in its}) == 1                     # one image per group
        objs = its[0].extra["objects"]
        assert len(its) == len(objs) >= 2                              # one item per visible object
        assert sorted(it.extra["sounding"] for it in its) == list(range(len(objs)))
        assert sorted(it.category for it in its) == sorted(o["category"] for o in objs)
        assert len({it.audio for it in its}) == len(its)


def test_negatives(built):
    for set_name in ("test_seen", "test_unheard_split2"):
        items, _ = _items(built, set_name)
        negs = [it for it in items if it.negative]
        assert len(negs) == 4 and all(it.extra["kind"] in ("offscreen", "silent") for it in negs)
        for it in negs:
            visible = {o["category"] for o in it.extra["objects"]}
            assert it.boxes == () and it.mask is None and it.category not in visible
            assert (it.category is None) == (it.extra["kind"] == "silent")


def test_train_test_file_separation_and_categories(built):
    split_of = _split_of(built)
    heard1, unheard1 = set(SPLITS["split1"]["heard"]), set(SPLITS["split1"]["unheard"])

    def assets_of(set_name):
        items, _ = _items(built, set_name)
        ids = {it.extra["audio_asset_id"] for it in items} - {None}
        ids |= {o["asset_id"] for it in items for o in it.extra["objects"]}
        cats = {o["category"] for it in items for o in it.extra["objects"]}
        return ids, cats

    for name in ("train", "single_train", "test_seen", "single_test"):
        ids, cats = assets_of(name)
        assert {split_of[i] for i in ids} == {"train"} and cats <= heard1
    ids, cats = assets_of("test_heldout")
    assert {split_of[i] for i in ids} == {"test"} and cats <= heard1
    ids, cats = assets_of("test_unheard_split1")
    assert cats <= unheard1 and not cats & heard1
    ids, cats = assets_of("test_unheard_split2")
    assert cats <= set(SPLITS["split2"]["unheard"])
    items, _ = _items(built, "train")
    assert all(it.split == "train" for it in items)


def test_build_is_idempotent(built, tmp_path):
    manifest = built["out"] / "train" / "manifest.jsonl"
    before = manifest.stat().st_mtime_ns
    again = build(SIZES, built["assets"], built["out"].parent, splits_path=built["splits"],
                  log=lambda *a: None)
    assert again["skipped"] is True and manifest.stat().st_mtime_ns == before
    assert json.loads((built["out"] / "report.json").read_text())["key"] == again["key"]
    # a lost set is re-rendered alone (resume); the others are left untouched
    import shutil
    shutil.rmtree(built["out"] / "single_test")
    resumed = build(SIZES, built["assets"], built["out"].parent, splits_path=built["splits"],
                    log=lambda *a: None)
    assert resumed["skipped"] is False and (built["out"] / "single_test" / "manifest.jsonl").is_file()
    assert manifest.stat().st_mtime_ns == before
    assert not list(built["out"].glob(".tmp-*"))
    # a config change re-renders (into another profile folder here, to keep the fixture intact)
    other = build(dict(SIZES, profile="tiny2", n_train=4, n_test=2, n_negatives=0, n_swap_images=0,
                       n_single_train=1, n_single_test=1), built["assets"], tmp_path,
                  splits_path=built["splits"], log=lambda *a: None)
    assert other["skipped"] is False and other["sets"]["train"]["n_items"] == 4


def test_config_from_profile_dict():
    cfg = AVScenesConfig.from_dict(dict(SIZES, gain_db=3.0, notebook_only_param=1))
    assert cfg.n_test == 8 and cfg.composer_config().gain_db == 3.0
    assert cfg.composer_config().image_size == S


def test_train_dataset_views(built):
    d = built["out"] / "train"
    n = 16
    table = np.full((n, 3), 5, dtype=np.int32)                         # every neighbour is item 5
    ds = TrainDataset(d / "manifest.jsonl", image_size=S, neighbours=table)
    s = ds[2]
    assert s["image"].shape == s["image_aug"].shape == s["image_conc"].shape == (3, S, S)
    assert s["spec"].shape == s["spec_aug"].shape == s["spec_conc"].shape == (1, 64, 94)
    assert torch.equal(s["image_conc"], ds[5]["image"]) and torch.equal(s["spec_conc"], ds[5]["spec"])
    assert not torch.equal(s["spec"], s["spec_aug"])                   # time-shifted window
    lo = (0 - 0.485) / 0.229
    hi = (1 - 0.406) / 0.225
    assert lo - 1e-4 <= s["image"].min() and s["image"].max() <= hi + 1e-4
    assert torch.isfinite(s["spec_aug"]).all() and s["index"] == 2 and s["id"] == ds.items[2].id
    plain = TrainDataset(d / "manifest.jsonl", image_size=S, frontend="ezvsl")
    p = plain[0]
    assert "image_conc" not in p and p["spec"].shape == (1, 257, 200)
    bare = TrainDataset(d / "manifest.jsonl", image_size=S, augment=False)[0]
    assert set(bare) == {"index", "id", "image", "spec"}
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image_aug"].shape == (4, 3, S, S) and batch["index"].dtype == torch.long


def test_test_dataset_gt_maps(built):
    d = built["out"] / "test_seen"
    box = TestDataset(d / "manifest.jsonl", image_size=S, frontend="official")
    mask = TestDataset(d / "manifest.jsonl", image_size=S, gt="mask", gt_size=32)
    for i, it in enumerate(box.items):
        s = box[i]
        assert s["spec"].shape == (1, 257, 299) and s["gt_map"].shape == (S, S)
        if it.negative:
            assert s["gt_map"].sum() == 0 and mask[i]["gt_map"].sum() == 0
            continue
        x1, y1, x2, y2 = it.boxes[0]
        assert s["gt_map"].sum() == pytest.approx(round((x2 - x1) * S) * round((y2 - y1) * S))
        m = np.asarray(Image.open(d / it.mask).resize((32, 32), Image.Resampling.NEAREST)) > 0
        assert np.array_equal(mask[i]["gt_map"].numpy() > 0, m)
    batch = collate([box[i] for i in range(len(box))])
    assert batch["gt_map"].shape == (len(box), S, S) and isinstance(batch["boxes"], list)
    assert batch["negative"].dtype == torch.bool and batch["negative"].sum() == 4


def test_boxes_to_map_hand_case():
    m = boxes_to_map([(0.25, 0.0, 0.5, 0.5), (0.0, 0.75, 0.125, 1.0)], 8)
    expect = np.zeros((8, 8), np.float32)
    expect[0:4, 2:4] = 1
    expect[6:8, 0:1] = 1
    assert np.array_equal(m, expect)
