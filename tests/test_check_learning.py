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
