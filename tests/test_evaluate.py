"""End-to-end tests of the unified evaluator on a tiny hand-built manifest (tmp_path)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from avsl_core import evaluate as E
from avsl_core import metrics_extended as X
from avsl_core.data.manifest import ManifestItem, read_manifest, write_manifest
from avsl_core.errors import DataError

S = 224
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
TL, BR = (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)


def _half(side):
    m = np.zeros((S, S), np.float32)
    if side == "left":
        m[:, :S // 2] = 1
    else:
        m[:, S // 2:] = 1
    return m


def _peak(r, c):
    m = np.zeros((S, S), np.float32)
    m[r, c] = 1
    return m


@pytest.fixture
def bench(tmp_path):
    """Items with hand-known cIoU under 'ezvsl' (maps given at 224, so upsampling is the identity)."""
    (tmp_path / "masks").mkdir()
    Image.fromarray((_half("left") * 255).astype(np.uint8)).save(tmp_path / "masks" / "m.png")
    objs = [{"box": list(TL), "category": "dog"}, {"box": list(BR), "category": "cat"}]
    kw = dict(image="images/x.png", audio="audio/x.wav")
    items = [
        ManifestItem(id="a", category="dog", boxes=(LEFT,), **kw),                     # cIoU 1
        ManifestItem(id="b", category="cat", boxes=(LEFT,), **kw),                     # cIoU 0
        ManifestItem(id="c", category="dog", boxes=(LEFT, LEFT, RIGHT), box_annotators=(0, 1, 2), **kw),
        ManifestItem(id="n1", category="dog", negative=True, **kw),
        ManifestItem(id="s-0", category="dog", boxes=(TL,), group="s", extra={"objects": objs, "sounding": 0}, **kw),
        ManifestItem(id="s-1", category="cat", boxes=(BR,), group="s", extra={"objects": objs, "sounding": 1}, **kw),
        ManifestItem(id="m", category="cat", mask="masks/m.png", **kw),
    ]
    write_manifest(tmp_path / "test.jsonl", items)
    ramp = np.tile(-np.arange(S, dtype=np.float32), (S, 1))  # left columns highest
    maps = {"a": _half("left"), "b": _half("right"), "c": _half("left"), "n1": np.zeros((S, S), np.float32),
            "s-0": _peak(10, 10), "s-1": _peak(200, 200), "m": ramp}
    ids = list(maps)
    np.savez(tmp_path / "maps.npz", ids=np.array(ids), maps=np.stack([maps[i] for i in ids]))
    np.savez(tmp_path / "obj.npz", ids=np.array(ids), maps=np.zeros((len(ids), 7, 7), np.float32))
    emb = np.eye(len(ids), dtype=np.float32)
    np.savez(tmp_path / "emb.npz", ids=np.array(ids), audio=emb, image=emb)
    return tmp_path, items, ids, np.stack([maps[i] for i in ids])


def _run(d, *extra):
    out = d / "res.json"
    assert E.main(["--heatmaps", str(d / "maps.npz"), "--manifest", str(d / "test.jsonl"), "--protocol",
                   "ezvsl", "--out", str(out), "--bootstrap", "200", *extra]) == 0
    return json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_cli_hand_worked(bench):
    d, *_ = bench
    r = _run(d, "--embeddings", str(d / "emb.npz"), "--objectness", str(d / "obj.npz"), "--per-item")
    m = r["metrics"]
    cious = dict(zip(r["per_item"]["ids"], r["per_item"]["ciou"]))
    # c: consensus GT left 1 / right 0.5, prediction left -> 25088 / 37632 ; s-*: everything on -> 1/4
    assert cious["a"] == 1 and cious["b"] == 0 and cious["c"] == pytest.approx(2 / 3)
    assert cious["s-0"] == pytest.approx(0.25) and cious["m"] == 1
    loc = m["localization"]
    assert loc["n"] == 6 and loc["ciou@0.5"] == pytest.approx(0.5)
    assert loc["mean_ciou"] == pytest.approx((1 + 0 + 2 / 3 + 0.25 + 0.25 + 1) / 6)
    lo, hi = r["intervals"]["localization"]["ciou@0.5"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert m["pointing"]["accuracy"] == pytest.approx(5 / 6)  # only b points off its object
    assert m["swap"]["query_accuracy"] == 1 and m["swap"]["pair_accuracy"] == 1 and m["swap"]["n_pairs"] == 1
    assert m["object_discrimination"]["accuracy"] == 1 and m["object_discrimination"]["n"] == 2
    # pixel: the ramp's median cut with '>' keeps 111 of the 112 mask columns; F reaches 1 at th = .5
    assert m["pixel"]["miou_dataset"] == pytest.approx(111 / 112) and m["pixel"]["fscore_dataset"] == pytest.approx(1)
    # extended: equals the tested SLAVC function on the per-item scores
    pos = [i != "n1" for i in r["per_item"]["ids"]]
    ref = X.extended_ap_f1(r["per_item"]["confidence"], r["per_item"]["ciou"], pos)
    assert m["extended"]["ap"] == pytest.approx(ref["ap"]) and m["extended"]["n_negative"] == 1
    assert m["retrieval_audio_to_image"]["instance_R@1"] == 1 and m["retrieval_image_to_audio"]["n"] == 6
    # OGL with a flat objectness map changes nothing in the relative fusion
    assert m["ogl_localization"]["ciou@0.5"] == loc["ciou@0.5"] and m["ogl_localization"]["alpha"] == 0.4
    assert r["per_category"]["dog"]["n"] == 3 and r["skipped"]["count"] == 0
    assert r["inputs"]["heatmaps"]["sha256"] == hashlib.sha256((d / "maps.npz").read_bytes()).hexdigest()
    assert isinstance(r["git_commit"], str) and r["protocol"]["name"] == "ezvsl" and r["seed"] == 0


def test_protocol_changes_threshold(bench):
    d, *_ = bench
    r = _run(d, "--per-item")
    r2 = json.loads(json.dumps(r))
    r_lvs = _run(d, "--per-item", "--protocol", "official")  # '>' at the median
    ci = dict(zip(r_lvs["per_item"]["ids"], r_lvs["per_item"]["ciou"]))
    assert ci["a"] == 0  # half 1 / half 0: nothing is > the median value 1
    assert r2["metrics"]["localization"]["ciou@0.5"] != r_lvs["metrics"]["localization"]["ciou@0.5"]


def test_errors_name_the_file(bench, tmp_path):
    d, items, ids, maps = bench
    bad = d / "bad.npz"

    def run(path):
        E.main(["--heatmaps", str(path), "--manifest", str(d / "test.jsonl"), "--out", str(d / "o.json")])
    np.savez(bad, ids=np.array(ids + ["zzz"]), maps=np.concatenate([maps, maps[:1]]))
    with pytest.raises(DataError, match=r"bad\.npz.*not in the manifest"):
        run(bad)
    np.savez(bad, ids=np.array(ids[1:]), maps=maps[1:])
    with pytest.raises(DataError, match=r"bad\.npz.*no map for 1 manifest items"):
        run(bad)
    nan = maps.copy()
    nan[2, 5, 5] = np.nan
    np.savez(bad, ids=np.array(ids), maps=nan)
    with pytest.raises(DataError, match=r"bad\.npz.*NaN.*'c'"):
        run(bad)
    np.savez(bad, ids=np.array(ids), maps=maps[:, 0])
    with pytest.raises(DataError, match=r"bad\.npz.*\[N, h, w\]"):
        run(bad)
    np.savez(bad, ids=np.array(ids, dtype=object), maps=maps)
    with pytest.raises(DataError, match=r"bad\.npz"):
        run(bad)
    assert not (d / "o.json").exists()


def test_allow_missing_counts_skips(bench):
    d, items, ids, maps = bench
    np.savez(d / "maps.npz", ids=np.array(ids[1:]), maps=maps[1:])
    r = _run(d, "--allow-missing")
    assert r["skipped"] == {"count": 1, "reasons": {"no map": 1}, "examples": {"no map": ["a"]}}
    assert r["n_scored"] == 6 and r["n_items"] == 7


class _Dummy:
    """A 'model' whose map and embedding are looked up from the image's first pixel (the item index)."""

    def __init__(self, maps):
        self.maps = torch.from_numpy(maps)

    def localization_map(self, images, specs):
        return self.maps[images[:, 0, 0, 0].long()]

    def embed(self, images, specs):
        e = torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), len(self.maps)).float()
        return e, e


def test_evaluate_model_matches_maps(bench):
    d, items, ids, maps = bench
    loader = []
    for s in range(0, len(ids), 3):
        idx = torch.arange(s, min(s + 3, len(ids)))
        loader.append({"image": idx.float()[:, None, None, None].expand(-1, 3, 8, 8),
                       "spec": torch.zeros(len(idx), 1, 4, 4), "id": [ids[i] for i in idx]})
    cfg = E.EvalConfig(n_bootstrap=50)
    res, rec = E.evaluate_model(_Dummy(maps), loader, items, cfg, root=d, out=d / "model.json")
    ref = E.evaluate_maps(items, ids, maps, cfg, embeddings=(ids, np.eye(7, dtype=np.float32),
                                                             np.eye(7, dtype=np.float32)), root=d)
    assert res["metrics"] == ref["metrics"] and res["intervals"] == ref["intervals"]
    assert rec["maps"].shape == (7, S, S) and rec["category"][0] == "dog"
    assert rec["confidence"][0] == pytest.approx(1.0)  # map 'a': top quarter of (1 + 1)/2
    assert json.loads((d / "model.json").read_text())["n_scored"] == 7


def test_empty_gt_scored_like_the_peers():
    kw = dict(image="i.png", audio="a.wav")
    items = [ManifestItem(id="full", boxes=(LEFT,), **kw),
             ManifestItem(id="empty", extra={"dropped_boxes": 1}, **kw),  # VGG-SS: all boxes degenerate
             ManifestItem(id="unannotated", **kw)]
    maps = np.stack([_half("left")] * 3)
    r = E.evaluate_maps(items, ["full", "empty", "unannotated"], maps, E.EvalConfig(n_bootstrap=0, per_item=True))
    assert r["per_item"]["ids"] == ["full", "empty"] and r["per_item"]["ciou"] == [1.0, 0.0]
    assert r["metrics"]["localization"]["n_empty_gt"] == 1 and r["metrics"]["localization"]["ciou@0.5"] == 0.5
    assert r["skipped"]["reasons"] == {"no ground truth (no boxes or mask)": 1}


# ----------------------------------------------------------------------------- checkpoint path
TINY_MODEL = {"width": 0.125, "vision_stop_at": "layer3", "head_dim": 16, "padding_mode": "reflect"}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """An untrained tiny AVModel saved as a trainer checkpoint of a 32-px synthetic run, and a manifest
    of 48-px images and 3 s tones (the loader must resize to the checkpoint's 32 px)."""
    import soundfile as sf

    from avsl_core import train as T
    from avsl_core.models import AVModel, ModelConfig
    torch.manual_seed(0)
    cfg = T.TrainConfig.from_dict(dict(model=TINY_MODEL, data={"kind": "synthetic", "image_size": 32,
                                                                "options": {"n": 8}}))
    model = AVModel(ModelConfig.from_dict(TINY_MODEL))
    ck = tmp_path / "last.pt"
    torch.save({"format": T.CKPT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
                "model_config": cfg.model_config.to_dict(), "step": 7, "git_commit": "abc123",
                "stop_reason": "completed"}, ck)
    rng = np.random.default_rng(0)
    d = tmp_path / "set"
    (d / "images").mkdir(parents=True)
    (d / "audio").mkdir()
    items = []
    for i in range(6):
        img = np.full((48, 48, 3), 40, np.uint8)
        img[8 + 4 * i:30 + 2 * i, 10:34] = (200, 50 + 30 * i, 60)
        Image.fromarray(img).save(d / "images" / f"{i}.png")
        t = np.arange(3 * 16000) / 16000
        sf.write(d / "audio" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)
                                            + 0.01 * rng.standard_normal(t.size)).astype(np.float32), 16000)
        items.append(ManifestItem(id=f"i{i}", image=f"images/{i}.png", audio=f"audio/{i}.wav",
                                  category="a" if i % 2 else "b", negative=(i == 5),
                                  boxes=() if i == 5 else ((10 / 48, (8 + 4 * i) / 48, 34 / 48, (30 + 2 * i) / 48),)))
    write_manifest(d / "test.jsonl", items)
    return ck, d / "test.jsonl", model


def test_checkpoint_cli_records_floors_and_provenance(tiny_checkpoint, tmp_path):
    ck, manifest, model = tiny_checkpoint
    out, rec = tmp_path / "res.json", tmp_path / "rec.npz"
    assert E.main(["--checkpoint", str(ck), "--manifest", str(manifest), "--out", str(out), "--protocol",
                   "official", "--bootstrap", "50", "--floors", "--records", str(rec),
                   "--objectness-checkpoint", str(ck)]) == 0
    r = json.loads(out.read_text())
    c = r["checkpoint"]
    assert c["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest() and c["method"] == "ours"
    assert c["step"] == 7 and c["train_git_commit"] == "abc123" and c["train_config"]["data"]["image_size"] == 32
    assert isinstance(r["git_commit"], str) and r["seed"] == 0 and r["protocol"]["name"] == "official"
    assert r["inputs"]["manifest"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    loc = r["metrics"]["localization"]
    assert loc["n"] == 5 and r["metrics"]["extended"]["n_negative"] == 1 and "ogl_localization" in r["metrics"]
    assert r["metrics"]["retrieval_audio_to_image"]["n"] == 5
    assert set(r["floors"]) == {"centre_prior", "random", "visual_objectness"}
    assert all(f["n_scored"] == 6 for f in r["floors"].values())
    # the records are the model's maps at the checkpoint's 32 px (not the loader default), re-scorable
    z = np.load(rec)
    from avsl_core.data.datasets import TestDataset
    ds = TestDataset(manifest, image_size=32, frontend="logmel")
    b = [ds[i] for i in range(6)]
    with torch.no_grad():
        direct = model.eval().localization_map(torch.stack([x["image"] for x in b]), torch.stack([x["spec"] for x in b]))
    assert list(z["ids"]) == [f"i{i}" for i in range(6)]
    np.testing.assert_allclose(z["maps"], direct.numpy(), atol=1e-6)
    out2 = tmp_path / "res2.json"
    assert E.main(["--heatmaps", str(rec), "--manifest", str(manifest), "--out", str(out2), "--protocol",
                   "official", "--bootstrap", "50"]) == 0
    assert json.loads(out2.read_text())["metrics"]["localization"] == loc
    # the floor of a map that ignores the audio: the model's objectness scored as a localization map
    with torch.no_grad():
        obj = model.visual_objectness(torch.stack([x["image"] for x in b])).numpy()
    ref = E.evaluate_maps(read_manifest(manifest), list(z["ids"]), obj, E.EvalConfig(protocol="official", n_bootstrap=50))
    assert r["floors"]["visual_objectness"]["metrics"]["localization"] == pytest.approx(ref["metrics"]["localization"])


def test_checkpoint_errors_name_the_file(tiny_checkpoint, tmp_path):
    ck, manifest, _ = tiny_checkpoint
    with pytest.raises(DataError, match=r"test\.jsonl.*not a loadable checkpoint"):
        E.main(["--checkpoint", str(manifest), "--manifest", str(manifest), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit):
        E.main(["--checkpoint", str(ck), "--manifest", str(manifest), "--embeddings", "x.npz"])
