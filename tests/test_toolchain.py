"""The pinned toolchain: Jupyter Book major version 1, exact pins, the two commands' plumbing."""
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_jupyter_book_major_version_is_1():
    # Version 2 downloads its theme at build time and fails offline.
    assert version("jupyter-book").split(".")[0] == "1"


def test_requirements_pin_every_direct_dependency_exactly():
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [l for l in lines if l and not l.startswith("#")]
    assert reqs, "requirements.txt is empty"
    for r in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.+\-]*", r), f"not an exact pin: {r}"
    names = {r.split("==")[0].lower() for r in reqs}
    for needed in ("torch", "torchvision", "torchaudio", "soundfile", "faiss-cpu", "papermill", "nbval",
                   "ipywidgets", "ipykernel", "matplotlib", "pandas", "jupyter-book"):
        assert needed in names, f"{needed} is not pinned"


@pytest.mark.parametrize("pkg", ["torch", "torchvision", "torchaudio"])
def test_torch_stack_matches_pins(pkg):
    pins = dict(l.split("==") for l in (ROOT / "requirements.txt").read_text().split() if "==" in l)
    assert version(pkg).split("+")[0] == pins[pkg]


def test_book_config_serves_widget_js_locally():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = cfg["sphinx"]["config"]
    assert "book/_vendor_js" in sphinx["html_static_path"]
    assert set(sphinx["nb_ipywidgets_js"]) == {"require.js", "embed-amd.js"}
    assert not any(k.startswith("http") for k in sphinx["nb_ipywidgets_js"])
    assert not sphinx["mathjax_path"].startswith("http")


def test_every_toc_page_is_a_committed_page_or_a_pipeline_notebook():
    from avsl_core.book_build import toc_files
    from avsl_core.pipeline import STEPS
    steps = {s.name for s in STEPS}
    for f in toc_files(ROOT):
        if f.startswith("book/generated/"):
            assert f.split("/")[-1] in steps, f"{f} is in _toc.yml but no pipeline step makes it"
            assert (ROOT / "notebooks" / (f.split("/")[-1] + ".ipynb")).exists()
        else:
            assert (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists(), f


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
