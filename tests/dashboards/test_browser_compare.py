"""The Compare page in headless Chromium on two runs of different models (the demo model and a
tiny Llama): both runs' numbers side by side, one line per run in every depth profile, no
per-head differences across shapes, and the demo run's layer view; no console errors."""

from __future__ import annotations

import pytest

import workbench as wb
from tests.browser import browser, console_errors, wait_for  # noqa: F401,F811  (pytest fixture)

pytestmark = pytest.mark.browser


def _drawn(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#_pages_content .js-plotly-plot')]"
        ".filter(g => g._fullLayout && g.querySelector('.main-svg')).length")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A folder with a run of the demo model and a run of the tiny Llama (two different models),
    served by an app of its own."""
    import threading

    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from tests import tiny_models

    root = tmp_path_factory.mktemp("two-models")
    cheap = ["head_summary", "sink_scores", "prompts", "head_examples"]
    wb.analyze(wb.load_model("demo"), out=root / "demo", analyses=cheap, progress=False)
    tiny = wb.load_model("tiny", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    wb.analyze(tiny, tiny_models.PROMPTS, out=root / "tiny", analyses=cheap, progress=False)
    app = create_app(root)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_compare_page_on_two_runs_of_different_models(browser, two_models):
    root, url = two_models
    browser.get(f"{url}/compare?run=demo&other=tiny")
    table = wait_for(lambda: browser.find_elements("id", "compare-numbers"), 60)
    assert table, browser.find_element("id", "_pages_content").text
    text = table[0].text
    demo, tiny = wb.Run.open(root / "demo"), wb.Run.open(root / "tiny")
    for run in (demo, tiny):
        share = 100 * (run.table("sink_scores").sink_score > 0.3).mean()
        assert f"{share:.4g}" in text
    assert "4 × 8" in text and "2 × 4" in text and "demo" in text
    from workbench.report.compare import shared_scores

    want = len(shared_scores([demo, tiny]))  # entropy, max attention, sink score: by depth only
    assert want == 3 and wait_for(lambda: _drawn(browser) == want, 30), _drawn(browser)
    lines = browser.execute_script(
        "return [...document.querySelectorAll('#_pages_content .js-plotly-plot')].map(g => "
        "g._fullData.filter(t => t.mode === 'lines+markers').map(t => t.name))")
    assert all(names == ["A: demo (demo)", "B: tiny (tiny)"] for names in lines), lines
    assert "differ in shape" in browser.find_element("id", "_pages_content").text
    assert console_errors(browser) == []
    # the Head and Layer pages of the demo run draw its stored examples and its patterns
    browser.get(f"{url}/layer?run=demo&layer=2")
    assert wait_for(lambda: browser.execute_script(
        "const gd = document.querySelector('#layer-grid .js-plotly-plot');"
        "return gd && gd._fullData ? gd._fullData.filter(t => t.type === 'heatmap').length : 0") == 8, 90)
    assert console_errors(browser) == []
