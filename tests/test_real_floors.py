"""benchmarks/real_floors.py: the audio-blind floors on a real benchmark's boxes beside the paper's rows."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_floors as R  # noqa: E402

from avsl_core.data.manifest import ManifestItem  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference_data"


def _item(i, box):
    return ManifestItem(id=f"v{i}", image=f"{i}.jpg", audio=f"{i}.wav", category="dog", boxes=(box,))


def test_centre_prior_hits_a_centred_box_and_misses_a_corner_box():
    items = [_item(0, (0.2, 0.2, 0.8, 0.8)), _item(1, (0.0, 0.0, 0.2, 0.2))]
    rows = R.score_floors(items[:1], n_bootstrap=0) + R.score_floors(items[1:], n_bootstrap=0)
    centre = [r for r in rows if r["map"] == "centre" and r["protocol"] == "official"]
    assert [r["pointing"] for r in centre] == [1.0, 0.0]
    assert centre[0]["ciou@0.5"] == 1.0 and centre[1]["ciou@0.5"] == 0.0
    assert {r["protocol"] for r in rows} == set(R.PROTOCOLS) and {r["map"] for r in rows} == {"centre", "random"}


def test_paper_rows_are_the_published_table_rows_as_fractions():
    p = R.paper_rows("VGG-SS", ROOT / "data_manifests" / "paper" / "paper_tables.csv")
    ours = p[p.method == "Ours (NN w/ supervised pretrained encoders)"].iloc[0]
    assert ours.ciou == pytest.approx(0.3994) and ours.auc == pytest.approx(0.4002)
    assert p.method.is_unique                                   # the CSV repeats some rows: kept once
    assert R.paper_rows("no such set", ROOT / "data_manifests" / "paper" / "paper_tables.csv").empty


def test_main_scores_each_list_and_writes_json(tmp_path, capsys):
    ann = tmp_path / "vggss.json"
    ann.write_text(json.dumps([{"file": "a", "class": "dog", "bbox": [[0.3, 0.3, 0.7, 0.7]]},
                               {"file": "b", "class": "cat", "bbox": [[0.0, 0.0, 0.2, 0.2]]},
                               {"file": "c", "class": "cow", "bbox": [[0.2, 0.2, 0.9, 0.9]]}]))
    lst = tmp_path / "test.csv"
    lst.write_text("a\nb\n")
    out = tmp_path / "floors.json"
    assert R.main(["--vggss", str(ann), "--list", f"VGG-SS={lst}", "--n-bootstrap", "10", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    s = res["sets"]["VGG-SS"]
    assert s["items"] == 2 and len(s["floors"]) == 2 * len(R.PROTOCOLS)
    assert any(p["method"] == "EZ-VSL" for p in s["paper"])
    assert "git_commit" in res
    text = capsys.readouterr().out
    assert "== VGG-SS (n = 2)" in text and "EZ-VSL" in text


def test_main_refuses_a_malformed_list_argument(tmp_path):
    with pytest.raises(SystemExit):
        R.main(["--vggss", str(tmp_path / "v.json"), "--list", "no-equals-sign"])


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the peers' metadata (../shared/reference_data) is absent")
def test_reference_layout_is_found_and_the_centre_prior_beats_random_on_vggss():
    ann, lists = R.find_reference(REFERENCE)
    assert ann.name == "vggss.json" and "VGG-SS" in lists
    from avsl_core.data.adapters import vggss
    items, _ = vggss(ann, None, test_list=lists["Open set unheard 110 (LVS split)"], check_files=False)
    rows = {(r["protocol"], r["map"]): r for r in R.score_floors(items[:600], n_bootstrap=0)}
    assert rows[("official", "centre")]["pointing"] > rows[("official", "random")]["pointing"] + 0.2
    assert rows[("official", "centre")]["ciou@0.5"] > rows[("official", "random")]["ciou@0.5"] + 0.2
