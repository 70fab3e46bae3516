"""The papermill pipeline: dependency order, parameters per profile, and the skip key."""
import json
from pathlib import Path

import pytest

from avsl_core import pipeline
from avsl_core.config import PROFILES, load_profile

ROOT = Path(__file__).resolve().parents[1]


def test_steps_are_in_dependency_order_and_notebooks_exist():
    seen = set()
    for s in pipeline.STEPS:
        assert set(s.deps) <= seen, f"{s.name} depends on a later step"
        assert (ROOT / "notebooks" / f"{s.name}.ipynb").exists()
        seen.add(s.name)


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load_and_parameters_exist_in_notebooks(name):
    prof = load_profile(name)
    for step in pipeline.STEPS:
        params = pipeline.params_for(prof, step)
        nb = json.loads((ROOT / "notebooks" / f"{step.name}.ipynb").read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{step.name}: exactly one cell must be tagged 'parameters'"
        src = "".join(tagged[0]["source"])
        for key in params:
            assert f"{key} =" in src or f"{key}:" in src, f"{step.name}: parameter {key} not in the parameters cell"


def test_profile_errors_name_the_file(tmp_path):
    (tmp_path / "smoke.yaml").write_text("profile: other\n")
    with pytest.raises(ValueError, match="smoke.yaml"):
        load_profile("smoke", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_profile("nope", tmp_path)


def test_step_key_changes_with_params_code_and_deps():
    step = pipeline.STEPS[0]
    base = pipeline.step_key(ROOT, step, {"a": 1}, {}, "code1")
    assert base == pipeline.step_key(ROOT, step, {"a": 1}, {}, "code1")
    assert base != pipeline.step_key(ROOT, step, {"a": 2}, {}, "code1")
    assert base != pipeline.step_key(ROOT, step, {"a": 1}, {}, "code2")
    dep = pipeline.Step("x", deps=(step.name,))
    k1 = pipeline.step_key(ROOT, dep if (ROOT / "notebooks/x.ipynb").exists() else step, {}, {step.name: "k1"}, "c")
    assert isinstance(k1, str) and len(k1) == 64


def test_notebooks_are_committed_without_outputs():
    for p in (ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(p.read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                assert not c.get("outputs"), f"{p.name} has outputs"
