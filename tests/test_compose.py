"""AVScenes composer: determinism, exact boxes/masks, VGG-SS area law, categories, negatives, audio."""
from __future__ import annotations

import numpy as np
import pytest

from avsl_core.data.avscenes import load_assets
from avsl_core.data.compose import (ComposerConfig, Pool, Recording, _fit_size, audio_window,
                                    compose_audio, compose_scene, mask_box, sample_area)
from fixtures_assets import make_fake_assets

S = 64


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root, splits = make_fake_assets(tmp_path_factory.mktemp("assets"))
    return load_assets(root, ComposerConfig(image_size=S), splits)


CFG = ComposerConfig(image_size=S)


def test_same_key_same_bytes_other_index_differs(assets):
    a = compose_scene(assets, "train", 7, 3, CFG)
    b = compose_scene(assets, "train", 7, 3, CFG)
    assert a.image.tobytes() == b.image.tobytes() and a.audio.tobytes() == b.audio.tobytes()
    assert [o["mask"].tobytes() for o in a.objects] == [o["mask"].tobytes() for o in b.objects]
    assert a.sounding == b.sounding and a.audio_asset_id == b.audio_asset_id
    c = compose_scene(assets, "train", 8, 3, CFG)
    d = compose_scene(assets, "train", 7, 4, CFG)
    assert c.image.tobytes() != a.image.tobytes() and d.image.tobytes() != a.image.tobytes()
    assert a.image.dtype == np.uint8 and a.image.shape == (S, S, 3)


def test_boxes_are_exact_mask_extents(assets):
    for i in range(40):
        sc = compose_scene(assets, "test_seen", i, 0, CFG, kind="swap" if i % 2 else "scene")
        for o in sc.objects:
            m = o["mask"]
            assert m.shape == (S, S) and m.dtype == bool and m.any()
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert o["box"] == (cols[0] / S, rows[0] / S, (cols[-1] + 1) / S, (rows[-1] + 1) / S)
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert o["area"] == pytest.approx((x2 - x1) * (y2 - y1))


def test_mask_box_hand_case():
    m = np.zeros((8, 8), bool)
    m[2:5, 3:7] = True
    assert mask_box(m) == (3 / 8, 2 / 8, 7 / 8, 5 / 8)
    assert mask_box(np.zeros((4, 4), bool)) is None


def test_area_law_knots_and_fit():
    # u at the 25/50/75 % knots returns the VGG-SS quartile values exactly
    rng = np.random.default_rng(0)
    assert sample_area(rng, CFG, 0.25) == pytest.approx(0.1208)
    assert sample_area(rng, CFG, 0.5) == pytest.approx(0.2532)
    assert sample_area(rng, CFG, 0.75) == pytest.approx(0.4633)
    assert sample_area(rng, CFG, 0.275) == pytest.approx((0.1208 + 0.1462) / 2)
    assert _fit_size(0.25, 1.0, 100, False) == pytest.approx((50, 50))
    # a 4:1 cut-out covering 90 %: spans the width, 90 % of the height, extends past the frame
    assert _fit_size(0.9, 4.0, 100, True) == pytest.approx((360, 90))
    # without cropping it is shrunk to fit instead
    assert _fit_size(0.9, 4.0, 100, False) == pytest.approx((100, 25))


def test_sounding_area_quartiles_match_vggss(assets):
    areas = [(sc := compose_scene(assets, "train", i, 0, CFG)).objects[sc.sounding]["area"]
             for i in range(400)]
    q = np.quantile(areas, [0.25, 0.5, 0.75])
    assert np.abs(q - [0.12, 0.25, 0.46]).max() < 0.03, q


def test_distinct_categories_and_object_counts(assets):
    counts = set()
    for i in range(60):
        sc = compose_scene(assets, "train", i, 1, CFG)
        cats = [o["category"] for o in sc.objects]
        assert len(cats) == len(set(cats)) and 1 <= len(cats) <= 4
        assert set(cats) <= set(assets.pool("train").categories)
        assert sc.audio_category == cats[sc.sounding]
        counts.add(len(cats))
    assert counts == {1, 2, 3, 4}
    for i in range(10):
        assert len(compose_scene(assets, "single_train", i, 0, CFG).objects) == 1


def test_negatives_have_no_visible_sounding_category(assets):
    for i in range(20):
        off = compose_scene(assets, "test_heldout", i, 0, CFG, kind="offscreen")
        assert off.sounding is None and off.audio_category is not None
        assert off.audio_category not in {o["category"] for o in off.objects}
        sil = compose_scene(assets, "test_heldout", i, 0, CFG, kind="silent")
        assert sil.sounding is None and sil.audio_category is None and sil.audio_asset_id is None
        assert np.abs(sil.audio).max() > 0


def test_swap_has_one_clip_per_object(assets):
    for i in range(10):
        sc = compose_scene(assets, "test_unheard_split1", i, 0, CFG, kind="swap")
        assert len(sc.objects) >= 2 and len(sc.swap_audio) == len(sc.objects)
        for o, (audio, aid) in zip(sc.objects, sc.swap_audio):
            assert aid.startswith(f"aud-{o['category']}-")       # fixture ids: aud-<cat>-<k>
            assert o["category"] in ("c5", "c6", "c7")           # split1 unheard only


def test_audio_lengths_levels_and_splits(assets):
    tr = compose_scene(assets, "train", 0, 0, CFG)
    te = compose_scene(assets, "test_heldout", 0, 0, CFG)
    assert tr.audio.shape == (64000,) and te.audio.shape == (48000,)
    assert tr.audio.dtype == np.float32 and np.abs(tr.audio).max() <= 0.99 + 1e-6
    assert assets.split_of[tr.audio_asset_id] == "train"
    assert assets.split_of[te.audio_asset_id] == "test"


def test_test_window_is_highest_energy():
    wave = np.full(16000 * 6, 1e-3, np.float32)
    wave[16000 * 4:16000 * 5] = 0.5                            # a loud second at 4-5 s
    win = audio_window(wave, 48000, None, CFG)
    assert np.count_nonzero(win == 0.5) == 16000              # the whole burst is inside
    short = np.arange(10, dtype=np.float32)
    assert np.array_equal(audio_window(short, 25, None, CFG), np.tile(short, 3)[:25])


def test_train_audio_gain_and_pitch_are_bounded():
    cfg = ComposerConfig(ambience_prob=0.0)
    t = np.arange(16000 * 5) / 16000
    rec = Recording("a", "x", (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    pool = Pool(("x",), {"x": []}, {"x": [rec]}, [], [], train=True)
    for seed in range(5):
        out, aid = compose_audio(np.random.default_rng(seed), pool, "x", cfg, train=True)
        rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
        assert 0.1 * 10 ** (-6 / 20) - 1e-3 <= rms <= 0.1 * 10 ** (6 / 20) + 1e-3
        spec = np.abs(np.fft.rfft(out))
        f = np.argmax(spec) * 16000 / len(out)                  # 1 kHz moved by at most a semitone
        assert 1000 * 2 ** (-1 / 12) - 2 <= f <= 1000 * 2 ** (1 / 12) + 2
