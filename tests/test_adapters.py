"""Real-dataset adapters: tiny hand-made fixtures, then the peers' metadata in ../shared/reference_data."""
from __future__ import annotations

import json
import os
import pathlib

import pytest

from avsl_core.data import adapters as A
from avsl_core.data.manifest import read_manifest, write_manifest
from avsl_core.errors import DataError

SENT = -2.8823037615171176e16


def _reference_root() -> pathlib.Path | None:
    env = os.environ.get("AVSL_REFERENCE_DATA")
    cand = pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference_data"
    return cand if (cand / "kaistmm__SSLalignment" / "metadata" / "vggss.json").is_file() else None


REF = _reference_root()
needs_ref = pytest.mark.skipif(REF is None, reason="reference metadata not found (set AVSL_REFERENCE_DATA or "
                                                   "place it at <repo>/../shared/reference_data)")


def _touch(root, *rels):
    for rel in rels:
        p = pathlib.Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _vggss_fixture(tmp_path):
    ann = [
        {"file": "aaaaaaaaaaa_000010", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
        {"file": "bbbbbbbbbbb_000000", "class": "cat", "bbox": [[0.4, 0.5, SENT, 0.9], [0.2, 0.1, 1.0000001, 0.3]]},
        {"file": "c_c-ccccccc_000020", "class": "tuba", "bbox": [[0.3, 1.0, 0.7, 1.0]]},  # degenerate only
    ]
    p = tmp_path / "vggss.json"
    p.write_text(json.dumps(ann))
    return p


def test_vggss_clips_sentinels_drops_degenerate_and_reports(tmp_path):
    items, rep = A.vggss(_vggss_fixture(tmp_path), check_files=False)
    assert [i.id for i in items] == ["aaaaaaaaaaa_000010", "bbbbbbbbbbb_000000", "c_c-ccccccc_000020"]
    assert items[0].boxes == ((0.1, 0.2, 0.5, 0.6),) and items[0].category == "dog barking"
    assert items[1].boxes == ((0.2, 0.1, 1.0, 0.3),) and items[1].extra == {"dropped_boxes": 1}
    assert items[2].boxes == () and items[2].extra == {"dropped_boxes": 1}
    assert items[0].image == "frames/aaaaaaaaaaa_000010.jpg" and items[0].audio == "audio/aaaaaaaaaaa_000010.wav"
    assert (rep["sentinel_coords"], rep["sentinel_boxes"], rep["out_of_range_coords_clipped"]) == (1, 1, 1)
    assert rep["degenerate_boxes_dropped"] == 2 and rep["items_without_boxes"] == 1
    assert rep["items_without_boxes_examples"] == ["c_c-ccccccc_000020"]
    assert rep["sentinel_boxes_examples"] == ["bbbbbbbbbbb_000000"]
    write_manifest(tmp_path / "m.jsonl", items)  # everything the adapter emits passes the validator
    assert read_manifest(tmp_path / "m.jsonl") == items


def test_vggss_test_list_forms_and_missing_files(tmp_path):
    ann = _vggss_fixture(tmp_path)
    lst = tmp_path / "ours.txt"  # SSLalignment ms names, CRLF, no final newline, an unknown id
    lst.write_bytes(b"c_c-ccccccc_20000_30000\r\naaaaaaaaaaa_10000_20000.jpg\r\nzzzzzzzzzzz_000001")
    items, rep = A.vggss(ann, check_files=False, test_list=lst, split="test_heard")
    assert [i.id for i in items] == ["c_c-ccccccc_000020", "aaaaaaaaaaa_000010"]
    assert {i.split for i in items} == {"test_heard"}
    assert rep["not_in_annotations"] == 1 and rep["rows_read"] == 3
    root = tmp_path / "data"
    _touch(root, "frames/aaaaaaaaaaa_000010.jpg", "audio/aaaaaaaaaaa_000010.wav", "frames/c_c-ccccccc_000020.jpg")
    items, rep = A.vggss(ann, root, test_list=lst)
    assert [i.id for i in items] == ["aaaaaaaaaaa_000010"] and rep["skipped_missing_files"] == 1
    assert rep["skipped_missing_files_examples"] == ["audio/c_c-ccccccc_000020.wav"]
    with pytest.raises(DataError, match="c_c-ccccccc_000020.wav: missing audio file"):
        A.vggss(ann, root, test_list=lst, require_files=True)
    with pytest.raises(DataError, match="no data root"):
        A.vggss(ann, None)


def test_vggss_bad_json_names_entry_and_field(tmp_path):
    p = tmp_path / "v.json"
    p.write_text(json.dumps([{"file": "a", "bbox": []}, {"file": "b"}]))
    with pytest.raises(DataError) as ei:
        A.vggss(p, check_files=False)
    assert (ei.value.row, ei.value.field) == (2, "bbox")
    p.write_text('[{"file": "a", "bbox": [[0, 0, 1, NaN]]}]')
    with pytest.raises(DataError, match="4 finite numbers"):
        A.vggss(p, check_files=False)
    p.write_text("[{")
    with pytest.raises(DataError, match="malformed JSON"):
        A.vggss(p, check_files=False)


def test_layout_patterns_and_ids():
    f = A.id_fields("gklbB7TYoK4_000030")
    assert (f["ytid"], f["start_s"], f["ms_id"]) == ("gklbB7TYoK4", 30, "gklbB7TYoK4_30000_40000")
    lay = A.Layout("{ms_id}/image_050.jpg", "{ytid}/{start_s:06d}.wav")
    assert lay.paths("gklbB7TYoK4_000030") == ("gklbB7TYoK4_30000_40000/image_050.jpg", "gklbB7TYoK4/000030.wav")
    with pytest.raises(DataError, match="cannot be filled"):
        lay.paths("10000130166")  # a Flickr id has no ytid
    assert A.normalise_id("videos/0/0/0/2615133000.mp4") == "2615133000"
    assert A.normalise_id("/hdd/Annotations/dataset/2432219254.mp4 ") == "2432219254"
    assert A.normalise_id("1F3_bvIT0ig_0_10000") == "1F3_bvIT0ig_000000"
    assert A.normalise_id("a_b_c_dddddd") == "a_b_c_dddddd"


def _xml(boxes_by_annotator):
    parts = ["<annotation><filename>x.jpg</filename>"]
    for boxes in boxes_by_annotator:
        parts.append("<object>")
        for b in boxes:
            parts.append("<bbox><name>s</name>" + "".join(f"<{t}>{v}</{t}>" for t, v in
                                                          zip(("xmin", "ymin", "xmax", "ymax"), b)) + "</bbox>")
        parts.append("</object>")
    return "".join(parts) + "</annotation>"


def test_flickr_xml_boxes_match_the_peers_pixel_maps(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    raw = [[(10, 20, 200, 250)], [(13, 27, 129, 255), (0, 0, 256, 256)], [(30, 40, 30, 90)]]  # last degenerate
    (ann / "111.xml").write_text(_xml(raw))
    (ann / "222.xml").write_text(_xml([[(-5, 0, 300, 128)]]))
    lst = tmp_path / "flickr_test.csv"
    lst.write_bytes(b"111,202\r\n222,0\r\n333,7\r\n")
    items, rep = A.flickr(lst, check_files=False, annotations=ann)
    assert [i.id for i in items] == ["111", "222"] and rep["skipped_missing_annotations"] == 1
    a = items[0]
    assert a.box_annotators == (0, 1, 1) and rep["degenerate_boxes_dropped"] == 1
    kept = [raw[0][0], raw[1][0], raw[1][1]]
    for box, px in zip(a.boxes, kept):  # the GT painter's int(224 * x) == the peers' int(224 * v / 256)
        assert [int(224 * x) for x in box] == [int(224 * v / 256) for v in px]
    assert items[1].boxes == ((0.0, 0.0, 1.0, 0.5),) and rep["out_of_range_coords_clipped"] == 2
    assert items[0].category is None  # the second column is an unused integer
    with pytest.raises(DataError, match="333.xml: missing annotation"):
        A.flickr(lst, check_files=False, annotations=ann, require_files=True)
    (ann / "111.xml").write_text("<annotation><object><bbox><n>s</n><xmin>1</xmin></bbox></object></annotation>")
    with pytest.raises(DataError, match="111.xml"):
        A.flickr(lst, check_files=False, annotations=ann)


def test_flickr_categories_from_list_or_labels(tmp_path):
    lst = tmp_path / "t.txt"
    lst.write_text("111.jpg\n222.jpg\n111.jpg\n")
    labels = tmp_path / "l.csv"
    labels.write_text('111,"playing drum, snare"\n222,dog\n')
    items, rep = A.flickr(lst, check_files=False, labels=labels)
    assert [(i.id, i.category, i.boxes) for i in items] == [("111", "playing drum, snare", ()), ("222", "dog", ())]
    assert rep["duplicate_ids_dropped"] == 1 and rep["annotations"] is None


def test_avsbench_s4_official_layout(tmp_path):
    root = tmp_path / "Single-source"
    meta = root / "s4_meta_data.csv"
    root.mkdir()
    meta.write_text("name,split,category\nvidA,train,dog\nvidB,test,helicopter\nvid_C,test,dog\n")
    for k in range(1, 6):
        _touch(root, f"s4_data/visual_frames/test/helicopter/vidB/vidB_{k}.png",
               f"s4_data/gt_masks/test/helicopter/vidB/vidB_{k}.png")
    _touch(root, "s4_data/audio_wav/test/helicopter/vidB.wav", "s4_data/visual_frames/train/dog/vidA/vidA_1.png",
           "s4_data/gt_masks/train/dog/vidA/vidA_1.png", "s4_data/audio_wav/train/dog/vidA.wav")
    items, rep = A.avsbench_s4(meta, root, split="test")
    assert [i.id for i in items] == [f"vidB_{k}" for k in range(1, 6)]
    assert rep["skipped_missing_files"] == 5 and rep["videos"] == 1  # vid_C has no files
    it = items[2]
    assert it.mask == "s4_data/gt_masks/test/helicopter/vidB/vidB_3.png" and it.group == "vidB"
    assert it.audio == "s4_data/audio_wav/test/helicopter/vidB.wav" and it.extra == {"frame": 3}
    items, rep = A.avsbench_s4(meta, root, split="train")
    assert [i.id for i in items] == ["vidA_1"] and items[0].split == "train"
    items, _ = A.avsbench_s4(meta, None, split="test", check_files=False)
    assert [i.id for i in items][5:] == [f"vid_C_{k}" for k in range(1, 6)]


def test_plus_silent_negatives(tmp_path):
    p = tmp_path / "x_test_plus_silent.csv"
    p.write_bytes(b"video,audio,label\r\nv1,a9,non-sounding\r\nv2,v2,non-sounding\r\nv3,a1,sounding\r\nv1,a9,non-sounding\r\n")
    items, rep = A.plus_silent(p, check_files=False, categories={"a9": "dog"})
    assert [(i.id, i.image, i.audio, i.negative, i.boxes, i.category) for i in items] == [
        ("neg_v1__a9", "frames/v1.jpg", "audio/a9.wav", True, (), "dog"),
        ("neg_v2__v2", "frames/v2.jpg", "audio/v2.wav", True, (), None)]
    assert (rep["mismatched_pairs"], rep["same_clip"], rep["rows_not_non_sounding"],
            rep["duplicate_ids_dropped"]) == (1, 1, 1, 1)


def test_train_list_labels_exclusion_and_files(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("aaaaaaaaaaa_000001\nbbbbbbbbbbb_000002\naaaaaaaaaaa_000001\nccccccccccc_000003\n")
    vggsound_csv = tmp_path / "vggsound.csv"
    vggsound_csv.write_text("aaaaaaaaaaa,1,dog barking,train\nbbbbbbbbbbb,2,\"subway, metro\",train\n")
    items, rep = A.train_list(lst, check_files=False, labels=vggsound_csv, exclude_ids={"ccccccccccc_000003"})
    assert [(i.id, i.category, i.split) for i in items] == [("aaaaaaaaaaa_000001", "dog barking", "train"),
                                                           ("bbbbbbbbbbb_000002", "subway, metro", "train")]
    assert (rep["duplicate_ids_dropped"], rep["excluded_ids"], rep["without_category"]) == (1, 1, 0)
    root = tmp_path / "d"
    _touch(root, "total_video_frames/bbbbbbbbbbb_000002/125.jpg", "total_video_3s_audio/bbbbbbbbbbb_000002.wav")
    items, rep = A.train_list(lst, root, layout=A.Layout("total_video_frames/{id}/125.jpg", "total_video_3s_audio/{id}.wav"))
    assert [i.id for i in items] == ["bbbbbbbbbbb_000002"] and rep["skipped_missing_files"] == 2


def test_cli_writes_manifest_and_report(tmp_path, capsys):
    ann = _vggss_fixture(tmp_path)
    neg = tmp_path / "neg.csv"
    neg.write_text("video,audio,label\naaaaaaaaaaa_000010,bbbbbbbbbbb_000000,non-sounding\n")
    out = tmp_path / "out" / "vggss_ext.jsonl"
    rc = A.main(["vggss-extended", "--root", str(tmp_path), "--meta", str(ann), "--negatives", str(neg),
                 "--out", str(out), "--metadata-only"])
    assert rc == 0
    items = read_manifest(out)
    assert len(items) == 4 and items[-1].negative and items[-1].category == "cat"
    rep = json.loads((out.parent / "vggss_ext.report.json").read_text())
    assert rep["items"] == 4 and rep["positives"]["sentinel_boxes"] == 1 and rep["negatives"]["items"] == 1
    assert "wrote 4 items" in capsys.readouterr().out
    rc = A.main(["vggss", "--root", str(tmp_path), "--meta", str(ann), "--out", str(out), "--require-files"])
    assert rc == 2 and "missing image file" in capsys.readouterr().err
    assert len(read_manifest(out)) == 4  # the failed run left the old manifest alone


# ---------------------------------------------------------------- reference metadata (peers' files)
def _m(*parts):
    return REF.joinpath(*parts)


@needs_ref
def test_reference_vggss_counts(tmp_path):
    ann = _m("kaistmm__SSLalignment", "metadata", "vggss.json")
    items, rep = A.vggss(ann, check_files=False)
    assert rep["items"] == 5158 and len({i.category for i in items}) == 221
    assert (rep["sentinel_boxes"], rep["sentinel_coords"]) == (12, 14)
    assert rep["degenerate_boxes_dropped"] == 18 and rep["boxes"] == 5941 - 18
    assert rep["items_without_boxes"] == 2
    assert sorted(rep["items_without_boxes_examples"]) == ["M1P1xla8rg0_000000", "MKC9LvRivTM_000030"]
    write_manifest(tmp_path / "vggss.jsonl", items)
    assert read_manifest(tmp_path / "vggss.jsonl") == items
    lvs = _m("hche11__Localizing-Visual-Sounds-the-Hard-Way", "metadata", "vggss.json")
    assert A.vggss(lvs, check_files=False)[0] == items  # byte-identical copy, same manifest


@needs_ref
@pytest.mark.parametrize("rel,n", [
    ("kaistmm__SSLalignment/metadata/vggss_test.csv", 5158),
    ("jinxiang-liu__SSL-TIE/metadata/test_vggss_4911.txt", 4911),
    ("kaistmm__SSLalignment/metadata/ours_vggss.txt", 4655),
    ("jinxiang-liu__SSL-TIE/metadata/openset/openset_test_110_heard_2425.txt", 2425),
    ("jinxiang-liu__SSL-TIE/metadata/openset/openset_test_110_unheard_2463.txt", 2463),
    ("kaistmm__SSLalignment/metadata/vggss_heard_test.csv", 2564),
    ("kaistmm__SSLalignment/metadata/vggss_unheard_test.csv", 2575),
])
def test_reference_vggss_test_lists(rel, n):
    items, rep = A.vggss(_m("kaistmm__SSLalignment", "metadata", "vggss.json"), check_files=False,
                         test_list=REF / rel)
    assert rep["items"] == n and rep.get("not_in_annotations", 0) == 0


@needs_ref
def test_reference_open_set_lists_are_disjoint_in_classes():
    ann = _m("kaistmm__SSLalignment", "metadata", "vggss.json")
    cats = {}
    for name in ("heard_2425", "unheard_2463"):
        lst = _m("jinxiang-liu__SSL-TIE", "metadata", "openset", f"openset_test_110_{name}.txt")
        cats[name] = {i.category for i in A.vggss(ann, check_files=False, test_list=lst)[0]}
    assert not cats["heard_2425"] & cats["unheard_2463"]


@needs_ref
@pytest.mark.parametrize("rel,n", [
    ("kaistmm__SSLalignment/metadata/flickr_test.csv", 250),
    ("kaistmm__SSLalignment/metadata/flickr_test_249.csv", 249),
    ("stoneMo__EZ-VSL/metadata/flickr_test.csv", 249),
    ("stoneMo__SLAVC/metadata/flickr_test.csv", 250),
    ("jinxiang-liu__SSL-TIE/metadata/test_flickr_250.txt", 249),
    ("kaistmm__SSLalignment/metadata/test_flickr_250.txt", 250),
    ("swimmiing__ACL-SSL/Flickr/metadata/flickr_test.csv", 250),
    ("ardasnck__learning_to_localize_sound_source/supervised_test_list.txt", 250),  # 280 rows
    ("ardasnck__learning_to_localize_sound_source/test_list.txt", 250),  # has the 3908875357 typo
])
def test_reference_flickr_lists(rel, n):
    items, rep = A.flickr(REF / rel, check_files=False)
    assert rep["items"] == n
    assert ("3908875350" in {i.id for i in items}) == (n == 250 and not rel.endswith("/test_list.txt"))
    if "supervised" in rel:
        assert rep["duplicate_ids_dropped"] == 30
    if "ACL-SSL" in rel:
        assert all(i.category for i in items)


@needs_ref
def test_reference_extended_lists():
    items, rep = A.plus_silent(_m("kaistmm__SSLalignment", "metadata", "vggss_test_plus_silent.csv"),
                               check_files=False)
    assert (rep["items"], rep["mismatched_pairs"], rep["same_clip"]) == (5158, 4779, 379)
    assert all(i.negative and not i.boxes for i in items)
    items, rep = A.plus_silent(_m("kaistmm__SSLalignment", "metadata", "flickr_test_plus_silent.csv"),
                               check_files=False)
    assert (rep["items"], rep["mismatched_pairs"]) == (250, 250)


@needs_ref
@pytest.mark.parametrize("rel", ["swimmiing__ACL-SSL/AVSBench/metadata/avs1_s4_test.csv",
                                 "kaistmm__SSLalignment/metadata/s4_seg.json"])
def test_reference_avsbench_s4(rel):
    items, rep = A.avsbench_s4(REF / rel, check_files=False)
    assert (rep["items"], rep["videos"], len({i.category for i in items})) == (3700, 740, 23)
    assert items[0].mask == "s4_data/gt_masks/test/helicopter/0d9u2CymIxc/0d9u2CymIxc_1.png"


@needs_ref
def test_reference_training_lists_and_test_overlap():
    test_ids = {i.id for i in A.vggss(_m("kaistmm__SSLalignment", "metadata", "vggss.json"), check_files=False)[0]}
    items, rep = A.train_list(_m("kaistmm__SSLalignment", "metadata", "vggss_10k.txt"), check_files=False,
                              exclude_ids=test_ids)
    assert (rep["rows_read"], rep["excluded_ids"], rep["items"]) == (10000, 238, 9762)
    items, rep = A.train_list(_m("jinxiang-liu__SSL-TIE", "metadata", "train_vggss_train_10k.txt"),
                              check_files=False, exclude_ids=test_ids)
    assert rep["items"] == 10000 and "excluded_ids" not in rep
    items, rep = A.train_list(_m("jinxiang-liu__SSL-TIE", "metadata", "train_flickr_10k.txt"),
                              dataset="flickr-train", check_files=False)
    assert rep["items"] == 10000 and items[0].image == "frames/2615133000.jpg"
