"""AVScenes scene composer: cut-outs of distinct categories on real photo backgrounds, one sounding.

SPEC §3 "Scenes" and notes/asset_sources.md §5.2. A scene is 1–4 RGBA cut-outs of different
categories pasted on a square crop of a background photo, with exact per-object boxes and masks
(alpha > 127 after every transform), and 3 s of 16 kHz audio from a recording of one visible object's
category (the sounding object). Everything is a pure function of (set, kind, index, seed).

Object scale. The sounding object's *box area* (fraction of the image) is drawn from the ground-truth
areas of VGG-SS (``VGGSS_AREA_QUANTILES``: 5 %-step quantiles of the union-of-boxes maps of the 5158
items of ``vggss.json``; quartiles 12 %, 25 %, 46 %) by inverse-CDF interpolation. Under the peers'
top-50 % threshold, cIoU >= 0.5 needs a ground truth of at least 25 % of the image, so small objects
would zero every method. Objects are placed in random order; the other objects draw from the same
law and are shrunk until they fit with box overlap <= ``max_overlap`` of the smaller box (dropped
below ``min_other_area``); the sounding object keeps its drawn area (if the objects before it left
no room, the layout is redone with it first). When that area needs a box wider or taller than the
image (large areas, elongated cut-outs) the cut-out extends past the frame, as objects do in video
frames, and the box is its visible extent. A scene cannot hold several VGG-SS-sized objects, so in
multi-object scenes the sounding object is the largest more often than 1/k (about 0.6 against 0.37
on the fake assets; a third of its areas exceed 50 % of the image, which leaves the others smaller):
``build`` reports this rate per set, and the visual-only floors show what it is worth. Objects are
pasted in random depth order; masks are the full (amodal) alpha masks, boxes their exact extents.

Augmentation at composition time (the few training files need it): horizontal flip, rotation
±``rotation_deg``, anisotropic scale jitter, colour jitter of cut-outs and backgrounds; audio: random
energetic window (tiled if short), ±``gain_db`` gain, ±``pitch_semitones`` resampling (pitch and tempo
together), optional ambience bed at 10–30 dB SNR. Test sets use the highest-energy window, no
gain/pitch change and seeded everything else.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# Quantiles (0 %, 5 %, ..., 100 %) of the VGG-SS ground-truth map area (union of boxes at 224 px,
# peer convention), measured on the 5158 items of vggss.json. The 0 % knot (2 empty maps) is raised to
# 2 % so every object has a visible box.
VGGSS_AREA_QUANTILES: tuple[float, ...] = (
    0.02, 0.0328, 0.0542, 0.0739, 0.0967, 0.1208, 0.1462, 0.1719, 0.1969, 0.2257, 0.2532,
    0.2867, 0.3242, 0.3626, 0.4061, 0.4633, 0.5218, 0.5925, 0.6771, 0.7799, 1.0)

KINDS = ("scene", "offscreen", "silent", "swap")


@dataclass(frozen=True)
class ComposerConfig:
    image_size: int = 96                       # S: scenes are S x S RGB
    n_objects: tuple[int, int] = (1, 4)        # inclusive range of objects per scene
    area_quantiles: tuple[float, ...] = VGGSS_AREA_QUANTILES   # equally spaced in probability
    min_other_area: float = 0.02               # smallest area a non-sounding object is shrunk to
    max_overlap: float = 0.1                   # box intersection / smaller box area, pairwise
    place_tries: int = 30                      # random positions tried per size
    scale_jitter: float = 0.15                 # aspect ratio multiplied by exp(U(-j, j))
    flip: bool = True
    rotation_deg: float = 15.0
    colour_jitter: float = 0.25                # brightness/contrast/saturation factors in 1 ± c
    background_crop: tuple[float, float] = (0.6, 1.0)   # square crop side / shorter image side
    sample_rate: int = 16000
    audio_seconds: float = 3.0                 # test clips
    train_audio_seconds: float = 4.0           # train clips: the dataset crops 3 s windows from them
    target_rms: float = 0.1                    # every source window is normalised to this RMS
    gain_db: float = 6.0                       # train: uniform gain in ±gain_db
    pitch_semitones: float = 1.0               # train: resample by 2^(U(-p, p)/12)
    energy_floor: float = 0.3                  # train windows: energy >= floor * best window's
    ambience_prob: float = 0.5                 # train: probability of an ambience bed
    test_ambience_prob: float = 0.25           # test positives: same, seeded
    ambience_snr_db: tuple[float, float] = (10.0, 30.0)

    def n_samples(self, train: bool) -> int:
        secs = self.train_audio_seconds if train else self.audio_seconds
        return int(round(secs * self.sample_rate))


@dataclass
class Cutout:
    asset_id: str
    category: str
    rgba: np.ndarray               # uint8 [h, w, 4], cropped to its alpha > 127 extent


@dataclass
class Recording:
    asset_id: str
    category: str | None
    wave: np.ndarray               # float32 [T] at cfg.sample_rate


@dataclass
class Pool:
    """The assets one set may draw from (built by ``avsl_core.data.avscenes.Assets.pool``)."""
    categories: tuple[str, ...]
    images: dict[str, list[Cutout]]
    audio: dict[str, list[Recording]]
    backgrounds: list[np.ndarray]          # uint8 [H, W, 3]
    ambience: list[Recording]
    train: bool                            # training-style augmentation of audio
    n_objects: tuple[int, int] | None = None   # overrides cfg.n_objects (single-object sets)


@dataclass
class Scene:
    set_name: str
    index: int
    seed: int
    kind: str                              # one of KINDS
    image: np.ndarray                      # uint8 [S, S, 3]
    objects: list[dict]                    # category, asset_id, box (x1,y1,x2,y2 in [0,1]), mask bool [S,S], area
    sounding: int | None                   # index into objects; None for negatives
    audio: np.ndarray                      # float32 [n]: 3 s (test) or train_audio_seconds (train)
    audio_category: str | None             # category heard (None: ambience only)
    audio_asset_id: str | None
    swap_audio: list[tuple[np.ndarray, str]] = field(default_factory=list)  # kind "swap": per object


def scene_rng(set_name: str, kind: str, index: int, seed: int) -> np.random.Generator:
    """The scene's generator: seeded from a hash of (set, kind, index, seed)."""
    digest = hashlib.sha256(f"avscenes|{set_name}|{kind}|{int(index)}|{int(seed)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_area(rng: np.random.Generator, cfg: ComposerConfig, u: float | None = None) -> float:
    """Inverse-CDF draw from the piecewise-linear quantile function ``cfg.area_quantiles``.

    ``u`` in [0, 1) replaces the uniform draw (the sounding object uses a golden-ratio sequence over
    scene indices, so even a few dozen scenes follow the target quartiles closely).
    """
    q = np.asarray(cfg.area_quantiles, dtype=np.float64)
    return float(np.interp(rng.random() if u is None else u, np.linspace(0.0, 1.0, len(q)), q))


def sounding_quantile(set_name: str, kind: str, index: int, seed: int) -> float:
    """Low-discrepancy probability level of scene ``index``'s sounding area: frac(c + index / phi)."""
    digest = hashlib.sha256(f"avscenes-u|{set_name}|{kind}|{int(seed)}".encode()).digest()
    c = int.from_bytes(digest[:8], "little") / 2 ** 64
    return float((c + int(index) * 0.6180339887498949) % 1.0)


# ----------------------------------------------------------------------------- image side
def _alpha_bbox(rgba: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) exclusive extent of alpha > 127, or None if empty."""
    on = rgba[..., 3] > 127
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def tight_cutout(rgba: np.ndarray) -> np.ndarray | None:
    """Crop an RGBA array to its alpha > 127 extent (None when nothing is opaque enough)."""
    bb = _alpha_bbox(rgba)
    return None if bb is None else rgba[bb[1]:bb[3], bb[0]:bb[2]]


def _transform_cutout(rng, rgba: np.ndarray, cfg: ComposerConfig, area: float, sounding: bool
                      ) -> Image.Image:
    """Flip, shrink to 1.5x the size it will be pasted at (for speed), rotate, re-crop to alpha > 127.

    Works on premultiplied alpha ("RGBa"), so resampling leaves no dark fringes.  -> PIL "RGBa"
    """
    img = Image.fromarray(rgba, "RGBA").convert("RGBa")
    if cfg.flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    fw, fh = _fit_size(area, img.width / img.height, cfg.image_size, sounding)
    k = 1.5 * max(fw, fh) / max(img.size)
    if k < 1:
        img = img.resize((max(2, round(img.width * k)), max(2, round(img.height * k))),
                         Image.Resampling.BILINEAR)
    if cfg.rotation_deg > 0:
        angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        img = img.rotate(angle, Image.Resampling.BILINEAR, expand=True)
        tight = tight_cutout(np.asarray(img))
        if tight is not None:
            img = Image.fromarray(np.ascontiguousarray(tight), "RGBa")
    return img


def _colour_jitter(rng, rgb: np.ndarray, c: float) -> np.ndarray:
    """Brightness, contrast and saturation factors in [1-c, 1+c], in random order.  float [..., 3]"""
    if c <= 0:
        return rgb
    for op in rng.permutation(3):
        f = rng.uniform(1 - c, 1 + c)
        if op == 0:
            rgb = rgb * f
        elif op == 1:
            rgb = (rgb - rgb.mean()) * f + rgb.mean()
        else:
            grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            rgb = (rgb - grey[..., None]) * f + grey[..., None]
    return np.clip(rgb, 0, 255)


def _background(rng, pool: Pool, cfg: ComposerConfig) -> np.ndarray:
    """Random square crop of a random background, resized to S, flipped, colour-jittered.  float [S,S,3]"""
    s = cfg.image_size
    bg = pool.backgrounds[int(rng.integers(len(pool.backgrounds)))]
    h, w = bg.shape[:2]
    side = max(1, int(min(h, w) * rng.uniform(*cfg.background_crop)))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    img = Image.fromarray(bg).resize((s, s), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    arr = np.asarray(img, dtype=np.float32)
    if cfg.flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return _colour_jitter(rng, arr, cfg.colour_jitter)


def _fit_size(area: float, aspect: float, s: int, allow_crop: bool) -> tuple[float, float]:
    """Full (w, h) in pixels of a cut-out with aspect w/h whose *visible* box covers ``area`` of S x S."""
    w, h = s * math.sqrt(area * aspect), s * math.sqrt(area / aspect)
    if w <= s and h <= s:
        return w, h
    if allow_crop:   # spans the frame in one direction and extends past it
        if w > s:
            return aspect * area * s, area * s
        return area * s, area * s / aspect
    k = min(s / w, s / h)
    return w * k, h * k


def _overlap_ok(box, placed, max_overlap) -> bool:
    x0, y0, x1, y1 = box
    a = (x1 - x0) * (y1 - y0)
    for (u0, v0, u1, v1) in placed:
        iw, ih = min(x1, u1) - max(x0, u0), min(y1, v1) - max(y0, v0)
        if iw > 0 and ih > 0 and iw * ih > max_overlap * min(a, (u1 - u0) * (v1 - v0)):
            return False
    return True


def _sprite(cut_pm: Image.Image, w: int, h: int) -> np.ndarray | None:
    """Resize a premultiplied cut-out so its alpha > 127 extent is w x h (bilinear edges lose about a
    pixel a side; one corrective resize recovers it).  -> uint8 [~h, ~w, 4] tight, or None"""
    small = tight_cutout(np.asarray(cut_pm.resize((w, h), Image.Resampling.BILINEAR).convert("RGBA")))
    if small is None:
        return None
    eh, ew = small.shape[:2]
    if (ew, eh) != (w, h):
        again = tight_cutout(np.asarray(cut_pm.resize((2 * w - ew, 2 * h - eh),
                                                      Image.Resampling.BILINEAR).convert("RGBA")))
        small = small if again is None else again
    return np.ascontiguousarray(small)


def _place(rng, cut: Image.Image, area: float, cfg: ComposerConfig, placed: list, sounding: bool):
    """Choose size and position with box overlap <= max_overlap against ``placed``.

    Returns (sprite uint8 [h, w, 4], x, y), or None. The sounding object keeps its drawn area (None
    when it finds no room); the others shrink in 0.7 steps down to ``cfg.min_other_area``.
    """
    s = cfg.image_size
    aspect = cut.width / cut.height * math.exp(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter))
    cut_pm = cut                                   # premultiplied ("RGBa")
    while True:
        fw, fh = _fit_size(area, aspect, s, allow_crop=sounding)
        sprite = _sprite(cut_pm, max(3, int(round(fw))), max(3, int(round(fh))))
        if sprite is not None:
            h, w = sprite.shape[:2]
            for _ in range(cfg.place_tries):
                x = int(rng.integers(min(0, s - w), max(0, s - w) + 1))
                y = int(rng.integers(min(0, s - h), max(0, s - h) + 1))
                box = (max(x, 0), max(y, 0), min(x + w, s), min(y + h, s))
                if _overlap_ok(box, placed, cfg.max_overlap):
                    placed.append(box)
                    return sprite, x, y
        if sounding or area <= cfg.min_other_area:
            return None
        area = max(cfg.min_other_area, area * 0.7)


def _paste(rng, canvas: np.ndarray, sprite: np.ndarray, x: int, y: int, cfg: ComposerConfig
           ) -> np.ndarray:
    """Alpha-composite a colour-jittered sprite onto ``canvas`` in place; returns its mask bool [S, S]."""
    s = cfg.image_size
    h, w = sprite.shape[:2]
    rgb = _colour_jitter(rng, sprite[..., :3].astype(np.float32), cfg.colour_jitter)
    alpha = sprite[..., 3]
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, s), min(y + h, s)
    sub = (slice(cy0 - y, cy1 - y), slice(cx0 - x, cx1 - x))
    a = alpha[sub].astype(np.float32)[..., None] / 255.0
    canvas[cy0:cy1, cx0:cx1] = canvas[cy0:cy1, cx0:cx1] * (1 - a) + rgb[sub] * a
    mask = np.zeros((s, s), dtype=bool)
    mask[cy0:cy1, cx0:cx1] = alpha[sub] > 127
    return mask


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Exact normalised extent (x1, y1, x2, y2) of a bool mask [S, S] (pixel edges), None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h


def _layout(rng, pool: Pool, cats: list[str], cfg: ComposerConfig, sounding: int | None, u: float):
    """Place the objects of ``cats`` in random order and paste them in random depth order.

    The sounding object's area is the drawn one (level ``u``); when the objects placed before it
    leave no room, the layout is redone with the sounding object first. Placing it first always
    would make it the largest object far more often than chance (a size shortcut).
    """
    canvas = _background(rng, pool, cfg)
    cut_assets = [pool.images[c][int(rng.integers(len(pool.images[c])))] for c in cats]
    order = [int(i) for i in rng.permutation(len(cats))]
    for sounding_first in (False, True):
        if sounding_first:
            order = [sounding] + [i for i in order if i != sounding]
        placed_boxes, placed = [], {}
        for i in order:
            area = sample_area(rng, cfg, u if i == sounding else None)
            cut = _transform_cutout(rng, cut_assets[i].rgba, cfg, area, i == sounding)
            geom = _place(rng, cut, area, cfg, placed_boxes, i == sounding)
            if geom is not None:
                placed[i] = (cut_assets[i], *geom)
            elif i == sounding:
                break
        if sounding is None or sounding in placed:
            break
    objects, new_index = [], {}
    for i in rng.permutation(sorted(placed)):          # random depth order
        cut_asset, sprite, x, y = placed[int(i)]
        mask = _paste(rng, canvas, sprite, x, y, cfg)
        box = mask_box(mask)
        if box is None:                                 # vanished after resizing: drop it
            continue
        new_index[int(i)] = len(objects)
        objects.append(dict(category=cats[int(i)], asset_id=cut_asset.asset_id, box=box, mask=mask,
                            area=(box[2] - box[0]) * (box[3] - box[1])))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, objects, (None if sounding is None else new_index.get(sounding))


# ----------------------------------------------------------------------------- audio side
def _window_energies(wave: np.ndarray, n: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    cs = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    offsets = np.arange(0, len(wave) - n + 1, hop)
    return offsets, cs[offsets + n] - cs[offsets]


def audio_window(wave: np.ndarray, n: int, rng: np.random.Generator | None, cfg: ComposerConfig
                 ) -> np.ndarray:
    """A window of ``n`` samples: highest-energy (rng None) or a random one among the energetic.

    Short recordings are tiled (a random circular phase in training, phase 0 at test).  -> [n]
    """
    t = len(wave)
    if t < n:
        start = int(rng.integers(t)) if rng is not None else 0
        return np.tile(wave, math.ceil((start + n) / t))[start:start + n]
    offsets, energy = _window_energies(wave, n, max(1, cfg.sample_rate // 20))
    if rng is None:
        off = int(offsets[int(np.argmax(energy))])
    else:
        ok = np.flatnonzero(energy >= cfg.energy_floor * energy.max())
        off = int(offsets[int(rng.choice(ok))])
        off = min(t - n, off + int(rng.integers(0, cfg.sample_rate // 20)))
    return wave[off:off + n]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _noise_bed(rng, n: int) -> np.ndarray:
    """Pink-ish noise, used as ambience when the asset cache has no ambience recordings."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
    return np.fft.irfft(spec, n).astype(np.float32)


def _ambience(rng, pool: Pool, n: int, cfg: ComposerConfig) -> np.ndarray:
    if not pool.ambience:
        return _noise_bed(rng, n)
    rec = pool.ambience[int(rng.integers(len(pool.ambience)))]
    return audio_window(rec.wave, n, rng, cfg)


def compose_audio(rng, pool: Pool, category: str | None, cfg: ComposerConfig, *, train: bool,
                  ambience_prob: float | None = None) -> tuple[np.ndarray, str | None]:
    """Clip of a recording of ``category`` (None: ambience only).  -> (float32 [n], asset id)

    Train: energetic random window, resampling by 2^(U(-p,p)/12) (pitch and tempo), RMS normalised,
    gain ±gain_db, ambience bed with prob ``ambience_prob`` at U(snr) dB. Test: highest-energy window,
    RMS normalised, seeded ambience with prob ``cfg.test_ambience_prob``. Peaks are limited to 0.99.
    """
    n = cfg.n_samples(train)
    prob = ambience_prob if ambience_prob is not None else (
        cfg.ambience_prob if train else cfg.test_ambience_prob)
    gain = 10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20) if train else 1.0
    if category is None:                                  # silent scene: ambience only
        bed = _ambience(rng, pool, n, cfg)
        out, asset_id = bed * (cfg.target_rms * gain / _rms(bed)), None
    else:
        recs = pool.audio[category]
        rec = recs[int(rng.integers(len(recs)))]
        asset_id = rec.asset_id
        if train:
            r = 2 ** (rng.uniform(-cfg.pitch_semitones, cfg.pitch_semitones) / 12)
            need = int(math.ceil(n * r)) + 1
            src = audio_window(rec.wave, need, rng, cfg)
            out = np.interp(np.arange(n) * r, np.arange(need), src)
        else:
            out = audio_window(rec.wave, n, None, cfg)
        out = out * (cfg.target_rms * gain / _rms(out))
        if rng.random() < prob:
            bed = _ambience(rng, pool, n, cfg)
            snr = rng.uniform(*cfg.ambience_snr_db)
            out = out + bed * (_rms(out) / 10 ** (snr / 20) / _rms(bed))
    peak = float(np.abs(out).max())
    if peak > 0.99:
        out = out * (0.99 / peak)
    return np.asarray(out, dtype=np.float32), asset_id


# ----------------------------------------------------------------------------- scenes
def compose_scene(assets, set_name: str, index: int, seed: int, cfg: ComposerConfig,
                  kind: str = "scene") -> Scene:
    """Compose scene ``index`` of ``set_name`` (deterministic from (set, kind, index, seed)).

    ``assets`` has ``pool(set_name) -> Pool``. Kinds: "scene" (one of the objects sounds), "offscreen"
    (the sound's category is absent from the image), "silent" (ambience only), "swap" (>= 2 objects;
    ``swap_audio`` holds one clip per object, ``audio`` is object 0's).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pool = assets.pool(set_name)
    rng = scene_rng(set_name, kind, index, seed)
    lo, hi = pool.n_objects or cfg.n_objects
    if kind == "swap":
        lo = max(lo, 2)
    spare = 1 if kind == "offscreen" else 0
    hi = min(hi, len(pool.categories) - spare)
    lo = min(lo, hi)
    if hi < 1:
        raise ValueError(f"set {set_name!r}: {len(pool.categories)} categories are too few for {kind!r}")
    k = int(rng.integers(lo, hi + 1))
    cats = [pool.categories[int(i)] for i in rng.choice(len(pool.categories), k + spare, replace=False)]
    heard = cats.pop() if kind == "offscreen" else None
    sounding = int(rng.integers(k)) if kind in ("scene", "swap") else None
    u = sounding_quantile(set_name, kind, index, seed)
    for attempt in range(10):       # a swap whose first object left no room, or an object vanished
        image, objects, placed_sounding = _layout(rng, pool, cats, cfg, sounding,
                                                  u if attempt == 0 else float(rng.random()))
        if objects and (kind != "swap" or len(objects) >= 2) and (
                kind != "scene" or placed_sounding is not None):
            break
    else:
        raise RuntimeError(f"{set_name} {kind} {index}: could not lay out the scene")
    sounding = placed_sounding
    swap_audio = []
    if kind == "swap":
        for obj in objects:
            swap_audio.append(compose_audio(rng, pool, obj["category"], cfg, train=pool.train))
        sounding = 0
        audio, asset_id = swap_audio[0]
        heard = objects[0]["category"]
    elif kind == "scene":
        heard = objects[sounding]["category"]
        audio, asset_id = compose_audio(rng, pool, heard, cfg, train=pool.train)
    else:
        audio, asset_id = compose_audio(rng, pool, heard, cfg, train=pool.train)
    return Scene(set_name=set_name, index=int(index), seed=int(seed), kind=kind, image=image,
                 objects=objects, sounding=sounding, audio=audio, audio_category=heard,
                 audio_asset_id=asset_id, swap_audio=swap_audio)
