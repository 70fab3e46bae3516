"""Fast training views for CPU runs: per-item work is indexing, augmentation runs on whole batches.

Per item, `datasets.TrainDataset` runs torchvision's SimCLR pipeline on a PIL image (~11 ms at 96 px)
and a log-mel of the shifted window (~3 ms): more CPU than the model step itself at 96 px on the
2-core machine. Here:

* `FastTrainViews` (a TrainDataset) returns the decoded image as uint8, the precomputed log-mel of
  the main window (`spec`, identical to the test-time front-end), and `spec_aug` as a random window
  of frames of the log-mel of the *whole* clip, precomputed once (paper §3 a_aug, "the same clip with
  a random time shift": a random 3 s window of the 4 s training clip, offsets on the 32 ms hop grid;
  a clip no longer than the window is shifted circularly). `image_conc` / `spec_conc` are a neighbour's
  (uniform over the row of the k-NN table, as TrainDataset; with a separate audio table, as the
  paper mines them, `spec_conc` is drawn from the audio table's row independently).
  `FastTrainViews.__getitems__` (what the DataLoader calls with a batch's indices) makes the same
  draws item by item, then gathers the whole batch at once (one numpy take of the images, one index
  of the log-mels, one stack of the a_aug windows) into BatchViews' input.
* `BatchViews` is the DataLoader `collate_fn` (it runs in the workers when num_workers > 0): it takes
  the gathered batch (or stacks a list of items) and builds `image`, `image_aug` (SimCLR,
  `batch_simclr`) and `image_conc` on the batch, straight from uint8 to ImageNet-normalised floats
  (one pass for a plain frame; the 1/255 and the normalisation are folded into SimCLR's colour
  matrix), optionally in channels_last (the trainer's layout, so the step does not convert again).
* `batch_simclr`: SimCLR's augmentation (Chen et al. 2020, App. A; the parameters of
  `vision.simclr_augment`) with independent random parameters per image, vectorised: random resized
  crop + flip as one affine `grid_sample` (bilinear), colour jitter (brightness, contrast, saturation,
  hue as a rotation of the YIQ chroma plane, an approximation of the HSV hue shift) with p = 0.8,
  grayscale p = 0.2, Gaussian blur p = 0.5 (separable, grouped conv).
* Randomness: a batch from the trainer is a `SeededBatch` (its indices and a seed derived from
  (seed, phase, rank, batch number)); every draw of that batch (a_aug offsets, neighbours, SimCLR
  parameters) comes from generators seeded by it, so a batch's views do not depend on the number
  of DataLoader workers nor on where a run was resumed. Plain index lists / items fall back to the
  dataset's generator and torch's global RNG.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from avsl_core.data.datasets import TrainDataset, collate
from avsl_core.vision import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)    # ITU-R 601 luma (as torchvision)
_U8_SCALE = 1.0 / (255.0 * _STD)                                  # uint8 -> normalised: x * scale + shift
_U8_SHIFT = -_MEAN / _STD
_U8_SCALE24, _U8_SHIFT24 = _U8_SCALE.view(3).repeat(8), _U8_SHIFT.view(3).repeat(8)   # RGB RGB ... (24)
_LO_NORM = ((0 - _MEAN) / _STD).view(3).tolist()                  # [0, 1] in normalised units, per channel
_HI_NORM = ((1 - _MEAN) / _STD).view(3).tolist()
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ImageNet-normalised."""
    return (x - _MEAN) / _STD


def normalize_u8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] in [0, 255] -> ImageNet-normalised float32 (keeps the layout, e.g. channels_last).

    channels_last (the HWC store's layout): one conversion, then one affine pass over rows of 24
    floats (RGB repeated 8 times) instead of a broadcast over an innermost dimension of 3 (2x slower)."""
    if x.dtype == torch.uint8 and x.shape[1] == 3 and x.numel() % 24 == 0 and \
            x.is_contiguous(memory_format=torch.channels_last):
        y = x.float()                                             # channels_last: memory order (B, H, W, C)
        flat = y.permute(0, 2, 3, 1).view(-1, 24)
        torch.addcmul(_U8_SHIFT24, flat, _U8_SCALE24, out=flat)
        return y
    return torch.addcmul(_U8_SHIFT, x, _U8_SCALE)


class SeededBatch(list):
    """A batch's item indices (a list, as a batch sampler yields) with the seed of all its random
    draws: `FastTrainViews.__getitems__` and `BatchViews` seed their generators from it."""

    def __init__(self, indices, seed: int):
        super().__init__(indices)
        self.seed = int(seed)

    def __reduce__(self):                      # pickled to the DataLoader workers
        return SeededBatch, (list(self), self.seed)


def seeded_batches(batches: list[list[int]], key: list[int], start: int = 0) -> list[SeededBatch]:
    """`batches[start:]` as SeededBatch, batch n seeded by SeedSequence(key + [n]) (n counts from the
    phase's first batch, so a resumed phase draws what the uninterrupted one did)."""
    return [SeededBatch(b, np.random.SeedSequence([*key, n]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            for n, b in enumerate(batches) if n >= start]


def _crop_boxes(b: int, scale, ratio, tries: int = 10, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's sampling (torchvision), vectorised: fractions (w, h) of the side, centre (cx, cy)."""
    area = torch.empty(b, tries).uniform_(*scale, generator=generator)
    logr = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w, h = torch.sqrt(area * torch.exp(logr)), torch.sqrt(area / torch.exp(logr))
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(b, dtype=torch.long))
    w = torch.where(ok.any(1), w.gather(1, first[:, None])[:, 0], torch.ones(b))   # fallback: whole image
    h = torch.where(ok.any(1), h.gather(1, first[:, None])[:, 0], torch.ones(b))
    cx = w / 2 + torch.rand(b, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(b, generator=generator) * (1 - h)
    return w, h, cx, cy


def batch_simclr(x: torch.Tensor, *, strength: float = 0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_p: float = 0.5, jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma=(0.1, 2.0), generator: torch.Generator | None = None,
                 normalized: bool = False) -> torch.Tensor:
    """SimCLR views of a batch, independent per image: x [B, 3, S, S], float in [0, 1] or uint8 in
    [0, 255] -> float32 of the same shape, in [0, 1] (`normalized=True`: ImageNet-normalised).

    Colour jitter and grayscale are linear in RGB, so they are composed into one 3×3 matrix and
    offset per image and clamped once (torchvision clamps after each factor; the difference is confined
    to saturated pixels). The uint8 scale and the normalisation are affine per channel too, so they
    are folded into the same matrix (the clamp bounds move with it); the blur (weights summing to 1)
    commutes with them. Random draws come from `generator` (None: torch's global RNG), in a fixed order.
    """
    g = generator
    b, _, hgt, wid = x.shape
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.float()
    # random resized crop + horizontal flip: output coordinate u in [-1, 1] samples input (2c - 1) + w·u
    w, h, cx, cy = _crop_boxes(b, scale, ratio, generator=g)
    flip = torch.where(torch.rand(b, generator=g) < flip_p, -1.0, 1.0)
    u = (torch.arange(wid, dtype=torch.float32) * 2 + 1) / wid - 1                  # pixel centres
    v = (torch.arange(hgt, dtype=torch.float32) * 2 + 1) / hgt - 1
    grid = torch.empty(b, hgt, wid, 2)
    grid[..., 0] = ((w * flip)[:, None] * u[None] + (2 * cx - 1)[:, None])[:, None, :]
    grid[..., 1] = (h[:, None] * v[None] + (2 * cy - 1)[:, None])[:, :, None]
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).contiguous()
    # colour: brightness, contrast, saturation, hue (p = jitter_p), then grayscale (p = grayscale_p)
    s = strength
    eye = torch.eye(3).expand(b, 3, 3)
    gray_row = _GRAY.view(1, 1, 3)
    def fac(mag):
        return 1 + torch.empty(b).uniform_(-mag, mag, generator=g)
    bright, contrast, sat = fac(0.8 * s), fac(0.8 * s), fac(0.8 * s)
    mean_gray = x.mean((2, 3)) @ _GRAY.view(3) / unit                                 # [B], in [0, 1]
    m = bright.view(b, 1, 1) * eye                                                    # brightness
    t = torch.zeros(b, 3)
    m, t = contrast.view(b, 1, 1) * m, (1 - contrast)[:, None] * (bright * mean_gray)[:, None].expand(b, 3)
    sat_m = sat.view(b, 1, 1) * eye + (1 - sat).view(b, 1, 1) * gray_row.expand(b, 3, 3)
    m, t = sat_m @ m, (sat_m @ t[..., None])[..., 0]
    hue_m = _hue_matrix(torch.empty(b).uniform_(-0.2 * s, 0.2 * s, generator=g) * 2 * math.pi)
    m, t = hue_m @ m, (hue_m @ t[..., None])[..., 0]
    on = (torch.rand(b, generator=g) < jitter_p).view(b, 1, 1)
    m, t = torch.where(on, m, eye), torch.where(on[..., 0], t, torch.zeros(b, 3))
    gr = (torch.rand(b, generator=g) < grayscale_p).view(b, 1, 1)
    gm = gray_row.expand(b, 3, 3)
    m, t = torch.where(gr, gm @ m, m), torch.where(gr[..., 0], (gm @ t[..., None])[..., 0], t)
    # y01 = m x01 + t with x01 = x / unit; normalised: (y01 - mean) / std, clamped to the image of [0, 1]
    m = m / unit
    lo, hi = [0.0] * 3, [1.0] * 3
    if normalized:
        std, mean = _STD.view(1, 3), _MEAN.view(1, 3)
        m, t = m / std.view(1, 3, 1), (t - mean) / std
        lo, hi = _LO_NORM, _HI_NORM
    x = torch.baddbmm(t.view(b, 3, 1), m, x.view(b, 3, hgt * wid)).view(b, 3, hgt, wid)
    for c in range(3):                     # scalar bounds per channel: 5x faster than broadcast tensors
        x[:, c].clamp_(lo[c], hi[c])
    # Gaussian blur with p = blur_p (separable, grouped conv over the selected images only)
    sel = torch.nonzero(torch.rand(b, generator=g) < blur_p)[:, 0]
    if len(sel):
        k = max(3, int(0.1 * hgt) // 2 * 2 + 1)
        sigma = torch.empty(len(sel)).uniform_(*blur_sigma, generator=g)
        r = torch.arange(k, dtype=torch.float32) - k // 2
        ker = torch.exp(-r[None] ** 2 / (2 * sigma[:, None] ** 2))
        ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(3, 0)              # [3n, k]
        n3 = 3 * len(sel)
        z = F.pad(x[sel].reshape(1, n3, hgt, wid), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        z = F.conv2d(F.conv2d(z, ker.view(n3, 1, 1, k), groups=n3), ker.view(n3, 1, k, 1), groups=n3)
        x[sel] = z.view(len(sel), 3, hgt, wid)
    return x


def _hue_matrix(angle: torch.Tensor) -> torch.Tensor:
    """[B] radians -> [B, 3, 3] RGB matrices rotating the chroma plane (I, Q) of YIQ; luma unchanged."""
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return _YIQ2RGB @ rot @ _RGB2YIQ


class FastTrainViews(TrainDataset):
    """TrainDataset whose items are cheap (see the module docstring); use with `BatchViews`."""

    def __init__(self, manifest, root=None, *, audio_neighbours: np.ndarray | None = None,
                 audio_shift: bool = False, **kw):
        kw["frontend"] = "logmel"
        self.audio_shift = audio_shift     # a / a_conc at a random offset too (not only a_aug)
        super().__init__(manifest, root, **kw)
        if audio_neighbours is not None:
            audio_neighbours = np.asarray(audio_neighbours)
            if audio_neighbours.ndim != 2 or audio_neighbours.shape[0] != len(self.items) or \
                    audio_neighbours.min() < 0 or audio_neighbours.max() >= len(self.items):
                raise ValueError(f"audio neighbour table must be [N={len(self.items)}, k>=1] of indices in [0, N), "
                                 f"got {audio_neighbours.shape}")
        self.audio_neighbours = audio_neighbours
        n = self.specs.shape[-1]                                   # frames of the main window
        n_items = len(self.items)
        self.full_specs: list[torch.Tensor] = [None] * n_items     # per item [1, M, frames_i] float16
        by_len: dict[int, list[int]] = {}
        for i in range(n_items):                                   # short clips are tiled to the window
            by_len.setdefault(max(len(self.store.audio[i]), self.front.n), []).append(i)
        for idx in by_len.values():                                # batched front-end per clip length
            for k in range(0, len(idx), 256):
                chunk = idx[k:k + 256]
                waves = [self._clip(i) for i in chunk]
                specs = self.front.batch(waves).to(torch.float16)  # [b, 1, M, F]
                for i, sp in zip(chunk, specs):
                    self.full_specs[i] = sp.clone()
        self.n_frames = n

    def _clip(self, i: int) -> np.ndarray:
        w = self.store.wave(i)
        return w if len(w) >= self.front.n else np.resize(w, self.front.n).astype(np.float32)

    def _offset(self, i: int, rng: np.random.Generator) -> int:
        """A random window of item i's whole-clip log-mel: its first frame (or the circular shift)."""
        extra = self.full_specs[i].shape[-1] - self.n_frames
        return int(rng.integers(0, extra + 1)) if extra > 0 else int(rng.integers(0, self.n_frames))

    def _window(self, i: int, off: int) -> torch.Tensor:
        """float16 [1, M, n_frames]: the frames [off, off + n) of a longer clip, else the circular shift."""
        full = self.full_specs[i]
        if full.shape[-1] > self.n_frames:
            return full[..., off:off + self.n_frames]
        return torch.roll(full[..., :self.n_frames], off, dims=-1)

    def _shifted(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        return self._window(i, self._offset(i, rng)).float()

    def _draws(self, i: int, rng: np.random.Generator) -> tuple[int | None, int, int | None, int | None, int | None]:
        """Item i's random draws, in a fixed order: (offset of a | None, offset of a_aug, neighbour of
        v_conc | None, neighbour of a_conc | None, offset of a_conc | None)."""
        off_a = self._offset(i, rng) if self.audio_shift else None
        off_aug = self._offset(i, rng)
        j_v = j_a = off_c = None
        if self.neighbours is not None:   # v_conc from the image table; a_conc from the audio table if any
            row = self.neighbours[i]
            j_v = j_a = int(row[rng.integers(len(row))])
            if self.audio_neighbours is not None:
                row = self.audio_neighbours[i]
                j_a = int(row[rng.integers(len(row))])
            off_c = self._offset(j_a, rng) if self.audio_shift else None
        return off_a, off_aug, j_v, j_a, off_c

    def __getitem__(self, i: int) -> dict:
        off_a, off_aug, j_v, j_a, off_c = self._draws(i, self.rng())
        out = dict(index=i, id=self.items[i].id, image_u8=torch.from_numpy(self.store.images[i]).permute(2, 0, 1),
                   spec=self.specs[i] if off_a is None else self._window(i, off_a).float(),
                   spec_aug=self._window(i, off_aug).float())
        if j_v is not None:
            out["image_conc_u8"] = torch.from_numpy(self.store.images[j_v]).permute(2, 0, 1)
            out["spec_conc"] = self.specs[j_a] if off_c is None else self._window(j_a, off_c).float()
        return out

    def __getitems__(self, indices) -> dict:
        """A whole batch (the DataLoader calls this with a batch's indices; `BatchViews` takes the result):
        the items' draws as in `__getitem__`, item by item, from the batch's own generator when
        `indices` is a `SeededBatch` (else the dataset's), then one gather per key. Keys: index [B],
        id (list), image_u8 / image_conc_u8 uint8 [B, 3, S, S] (channels_last views of the HWC store),
        spec / spec_aug / spec_conc float32 [B, 1, M, n], and `view_seed` for BatchViews' generator
        (SeededBatch only)."""
        seed = getattr(indices, "seed", None)
        rng = np.random.default_rng(seed) if seed is not None else self.rng()
        idx = [int(i) for i in indices]
        draws = [self._draws(i, rng) for i in idx]
        off_a, off_aug, j_v, j_a, off_c = zip(*draws)

        def windows(items, offs):
            return torch.stack([self._window(i, o) for i, o in zip(items, offs)]).float()

        images = self.store.images
        out = dict(index=torch.tensor(idx, dtype=torch.long), id=[self.items[i].id for i in idx],
                   image_u8=torch.from_numpy(images[idx]).permute(0, 3, 1, 2),
                   spec=self.specs[idx] if off_a[0] is None else windows(idx, off_a),
                   spec_aug=windows(idx, off_aug))
        if j_v[0] is not None:
            out["image_conc_u8"] = torch.from_numpy(images[list(j_v)]).permute(0, 3, 1, 2)
            out["spec_conc"] = self.specs[list(j_a)] if off_c[0] is None else windows(j_a, off_c)
        if seed is not None:
            out["view_seed"] = int(rng.integers(0, 2 ** 63 - 1))
        return out


class BatchViews:
    """collate_fn: FastTrainViews' gathered batch (or a list of its items), then image / image_aug /
    image_conc on the batch."""

    def __init__(self, augment: bool = True, anchor: dict | None = None, *, channels_last: bool = False,
                 **simclr):
        """anchor: crop/flip of v and v_conc ({scale, ratio, flip_p}); None = plain frames.
        channels_last: the image views in that memory format (the trainer's, cfg.channels_last)."""
        self.augment, self.simclr = augment, simclr
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.anchor = None if anchor is None else {"scale": (0.6, 1.0), **anchor, "jitter_p": 0.0,
                                                   "grayscale_p": 0.0, "blur_p": 0.0}

    def _anchor_view(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        y = batch_simclr(x, **self.anchor, generator=g, normalized=True) if self.anchor else normalize_u8(x)
        return y.contiguous(memory_format=self.memory_format)

    def __call__(self, items: list[dict] | Mapping) -> dict:
        b = dict(items) if isinstance(items, Mapping) else collate(items)
        seed = b.pop("view_seed", None)
        g = None if seed is None else torch.Generator().manual_seed(seed)
        x = b.pop("image_u8")                                      # uint8 [B, 3, S, S]
        b["image"] = self._anchor_view(x, g)
        if self.augment:
            b["image_aug"] = batch_simclr(x, **self.simclr, generator=g, normalized=True
                                          ).contiguous(memory_format=self.memory_format)
        if "image_conc_u8" in b:
            b["image_conc"] = self._anchor_view(b.pop("image_conc_u8"), g)
        return b
