"""Helpers of the table pages beyond Table 1 (Tables 5, 6, 7 and the correlation page).

Like `avsl_core.book`, nothing here computes a metric from maps: it reads results files
(`results/train.json`, `results/data_summary.json`, `results/eval/<set>/<model>.json`) and the
long table of `book.load_results`, and turns them into the pages' tables, correlations and verdicts.

* `load_catalogue`: which runs exist in this profile, with their method and training set (the
  `catalogue` of train.json; an older train.json without one falls back to its checkpoints, method =
  the run's `method` field or its name), plus the runs only the full profile trains.
* `method_table`: rows = runs (floors last), columns = (regime, label), "value [lo, hi]" cells; a run
  that this profile did not train is a row saying so, never dropped.
* `beside_paper`: the paper's numbers and ours in one table, rows matched by method;
  `real_beside_paper`: the same for a data root's `real_<run>` models on its real test sets.
* `combine_verdicts`, `verdict_grid`: one explicit rule for pages with several cells per claim.
* `correlation`, `discordance`: the localization-versus-retrieval analysis across trained models.
* `seed_groups`, `seed_spread`: runs named `<name>_seed<N>`.
* `negatives`, `read_eval`, `first_eval`: fields the long table leaves out (counts, protocol);
  `training_received`: the steps each run did (a time budget can stop a slow run early).
* `glue`: myst-nb glue with strings shown bare (`Prose`), so a verdict reads without quotes.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from avsl_core import book
from avsl_core.errors import DataError

MAIN_METHODS = ("ours", "attention10k", "lvs", "ezvsl", "slavc")
METHOD_NAMES = {"ours": "Ours", "attention10k": "Attention10k", "lvs": "LVS", "ezvsl": "EZ-VSL",
                "slavc": "SLAVC"}
FULL_COMMAND = "make book PROFILE=full"
# The paper's method labels (paper_tables.csv) -> our run names. "Ours" is the supervised-embedder
# row: the training page mines conceptual positives with the supervised analogues by default.
PAPER_METHOD = {"Attention10k": "attention10k", "LVS": "lvs", "EZ-VSL": "ezvsl", "EZ-VSL (w/o OGL)": "ezvsl",
                "SLAVC": "slavc", "SLAVC (w/o OGL)": "slavc",
                "Ours (NN w/ supervised pretrained encoders)": "ours"}
_SEED = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")


# ----------------------------------------------------------------------------- which runs exist
def load_catalogue(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run name: method, train_set, tables, k, seed, replicate_of, trained (bool), command.

    Rows come from train.json's `catalogue` (trained here) and `full_only` (trained by the full
    profile only). A train.json without a catalogue (older layout) gives its `checkpoints` keys,
    method = `runs[name].method` or the name itself. `attrs["layout"]` says which was read."""
    path = Path(runs_dir) / "results" / "train.json"
    if not path.is_file():
        raise DataError(path, "missing: run the training page (20_train) first")
    try:
        tr = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    rows = []
    if "catalogue" in tr:
        for block, trained in (("catalogue", True), ("full_only", False)):
            entries = tr.get(block) or {}
            if not isinstance(entries, dict):
                raise DataError(path, f"expected a mapping name -> entry, got {type(entries).__name__}",
                                field=block)
            for name, e in entries.items():
                if not isinstance(e, dict) or not e.get("method"):
                    raise DataError(path, "entry without a 'method'", field=f"{block}.{name}")
                rows.append(dict(name=name, method=e["method"], train_set=e.get("train_set"),
                                 tables=list(e.get("tables") or []), k=e.get("k"), seed=e.get("seed"),
                                 replicate_of=e.get("replicate_of"), trained=trained,
                                 command=None if trained else e.get("command", FULL_COMMAND)))
        layout = "catalogue"
    else:
        ckpts = tr.get("checkpoints")
        if not isinstance(ckpts, dict):
            raise DataError(path, "neither a 'catalogue' nor a 'checkpoints' mapping", field="checkpoints")
        runs = tr.get("runs") or {}
        for name in ckpts:
            rows.append(dict(name=name, method=(runs.get(name) or {}).get("method", name), train_set=None,
                             tables=[], k=None, seed=tr.get("seed"), replicate_of=None, trained=True,
                             command=None))
        layout = "checkpoints (no catalogue: older train.json)"
    cat = pd.DataFrame(rows, columns=["name", "method", "train_set", "tables", "k", "seed", "replicate_of",
                                      "trained", "command"], dtype=object)
    cat = cat.set_index("name")
    cat.attrs.update(layout=layout, profile=tr.get("profile"), seed=tr.get("seed"))
    return cat


def trained_names(cat: pd.DataFrame) -> list[str]:
    """Run names this profile trained, in catalogue order."""
    return [n for n in cat.index if cat.loc[n, "trained"]]


def missing_note(cat: pd.DataFrame, name: str) -> str | None:
    """None when `name` was trained here; else why its row is empty and how to get it."""
    if name in cat.index:
        if cat.loc[name, "trained"]:
            return None
        return f"full profile only: {cat.loc[name, 'command'] or FULL_COMMAND}"
    return f"not in the {cat.attrs.get('profile') or 'this'} profile: {FULL_COMMAND}"


def display_name(name: str) -> str:
    """'EZ-VSL' for ezvsl, 'centre prior' for floor_centre, the run name otherwise."""
    return METHOD_NAMES.get(name) or book.FLOOR_NAMES.get(name) or name


# ----------------------------------------------------------------------------- tables
def method_table(res: pd.DataFrame, test_sets, columns, cat: pd.DataFrame | None = None,
                 names=MAIN_METHODS, floors: bool = True, pretty: bool = True) -> pd.DataFrame:
    """Rows = `names` (then the floors), columns = (regime, label); cells 'value [lo, hi]' in %.

    `columns`: (label, family, metric) triples. A name with no result gets the `missing_note` in every
    cell (with `cat`); a model without a metric (a floor has no embeddings) gets '–'."""
    names = list(names) + ([f for f in book.FLOORS] if floors else [])
    out = {}
    for ts in test_sets:
        for label, fam, metric in columns:
            s = book.pick(res, ts, fam, metric)
            out[(book.REGIME_NAMES.get(ts, ts), label)] = {m: book.fmt(*s.loc[m]) for m in s.index if m in names}
    df = pd.DataFrame(out, index=pd.Index([], dtype=object), dtype=object) if not out else pd.DataFrame(out)
    have = set(res.model.unique())
    rows = []
    for n in names:
        if n in df.index:
            rows.append(df.loc[n].fillna("–").rename(n))
        elif n in book.FLOORS:
            continue                      # floors exist in every evaluated set; none here: nothing to say
        else:
            note = (missing_note(cat, n) if cat is not None else None) if n not in have else None
            rows.append(pd.Series(note or "– (no results for these measures and sets)", index=df.columns, name=n))
    table = pd.DataFrame(rows, columns=df.columns) if rows else pd.DataFrame(columns=df.columns)
    if pretty:
        table.index = [display_name(n) for n in table.index]
    return table


def beside_paper(paper: pd.DataFrame, ours: pd.DataFrame, mapping=None) -> pd.DataFrame:
    """The paper's rows (`book.paper_table`) and `ours` (a `method_table(..., pretty=False)`) in one
    table. Rows: the paper's methods in its order (its labels), then our runs it does not list;
    columns: ("paper: <test set>", metric) as printed, then ours. `mapping` adds paper label -> run
    name pairs to `PAPER_METHOD`; a paper method we did not train shows '–' in our columns."""
    mapping = {**PAPER_METHOD, **(mapping or {})}
    p = paper.pivot_table(index="method", columns=["test_set", "metric"], values="value", sort=False,
                          dropna=False)
    p = p.map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    p.columns = pd.MultiIndex.from_tuples([(f"paper: {t}", m) for t, m in p.columns])
    labels = list(p.index)
    keys = [mapping.get(m, m) for m in labels]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two paper methods map to the same run: {dict(zip(labels, keys))}")
    p.index = keys
    extra = [n for n in ours.index if n not in keys]
    joined = p.reindex(keys + extra).join(ours, how="left")
    shown = dict(zip(keys, labels))
    joined.index = [shown.get(k, display_name(k)) for k in joined.index]
    return joined.fillna("–")


def real_names(res: pd.DataFrame) -> list[str]:
    """The `real_<method>` runs with results (a data root's main runs, trained on its VGGSound
    manifest; avsl_core.real_data), in MAIN_METHODS order."""
    have = set(res.model.unique())
    return [f"real_{m}" for m in MAIN_METHODS if f"real_{m}" in have]


def real_beside_paper(res: pd.DataFrame, paper: pd.DataFrame, test_sets, columns,
                      floors: bool = True) -> pd.DataFrame | None:
    """The `real_<run>` models and the floors on those of the data root's `test_sets` that have results,
    beside the paper's rows (`beside_paper`, matched by method: `real_ours` on the paper's "Ours" row);
    None when no such set has results (a run without a data root)."""
    sets = [s for s in test_sets if (res.test_set == s).any()]
    if not sets:
        return None
    ours = method_table(res, sets, columns, names=real_names(res), floors=floors, pretty=False)
    ours.index = [n.removeprefix("real_") for n in ours.index]
    return beside_paper(paper, ours)


def negatives(runs_dir: str | Path, test_sets) -> pd.DataFrame:
    """Per test set: the off-screen and silent negatives rendered (`data_summary.json` kinds) and
    the negatives / positives the extended metrics scored (`metrics.extended` of the eval files)."""
    root = Path(runs_dir) / "results"
    ds_path = root / "data_summary.json"
    sets = json.loads(ds_path.read_text()).get("sets", {}) if ds_path.is_file() else {}
    rows = {}
    for ts in test_sets:
        kinds = (sets.get(ts) or {}).get("kinds") or {}
        scored = {}
        for p in sorted((root / "eval" / ts).glob("*.json")):
            ext = json.loads(p.read_text()).get("metrics", {}).get("extended")
            if isinstance(ext, dict):
                scored = ext
                break
        rows[book.REGIME_NAMES.get(ts, ts)] = {
            "off-screen (rendered)": kinds.get("offscreen", np.nan), "silent (rendered)": kinds.get("silent", np.nan),
            "negatives scored": scored.get("n_negative", np.nan), "positives scored": scored.get("n_positive", np.nan)}
    return pd.DataFrame(rows).T.astype("Int64")


# ----------------------------------------------------------------------------- verdicts
def combine_verdicts(verdicts) -> str:
    """One verdict from several cells: 'reproduced' when every cell is, 'not reproduced' when any
    cell is, 'inconclusive' otherwise (and when there are no cells)."""
    vs = [v.split(" (")[0] for v in verdicts]
    if vs and all(v == "reproduced" for v in vs):
        return "reproduced"
    if any(v == "not reproduced" for v in vs):
        return "not reproduced"
    return "inconclusive"


def verdict_grid(res: pd.DataFrame, test_sets, columns, ours: str = "ours", others=None) -> pd.DataFrame:
    """`book.verdict` for each (label, family, metric) of `columns` (rows) on each test set (columns)."""
    return pd.DataFrame({book.REGIME_NAMES.get(ts, ts): {label: book.verdict(res, ts, fam, metric, ours, others)
                                                         for label, fam, metric in columns}
                         for ts in test_sets})


# ----------------------------------------------------------------------------- correlation
def points(res: pd.DataFrame, x: tuple[str, str], y: tuple[str, str], models) -> pd.DataFrame:
    """One row per (model, test set) having both metrics: x, x_lo, x_hi, y, y_lo, y_hi."""
    def sel(fam, metric):
        s = res[(res.family == fam) & (res.metric == metric) & res.model.isin(list(models))]
        return s.set_index(["model", "test_set"])[["value", "lo", "hi"]]
    a, b = sel(*x), sel(*y)
    a.columns = ["x", "x_lo", "x_hi"]
    b.columns = ["y", "y_lo", "y_hi"]
    return a.join(b, how="inner").reset_index()


def _r(x, y, kind: str) -> float:
    """Spearman (Pearson of the ranks, ties averaged) or Pearson r; NaN below 3 points or when a
    variable is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan
    if kind == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(x, y)[0, 1])


def _weighted_ranks(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks of v [n] in the data set where point i appears w[b, i] times: [B, n]."""
    uniq, inv = np.unique(v, return_inverse=True)
    gw = w @ (inv[:, None] == np.arange(len(uniq))[None, :])          # [B, U] weight of each tied value
    before = np.cumsum(gw, axis=1) - gw                               # weight of the smaller values
    return (before + (gw + 1) / 2)[:, inv]


def _weighted_r(x: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str) -> np.ndarray:
    """r of each resample b, the data set holding point i w[b, i] times (a bootstrap resample as
    counts): [B]; NaN where a variable is constant within the resample."""
    w = w.astype(float)
    X, Y = ((_weighted_ranks(x, w), _weighted_ranks(y, w)) if kind == "spearman"
            else (np.broadcast_to(x, w.shape), np.broadcast_to(y, w.shape)))
    tot = w.sum(1, keepdims=True)
    dx, dy = X - (w * X).sum(1, keepdims=True) / tot, Y - (w * Y).sum(1, keepdims=True) / tot
    sxx, syy, sxy = (w * dx * dx).sum(1), (w * dy * dy).sum(1), (w * dx * dy).sum(1)
    ok = (sxx > 1e-12 * tot[:, 0] ** 2) & (syy > 1e-12 * tot[:, 0] ** 2)
    return np.where(ok, sxy / np.sqrt(np.where(ok, sxx * syy, 1.0)), np.nan)


def correlation(x, y, kind: str = "spearman", *, clusters=None, n_boot: int = 2000, n_perm: int = 10000,
                seed: int = 0, level: float = 0.95) -> dict:
    """Spearman or Pearson r of paired values, a percentile bootstrap interval and a permutation p.

    Bootstrap: resample the points with replacement or, with `clusters` (e.g. the model of each
    point, when a model contributes one point per test set), whole clusters; resamples whose r is
    undefined (constant values) are dropped, and the interval is NaN when more than half are.
    Permutation p (two-sided, |r_perm| >= |r|), for independent points only (NaN with `clusters`):
    exact over all orderings of y when n <= 7, else `n_perm` random orderings.
    Returns r, lo, hi, p, n (points), n_clusters, n_boot_valid."""
    if kind not in ("spearman", "pearson"):
        raise ValueError(f"kind must be 'spearman' or 'pearson', got {kind!r}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    cl = np.asarray(clusters)[keep] if clusters is not None else np.arange(len(x))
    codes = pd.factorize(cl)[0]                                        # [n] cluster index of each point
    n, n_cl = len(x), int(codes.max()) + 1 if len(x) else 0
    out = dict(r=_r(x, y, kind), lo=np.nan, hi=np.nan, p=np.nan, n=n, n_clusters=n_cl, n_boot_valid=0)
    if np.isnan(out["r"]):
        return out
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_cl, (n_boot, n_cl))                      # [B, clusters drawn]
    counts = np.zeros((n_boot, n_cl))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)          # [B, n_cl] times each is drawn
    boot = _weighted_r(x, y, counts[:, codes], kind)
    ok = boot[~np.isnan(boot)]
    out["n_boot_valid"] = int(ok.size)
    if ok.size >= n_boot / 2:
        a = (1 - level) / 2
        out["lo"], out["hi"] = (float(v) for v in np.quantile(ok, [a, 1 - a]))
    if clusters is None:
        rx, ry = (stats.rankdata(x), stats.rankdata(y)) if kind == "spearman" else (x, y)
        zx, zy = (rx - rx.mean()) / rx.std(), (ry - ry.mean()) / ry.std()
        perms = (np.array(list(itertools.permutations(range(n)))) if n <= 7
                 else np.argsort(rng.random((n_perm, n)), axis=1))                 # [P, n]
        rs = (zx[None, :] * zy[perms]).mean(1)
        out["p"] = float(np.mean(np.abs(rs) >= abs(out["r"]) - 1e-12))
    return out


def discordance(loc: pd.DataFrame, ret: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The paper's claim "better localization does not guarantee better retrieval" tested on pairs
    of models. `loc`, `ret`: value/lo/hi indexed by model (one test set). A pair is *resolved* in a
    measure when one model's interval lies entirely above the other's.

    Verdict: 'reproduced' when some pair is resolved in both measures in opposite directions (A
    localizes better, B retrieves better); 'not reproduced' when at least one pair is resolved in
    localization and every such pair is also resolved in retrieval, in the same direction; else
    'inconclusive'. Returns (verdict, the pairs resolved in localization)."""
    common = [m for m in loc.index if m in ret.index]
    rows = []
    for a, b in itertools.permutations(common, 2):
        if loc.loc[a, "lo"] > loc.loc[b, "hi"]:          # a localizes better than b, intervals apart
            if ret.loc[a, "lo"] > ret.loc[b, "hi"]:
                kind = "concordant"
            elif ret.loc[b, "lo"] > ret.loc[a, "hi"]:
                kind = "discordant"
            else:
                kind = "retrieval unresolved"
            rows.append(dict(better_localization=a, other=b, retrieval=kind))
    pairs = pd.DataFrame(rows, columns=["better_localization", "other", "retrieval"])
    return discordance_verdict(pairs), pairs


def discordance_verdict(pairs: pd.DataFrame) -> str:
    """The rule of `discordance` applied to a table of pairs (e.g. pooled over test sets)."""
    if (pairs.retrieval == "discordant").any():
        return "reproduced"
    if len(pairs) and (pairs.retrieval == "concordant").all():
        return "not reproduced"
    return "inconclusive"


# ----------------------------------------------------------------------------- seeds
def seed_groups(runs, base_seed: int = 0) -> dict[str, dict[int, str]]:
    """{base run: {seed: run name}} for the extra seeds of a run. `runs`: a catalogue
    (`load_catalogue`: `replicate_of` names the base run) or a list of names; `<base>_seed<N>` is
    seed N of `<base>` (else the catalogue's `seed`). The base run joins its group with its own seed (else
    `base_seed`, the profile's). Bases without extra seeds are left out."""
    if isinstance(runs, pd.DataFrame):
        info = {n: (r.get("replicate_of"), r.get("seed")) for n, r in runs.iterrows()}
    else:
        info = {n: (None, None) for n in runs}
    groups: dict[str, dict[int, str]] = {}
    for n, (base, seed) in info.items():
        m = _SEED.match(n)
        base = base if isinstance(base, str) and base else (m["base"] if m else None)
        if base:
            g = groups.setdefault(base, {})
            s = int(m["seed"]) if m else (int(seed) if seed is not None and not pd.isna(seed) else len(g) + 1)
            g[s] = n
    for base, g in groups.items():
        if base in info:
            own = info[base][1]
            g.setdefault(int(own) if own is not None and not pd.isna(own) else base_seed, base)
    return {b: dict(sorted(g.items())) for b, g in groups.items()}


def seed_spread(res: pd.DataFrame, groups: dict[str, dict[int, str]], columns, test_sets) -> pd.DataFrame:
    """Per (base run, test set, label): number of seeds, mean, sd (ddof 1), min and max, in %."""
    rows = []
    for base, g in groups.items():
        for ts in test_sets:
            for label, fam, metric in columns:
                s = book.pick(res, ts, fam, metric)
                v = np.array([s.loc[n, "value"] for n in g.values() if n in s.index], float) * 100
                if v.size == 0:
                    continue
                rows.append({"run": display_name(base), "regime": book.REGIME_NAMES.get(ts, ts), "measure": label,
                             "seeds": int(v.size), "mean": v.mean(), "sd": v.std(ddof=1) if v.size > 1 else np.nan,
                             "min": v.min(), "max": v.max()})
    cols = ["run", "regime", "measure", "seeds", "mean", "sd", "min", "max"]
    return pd.DataFrame(rows, columns=cols).set_index(["run", "regime", "measure"]).round(1)


# ----------------------------------------------------------------------------- training received
def training_received(runs_dir: str | Path, names) -> tuple[pd.DataFrame, str]:
    """Optimizer steps, wall time and stop reason of each run in `names` that was trained (train.json's
    `summaries`), and one sentence saying whether they all did the same number of steps.

    The profiles give every main method the same `max_steps`; `time_budget_min` can stop a slower run
    (ours: nine pairs per step) earlier, and a page comparing methods must say so."""
    path = Path(runs_dir) / "results" / "train.json"
    if not path.is_file():
        raise DataError(path, "missing: run the training page (20_train) first")
    summaries = json.loads(path.read_text()).get("summaries") or {}
    rows = {}
    for n in names:
        s = summaries.get(n)
        if s is None:
            continue
        for key in ("steps", "elapsed_s", "stop_reason"):
            if key not in s:
                raise DataError(path, f"summary without {key!r}", field=f"summaries.{n}")
        rows[display_name(n)] = {"steps": int(s["steps"]), "wall (min)": round(float(s["elapsed_s"]) / 60, 1),
                                 "stopped by": s["stop_reason"]}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["steps", "wall (min)", "stopped by"])
    if table.empty:
        return table, "no run of this page was trained"
    steps = table["steps"]
    if steps.nunique() == 1:
        return table, f"every run did the same {int(steps.iloc[0])} optimizer steps"
    capped = [f"{n} ({int(r.steps)} steps)" for n, r in table.iterrows() if r["stopped by"] == "time_budget"]
    most = int(steps.max())
    sentence = (f"the runs did {int(steps.min())} to {most} optimizer steps"
                + (f"; stopped by the time budget before the others: {', '.join(capped)}" if capped else ""))
    return table, sentence


# ----------------------------------------------------------------------------- small readers
def read_eval(runs_dir: str | Path, test_set: str, model: str) -> dict:
    """One evaluation results file (`results/eval/<set>/<model>.json`), for the fields the long table
    leaves out (protocol, thresholds, score mode)."""
    path = Path(runs_dir) / "results" / "eval" / test_set / f"{model}.json"
    if not path.is_file():
        raise DataError(path, "missing: run the evaluation page (30_evaluate) first")
    return json.loads(path.read_text())


def first_eval(runs_dir: str | Path, test_set: str, models) -> dict:
    """The results file of the first of `models` evaluated on `test_set` ({} when none was): where a
    page needs a set-level field (gallery size, frames, protocol) that every model's file repeats."""
    for m in models:
        path = Path(runs_dir) / "results" / "eval" / test_set / f"{m}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def fmt_r(d: dict) -> str:
    """'0.43 [0.10, 0.80]' for a `correlation` result (r, with its interval when defined)."""
    if d["r"] is None or np.isnan(d["r"]):
        return "undefined"
    if np.isnan(d["lo"]):
        return f"{d['r']:.2f} (no interval: too few distinct resamples)"
    return f"{d['r']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


class Prose(str):
    """A string whose plain-text form is itself, not its repr: glued into a sentence it reads
    `reproduced`, not `'reproduced'` (myst-nb renders a glued value's text/plain)."""

    def __repr__(self) -> str:
        return str.__str__(self)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str.__str__(self))


def glue(name: str, value) -> None:
    """`myst_nb.glue(name, value, display=False)`, strings as `Prose` (no quotes in the prose)."""
    from myst_nb import glue as _glue
    _glue(name, Prose(value) if isinstance(value, str) else value, display=False)
