"""The sound-swap explorer's callbacks on tiny inputs: a random AVModel on a generated two-image test
set (no data needed), the uploads it accepts and refuses, the widget wiring, and the smoke runs."""
import datetime
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avsl_core import explore as E
from avsl_core.errors import DataError
from avsl_core.models import AVModel, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _wav_bytes(wave, sr=16000, fmt="WAV", subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _png_bytes(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model and a manifest: one two-object swap image (two recordings), one loc image."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for name in ("swap", "loc"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    left, right = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]
    objects = [{"category": "dog", "box": left}, {"category": "drum", "box": right}]
    rows = []
    for i, (cat, box) in enumerate([("dog", left), ("drum", right)]):
        sf.write(root / "audio" / f"swap-{i}.wav", 0.3 * rng.standard_normal(8000), 16000)
        rows.append({"id": f"swap-{i}", "image": "images/swap.png", "audio": f"audio/swap-{i}.wav",
                     "category": cat, "boxes": [box], "group": "swap",
                     "extra": {"kind": "swap", "scene": "swap", "objects": objects}})
    sf.write(root / "audio" / "loc.wav", 0.3 * rng.standard_normal(8000), 16000)
    box = [0.2, 0.2, 0.6, 0.8]
    rows.append({"id": "loc", "image": "images/loc.png", "audio": "audio/loc.wav", "category": "dog", "boxes": [box],
                 "extra": {"kind": "loc", "scene": "loc", "objects": [{"category": "dog", "box": box}]}})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    net = AVModel(ModelConfig(width=0.125, vision_stop_at="layer3", head_dim=16)).eval()
    methods = [E.Method("a", net, image_size=32), E.Method("b", net, image_size=48)]
    return E.Explorer.from_manifest(methods, root / "manifest.jsonl")


def test_scenes_sounds_and_swap_sets(tiny):
    assert sorted(tiny.scenes) == ["loc", "swap"] and sorted(tiny.sounds) == ["loc", "swap-0", "swap-1"]
    assert tiny.swap_scenes() == ["swap"]
    assert tiny.categories() == ["dog", "drum"]
    assert tiny.sound_for_category("dog", "swap") == "swap-0"      # the recording made for that image
    assert tiny.sound_for_category("dog", "loc") == "loc"
    with pytest.raises(ValueError, match="no test recording"):
        tiny.sound_for_category("whale")
    # the sound's own box on its image; a box of its category elsewhere; nothing when absent
    assert tiny.expected_boxes("swap", "swap-1") == ((0.5, 0.0, 1.0, 1.0),)
    assert tiny.expected_boxes("swap", "loc") == ((0.0, 0.0, 0.5, 1.0),)
    assert tiny.expected_boxes("loc", "swap-1") == ()


def test_maps_for_every_method(tiny):
    maps = tiny.maps_for("swap", "swap-0")
    assert list(maps) == ["a", "b"]
    assert maps["a"].shape == (2, 2) and maps["b"].shape == (3, 3)   # layer3 stride 16 at 32 / 48 px
    for m in maps.values():
        assert np.isfinite(m).all() and np.abs(m).max() <= 1 + 1e-5
    # a PIL image and a raw wave work the same as keys; a different sound gives a different map
    img = tiny.scenes["swap"].image
    again = tiny.maps_for(img, tiny.sounds["swap-0"].wave)
    np.testing.assert_allclose(again["a"], maps["a"], atol=1e-5)
    assert not np.allclose(tiny.maps_for("swap", "swap-1")["a"], maps["a"])
    with pytest.raises(KeyError):
        tiny.maps_for("nope", "swap-0")


def test_peaks_and_panel(tiny):
    peaks = tiny.peaks("swap", "swap-0")
    for p in peaks.values():
        assert 0 <= p["x"] <= 48 and 0 <= p["y"] <= 40 and isinstance(p["in_box"], bool)
        assert p["in_box"] == (p["x"] <= 24)                        # the dog's box is the left half
    assert all(p["in_box"] is None for p in tiny.peaks("loc", "swap-1").values())
    fig = tiny.render_panel("swap", "swap-1")
    assert len(fig.axes) == 3                                        # image + one overlay per method
    assert "peak" in fig.axes[1].get_title()
    assert E.figure_png(fig).startswith(PNG)
    assert "<table>" in E.peaks_html(peaks) and "yes" in E.peaks_html({"a": dict(x=1, y=2, in_box=True, max=0.5)})


def test_retrieve_ranks_every_image(tiny):
    hits = tiny.retrieve("swap-0", k=5)
    assert len(hits) == 2 and {h["scene"] for h in hits} == {"loc", "swap"}
    assert hits[0]["score"] >= hits[1]["score"]
    assert all(h["match"] is True for h in hits)                   # both images hold a dog
    assert tiny.retrieve("swap-0", k=1, method="b")[0]["scene"] in tiny.scenes
    assert E.figure_png(tiny.render_retrieval("swap-1", k=2)).startswith(PNG)


def test_swap_grid_shape(tiny):
    fig = tiny.swap_grid(n=4, seed=0)
    assert len(fig.axes) == 2 * 1 * 2                               # (methods x images) rows, 2 sounds
    assert fig.axes[0].get_title() == "sound: dog" and fig.axes[1].get_title() == "sound: drum"
    assert len(tiny.swap_grid(["swap"]).axes) == 4
    empty = E.Explorer(list(tiny.methods.values()), [tiny.scenes["loc"]], [tiny.sounds["loc"]])
    with pytest.raises(ValueError, match="no multi-object swap"):
        empty.swap_grid()


def test_load_upload_accepts_any_image_mode_and_audio_format():
    for mode, fmt in [("P", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "BMP")]:
        img = E.load_upload(_png_bytes(Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode), fmt), "image",
                            f"x.{fmt.lower()}")
        assert img.mode == "RGB" and img.size == (20, 10)
    rng = np.random.default_rng(1)
    wave = E.load_upload(_wav_bytes(0.3 * rng.standard_normal((44100, 2)), 44100, subtype="PCM_24"), "audio",
                         "stereo.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 16000
    flac = E.load_upload(_wav_bytes(0.3 * rng.standard_normal(8000), fmt="FLAC"), "audio", "clip.flac")
    assert len(flac) == 8000


@pytest.mark.parametrize("data,kind,problem", [
    (b"", "image", "empty upload"),
    (b"this is not an image", "image", "not a readable image"),
    (PNG + b"\x00" * 20, "image", "image"),
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "audio", "audio"),
    (b"hello", "audio", "unreadable or corrupt audio"),
    (_wav_bytes(np.zeros(1600)), "audio", "silent"),
])
def test_load_upload_refuses_bad_files_naming_them(data, kind, problem):
    with pytest.raises(DataError, match=problem) as e:
        E.load_upload(data, kind, "my_upload.bin")
    assert str(e.value).startswith("my_upload.bin:")


def test_load_upload_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        E.load_upload(b"x", "video")


def test_main_methods_picks_the_main_set():
    train = {"checkpoints": {n: f"runs/p/ckpt/{n}/last.pt" for n in
                             ("abl_H", "ezvsl", "k_10", "ours", "single_ours", "split2_ours", "zz")},
             "catalogue": {"abl_H": {"method": "ours", "train_set": "train"},
                           "ezvsl": {"method": "ezvsl", "train_set": "train"},
                           "k_10": {"method": "ours", "train_set": "train"},
                           "ours": {"method": "ours", "train_set": "train"},
                           "single_ours": {"method": "ours", "train_set": "single_train"},
                           "split2_ours": {"method": "ours", "train_set": "train_split2"}}}
    assert list(E.main_methods(train)) == ["ours", "ezvsl"]
    assert list(E.main_methods({"checkpoints": {"ezvsl": "e", "ours": "o"}})) == ["ours", "ezvsl"]


def test_widget_wires_the_callbacks(tiny):
    w = E.build_widget(tiny, k=2)
    (img_dd, snd_dd), (cat_dd, up_img, up_snd) = w.children[0].children, w.children[1].children
    panel, info, strip = w.children[2], w.children[3], w.children[5]
    assert img_dd.value == "swap" and snd_dd.value == "swap-0"       # opens on a swap query
    assert bytes(panel.value).startswith(PNG) and bytes(strip.value).startswith(PNG) and "<table>" in info.value
    before = bytes(panel.value)
    cat_dd.value = "drum"                                            # category -> that image's drum sound
    assert snd_dd.value == "swap-1" and bytes(panel.value) != before

    def upload(widget, name, data):
        widget.value = ({"name": name, "type": "", "size": len(data), "content": memoryview(data),
                         "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    upload(up_img, "mine.png", _png_bytes(Image.new("RGB", (30, 30), (0, 90, 0))))
    assert img_dd.value == "upload: mine.png" and "upload: mine.png" in tiny.scenes
    upload(up_snd, "mine.wav", _wav_bytes(0.2 * np.random.default_rng(2).standard_normal(4000)))
    assert snd_dd.value == "upload: mine.wav" and "error" not in info.value
    upload(up_snd, "broken.wav", b"garbage")
    assert "upload refused" in info.value and "broken.wav" in info.value
    for key in ("upload: mine.png", "upload: mine.wav"):            # leave the shared fixture as it was
        tiny.scenes.pop(key, None), tiny.sounds.pop(key, None)


SMOKE = ROOT / "runs" / "smoke" / "results" / "train.json"
SMOKE_DATA = ROOT / "data" / "avscenes" / "smoke" / "test_seen" / "manifest.jsonl"


@pytest.mark.skipif(not (SMOKE.exists() and SMOKE_DATA.exists()),
                    reason="smoke runs or data missing: run the smoke pipeline (make test does)")
def test_smoke_runs_explore():
    ex = E.Explorer.from_runs(ROOT / "runs" / "smoke", "test_seen", data_dir=SMOKE_DATA.parent)
    assert list(ex.methods) == list(E.main_methods(json.loads(SMOKE.read_text())))
    swap = ex.swap_scenes()
    assert swap
    snd = next(k for k, s in ex.sounds.items() if s.scene == swap[0])
    maps = ex.maps_for(swap[0], snd)
    assert set(maps) == set(ex.methods) and all(np.isfinite(m).all() for m in maps.values())
    assert len(ex.retrieve(snd, k=3)) == 3
    assert len(ex.swap_grid(n=2, seed=0).axes) >= 2 * len(ex.methods) * 2
