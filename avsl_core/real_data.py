"""A data root of real datasets for the book's pipeline: ``make book PROFILE=paper DATA_ROOT=/data``.

The data root is a folder holding ``datasets.yaml``, which names the manifests the user built with
``avsl_core.data.adapters`` (book/data.md), every path relative to the data root (absolute paths are
accepted too); ``data_manifests/datasets.example.yaml`` is a commented example::

    train:                                  # required: the training manifest (VGGSound 144k or 10k)
      manifest: vggsound/manifest.jsonl
      root: vggsound                        # data root of its image/audio paths (default: its folder)
      embeddings:                           # optional: pretrained embeddings for mining (paper §3)
        supervised: {image: emb/imagenet_image.npz, audio: emb/vggsound_audio.npz}
    test:                                   # at least one of TEST_SETS
      vggss: {manifest: vggsound/vggss_test.jsonl}
      flickr: {manifest: flickr/flickr_test.jsonl}
      avsbench_s4: {manifest: AVSBench/Single-source/s4_test.jsonl}
      vggss_extended: {manifest: vggsound/vggss_extended.jsonl, protocol: slavc}
    require_files: false                    # true: a listed file missing on disk is an error

:func:`load_spec` validates it (DataError naming ``datasets.yaml`` and the field), :func:`fingerprint`
gives the pipeline's step keys the resolved root and the sha256 of datasets.yaml, of every manifest and
of every embedding file, and :func:`stage` (run by the data page) checks each manifest with
``avsl_core.data.manifest``, skips and counts items whose files are missing (the adapters' rule), and
writes a *set folder* per set under ``runs/<profile>-real/real_data/<set>-<hash>/``: the kept items'
``manifest.jsonl`` beside symbolic links to the top-level folders of the data root that the items
use. That is the layout of an AVScenes set, so the trainer (``data.train_dir``), the mining page and the
evaluator read a real set exactly as they read a rendered one. The folder name carries a hash of the
kept items and the data root, so a changed manifest is a new training configuration (retrained).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from avsl_core.data.manifest import check_relpath, item_to_dict, read_manifest, write_manifest
from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_text, file_sha256

SPEC_NAME = "datasets.yaml"
TRAIN_SET = "real_train"            # the training set's name in the catalogue and the mining tables
# test set name -> how it is shown and scored (paper table, default protocol of avsl_core.evaluate)
TEST_SETS = {
    "vggss": {"title": "VGG-SS", "table": 1, "protocol": "ezvsl",
              "gt": "union of boxes"},
    "flickr": {"title": "Flickr-SoundNet", "table": 1, "protocol": "ezvsl",
               "gt": "annotator consensus (box_annotators)"},
    "avsbench_s4": {"title": "AVSBench S4", "table": 5, "protocol": "ezvsl",
                    "gt": "masks (pixel mIoU / F-score, official per-batch and dataset-level)"},
    "vggss_extended": {"title": "extended VGG-SS", "table": 7, "protocol": "slavc",
                       "gt": "union of boxes; negatives: AP / max-F1 / LocAcc"},
    "flickr_extended": {"title": "extended Flickr-SoundNet", "table": 7, "protocol": "slavc",
                        "gt": "annotator consensus; negatives: AP / max-F1 / LocAcc"},
}
EMBEDDING_KINDS = ("supervised", "ssl")      # the mining page's embedder kinds (avsl_core.embedders)
MODALITIES = ("image", "audio")
_SET_KEYS = {"manifest", "root", "protocol"}
_TRAIN_KEYS = {"manifest", "root", "embeddings"}
_TOP_KEYS = {"train", "test", "require_files"}


@dataclass(frozen=True)
class RealSet:
    """One manifest of the data root: its name, file, data root and (test sets) evaluation protocol."""
    name: str
    manifest: Path
    root: Path
    protocol: str | None = None
    embeddings: dict = field(default_factory=dict, hash=False)   # (kind, modality) -> .npz (train only)


@dataclass(frozen=True)
class DataRootSpec:
    """A validated ``datasets.yaml``."""
    root: Path                      # the data root, resolved
    path: Path                      # its datasets.yaml
    train: RealSet
    tests: dict                     # name -> RealSet, in TEST_SETS order
    require_files: bool = False


def _mapping(path, value, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(path, f"expected a mapping, got {type(value).__name__}: {value!r}", field=where)
    return value


def _unknown(path, d: dict, allowed, where: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise DataError(path, f"unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})",
                        field=f"{where}.{extra[0]}" if where else extra[0])


def _file(path, root: Path, value, where: str, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, f"expected the path of the {what} (relative to {root}), got {value!r}",
                        field=where)
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise DataError(path, f"{what} not found: {p}", field=where)
    return p.resolve()


def _set(path, root: Path, name: str, d, where: str, keys) -> RealSet:
    d = _mapping(path, d, where)
    _unknown(path, d, keys, where)
    if "manifest" not in d:
        raise DataError(path, "missing key 'manifest' (the JSONL file made by avsl_core.data.adapters)",
                        field=f"{where}.manifest")
    manifest = _file(path, root, d["manifest"], f"{where}.manifest", "manifest")
    data_root = manifest.parent
    if d.get("root") is not None:
        if not isinstance(d["root"], str):
            raise DataError(path, f"expected a folder path, got {d['root']!r}", field=f"{where}.root")
        r = Path(d["root"])
        data_root = (r if r.is_absolute() else root / r).resolve()
        if not data_root.is_dir():
            raise DataError(path, f"data root folder not found: {data_root}", field=f"{where}.root")
    protocol = d.get("protocol")
    if protocol is not None:
        from avsl_core.metrics_protocol import PROTOCOL_ALIASES, PROTOCOLS
        known = sorted(PROTOCOLS) + sorted(PROTOCOL_ALIASES)
        if protocol not in known:
            raise DataError(path, f"unknown protocol {protocol!r} (known: {', '.join(known)})",
                            field=f"{where}.protocol")
    emb = {}
    for kind, mods in _mapping(path, d.get("embeddings") or {}, f"{where}.embeddings").items():
        if kind not in EMBEDDING_KINDS:
            raise DataError(path, f"unknown embedder kind {kind!r} (expected one of {', '.join(EMBEDDING_KINDS)})",
                            field=f"{where}.embeddings.{kind}")
        mods = _mapping(path, mods, f"{where}.embeddings.{kind}")
        _unknown(path, mods, MODALITIES, f"{where}.embeddings.{kind}")
        if set(mods) != set(MODALITIES):
            raise DataError(path, "expected both 'image' and 'audio' embedding files",
                            field=f"{where}.embeddings.{kind}")
        for mod, f in mods.items():
            emb[(kind, mod)] = _file(path, root, f, f"{where}.embeddings.{kind}.{mod}", "embedding file")
    return RealSet(name, manifest, data_root, protocol, emb)


def load_spec(data_root) -> DataRootSpec:
    """Read and validate ``<data_root>/datasets.yaml``; every problem is a DataError naming the file
    and the field (a missing manifest, an unknown set name, malformed YAML, an unknown key)."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(root, "data root not found (expected a folder holding datasets.yaml)")
    root = root.resolve()
    path = root / SPEC_NAME
    if not path.is_file():
        raise DataError(path, "not found: a data root holds datasets.yaml naming its manifests "
                              "(see data_manifests/datasets.example.yaml and book/data.md)")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1} column {mark.column + 1})" if mark is not None else ""
        raise DataError(path, f"malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    doc = _mapping(path, doc, "<top level>") if doc is not None else {}
    _unknown(path, doc, _TOP_KEYS, "")
    if "train" not in doc:
        raise DataError(path, "missing key 'train' (the training manifest, e.g. VGGSound 144k)", field="train")
    train = _set(path, root, TRAIN_SET, doc["train"], "train", _TRAIN_KEYS)
    tests_in = _mapping(path, doc.get("test") or {}, "test")
    for name in tests_in:
        if name not in TEST_SETS:
            raise DataError(path, f"unknown test set {name!r} (known: {', '.join(TEST_SETS)})",
                            field=f"test.{name}")
    if not tests_in:
        raise DataError(path, f"no test set listed under 'test' (known: {', '.join(TEST_SETS)})",
                        field="test")
    tests = {n: _set(path, root, n, tests_in[n], f"test.{n}", _SET_KEYS) for n in TEST_SETS if n in tests_in}
    req = doc.get("require_files", False)
    if not isinstance(req, bool):
        raise DataError(path, f"expected true or false, got {req!r}", field="require_files")
    return DataRootSpec(root, path, train, tests, req)


def fingerprint(spec: DataRootSpec) -> dict:
    """What a pipeline step key needs to see: the resolved data root, the sha256 of datasets.yaml, of
    each listed manifest and of each embedding file (the media files are not hashed: a frame replaced
    in place without a new manifest needs ``--force``)."""
    sets = {TRAIN_SET: spec.train, **spec.tests}
    return {"root": str(spec.root), SPEC_NAME: file_sha256(spec.path),
            "manifests": {n: {"path": str(s.manifest), "root": str(s.root), "sha256": file_sha256(s.manifest)}
                          for n, s in sets.items()},
            "embeddings": {f"{k}/{m}": file_sha256(p) for (k, m), p in sorted(spec.train.embeddings.items())}}


def _missing(item, root: Path) -> str | None:
    """The first of the item's files absent under ``root`` (adapters' ``_keep`` rule), or None."""
    for name in ("image", "audio", "mask"):
        rel = getattr(item, name)
        if rel is not None and not (root / rel).is_file():
            return rel
    return None


def _link_top_folders(items, root: Path, set_dir: Path, source: Path) -> list[str]:
    """Symlink each top-level path component the items use (``frames``, ``audio``, ``s4_data``...)."""
    tops = sorted({check_relpath(getattr(it, n)).split("/", 1)[0]
                   for it in items for n in ("image", "audio", "mask") if getattr(it, n)})
    if "manifest.jsonl" in tops:
        raise DataError(source, "an item path starts with 'manifest.jsonl', the name of the set folder's "
                                "manifest: move that file under a folder")
    for top in tops:
        link = set_dir / top
        if not link.is_symlink() and not link.exists():
            link.symlink_to(root / top, target_is_directory=(root / top).is_dir())
    return tops


def stage_set(rs: RealSet, out_dir: Path, *, require_files: bool = False, log=print) -> dict:
    """Validate one manifest, drop (and count) items with missing files, write its set folder; the
    summary entry (counts, paths, hashes, protocol) recorded in ``data_summary.json``."""
    items = read_manifest(rs.manifest, rs.root)          # schema, unique ids, paths inside the root
    kept, missing = [], []
    for row, it in enumerate(items, start=1):
        rel = _missing(it, rs.root)
        if rel is None:
            kept.append(it)
            continue
        if require_files:
            raise DataError(rs.root / rel, f"missing file (listed in {rs.manifest}, item {it.id!r}); "
                                           "require_files is true in datasets.yaml")
        missing.append(rel)
    if not kept:
        raise DataError(rs.manifest, f"none of its {len(items)} items has its files under {rs.root}: "
                                     "check the set's 'root' in datasets.yaml")
    text = "".join(json.dumps(item_to_dict(it), ensure_ascii=False, allow_nan=False) + "\n" for it in kept)
    digest = hashlib.sha256((str(rs.root) + "\n" + text).encode()).hexdigest()[:12]
    set_dir = Path(out_dir) / f"{rs.name}-{digest}"
    for old in Path(out_dir).glob(f"{rs.name}-*"):          # an earlier version of this set
        if old != set_dir and old.is_dir():
            shutil.rmtree(old)
    set_dir.mkdir(parents=True, exist_ok=True)
    if not (set_dir / "manifest.jsonl").is_file():
        write_manifest(set_dir / "manifest.jsonl", kept)
    tops = _link_top_folders(kept, rs.root, set_dir, rs.manifest)
    embeddings = {f"{k}/{m}": str(_subset_embeddings(p, [it.id for it in kept], m,
                                                     set_dir / "embeddings" / f"{k}_{m}.npz"))
                  for (k, m), p in sorted(rs.embeddings.items())}
    meta = TEST_SETS.get(rs.name, {})
    entry = {"name": rs.name, "title": meta.get("title", "training set"), "manifest": str(rs.manifest),
             "manifest_sha256": file_sha256(rs.manifest), "root": str(rs.root), "dir": str(set_dir),
             "n_listed": len(items), "n_items": len(kept), "skipped_missing_files": len(missing),
             "skipped_missing_files_examples": missing[:20], "linked": tops,
             "n_negative": sum(it.negative for it in kept), "n_with_boxes": sum(bool(it.boxes) for it in kept),
             "n_with_masks": sum(bool(it.mask) for it in kept),
             "n_categories": len({it.category for it in kept if it.category}),
             "protocol": rs.protocol or meta.get("protocol"), "gt": meta.get("gt"), "table": meta.get("table"),
             "embeddings": embeddings}
    log(f"[real_data] {rs.name}: {len(kept)} of {len(items)} items kept ({len(missing)} with missing files) "
        f"-> {set_dir}")
    return entry


def _subset_embeddings(src: Path, ids: list[str], modality: str, dst: Path) -> Path:
    """An embedding .npz (``ids`` + ``image``/``audio`` or ``embeddings``) cut to the kept items, in
    their order, so ``embedders.load_external`` matches it row for row."""
    with np.load(src, allow_pickle=False) as z:
        if "ids" not in z.files:
            raise DataError(src, "expected an 'ids' array (rows are matched to the manifest by id)", field="ids")
        key = modality if modality in z.files else "embeddings"
        if key not in z.files:
            raise DataError(src, f"no array {modality!r} or 'embeddings' (found {z.files})")
        file_ids, emb = [str(i) for i in z["ids"]], z[key]
    pos = {i: r for r, i in enumerate(file_ids)}
    absent = [i for i in ids if i not in pos]
    if absent:
        raise DataError(src, f"no embedding for {len(absent)} training items, e.g. {absent[:3]}", field="ids")
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, ids=np.array(ids), **{modality: emb[[pos[i] for i in ids]]})
    return dst


def stage(spec: DataRootSpec, out_dir, log=print) -> dict:
    """Every set of the data root through :func:`stage_set`: ``{"data_root", "datasets_yaml",
    "require_files", "train": entry, "test": {name: entry}}`` (the data page writes it into
    ``results/data_summary.json`` under ``real``; the later pages read the set folders from it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = dict(require_files=spec.require_files, log=log)
    return {"data_root": str(spec.root), "datasets_yaml": str(spec.path),
            "datasets_yaml_sha256": file_sha256(spec.path), "require_files": spec.require_files,
            "train": stage_set(spec.train, out_dir, **kw),
            "test": {n: stage_set(rs, out_dir, **kw) for n, rs in spec.tests.items()}}


def summary_table(real: dict):
    """Counts per set (a pandas DataFrame) for the data page."""
    import pandas as pd
    rows = {e["name"]: {"title": e["title"], "listed": e["n_listed"], "items": e["n_items"],
                        "missing files (skipped)": e["skipped_missing_files"], "negatives": e["n_negative"],
                        "with boxes": e["n_with_boxes"], "with masks": e["n_with_masks"],
                        "categories": e["n_categories"], "protocol": e["protocol"] or "–"}
            for e in [real["train"], *real["test"].values()]}
    return pd.DataFrame(rows).T


def eval_config(entry: dict, base):
    """The evaluator config of a real test set: ``base`` (an ``evaluate.EvalConfig``) with the set's
    protocol. The ground truth follows the manifest (``gt="auto"``): Flickr's boxes carry annotators
    (consensus), AVSBench items a mask (pixel metrics), extended sets negatives (AP / max-F1 / LocAcc)."""
    return dataclasses.replace(base, protocol=entry.get("protocol") or base.protocol, gt="auto")


def twin_runs(runs: dict, is_main) -> dict:
    """``real_<name>``: the catalogue's main runs again, on the data root's training manifest (no
    curriculum: the AVScenes single-object curriculum does not belong to a real training set)."""
    return {f"real_{n}": {**over, "train_set": TRAIN_SET, "curriculum_steps": 0}
            for n, over in runs.items() if is_main(n)}


def read_summary(runs_dir) -> dict | None:
    """The ``real`` entry of ``results/data_summary.json`` (None for a run without a data root)."""
    p = Path(runs_dir) / "results" / "data_summary.json"
    if not p.is_file():
        raise DataError(p, "missing: run the data page (00_prepare_data) first")
    return json.loads(p.read_text()).get("real")


def write_spec(data_root, train: dict, tests: dict, **top) -> Path:
    """Write a ``datasets.yaml`` (for scripts and tests): ``train``/``tests`` as in the file format."""
    path = Path(data_root) / SPEC_NAME
    atomic_write_text(path, yaml.safe_dump({"train": train, "test": tests, **top}, sort_keys=False))
    return path
