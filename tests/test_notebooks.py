"""Every notebook at its smoke defaults through papermill, then the book built from those outputs.

This is the integration test of the whole pipeline: it needs the asset cache (`make test` fetches it
first) and runs `python -m avsl_core.pipeline --profile smoke` semantics in-process. Steps whose
inputs are unchanged since a previous run are skipped, as in `make book`.
"""
import json
import re
from pathlib import Path

import pytest

from avsl_core import book_build, pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "data" / "assets" / "index.csv").exists(),
                                reason="asset cache missing: run `make assets` (make test does)")


@pytest.fixture(scope="module")
def smoke_run():
    records = pipeline.run("smoke", log=print)
    return records


def test_every_step_ran_or_was_up_to_date(smoke_run):
    names = [r["step"] for r in smoke_run]
    assert names == [s.name for s in pipeline.STEPS]
    for s in pipeline.STEPS:
        out = ROOT / "runs" / "smoke" / f"{s.name}.ipynb"
        nb = json.loads(out.read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{s.name}: {errors[:1]}"
        assert nb["metadata"]["papermill"]["parameters"]["profile"] == "smoke"


def test_data_summary_has_the_benchmark_size(smoke_run):
    summary = json.loads((ROOT / "runs" / "smoke" / "results" / "data_summary.json").read_text())
    assert summary["n_categories_full"] >= 23
    q25, q50, q75 = summary["sounding_area_quartiles_pct"]
    assert q25 < q50 < q75


def test_book_builds_offline_with_every_page(smoke_run):
    index = book_build.build()
    html_dir = index.parent
    for f in book_build.toc_files(ROOT):
        page = html_dir / (("index" if f == book_build.toc_files(ROOT)[0] else f) + ".html")
        if f != book_build.toc_files(ROOT)[0]:
            assert page.exists(), f"page {f} was not built"
            text = page.read_text()
            assert "{glue" not in text, f"{f}: a glue reference did not resolve"
            # glued values render as plain text: no numpy reprs, no quoted strings
            pasted = re.findall(r'<span class="pasted-text">(.*?)</span>', text)
            bad = [p for p in pasted if re.match(r"np\.\w+\(|['\u2018\u2019\"]", p)]
            assert not bad, f"{f}: glued values render as reprs: {bad[:3]}"
    for js in ("require.js", "embed-amd.js"):
        assert (html_dir / "_static" / js).exists()
    pages = "".join(p.read_text() for p in html_dir.rglob("*.html"))
    assert not re.search(r'src="https?://[^"]*(require|embed-amd)', pages), "widget JS must be served locally"
