"""The run catalogue and the row helpers of the book pages beyond Table 1, on tiny fake results."""
import json

import numpy as np
import pytest

from avsl_core import book, book_runs as br
from avsl_core.errors import DataError

SW_ALL = {"semantic": True, "multi_view": True, "feature_alignment": True}


def write_eval(root, test_set, model, auc, half=0.05):
    """A results file with one metric family: localization auc (and ciou@0.5 = auc)."""
    d = root / "results" / "eval" / test_set
    d.mkdir(parents=True, exist_ok=True)
    iv = [auc - half, auc + half]
    (d / f"{model}.json").write_text(json.dumps({
        "model": model, "test_set": test_set,
        "metrics": {"localization": {"auc": auc, "ciou@0.5": auc, "n": 10}},
        "intervals": {"localization": {"auc": iv, "ciou@0.5": iv}}}))


def write_train(root, doc):
    (root / "results").mkdir(parents=True, exist_ok=True)
    (root / "results" / "train.json").write_text(json.dumps(doc))


@pytest.fixture
def runs(tmp_path):
    cat = {"ours": {"method": "ours", "train_set": "train", "tables": [1, 8, 9], "k": 3,
                    "switches": SW_ALL},
           "abl_H": {"method": "ours", "train_set": "train", "tables": [8], "k": None,
                     "switches": {s: False for s in br.SWITCHES}},
           "ezvsl": {"method": "ezvsl", "train_set": "train", "tables": [1], "k": None, "switches": None}}
    full = {"abl_B": {"method": "ours", "train_set": "train", "tables": [8], "k": None,
                      "switches": {**SW_ALL, "feature_alignment": False},
                      "command": "make book PROFILE=full"}}
    write_train(tmp_path, {"profile": "smoke", "runs": {n: {} for n in cat}, "catalogue": cat,
                           "full_only": full})
    write_eval(tmp_path, "test_seen", "ours", 0.60)
    write_eval(tmp_path, "test_seen", "abl_H", 0.30)
    write_eval(tmp_path, "test_seen", "ezvsl", 0.58)
    write_eval(tmp_path, "test_seen", "floor_centre", 0.40)
    write_eval(tmp_path, "test_unheard_split1", "ours", 0.50)
    return tmp_path


def test_catalogue_status_and_notes(runs):
    cat = br.load_catalogue(runs)
    assert not cat.legacy
    assert cat.status("ours") == "run" and cat.note("ours") == ""
    assert cat.status("abl_B") == "full_only" and cat.note("abl_B") == br.FULL_ONLY
    assert cat.status("abl_C") == "absent" and cat.note("abl_C") == br.FULL_ONLY
    assert cat.names(method="ours") == ["ours", "abl_H"]
    assert cat.names(train_set="single_train") == []


def test_legacy_train_json_without_catalogue(tmp_path):
    write_train(tmp_path, {"profile": "smoke", "runs": {"ours": {"method": "ours"}, "ezvsl": {},
                                                        "single_ours": {"method": "ours",
                                                                        "train_set": "single_train"}}})
    cat = br.load_catalogue(tmp_path)
    assert cat.legacy and cat.names() == ["ours", "ezvsl", "single_ours"]
    assert cat.names(train_set="single_train") == ["single_ours"]
    assert cat.entries["ezvsl"] == {"method": "ezvsl", "train_set": "train", "tables": [], "k": None,
                                    "switches": None}
    assert cat.status("split2_ours") == "absent"


@pytest.mark.parametrize("entry, field", [
    ({"method": "nope", "train_set": "train"}, "catalogue.x.method"),
    ({"method": "ours", "train_set": "test"}, "catalogue.x.train_set"),
    ({"method": "ours", "train_set": "train", "k": 0}, "catalogue.x.k"),
    ({"method": "ours", "train_set": "train", "switches": {"semantic": True}}, "catalogue.x.switches"),
])
def test_bad_catalogue_names_file_and_field(tmp_path, entry, field):
    write_train(tmp_path, {"catalogue": {"x": entry}})
    with pytest.raises(DataError, match=f"train.json field '{field}'"):
        br.load_catalogue(tmp_path)


def test_missing_train_json_names_the_file(tmp_path):
    with pytest.raises(DataError, match="train.json: missing"):
        br.load_catalogue(tmp_path)


def test_results_table_keeps_rows_not_run(runs):
    res, cat = book.load_results(runs), br.load_catalogue(runs)
    rows = {r: n for r, (n, _) in br.ABLATIONS.items() if r in "ABH"}
    t = br.results_table(res, cat, rows, ["test_seen"], [("AUC", "localization", "auc")], floors=True)
    assert list(t.index) == ["A", "B", "H", "centre prior"]
    assert t.loc["A", ("seen-asset", "AUC")] == "60.0 [55.0, 65.0]"
    assert t.loc["B", ("seen-asset", "AUC")] == "–" and t.loc["B", ("", "note")] == br.FULL_ONLY
    assert t.loc["centre prior", ("", "note")] == ""
    t2 = br.results_table(res, cat, {"A": "ours"}, ["test_seen", "test_heldout"],
                          [("AUC", "localization", "auc")])
    assert t2.loc["A", ("", "note")] == f"{br.NOT_EVALUATED} held-out-file"


def test_check_marks_and_ablation_switches(runs):
    assert br.check_marks((True, False, True)) == {"semantic": "✓", "multi-view": "✗",
                                                   "feature alignment": "✓"}
    assert br.check_marks(SW_ALL) == {"semantic": "✓", "multi-view": "✓", "feature alignment": "✓"}
    assert set(br.check_marks(None).values()) == {"?"}
    cat = br.load_catalogue(runs)
    assert br.ablation_switches(cat, "B") == (True, True, False)
    doc = json.loads((runs / "results" / "train.json").read_text())
    doc["catalogue"]["abl_H"]["switches"]["semantic"] = True
    write_train(runs, doc)
    with pytest.raises(DataError, match="abl_H"):
        br.ablation_switches(br.load_catalogue(runs), "H")


def test_gap_compare_and_verdicts(runs):
    res, cat = book.load_results(runs), br.load_catalogue(runs)
    d, lo, hi = br.gap(res, "ours", "test_seen", "test_unheard_split1", "localization", "auc")
    assert d == pytest.approx(0.10) and lo == pytest.approx(0.10 - np.hypot(0.05, 0.05))
    assert br.sign_of(lo, hi) == "positive" and br.sign_of(-0.1, 0.1) == "unclear"
    assert br.fmt_diff(d, lo, hi) == "+10.0 [+2.9, +17.1]"
    assert br.compare(res, "test_seen", "localization", "auc", "ours", "abl_H") == "higher"
    assert br.compare(res, "test_seen", "localization", "auc", "ours", "ezvsl") == "overlapping"
    assert br.compare(res, "test_seen", "localization", "auc", "ours", "abl_B") == "missing"
    assert br.verdict_among(res, cat, "test_seen", "localization", "auc", "ours", ["abl_H"]) == "reproduced"
    assert br.verdict_among(res, cat, "test_seen", "localization", "auc", "abl_H",
                            ["ours"]) == "not reproduced"
    assert br.verdict_among(res, cat, "test_seen", "localization", "auc", "abl_B",
                            ["ours"]).startswith("inconclusive (abl_B not trained")
    assert br.verdict_among(res, cat, "test_seen", "localization", "auc", "ours",
                            ["abl_B"]) == f"inconclusive (abl_B not trained in this profile; {br.FULL_ONLY})"
    assert br.verdict_among(res, cat, "test_heldout", "localization", "auc", "ours",
                            ["ezvsl"]) == "inconclusive (ours has no results on test_heldout)"
    write_eval(runs, "test_heldout", "ours", 0.5)
    assert br.verdict_among(book.load_results(runs), cat, "test_heldout", "localization", "auc", "ours",
                            ["ezvsl"]) == "inconclusive (none of ezvsl has results on test_heldout)"
    assert br.combine(["reproduced", "reproduced"]) == "reproduced"
    assert br.combine(["reproduced", "not reproduced"]) == "not reproduced"
    assert br.combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert br.combine([]) == "inconclusive"


def test_paper_rows_and_values():
    t8 = br.paper_rows(8, r"ablation (\w)")
    assert list(t8.index) == list("ABCDEFGH") and set(t8.columns) == {"cIoU", "AUC"}
    t9 = br.paper_rows(9, r"k=(\d+)")
    assert [int(k) for k in t9.index] == list(br.K_RUNS)
    p2 = book.paper_table(2)
    assert br.paper_value(p2, "EZ-VSL", "cIoU") == pytest.approx(71.89)
    assert br.paper_value(p2, "Ours", "cIoU") == pytest.approx(85.20)   # first "Ours (...)" row
    assert np.isnan(br.paper_value(p2, "SLAVC", "cIoU"))
    assert br.fmt_paper(np.nan) == "–"


def test_k_table_and_train_size(runs):
    (runs / "results" / "data_summary.json").write_text(json.dumps({"sets": {"train": {"n_items": 60}}}))
    cat = br.load_catalogue(runs)
    t = br.k_table(cat, br.train_size(runs))
    assert t.loc[1000, "k used here"] == 3 and t.loc[1000, "k / N here"] == "5.000%"
    assert t.loc[10, "note"] == br.FULL_ONLY and t.loc[10, "k used here"] == "–"
    assert br.train_size(runs, "single_train") is None


def test_paper_columns_go_before_the_note(runs):
    res, cat = book.load_results(runs), br.load_catalogue(runs)
    t = br.results_table(res, cat, {"Ours": "ours", "SLAVC": "slavc"}, ["test_seen"],
                         [("AUC", "localization", "auc")], floors=True)
    p2 = book.paper_table(2)
    t = br.add_columns(t, "paper", {"cIoU": br.paper_column(p2, t.index, "cIoU")})
    assert t.columns[-1] == ("", "note") and t.columns[-2] == ("paper", "cIoU")
    assert list(t[("paper", "cIoU")]) == ["85.20", "–", ""]
