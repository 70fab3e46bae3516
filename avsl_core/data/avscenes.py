"""AVScenes: render every set of the embedded benchmark once per profile (SPEC §3, contract 5).

``build(profile_cfg, assets_root, out_root)`` writes ``<out_root>/<profile>/<set>/`` with
``images/*.png``, ``audio/*.wav`` (16 kHz PCM16), ``masks/<scene>_o<j>.png`` (one per object, 255 =
object), ``manifest.jsonl`` (contract 1; paths relative to the *set folder*, so read it with
``read_manifest(set_dir / "manifest.jsonl", root=set_dir)``) and ``report.json``.

Sets (``SET_SPECS``): ``train`` (split1-heard categories, train files, train backgrounds);
``test_seen`` (new compositions of the train files on held-out backgrounds); ``test_heldout`` (test
files of heard categories); ``test_unheard_split1`` / ``test_unheard_split2`` (unheard categories of
each split, all their files, distractors unheard too); ``single_train`` / ``single_test`` (one object
per scene: Table 2's second distribution). With ``n_train_split2 > 0`` also ``train_split2``,
``test_seen_split2``, ``test_heldout_split2`` (split2's heard side, for Tables 3/4). Each test regime
holds localization items (``extra.kind == "loc"``), extended negatives (``negative=True``: "offscreen"
= a category absent from the image, "silent" = ambience only) and swap items (``extra.kind == "swap"``:
one multi-object image, one item per visible object's sound, sharing ``group``).

Training clips are rendered ``train_audio_seconds`` (4 s) long so the dataset can take a fixed centre
3 s window and a time-shifted 3 s window (the a_aug view) from the same recording; test clips are 3 s.

Idempotent: ``<profile>/stamp.json`` holds a hash of (config, asset index, category splits, composer
source); a rerun with the same key is a no-op. Each set is rendered into a temp folder and renamed
into place, and carries its own stamp, so an interrupted build resumes at the first unfinished set.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from avsl_core.audio import load_audio
from avsl_core.config import repo_root
from avsl_core.data.compose import (ComposerConfig, Cutout, Pool, Recording, compose_scene,
                                    tight_cutout)
from avsl_core.data.manifest import ManifestItem, atomic_write_text, write_manifest
from avsl_core.errors import DataError
from avsl_core.vision import load_image_rgb, load_image_rgba


@dataclass(frozen=True)
class SetSpec:
    split_key: str                 # category split: "split1" | "split2"
    side: str                      # "heard" | "unheard"
    files: tuple[str, ...]         # file splits of images and recordings used
    scene_split: str               # backgrounds and ambience: "train" | "test"
    regime: str                    # "train" | "seen" | "heldout" | "unheard"
    single: bool = False           # one object per scene

    @property
    def train(self) -> bool:
        return self.regime == "train"


SET_SPECS: dict[str, SetSpec] = {
    "train": SetSpec("split1", "heard", ("train",), "train", "train"),
    "test_seen": SetSpec("split1", "heard", ("train",), "test", "seen"),
    "test_heldout": SetSpec("split1", "heard", ("test",), "test", "heldout"),
    "test_unheard_split1": SetSpec("split1", "unheard", ("train", "test"), "test", "unheard"),
    "test_unheard_split2": SetSpec("split2", "unheard", ("train", "test"), "test", "unheard"),
    "single_train": SetSpec("split1", "heard", ("train",), "train", "train", single=True),
    "single_test": SetSpec("split1", "heard", ("train",), "test", "seen", single=True),
    "train_split2": SetSpec("split2", "heard", ("train",), "train", "train"),
    "test_seen_split2": SetSpec("split2", "heard", ("train",), "test", "seen"),
    "test_heldout_split2": SetSpec("split2", "heard", ("test",), "test", "heldout"),
}
TEST_REGIME_SETS = ("test_seen", "test_heldout", "test_unheard_split1", "test_unheard_split2",
                    "test_seen_split2", "test_heldout_split2")


@dataclass(frozen=True)
class AVScenesConfig:
    """Sizes and options of one profile's render (the profile YAML's 00_prepare_data section)."""
    profile: str = "smoke"
    seed: int = 0
    image_size: int = 96
    n_train: int = 48               # train scenes (and single_train scenes unless set)
    n_test: int = 12                # localization items per test set (and single_test unless set)
    n_negatives: int = 6            # per test set; even indices off-screen, odd ones silent
    n_swap_images: int = 4          # per test set; each gives one item per visible object
    n_single_train: int | None = None
    n_single_test: int | None = None
    n_train_split2: int = 0         # > 0: also render split2's heard train/test sets
    train_n_objects: tuple[int, int] = (1, 4)
    test_n_objects: tuple[int, int] = (1, 4)
    workers: int = 2                # rendering processes (0/1: in-process); not part of the key
    composer: ComposerConfig | None = None   # None: ComposerConfig(image_size=image_size)

    @classmethod
    def from_dict(cls, d: dict) -> "AVScenesConfig":
        """Fields of this class and of ComposerConfig (the latter go to ``composer``); others ignored."""
        own = {f.name for f in dataclasses.fields(cls)}
        comp = {f.name for f in dataclasses.fields(ComposerConfig)} - {"image_size"}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in own - {"composer"}}
        ckw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in comp}
        if isinstance(d.get("composer"), dict):
            ckw.update({k: tuple(v) if isinstance(v, list) else v for k, v in d["composer"].items()})
        if ckw:
            kw["composer"] = ComposerConfig(image_size=int(d.get("image_size", cls.image_size)), **ckw)
        return cls(**kw)

    def composer_config(self) -> ComposerConfig:
        return self.composer or ComposerConfig(image_size=self.image_size)

    def plan(self) -> dict[str, list[tuple[str, int]]]:
        """set name -> jobs (kind, index)."""
        n_st = self.n_train if self.n_single_train is None else self.n_single_train
        n_ss = self.n_test if self.n_single_test is None else self.n_single_test
        test = ([("scene", i) for i in range(self.n_test)]
                + [("offscreen" if i % 2 == 0 else "silent", i) for i in range(self.n_negatives)]
                + [("swap", i) for i in range(self.n_swap_images)])
        sets = {"train": [("scene", i) for i in range(self.n_train)]}
        for name in ("test_seen", "test_heldout", "test_unheard_split1", "test_unheard_split2"):
            sets[name] = list(test)
        sets["single_train"] = [("scene", i) for i in range(n_st)]
        sets["single_test"] = [("scene", i) for i in range(n_ss)]
        if self.n_train_split2 > 0:
            sets["train_split2"] = [("scene", i) for i in range(self.n_train_split2)]
            sets["test_seen_split2"] = list(test)
            sets["test_heldout_split2"] = list(test)
        return sets


# ----------------------------------------------------------------------------- assets
def default_splits_path() -> Path:
    return repo_root() / "data_manifests" / "avscenes" / "category_splits.json"


def _from_repo(p) -> Path:
    """Relative paths are taken from the repository root (as the fetch step does)."""
    p = Path(p)
    return p if p.is_absolute() else repo_root() / p


def read_asset_index(assets_root):
    """The asset index (contract 4) via ``avsl_core.data.fetch.load_asset_index`` when present."""
    if importlib.util.find_spec("avsl_core.data.fetch") is not None:
        from avsl_core.data.fetch import load_asset_index
        return load_asset_index(assets_root)
    import pandas as pd
    path = Path(assets_root) / "index.csv"
    if not path.is_file():
        raise DataError(path, "asset index not found; run `python -m avsl_core.data.fetch` first")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("asset_id", "category", "modality", "path", "split"):
        if col not in df.columns:
            raise DataError(path, "missing column", field=col)
    return df


class Assets:
    """Decoded asset cache: cut-outs (tight, longest side <= 2 S), recordings, backgrounds, ambience."""

    def __init__(self, index, assets_root, splits: dict, cfg: ComposerConfig, *, index_path=None,
                 splits_path=None):
        self.root, self.splits, self.cfg = Path(assets_root), splits, cfg
        self.splits_path = splits_path
        self.index_path = index_path or self.root / "index.csv"
        self.images: dict[tuple[str, str], list[Cutout]] = collections.defaultdict(list)
        self.audio: dict[tuple[str, str], list[Recording]] = collections.defaultdict(list)
        self.backgrounds: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        self.ambience: dict[str, list[Recording]] = collections.defaultdict(list)
        self.split_of: dict[str, str] = {}
        s = cfg.image_size
        for row in index.itertuples(index=False):
            path, split, cat = self.root / row.path, row.split, row.category or None
            self.split_of[row.asset_id] = split
            if row.modality == "image":
                img = load_image_rgba(path)
                img.thumbnail((2 * s, 2 * s), Image.Resampling.LANCZOS)  # keeps the aspect
                rgba = tight_cutout(np.asarray(img))
                if rgba is None:
                    raise DataError(path, "cut-out has no pixel with alpha > 127")
                self.images[(cat, split)].append(Cutout(row.asset_id, cat, np.ascontiguousarray(rgba)))
            elif row.modality == "audio":
                wave = load_audio(path, cfg.sample_rate)
                self.audio[(cat, split)].append(Recording(row.asset_id, cat, wave))
            elif row.modality == "background":
                img = load_image_rgb(path)
                k = 3 * s / min(img.size)
                if k < 1:
                    img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))),
                                     Image.Resampling.LANCZOS)
                self.backgrounds[split].append(np.asarray(img))
            elif row.modality == "ambience":
                wave = load_audio(path, cfg.sample_rate, allow_silent=True)
                self.ambience[split].append(Recording(row.asset_id, None, wave))
            else:
                raise DataError(self.index_path, f"unknown modality {row.modality!r}", field="modality")
        self._pools: dict[str, Pool] = {}

    def categories(self, split_key: str, side: str) -> tuple[str, ...]:
        try:
            return tuple(sorted(self.splits[split_key][side]))
        except KeyError:
            raise DataError(self.splits_path, f"no category list {split_key}.{side}") from None

    def pool(self, set_name: str) -> Pool:
        if set_name in self._pools:
            return self._pools[set_name]
        spec = SET_SPECS[set_name]
        cats = self.categories(spec.split_key, spec.side)
        images = {c: [x for f in spec.files for x in self.images.get((c, f), [])] for c in cats}
        audio = {c: [x for f in spec.files for x in self.audio.get((c, f), [])] for c in cats}
        for c in cats:
            for what, d in (("image", images), ("audio", audio)):
                if not d[c]:
                    raise DataError(self.index_path, f"set {set_name}: category {c!r} has no {what} "
                                                     f"file in split(s) {'/'.join(spec.files)}")
        if not self.backgrounds.get(spec.scene_split):
            raise DataError(self.index_path, f"no background in split {spec.scene_split!r}")
        pool = Pool(categories=cats, images=images, audio=audio,
                    backgrounds=self.backgrounds[spec.scene_split],
                    ambience=self.ambience.get(spec.scene_split, []), train=spec.train,
                    n_objects=(1, 1) if spec.single else None)
        self._pools[set_name] = pool
        return pool


def load_assets(assets_root="data/assets", cfg: ComposerConfig | None = None, splits_path=None) -> Assets:
    """Decode the asset cache (contract 4) and the category splits; relative paths: from the repo root."""
    assets_root = _from_repo(assets_root)
    splits_path = _from_repo(splits_path or default_splits_path())
    if not splits_path.is_file():
        raise DataError(splits_path, "category splits not found (written by the fetch step)")
    splits = json.loads(splits_path.read_text())
    return Assets(read_asset_index(assets_root), assets_root, splits, cfg or ComposerConfig(),
                  index_path=Path(assets_root) / "index.csv", splits_path=splits_path)


# ----------------------------------------------------------------------------- rendering
def build_key(cfg: AVScenesConfig, assets_root, splits_path) -> str:
    """Hash of everything a render depends on (``workers`` excluded)."""
    h = hashlib.sha256()
    d = dataclasses.asdict(cfg)
    d.pop("workers")
    d["composer"] = dataclasses.asdict(cfg.composer_config())
    h.update(json.dumps(d, sort_keys=True, default=list).encode())
    for p in (Path(assets_root) / "index.csv", Path(splits_path),
              Path(__file__), Path(__file__).with_name("compose.py")):
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()


_W: dict = {}   # per-process render state (set by _init_worker)


def _init_worker(assets, ccfg, set_name, seed, set_dir, spec):
    _W.update(assets=assets, ccfg=ccfg, set_name=set_name, seed=seed, dir=Path(set_dir), spec=spec)


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, compress_level=1)


def _render_job(job: tuple[str, int]) -> list[ManifestItem]:
    """Compose one scene, write its image, masks and clips; return its manifest items."""
    kind, index = job
    a, ccfg, set_name, spec, d = _W["assets"], _W["ccfg"], _W["set_name"], _W["spec"], _W["dir"]
    sc = compose_scene(a, set_name, index, _W["seed"], ccfg, kind=kind)
    label = {"scene": "loc"}.get(kind, kind)
    stem = f"{set_name}-{label}-{index:05d}"
    _save_png(sc.image, d / "images" / f"{stem}.png")
    objects = []
    for j, o in enumerate(sc.objects):
        _save_png(o["mask"].astype(np.uint8) * 255, d / "masks" / f"{stem}_o{j}.png")
        objects.append(dict(category=o["category"], asset_id=o["asset_id"], box=list(o["box"]),
                            mask=f"masks/{stem}_o{j}.png", area=o["area"]))
    base = dict(n_objects=len(objects), regime=spec.regime, kind=label, scene=stem, objects=objects)
    clips = ([(f"{stem}-{j}", j, sc.objects[j]["category"], au, aid)
              for j, (au, aid) in enumerate(sc.swap_audio)] if kind == "swap"
             else [(stem, sc.sounding, sc.audio_category, sc.audio, sc.audio_asset_id)])
    rows = []
    for item_id, snd, cat, audio, aid in clips:
        sf.write(d / "audio" / f"{item_id}.wav", audio, ccfg.sample_rate, subtype="PCM_16")
        item = ManifestItem(
            id=item_id, image=f"images/{stem}.png", audio=f"audio/{item_id}.wav", category=cat,
            split="train" if spec.train else "test",
            boxes=() if snd is None else (tuple(sc.objects[snd]["box"]),),
            mask=None if snd is None else f"masks/{stem}_o{snd}.png",
            group=stem if kind == "swap" else None, negative=snd is None,
            extra=dict(base, sounding=snd, audio_asset_id=aid))
        rows.append(item)
    return rows


def _set_report(items: list[ManifestItem]) -> dict:
    """Sounding-box area quartiles, counts per kind/category/n_objects, largest-object rate."""
    def quartiles(v):
        return [round(float(x), 4) for x in np.quantile(v, [0.25, 0.5, 0.75])] if v else None
    loc = [it for it in items if it.extra["kind"] == "loc"]
    swap = [it for it in items if it.extra["kind"] == "swap"]
    area = lambda it: it.extra["objects"][it.extra["sounding"]]["area"]  # noqa: E731
    scenes = {it.extra["scene"]: it for it in items}           # one item per image
    multi = [it for it in loc if it.extra["n_objects"] > 1]
    largest = [max(range(len(it.extra["objects"])), key=lambda j: it.extra["objects"][j]["area"])
               == it.extra["sounding"] for it in multi]
    return dict(
        n_items=len(items), n_images=len({it.image for it in items}),
        kinds=dict(collections.Counter(it.extra["kind"] for it in items)),
        sounding_area_quartiles=quartiles([area(it) for it in loc]),
        swap_area_quartiles=quartiles([area(it) for it in swap]),
        n_objects=dict(sorted(collections.Counter(it.extra["n_objects"] for it in loc).items())),
        sounding_is_largest=round(float(np.mean(largest)), 4) if largest else None,
        sounding_is_largest_chance=round(float(np.mean([1 / it.extra["n_objects"] for it in multi])), 4)
        if multi else None,
        heard_categories=dict(sorted(collections.Counter(it.category or "<silent>" for it in items).items())),
        object_categories=dict(sorted(collections.Counter(
            o["category"] for it in scenes.values() for o in it.extra["objects"]).items())),
    )


def _render_set(assets: Assets, cfg: AVScenesConfig, set_name: str, jobs, set_dir: Path, key: str,
                log) -> dict:
    t0 = time.time()
    parent = set_dir.parent
    for stale in parent.glob(f".tmp-{set_name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".tmp-{set_name}-{os.getpid()}"
    for sub in ("images", "audio", "masks"):
        (tmp / sub).mkdir(parents=True)
    ccfg = cfg.composer_config()
    init = (assets, ccfg, set_name, cfg.seed, tmp, SET_SPECS[set_name])
    assets.pool(set_name)                 # validate before forking
    if cfg.workers > 1 and len(jobs) >= 64:
        with mp.get_context("fork").Pool(cfg.workers, _init_worker, init) as p:
            rows = [r for rs in p.imap(_render_job, jobs, chunksize=16) for r in rs]
    else:
        _init_worker(*init)
        rows = [r for job in jobs for r in _render_job(job)]
    write_manifest(tmp / "manifest.jsonl", rows)
    report = dict(_set_report(rows), seconds=round(time.time() - t0, 2))
    atomic_write_text(tmp / "report.json", json.dumps(report, indent=1))
    atomic_write_text(tmp / ".stamp", key)
    if set_dir.exists():
        trash = parent / f".tmp-{set_name}-old-{os.getpid()}"
        os.replace(set_dir, trash)
        shutil.rmtree(trash)
    os.replace(tmp, set_dir)
    log(f"avscenes {cfg.profile}/{set_name}: {len(rows)} items in {report['seconds']} s")
    return report


def build(profile_cfg, assets_root="data/assets", out_root="data/avscenes", *, splits_path=None,
          log=print) -> dict:
    """Render every set of the profile (no-op when ``stamp.json`` matches). -> report dict

    Relative ``assets_root`` / ``out_root`` / ``splits_path`` are taken from the repository root.

    ``profile_cfg``: an ``AVScenesConfig`` or a dict (e.g. the profile YAML's 00_prepare_data section
    plus ``profile`` and ``seed``). The report (also ``<profile>/report.json``) has per set the
    sounding-box area quartiles, item counts per kind, per heard category and per object category;
    ``skipped`` is True when nothing had to be rendered.
    """
    cfg = profile_cfg if isinstance(profile_cfg, AVScenesConfig) else AVScenesConfig.from_dict(profile_cfg)
    assets_root = _from_repo(assets_root)
    splits_path = _from_repo(splits_path or default_splits_path())
    out = _from_repo(out_root) / cfg.profile
    key = build_key(cfg, assets_root, splits_path)
    stamp, report_path = out / "stamp.json", out / "report.json"
    plan = cfg.plan()
    done = {name for name in plan if (out / name / ".stamp").is_file()
            and (out / name / ".stamp").read_text() == key}
    if stamp.is_file() and report_path.is_file() and done == set(plan) \
            and json.loads(stamp.read_text()).get("key") == key:
        return dict(json.loads(report_path.read_text()), skipped=True)
    out.mkdir(parents=True, exist_ok=True)
    assets = load_assets(assets_root, cfg.composer_config(), splits_path)
    config = dict(dataclasses.asdict(cfg), composer=dataclasses.asdict(cfg.composer_config()))
    report = dict(profile=cfg.profile, key=key, config=config, sets={})
    for set_name, jobs in plan.items():
        set_dir = out / set_name
        if set_name in done:
            report["sets"][set_name] = json.loads((set_dir / "report.json").read_text())
            continue
        report["sets"][set_name] = _render_set(assets, cfg, set_name, jobs, set_dir, key, log)
    atomic_write_text(report_path, json.dumps(report, indent=1, default=list))
    atomic_write_text(stamp, json.dumps({"key": key}))
    return dict(report, skipped=False)
