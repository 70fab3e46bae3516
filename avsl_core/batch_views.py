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
* `BatchViews` is the DataLoader `collate_fn` (it runs in the workers when num_workers > 0): it stacks
  the items and builds `image`, `image_aug` (SimCLR, `batch_simclr`) and `image_conc` on the batch.
* `batch_simclr`: SimCLR's augmentation (Chen et al. 2020, App. A; the parameters of
  `vision.simclr_augment`) with independent random parameters per image, vectorised: random resized
  crop + flip as one affine `grid_sample` (bilinear), colour jitter (brightness, contrast, saturation,
  hue as a rotation of the YIQ chroma plane, an approximation of the HSV hue shift) with p = 0.8,
  grayscale p = 0.2, Gaussian blur p = 0.5 (separable, grouped conv). Randomness comes from torch's
  global RNG (per-worker seeded by the DataLoader; saved in checkpoints in the main process).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from avsl_core.data.datasets import TrainDataset, collate
from avsl_core.vision import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)    # ITU-R 601 luma (as torchvision)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ImageNet-normalised."""
    return (x - _MEAN) / _STD


def _crop_boxes(b: int, scale, ratio, tries: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's sampling (torchvision), vectorised: fractions (w, h) of the side, centre (cx, cy)."""
    area = torch.empty(b, tries).uniform_(*scale)
    logr = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w, h = torch.sqrt(area * torch.exp(logr)), torch.sqrt(area / torch.exp(logr))
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(b, dtype=torch.long))
    w = torch.where(ok.any(1), w.gather(1, first[:, None])[:, 0], torch.ones(b))   # fallback: whole image
    h = torch.where(ok.any(1), h.gather(1, first[:, None])[:, 0], torch.ones(b))
    cx = w / 2 + torch.rand(b) * (1 - w)
    cy = h / 2 + torch.rand(b) * (1 - h)
    return w, h, cx, cy


def batch_simclr(x: torch.Tensor, *, strength: float = 0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_p: float = 0.5, jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma=(0.1, 2.0)) -> torch.Tensor:
    """SimCLR views of a batch, independent per image: x [B, 3, S, S] in [0, 1] -> same shape, in [0, 1].

    Colour jitter and grayscale are linear in RGB, so they are composed into one 3×3 matrix and
    offset per image and clamped once (torchvision clamps after each factor; the difference is confined
    to saturated pixels).
    """
    b, _, hgt, wid = x.shape
    # random resized crop + horizontal flip: output coordinate u in [-1, 1] samples input (2c - 1) + w·u
    w, h, cx, cy = _crop_boxes(b, scale, ratio)
    flip = torch.where(torch.rand(b) < flip_p, -1.0, 1.0)
    u = (torch.arange(wid, dtype=torch.float32) * 2 + 1) / wid - 1                  # pixel centres
    v = (torch.arange(hgt, dtype=torch.float32) * 2 + 1) / hgt - 1
    grid = torch.empty(b, hgt, wid, 2)
    grid[..., 0] = ((w * flip)[:, None] * u[None] + (2 * cx - 1)[:, None])[:, None, :]
    grid[..., 1] = (h[:, None] * v[None] + (2 * cy - 1)[:, None])[:, :, None]
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # colour: brightness, contrast, saturation, hue (p = jitter_p), then grayscale (p = grayscale_p)
    s = strength
    eye = torch.eye(3).expand(b, 3, 3)
    gray_row = _GRAY.view(1, 1, 3)
    def fac(mag):
        return 1 + torch.empty(b).uniform_(-mag, mag)
    bright, contrast, sat = fac(0.8 * s), fac(0.8 * s), fac(0.8 * s)
    mean_gray = (x * _GRAY).sum(1).mean((1, 2))                                       # [B]
    m = bright.view(b, 1, 1) * eye                                                    # brightness
    t = torch.zeros(b, 3)
    m, t = contrast.view(b, 1, 1) * m, (1 - contrast)[:, None] * (bright * mean_gray)[:, None].expand(b, 3)
    sat_m = sat.view(b, 1, 1) * eye + (1 - sat).view(b, 1, 1) * gray_row.expand(b, 3, 3)
    m, t = sat_m @ m, (sat_m @ t[..., None])[..., 0]
    hue_m = _hue_matrix(torch.empty(b).uniform_(-0.2 * s, 0.2 * s) * 2 * math.pi)
    m, t = hue_m @ m, (hue_m @ t[..., None])[..., 0]
    on = (torch.rand(b) < jitter_p).view(b, 1, 1)
    m, t = torch.where(on, m, eye), torch.where(on[..., 0], t, torch.zeros(b, 3))
    g = (torch.rand(b) < grayscale_p).view(b, 1, 1)
    gm = gray_row.expand(b, 3, 3)
    m, t = torch.where(g, gm @ m, m), torch.where(g[..., 0], (gm @ t[..., None])[..., 0], t)
    x = (torch.einsum("bij,bjhw->bihw", m, x) + t.view(b, 3, 1, 1)).clamp_(0, 1)
    # Gaussian blur with p = blur_p (separable, grouped conv over the selected images only)
    sel = torch.nonzero(torch.rand(b) < blur_p)[:, 0]
    if len(sel):
        k = max(3, int(0.1 * hgt) // 2 * 2 + 1)
        sigma = torch.empty(len(sel)).uniform_(*blur_sigma)
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
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return torch.linalg.inv(rgb2yiq) @ rot @ rgb2yiq


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

    def _shifted(self, i: int, rng: np.random.Generator) -> torch.Tensor:
        full = self.full_specs[i]
        extra = full.shape[-1] - self.n_frames
        if extra > 0:
            off = int(rng.integers(0, extra + 1))
            return full[..., off:off + self.n_frames].float()
        return torch.roll(full[..., :self.n_frames].float(), int(rng.integers(0, self.n_frames)), dims=-1)

    def __getitem__(self, i: int) -> dict:
        rng = self.rng()
        spec = self._shifted(i, rng) if self.audio_shift else self.specs[i]
        out = dict(index=i, id=self.items[i].id, image_u8=torch.from_numpy(self.store.images[i]).permute(2, 0, 1),
                   spec=spec, spec_aug=self._shifted(i, rng))
        if self.neighbours is not None:   # v_conc from the image table; a_conc from the audio table if any
            row = self.neighbours[i]
            j = int(row[rng.integers(len(row))])
            out["image_conc_u8"] = torch.from_numpy(self.store.images[j]).permute(2, 0, 1)
            if self.audio_neighbours is not None:
                row = self.audio_neighbours[i]
                j = int(row[rng.integers(len(row))])
            out["spec_conc"] = self._shifted(j, rng) if self.audio_shift else self.specs[j]
        return out


class BatchViews:
    """collate_fn: stack FastTrainViews items, then image / image_aug / image_conc on the batch."""

    def __init__(self, augment: bool = True, anchor: dict | None = None, **simclr):
        """anchor: crop/flip of v and v_conc ({scale, ratio, flip_p}); None = plain frames."""
        self.augment, self.simclr = augment, simclr
        self.anchor = None if anchor is None else {"scale": (0.6, 1.0), **anchor, "jitter_p": 0.0,
                                                   "grayscale_p": 0.0, "blur_p": 0.0}

    def __call__(self, items: list[dict]) -> dict:
        b = collate(items)
        x = b.pop("image_u8").float().div_(255)                    # [B, 3, S, S]
        b["image"] = normalize(batch_simclr(x, **self.anchor) if self.anchor else x)
        if self.augment:
            b["image_aug"] = normalize(batch_simclr(x, **self.simclr))
        if "image_conc_u8" in b:
            xc = b.pop("image_conc_u8").float().div_(255)
            b["image_conc"] = normalize(batch_simclr(xc, **self.anchor) if self.anchor else xc)
        return b
