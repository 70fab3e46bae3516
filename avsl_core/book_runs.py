"""The runs a profile trained, as rows of the book's pages beyond Table 1 (Tables 2, 3/4, 8, 9).

`results/train.json` (the training notebook) names every run and, under "catalogue", what each one is:
method, training set, the paper tables it feeds, the k it used and its Table 8 switches; runs that a
profile skips are listed under "full_only". The pages take their rows from here so that a row the
profile did not train shows as "full profile only: make book PROFILE=full" and is never dropped.
A train.json written before the catalogue existed is read from its "runs" overrides: method and
train_set where given (else the run's name and "train"), no k and no switches recorded.

Nothing here computes a metric: values and bootstrap intervals come from `avsl_core.book.load_results`,
the paper's numbers from `avsl_core.book.paper_table`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avsl_core import book, real_data
from avsl_core.errors import DataError

METHODS = {"ours": "Ours", "attention10k": "Attention10k", "lvs": "LVS", "ezvsl": "EZ-VSL",
           "slavc": "SLAVC"}                               # run method -> the paper's name for it
TEST_SETS = {"train": ("test_seen", "test_heldout", "test_unheard_split1"),
             "single_train": ("single_test",),
             "train_split2": ("test_seen_split2", "test_heldout_split2", "test_unheard_split2"),
             real_data.TRAIN_SET: tuple(real_data.TEST_SETS)}   # a data root's real_<run> runs
SWITCHES = ("semantic", "multi_view", "feature_alignment")
SWITCH_NAMES = {"semantic": "semantic", "multi_view": "multi-view",
                "feature_alignment": "feature alignment"}
FULL_ONLY = "full profile only: make book PROFILE=full"
NOT_EVALUATED = "trained, but no results file for"
CHECK, CROSS, UNKNOWN = "✓", "✗", "?"

# Table 8: row -> (run name, (semantic, multi-view, feature alignment)); A is the full method.
ABLATIONS = {"A": ("ours", (True, True, True)), "B": ("abl_B", (True, True, False)),
             "C": ("abl_C", (True, False, True)), "D": ("abl_D", (True, False, False)),
             "E": ("abl_E", (False, True, True)), "F": ("abl_F", (False, True, False)),
             "G": ("abl_G", (False, False, True)), "H": ("abl_H", (False, False, False))}
# Table 9: the paper's k -> run name; the paper's k = 1000 row is the main run.
K_RUNS = {10: "k_10", 30: "k_30", 100: "k_100", 500: "k_500", 1000: "ours"}
PAPER_TRAIN_SIZE = 144_000


# ---------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Catalogue:
    """The runs of one profile: `entries` were trained, `full_only` were skipped by this profile."""
    path: Path
    entries: dict = field(default_factory=dict)     # name -> {method, train_set, tables, k, switches}
    full_only: dict = field(default_factory=dict)   # name -> same fields + "command"
    legacy: bool = False                            # train.json predates the catalogue

    def status(self, name: str) -> str:
        """'run' (trained here), 'full_only' (listed as skipped) or 'absent' (not known here)."""
        if name in self.entries:
            return "run"
        return "full_only" if name in self.full_only else "absent"

    def note(self, name: str) -> str:
        """'' for a trained run, else the line that tells a reader how to get the row."""
        if name in self.entries:
            return ""
        cmd = (self.full_only.get(name) or {}).get("command")
        return f"full profile only: {cmd}" if cmd else FULL_ONLY

    def names(self, method: str | None = None, train_set: str | None = None) -> list[str]:
        """Trained runs, optionally of one method and/or one training set, in catalogue order."""
        return [n for n, e in self.entries.items()
                if (method is None or e["method"] == method)
                and (train_set is None or e["train_set"] == train_set)]


def _check_entry(path: Path, key: str, name: str, e) -> dict:
    where = f"{key}.{name}"
    if not isinstance(e, dict):
        raise DataError(path, f"expected an object, got {type(e).__name__}", field=where)
    if e.get("method") not in METHODS:
        raise DataError(path, f"method {e.get('method')!r} is not one of {sorted(METHODS)}",
                        field=f"{where}.method")
    if e.get("train_set") not in TEST_SETS:
        raise DataError(path, f"train_set {e.get('train_set')!r} is not one of {sorted(TEST_SETS)}",
                        field=f"{where}.train_set")
    k = e.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise DataError(path, f"k must be null or an integer >= 1, got {k!r}", field=f"{where}.k")
    sw = e.get("switches")
    if sw is not None:
        if not isinstance(sw, dict) or set(sw) != set(SWITCHES) \
                or not all(isinstance(v, bool) for v in sw.values()):
            raise DataError(path, f"switches must be null or booleans for exactly {list(SWITCHES)}, "
                            f"got {sw!r}", field=f"{where}.switches")
    tables = e.get("tables", [])
    if not isinstance(tables, list):
        raise DataError(path, f"tables must be a list, got {tables!r}", field=f"{where}.tables")
    return {**e, "tables": tables, "k": k, "switches": sw}


def load_catalogue(runs_dir: str | Path) -> Catalogue:
    """Read `runs_dir/results/train.json`. Raises DataError (naming the file and field) when it is
    missing or malformed; falls back to the "runs" overrides for a file without a catalogue."""
    path = Path(runs_dir) / "results" / "train.json"
    if not path.exists():
        raise DataError(path, "missing: the training step writes it (run the 20_train notebook)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DataError(path, "expected a JSON object")
    if "catalogue" not in doc:
        runs = doc.get("runs") or doc.get("checkpoints") or {}
        if not isinstance(runs, dict):
            raise DataError(path, "expected an object of run names", field="runs")
        entries = {}
        for n, ov in runs.items():
            ov = ov if isinstance(ov, dict) else {}
            entries[n] = {"method": ov.get("method", n), "train_set": ov.get("train_set", "train"),
                          "tables": [], "k": None, "switches": None}
        return Catalogue(path, entries, {}, legacy=True)
    out = {}
    for key in ("catalogue", "full_only"):
        block = doc.get(key) or {}
        if not isinstance(block, dict):
            raise DataError(path, "expected an object of run names", field=key)
        out[key] = {n: _check_entry(path, key, n, e) for n, e in block.items()}
    return Catalogue(path, out["catalogue"], out["full_only"])


def train_size(runs_dir: str | Path, train_set: str = "train") -> int | None:
    """Items in a training set (results/data_summary.json; mining.json's n_train for "train")."""
    results = Path(runs_dir) / "results"
    summary = results / "data_summary.json"
    if summary.exists():
        n = json.loads(summary.read_text()).get("sets", {}).get(train_set, {}).get("n_items")
        if n:
            return int(n)
    mining = results / "mining.json"
    if train_set == "train" and mining.exists():
        n = json.loads(mining.read_text()).get("n_train")
        return int(n) if n else None
    return None


# ------------------------------------------------------------------------------------------- rows
def method_rows(prefix: str = "") -> dict[str, str]:
    """{paper name: run name} for every method, e.g. prefix "single_" -> {"Ours": "single_ours", ...}."""
    return {label: prefix + m for m, label in METHODS.items()}


def check_marks(switches) -> dict[str, str]:
    """{"semantic": "✓", "multi-view": "✗", ...}; "?" for each switch when none is recorded."""
    if switches is None:
        return {SWITCH_NAMES[s]: UNKNOWN for s in SWITCHES}
    if isinstance(switches, dict):
        switches = tuple(switches[s] for s in SWITCHES)
    if len(switches) != len(SWITCHES):
        raise ValueError(f"expected {len(SWITCHES)} switches {SWITCHES}, got {switches!r}")
    return {SWITCH_NAMES[s]: CHECK if on else CROSS for s, on in zip(SWITCHES, switches)}


def ablation_switches(cat: Catalogue, row: str) -> tuple[bool, bool, bool]:
    """The switches of a Table 8 row: the row's definition, checked against the catalogue's record.
    Raises DataError when the catalogue records a run with other switches than its row says."""
    name, designed = ABLATIONS[row]
    recorded = (cat.entries.get(name) or cat.full_only.get(name) or {}).get("switches")
    if recorded is not None and tuple(recorded[s] for s in SWITCHES) != designed:
        raise DataError(cat.path, f"run {name} (Table 8 row {row}) should have switches "
                        f"{dict(zip(SWITCHES, designed))}, the catalogue records {recorded}",
                        field=f"catalogue.{name}.switches")
    return designed


# ---------------------------------------------------------------------------------------- numbers
def interval(res: pd.DataFrame, test_set: str, family: str, metric: str, model: str):
    """(value, lo, hi) of one model's metric; NaNs when there is no such result."""
    s = book.pick(res, test_set, family, metric)
    if model not in s.index:
        return (np.nan, np.nan, np.nan)
    return tuple(float(x) for x in s.loc[model, ["value", "lo", "hi"]])


def results_table(res: pd.DataFrame, cat: Catalogue, rows: dict[str, str], test_sets, columns,
                  floors: bool = False) -> pd.DataFrame:
    """One row per (label -> run name), in order, columns ("", "run"), (regime, label) ... and
    ("", "note"). A run this profile did not train keeps its row, with the full-profile note;
    `floors` appends the centre / random / objectness floors of the first test set.
    `columns`: list of (label, family, metric), as for `book.side_by_side`."""
    rows = dict(rows)
    if floors:
        present = set(res.loc[res.test_set.isin(list(test_sets)), "model"])
        rows.update({book.FLOOR_NAMES[f]: f for f in book.FLOORS if f in present})
    table = {}
    for label, name in rows.items():
        cells = {("", "run"): name}
        missing = []
        for ts in test_sets:
            for col, fam, metric in columns:
                v = interval(res, ts, fam, metric, name)
                cells[(book.REGIME_NAMES.get(ts, ts), col)] = book.fmt(*v)
                if np.isnan(v[0]) and ts not in missing:
                    missing.append(ts)
        note = "" if name in book.FLOORS else cat.note(name)
        if not note and missing:
            note = f"{NOT_EVALUATED} {', '.join(book.REGIME_NAMES.get(t, t) for t in missing)}"
        cells[("", "note")] = note
        table[label] = cells
    df = pd.DataFrame.from_dict(table, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df


def gap(res: pd.DataFrame, model: str, heard: str, unheard: str, family: str, metric: str):
    """heard − unheard for one model, with an approximate 95 % interval.

    The two test sets hold different items, so their bootstrap errors are independent; the interval
    adds the two one-sided half-widths in quadrature (lower: heard's lower and unheard's upper side).
    """
    h, h_lo, h_hi = interval(res, heard, family, metric, model)
    u, u_lo, u_hi = interval(res, unheard, family, metric, model)
    d = h - u
    return (d, d - float(np.hypot(h - h_lo, u_hi - u)), d + float(np.hypot(h_hi - h, u - u_lo)))


def fmt_diff(value: float, lo: float = np.nan, hi: float = np.nan, scale: float = 100.0) -> str:
    """'+4.2 [-1.0, +9.3]' (percentage points, signed)."""
    if value is None or np.isnan(value):
        return "–"
    if np.isnan(lo) or np.isnan(hi):
        return f"{value * scale:+.1f}"
    return f"{value * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]"


def sign_of(lo: float, hi: float) -> str:
    """'positive' / 'negative' when an interval excludes 0, 'unclear' otherwise (or when unknown)."""
    if np.isnan(lo) or np.isnan(hi):
        return "unclear"
    return "positive" if lo > 0 else "negative" if hi < 0 else "unclear"


def compare(res: pd.DataFrame, test_set: str, family: str, metric: str, a: str, b: str) -> str:
    """'higher' / 'lower' when a's interval lies wholly above / below b's, 'overlapping' otherwise;
    'missing' when either has no result. The rule of `book.verdict`, for one pair."""
    _, a_lo, a_hi = interval(res, test_set, family, metric, a)
    _, b_lo, b_hi = interval(res, test_set, family, metric, b)
    if np.isnan([a_lo, a_hi, b_lo, b_hi]).any():
        return "missing"
    return "higher" if a_lo > b_hi else "lower" if a_hi < b_lo else "overlapping"


def verdict_among(res: pd.DataFrame, cat: Catalogue, test_set: str, family: str, metric: str,
                  ours: str, others) -> str:
    """`book.verdict` of `ours` against `others` only (the rows of one table), saying why it is
    inconclusive when `ours` was not trained or evaluated, or nothing else was."""
    if cat.status(ours) != "run":
        return f"inconclusive ({ours} not trained in this profile; {cat.note(ours)})"
    sub = res[res.model.isin([ours, *others])]
    v = book.verdict(sub, test_set, family, metric, ours=ours, others=list(others))
    if v.startswith("inconclusive (our model"):
        return f"inconclusive ({ours} has no results on {test_set})"
    if v.startswith("inconclusive (nothing"):
        if all(cat.status(o) != "run" for o in others):
            return f"inconclusive ({', '.join(others)} not trained in this profile; {FULL_ONLY})"
        return f"inconclusive (none of {', '.join(others)} has results on {test_set})"
    return v


def combine(verdicts) -> str:
    """One verdict for a claim that must hold in every part: 'reproduced' when every part is,
    'not reproduced' when any part is, else 'inconclusive'."""
    verdicts = list(verdicts)
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"


# ------------------------------------------------------------------------------------------ paper
def paper_rows(table: int, pattern: str, path: str | Path | None = None) -> pd.DataFrame:
    """The paper's table as rows keyed by the first group of `pattern` matched in its "group"
    column (e.g. r"ablation (\\w)" -> A..H, r"k=(\\d+)" -> 10..1000), one column per metric."""
    df = book.paper_table(table, path)
    key = df["group"].str.extract(pattern, expand=False)
    if key.isna().any():
        bad = df.loc[key.isna(), "group"].iloc[0]
        raise DataError(path or "paper_tables.csv", f"group {bad!r} does not match {pattern!r}",
                        field="group")
    return df.assign(key=key).pivot_table(index="key", columns="metric", values="value", sort=False)


def paper_value(paper: pd.DataFrame, method: str, metric: str, test_set: str | None = None,
                group: str = "w/o OGL") -> float:
    """The paper's number (in %) for a method, matched by name or by "name (...)" (the first such
    row, e.g. "Ours (NN w/ supervised pretrained encoders)"); NaN when the paper has none."""
    sel = paper[(paper.metric == metric) & (paper.group == group)]
    if test_set is not None:
        sel = sel[sel.test_set == test_set]
    exact = sel[sel.method == method]
    if exact.empty:
        exact = sel[sel.method.str.startswith(method + " (")]
    return float(exact["value"].iloc[0]) if len(exact) else np.nan


def fmt_paper(value: float) -> str:
    """The paper's number as printed (two decimals), '–' when it has none."""
    return "–" if value is None or np.isnan(value) else f"{value:.2f}"


def paper_column(paper: pd.DataFrame, labels, metric: str, **where) -> list[str]:
    """The paper's numbers for rows labelled by method name ('' for floors), e.g. beside
    `results_table(..., method_rows(...))`; `where`: test_set / group as in `paper_value`."""
    floors = set(book.FLOOR_NAMES.values())
    return ["" if lab in floors else fmt_paper(paper_value(paper, lab, metric, **where))
            for lab in labels]


def add_columns(df: pd.DataFrame, header: str, columns: dict) -> pd.DataFrame:
    """`df` with columns (header, name) for each name -> list of cells, placed before ("", "note")."""
    out = df.copy()
    for name, cells in columns.items():
        out[(header, name)] = list(cells)
    if ("", "note") in out.columns:
        out = out[[c for c in out.columns if c != ("", "note")] + [("", "note")]]
    return out


def k_table(cat: Catalogue, n_train: int | None) -> pd.DataFrame:
    """Table 9's rows: the paper's k and k/144K beside the run, the k it used here and k/N."""
    rows = []
    for k_paper, name in K_RUNS.items():
        k_used = (cat.entries.get(name) or cat.full_only.get(name) or {}).get("k")
        rows.append({"k (paper)": k_paper, "k / 144K (paper)": f"{k_paper / PAPER_TRAIN_SIZE:.3%}",
                     "run": name, "k used here": "–" if k_used is None else k_used,
                     "k / N here": "–" if k_used is None or not n_train else f"{k_used / n_train:.3%}",
                     "note": cat.note(name)})
    return pd.DataFrame(rows).set_index("k (paper)")
