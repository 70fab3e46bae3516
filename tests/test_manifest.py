"""Manifest schema: round trip, atomic writes, and one clear error (file, row, field) per bad input."""
from __future__ import annotations

import json
import pathlib

import pytest

from avsl_core.data.manifest import (FIELDS, ManifestItem, read_manifest, resolve, validate_item,
                                     write_manifest)
from avsl_core.errors import DataError


def _full_item(**kw):
    base = dict(id="a1", image="images/a1.png", audio="audio/a1.wav", category="dog", split="test_seen",
                boxes=((0.1, 0.2, 0.5, 0.9), (0.0, 0.0, 1.0, 1.0)), box_annotators=(0, 2),
                mask="masks/a1.png", group="g7", negative=False, extra={"objects": [{"category": "dog"}]})
    base.update(kw)
    return ManifestItem(**base)


def _row(**kw):
    d = {"id": "x", "image": "i/x.jpg", "audio": "a/x.wav"}
    d.update(kw)
    return d


def _write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _error(tmp_path, rows, **kw) -> DataError:
    p = _write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError) as ei:
        read_manifest(p, **kw)
    assert ei.value.path == str(p)
    return ei.value


def test_round_trip_keeps_every_field(tmp_path):
    items = [_full_item(), ManifestItem(id="b", image="i/b.jpg", audio="a/b.wav", negative=True)]
    p = tmp_path / "sub" / "m.jsonl"
    write_manifest(p, items)
    back = read_manifest(p)
    assert back == items
    assert back[0].boxes == ((0.1, 0.2, 0.5, 0.9), (0.0, 0.0, 1.0, 1.0))
    assert isinstance(back[0].boxes[0], tuple) and back[0].box_annotators == (0, 2)
    first = json.loads(p.read_text().splitlines()[0])
    assert tuple(first) == FIELDS  # every field, in schema order
    assert hash(back[1]) == hash(ManifestItem(id="b", image="i/b.jpg", audio="a/b.wav", negative=True))
    assert [q.name for q in p.parent.iterdir()] == ["m.jsonl"]  # no temp file left behind


def test_optional_fields_default_and_blank_lines_skipped(tmp_path):
    p = _write_lines(tmp_path / "m.jsonl", [_row(), "", "   ", _row(id="y", boxes=[[0, 0, 1, 1]])])
    items = read_manifest(p)
    assert [i.id for i in items] == ["x", "y"]
    assert items[0].split == "test" and items[0].boxes == () and items[0].extra == {}
    assert items[1].boxes == ((0.0, 0.0, 1.0, 1.0),)


@pytest.mark.parametrize("field", ["id", "image", "audio"])
def test_missing_required_field_names_row_and_field(tmp_path, field):
    bad = _row(id="y")
    del bad[field]
    e = _error(tmp_path, [_row(), bad])
    assert (e.row, e.field) == (2, field) and "missing" in str(e)


@pytest.mark.parametrize("field,value", [
    ("category", 5), ("category", ""), ("split", None), ("negative", "yes"), ("negative", 1),
    ("group", 3), ("mask", 7), ("boxes", "0 0 1 1"), ("boxes", [[0, 0, 1]]), ("boxes", [[0, 0, True, 1]]),
    ("boxes", [[0, 0, "1", 1]]), ("box_annotators", [0.5]), ("box_annotators", [0, 1]), ("extra", [1]),
    ("id", 12), ("image", None), ("id", " padded"),
])
def test_wrong_type_is_an_error_naming_the_field(tmp_path, field, value):
    e = _error(tmp_path, [_row(**{field: value})])
    assert (e.row, e.field) == (1, field)
    assert f"row 1 field '{field}'" in str(e)


@pytest.mark.parametrize("box", [[-0.1, 0, 0.5, 0.5], [0, 0, 1.2, 0.5], [0.2, 0.3, 0.5, -2.8823037615171176e16]])
def test_box_outside_unit_square_is_an_error(tmp_path, box):
    e = _error(tmp_path, [_row(), _row(id="y", boxes=[[0, 0, 1, 1], box])])
    assert (e.row, e.field) == (2, "boxes") and "box 1" in str(e) and "[0, 1]" in str(e)


@pytest.mark.parametrize("box", [[0.5, 0.1, 0.5, 0.9], [0.6, 0.1, 0.5, 0.9], [0.1, 0.4, 0.9, 0.4]])
def test_degenerate_box_is_an_error(tmp_path, box):
    e = _error(tmp_path, [_row(boxes=[box])])
    assert e.field == "boxes" and "x2 > x1 and y2 > y1" in str(e)


def test_nan_box_is_an_error(tmp_path):
    e = _error(tmp_path, ['{"id": "x", "image": "i.jpg", "audio": "a.wav", "boxes": [[0, 0, NaN, 1]]}'])
    assert e.field == "boxes" and "non-finite" in str(e)


def test_malformed_json_line_names_the_line(tmp_path):
    e = _error(tmp_path, [_row(), _row(id="y"), '{"id": "z", "image": ', _row(id="w")])
    assert e.row == 3 and "malformed JSON" in str(e)
    e = _error(tmp_path, [_row(), "[1, 2]"])
    assert e.row == 2 and "JSON object" in str(e)


def test_unknown_field_is_an_error(tmp_path):
    e = _error(tmp_path, [_row(bbox=[[0, 0, 1, 1]])])
    assert (e.row, e.field) == (1, "bbox")


def test_duplicate_ids_name_both_rows(tmp_path):
    e = _error(tmp_path, [_row(), _row(id="y"), _row()])
    assert (e.row, e.field) == (3, "id") and "first on row 1" in str(e)
    with pytest.raises(DataError, match="duplicate id 'a1'"):
        write_manifest(tmp_path / "w.jsonl", [_full_item(), _full_item()])


@pytest.mark.parametrize("rel", ["../../etc/passwd", "a/../../x", "..", "/abs/x.jpg", "C:/x.jpg", "a\\b.jpg", "", "."])
def test_paths_escaping_the_root_are_rejected(tmp_path, rel):
    e = _error(tmp_path, [_row(image=rel)])
    assert (e.row, e.field) == (1, "image")
    with pytest.raises(DataError):
        resolve(tmp_path, rel)
    e = _error(tmp_path, [_row(mask=rel)]) if rel else None
    assert e is None or e.field == "mask"


def test_resolve_keeps_paths_inside_root(tmp_path):
    assert resolve(tmp_path, "a/../b/c.jpg") == tmp_path / "b" / "c.jpg"
    assert resolve(str(tmp_path), "frames/x.jpg") == pathlib.Path(tmp_path) / "frames" / "x.jpg"
    with pytest.raises(DataError, match="escapes the data root"):
        resolve(tmp_path, "frames/../../x.jpg")


def test_check_files_reports_the_missing_file(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "i" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "x.wav").write_bytes(b"x")
    p = _write_lines(tmp_path / "m.jsonl", [_row(), _row(id="y", image="i/y.jpg")])
    assert len(read_manifest(p, tmp_path)) == 2  # root alone checks paths, not files
    with pytest.raises(DataError) as ei:
        read_manifest(p, tmp_path, check_files=True)
    assert (ei.value.row, ei.value.field) == (2, "image") and "y.jpg" in str(ei.value)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_validate_item_and_failed_write_leaves_old_file(tmp_path):
    validate_item(_full_item())
    bad = _full_item(boxes=((0.1, 0.2, 0.5, 1.5),), box_annotators=None)
    with pytest.raises(DataError) as ei:
        validate_item(bad, path="x.jsonl", row=4)
    assert (ei.value.path, ei.value.row, ei.value.field) == ("x.jsonl", 4, "boxes")
    p = tmp_path / "m.jsonl"
    write_manifest(p, [_full_item()])
    before = p.read_text()
    with pytest.raises(DataError) as ei:
        write_manifest(p, [_full_item(id="ok"), bad])
    assert ei.value.row == 2
    assert p.read_text() == before and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(DataError, match="not JSON-serialisable"):
        validate_item(_full_item(extra={"x": {1, 2}}))


def test_numpy_numbers_become_plain_python(tmp_path):
    np = pytest.importorskip("numpy")
    item = ManifestItem(id="n", image="i.png", audio="a.wav",
                        boxes=[np.array([0.1, 0.2, 0.6, 0.7], dtype=np.float32)],
                        box_annotators=[np.int64(3)])
    assert type(item.boxes[0][0]) is float and item.box_annotators == (3,)
    write_manifest(tmp_path / "m.jsonl", [item])
    assert read_manifest(tmp_path / "m.jsonl")[0].boxes == item.boxes
