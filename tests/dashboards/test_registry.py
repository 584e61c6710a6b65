"""One module plus one registry line: a toy analysis registered in `toy_analysis.py` appears in
`analyze`, the report (its section, a findings block with its heads drawn, its glossary entry,
the prompts it used), the comparison, and a dashboard page of its own, with no other file touched."""

from __future__ import annotations

import importlib
import re
import sys

import dash
import numpy as np
import pytest

import workbench as wb
from tests import tiny_models
from workbench.analyzers import ANALYZERS


@pytest.fixture
def toy():
    saved = dict(ANALYZERS)
    pages = dict(dash.page_registry)
    sys.modules.pop("tests.dashboards.toy_analysis", None)
    module = importlib.import_module("tests.dashboards.toy_analysis")
    try:
        yield module
    finally:
        ANALYZERS.clear()
        ANALYZERS.update(saved)
        for key in [k for k in dash.page_registry if k not in pages]:
            del dash.page_registry[key]


def test_a_toy_analysis_in_one_module_reaches_analyze_report_and_dashboard(toy, tmp_path):
    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    prompts = tiny_models.PROMPTS
    run = wb.analyze(model, prompts, out=tmp_path / "run", analyses=["toy_self_mass", "prompts", "head_examples"],
                     progress=False)
    frame = run.table("toy_self_mass")
    patterns = wb.capture_patterns(model, prompts[:1])  # check one value independently
    assert frame.set_index(["layer", "head"]).loc[(1, 2), "self_mass"] == pytest.approx(
        np.mean([float(wb.capture_patterns(model, [p])[1][0, 2, -1, -1]) for p in prompts]))
    assert patterns[1].shape[1] == 4
    # the report: a section, a findings block naming the best head, drawn; its glossary entry; its prompts
    text = wb.report(run, tmp_path / "r.html", compute=False).read_text()
    assert '<section id="analysis-toy_self_mass"' in text
    block = re.search(r'<div class="block" id="finding-toy-checks">(.*?)(?=<div class="block"|</section>)', text,
                      re.S).group(1)
    best = frame.sort_values(["self_mass", "layer", "head"], ascending=[False, True, True]).iloc[0]
    assert f"attends to itself most in L{int(best.layer)}H{int(best['head'])}" in block
    assert block.count('class="wb-figure"') == 3 and "3 prompts of set “run”" in block
    assert "A[T−1, T−1], averaged over prompts" in text  # the glossary row
    # the comparison report picks up its summary number
    from workbench.report import compare_report

    assert "toy: mean self mass" in compare_report(run, run, tmp_path / "c.html").read_text()
    # the dashboard: a page of its own, whose figure is the toy's grid, clickable
    from dashboards import views
    from dashboards.app import create_app

    app = create_app(tmp_path / "run")
    assert "/toy" in {p["path"] for p in dash.page_registry.values()}
    with app.server.test_request_context("/"):
        body = views.analysis_page(tmp_path / "run", ".", "toy")
    graphs = [c for c in body if type(c).__name__ == "Graph"]
    assert len(graphs) == 1 and graphs[0].id["type"] == "analysis-graph"
    np.testing.assert_allclose(graphs[0].figure.data[0].z,
                               frame.pivot(index="layer", columns="head", values="self_mass").to_numpy())
    assert any("self_mass" in (getattr(c, "title", "") or "") for c in views_terms(body))


def views_terms(body):
    out = []
    for c in body:
        for child in getattr(c, "children", []) or []:
            if getattr(child, "className", None) == "wb-term":
                out.append(child)
    return out
