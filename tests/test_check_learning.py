"""benchmarks/check_learning.py: the pointing breakdown by object size and object count (issue 3)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import check_learning as C  # noqa: E402

from avsl_core.data.manifest import ManifestItem  # noqa: E402


def _item(i, box, n_objects, kind="loc"):
    area = (box[2] - box[0]) * (box[3] - box[1])
    objs = [{"category": "dog", "box": list(box), "area": area}] + \
        [{"category": f"c{j}", "box": [0.0, 0.0, 0.05, 0.05], "area": 0.0025} for j in range(n_objects - 1)]
    return ManifestItem(id=f"it{i}", image=f"{i}.png", audio=f"{i}.wav", category="dog", boxes=(box,),
                        extra={"kind": kind, "n_objects": n_objects, "objects": objs, "sounding": 0})


def _peak(x, y, h=14):
    m = np.zeros((h, h), np.float32)
    m[int(y * h), int(x * h)] = 1.0
    return m


def test_breakdown_counts_hits_by_area_bin_and_object_count():
    small = (0.05, 0.05, 0.25, 0.25)          # area 0.04: "<12%"
    large = (0.1, 0.1, 0.9, 0.9)              # area 0.64: ">=46%"
    items = [_item(0, small, 1), _item(1, small, 2), _item(2, large, 2), _item(3, large, 3),
             _item(4, large, 2, kind="swap")]
    ids = [it.id for it in items]
    maps = {"m": np.stack([_peak(0.15, 0.15),    # inside the small box: hit
                           _peak(0.8, 0.8),      # outside the small box: miss
                           _peak(0.5, 0.5),      # inside the large box: hit
                           _peak(0.95, 0.95),    # outside the large box: miss
                           _peak(0.5, 0.5)])}    # a swap item: not counted
    bd = C.breakdown(items, ids, maps)["m"]
    assert bd["area <12%"] == [1, 2] and bd["area >=46%"] == [1, 2]
    assert "area 12-25%" not in bd
    assert bd["1 obj"] == [1, 1] and bd["2 obj"] == [1, 2] and bd["3 obj"] == [0, 1]
    assert list(bd) == ["area <12%", "area >=46%", "1 obj", "2 obj", "3 obj"]
    text = C.breakdown_table({"m": bd})
    assert "0.500 /  2" in text and text.splitlines()[1].split()[0] == "map"


def test_peak_places_splits_misses_into_other_object_and_background():
    sounding, other = (0.05, 0.05, 0.35, 0.35), (0.6, 0.6, 0.95, 0.95)

    def item(i):
        objs = [{"category": "dog", "box": list(sounding), "area": 0.09},
                {"category": "cat", "box": list(other), "area": 0.1225}]
        return ManifestItem(id=f"p{i}", image=f"{i}.png", audio=f"{i}.wav", category="dog", boxes=(sounding,),
                            extra={"kind": "loc", "n_objects": 2, "objects": objs, "sounding": 0})
    items = [item(i) for i in range(3)] + [_item(9, sounding, 1, kind="swap")]
    maps = {"m": np.stack([_peak(0.2, 0.2), _peak(0.8, 0.8), _peak(0.2, 0.8), _peak(0.8, 0.8)])}
    assert C.peak_places(items, [it.id for it in items], maps)["m"] == {
        "sounding object": 1, "another object": 1, "background": 1}


def test_probe_scores_tell_a_category_aware_audio_from_a_blind_vision():
    import torch
    cats = ["dog", "dog", "cat", "cat"]
    a = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.9]])   # audio groups by category
    v = torch.zeros(4, 2, 4, 4)
    v[:, 0, :2, :2] = 1.0                                                # top-left object: "dog"-like features
    v[:, 1, 2:, 2:] = 1.0                                                # bottom-right: "cat"-like
    tl, br = (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)
    right = C.probe_scores(v, a, cats, ["r0", "r1", "r2", "r3"], [tl, tl, br, br])
    assert right["audio_1nn"] == 1.0 and right["box_to_audio"] == 1.0 and right["chance"] == 0.5
    wrong = C.probe_scores(v, a, cats, ["r0", "r1", "r2", "r3"], [br, br, tl, None])
    assert wrong["box_to_audio"] == 0.0 and wrong["n_box"] == 3
    # clips of one recording never count as each other's neighbour: here only cross-category ones remain
    same = C.probe_scores(v, a, cats, ["x", "x", "y", "y"], [tl, tl, br, br])
    assert same["audio_1nn"] == 0.0 and same["n_audio"] == 4
