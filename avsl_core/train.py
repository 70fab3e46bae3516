"""The training driver (paper §4.1: Adam, lr 1e-4, τ = 0.07; SPEC §1), for every method and profile.

    python -m avsl_core.train --config quick --section train.main --out runs/quick/ckpt/main [--resume]
    torchrun --nproc_per_node=2 -m avsl_core.train --config ... --out ...        # DDP (gloo / nccl)

* Config: `TrainConfig` (frozen), read from a YAML file or a profile (`configs/<name>.yaml`), one
  section of it (`--section a.b`), plus `--set key=value` overrides (dotted keys, YAML values).
* Methods: `METHODS` maps `TrainConfig.method` to a factory `(cfg, model) -> Method`. "ours" is the
  paper's multi-positive loss (Eq. 5, `losses.multi_positive_loss`); baselines register their own
  loss objects with `register_method` without touching the loop.
* Loop: Adam + linear warm-up; channels_last; bf16 autocast where the hardware has bf16 (CUDA, CPUs
  with avx512_bf16/AMX), fp32 elsewhere (`precision="auto"`: on an AVX2-only CPU bf16 is emulated and
  4-8x slower); denormals flushed on CPU (they made steps 5-10x slower); an optional curriculum phase
  (the first N steps from another set, e.g. single-object scenes) before the epochs; epochs or a time
  budget (stops at the end of the step that crosses it, then checkpoints).
* Data: AVScenes sets through `batch_views.FastTrainViews` + `BatchViews` (per-item work is indexing;
  the SimCLR view is made on whole batches), or `datasets.TrainDataset` (`data.fast_views=false`).
* Records (rank 0 only): `last.pt` every epoch / at the budget (model, optimizer, scheduler, method
  state, every RNG state of every rank, position, config, seed, git commit), written atomically and
  loaded with `weights_only=True`; `model_card.md`, `config.json`, `steps.csv` (per step),
  `epochs.json` (per epoch), `loss_curve.png`, `summary.json`.
* Resume (`--resume`): continues a killed run from its last checkpoint, bit-exactly at epoch
  boundaries with fp32 (tests/test_train.py); with the fast views (scenes, logmel) at any checkpoint
  and for any num_workers, since every batch draws its views from its own seed
  (`batch_views.SeededBatch`). A checkpoint of another config is
  refused; only the fields in `RESUMABLE_FIELDS` may differ.
* DDP (torchrun): `DistributedSampler` shards each epoch; `batch_size` is the global batch, split
  over ranks (in-batch negatives are per rank); only rank 0 writes.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from avsl_core.config import load_profile, repo_root
from avsl_core.losses import LossConfig, multi_positive_loss
from avsl_core.models import AVModel, ModelConfig
from avsl_core.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, environment, git_commit

CKPT_FORMAT = 1
CKPT_NAME = "last.pt"
# Fields that may change between a run and its resumption (they do not change what is learned).
RESUMABLE_FIELDS = ("epochs", "time_budget_min", "max_steps", "num_workers", "log_every")
PRECISIONS = ("auto", "bf16", "fp32")
# batch key of each view (TrainDataset), and the loss' view names (losses.VISION_VIEWS/AUDIO_VIEWS)
VIEW_KEYS = {"v": "image", "v_aug": "image_aug", "v_conc": "image_conc",
             "a": "spec", "a_aug": "spec_aug", "a_conc": "spec_conc"}


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class DataConfig:
    """Where the training pairs come from, and the front-end (see avsl_core.data.datasets.TrainDataset)."""

    kind: str = "scenes"                 # "scenes": a rendered set dir (manifest.jsonl); "synthetic": tests/benchmarks
    train_dir: str = "data/avscenes/quick/train"      # relative paths resolve against the repo root
    image_size: int = 96                 # S (square)
    frontend: str = "logmel"             # audio front-end: "logmel" | "official" | "ezvsl"
    curriculum_dir: str | None = None    # set used for the first `curriculum_steps` steps (e.g. single_train)
    fast_views: bool = True              # batch_views: augmentation on whole batches (logmel front-end only)
    augment: dict = field(default_factory=dict)   # batch_simclr overrides, e.g. {scale: [0.3, 1.0]}
    # Light training augmentation of the anchor views (fast views only; every method alike), so a
    # fixed set of rendered scenes is not replayed pixel-identical each epoch: {scale: [0.6, 1.0],
    # flip_p: 0.5} crops/flips v and v_conc, {audio_shift: true} draws a and a_conc at a random
    # offset of their clip. Empty = the paper's plain frames and fixed windows.
    anchor_augment: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)   # extra keyword arguments for the dataset


@dataclass(frozen=True)
class TrainConfig:
    """One training run; stored in every checkpoint and compared on resume."""

    method: str = "ours"                 # key of METHODS
    model: dict = field(default_factory=dict)    # ModelConfig fields
    loss: dict = field(default_factory=dict)     # the method's loss config (LossConfig for "ours")
    data: DataConfig = field(default_factory=DataConfig)
    neighbours: str | None = None        # [N, k] int .npy (avsl_core.mining): v_conc, and a_conc unless ...
    audio_neighbours: str | None = None  # ... a separate audio table is given (paper §3; fast views only)
    neighbours_k: int | None = None      # use only each row's first k neighbours (tables are sorted by
                                         # similarity, so one mined table serves Table 9's smaller k)
    epochs: int = 1                      # passes over the training set (after the curriculum phase)
    time_budget_min: float | None = None  # stop at the end of the step that crosses it (then checkpoint)
    max_steps: int | None = None         # hard cap on optimizer steps (curriculum included)
    batch_size: int = 64                 # global batch (split over DDP ranks)
    lr: float = 1e-4                     # Adam (paper §4.1)
    warmup_steps: int = 0                # linear warm-up from lr/warmup_steps, then constant ...
    lr_decay_steps: int | None = None    # ... or, when set, cosine decay to 0 at this step (held at 0 after)
    weight_decay: float = 0.0
    grad_clip: float | None = None       # max global grad norm, None = off
    num_workers: int = 0
    seed: int = 0
    precision: str = "auto"              # "bf16" autocast | "fp32" | "auto" (see `resolve_precision`)
    channels_last: bool = True           # CPU: 2x with bf16 on avx512_bf16 (notes/toolchain.md §5)
    curriculum_steps: int = 0            # steps drawn from data.curriculum_dir before epoch 1
    log_every: int = 10                  # progress-bar / console refresh (the CSV logs every step)

    def __post_init__(self):
        checks = [("epochs", self.epochs >= 0), ("batch_size", self.batch_size >= 2), ("lr", self.lr > 0),
                  ("warmup_steps", self.warmup_steps >= 0), ("num_workers", self.num_workers >= 0),
                  ("lr_decay_steps", self.lr_decay_steps is None or self.lr_decay_steps > self.warmup_steps),
                  ("precision", self.precision in PRECISIONS), ("curriculum_steps", self.curriculum_steps >= 0),
                  ("time_budget_min", self.time_budget_min is None or self.time_budget_min > 0),
                  ("log_every", self.log_every >= 1),
                  ("neighbours_k", self.neighbours_k is None or self.neighbours_k >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}: invalid value {getattr(self, name)!r}")
        if self.curriculum_steps and not self.data.curriculum_dir:
            raise ValueError("TrainConfig.curriculum_steps > 0 needs data.curriculum_dir (e.g. the single_train set)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a (YAML) mapping; unknown keys are an error naming the key."""
        d = dict(d)
        for klass, sub, where in ((cls, d, "TrainConfig"), (DataConfig, d.get("data") or {}, "TrainConfig.data")):
            unknown = sorted(set(sub) - {f.name for f in dataclasses.fields(klass)})
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {unknown}; known: "
                                 f"{sorted(f.name for f in dataclasses.fields(klass))}")
        d["data"] = DataConfig(**(d.get("data") or {}))
        return cls(**d)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)


def load_config(source: str, section: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A YAML file path or a profile name; `section` is a dotted path inside it (default: `train`
    if present, else the whole file); `overrides` are `dotted.key=yaml_value` strings."""
    path = Path(source)
    raw = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") or path.exists() else load_profile(source)
    node = raw
    keys = section.split(".") if section else (["train"] if isinstance(raw, dict) and "train" in raw else [])
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise KeyError(f"{source}: no section {section or 'train'!r} (missing key {k!r})")
        node = node[k]
    node = json.loads(json.dumps(node or {}))   # deep copy
    for ov in overrides:
        key, sep, val = ov.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {ov!r}")
        *parents, leaf = key.split(".")
        cur = node
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = yaml.safe_load(val)
    return TrainConfig.from_dict(node)


def _resolve(p: str | None) -> Path | None:
    if p is None:
        return None
    path = Path(p)
    return path if path.is_absolute() or path.exists() else repo_root() / path


# ------------------------------------------------------------------------------------------ methods
class OursMethod:
    """Paper Eq. 5: the multi-positive loss over the (v_i, a_j) pairs its switches select."""

    def __init__(self, cfg: TrainConfig, model: AVModel):
        self.loss_cfg = LossConfig.from_dict(cfg.loss)
        if self.loss_cfg.semantic and not cfg.neighbours and cfg.data.kind != "synthetic":
            raise ValueError("loss.semantic=True needs conceptual positives: set `neighbours` to a neighbour "
                             "table [N, k] from avsl_core.mining, or set loss.semantic=false")
        self.needs_conc = self.loss_cfg.semantic

    def views(self, semantic: bool | None = None) -> tuple[list[str], list[str]]:
        vis, aud = ["v"], ["a"]
        if self.loss_cfg.multi_view:
            vis, aud = vis + ["v_aug"], aud + ["a_aug"]
        if self.loss_cfg.semantic if semantic is None else semantic:
            vis, aud = vis + ["v_conc"], aud + ["a_conc"]
        return vis, aud

    def loss(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        # a curriculum batch (a set the neighbour table does not index) has no conceptual views:
        # it trains on the other pairs only
        semantic = self.loss_cfg.semantic and "image_conc" in batch
        loss_cfg = self.loss_cfg if semantic == self.loss_cfg.semantic else \
            dataclasses.replace(self.loss_cfg, semantic=False)
        vis, aud = self.views(semantic)
        images = torch.cat([batch[VIEW_KEYS[v]] for v in vis])          # [nv*B, 3, S, S]
        specs = torch.cat([batch[VIEW_KEYS[a]] for a in aud])           # [na*B, 1, F, T]
        out = model(images, specs)                                      # one pass: DDP hooks see it
        b = batch[VIEW_KEYS["v"]].shape[0]
        vision = {v: {k: out[k][i * b:(i + 1) * b] for k in ("v_map", "v_emb")} for i, v in enumerate(vis)}
        audio = {a: {k: out[k][i * b:(i + 1) * b] for k in ("a", "a_emb")} for i, a in enumerate(aud)}
        return multi_positive_loss(vision, audio, loss_cfg)

    def after_step(self, model: torch.nn.Module) -> None:   # momentum encoders etc. (baselines)
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


METHODS: dict[str, Callable[[TrainConfig, AVModel], object]] = {"ours": OursMethod}


def register_method(name: str):
    """Decorator: `@register_method("ezvsl") class EZVSL: ...` with OursMethod's interface
    (needs_conc, loss(model, batch) -> {"loss", ...}, after_step, state_dict, load_state_dict)."""
    def deco(factory):
        METHODS[name] = factory
        return factory
    return deco


# ------------------------------------------------------------------------------------------ data
class SyntheticAV(Dataset):
    """Learnable toy pairs for tests and benchmarks: a bright square whose colour (one of `n_classes`)
    matches the audio's frequency band; same keys and shapes as TrainDataset (all views)."""

    def __init__(self, n: int = 64, image_size: int = 32, spec_shape=(32, 32), n_classes: int = 4, seed: int = 0):
        self.n, self.s, self.spec_shape, self.k, self.seed = n, image_size, spec_shape, n_classes, seed

    def __len__(self):
        return self.n

    def _pair(self, i: int, g: torch.Generator):
        c = i % self.k
        img = 0.3 * torch.randn(3, self.s, self.s, generator=g)
        w = self.s // 3
        x, y = torch.randint(0, self.s - w + 1, (2,), generator=g).tolist()
        img[c % 3, y:y + w, x:x + w] += 2.0 if c < 3 else -2.0
        f, t = self.spec_shape
        spec = 0.3 * torch.randn(1, f, t, generator=g)
        band = f // self.k
        spec[0, c * band:(c + 1) * band] += 1.5
        return img, spec

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        img, spec = self._pair(i, g)
        gj = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))   # global RNG: new views
        img_aug, spec_aug = self._pair(i, gj)
        img_c, spec_c = self._pair(i + self.k * int(torch.randint(1, 4, (1,))), gj)   # same class
        return {"image": img, "image_aug": img_aug, "image_conc": img_c, "spec": spec, "spec_aug": spec_aug,
                "spec_conc": spec_c, "index": i, "id": f"syn{i:05d}"}


def build_dataset(cfg: TrainConfig, set_dir: str | None, with_conc: bool) -> Dataset:
    """The training Dataset of a set dir (`kind="scenes"`) or the synthetic toy set."""
    d = cfg.data
    if d.kind == "synthetic":
        return SyntheticAV(image_size=d.image_size, seed=cfg.seed, **d.options)
    if d.kind != "scenes":
        raise ValueError(f"TrainConfig.data.kind: expected 'scenes' or 'synthetic', got {d.kind!r}")
    if d.anchor_augment and not uses_fast_views(cfg):
        raise ValueError("TrainConfig.data.anchor_augment needs data.fast_views with the logmel front-end")
    if uses_fast_views(cfg):
        from avsl_core.batch_views import FastTrainViews as TrainDataset
    else:
        from avsl_core.data.datasets import TrainDataset
    root = _resolve(set_dir)
    if not (root / "manifest.jsonl").exists():
        raise FileNotFoundError(f"{root / 'manifest.jsonl'}: no rendered set here (data.train_dir / "
                                "data.curriculum_dir; render it with avsl_core.data.avscenes)")
    tables = {}
    if with_conc and set_dir == d.train_dir:   # tables index the training set; a curriculum set goes without
        if not cfg.neighbours:
            raise ValueError("the loss needs conceptual positives: set `neighbours` (a table from avsl_core.mining)")
        tables["neighbours"] = _load_table(cfg.neighbours, cfg.neighbours_k)
        if cfg.audio_neighbours:
            if not uses_fast_views(cfg):
                raise ValueError("audio_neighbours (a separate a_conc table) needs data.fast_views with logmel")
            tables["audio_neighbours"] = _load_table(cfg.audio_neighbours, cfg.neighbours_k)
    extra = {"audio_shift": bool(d.anchor_augment.get("audio_shift"))} if uses_fast_views(cfg) else {}
    return TrainDataset(root / "manifest.jsonl", root, image_size=d.image_size, frontend=d.frontend,
                        **tables, **extra, **d.options)


def _load_table(path: str, k: int | None = None) -> np.ndarray:
    """An [N, K] neighbour table; with `k`, its first k columns (the k most similar: rows are sorted)."""
    p = _resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: neighbour table not found (build it with avsl_core.mining / embedders)")
    table = np.load(p)
    if k is not None:
        if not 1 <= k <= table.shape[1]:
            raise ValueError(f"{p}: neighbours_k={k} outside 1..{table.shape[1]} (the table's k)")
        table = np.ascontiguousarray(table[:, :k])
    return table


def uses_fast_views(cfg: TrainConfig) -> bool:
    return cfg.data.kind == "scenes" and cfg.data.fast_views and cfg.data.frontend == "logmel"


def make_collate(cfg: TrainConfig, method) -> Callable | None:
    """DataLoader collate_fn: BatchViews (fast views; SimCLR only if the method reads v_aug), else stacking."""
    if cfg.data.kind == "synthetic":
        return None
    if uses_fast_views(cfg):
        from avsl_core.batch_views import BatchViews
        vis = method.views()[0] if hasattr(method, "views") else ["v", "v_aug"]
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.augment.items()}
        anchor = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.anchor_augment.items()
                  if k != "audio_shift"}
        return BatchViews(augment="v_aug" in vis, anchor=anchor or None, channels_last=cfg.channels_last, **aug)
    from avsl_core.data.datasets import collate
    return collate


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one torch thread per worker (the machine has 2 cores, the step uses
    them), numpy / random seeded from the worker's torch seed. (The fast views draw from each batch's
    own seed, `batch_views.SeededBatch`, and do not use these.)"""
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32   # DataLoader seeds torch per worker from its generator
    np.random.seed(s)
    random.seed(s)


def fetch_batches(loader: DataLoader, threads: int | None):
    """Iterate `loader`; with `threads`, each batch is fetched (dataset + collate, in this process when
    num_workers=0) under that many torch threads, then the step's setting is restored. The views are
    many small memory-bound ops: on the 2-core machine shared with other work, two threads made them
    ~5x slower than one (50 vs 270 ms a batch at 112 px: each op's OpenMP team waits, spinning, for
    the thread that another process keeps off its core)."""
    it = iter(loader)
    while True:
        if threads is None:
            batch = next(it, None)
        else:
            n = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                batch = next(it, None)
            finally:
                torch.set_num_threads(n)
        if batch is None:
            return
        yield batch


def reseed_dataset(ds: Dataset, seed_seq: list[int]) -> None:
    """Give a dataset's own generator a fresh (seed, phase, rank) stream at the start of a phase, so
    epochs replay exactly on resume when loading in the main process (num_workers=0)."""
    if hasattr(ds, "reseed"):
        ds.reseed(seed_seq)
    elif hasattr(ds, "_rng"):            # TrainDataset: a lazily created np.random.Generator
        ds._rng, ds._rng_pid = np.random.default_rng(seed_seq), os.getpid()


def phase_batches(n_items: int, phase: int, seed: int, rank: int, world: int, per_rank_bs: int,
                  n_batches: int | None = None) -> list[list[int]]:
    """This rank's batches (index lists) of one phase: DistributedSampler permutations seeded by
    (seed, phase, cycle), cycled until `n_batches` (None = one pass, drop_last)."""
    out, cycle = [], 0
    while True:
        s = DistributedSampler(range(n_items), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        s.set_epoch(phase * 1000 + cycle)
        idx = list(s)
        batches = [idx[i:i + per_rank_bs] for i in range(0, len(idx) - per_rank_bs + 1, per_rank_bs)]
        if not batches:
            raise ValueError(f"training set of {n_items} items is smaller than one batch of {per_rank_bs} per rank")
        if n_batches is None:
            return batches
        out += batches
        cycle += 1
        if len(out) >= n_batches:
            return out[:n_batches]


# ------------------------------------------------------------------------------------------ state
def rng_state() -> dict:
    """Every RNG the step can touch, as tensors/lists/ints (torch.load(weights_only=True) accepts them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    st = {"python": [py[0], list(py[1]), py[2]], "torch": torch.get_rng_state(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_mismatch(stored: dict, current: TrainConfig) -> list[str]:
    """Fields (dotted) on which a stored config differs from `current`, RESUMABLE_FIELDS excepted."""
    cur = current.to_dict()
    try:
        cur_norm = TrainConfig.from_dict(stored).to_dict()   # fill defaults the old run left out
    except (TypeError, ValueError) as e:
        return [f"<unreadable stored config: {e}>"]
    diffs = []
    for k in cur:
        if k in RESUMABLE_FIELDS or cur_norm.get(k) == cur[k]:
            continue
        if isinstance(cur[k], dict) and isinstance(cur_norm.get(k), dict):
            diffs += [f"{k}.{s}: checkpoint={cur_norm[k].get(s)!r} now={cur[k].get(s)!r}"
                      for s in sorted(set(cur[k]) | set(cur_norm[k])) if cur[k].get(s) != cur_norm[k].get(s)]
        else:
            diffs.append(f"{k}: checkpoint={cur_norm.get(k)!r} now={cur[k]!r}")
    return diffs


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up over `warmup_steps`, then
    constant, or with `lr_decay_steps` a half-cosine from 1 at the end of warm-up to 0 at that step."""
    f = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_decay_steps:
        t = min(1.0, max(0, step - cfg.warmup_steps) / (cfg.lr_decay_steps - cfg.warmup_steps))
        f *= 0.5 * (1.0 + math.cos(math.pi * t))
    return f


def load_checkpoint(path: str | os.PathLike, cfg: TrainConfig | None = None) -> dict:
    """torch.load(weights_only=True); with `cfg`, refuse a checkpoint written under another config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not a training checkpoint of format {CKPT_FORMAT}")
    if cfg is not None:
        diffs = config_mismatch(ckpt["config"], cfg)
        if diffs:
            raise ValueError(f"{path}: checkpoint was written under another config; refusing to resume "
                             f"({'; '.join(diffs)}). Use another --out, or the checkpoint's config.")
    return ckpt


# ------------------------------------------------------------------------------------------ loop
def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA and on CPUs with native bf16 (avx512_bf16 / AMX; oneDNN says so), else
    fp32. On an AVX2-only CPU, bf16 autocast is emulated and was measured 4-8x *slower* than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_dist(device: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device or "cpu")
    return _Dist(rank, world, dev)


def _to_device(batch: dict, dev: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(dev, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _save(out: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / CKPT_NAME, buf.getvalue())


def _trim_csv(path: Path, max_step: int) -> None:
    """After a kill, drop logged steps beyond the checkpoint (they are redone)."""
    if not path.exists():
        return
    rows = list(csv.reader(path.open()))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= max_step]
    atomic_write_text(path, "".join(",".join(r) + "\n" for r in keep))


STEP_FIELDS = ["step", "epoch", "phase", "loss", "loss_L", "loss_A", "lr", "samples_per_s", "elapsed_s"]


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          device: str | None = None) -> dict:
    """Run (or resume) one training run into `out_dir`; returns the summary (also summary.json)."""
    from tqdm.auto import tqdm
    out = Path(out_dir)
    dd = _init_dist(device)
    if dd.device.type == "cpu":
        # Denormal floats appear in the weights/gradients after a few steps and make x86 kernels
        # 5-10x slower (measured: 0.5 s -> 5 s per step); flush them to zero (process-wide).
        torch.set_flush_denormal(True)
    ckpt_path = out / CKPT_NAME
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    ckpt = load_checkpoint(ckpt_path, cfg) if resume and ckpt_path.exists() else None

    seed_everything(cfg.seed)
    model = AVModel(cfg.model_config)                          # same init on every rank
    seed_everything(cfg.seed + 7919 * dd.rank)                 # per-rank stream for data/augmentation
    if cfg.method not in METHODS:
        from avsl_core import baselines        # registers attention10k / lvs / ezvsl / slavc
        baselines.register_all(METHODS)
    method = METHODS[cfg.method](cfg, model) if cfg.method in METHODS else None
    if method is None:
        raise ValueError(f"TrainConfig.method: unknown {cfg.method!r}; registered: {sorted(METHODS)}")
    model.to(dd.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))

    per_rank_bs = cfg.batch_size // dd.world
    collate_fn = make_collate(cfg, method)
    train_ds = build_dataset(cfg, cfg.data.train_dir, method.needs_conc)
    phases = [("curriculum", build_dataset(cfg, cfg.data.curriculum_dir, method.needs_conc), cfg.curriculum_steps)] \
        if cfg.curriculum_steps else []
    phases += [("train", train_ds, None)] * cfg.epochs

    phase0, batch0, step, elapsed, epochs_log = 0, 0, 0, 0.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        method.load_state_dict(ckpt["method_state"])
        set_rng_state(ckpt["rng"][dd.rank] if dd.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        phase0, batch0, step, elapsed = ckpt["phase"], ckpt["batch"], ckpt["step"], ckpt["elapsed_s"]
        epochs_log = json.loads((out / "epochs.json").read_text()) if (out / "epochs.json").exists() else []
        epochs_log = [e for e in epochs_log if e["phase"] < phase0]
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", cfg.to_dict())
        _trim_csv(out / "steps.csv", step)
        new_csv = not (out / "steps.csv").exists()
        log_f = (out / "steps.csv").open("a", newline="")
        log = csv.writer(log_f)
        if new_csv:
            log.writerow(STEP_FIELDS)
    precision = resolve_precision(cfg.precision, dd.device)
    autocast = torch.autocast(dd.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
    stop_reason = None
    if elapsed >= budget_s or (cfg.max_steps is not None and step >= cfg.max_steps):
        stop_reason = "time_budget" if elapsed >= budget_s else "max_steps"

    def checkpoint(phase: int, batch: int) -> None:
        rngs = [rng_state()]
        if dd.world > 1:
            rngs = [None] * dd.world
            dist.all_gather_object(rngs, rng_state())
        if not dd.main:
            return
        _save(out, {"format": CKPT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "method_state": method.state_dict(), "rng": rngs,
                    "phase": phase, "batch": batch, "step": step, "elapsed_s": elapsed,
                    "epoch": sum(1 for p in phases[:phase] if p[0] == "train"), "n_phases": len(phases),
                    "config": cfg.to_dict(), "model_config": cfg.model_config.to_dict(), "seed": cfg.seed,
                    "git_commit": git_commit(), "world_size": dd.world, "stop_reason": stop_reason,
                    "precision": precision})
        atomic_write_json(out / "epochs.json", epochs_log)
        write_model_card(out, cfg, step, epochs_log, stop_reason)

    model.train()
    for p_idx in range(phase0, len(phases)):
        if stop_reason:
            break
        name, ds, n_batches = phases[p_idx]
        batches = phase_batches(len(ds), p_idx, cfg.seed, dd.rank, dd.world, per_rank_bs, n_batches)
        start = batch0 if p_idx == phase0 else 0
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + p_idx * 101 + dd.rank)
        reseed_dataset(ds, [cfg.seed, p_idx, dd.rank])
        from avsl_core.batch_views import seeded_batches
        # each batch carries its own seed (fast views draw from it): the same views for any
        # num_workers, and a resumed phase replays the uninterrupted one from batch `start` on
        loader = DataLoader(ds, batch_sampler=seeded_batches(batches, [cfg.seed, p_idx, dd.rank], start),
                            num_workers=cfg.num_workers,
                            collate_fn=collate_fn,
                            worker_init_fn=_seed_worker, generator=gen, pin_memory=dd.device.type == "cuda",
                            persistent_workers=False)
        epoch_no = sum(1 for p in phases[:p_idx + 1] if p[0] == "train")
        bar = tqdm(total=len(batches), initial=start, desc=f"{name} {epoch_no}/{cfg.epochs}", mininterval=2.0,
                   disable=not (progress and dd.main), dynamic_ncols=True)
        t_phase, losses, b_i = time.perf_counter(), [], start
        t_last = time.perf_counter()
        for batch in fetch_batches(loader, 1 if cfg.num_workers == 0 and dd.device.type == "cpu" else None):
            batch = _to_device(batch, dd.device, cfg.channels_last)
            with autocast:
                terms = method.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            method.after_step(model)
            step, b_i = step + 1, b_i + 1
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            elapsed += dt
            loss, loss_l, loss_a = (float(terms[k].detach()) if k in terms else math.nan
                                    for k in ("loss", "loss_L", "loss_A"))
            losses.append(loss)
            if dd.main:
                log.writerow([step, epoch_no, name, f"{loss:.5f}", f"{loss_l:.5f}", f"{loss_a:.5f}",
                              f"{sched.get_last_lr()[0]:.3g}",
                              f"{cfg.batch_size / max(dt, 1e-9):.1f}", f"{elapsed:.2f}"])
                if step % cfg.log_every == 0:
                    log_f.flush()
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
            stop = elapsed >= budget_s or (cfg.max_steps is not None and step >= cfg.max_steps)
            if dd.world > 1 and budget_s < math.inf:          # ranks must stop at the same step
                flag = torch.tensor([float(stop)], device=dd.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                stop_reason = "time_budget" if elapsed >= budget_s else "max_steps"
                break
        bar.close()
        done = b_i >= len(batches)
        wall = time.perf_counter() - t_phase
        epochs_log.append({"phase": p_idx, "name": name, "epoch": epoch_no, "steps": b_i - start,
                           "mean_loss": float(np.mean(losses)) if losses else None,
                           "last_loss": losses[-1] if losses else None, "wall_s": round(wall, 2),
                           "samples_per_s": round((b_i - start) * cfg.batch_size / max(wall, 1e-9), 1),
                           "complete": done})
        checkpoint(p_idx + 1 if done else p_idx, 0 if done else b_i)
    if dd.world > 1:   # BN running stats: each rank updated its own after DDP's broadcast; take rank 0's
        for b in model.buffers():
            dist.broadcast(b, 0)
    summary = {"steps": step, "elapsed_s": round(elapsed, 2), "stop_reason": stop_reason or "completed",
               "epochs": epochs_log, "out": str(out), "rank": dd.rank, "world_size": dd.world, "precision": precision,
               "param_sha256": param_hash(model), "state_sha256": param_hash(model, buffers=True)}
    if dd.main:
        log_f.close()
        if ckpt is not None and phase0 >= len(phases):
            summary["stop_reason"] = "already complete"
        atomic_write_json(out / "summary.json", summary)
        plot_loss_curve(out / "steps.csv", out / "loss_curve.png", title=f"{cfg.method} ({out.name})")
    return summary


# ------------------------------------------------------------------------------------------ records
def param_hash(model: torch.nn.Module, buffers: bool = False) -> str:
    """sha256 of every parameter (and buffer if asked), names and bytes: equal hashes = identical weights."""
    import hashlib
    h = hashlib.sha256()
    items = model.state_dict().items() if buffers else model.named_parameters()
    for k, v in sorted(items):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_model_card(out: Path, cfg: TrainConfig, step: int, epochs_log: list, stop_reason: str | None) -> None:
    m, last = cfg.model_config, (epochs_log[-1] if epochs_log else {})
    text = f"""# Model card: `{out.name}`

- **Method**: `{cfg.method}` (Senocak et al., ICCV 2023, Eq. 5 for `ours`); loss config: `{json.dumps(cfg.loss)}`
- **Architecture**: ResNet18 pair, width {m.width}, layer4 stride {m.vision_layer4_stride}, stop at {m.vision_stop_at},
  padding {m.padding_mode}, c = {m.c}, head dim {m.head_dim}; trained from scratch (no pretrained weights).
- **Data**: `{cfg.data.train_dir}` ({cfg.data.kind}), {cfg.data.image_size} px, audio front-end `{cfg.data.frontend}`;
  neighbours: `{cfg.neighbours}`; curriculum: {cfg.curriculum_steps} steps of `{cfg.data.curriculum_dir}`.
- **Optimisation**: Adam lr {cfg.lr} (warm-up {cfg.warmup_steps} steps{f", cosine decay to 0 at step {cfg.lr_decay_steps}" if cfg.lr_decay_steps else ""}), weight decay {cfg.weight_decay},
  batch {cfg.batch_size}, {cfg.precision}, epochs {cfg.epochs}, time budget {cfg.time_budget_min} min, seed {cfg.seed}.
- **State**: {step} steps; last epoch record: {json.dumps(last)}; stopped by: {stop_reason or 'running / completed'}.
- **Provenance**: git commit `{git_commit()}`; environment `{json.dumps(environment())}`.
- **Intended use**: research reproduction of sound source localization on AVScenes / the paper's benchmarks.
  Not for surveillance or decisions about people. Trained on few assets: expect poor generalisation to
  unseen object instances (see the book's held-out-file results).
"""
    atomic_write_text(out / "model_card.md", text)


def plot_loss_curve(steps_csv: Path, png: Path, title: str = "") -> None:
    """Loss per step (and a running mean) from steps.csv, without pyplot (safe inside notebooks)."""
    from matplotlib.figure import Figure
    rows = list(csv.DictReader(steps_csv.open())) if steps_csv.exists() else []
    if not rows:
        return
    s = np.array([int(r["step"]) for r in rows])
    y = np.array([float(r["loss"]) for r in rows])
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.plot(s, y, lw=0.6, alpha=0.5, label="loss")
    w = max(1, len(y) // 20)
    ax.plot(s[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.5, label=f"mean of {w}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(png, buf.getvalue())


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avsl_core.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="YAML file or profile name (configs/<name>.yaml)")
    ap.add_argument("--section", default=None, help="dotted path of the training section (default: 'train')")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (dotted)")
    ap.add_argument("--out", required=True, help="run folder, e.g. runs/quick/ckpt/main")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.section, a.set)
    summary = train(cfg, a.out, resume=a.resume, progress=not a.no_progress, device=a.device)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("steps", "elapsed_s", "stop_reason", "out")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
