"""The Dash app in headless Debian Chromium: pages render their figures with no console errors,
a click on a grid cell selects that head everywhere, a typed prompt draws a new pattern, and bad
run ids show a message. Page-switch and head-selection latencies are measured and printed."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from tests.browser import browser, console_errors, wait_for  # noqa: F401,F811  (pytest fixture)
from tests.dashboards.fixtures import frames
from dashboards import views
import workbench as wb
from workbench.analyzers import ANALYZERS

pytestmark = pytest.mark.browser
ROOT = None  # the served folder, set by the first test that gets the runs_root fixture


@pytest.fixture(autouse=True)
def _root(runs_root):
    global ROOT
    ROOT = runs_root

PAGES = {"/": "Overview", "/head": "Head", "/layer": "Layer", "/heads": "Heads side by side", "/sinks": "Sinks",
         "/importance": "Importance", "/retrieval": "Retrieval", "/circuits": "Circuits", "/saliency": "Saliency",
         "/head-map": "Head map", "/compare": "Compare runs"}


def expected_figures(path: str, root=None) -> int:
    """How many figures a page shows for the full fixture run (compared with ``tiny`` on the
    Compare page), from the registry itself."""
    if path in ("/", "/head", "/layer"):
        return 1  # the grid; a placeholder pattern (the fixture run's model cannot be loaded, no examples)
    if path == "/heads":
        return 0
    if path == "/compare":
        from workbench.report.compare import shared_scores

        if root is None:  # reached through the nav: full against the first other run, of the same shape
            return 2 * len(shared_scores([wb.Run.open(ROOT / "full"), wb.Run.open(ROOT / "broken-table")]))
        return len(shared_scores([wb.Run.open(root / "full"), wb.Run.open(root / "tiny")]))  # shapes differ
    f = frames()
    return sum(len(ANALYZERS[t].make_figures(f[t])) for t in views.tables_of(path.strip("/")))


#: Times each nav click inside the page: from the click event to the frame showing the new heading.
_PAINT_TIMER = """
window.__wbPaint = [];
document.addEventListener('click', e => {
  const link = e.target.closest('.wb-nav a'); if (!link) return;
  const name = link.textContent.trim(), t0 = performance.now();
  const check = () => { const h = document.querySelector('#_pages_content h2');
    if (h && h.textContent === name) window.__wbPaint.push([name, performance.now() - t0]);
    else requestAnimationFrame(check); };
  requestAnimationFrame(check);
}, true);"""


def _heading(driver) -> str:
    return driver.execute_script("const h = document.querySelector('#_pages_content h2'); return h ? h.textContent : '';")


def _drawn(driver) -> int:
    """Plotly graphs on the page that have finished drawing (an SVG with a plot area)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#_pages_content .js-plotly-plot')]"
        ".filter(g => g._fullLayout && g.querySelector('.main-svg')).length")


def _page_ready(driver, name: str, figures: int):
    return lambda: _heading(driver) == name and _drawn(driver) >= figures


def _click_cell(driver, gd, x, y) -> None:
    """A real mouse click on data point (x, y) of a plotly graph element ``gd`` (hover first, as
    a user does)."""
    from selenium.webdriver.common.action_chains import ActionChains

    px, py = driver.execute_script(
        "const gd = arguments[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "return [xa._offset + xa.d2p(arguments[1]), ya._offset + ya.d2p(arguments[2])];", gd, x, y)
    size = gd.size
    ActionChains(driver).move_to_element_with_offset(gd, px - size["width"] / 2, py - size["height"] / 2) \
        .pause(0.3).perform()
    ActionChains(driver).click().perform()


def _nav(driver, name: str) -> None:
    """Click a nav link (found again if a callback re-rendered the header meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            driver.find_element("xpath", f"//nav[@class='wb-nav']//a[normalize-space()='{name}']").click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"nav link {name!r} kept going stale")


def _selected(driver) -> str:
    return driver.execute_script("return document.getElementById('app-selected').textContent;")


def test_every_page_renders_its_figures_without_console_errors(browser, live_server, runs_root):
    for path, name in PAGES.items():
        browser.get(f"{live_server}{path}?run=full&other=tiny")
        want = expected_figures(path, runs_root)
        assert wait_for(_page_ready(browser, name, want), 30), f"{path}: {_drawn(browser)} of {want} figures drawn"
        time.sleep(0.3)  # let late callbacks finish before counting again
        assert _drawn(browser) == want
        errors = browser.find_elements("css selector", ".wb-error")
        assert not errors, f"{path}: {[e.text for e in errors]}"
        assert console_errors(browser) == [], path


def test_click_on_overview_selects_the_head_everywhere_and_latencies(browser, live_server):
    browser.get(f"{live_server}/?run=full")
    assert wait_for(_page_ready(browser, "Overview", 1), 30)
    time.sleep(0.3)
    selections = []
    for layer, head in ((2, 5), (0, 3), (3, 7)):
        start = time.perf_counter()
        _click_cell(browser, browser.find_element("css selector", "#overview-grid .js-plotly-plot"), head, layer)
        assert wait_for(lambda: f"layer {layer}, head {head}" in _selected(browser), 10, 0.01), _selected(browser)
        selections.append(time.perf_counter() - start - 0.3)  # minus the hover pause
    # the Head page shows the last selection, with its scores from the run's tables
    start = time.perf_counter()
    _nav(browser, "Head")
    assert wait_for(lambda: browser.find_elements("id", "head-scores-table"), 10, 0.01)
    to_head = time.perf_counter() - start
    table = browser.find_element("id", "head-scores-table").text
    entropy = frames()["head_summary"].set_index(["layer", "head"]).loc[(3, 7), "entropy"]
    assert f"entropy (pooled over query rows) {entropy:.4g}" in table, table
    assert (browser.find_element("id", "head-layer").text, browser.find_element("id", "head-head").text) == ("3", "7")
    # page switches through the nav, each until its figures are drawn; the page also times itself
    # from the click event to the new heading on screen (no webdriver round trips in that number)
    browser.execute_script(_PAINT_TIMER)
    switches = {}
    for path, name in list(PAGES.items())[2:] + [("/", "Overview")]:
        start = time.perf_counter()
        _nav(browser, name)
        assert wait_for(_page_ready(browser, name, expected_figures(path)), 10, 0.01), name
        switches[name] = time.perf_counter() - start
    errors = console_errors(browser)
    assert errors == [], "\n".join(e["message"][120:520] for e in errors)
    painted = [ms for _, ms in browser.execute_script("return window.__wbPaint")]
    print(f"\nhead selection (click -> badge): {', '.join(f'{s * 1000:.0f}' for s in selections)} ms; "
          f"Overview -> Head page: {to_head * 1000:.0f} ms; page switches (click -> figures drawn): "
          + ", ".join(f"{k} {v * 1000:.0f}" for k, v in switches.items())
          + f" ms; median {statistics.median(switches.values()) * 1000:.0f} ms, max {max(switches.values()) * 1000:.0f} ms; "
          f"in the page, click -> new heading painted: median {statistics.median(painted):.0f} ms, max {max(painted):.0f} ms")


def test_head_page_opens_the_head_named_in_the_address(browser, live_server):
    browser.get(f"{live_server}/head?run=full&layer=2&head=6")
    assert wait_for(lambda: browser.find_elements("id", "head-scores-table"), 30)
    table = browser.find_element("id", "head-scores-table").text
    sink = frames()["sink_scores"].set_index(["layer", "head"]).loc[(2, 6), "sink_score"]
    assert f"sink score α₀ {sink:.4g}" in table, table
    assert "layer 2, head 6" in _selected(browser)  # and it becomes the app-wide selection
    assert console_errors(browser) == []


def test_run_picker_switches_the_run_and_keeps_it_in_links(browser, live_server):
    browser.get(f"{live_server}/sinks?run=full")
    assert wait_for(_page_ready(browser, "Sinks", expected_figures("/sinks")), 30)
    browser.find_element("id", "app-run").click()
    options = wait_for(lambda: browser.find_elements("css selector", "[role='option']"), 10)  # in a popover
    assert [o.text for o in options] == ["broken-table", "damaged", "full", "group/partial", "tiny"]
    next(o for o in options if o.text == "group/partial").click()
    page_text = lambda: browser.execute_script("return document.getElementById('_pages_content').innerText")  # noqa: E731
    assert wait_for(lambda: "this run has no token_sinks table" in page_text(), 10), page_text()
    assert browser.current_url.endswith("/sinks?run=group/partial") and _drawn(browser) == 1  # sink_scores only
    hrefs = [a.get_attribute("href") for a in browser.find_elements("css selector", ".wb-nav a")]
    assert all(h.endswith("?run=group/partial") for h in hrefs), hrefs
    assert console_errors(browser) == []


def test_click_on_the_head_map_selects_that_head(browser, live_server):
    browser.get(f"{live_server}/head-map?run=full")
    assert wait_for(_page_ready(browser, "Head map", expected_figures("/head-map")), 30)
    time.sleep(0.3)
    row = frames()["head_patterns"].iloc[13]  # layer 1, head 5
    umap = browser.find_elements("css selector", "#_pages_content .js-plotly-plot")[0]  # the UMAP map comes first
    _click_cell(browser, umap, row.umap_x, row.umap_y)
    assert wait_for(lambda: "layer 1, head 5" in _selected(browser), 10), _selected(browser)
    assert console_errors(browser) == []


def test_typed_prompt_draws_its_pattern(browser, live_server, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    browser.get(f"{live_server}/head?run=tiny&layer=1&head=2")
    assert wait_for(lambda: browser.find_elements("id", "head-text"), 30)
    prompt = "w5 w6 w7 w8 w5 w6 w7"
    browser.find_element("id", "head-text").send_keys(prompt)
    browser.find_element("id", "head-compute").click()
    labels = ["0: <s>"] + [f"{i + 1}: {w}" for i, w in enumerate(prompt.split())]

    def drawn_pattern():
        return browser.execute_script(
            "const gd = document.querySelector('#head-pattern .js-plotly-plot');"
            "if (!gd || !gd.data || !gd.data.length || !gd.querySelector('.main-svg')) return null;"
            "const t = gd._fullData[0]; return {y: Array.from(t.y), z: Array.from(t.z, r => Array.from(r)), title: gd.layout.title.text};")

    got = wait_for(lambda: (p := drawn_pattern()) and list(p["y"]) == labels and p, 60)
    assert got, drawn_pattern()
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager")  # independent oracle
    ids = AutoTokenizer.from_pretrained(tiny_dir)(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = hf(ids, output_attentions=True).attentions[1][0, 2].numpy()
    np.testing.assert_allclose(np.array(got["z"]), expected, atol=1e-5)
    assert got["title"].startswith("layer 1 head 2")
    assert "attention from query 7 'w7'" in browser.find_element("id", "head-tokens").text
    assert console_errors(browser) == []


def test_long_prompt_is_block_averaged_then_windowed(browser, live_server):
    """600 tokens (bertviz and CircuitsVis break near 512): at most 256 cells per axis are shipped."""
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{live_server}/head?run=tiny&layer=0&head=1")
    assert wait_for(lambda: browser.find_elements("id", "head-text"), 30)
    words = [f"w{i % 90}" for i in range(600)]
    browser.find_element("id", "head-text").send_keys(" ".join(words))
    browser.find_element("id", "head-compute").click()

    def shown():
        return browser.execute_script(
            "const gd = document.querySelector('#head-pattern .js-plotly-plot');"
            "if (!gd || !gd._fullData || !gd._fullData.length) return null;"
            "const t = gd._fullData[0]; return {rows: t.z.length, cols: t.z[0].length, y0: t.y[0], title: gd.layout.title.text};")

    whole = wait_for(lambda: (s := shown()) and "blocks" in s["title"] and s, 60)
    assert whole and (whole["rows"], whole["cols"]) == (201, 201), shown()  # 601 tokens in 3×3 blocks
    assert whole["y0"] == "0–2: <s>…"
    browser.find_element("css selector", "#head-view input[value='window']").click()
    window = wait_for(lambda: (s := shown()) and "positions" in s["title"] and s, 30)
    assert (window["rows"], window["cols"]) == (256, 256) and "positions 0–255 of 601" in window["title"]
    browser.find_element("css selector", "#head-window [role='slider']").send_keys(Keys.END)
    last = wait_for(lambda: (s := shown()) and "positions 345–600 of 601" in s["title"] and s, 30)
    assert last and last["y0"] == f"345: {words[344]}" and (last["rows"], last["cols"]) == (256, 256)
    assert "of 601" in browser.find_element("id", "head-tokens").text
    assert console_errors(browser) == []


@pytest.mark.parametrize("run_id, message", [
    ("../root-outside/secret", "points outside the served folder"),
    ("/etc", "is an absolute path"),
    ("escape", "points outside the served folder"),
    ("damaged", "damaged manifest.json"),
    ("nope", "there is no run 'nope' in the served folder"),
])
def test_bad_run_ids_show_a_message_in_the_page(browser, live_server, run_id, message):
    from urllib.parse import quote

    for path in ("/", "/sinks", "/head"):
        browser.get(f"{live_server}{path}?run={quote(run_id)}")
        assert wait_for(lambda: browser.find_elements("css selector", ".wb-error"), 30), path
        text = browser.find_element("css selector", "#_pages_content").text
        assert message in text and "Traceback" not in text and "secret" not in text.replace(run_id, "")
        assert _drawn(browser) == 0 and console_errors(browser) == []


def test_damaged_table_is_a_message_next_to_the_good_ones(browser, live_server):
    browser.get(f"{live_server}/sinks?run=broken-table")
    assert wait_for(lambda: browser.find_elements("css selector", ".wb-error"), 30)
    text = browser.find_element("css selector", "#_pages_content").text
    assert "table 'sink_scores' of run" in text and "is damaged or missing" in text
    assert console_errors(browser) == []


def test_clicking_a_ringed_retrieval_head_selects_it(browser, live_server):
    browser.get(f"{live_server}/retrieval?run=full")
    assert wait_for(_page_ready(browser, "Retrieval", expected_figures("/retrieval")), 30)
    time.sleep(0.3)
    f = frames()["retrieval_heads"]
    for _, row in f[f.is_retrieval].head(2).iterrows():  # the heads people want to open
        grid = browser.find_elements("css selector", "#_pages_content .js-plotly-plot")[0]
        _click_cell(browser, grid, int(row["head"]), int(row.layer))
        want = f"layer {int(row.layer)}, head {int(row['head'])}"
        assert wait_for(lambda: want in _selected(browser), 10), (want, _selected(browser))
    assert console_errors(browser) == []


def _choose(driver, dropdown_id: str, text: str) -> None:
    """Pick the option ``text`` of a dcc.Dropdown: open it, click the option (in a popover)."""
    driver.find_element("id", dropdown_id).click()
    options = wait_for(lambda: [o for o in driver.find_elements("css selector", "[role='option']") if o.text == text], 10)
    assert options, [o.text for o in driver.find_elements("css selector", "[role='option']")]
    options[0].click()


def test_head_view_shows_the_chosen_query_and_key_against_capture_patterns(browser, live_server, tiny_dir):
    import workbench as wb

    browser.get(f"{live_server}/head?run=tiny&layer=1&head=3")
    assert wait_for(lambda: browser.find_elements("id", "head-text"), 30)
    prompt = "w5 w6 w5 w6 w7 w5"
    browser.find_element("id", "head-text").send_keys(prompt)
    browser.find_element("id", "head-compute").click()
    assert wait_for(lambda: "query 6 'w5'" in browser.find_element("id", "head-tokens").text, 60)
    _choose(browser, "head-position", "4: w6")
    caption = lambda: browser.find_element("id", "head-tokens").text  # noqa: E731
    assert wait_for(lambda: "attention from query 4 'w6'" in caption(), 30), caption()
    expected = wb.capture_patterns(wb.load_model(str(tiny_dir)), [prompt])[1][0, 3].numpy()  # (query, key)

    def shown():
        return [(s.get_attribute("title"), s.text) for s in browser.find_elements("css selector", "#head-view-tokens span")]

    spans = shown()
    assert [t for _, t in spans] == ["<s>", *prompt.split()]
    values = [float(title.split(": ")[1]) for title, _ in spans]
    np.testing.assert_allclose(values, expected[4], atol=1e-3)  # keys 5.. get 0: the query cannot see them
    browser.find_element("css selector", "#head-mode input[value='to']").click()
    assert wait_for(lambda: "attention to key 4 'w6' from each query" in caption(), 30), caption()
    np.testing.assert_allclose([float(t.split(": ")[1]) for t, _ in shown()], expected[:, 4], atol=1e-3)
    assert console_errors(browser) == []


def test_layer_view_click_opens_the_head(browser, live_server):
    browser.get(f"{live_server}/layer?run=tiny&layer=1")
    assert wait_for(lambda: browser.find_elements("id", "layer-text"), 30)
    browser.find_element("id", "layer-text").send_keys("w1 w2 w3 w1 w2")
    browser.find_element("id", "layer-compute").click()
    ready = lambda: browser.execute_script(  # noqa: E731
        "const gd = document.querySelector('#layer-grid .js-plotly-plot');"
        "return gd && gd._fullData ? gd._fullData.filter(t => t.type === 'heatmap').length : 0")
    assert wait_for(lambda: ready() == 4, 60), ready()
    time.sleep(0.3)
    from selenium.webdriver.common.action_chains import ActionChains

    gd = browser.find_element("css selector", "#layer-grid .js-plotly-plot")
    x, y = browser.execute_script(  # the middle of head 2's thumbnail (the third subplot)
        "const l = arguments[0]._fullLayout, xa = l.xaxis3, ya = l.yaxis3;"
        "return [xa._offset + xa._length / 2, ya._offset + ya._length / 2];", gd)
    ActionChains(browser).move_to_element_with_offset(gd, x - gd.size["width"] / 2, y - gd.size["height"] / 2) \
        .pause(0.3).click().perform()
    assert wait_for(lambda: "/head" in browser.current_url and "head=2" in browser.current_url, 20), browser.current_url
    assert wait_for(lambda: "layer 1, head 2" in _selected(browser), 20)
    assert console_errors(browser) == []
