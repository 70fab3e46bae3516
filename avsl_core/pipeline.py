"""Run the book's notebooks with papermill, in dependency order, skipping steps whose inputs are unchanged.

`python -m avsl_core.pipeline --profile quick` executes every notebook of `STEPS` into
`runs/<profile>/NAME.ipynb` (the executed notebooks are the run records: parameters, timings,
outputs), copies them into `book/generated/` for the Jupyter Book build, and appends the wall time of
each step to `runs/<profile>/timings.json`.

A step is skipped when its key is unchanged: the hash of the notebook source, its parameters for
the profile, the package source (`avsl_core/**/*.py`) and the keys of the steps it depends on.

`--data-root DIR` (or `AVSL_DATA_ROOT`; `make book DATA_ROOT=DIR`) adds the real datasets named by
`DIR/datasets.yaml` (`avsl_core.real_data`, validated before any step runs): the steps of
`DATA_ROOT_STEPS` get a `data_root` parameter, their keys also hold `real_data.fingerprint` (the
resolved root and the sha256 of datasets.yaml and of every manifest it lists, so a changed manifest
reruns them and, through the dependency keys, every page), and the run goes to `runs/<profile>-real/`,
apart from the AVScenes-only run of the same profile.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from avsl_core.config import load_profile, repo_root
from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_text, git_commit


@dataclass(frozen=True)
class Step:
    name: str                     # notebook stem under notebooks/
    deps: tuple[str, ...] = ()    # steps whose outputs it reads


# Dependency order; every step's deps come before it.
STEPS: tuple[Step, ...] = (
    Step("00_prepare_data"),
    Step("15_mine_positives", deps=("00_prepare_data",)),
    Step("20_train", deps=("00_prepare_data", "15_mine_positives")),
    Step("30_evaluate", deps=("20_train",)),
    Step("40_table1_main", deps=("30_evaluate",)),
    Step("41_table2_distribution", deps=("30_evaluate",)),
    Step("42_tables3_4_open_set", deps=("30_evaluate",)),
    Step("43_table5_pixel", deps=("30_evaluate",)),
    Step("44_table6_retrieval", deps=("30_evaluate",)),
    Step("45_table7_extended", deps=("30_evaluate",)),
    Step("46_table8_ablations", deps=("30_evaluate",)),
    Step("47_table9_k", deps=("30_evaluate",)),
    Step("50_figures", deps=("30_evaluate",)),
    Step("55_correlation", deps=("30_evaluate",)),
    Step("60_explore_sound_swap", deps=("30_evaluate",)),
    Step("90_appendix_reproducibility", deps=("40_table1_main", "41_table2_distribution", "42_tables3_4_open_set",
                                              "43_table5_pixel", "44_table6_retrieval", "45_table7_extended",
                                              "46_table8_ablations", "47_table9_k", "50_figures",
                                              "55_correlation", "60_explore_sound_swap")),
)


# Steps that read the data root (the others see it through their dependencies' keys).
DATA_ROOT_STEPS = ("00_prepare_data", "15_mine_positives", "20_train", "30_evaluate")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_hash(root: Path) -> str:
    """Hash of the package source: a code change reruns the steps (their numbers may change)."""
    h = hashlib.sha256()
    for p in sorted((root / "avsl_core").rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def step_key(root: Path, step: Step, params: dict, dep_keys: dict[str, str], code: str,
             data: dict | None = None) -> str:
    """`data`: `real_data.fingerprint` of the data root, for the steps that read it."""
    nb = (root / "notebooks" / f"{step.name}.ipynb").read_bytes()
    content = {"nb": _sha(nb), "params": params, "deps": [dep_keys[d] for d in step.deps], "code": code}
    if data is not None:
        content["data"] = data
    return _sha(json.dumps(content, sort_keys=True).encode())


def params_for(profile: dict, step: Step, data_root: str | None = None) -> dict:
    """Common parameters (profile, seed, paths) plus the step's own section of the profile file, and
    `data_root` for the steps of DATA_ROOT_STEPS when a data root is given."""
    common = {"profile": profile["profile"], "seed": int(profile.get("seed", 0))}
    own = dict(profile.get("notebooks", {}).get(step.name, {}) or {})
    extra = {"data_root": str(data_root)} if data_root and step.name in DATA_ROOT_STEPS else {}
    return {**common, **own, **extra}


def default_runs_dir(root: Path, profile_name: str, data_root=None) -> Path:
    """`runs/<profile>/`, or `runs/<profile>-real/` for a run with a data root."""
    return root / "runs" / (f"{profile_name}-real" if data_root else profile_name)


def run(profile_name: str, *, only: list[str] | None = None, force: bool = False,
        runs_dir: Path | None = None, book_dir: Path | None = None, data_root=None,
        overrides: dict[str, dict] | None = None, log=print) -> list[dict]:
    """Run the steps (see the module docstring). `data_root`: a folder with datasets.yaml
    (`avsl_core.real_data`); `overrides`: {step name: {parameter: value}} on top of the profile's
    parameters (scripts and tests: e.g. fewer runs), part of the step keys like any parameter."""
    import papermill as pm  # imported here: the module is also imported by tests without a kernel

    root = repo_root()
    profile = load_profile(profile_name)
    data = None
    if data_root:
        from avsl_core import real_data
        spec = real_data.load_spec(data_root)          # DataError naming datasets.yaml before any step
        data_root, data = spec.root, real_data.fingerprint(spec)
        log(f"[pipeline] data root {spec.root}: training manifest {spec.train.manifest}, "
            f"test sets {', '.join(spec.tests)}")
    out_dir = Path(runs_dir or default_runs_dir(root, profile_name, data_root))
    book_dir = Path(book_dir or root / "book" / "generated")
    (out_dir / ".stamps").mkdir(parents=True, exist_ok=True)
    book_dir.mkdir(parents=True, exist_ok=True)
    code = code_hash(root)
    keys: dict[str, str] = {}
    records = []
    timings = out_dir / "timings.json"
    history = json.loads(timings.read_text()) if timings.exists() else []
    history.append({"profile": profile_name, "time": time.time(), "git_commit": git_commit(),
                    "data_root": str(data_root) if data_root else None, "steps": records})

    def save_timings():   # after every step, so later steps (the appendix) can read it
        atomic_write_text(timings, json.dumps(history, indent=1))
    for step in STEPS:
        params = {**params_for(profile, step, data_root), **(overrides or {}).get(step.name, {})}
        key = step_key(root, step, params, keys, code, data if step.name in DATA_ROOT_STEPS else None)
        keys[step.name] = key
        out_nb = out_dir / f"{step.name}.ipynb"
        stamp = out_dir / ".stamps" / f"{step.name}.json"
        selected = only is None or step.name in only
        fresh = out_nb.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key
        if not selected or (fresh and not force):
            log(f"[pipeline] {step.name}: {'up to date' if fresh else 'not selected'}, skipped")
            records.append({"step": step.name, "skipped": True, "wall_s": 0.0})
        else:
            save_timings()
            log(f"[pipeline] {step.name}: running with {params}")
            t0 = time.time()
            tmp_nb = out_dir / f".{step.name}.running.ipynb"
            pm.execute_notebook(str(root / "notebooks" / f"{step.name}.ipynb"), str(tmp_nb),
                                parameters={**params, "runs_dir": str(out_dir)}, kernel_name="python3",
                                cwd=str(root), progress_bar=False)
            os.replace(tmp_nb, out_nb)
            wall = time.time() - t0
            atomic_write_text(stamp, json.dumps({"key": key, "wall_s": wall, "params": params,
                                                 "git_commit": git_commit(), "finished": time.time()}))
            log(f"[pipeline] {step.name}: done in {wall:.1f} s")
            records.append({"step": step.name, "skipped": False, "wall_s": wall})
        if out_nb.exists():
            shutil.copyfile(out_nb, book_dir / out_nb.name)
        save_timings()
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "quick"))
    ap.add_argument("--only", nargs="*", help="run only these steps (others must be up to date)")
    ap.add_argument("--force", action="store_true", help="rerun even when the inputs are unchanged")
    ap.add_argument("--runs-dir", type=Path)
    ap.add_argument("--book-dir", type=Path)
    ap.add_argument("--data-root", default=os.environ.get("AVSL_DATA_ROOT") or None,
                    help="folder with datasets.yaml naming real manifests (avsl_core.real_data); "
                         "runs go to runs/<profile>-real/ (default: $AVSL_DATA_ROOT)")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        run(a.profile, only=a.only, force=a.force, runs_dir=a.runs_dir, book_dir=a.book_dir,
            data_root=a.data_root)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[pipeline] profile {a.profile} finished in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
