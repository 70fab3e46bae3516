"""A tiny fake AVScenes asset cache (contract 4) for tests: generated cut-outs, tones, backgrounds.

``make_fake_assets(root)`` writes ``root/assets/`` (index.csv + files) and ``root/category_splits.json``
and returns ``(assets_root, splits_path)``. Eight categories, each a distinct shape and colour and a
distinct tone (harmonic stack at its own pitch + a noise band), 3 images (2 train / 1 test) and 3
recordings (2 train / 1 test; the first one 1 s long, so tiling is exercised); 2 backgrounds and 1
ambience recording per split. split1: heard c0-c4, unheard c5-c7; split2: heard c3-c7, unheard c0-c2.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

CATEGORIES = tuple(f"c{i}" for i in range(8))
SPLITS = {"split1": {"heard": list(CATEGORIES[:5]), "unheard": list(CATEGORIES[5:])},
          "split2": {"heard": list(CATEGORIES[3:]), "unheard": list(CATEGORIES[:3])}}
_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 200, 30), (200, 40, 200),
            (30, 200, 210), (240, 140, 20), (120, 80, 40)]
SR = 16000


def _cutout(cat: int, variant: int) -> Image.Image:
    w, h = (60, 40) if variant % 2 == 0 else (36, 56)       # landscape and portrait variants
    img = Image.new("RGBA", (w + 8, h + 8), (0, 0, 0, 0))   # transparent margin
    d = ImageDraw.Draw(img)
    box = (4, 4, w + 3, h + 3)
    col = (*_COLOURS[cat], 255)
    shape = cat % 4
    if shape == 0:
        d.ellipse(box, fill=col)
    elif shape == 1:
        d.rectangle(box, fill=col)
    elif shape == 2:
        d.polygon([(4, h + 3), (w // 2 + 4, 4), (w + 3, h + 3)], fill=col)
    else:
        d.rounded_rectangle(box, radius=10, fill=col)
    d.rectangle((w // 3, h // 3, w // 3 + 6 + variant * 3, h // 3 + 6), fill=(255, 255, 255, 255))
    return img


def _tone(cat: int, variant: int, seconds: float, rng) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150.0 * 2 ** (cat / 2) * (1 + 0.03 * variant)
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(len(t)))
                         * (np.abs(np.fft.rfftfreq(len(t), 1 / SR) - 500 * (cat + 1)) < 200), len(t))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (1 + cat % 3) * t) ** 2
    out = (0.3 * wave + 3.0 * noise) * env
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def _background(variant: int, rng) -> Image.Image:
    h, w = 120, 160
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 150 + 50 * variant], -1)
    arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_fake_assets(root) -> tuple[Path, Path]:
    root = Path(root)
    a = root / "assets"
    for sub in ("images", "audio", "backgrounds", "ambience"):
        (a / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for ci, cat in enumerate(CATEGORIES):
        for v in range(3):
            split = "test" if v == 2 else "train"
            p = f"images/{cat}_{v}.png"
            _cutout(ci, v).save(a / p)
            rows.append(dict(asset_id=f"img-{cat}-{v}", category=cat, modality="image", kind="clipart",
                             path=p, split=split, group=f"img-{cat}-{v}", licence="CC0"))
            p = f"audio/{cat}_{v}.wav"
            sf.write(a / p, _tone(ci, v, 1.0 if v == 0 else 5.0, rng), SR, subtype="PCM_16")
            rows.append(dict(asset_id=f"aud-{cat}-{v}", category=cat, modality="audio", kind="recording",
                             path=p, split=split, group=f"aud-{cat}-{v}", licence="CC0"))
    for v, split in enumerate(("train", "train", "test", "test")):
        p = f"backgrounds/bg{v}.jpg"
        _background(v, rng).save(a / p, quality=90)
        rows.append(dict(asset_id=f"bg-{v}", category="", modality="background", kind="photo", path=p,
                         split=split, group=f"bg-{v}", licence="CC0"))
    for v, split in enumerate(("train", "test")):
        p = f"ambience/amb{v}.wav"
        sf.write(a / p, (0.05 * rng.standard_normal(3 * SR)).astype(np.float32), SR, subtype="PCM_16")
        rows.append(dict(asset_id=f"amb-{v}", category="", modality="ambience", kind="recording", path=p,
                         split=split, group=f"amb-{v}", licence="CC0"))
    with open(a / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    splits_path = root / "category_splits.json"
    splits_path.write_text(json.dumps(SPLITS))
    return a, splits_path
