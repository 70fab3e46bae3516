"""Results files -> the book's tables, verdicts and glue values. Nothing here computes a metric:
it reads `runs/<profile>/results/eval/<set>/<model>.json` (avsl_core.evaluate) and the paper's
numbers (`data_manifests/paper/paper_tables.csv`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from avsl_core import real_data
from avsl_core.config import repo_root

FLOORS = ("floor_centre", "floor_random", "floor_objectness")
FLOOR_NAMES = {"floor_centre": "centre prior", "floor_random": "random map",
               "floor_objectness": "visual-only objectness"}
REGIME_NAMES = {"test_seen": "seen-asset", "test_heldout": "held-out-file",
                "test_unheard_split1": "unheard (split 1)", "test_unheard_split2": "unheard (split 2)",
                "single_test": "single-object", "test_seen_split2": "seen-asset (split 2)",
                "test_heldout_split2": "held-out-file (split 2)",
                **{name: t["title"] for name, t in real_data.TEST_SETS.items()}}   # a data root's sets


def load_results(runs_dir: str | Path) -> pd.DataFrame:
    """Long table: test_set, model, family, metric, value, lo, hi (fractions in [0, 1])."""
    rows = []
    for p in sorted((Path(runs_dir) / "results" / "eval").glob("*/*.json")):
        r = json.loads(p.read_text())
        for fam, metrics in r["metrics"].items():
            if not isinstance(metrics, dict):
                continue
            for name, v in metrics.items():
                if not isinstance(v, (int, float)) or name.startswith("n"):
                    continue
                lo, hi = (r.get("intervals", {}).get(fam, {}).get(name) or (np.nan, np.nan))
                rows.append(dict(test_set=r["test_set"], model=r["model"], family=fam, metric=name,
                                 value=float(v), lo=float(lo), hi=float(hi)))
    return pd.DataFrame(rows, columns=["test_set", "model", "family", "metric", "value", "lo", "hi"])


def paper_table(table: int, path: str | Path | None = None) -> pd.DataFrame:
    """The paper's rows of one table (values as printed, in %)."""
    df = pd.read_csv(path or repo_root() / "data_manifests" / "paper" / "paper_tables.csv")
    return df[df["table"] == table].drop(columns=["table"]).reset_index(drop=True)


def fmt(value: float, lo: float = np.nan, hi: float = np.nan, scale: float = 100.0) -> str:
    """'41.2 [35.0, 47.1]' (percent, with the bootstrap interval when known)."""
    if value is None or np.isnan(value):
        return "–"
    if np.isnan(lo) or np.isnan(hi):
        return f"{value * scale:.1f}"
    return f"{value * scale:.1f} [{lo * scale:.1f}, {hi * scale:.1f}]"


def pick(res: pd.DataFrame, test_set: str, family: str, metric: str) -> pd.DataFrame:
    """One metric of one test set, one row per model (value, lo, hi)."""
    sel = res[(res.test_set == test_set) & (res.family == family) & (res.metric == metric)]
    return sel.set_index("model")[["value", "lo", "hi"]]


def side_by_side(res: pd.DataFrame, test_sets, columns, models=None) -> pd.DataFrame:
    """Rows = models (floors last), columns = (regime, label) formatted with intervals.
    `columns`: list of (label, family, metric)."""
    out = {}
    for ts in test_sets:
        for label, fam, metric in columns:
            s = pick(res, ts, fam, metric)
            out[(REGIME_NAMES.get(ts, ts), label)] = {m: fmt(*s.loc[m]) for m in s.index}
    df = pd.DataFrame(out)
    order = [m for m in (models or sorted(df.index)) if m in df.index and m not in FLOORS]
    order += [f for f in FLOORS if f in df.index]
    df = df.loc[order]
    df.index = [FLOOR_NAMES.get(m, m) for m in df.index]
    return df


def verdict(res: pd.DataFrame, test_set: str, family: str, metric: str, ours: str = "ours",
            others=None) -> str:
    """'reproduced' when our interval lies above every other model's, 'not reproduced' when some
    other model's interval lies above ours, else 'inconclusive' (overlapping intervals)."""
    s = pick(res, test_set, family, metric)
    if ours not in s.index:
        return "inconclusive (our model was not evaluated)"
    others = [m for m in (others or s.index) if m != ours and m in s.index]
    if not others:
        return "inconclusive (nothing to compare with)"
    lo, hi = s.loc[ours, "lo"], s.loc[ours, "hi"]
    if all(lo > s.loc[m, "hi"] for m in others):
        return "reproduced"
    if any(s.loc[m, "lo"] > hi for m in others):
        return "not reproduced"
    return "inconclusive"
