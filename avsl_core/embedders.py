"""Pretrained encoders for positive mining only (paper §3 "Obtaining conceptual positive samples").

The paper mines neighbours with encoders trained elsewhere: supervised (ImageNet ResNet + a VGGSound
audio classifier) or self-supervised (CLIP image + Wav2CLIP audio); they are never part of the
localization model. Their weights cannot be downloaded here, so this module offers:

* ``kind="supervised"``: a tiny-width ResNet18 classifier per modality trained on the *training assets'*
  category labels (single cut-outs pasted on training backgrounds by the AVScenes composer; audio
  crops of the training recordings). The embedding is the pooled trunk output (penultimate layer).
* ``kind="ssl"``: the same trunks trained without labels, SimCLR-style with NT-Xent (Chen et al.
  2020). Audio: two time-shifted windows of the same recording. Image: by default the same cut-out
  file pasted on two independent backgrounds, then SimCLR views of each (a copy-paste view: the file
  identity plays SimCLR's instance role; no category is used); ``ssl_views="same_image"`` is plain
  SimCLR (two views of one composite), which on these composites learns mostly the background
  (same-category precision@14 of image neighbours on a 2000-scene training set: 1.35x random
  against 2.3x for "same_object"; the supervised analogue 3.5x; audio analogues ~25x).
* ``load_external``: an N x D array a user computed elsewhere (CLIP, Wav2CLIP, ImageNet, ...) aligned
  with a manifest's ids; checked for length, ids, NaN and all-zero rows.
* ``ImageNetResNet18``: torchvision's ResNet18 when its ImageNet weights are given as a local file
  (never downloaded).

Every embedder maps manifest items to a float32 [N, D] array in the manifest's order
(``embed(items, root)``). Checkpoints are plain tensors + JSON-able config, loaded with
``torch.load(weights_only=True)``. Category labels feed only the supervised analogue, never the
localization model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avsl_core.audio import SAMPLE_RATE, LogMel, crop_or_tile, load_audio
from avsl_core.errors import DataError
from avsl_core.models import ResNet18Trunk
from avsl_core.provenance import atomic_write_bytes, file_sha256
from avsl_core.vision import eval_transform, load_image_rgb

KINDS = ("supervised", "ssl")
MODALITIES = ("image", "audio")


@dataclass(frozen=True)
class EmbedderConfig:
    """One analogue encoder (one kind, one modality) and its training budget."""
    kind: str = "supervised"          # "supervised" (category labels) | "ssl" (SimCLR / NT-Xent)
    modality: str = "image"           # "image" | "audio"
    width: float = 0.25               # ResNet18 channel multiplier: D = 512 * width
    image_size: int = 64              # composites and embedded images are resized to this
    audio_seconds: float = 2.0        # training window length (embedding: `embed_audio_seconds`)
    embed_audio_seconds: float = 3.0  # centre window of each manifest clip that is embedded
    n_mels: int = 64
    steps: int = 300                  # optimiser steps
    batch_size: int = 64
    lr: float = 3e-3                  # Adam, cosine decay over `steps`
    weight_decay: float = 1e-4
    temperature: float = 0.2          # NT-Xent (ssl)
    ssl_views: str = "same_object"    # ssl image views: "same_object" (one cut-out file on two
                                      # backgrounds, then SimCLR views) | "same_image" (two SimCLR
                                      # views of one composite)
    proj_dim: int = 64                # SimCLR projection head output (ssl; discarded after training)
    bank_size: int = 2000             # single-object composites rendered once, augmented per step
    bank_area: tuple[float, float] | None = (0.25, 0.7)   # object box area of the composites
                                      # (uniform; object-centric like ImageNet); None: VGG-SS law
    crop_scale: tuple[float, float] = (0.2, 1.0)   # RandomResizedCrop scale of the image views
    ambience_prob: float = 0.5        # audio: probability of an ambience bed per window
    categories: tuple[str, ...] | None = None      # None: every category with train image+audio files
    seed: int = 0

    def __post_init__(self):
        for f in ("crop_scale", "bank_area", "categories"):      # YAML/JSON give lists
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.kind not in KINDS:
            raise ValueError(f"EmbedderConfig.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"EmbedderConfig.modality: expected one of {MODALITIES}, got {self.modality!r}")
        if self.ssl_views not in ("same_image", "same_object"):
            raise ValueError(f"EmbedderConfig.ssl_views: expected 'same_image' or 'same_object', "
                             f"got {self.ssl_views!r}")
        if self.steps < 0 or self.batch_size < 2:
            raise ValueError("EmbedderConfig: steps must be >= 0 and batch_size >= 2")

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.modality}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EmbedderConfig":
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


# --------------------------------------------------------------------------------------- network
class TrunkEmbedder(nn.Module):
    """ResNet18 trunk (avsl_core.models) + global average pool -> embedding h [B, D]; plus the
    training head (linear classifier, or SimCLR MLP projection), unused when embedding."""

    def __init__(self, cfg: EmbedderConfig, n_classes: int = 0, classes: tuple[str, ...] = ()):
        super().__init__()
        self.cfg, self.classes, self.key = cfg, tuple(classes), ""
        base = max(1, int(round(64 * cfg.width)))
        self.trunk = ResNet18Trunk(3 if cfg.modality == "image" else 1, base)
        d = self.trunk.out_channels
        self.dim = d
        self.head = (nn.Linear(d, n_classes) if cfg.kind == "supervised"
                     else nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, cfg.proj_dim)))
        self.logmel = LogMel(n_mels=cfg.n_mels) if cfg.modality == "audio" else None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def modality(self) -> str:
        return self.cfg.modality

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] (normalised) or waves [B, T] -> h [B, D]."""
        if self.logmel is not None:
            x = self.logmel(x)                                   # [B, 1, n_mels, frames]
        return self.trunk(x).mean(dim=(2, 3))                    # [B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                       # logits [B, C] or z [B, proj_dim]

    @torch.no_grad()
    def embed(self, items, root, batch_size: int = 64) -> np.ndarray:
        """Manifest items -> float32 [N, D] (image or audio of each item, per `cfg.modality`)."""
        self.eval()
        return _embed_items(self.features, self.cfg.modality, items, root, self.cfg.image_size,
                            int(round(self.cfg.embed_audio_seconds * SAMPLE_RATE)), batch_size)

    def save(self, path: str | os.PathLike, key: str = "") -> None:
        """Checkpoint {state_dict, config, classes, key}: loadable with weights_only=True."""
        import io
        buf = io.BytesIO()
        torch.save({"state_dict": self.state_dict(), "config": self.cfg.to_dict(),
                    "classes": list(self.classes), "key": key}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrunkEmbedder":
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            cfg = EmbedderConfig.from_dict(ck["config"])
            m = cls(cfg, len(ck["classes"]), tuple(ck["classes"]))
            m.load_state_dict(ck["state_dict"])
        except FileNotFoundError:
            raise DataError(path, "embedder checkpoint not found") from None
        except Exception as e:  # unpickling refused, wrong keys, shape mismatch
            raise DataError(path, f"not a loadable embedder checkpoint: {e}") from None
        m.key = ck.get("key", "")
        return m.eval()


def _embed_items(fn, modality, items, root, image_size, n_audio, batch_size) -> np.ndarray:
    from avsl_core.data.manifest import resolve
    tf = eval_transform(image_size)
    out = []
    for a in range(0, len(items), batch_size):
        chunk = items[a:a + batch_size]
        if modality == "image":
            x = torch.stack([tf(load_image_rgb(resolve(root, it.image))) for it in chunk])  # [B,3,S,S]
        else:
            waves = []
            for it in chunk:
                w = load_audio(resolve(root, it.audio), allow_silent=True)
                off = max(0, (len(w) - n_audio) // 2) if len(w) > n_audio else 0
                waves.append(crop_or_tile(w, n_audio, offset=off))                       # centre
            x = torch.from_numpy(np.stack(waves))                                         # [B, T]
        out.append(fn(x).float().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------- training data
def training_pool(assets, categories: tuple[str, ...] | None = None):
    """A composer Pool over the *train*-split files of `categories` (default: every category with
    train images and train recordings), train backgrounds and ambience, one object per scene."""
    from avsl_core.data.compose import Pool
    cats = categories or tuple(sorted({c for (c, s) in assets.images if s == "train" and c}
                                      & {c for (c, s) in assets.audio if s == "train" and c}))
    missing = [c for c in cats if not assets.images.get((c, "train")) or not assets.audio.get((c, "train"))]
    if missing or len(cats) < 2:
        raise DataError(getattr(assets, "index_path", None),
                        f"embedder training needs >= 2 categories with train images and recordings; "
                        f"missing: {missing or 'too few categories'}")
    if not assets.backgrounds.get("train"):
        raise DataError(getattr(assets, "index_path", None), "no train background")
    return Pool(categories=tuple(cats), images={c: assets.images[(c, "train")] for c in cats},
                audio={c: assets.audio[(c, "train")] for c in cats},
                backgrounds=assets.backgrounds["train"], ambience=assets.ambience.get("train", []),
                train=True, n_objects=(1, 1))


def composite_bank(pool, n: int, image_size: int, seed: int,
                   area: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n single-object composites (cut-out on a background, composer augmentation) -> uint8
    [n, S, S, 3] and their category indices [n] (into pool.categories)."""
    from avsl_core.data.compose import ComposerConfig
    key = (tuple(pool.categories), tuple(c.asset_id for cat in pool.categories for c in pool.images[cat]),
           len(pool.backgrounds), n, image_size, seed, area)
    if key in _BANKS:                       # the supervised and ssl image analogues share one bank
        return _BANKS[key]
    ccfg = ComposerConfig(image_size=image_size, n_objects=(1, 1))
    if area is not None:
        ccfg = dataclasses.replace(ccfg, area_quantiles=tuple(np.linspace(area[0], area[1], 21)))
    shim = types.SimpleNamespace(pool=lambda _name: pool)
    images, labels = np.empty((n, image_size, image_size, 3), np.uint8), np.empty(n, np.int64)
    for i in range(n):
        sc = _compose(shim, "embedder", i, n, seed, ccfg)
        images[i] = sc.image
        labels[i] = pool.categories.index(sc.objects[sc.sounding]["category"])
    _BANKS.clear()                          # keep one bank in memory
    _BANKS[key] = (images, labels)
    return images, labels


_BANKS: dict = {}


def _compose(shim, name: str, i: int, n: int, seed: int, ccfg):
    """compose_scene, retried at other indices in the rare case a layout fails (tiny cut-out)."""
    from avsl_core.data.compose import compose_scene
    for attempt in range(5):
        try:
            return compose_scene(shim, name, i + attempt * n, seed, ccfg)
        except RuntimeError:
            if attempt == 4:
                raise


def object_pair_bank(pool, n: int, image_size: int, seed: int,
                     area: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of composites of the *same cut-out file* on two independent backgrounds, positions,
    scales and colour jitters (label-free: the file identity plays SimCLR's instance role, a
    copy-paste view). Files drawn uniformly over all cut-outs.  -> two uint8 [n, S, S, 3]"""
    from avsl_core.data.compose import ComposerConfig, Pool, Recording
    ccfg = ComposerConfig(image_size=image_size, n_objects=(1, 1))
    if area is not None:
        ccfg = dataclasses.replace(ccfg, area_quantiles=tuple(np.linspace(area[0], area[1], 21)))
    cuts = [c for cat in pool.categories for c in pool.images[cat]]
    silent = [Recording("none", "obj", np.full(1600, 1e-3, np.float32))]      # composer needs a clip
    pick = np.random.default_rng(seed).integers(0, len(cuts), n)
    a = np.empty((n, image_size, image_size, 3), np.uint8)
    b = np.empty_like(a)
    for i, j in enumerate(pick):
        one = Pool(categories=("obj",), images={"obj": [cuts[j]]}, audio={"obj": silent},
                   backgrounds=pool.backgrounds, ambience=[], train=False, n_objects=(1, 1))
        shim = types.SimpleNamespace(pool=lambda _name, p=one: p)
        a[i] = _compose(shim, "embedder-view1", i, n, seed, ccfg).image
        b[i] = _compose(shim, "embedder-view2", i, n, seed, ccfg).image
    return a, b


def _audio_window(rng, rec_wave, pool, n: int, cfg: EmbedderConfig) -> np.ndarray:
    """A random energetic window of a recording, RMS-normalised, random gain, optional ambience."""
    from avsl_core.data.compose import ComposerConfig, audio_window
    ccfg = ComposerConfig()
    w = audio_window(rec_wave, n, rng, ccfg).astype(np.float64)
    w *= 0.1 * 10 ** (rng.uniform(-6, 6) / 20) / np.sqrt(np.mean(w ** 2) + 1e-12)
    if pool.ambience and rng.random() < cfg.ambience_prob:
        bed = audio_window(pool.ambience[int(rng.integers(len(pool.ambience)))].wave, n, rng, ccfg)
        snr = rng.uniform(10, 30)
        w += bed * (np.sqrt(np.mean(w ** 2)) / 10 ** (snr / 20) / np.sqrt(np.mean(bed ** 2) + 1e-12))
    return np.clip(w, -1, 1).astype(np.float32)


def batch_views(x: torch.Tensor, size: int, gen: torch.Generator, *, scale=(0.2, 1.0),
                ratio=(3 / 4, 4 / 3), jitter: float = 0.4, jitter_p: float = 0.8, gray_p: float = 0.2,
                blur_p: float = 0.5, flip_p: float = 0.5) -> torch.Tensor:
    """SimCLR views of a whole batch at once (same recipe as `vision.simclr_augment`, without hue
    jitter): per-image random resized crop (affine grid_sample), flip, brightness/contrast/saturation jitter,
    grayscale, Gaussian blur (sigma in [0.1, 2], kernel ~10 % of the side), ImageNet normalisation.
    Per-image v2 transforms cost ~2 ms each here, this < 1 ms.
    uint8 [B, H, W, 3] or float [B, 3, H, W] in [0, 1] -> float [B, 3, S, S]"""
    from avsl_core.vision import IMAGENET_MEAN, IMAGENET_STD
    img = x.permute(0, 3, 1, 2).float() / 255.0 if x.dtype == torch.uint8 else x     # [B, 3, H, W]
    b, _, h, w = img.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)                            # noqa: E731
    area = scale[0] + (scale[1] - scale[0]) * u(b)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u(b)
    cw = (torch.sqrt(area * torch.exp(logr)) * w).clamp(2, w)
    ch = (torch.sqrt(area / torch.exp(logr)) * h).clamp(2, h)
    x0, y0 = (w - cw) * u(b), (h - ch) * u(b)
    theta = torch.zeros(b, 2, 3)                                                      # crop -> [-1, 1]
    theta[:, 0, 0], theta[:, 1, 1] = cw / w, ch / h
    theta[:, 0, 2], theta[:, 1, 2] = (2 * x0 + cw) / w - 1, (2 * y0 + ch) / h - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.where((u(b) < flip_p)[:, None, None, None], out.flip(-1), out)
    grey_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    if jitter > 0:
        on = (u(b) < jitter_p).float().view(b, 1, 1, 1)
        f = 1 + jitter * (2 * u(3, b, 1, 1, 1) - 1) * on                             # [3, B, 1, 1, 1]
        out = (out * f[0]).clamp(0, 1)                                                # brightness
        m = (out * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        out = ((out - m) * f[1] + m).clamp(0, 1)                                      # contrast
        g = (out * grey_w).sum(1, keepdim=True)
        out = ((out - g) * f[2] + g).clamp(0, 1)                                      # saturation
    if gray_p > 0:
        g = (out * grey_w).sum(1, keepdim=True).expand_as(out)
        out = torch.where((u(b) < gray_p)[:, None, None, None], g, out)
    if blur_p > 0:
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        sigma = 0.1 + 1.9 * u(b)
        t = torch.arange(k, dtype=torch.float32) - k // 2
        ker = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
        ker = ker / ker.sum(1, keepdim=True)                                          # [B, k]
        delta = (t == 0).float().expand(b, k)
        ker = torch.where((u(b) < blur_p)[:, None], ker, delta).repeat_interleave(3, 0)  # [3B, k]
        y = F.pad(out.reshape(1, 3 * b, size, size), (k // 2,) * 4, mode="reflect")
        y = F.conv2d(y, ker.view(3 * b, 1, k, 1), groups=3 * b)
        out = F.conv2d(y, ker.view(3 * b, 1, 1, k), groups=3 * b).view(b, 3, size, size)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (out - mean) / std


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is its partner among the 2B - 1 others.  [B, d] x2 -> []"""
    z = F.normalize(torch.cat([z1, z2]), dim=1)                                   # [2B, d]
    sim = z @ z.T / temperature                                                   # [2B, 2B]
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


# -------------------------------------------------------------------------------------- training
def train_embedder(cfg: EmbedderConfig, pool, log=print) -> tuple[TrunkEmbedder, list[float]]:
    """Train one analogue on a composer Pool (`training_pool`); returns (model in eval mode, losses)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    cats = tuple(pool.categories)
    model = TrunkEmbedder(cfg, len(cats), cats)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps))     # cosine decay to 0
    b, n_audio = cfg.batch_size, int(round(cfg.audio_seconds * SAMPLE_RATE))
    if cfg.modality == "image":
        t0 = time.time()
        if cfg.kind == "ssl" and cfg.ssl_views == "same_object":
            bank, bank2 = object_pair_bank(pool, cfg.bank_size, cfg.image_size, cfg.seed, cfg.bank_area)
            bank2_t = torch.from_numpy(bank2).permute(0, 3, 1, 2).float() / 255.0     # [n, 3, S, S]
        else:
            bank, bank_y = composite_bank(pool, cfg.bank_size, cfg.image_size, cfg.seed, cfg.bank_area)
            bank2_t = None
        log(f"[embedders] {cfg.name}: {cfg.bank_size} composites in {time.time() - t0:.1f} s")
        bank_t = torch.from_numpy(bank).permute(0, 3, 1, 2).float() / 255.0          # [n, 3, S, S]
        gen = torch.Generator().manual_seed(cfg.seed)
        strong = dict(scale=cfg.crop_scale)                                          # SimCLR views
        mild = dict(scale=(max(0.5, cfg.crop_scale[0]), 1.0), jitter=0.2, gray_p=0.0, blur_p=0.0)
        view = lambda idx, src=bank_t: batch_views(src[idx], cfg.image_size, gen,   # noqa: E731
                                                   **(strong if cfg.kind == "ssl" else mild))
    recs = [r for c in cats for r in pool.audio[c]]
    losses, t0 = [], time.time()
    model.train()
    for step in range(cfg.steps):
        if cfg.modality == "image":
            idx = rng.integers(0, len(bank), b)
            if cfg.kind == "supervised":
                x, y = view(torch.from_numpy(idx)), torch.from_numpy(bank_y[idx])
            else:
                i_t = torch.from_numpy(idx)
                x1, x2 = view(i_t), view(i_t, bank_t if bank2_t is None else bank2_t)
        else:
            if cfg.kind == "supervised":   # class-balanced: category first, then a recording
                y_np = rng.integers(0, len(cats), b)
                waves = [_audio_window(rng, pool.audio[cats[c]][int(rng.integers(len(pool.audio[cats[c]])))].wave,
                                       pool, n_audio, cfg) for c in y_np]
                x, y = torch.from_numpy(np.stack(waves)), torch.from_numpy(y_np)
            else:                          # two shifted windows of the same recording
                pick = rng.integers(0, len(recs), b)
                x1 = torch.from_numpy(np.stack([_audio_window(rng, recs[i].wave, pool, n_audio, cfg) for i in pick]))
                x2 = torch.from_numpy(np.stack([_audio_window(rng, recs[i].wave, pool, n_audio, cfg) for i in pick]))
        if cfg.kind == "supervised":
            loss = F.cross_entropy(model(x), y)
        else:
            loss = nt_xent(model(x1), model(x2), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"[embedders] {cfg.name}: step {step + 1}/{cfg.steps} loss "
                f"{np.mean(losses[-max(1, cfg.steps // 5):]):.3f} ({time.time() - t0:.0f} s)")
    return model.eval(), losses


def embedder_key(cfg: EmbedderConfig, assets_root: str | os.PathLike | None) -> str:
    """Hash of the config and the asset index: a cached checkpoint is reused only when both match."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=list).encode())
    idx = Path(assets_root) / "index.csv" if assets_root else None
    h.update((file_sha256(idx) if idx and idx.is_file() else "<no index>").encode())
    return h.hexdigest()


def load_or_train(cfg: EmbedderConfig, cache_dir: str | os.PathLike, *, assets=None,
                  assets_root: str | os.PathLike = "data/assets", log=print) -> TrunkEmbedder:
    """`<cache_dir>/<kind>_<modality>.pt` when its key matches, else train (on `assets`, loaded from
    `assets_root` if not given) and save it."""
    path = Path(cache_dir) / f"{cfg.name}.pt"
    key = embedder_key(cfg, assets_root)
    if path.exists():
        try:
            m = TrunkEmbedder.load(path)
            if m.key == key:
                log(f"[embedders] reusing {path}")
                return m
            log(f"[embedders] {path}: config or assets changed, retraining")
        except DataError as e:
            log(f"[embedders] {e}; retraining")
    if assets is None:
        from avsl_core.data.avscenes import load_assets
        from avsl_core.data.compose import ComposerConfig
        assets = load_assets(assets_root, ComposerConfig(image_size=max(cfg.image_size, 96)))
    model, _ = train_embedder(cfg, training_pool(assets, cfg.categories), log=log)
    model.save(path, key)
    model.key = key
    return model


# -------------------------------------------------------------------------------- other sources
class ImageNetResNet18:
    """torchvision ResNet18 with ImageNet weights from a LOCAL file (e.g. resnet18-f37072fd.pth);
    the embedding is the 512-d average-pooled layer4 output. Image modality only."""
    modality = "image"

    def __init__(self, weights_path: str | os.PathLike, image_size: int = 224):
        import torchvision
        p = Path(weights_path)
        if not p.is_file():
            raise DataError(p, "ImageNet ResNet18 weights not found; this project never downloads "
                               "weights: fetch torchvision's resnet18-f37072fd.pth elsewhere and pass "
                               "its local path")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(p, f"not a loadable state_dict (torch.load weights_only=True): {e}") from None
        for k in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(k), dict):
                state = state[k]
        net = torchvision.models.resnet18(weights=None)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(p, f"weights do not fit torchvision's resnet18: {e}") from None
        net.fc = nn.Identity()
        self.net, self.image_size, self.name = net.eval(), image_size, "imagenet_resnet18"
        self.dim = 512

    @torch.no_grad()
    def embed(self, items, root, batch_size: int = 32) -> np.ndarray:
        return _embed_items(self.net, "image", items, root, self.image_size, 0, batch_size)


def load_external(path: str | os.PathLike, ids: list[str], modality: str | None = None) -> np.ndarray:
    """Embeddings computed elsewhere, returned in the order of `ids` (a manifest's ids) as float32 [N, D].

    `.npz`: an `ids` array and the embeddings under `modality` ("image"/"audio") or `embeddings`; rows
    may come in any order (they are matched by id). `.npy`: an [N, D] array in manifest order, with the
    ids in a sidecar `<file>.ids.txt` (one per line) when present. DataError naming the file for a
    wrong length, unknown/missing/duplicate ids, NaN/inf rows or all-zero rows.
    """
    from avsl_core.mining import check_embeddings
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "embedding file not found")
    file_ids = None
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = modality if modality in z.files else "embeddings"
                if key not in z.files:
                    raise DataError(p, f"no array {modality!r} or 'embeddings' (found {z.files})")
                emb = z[key]
                file_ids = [str(x) for x in z["ids"]] if "ids" in z.files else None
        else:
            emb = np.load(p, allow_pickle=False)
            side = p.with_name(p.name + ".ids.txt")
            if side.is_file():
                file_ids = [ln.strip() for ln in side.read_text().splitlines() if ln.strip()]
    except (ValueError, OSError) as e:
        raise DataError(p, f"unreadable embedding file ({e})") from None
    if emb.ndim != 2:
        raise DataError(p, f"expected an [N, D] array, got shape {emb.shape}")
    if emb.shape[0] != len(ids):
        raise DataError(p, f"has {emb.shape[0]} rows, the manifest has {len(ids)} items")
    if file_ids is not None:
        if len(file_ids) != emb.shape[0]:
            raise DataError(p, f"{len(file_ids)} ids for {emb.shape[0]} rows", field="ids")
        pos = {}
        for r, i in enumerate(file_ids):
            if i in pos:
                raise DataError(p, f"duplicate id {i!r}", row=r, field="ids")
            pos[i] = r
        missing = [i for i in ids if i not in pos]
        if missing:
            extra = sorted(set(pos) - set(ids))
            raise DataError(p, f"ids do not match the manifest: {len(missing)} manifest ids absent "
                               f"(e.g. {missing[:3]}), {len(extra)} unknown ids (e.g. {extra[:3]})",
                            field="ids")
        emb = emb[[pos[i] for i in ids]]
    return check_embeddings(emb, p, ids=list(ids))


# ------------------------------------------------------------------------------- the whole step
def embed_cached(embedder, items, root, path: str | os.PathLike, key: str, log=print) -> np.ndarray:
    """`embedder.embed(items, root)`, cached in `path` (.npz: ids, embeddings, key) and reused when
    the key (embedder + manifest) and the ids match."""
    import io
    path = Path(path)
    ids = [it.id for it in items]
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key and [str(i) for i in z["ids"]] == ids:
                    log(f"[embedders] reusing {path}")
                    return z["embeddings"].astype(np.float32)
        except (ValueError, OSError, KeyError):
            pass
    t0 = time.time()
    emb = embedder.embed(items, root)
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids), embeddings=emb, key=np.array(key))
    atomic_write_bytes(path, buf.getvalue())
    log(f"[embedders] embedded {len(ids)} items with {embedder.name} ({embedder.modality}) "
        f"in {time.time() - t0:.1f} s -> {path}")
    return emb


def mine_positives(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, *, root=None,
                   kinds: tuple[str, ...] = ("supervised", "ssl"), k: int | float = 1000 / 144_000,
                   assets_root: str | os.PathLike | None = "data/assets", assets=None,
                   embedder: dict | None = None,
                   external: dict | None = None, imagenet_weights: str | os.PathLike | None = None,
                   method: str | None = None, embedders_dir: str | os.PathLike | None = None,
                   log=print) -> dict:
    """Neighbour tables of a training manifest for every embedder asked for (paper §3, Table 8/9).

    kinds: trained analogues ("supervised", "ssl"), each for image and audio, with EmbedderConfig
    fields from `embedder` (e.g. {"width": 0.25, "steps": 300, "image": {"steps": 600}}: keys
    "image"/"audio"/"supervised"/"ssl" hold overrides for that modality or kind), trained on `assets` (an
    avsl_core.data.avscenes.Assets; loaded from `assets_root` when needed); external: {(name, modality): file}
    (`load_external`); imagenet_weights: a local torchvision ResNet18 file -> ("imagenet", "image").
    k: absolute or a fraction of the manifest (default: the paper's 1000 / 144K).
    Everything is cached under out_dir (embedders/, embeddings/, tables/) and reused when unchanged;
    `embedders_dir` shares trained embedders across manifests (mine a second set without retraining).
    Returns {(embedder name, modality): mining.NeighbourTable}, rows in the manifest's order.
    """
    from avsl_core import mining
    from avsl_core.data.manifest import read_manifest
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    root = Path(root) if root is not None else manifest_path.parent
    items = read_manifest(manifest_path, root)
    ids, man_sha = [it.id for it in items], file_sha256(manifest_path)
    kw = {"method": method} if method else {}
    tables = {}

    def table(name, modality, emb):
        tables[(name, modality)] = mining.load_or_build(
            out_dir / "tables", emb, manifest_path=manifest_path, embedder=name, modality=modality,
            k=k, log=log, **kw)

    for kind in kinds:
        for modality in MODALITIES:
            common = {k: v for k, v in (embedder or {}).items() if k not in MODALITIES + KINDS}
            own = {**(embedder or {}).get(modality, {}), **(embedder or {}).get(kind, {})}
            cfg = EmbedderConfig(**{**common, **own, "kind": kind, "modality": modality})
            emb_dir = Path(embedders_dir) if embedders_dir is not None else out_dir / "embedders"
            if assets is None and not _checkpoint_fresh(cfg, emb_dir, assets_root):
                from avsl_core.data.avscenes import load_assets
                from avsl_core.data.compose import ComposerConfig
                assets = load_assets(assets_root, ComposerConfig(image_size=max(cfg.image_size, 96)))
            model = load_or_train(cfg, emb_dir, assets=assets, assets_root=assets_root, log=log)
            emb = embed_cached(model, items, root, out_dir / "embeddings" / f"{cfg.name}.npz",
                               f"{model.key}|{man_sha}", log=log)
            table(kind, modality, emb)
    for (name, modality), path in (external or {}).items():
        table(name, modality, load_external(path, ids, modality))
    if imagenet_weights is not None:
        net = ImageNetResNet18(imagenet_weights)
        emb = embed_cached(net, items, root, out_dir / "embeddings" / "imagenet_image.npz",
                           f"{file_sha256(imagenet_weights)}|{net.image_size}|{man_sha}", log=log)
        table("imagenet", "image", emb)
    return tables


def _checkpoint_fresh(cfg: EmbedderConfig, cache_dir: Path, assets_root) -> bool:
    path = cache_dir / f"{cfg.name}.pt"
    if not path.exists():
        return False
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("key") == embedder_key(cfg, assets_root)
    except Exception:
        return False
