"""Torch datasets over a manifest (contract 1): training views and test items with ground-truth maps.

Decoding happens once: images are resized to S x S and kept as one uint8 array [N, S, S, 3], audio as
int16 arrays (PCM16 is exact), masks as bool arrays; with the default log-mel front-end the spectrogram
of each item's fixed window is precomputed too. DataLoader workers fork after that and share the
memory, so a sample costs only the augmentations.

Audio windows (n = ``audio_seconds`` * 16 kHz, 3 s): the *main* view is the centre n samples of the
clip (AVScenes training clips are rendered 4 s long, so this is [0.5 s, 3.5 s)); the *a_aug* view
(paper §3: "the same clip with a random time shift") is ``audio.random_time_shift`` over the whole clip
(a random window of a longer clip, a circular shift of a clip of exactly n). With the "official"
scipy front-end, clips of >= 10 s are passed whole so the peer's [3.5 s, 6.5 s) crop applies (parity
on real data); shorter clips give their centre window. "ezvsl" takes the central 3 s, the same as ours.

Train sample (``TrainDataset``): image [3,S,S] (ImageNet-normalised), image_aug (SimCLR view, v_aug),
spec, spec_aug, and, when a neighbour table [N, k] is given, image_conc / spec_conc of a neighbour
drawn uniformly from the item's row (the paper's mined positives, §3.2); plus index and id.
Test sample (``TestDataset``): image, spec, gt_map [G, G] float (union of the item's boxes with the
peers' ``int(v * G)`` pixel convention, or the mask), boxes, objects, category, negative, group, kind.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from avsl_core.audio import SAMPLE_RATE, LogMel, load_audio, random_time_shift, scipy_spectrogram
from avsl_core.data.manifest import ManifestItem, read_manifest, resolve
from avsl_core.errors import DataError
from avsl_core.vision import IMAGENET_MEAN, IMAGENET_STD, load_image_rgb, simclr_augment

FRONTENDS = ("logmel", "official", "ezvsl", "wave")
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _items_and_root(manifest, root):
    if isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest)
        root = Path(root) if root is not None else path.parent
        return read_manifest(path, root=root), root
    if root is None:
        raise ValueError("a list of ManifestItem needs an explicit data root")
    return list(manifest), Path(root)


class DecodedStore:
    """Decoded images uint8 [N, S, S, 3], audio int16 list, masks (bool [S, S] or None)."""

    def __init__(self, items: list[ManifestItem], root, image_size: int, *, masks: bool = False,
                 threads: int = 2):
        self.items, self.root, self.size = items, Path(root), image_size
        self.images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
        self.audio: list[np.ndarray] = [None] * len(items)         # int16 [T]
        self.masks: list[np.ndarray | None] = [None] * len(items)
        with ThreadPoolExecutor(max(1, threads)) as ex:
            list(ex.map(lambda i: self._decode(i, masks), range(len(items))))

    def _decode(self, i: int, masks: bool) -> None:
        it, s = self.items[i], self.size
        img = load_image_rgb(resolve(self.root, it.image))
        if img.size != (s, s):
            img = img.resize((s, s), Image.Resampling.BICUBIC)
        self.images[i] = np.asarray(img)
        wave = load_audio(resolve(self.root, it.audio), SAMPLE_RATE, allow_silent=it.negative)
        self.audio[i] = np.clip(np.rint(wave * 32768.0), -32768, 32767).astype(np.int16)
        if masks and it.mask:
            path = resolve(self.root, it.mask)
            try:
                m = Image.open(path).convert("L")
            except (OSError, ValueError) as e:
                raise DataError(path, f"unreadable mask ({e})") from e
            if m.size != (s, s):
                m = m.resize((s, s), Image.Resampling.NEAREST)
            self.masks[i] = np.asarray(m) > 0

    def wave(self, i: int) -> np.ndarray:
        return self.audio[i].astype(np.float32) / 32768.0              # [T]

    def image_tensor(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0)   # [3, S, S]
        return (x - _MEAN) / _STD


class SpecFrontend:
    """wave float32 [n] -> spectrogram tensor: logmel [1, n_mels, F], official [1, 257, 299],
    ezvsl [1, 257, 200], wave [1, n] (raw, for a batched front-end in the trainer)."""

    def __init__(self, name: str = "logmel", audio_seconds: float = 3.0, **logmel_kwargs):
        if name not in FRONTENDS:
            raise ValueError(f"unknown front-end {name!r}; expected one of {FRONTENDS}")
        self.name, self.n = name, int(round(audio_seconds * SAMPLE_RATE))
        self.mel = LogMel(**logmel_kwargs) if name == "logmel" else None

    def main_window(self, wave: np.ndarray) -> np.ndarray:
        """The fixed (non-augmented) window fed to the front-end (see the module docstring)."""
        if self.name == "official" and len(wave) >= 10 * SAMPLE_RATE:
            return wave
        if len(wave) <= self.n:
            return np.resize(wave, self.n).astype(np.float32)          # tile (np.resize repeats)
        start = (len(wave) - self.n) // 2
        return wave[start:start + self.n]

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        if self.name == "logmel":
            with torch.no_grad():
                return self.mel(np.ascontiguousarray(wave, dtype=np.float32))[0]
        if self.name == "wave":
            return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
        return torch.from_numpy(scipy_spectrogram(wave, self.name))

    def batch(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Front-end of many equal-length windows at once.  -> [B, ...]"""
        if self.name == "logmel":
            with torch.no_grad():
                return self.mel(torch.from_numpy(np.stack(waves)))
        return torch.stack([self(w) for w in waves])


class _Base(Dataset):
    def __init__(self, manifest, root=None, *, image_size: int = 96, frontend: str = "logmel",
                 audio_seconds: float = 3.0, precompute_specs: bool | None = None, masks: bool = False,
                 logmel_kwargs: dict | None = None, threads: int = 2):
        self.items, self.root = _items_and_root(manifest, root)
        self.image_size = image_size
        self.front = SpecFrontend(frontend, audio_seconds, **(logmel_kwargs or {}))
        self.store = DecodedStore(self.items, self.root, image_size, masks=masks, threads=threads)
        if precompute_specs is None:
            precompute_specs = frontend in ("logmel", "wave")
        self.specs = None
        if precompute_specs and self.items:
            windows = [self.front.main_window(self.store.wave(i)) for i in range(len(self.items))]
            self.specs = torch.cat([self.front.batch(windows[k:k + 256])
                                    for k in range(0, len(windows), 256)])   # [N, 1, ., .]

    def __len__(self) -> int:
        return len(self.items)

    def spec(self, i: int) -> torch.Tensor:
        if self.specs is not None:
            return self.specs[i]
        return self.front(self.front.main_window(self.store.wave(i)))


class TrainDataset(_Base):
    """Training views (paper §3: v, v_aug, a, a_aug, and the mined positives v_conc, a_conc).

    ``neighbours``: int array [N, k] of item indices (a k-NN table, row i = neighbours of item i) or None.
    ``image_aug``: PIL -> [3, S, S] callable; default ``vision.simclr_augment(S)`` (it is about 2/3 of
    a sample's cost). ``augment=False`` leaves out image_aug and spec_aug (methods that do not use
    them, e.g. the EZ-VSL and LVS baselines).
    """

    def __init__(self, manifest, root=None, *, neighbours: np.ndarray | None = None, image_aug=None,
                 augment: bool = True, **kw):
        super().__init__(manifest, root, **kw)
        self.augment = augment
        if neighbours is not None:
            neighbours = np.asarray(neighbours)
            if neighbours.ndim != 2 or neighbours.shape[0] != len(self.items) or neighbours.shape[1] < 1:
                raise ValueError(f"neighbour table must be [N={len(self.items)}, k>=1], "
                                 f"got {neighbours.shape}")
            if neighbours.min() < 0 or neighbours.max() >= len(self.items):
                raise ValueError("neighbour table holds indices outside [0, N)")
        self.neighbours = neighbours
        self.image_aug = image_aug or simclr_augment(self.image_size)
        self._rng, self._rng_pid = None, None

    def rng(self) -> np.random.Generator:
        """Per-process generator seeded from torch's (per-worker, per-epoch) seed."""
        if self._rng is None or self._rng_pid != os.getpid():
            self._rng = np.random.default_rng(torch.initial_seed() % 2 ** 63)
            self._rng_pid = os.getpid()
        return self._rng

    def __getitem__(self, i: int) -> dict:
        rng, st = self.rng(), self.store
        out = dict(index=i, id=self.items[i].id,
                   image=st.image_tensor(i),                                       # [3, S, S]
                   spec=self.spec(i))                                              # [1, F, T]
        if self.augment:
            out["image_aug"] = self.image_aug(Image.fromarray(st.images[i]))      # [3, S, S]
            out["spec_aug"] = self.front(random_time_shift(st.wave(i), self.front.n, rng))
        if self.neighbours is not None:
            row = self.neighbours[i]
            j = int(row[rng.integers(len(row))])
            out["image_conc"] = st.image_tensor(j)
            out["spec_conc"] = self.spec(j)
        return out


class TestDataset(_Base):
    """Test items with ground-truth maps. ``gt``: "box" (union of boxes, the VGG-SS/Flickr protocol)
    or "mask" (the item's mask where it has one, else its boxes); ``gt_size`` G defaults to S."""
    __test__ = False   # not a pytest test class


    def __init__(self, manifest, root=None, *, gt: str = "box", gt_size: int | None = None, **kw):
        if gt not in ("box", "mask"):
            raise ValueError(f"gt must be 'box' or 'mask', got {gt!r}")
        super().__init__(manifest, root, masks=(gt == "mask"), **kw)
        self.gt, self.gt_size = gt, gt_size or self.image_size

    def gt_map(self, i: int) -> torch.Tensor:
        g, it = self.gt_size, self.items[i]
        m = self.store.masks[i]
        if self.gt == "mask" and m is not None:
            if m.shape != (g, g):
                m = np.asarray(Image.fromarray(m).resize((g, g), Image.Resampling.NEAREST))
            return torch.from_numpy(m.astype(np.float32))
        return torch.from_numpy(boxes_to_map(it.boxes, g))

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        ex = it.extra or {}
        return dict(index=i, id=it.id, image=self.store.image_tensor(i), spec=self.spec(i),
                    gt_map=self.gt_map(i), boxes=[tuple(b) for b in it.boxes],
                    objects=[dict(category=o.get("category"), box=tuple(o["box"]))
                             for o in ex.get("objects", [])],
                    category=it.category, negative=it.negative, group=it.group,
                    kind=ex.get("kind", "negative" if it.negative else "loc"))


def boxes_to_map(boxes, size: int) -> np.ndarray:
    """Union of normalised boxes as a float map [size, size], pixels ``int(v * size)`` (the peers'
    convention; a 1e-6 tolerance keeps exact pixel-edge boxes exact)."""
    m = np.zeros((size, size), dtype=np.float32)
    for x1, y1, x2, y2 in boxes:
        c0, r0, c1, r1 = (int(np.floor(v * size + 1e-6)) for v in (x1, y1, x2, y2))
        m[max(r0, 0):min(r1, size), max(c0, 0):min(c1, size)] = 1.0
    return m


def collate(batch: list[dict]) -> dict:
    """Stack tensors (same shapes), make int/bool/float tensors of numbers, keep the rest as lists."""
    out = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        if all(isinstance(v, torch.Tensor) for v in vals):
            out[key] = torch.stack(vals)
        elif all(isinstance(v, bool) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.long)
        else:
            out[key] = vals
    return out


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the machine has 2 cores)."""
    torch.set_num_threads(1)
