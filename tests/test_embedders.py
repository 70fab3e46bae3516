"""Mining embedders: the two trained analogues on a synthetic asset pool, NT-Xent, checkpoints,
external embeddings and the local-weights ImageNet ResNet18."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avsl_core.data.compose import Cutout, Pool, Recording
from avsl_core import embedders
from avsl_core.data.manifest import ManifestItem
from avsl_core.embedders import (EmbedderConfig, ImageNetResNet18, TrunkEmbedder, composite_bank,
                                 load_external, load_or_train, mine_positives, nt_xent,
                                 train_embedder,
                                 training_pool)
from avsl_core.errors import DataError
from avsl_core.mining import knn_self, precision_at_k, random_precision

SR = 16000
CATS = ("red", "green", "blue")


def synth_pool() -> Pool:
    """Three categories told apart by colour+shape and by tone pitch; two files each."""
    yy, xx = np.mgrid[:40, :40]
    shapes = [(yy - 20) ** 2 + (xx - 20) ** 2 < 18 ** 2, np.ones((40, 40), bool), yy > np.abs(xx - 20) * 2]
    cols = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]
    t = np.arange(int(1.5 * SR)) / SR
    images, audio = {}, {}
    for ci, c in enumerate(CATS):
        images[c], audio[c] = [], []
        for j in range(2):
            a = np.zeros((40, 40, 4), np.uint8)
            a[..., :3] = np.array(cols[ci]) * (0.8 + 0.2 * j)
            a[..., 3] = shapes[ci] * 255
            images[c].append(Cutout(f"{c}{j}", c, a))
            w = 0.3 * np.sin(2 * np.pi * (300 * 4 ** ci) * (1 + 0.05 * j) * t)
            audio[c].append(Recording(f"{c}a{j}", c, w.astype(np.float32)))
    rng = np.random.default_rng(0)
    bgs = [rng.integers(60, 200, (80, 80, 3)).astype(np.uint8) for _ in range(3)]
    return Pool(categories=CATS, images=images, audio=audio, backgrounds=bgs, ambience=[], train=True,
                n_objects=(1, 1))


def cfg(kind, modality, **kw):
    base = dict(kind=kind, modality=modality, width=0.125, image_size=32, steps=25, batch_size=16,
                bank_size=60, audio_seconds=0.5, embed_audio_seconds=1.0, seed=0)
    return EmbedderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory):
    """A tiny rendered 'manifest': 12 composites of the pool with a tone of the same category."""
    root = tmp_path_factory.mktemp("set")
    pool = synth_pool()
    imgs, ys = composite_bank(pool, 12, 32, seed=5)
    items = []
    t = np.arange(SR) / SR
    for i, (im, y) in enumerate(zip(imgs, ys)):
        Image.fromarray(im).save(root / f"{i}.png")
        sf.write(root / f"{i}.wav", 0.3 * np.sin(2 * np.pi * 300 * 4 ** y * 1.02 * t), SR, subtype="PCM_16")
        items.append(ManifestItem(id=f"s{i}", image=f"{i}.png", audio=f"{i}.wav", category=CATS[y]))
    return root, items, pool


def test_nt_xent_hand_computed():
    z = torch.eye(2)                         # B = 2 orthogonal views, identical partners
    # row 0 of [e1, e2, e1, e2]: sims (-inf, 0, 1, 0) / tau=1, target 2 -> log((e + 2) / e)
    assert nt_xent(z, z, 1.0).item() == pytest.approx(math.log((math.e + 2) / math.e), rel=1e-5)


def test_composite_bank_is_deterministic_and_labelled():
    pool = synth_pool()
    a, ya = composite_bank(pool, 20, 32, seed=1)
    embedders._BANKS.clear()                                            # render again, not from memory
    b, yb = composite_bank(pool, 20, 32, seed=1)
    assert composite_bank(pool, 20, 32, seed=1)[0] is b                 # memoised for the next analogue
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb) and set(ya) <= {0, 1, 2}
    red = a[ya == 0].reshape(-1, 3).astype(int)        # red composites hold red pixels
    assert ((red[:, 0] > 150) & (red[:, 1] < 80)).any()


@pytest.mark.parametrize("kind,modality", [("supervised", "image"), ("supervised", "audio"),
                                           ("ssl", "image"), ("ssl", "audio")])
def test_analogues_train_and_embed(kind, modality, scene_set):
    torch.set_num_threads(1)
    root, items, pool = scene_set
    model, losses = train_embedder(cfg(kind, modality), pool, log=lambda *_: None)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])                  # the loss falls
    emb = model.embed(items, root, batch_size=5)
    assert emb.shape == (12, model.dim) == (12, 64) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    if kind == "supervised" and modality == "audio":   # pure tones: neighbours share the category
        lab = [it.category for it in items]
        assert precision_at_k(knn_self(emb, 2), lab) > random_precision(lab) + 0.3


def test_checkpoint_round_trip_with_weights_only(tmp_path, scene_set):
    root, items, pool = scene_set
    c = cfg("supervised", "audio", steps=2)
    m = load_or_train(c, tmp_path, assets=_Assets(pool), assets_root=None,
                      log=lambda *_: None)
    again_logs = []
    m2 = load_or_train(c, tmp_path, assets=_Assets(pool), assets_root=None, log=again_logs.append)
    assert "reusing" in again_logs[0] and m2.classes == tuple(sorted(CATS))
    ck = torch.load(tmp_path / "supervised_audio.pt", weights_only=True)   # plain tensors + config
    assert ck["config"]["kind"] == "supervised"
    assert np.allclose(m.embed(items[:3], root), m2.embed(items[:3], root), atol=1e-6)
    logs = []
    load_or_train(cfg("supervised", "audio", steps=3), tmp_path, assets=_Assets(pool), assets_root=None,
                  log=logs.append)
    assert "retraining" in logs[0]
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="broken.pt"):
        TrunkEmbedder.load(tmp_path / "broken.pt")


class _Assets:
    """The attributes of avsl_core.data.avscenes.Assets that training_pool reads."""
    def __init__(self, pool):
        self.images = {(c, "train"): pool.images[c] for c in pool.categories}
        self.audio = {(c, "train"): pool.audio[c] for c in pool.categories}
        self.backgrounds = {"train": pool.backgrounds}
        self.ambience = {}
        self.index_path = "index.csv"


def test_training_pool_selects_train_files_and_checks_categories():
    a = _Assets(synth_pool())
    a.images[("dog", "test")] = a.images[("red", "train")]            # test-only: not a category
    pool = training_pool(a)
    assert pool.categories == tuple(sorted(CATS)) and pool.n_objects == (1, 1)
    with pytest.raises(DataError, match="cat"):
        training_pool(a, categories=("red", "cat"))


def test_external_embeddings_checked_and_reordered(tmp_path):
    ids = ["a", "b", "c"]
    e = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    np.savez(tmp_path / "clip.npz", ids=np.array(["c", "a", "b"]), image=e)
    assert np.array_equal(load_external(tmp_path / "clip.npz", ids, "image"), e[[1, 2, 0]])
    np.save(tmp_path / "w2c.npy", e)
    assert np.array_equal(load_external(tmp_path / "w2c.npy", ids), e)
    (tmp_path / "w2c.npy.ids.txt").write_text("a\nb\nx\n")
    with pytest.raises(DataError, match=r"w2c.npy field 'ids': ids do not match .*'c'.*'x'"):
        load_external(tmp_path / "w2c.npy", ids)
    with pytest.raises(DataError, match="has 3 rows, the manifest has 2"):
        load_external(tmp_path / "clip.npz", ids[:2], "image")
    bad = e.copy()
    bad[1] = np.nan
    np.savez(tmp_path / "nan.npz", ids=np.array(ids), embeddings=bad)
    with pytest.raises(DataError, match=r"nan.npz row 1: .*NaN.*id 'b'"):
        load_external(tmp_path / "nan.npz", ids, "audio")
    bad[1] = 0
    np.savez(tmp_path / "zero.npz", ids=np.array(ids), embeddings=bad)
    with pytest.raises(DataError, match=r"zero.npz row 1: .*all zero"):
        load_external(tmp_path / "zero.npz", ids)
    np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a", "b"]), embeddings=e)
    with pytest.raises(DataError, match="duplicate id 'a'"):
        load_external(tmp_path / "dup.npz", ids)
    with pytest.raises(DataError, match="not found"):
        load_external(tmp_path / "none.npz", ids)


def test_imagenet_resnet18_from_local_weights_only(tmp_path, scene_set):
    with pytest.raises(DataError, match="never downloads"):
        ImageNetResNet18(tmp_path / "resnet18-f37072fd.pth")
    import torchvision
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    root, items, _ = scene_set
    emb = ImageNetResNet18(tmp_path / "r18.pth", image_size=64).embed(items[:4], root)
    assert emb.shape == (4, 512) and np.isfinite(emb).all()
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="do not fit"):
        ImageNetResNet18(tmp_path / "other.pth")


def test_mine_positives_end_to_end_and_cached(tmp_path, scene_set):
    from avsl_core.data.manifest import write_manifest
    root, items, pool = scene_set
    man = root / "manifest.jsonl"
    write_manifest(man, items)
    ext = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    np.savez(tmp_path / "clip.npz", ids=np.array([it.id for it in items]), image=ext)
    kw = dict(kinds=("supervised",), k=3, assets=_Assets(pool), assets_root=None,
              embedder={"width": 0.125, "image_size": 32, "steps": 3, "batch_size": 8, "bank_size": 16,
                        "audio_seconds": 0.5, "embed_audio_seconds": 1.0},
              external={("clip", "image"): tmp_path / "clip.npz"})
    logs = []
    tables = mine_positives(man, tmp_path / "mining", log=logs.append, **kw)
    assert set(tables) == {("supervised", "image"), ("supervised", "audio"), ("clip", "image")}
    assert all(t.indices.shape == (12, 3) and t.indices.dtype == np.int32 for t in tables.values())
    assert np.array_equal(tables[("clip", "image")].indices, knn_self(ext, 3))
    logs.clear()
    again = mine_positives(man, tmp_path / "mining", log=logs.append, **kw)
    assert logs and all("reusing" in m for m in logs)                  # nothing retrained or rebuilt
    assert np.array_equal(again[("supervised", "audio")].indices, tables[("supervised", "audio")].indices)


def test_training_pool_from_a_real_asset_cache(tmp_path):
    from fixtures_assets import CATEGORIES, make_fake_assets
    from avsl_core.data.avscenes import load_assets
    from avsl_core.data.compose import ComposerConfig
    assets_root, splits = make_fake_assets(tmp_path)
    assets = load_assets(assets_root, ComposerConfig(image_size=32), splits_path=splits)
    pool = training_pool(assets)
    assert pool.categories == CATEGORIES                               # all, heard and unheard
    assert all(len(pool.images[c]) == 2 and len(pool.audio[c]) == 2 for c in CATEGORIES)  # train files
    assert all(r.asset_id.endswith(("-0", "-1")) for c in CATEGORIES for r in pool.audio[c])
    assert len(pool.ambience) == 1 and len(pool.backgrounds) == 2
    heard = training_pool(assets, categories=tuple(CATEGORIES[:5]))
    model, losses = train_embedder(cfg("supervised", "image", steps=2, bank_size=8), heard,
                                   log=lambda *_: None)
    assert model.classes == CATEGORIES[:5] and model.head.out_features == 5
