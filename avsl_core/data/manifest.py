"""One manifest schema for every dataset (AVScenes and real data): JSONL, one item per line.

Each line is a JSON object with exactly the fields of :class:`ManifestItem` (the optional ones may be
omitted and take their defaults). Paths are relative to a data root and never leave it. Boxes are
normalised ``x1, y1, x2, y2`` in [0, 1] with ``x2 > x1`` and ``y2 > y1``; datasets whose raw boxes
break this (the VGG-SS -2.88e16 sentinel, Flickr's 256-px pixels) are fixed in their adapter
(``avsl_core.data.adapters``), which counts and reports every change. The full field reference with an
example per dataset is ``data_manifests/schema.md``.

Every problem is a :class:`~avsl_core.errors.DataError` naming the file, the 1-based line and the field.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import posixpath
import re
import tempfile
from dataclasses import dataclass, field, fields
from typing import Iterable

from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_text  # re-exported for the data modules

Box = tuple[float, float, float, float]

FIELDS = ("id", "image", "audio", "category", "split", "boxes", "box_annotators", "mask", "group",
          "negative", "extra")
REQUIRED = ("id", "image", "audio")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class ManifestItem:
    """One (image, audio) test or training item. See ``data_manifests/schema.md``.

    ``boxes`` are the sounding object's boxes (several for VGG-SS; one per annotator box for Flickr,
    with ``box_annotators`` giving each box's annotator). ``negative`` marks an extended-set item whose
    sound is not visible (SLAVC plus-silent protocol); its ``boxes`` stay empty.
    """
    id: str
    image: str  # path relative to the data root
    audio: str  # path relative to the data root
    category: str | None = None
    split: str = "test"
    boxes: tuple[Box, ...] = ()  # normalised x1, y1, x2, y2 in [0, 1]
    box_annotators: tuple[int, ...] | None = None  # same length as boxes
    mask: str | None = None  # relative path of a PNG mask (uint8, > 0 = sounding object)
    group: str | None = None  # swap group / source video / scene
    negative: bool = False
    extra: dict = field(default_factory=dict, hash=False)  # free-form, JSON-serialisable

    def __post_init__(self):
        # JSON gives lists and numpy gives float32/int64: store tuples of plain floats/ints so items stay
        # hashable, immutable and JSON-serialisable (anything else is left for validate_item to reject).
        boxes = self.boxes.tolist() if hasattr(self.boxes, "tolist") else self.boxes  # numpy [N, 4]
        if isinstance(boxes, (list, tuple)):
            boxes = [b.tolist() if hasattr(b, "tolist") else b for b in boxes]
            object.__setattr__(self, "boxes", tuple(
                tuple(float(v) if _is_number(v) else v for v in b) if isinstance(b, (list, tuple)) else b
                for b in boxes))
        if isinstance(self.box_annotators, (list, tuple)):
            object.__setattr__(self, "box_annotators", tuple(
                int(a) if isinstance(a, numbers.Integral) and not isinstance(a, bool) else a
                for a in self.box_annotators))


def check_relpath(relpath, *, path=None, row=None, field_name=None) -> str:
    """Return the normalised POSIX form of ``relpath``; DataError if it is absolute or leaves the root.

    The check is lexical (``a/../b`` is fine, ``../x``, ``a/../../x``, ``/x`` and ``C:x`` are not);
    symlinks inside the root are followed at load time as the user set them up.
    """
    where = dict(row=row, field=field_name)
    if not isinstance(relpath, str) or not relpath:
        raise DataError(path if path is not None else relpath,
                        f"expected a non-empty relative path, got {relpath!r}", **where)
    src = path if path is not None else relpath
    if "\\" in relpath:
        raise DataError(src, f"path {relpath!r} uses backslashes; use '/' separators", **where)
    if relpath.startswith("/") or _WINDOWS_DRIVE.match(relpath):
        raise DataError(src, f"path {relpath!r} is absolute; paths must be relative to the data root",
                        **where)
    norm = posixpath.normpath(relpath)
    if norm == ".." or norm.startswith("../"):
        raise DataError(src, f"path {relpath!r} escapes the data root", **where)
    if norm == ".":
        raise DataError(src, f"path {relpath!r} names the data root itself, not a file", **where)
    return norm


def resolve(root, relpath) -> pathlib.Path:
    """``root / relpath`` after checking that ``relpath`` stays inside ``root`` (DataError otherwise)."""
    return pathlib.Path(root) / check_relpath(relpath)


def validate_item(item: ManifestItem, *, path=None, row: int | None = None) -> None:
    """Raise DataError (naming ``path``, ``row`` and the field) if ``item`` breaks the schema."""
    def err(fname, problem):
        raise DataError(path, problem, row=row, field=fname)

    if not isinstance(item.id, str) or not item.id or item.id != item.id.strip() \
            or any(ord(c) < 32 for c in item.id):
        err("id", f"expected a non-empty string without surrounding spaces or control characters, "
                  f"got {item.id!r}")
    for fname in ("image", "audio"):
        check_relpath(getattr(item, fname), path=path, row=row, field_name=fname)
    if item.mask is not None:
        check_relpath(item.mask, path=path, row=row, field_name="mask")
    if item.category is not None and (not isinstance(item.category, str) or not item.category):
        err("category", f"expected a non-empty string or null, got {item.category!r}")
    if not isinstance(item.split, str) or not item.split:
        err("split", f"expected a non-empty string, got {item.split!r}")
    if item.group is not None and (not isinstance(item.group, str) or not item.group):
        err("group", f"expected a non-empty string or null, got {item.group!r}")
    if not isinstance(item.negative, bool):
        err("negative", f"expected true or false, got {item.negative!r}")
    if not isinstance(item.boxes, (tuple, list)):
        err("boxes", f"expected a list of [x1, y1, x2, y2] boxes, got {item.boxes!r}")
    for i, box in enumerate(item.boxes):
        if not isinstance(box, (tuple, list)) or len(box) != 4 or not all(map(_is_number, box)):
            err("boxes", f"box {i}: expected 4 numbers [x1, y1, x2, y2], got {box!r}")
        if not all(math.isfinite(v) for v in box):  # also catches NaN / inf read from JSON
            err("boxes", f"box {i}: non-finite coordinate in {list(box)}")
        if not all(0.0 <= v <= 1.0 for v in box):
            err("boxes", f"box {i}: coordinates must be normalised to [0, 1], got {list(box)}")
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            err("boxes", f"box {i}: expected x2 > x1 and y2 > y1, got {list(box)}")
    if item.box_annotators is not None:
        ann = item.box_annotators
        if not isinstance(ann, (tuple, list)) or not all(
                isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in ann):
            err("box_annotators", f"expected a list of non-negative integers or null, got {ann!r}")
        if len(ann) != len(item.boxes):
            err("box_annotators", f"has {len(ann)} entries for {len(item.boxes)} boxes")
    if not isinstance(item.extra, dict):
        err("extra", f"expected a JSON object, got {type(item.extra).__name__}")
    try:
        if item.extra:
            json.dumps(item.extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        err("extra", f"not JSON-serialisable: {e}")


def item_to_dict(item: ManifestItem) -> dict:
    """The JSON object written for ``item`` (every field, in schema order)."""
    return {
        "id": item.id, "image": item.image, "audio": item.audio, "category": item.category,
        "split": item.split, "boxes": [list(b) for b in item.boxes],
        "box_annotators": None if item.box_annotators is None else list(item.box_annotators),
        "mask": item.mask, "group": item.group, "negative": item.negative, "extra": item.extra,
    }


def item_from_dict(obj, *, path=None, row: int | None = None) -> ManifestItem:
    """Build and validate an item from one parsed JSON line (DataError naming the row and field)."""
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", row=row)
    for name in REQUIRED:
        if name not in obj:
            raise DataError(path, "missing required field", row=row, field=name)
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DataError(path, f"unknown field (allowed: {', '.join(FIELDS)})", row=row, field=unknown[0])
    kw = dict(obj)
    if kw.get("extra") is None:
        kw["extra"] = {}
    if "boxes" in kw:
        boxes = kw["boxes"]
        if boxes is None:
            boxes = []
        if not isinstance(boxes, list) or not all(isinstance(b, list) for b in boxes):
            raise DataError(path, f"expected a list of [x1, y1, x2, y2] lists, got {boxes!r}",
                            row=row, field="boxes")
        kw["boxes"] = boxes
    for name in ("id", "image", "audio"):
        if not isinstance(kw[name], str):
            raise DataError(path, f"expected a string, got {kw[name]!r}", row=row, field=name)
    item = ManifestItem(**kw)
    validate_item(item, path=path, row=row)
    return item


def read_manifest(path, root=None, *, check_files: bool = False) -> list[ManifestItem]:
    """Read and validate a JSONL manifest.

    Blank lines are ignored; rows are numbered by their 1-based line. Duplicate ids are an error. With
    ``root`` every path is checked to stay inside it; with ``check_files`` as well, a missing image,
    audio or mask file is an error naming that file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    items: list[ManifestItem] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"malformed JSON line: {e.msg} (column {e.colno})", row=row) from None
            item = item_from_dict(obj, path=path, row=row)
            if item.id in seen:
                raise DataError(path, f"duplicate id {item.id!r} (first on row {seen[item.id]})",
                                row=row, field="id")
            seen[item.id] = row
            if root is not None and check_files:
                for name in ("image", "audio", "mask"):
                    rel = getattr(item, name)
                    if rel is not None and not resolve(root, rel).is_file():
                        raise DataError(path, f"file not found: {resolve(root, rel)}", row=row, field=name)
            items.append(item)
    return items


def write_manifest(path, items: Iterable[ManifestItem]) -> None:
    """Validate ``items`` and write them as JSONL atomically (temp file in the same folder + os.replace)."""
    path = pathlib.Path(path)
    lines, seen = [], {}
    for row, item in enumerate(items, start=1):
        validate_item(item, path=path, row=row)
        if item.id in seen:
            raise DataError(path, f"duplicate id {item.id!r} (first on row {seen[item.id]})", row=row,
                            field="id")
        seen[item.id] = row
        lines.append(json.dumps(item_to_dict(item), ensure_ascii=False, allow_nan=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


__all__ = ["ManifestItem", "FIELDS", "read_manifest", "write_manifest", "resolve", "validate_item",
           "check_relpath", "item_to_dict", "item_from_dict", "atomic_write_text"]
assert tuple(f.name for f in fields(ManifestItem)) == FIELDS
