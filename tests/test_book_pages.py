"""avsl_core.book_pages on a tiny fake long table and fake results files (no run needed)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from avsl_core import book_pages as bp
from avsl_core.errors import DataError

COLS = ["test_set", "model", "family", "metric", "value", "lo", "hi"]


def long_table(rows):
    return pd.DataFrame(rows, columns=COLS)


@pytest.fixture
def res():
    """ours clearly above ezvsl in R@1, overlapping in cIoU; a floor without retrieval."""
    return long_table([
        ("test_seen", "ours", "retrieval_audio_to_image", "instance_R@1", 0.40, 0.35, 0.45),
        ("test_seen", "ezvsl", "retrieval_audio_to_image", "instance_R@1", 0.10, 0.05, 0.15),
        ("test_seen", "ours", "localization", "ciou@0.5", 0.30, 0.20, 0.40),
        ("test_seen", "ezvsl", "localization", "ciou@0.5", 0.25, 0.15, 0.35),
        ("test_seen", "floor_centre", "localization", "ciou@0.5", 0.50, 0.45, 0.55),
    ])


def write_train(tmp_path, payload):
    d = tmp_path / "results"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text(json.dumps(payload))
    return tmp_path


def test_catalogue_layout_lists_trained_and_full_only(tmp_path):
    run = write_train(tmp_path, {"profile": "smoke", "seed": 0, "checkpoints": {"ours": "x"},
                                 "catalogue": {"ours": {"method": "ours", "train_set": "train", "tables": [1]}},
                                 "full_only": {"lvs": {"method": "lvs", "train_set": "train",
                                                       "command": "make book PROFILE=full"}}})
    cat = bp.load_catalogue(run)
    assert list(cat.index) == ["ours", "lvs"]
    assert cat.attrs["layout"] == "catalogue"
    assert bp.trained_names(cat) == ["ours"]
    assert bp.missing_note(cat, "ours") is None
    assert bp.missing_note(cat, "lvs") == "full profile only: make book PROFILE=full"
    assert bp.missing_note(cat, "slavc") == "not in the smoke profile: make book PROFILE=full"


def test_old_train_json_falls_back_to_checkpoints(tmp_path):
    run = write_train(tmp_path, {"profile": "smoke", "checkpoints": {"ours": "a", "ezvsl": "b"},
                                 "runs": {"ezvsl": {"method": "ezvsl"}}})
    cat = bp.load_catalogue(run)
    assert list(cat.index) == ["ours", "ezvsl"]
    assert list(cat.method) == ["ours", "ezvsl"]
    assert cat.trained.all() and cat.attrs["layout"].startswith("checkpoints")


def test_catalogue_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(DataError, match="train.json: missing"):
        bp.load_catalogue(tmp_path)
    run = write_train(tmp_path, {"catalogue": {"ours": {"train_set": "train"}}})
    with pytest.raises(DataError, match=r"train.json field 'catalogue.ours': entry without a 'method'"):
        bp.load_catalogue(run)


def test_method_table_rows_floors_last_and_missing_runs_kept(tmp_path, res):
    run = write_train(tmp_path, {"profile": "smoke", "catalogue": {"ours": {"method": "ours"},
                                                                    "ezvsl": {"method": "ezvsl"}},
                                 "full_only": {"lvs": {"method": "lvs"}}})
    cat = bp.load_catalogue(run)
    t = bp.method_table(res, ["test_seen"], [("cIoU", "localization", "ciou@0.5"),
                                             ("R@1", "retrieval_audio_to_image", "instance_R@1")],
                        cat, names=["ours", "lvs", "ezvsl"])
    assert list(t.index) == ["Ours", "LVS", "EZ-VSL", "centre prior"]
    assert t.loc["Ours", ("seen-asset", "cIoU")] == "30.0 [20.0, 40.0]"
    assert t.loc["LVS", ("seen-asset", "R@1")].startswith("full profile only")
    assert t.loc["centre prior", ("seen-asset", "R@1")] == "–"       # floors have no embeddings
    raw = bp.method_table(res, ["test_seen"], [("R@1", "retrieval_audio_to_image", "instance_R@1")], cat,
                          names=["ours"], floors=False, pretty=False)
    assert list(raw.index) == ["ours"]


def test_beside_paper_matches_rows_by_method():
    paper = pd.DataFrame({"test_set": ["VGG-SS"] * 3, "group": [""] * 3,
                          "method": ["LVS", "SSL-TIE", "Ours (NN w/ supervised pretrained encoders)"],
                          "pretrained_vision": ["no"] * 3, "metric": ["A2I R@1"] * 3,
                          "value": [3.87, 10.29, 16.47], "note": [np.nan] * 3})
    ours = pd.DataFrame({("seen-asset", "R@1"): {"ours": "40.0", "ezvsl": "10.0"}})
    t = bp.beside_paper(paper, ours)
    assert list(t.index) == ["LVS", "SSL-TIE", "Ours (NN w/ supervised pretrained encoders)", "EZ-VSL"]
    assert t.loc["Ours (NN w/ supervised pretrained encoders)", ("seen-asset", "R@1")] == "40.0"
    assert t.loc["LVS", ("paper: VGG-SS", "A2I R@1")] == "3.87"
    assert t.loc["SSL-TIE", ("seen-asset", "R@1")] == "–"
    assert t.loc["EZ-VSL", ("paper: VGG-SS", "A2I R@1")] == "–"


def test_combine_verdicts_rule():
    assert bp.combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert bp.combine_verdicts(["reproduced", "inconclusive"]) == "inconclusive"
    assert bp.combine_verdicts(["inconclusive", "not reproduced"]) == "not reproduced"
    assert bp.combine_verdicts(["inconclusive (nothing to compare with)"]) == "inconclusive"
    assert bp.combine_verdicts([]) == "inconclusive"


def test_verdict_grid(res):
    g = bp.verdict_grid(res, ["test_seen"], [("R@1", "retrieval_audio_to_image", "instance_R@1"),
                                             ("cIoU", "localization", "ciou@0.5")], others=["ezvsl"])
    assert g.loc["R@1", "seen-asset"] == "reproduced"
    assert g.loc["cIoU", "seen-asset"] == "inconclusive"


def test_correlation_exact_permutation_and_degenerate_cases():
    x = np.arange(5.0)
    d = bp.correlation(x, x ** 2, "spearman", n_boot=200)
    assert d["r"] == pytest.approx(1.0)
    assert d["p"] == pytest.approx(2 / math.factorial(5))          # only the two monotone orderings
    assert d["lo"] - 1e-9 <= d["r"] <= d["hi"] + 1e-9
    assert np.isnan(bp.correlation([1, 2], [3, 4])["r"])             # fewer than 3 points
    assert np.isnan(bp.correlation([1, 2, 3], [5, 5, 5])["r"])       # constant
    c = bp.correlation(np.arange(6.0), np.arange(6.0), clusters=[0, 0, 1, 1, 2, 2], n_boot=100)
    assert np.isnan(c["p"]) and c["n_clusters"] == 3
    with pytest.raises(ValueError, match="kind"):
        bp.correlation(x, x, "kendall")


@pytest.mark.parametrize("kind", ["spearman", "pearson"])
def test_weighted_bootstrap_equals_repeating_points(kind):
    rng = np.random.default_rng(0)
    x, y = rng.random(7), rng.random(7)
    x[2] = x[3]                                                      # a tie
    w = rng.integers(0, 3, (20, 7))
    fast = bp._weighted_r(x, y, w, kind)
    slow = np.array([bp._r(np.repeat(x, wi), np.repeat(y, wi), kind) for wi in w])
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_discordance_rule():
    loc = pd.DataFrame({"value": [0.5, 0.2], "lo": [0.45, 0.15], "hi": [0.55, 0.25]}, index=["a", "b"])
    better_ret = pd.DataFrame({"value": [0.5, 0.2], "lo": [0.45, 0.15], "hi": [0.55, 0.25]}, index=["a", "b"])
    v, pairs = bp.discordance(loc, better_ret)
    assert v == "not reproduced" and list(pairs.retrieval) == ["concordant"]
    v, _ = bp.discordance(loc, better_ret.rename(index={"a": "b", "b": "a"}))
    assert v == "reproduced"
    overlap = better_ret.assign(lo=0.0, hi=1.0)
    assert bp.discordance(loc, overlap)[0] == "inconclusive"
    assert bp.discordance(loc.assign(lo=0.0, hi=1.0), better_ret)[0] == "inconclusive"   # nothing resolved


def test_seed_groups_and_spread():
    assert bp.seed_groups(["ours", "ours_seed1", "ours_seed2", "ezvsl"]) == \
        {"ours": {0: "ours", 1: "ours_seed1", 2: "ours_seed2"}}
    assert bp.seed_groups(["ours", "ezvsl"]) == {}
    cat = pd.DataFrame({"replicate_of": [None, "ours"], "seed": [0, 7]}, index=["ours", "ours_rep"])
    assert bp.seed_groups(cat) == {"ours": {0: "ours", 7: "ours_rep"}}
    res = long_table([("test_seen", n, "pointing", "accuracy", v, np.nan, np.nan)
                      for n, v in (("ours", 0.2), ("ours_seed1", 0.4), ("ours_seed2", 0.6))])
    s = bp.seed_spread(res, bp.seed_groups(["ours", "ours_seed1", "ours_seed2"]),
                       [("pointing", "pointing", "accuracy")], ["test_seen"])
    row = s.loc[("Ours", "seen-asset", "pointing")]
    assert row["seeds"] == 3 and row["mean"] == pytest.approx(40.0) and row["sd"] == pytest.approx(20.0)


def test_negatives_counts_from_results(tmp_path):
    r = tmp_path / "results"
    (r / "eval" / "test_seen").mkdir(parents=True)
    (r / "data_summary.json").write_text(json.dumps({"sets": {"test_seen": {"kinds": {"offscreen": 3, "silent": 2}}}}))
    (r / "eval" / "test_seen" / "ours.json").write_text(json.dumps(
        {"metrics": {"extended": {"n_negative": 5, "n_positive": 20}}}))
    t = bp.negatives(tmp_path, ["test_seen", "test_heldout"])
    assert t.loc["seen-asset"].tolist() == [3, 2, 5, 20]
    assert t.loc["held-out-file"].isna().all()


def test_fmt_r():
    assert bp.fmt_r({"r": 0.5, "lo": 0.1, "hi": 0.9}) == "0.50 [0.10, 0.90]"
    assert bp.fmt_r({"r": np.nan, "lo": np.nan, "hi": np.nan}) == "undefined"


def test_first_eval_and_read_eval(tmp_path):
    d = tmp_path / "results" / "eval" / "test_seen"
    d.mkdir(parents=True)
    (d / "ezvsl.json").write_text(json.dumps({"model": "ezvsl", "metrics": {}}))
    assert bp.first_eval(tmp_path, "test_seen", ["ours", "ezvsl"])["model"] == "ezvsl"
    assert bp.first_eval(tmp_path, "test_heldout", ["ours"]) == {}
    assert bp.read_eval(tmp_path, "test_seen", "ezvsl")["model"] == "ezvsl"
    with pytest.raises(DataError, match="ours.json: missing"):
        bp.read_eval(tmp_path, "test_seen", "ours")


def test_glued_strings_have_no_quotes():
    assert repr(bp.Prose("reproduced")) == "reproduced"
    assert bp.Prose("x") == "x"


def test_training_received_states_steps_and_budget_stops(tmp_path):
    summ = {"ours": {"steps": 910, "elapsed_s": 900.4, "stop_reason": "time_budget"},
            "ezvsl": {"steps": 1200, "elapsed_s": 400.0, "stop_reason": "max_steps"},
            "single_ours": {"steps": 300, "elapsed_s": 200.0, "stop_reason": "max_steps"}}
    run = write_train(tmp_path, {"summaries": summ})
    table, sentence = bp.training_received(run, ["ours", "ezvsl", "lvs"])      # lvs not trained: no row
    assert list(table.index) == ["Ours", "EZ-VSL"]
    assert table.loc["Ours", "steps"] == 910 and table.loc["Ours", "wall (min)"] == 15.0
    assert sentence == ("the runs did 910 to 1200 optimizer steps; stopped by the time budget before the "
                        "others: Ours (910 steps)")
    same = write_train(tmp_path / "b", {"summaries": {"ours": summ["ezvsl"], "ezvsl": summ["ezvsl"]}})
    assert bp.training_received(same, ["ours", "ezvsl"])[1] == "every run did the same 1200 optimizer steps"
    assert bp.training_received(same, ["lvs"])[1] == "no run of this page was trained"
    bad = write_train(tmp_path / "c", {"summaries": {"ours": {"steps": 3}}})
    with pytest.raises(DataError, match="elapsed_s"):
        bp.training_received(bad, ["ours"])
    with pytest.raises(DataError, match="missing"):
        bp.training_received(tmp_path / "none", ["ours"])
