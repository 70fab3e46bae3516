"""Adapters: a user's download + the peers' official metadata -> manifest items (``manifest.py`` schema).

Each adapter returns ``(items, report)``: the :class:`ManifestItem` list and a dict of counts (rows
read, items kept, files missing, duplicates, boxes clipped or dropped, ...) so nothing is dropped
silently. Metadata files are those of the peer repositories (copies in ``../shared/reference_data``;
formats in ``notes/peer_codebases.md`` §7):

* VGGSound / Flickr training lists (``vggss_144k.txt``, ``flickr_10k.txt``, SSL-TIE lists, ...);
* VGG-SS (``vggss.json``, optionally restricted to a test list: 5158 ``vggss_test.csv``, SSL-TIE 4911,
  SSLalignment ``ours_vggss.txt`` 4655, the heard/unheard open-set lists);
* Flickr-SoundNet (249/250-row test lists, multi-annotator XML boxes in 256-px coordinates);
* AVSBench S4 (``s4_meta_data.csv`` + frame/mask/audio folders, or the peers' 3700-frame test lists);
* the SLAVC extended ("plus-silent") negatives.

Files missing on disk are counted skips (``check_files=True``, the peers' "intersect with what is
present"), errors with ``require_files=True``, or not looked at with ``check_files=False``
(metadata-only manifests). CLI::

    python -m avsl_core.data.adapters vggss --root R --meta vggss.json --out manifest.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

from avsl_core.data.manifest import ManifestItem, atomic_write_text, check_relpath, write_manifest
from avsl_core.errors import DataError

SENTINEL_ABS = 1e3  # |coordinate| above this is the VGG-SS -2.88e16 "missing" sentinel, not a slip
_EXTENSION = re.compile(r"\.(?:jpe?g|png|wav|mp3|mp4|mkv|webm|avi|flac)$", re.IGNORECASE)
_VGG_ID = re.compile(r"^(.{11})_(\d{6})$")
_VGG_MS_ID = re.compile(r"^(.{11})_(\d+)_(\d+)$")
_EXAMPLES = 20  # ids/paths listed per report key


@dataclass(frozen=True)
class Layout:
    """Where an item's files sit under the data root: ``str.format`` patterns.

    Fields available: ``{id}``; for VGGSound ids (``<ytid>_<start_s:06d>``) also ``{ytid}``,
    ``{start_s}`` (int), ``{start_ms}``, ``{end_ms}`` and ``{ms_id}`` (``<ytid>_<start_ms>_<end_ms>``).
    Default = EZ-VSL/SLAVC (``frames/<id>.jpg``, ``audio/<id>.wav``); SSL-TIE training uses
    ``total_video_frames/{id}/125.jpg`` + ``total_video_3s_audio/{id}.wav``, SSLalignment's VGG-SS
    ``{ms_id}/image_050.jpg`` + ``{ms_id}.wav``.
    """
    image: str = "frames/{id}.jpg"
    audio: str = "audio/{id}.wav"

    def paths(self, clip_id: str, *, source=None) -> tuple[str, str]:
        f = id_fields(clip_id)
        try:
            return self.image.format(**f), self.audio.format(**f)
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(source, f"layout pattern {self.image!r} / {self.audio!r} cannot be filled "
                                    f"for id {clip_id!r}: {e!r}") from None


def id_fields(clip_id: str) -> dict:
    """Pattern fields of an id (see :class:`Layout`)."""
    f = {"id": clip_id}
    m = _VGG_ID.match(clip_id)
    if m:
        start = int(m.group(2))
        f.update(ytid=m.group(1), start_s=start, start_ms=start * 1000, end_ms=(start + 10) * 1000,
                 ms_id=f"{m.group(1)}_{start * 1000}_{(start + 10) * 1000}")
    return f


def normalise_id(token: str) -> str:
    """A list entry -> clip id: basename, known extension stripped, and SSLalignment's
    ``<ytid>_<start_ms>_<end_ms>`` turned into the VGG-SS key ``<ytid>_<start_s:06d>``."""
    tok = token.strip().rsplit("/", 1)[-1]
    if "." in tok:
        tok = _EXTENSION.sub("", tok)
    m = _VGG_MS_ID.match(tok) if tok.count("_") >= 2 else None
    if m:
        tok = f"{m.group(1)}_{int(m.group(2)) // 1000:06d}"
    return tok


class Report(dict):
    """Counts plus a few example ids per problem; JSON-serialisable."""

    def add(self, key: str, n: int = 1, example=None):
        self[key] = self.get(key, 0) + n
        if example is not None:
            ex = self.setdefault(f"{key}_examples", [])
            if len(ex) < _EXAMPLES:
                ex.append(example)


def read_rows(path) -> list[tuple[int, list[str]]]:
    """CSV/TXT rows as ``(1-based line, cells)``; CRLF, BOM, blank lines and missing final newline OK."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(path, "metadata file not found")
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    return [(i, [c.strip() for c in cells]) for i, cells in
            enumerate(csv.reader(text.split("\n")), start=1) if cells and any(c.strip() for c in cells)]


def read_id_list(path, rep: Report | None = None) -> list[tuple[int, str, list[str]]]:
    """Unique ids of a list file in order, as ``(line, id, other cells)``; duplicates counted in ``rep``."""
    out, seen = [], set()
    for line, cells in read_rows(path):
        cid = normalise_id(cells[0])
        if not cid:
            raise DataError(path, "empty id", row=line)
        if cid in seen:
            if rep is not None:
                rep.add("duplicate_ids_dropped", example=cid)
            continue
        seen.add(cid)
        out.append((line, cid, cells[1:]))
    return out


def read_labels(path) -> dict[str, str]:
    """``id -> class``: ``id,class`` CSVs (ACL-SSL) or VGGSound's ``ytid,start_s,label,split``."""
    labels = {}
    for line, cells in read_rows(path):
        if len(cells) >= 4 and cells[1].isdigit():
            labels[f"{cells[0]}_{int(cells[1]):06d}"] = cells[2]
        elif len(cells) >= 2 and cells[1] and not cells[1].lstrip("-").isdigit():
            labels[normalise_id(cells[0])] = cells[1]
    return labels


def _keep(item, root, rep, *, check_files, require_files, source, row) -> bool:
    """File-presence policy shared by all adapters (see module docstring)."""
    if not check_files:
        return True
    if root is None:
        raise DataError(source, "no data root given: pass root, or check_files=False for metadata only")
    for name in ("image", "audio", "mask"):
        rel = getattr(item, name)
        if rel is not None and not (pathlib.Path(root) / check_relpath(rel, path=source, row=row,
                                                                        field_name=name)).is_file():
            if require_files:
                raise DataError(pathlib.Path(root) / rel, f"missing {name} file (listed in {source} row {row})")
            rep.add("skipped_missing_files", example=rel)
            return False
    return True


def _new_report(dataset, meta, check_files) -> Report:
    return Report(dataset=dataset, meta=str(meta), check_files=check_files, rows_read=0)


def clean_boxes(raw, rep: Report, *, source=None, row=None, scale: float = 1.0, label=None):
    """Raw ``[x1, y1, x2, y2]`` boxes (divided by ``scale``) -> valid normalised boxes, with counts.

    As the peers do (``np.clip(bbox, 0, 1)``), every coordinate is clipped to [0, 1]; the VGG-SS
    sentinel (-2.88e16) is counted apart from ordinary out-of-range values. Boxes left with zero width
    or height paint no pixel in the peers' ground-truth maps, so dropping them keeps those maps equal;
    they are counted. Returns ``(boxes, kept_indices)``.
    """
    boxes, kept = [], []
    for i, b in enumerate(raw):
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b):
            raise DataError(source, f"box {i}: expected 4 finite numbers, got {b!r}", row=row, field="bbox")
        vals = [v / scale for v in b]
        n_sent = sum(abs(v) > SENTINEL_ABS for v in vals)
        n_out = sum(not (0.0 <= v <= 1.0) for v in vals) - n_sent
        if n_sent:
            rep.add("sentinel_coords", n_sent)
            rep.add("sentinel_boxes", example=label)
        if n_out:
            rep.add("out_of_range_coords_clipped", n_out)
        x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in vals)
        if x2 <= x1 or y2 <= y1:
            rep.add("degenerate_boxes_dropped", example=label)
            continue
        boxes.append((x1, y1, x2, y2))
        kept.append(i)
    return tuple(boxes), kept


def train_list(meta, root=None, *, dataset="vggsound-train", layout=Layout(), labels=None,
               split="train", exclude_ids=None, check_files=True, require_files=False):
    """A training list (one id per line; ``<id>.wav``, ``videos/a/b/c/<id>.mp4`` also read) -> items.

    ``labels`` (an ``id,class`` CSV or VGGSound's csv) fills ``category``; ids in ``exclude_ids``
    (e.g. the VGG-SS test ids: 3709 of them are in EZ-VSL's ``vggss_144k.txt``) are dropped and counted.
    """
    rep = _new_report(dataset, meta, check_files)
    cats = read_labels(labels) if labels else {}
    exclude = set(exclude_ids or ())
    items = []
    for line, cid, _ in read_id_list(meta, rep):
        rep["rows_read"] += 1
        if cid in exclude:
            rep.add("excluded_ids", example=cid)
            continue
        image, audio = layout.paths(cid, source=meta)
        item = ManifestItem(id=cid, image=image, audio=audio, category=cats.get(cid), split=split)
        if _keep(item, root, rep, check_files=check_files, require_files=require_files, source=meta, row=line):
            items.append(item)
    if labels:
        rep["without_category"] = sum(it.category is None for it in items)
    rep["items"] = len(items)
    return items, rep


def load_vggss_json(path) -> list[dict]:
    """``vggss.json``: a list of ``{file, class, bbox: [[x1, y1, x2, y2], ...]}`` (checked)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(path, "expected a JSON list of {file, class, bbox} entries")
    for i, e in enumerate(data, start=1):
        for key in ("file", "bbox"):
            if not isinstance(e, dict) or key not in e:
                raise DataError(path, "missing field", row=i, field=key)
        if not isinstance(e["file"], str) or not isinstance(e["bbox"], list):
            raise DataError(path, "expected file: str and bbox: list of boxes", row=i, field="bbox")
    return data


def vggss(annotations, root=None, *, test_list=None, layout=Layout(), split="test",
          check_files=True, require_files=False):
    """VGG-SS (LVS ``vggss.json``) -> items with normalised, clipped boxes (peer GT protocol §4.1).

    ``test_list`` restricts and orders the items: ``vggss_test.csv`` (5158), SSL-TIE
    ``test_vggss_4911.txt``, SSLalignment ``ours_vggss.txt`` (4655, ms-style names), EZ-VSL
    ``vggss_{heard,unheard}_test.csv`` or SSL-TIE ``openset_test_110_{heard_2425,unheard_2463}.txt``.
    Items whose boxes all degenerate stay, with no boxes (their GT map is empty; peers score them 0).
    """
    rep = _new_report("vggss", annotations, check_files)
    entries = {}
    for i, e in enumerate(load_vggss_json(annotations), start=1):
        if e["file"] in entries:
            rep.add("duplicate_annotations_ignored", example=e["file"])
        entries.setdefault(e["file"], (i, e))
    if test_list is not None:
        rep["list"] = str(test_list)
        order = [(cid, line) for line, cid, _ in read_id_list(test_list, rep)]
    else:
        order = [(cid, i) for cid, (i, _) in entries.items()]
    items = []
    for cid, line in order:
        rep["rows_read"] += 1
        if cid not in entries:
            rep.add("not_in_annotations", example=cid)
            continue
        row, e = entries[cid]
        image, audio = layout.paths(cid, source=annotations)
        item = ManifestItem(id=cid, image=image, audio=audio, category=e.get("class") or None, split=split)
        if not _keep(item, root, rep, check_files=check_files, require_files=require_files,
                     source=test_list or annotations, row=line):
            continue
        boxes, kept = clean_boxes(e["bbox"], rep, source=annotations, row=row, label=cid)
        if not boxes:
            rep.add("items_without_boxes", example=cid)
        extra = {"dropped_boxes": len(e["bbox"]) - len(kept)} if len(kept) < len(e["bbox"]) else {}
        items.append(replace(item, boxes=boxes, extra=extra))
    rep["items"] = len(items)
    rep["boxes"] = sum(len(it.boxes) for it in items)
    return items, rep


def parse_flickr_xml(path, rep: Report, *, coord_size: float = 256.0):
    """One Flickr-SoundNet annotation XML -> ``(boxes, annotators)`` (peer GT protocol §4.1).

    Read as the peers read it: for each child of the root, each ``bbox`` grandchild holds a first
    element (skipped) and then xmin, ymin, xmax, ymax in ``coord_size``-px coordinates. The annotator
    of a box is the 0-based index of its root child among those holding boxes (the consensus GT map,
    sum / 2 clipped at 1, does not depend on it). Other grandchildren are counted and ignored.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(path, f"unreadable annotation XML: {e}") from None
    raw, owner, annotator = [], [], 0
    for child in root:
        found = False
        for gc in child:
            if gc.tag != "bbox":
                rep.add("xml_non_bbox_elements")
                continue
            vals = [el.text for el in list(gc)[1:]]
            try:
                nums = [float(v) for v in vals]
            except (TypeError, ValueError):
                nums = []
            if len(nums) != 4:
                raise DataError(path, f"bbox: expected a first element then 4 numbers, got {vals!r}",
                                field="bbox")
            raw.append(nums)
            owner.append(annotator)
            found = True
        annotator += found
    boxes, kept = clean_boxes(raw, rep, source=path, scale=coord_size, label=pathlib.Path(path).stem)
    return boxes, tuple(owner[i] for i in kept)


def flickr(test_list, root=None, *, annotations=None, labels=None, layout=Layout(), split="test",
           coord_size: float = 256.0, check_files=True, require_files=False):
    """Flickr-SoundNet test list (249 or 250 rows; ``id,<int>``, ``id,<class>`` or ``<id>.jpg``) -> items.

    ``annotations`` is the folder of ``<id>.xml`` boxes (Google Drive only; without it the items carry
    no boxes). Category: the list's second column when it is a name (ACL-SSL), else ``labels``.
    """
    rep = _new_report("flickr", test_list, check_files)
    cats = read_labels(labels) if labels else {}
    items = []
    for line, cid, rest in read_id_list(test_list, rep):
        rep["rows_read"] += 1
        cat = cats.get(cid) or (rest[0] if rest and rest[0] and not rest[0].isdigit() else None)
        image, audio = layout.paths(cid, source=test_list)
        item = ManifestItem(id=cid, image=image, audio=audio, category=cat, split=split)
        if not _keep(item, root, rep, check_files=check_files, require_files=require_files,
                     source=test_list, row=line):
            continue
        if annotations is not None:
            xml = pathlib.Path(annotations) / f"{cid}.xml"
            if not xml.is_file():
                if require_files:
                    raise DataError(xml, f"missing annotation (listed in {test_list} row {line})")
                rep.add("skipped_missing_annotations", example=cid)
                continue
            boxes, annot = parse_flickr_xml(xml, rep, coord_size=coord_size)
            if not boxes:
                rep.add("items_without_boxes", example=cid)
            item = replace(item, boxes=boxes, box_annotators=annot)
        items.append(item)
    rep["annotations"] = str(annotations) if annotations is not None else None
    rep["items"] = len(items)
    return items, rep


def _frame_index(name, meta, row) -> int:
    head, _, k = name.rpartition("_")
    if not head or not k.isdigit():
        raise DataError(meta, f"expected <video>_<frame number>, got {name!r}", row=row)
    return int(k)


def _s4_rows(meta, split):
    """``(line, video, frame k, category, split)`` from any of the three S4 metadata forms."""
    meta = pathlib.Path(meta)
    if meta.suffix == ".json":  # SSLalignment s4_seg.json: absolute paths ending .../<split>/<cat>/<v>/<v>_<k>.png
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(meta, f"unreadable JSON: {e}") from None
        for i, e in enumerate(data, start=1):
            parts = pathlib.PurePosixPath(str(e.get("image", "") if isinstance(e, dict) else "")).parts
            if len(parts) < 5:
                raise DataError(meta, "expected .../<split>/<category>/<video>/<video>_<k>.png", row=i,
                                field="image")
            video, stem = parts[-2], pathlib.PurePosixPath(parts[-1]).stem
            yield i, video, _frame_index(stem, meta, i), parts[-3], parts[-4]
        return
    rows = read_rows(meta)
    header = [c.lower() for c in rows[0][1]] if rows else []
    if "split" in header:  # official s4_meta_data.csv: video name first, 'category' and 'split' columns
        ci = header.index("category") if "category" in header else 2
        si = header.index("split")
        for line, cells in rows[1:]:
            if cells[si] == split:
                n_masks = 1 if cells[si] == "train" else 5
                for k in range(1, n_masks + 1):
                    yield line, cells[0], k, cells[ci], cells[si]
        return
    for line, cells in rows:  # ACL-SSL avs1_s4_test.csv: <video>_<k>,<category> (test frames)
        if len(cells) < 2:
            raise DataError(meta, "expected <video>_<k>,<category>", row=line)
        yield line, cells[0].rsplit("_", 1)[0], _frame_index(cells[0], meta, line), cells[1], "test"


def avsbench_s4(meta, root=None, *, split="test", check_files=True, require_files=False):
    """AVSBench S4 (official layout under ``root`` = the ``Single-source`` folder) -> mask items.

    One item per annotated frame (train: frame 1 of each video; val/test: frames 1-5), id
    ``<video>_<k>``, group = the video (SSLalignment's iIoU grouping), the 5-s ``audio_wav`` clip
    shared by the video's frames (``extra.frame`` = k, second k-1..k of the clip). Paths:
    ``s4_data/{visual_frames,gt_masks}/<split>/<category>/<video>/<video>_<k>.png`` and
    ``s4_data/audio_wav/<split>/<category>/<video>.wav``.
    """
    rep = _new_report("avsbench-s4", meta, check_files)
    items = []
    for line, video, k, cat, sp in _s4_rows(meta, split):
        rep["rows_read"] += 1
        if sp != split:
            rep.add("other_split")
            continue
        d = f"{sp}/{cat}/{video}"
        item = ManifestItem(id=f"{video}_{k}", image=f"s4_data/visual_frames/{d}/{video}_{k}.png",
                            audio=f"s4_data/audio_wav/{sp}/{cat}/{video}.wav", category=cat, split=sp,
                            mask=f"s4_data/gt_masks/{d}/{video}_{k}.png", group=video, extra={"frame": k})
        if _keep(item, root, rep, check_files=check_files, require_files=require_files, source=meta, row=line):
            items.append(item)
    rep["items"] = len(items)
    rep["videos"] = len({it.group for it in items})
    return items, rep


def plus_silent(meta, root=None, *, layout=Layout(), categories=None, split="test",
                check_files=True, require_files=False):
    """SLAVC extended-set negatives (``*_test_plus_silent.csv``: ``video,audio,label``) -> negative items.

    Every ``non-sounding`` row becomes ``negative=True``, no boxes, id ``neg_<video>__<audio>``: the
    frame of ``video`` with the audio of ``audio`` (VGG-SS: 4779 mismatched pairs + 379 extra clips
    with video == audio). ``categories`` (id -> class) labels the audio's class when known.
    """
    rep = _new_report("plus-silent", meta, check_files)
    items, seen = [], set()
    rows = read_rows(meta)
    if rows and [c.lower() for c in rows[0][1][:3]] == ["video", "audio", "label"]:
        rows = rows[1:]
    for line, cells in rows:
        rep["rows_read"] += 1
        if len(cells) < 3:
            raise DataError(meta, "expected video,audio,label", row=line)
        if cells[2] != "non-sounding":
            rep.add("rows_not_non_sounding")
            continue
        video, audio_id = normalise_id(cells[0]), normalise_id(cells[1])
        nid = f"neg_{video}__{audio_id}"
        if nid in seen:
            rep.add("duplicate_ids_dropped", example=nid)
            continue
        seen.add(nid)
        rep.add("same_clip" if video == audio_id else "mismatched_pairs")
        image, _ = layout.paths(video, source=meta)
        _, audio = layout.paths(audio_id, source=meta)
        item = ManifestItem(id=nid, image=image, audio=audio, split=split, negative=True,
                            category=(categories or {}).get(audio_id),
                            extra={"image_id": video, "audio_id": audio_id})
        if _keep(item, root, rep, check_files=check_files, require_files=require_files, source=meta, row=line):
            items.append(item)
    rep["items"] = len(items)
    return items, rep


DATASETS = ("vggsound-train", "flickr-train", "vggss", "flickr", "avsbench-s4", "plus-silent",
            "vggss-extended", "flickr-extended")


def build(args) -> tuple[list[ManifestItem], dict]:
    """Dispatch the CLI arguments to an adapter."""
    layout = Layout(args.image_pattern, args.audio_pattern)
    common = dict(check_files=not args.metadata_only, require_files=args.require_files)
    split = args.split
    if args.dataset in ("vggsound-train", "flickr-train"):
        exclude = [cid for _, cid, _ in read_id_list(args.exclude)] if args.exclude else None
        return train_list(args.meta, args.root, dataset=args.dataset, layout=layout, labels=args.labels,
                          split=split or "train", exclude_ids=exclude, **common)
    if args.dataset == "avsbench-s4":
        return avsbench_s4(args.meta, args.root, split=split or "test", **common)
    if args.dataset == "plus-silent":
        return plus_silent(args.meta, args.root, layout=layout, split=split or "test", **common)
    if args.dataset.startswith("vggss"):
        items, rep = vggss(args.meta, args.root, test_list=args.list, layout=layout,
                           split=split or "test", **common)
    else:
        items, rep = flickr(args.meta, args.root, annotations=args.annotations, labels=args.labels,
                            layout=layout, split=split or "test", coord_size=args.coord_size, **common)
    if args.dataset.endswith("-extended"):
        if not args.negatives:
            raise DataError(None, f"{args.dataset} needs --negatives <*_test_plus_silent.csv>")
        if args.dataset.startswith("vggss"):
            cats = {e["file"]: e["class"] for e in load_vggss_json(args.meta) if e.get("class")}
        else:
            cats = {it.id: it.category for it in items if it.category}
        neg, nrep = plus_silent(args.negatives, args.root, layout=layout, categories=cats,
                                split=split or "test", **common)
        items, rep = items + neg, {"dataset": args.dataset, "positives": rep, "negatives": nrep,
                                   "items": len(items) + len(neg)}
    return items, rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m avsl_core.data.adapters", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--root", required=True, help="data root the manifest paths are relative to")
    p.add_argument("--meta", required=True, help="main metadata file (list, vggss.json, CSV, ...)")
    p.add_argument("--out", required=True, help="manifest to write (JSONL); report goes to <out>.report.json")
    p.add_argument("--list", help="vggss: test list restricting the items (5158/4911/4655/heard/unheard)")
    p.add_argument("--annotations", help="flickr: folder of <id>.xml box annotations")
    p.add_argument("--labels", help="id,class CSV (or VGGSound's csv) giving categories")
    p.add_argument("--negatives", help="*-extended: the *_test_plus_silent.csv")
    p.add_argument("--exclude", help="*-train: list of ids to leave out (e.g. the test ids)")
    p.add_argument("--split", help="split label (avsbench-s4: which split to read); default train/test")
    p.add_argument("--image-pattern", default=Layout.image, help="image path pattern (see Layout)")
    p.add_argument("--audio-pattern", default=Layout.audio, help="audio path pattern (see Layout)")
    p.add_argument("--coord-size", type=float, default=256.0, help="flickr: XML pixel frame size")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--require-files", action="store_true", help="a missing file is an error")
    g.add_argument("--metadata-only", action="store_true", help="do not look for the media files")
    args = p.parse_args(argv)
    try:
        items, rep = build(args)
        write_manifest(args.out, items)
        out = pathlib.Path(args.out)
        atomic_write_text(out.with_name(out.stem + ".report.json"), json.dumps(rep, indent=2) + "\n")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {k: v for k, v in rep.items() if isinstance(v, int) and not isinstance(v, bool)}
    print(f"wrote {len(items)} items to {args.out}; {json.dumps(counts)}")
    if not items and rep.get("skipped_missing_files"):
        print(f"warning: no listed file was found under {args.root}: check --root and the path patterns, "
              f"or pass --metadata-only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
