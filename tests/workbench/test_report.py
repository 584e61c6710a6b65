"""HTML reports: one self-contained file (plotly.js once, nothing fetched), findings first (named
heads checked against the run's tables, drawn from stored examples that equal an independent
capture, causal checks where the run has them), a section per registered analysis with the
prompts it used, ranked heads that match an independent computation, downsampled heatmaps,
rendering in headless Chromium from file:// (first paint before plotly.js runs, figures drawn as
they scroll into view, a sticky nav), and one-line CLI errors that leave no file behind."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from tests import tiny_models
from tests.browser import browser, console_errors, requests_made, wait_for  # noqa: F401  (fixture)
from tests.workbench.report_helpers import (CAUSAL_ONLY, Built, build, check_self_contained, expected_figures,
                                            registry, rendered_figures)
from workbench.analyzers import ANALYZERS
from workbench.cli import main
from workbench.report import render, sections

@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """The README's main job: `workbench report --out report.html` with no other argument, from a
    fresh folder (the demo model, its default prompts, a cached run in runs/demo)."""
    folder = tmp_path_factory.mktemp("demo")
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        with pytest.raises(SystemExit) as done:
            main(["report", "--out", "report.html"])
    finally:
        os.chdir(cwd)
    assert done.value.code in (0, None)
    run = wb.Run.open(folder / "runs" / "demo")
    return Built(run.manifest["model"]["name"], run, folder / "report.html", expected_figures(run),
                 list(ANALYZERS), {n: a.title for n, a in ANALYZERS.items()})


@pytest.fixture(scope="module")
def tiny_reports(tmp_path_factory):
    built = {}
    for kind in ("llama", "bert"):
        model = wb.load_model(f"tiny-{kind}", hf_model=tiny_models.hf_model(kind), tokenizer=tiny_models.tokenizer(kind))
        built[kind] = build(model, tiny_models.PROMPTS, tmp_path_factory.mktemp(kind))
    return built


# -- pure parts -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_tiny_report_sections_top_heads_and_skips(tiny_reports, kind):
    built = tiny_reports[kind]
    text = built.path.read_text()
    check_self_contained(text)
    sections_ = dict(re.findall(r'<section id="analysis-(\w+)"[^>]*>(.*?)</section>', text, re.S))
    # one section per registered analysis, in registry order (the prompts and examples have their own)
    assert list(sections_) == [a for a in built.analyses if a not in sections.SUPPORT]
    skipped = built.run.manifest.get("skipped", {})
    for name, body in sections_.items():
        assert body.startswith(f"<h2>{html.escape(built.titles[name])}</h2>")
        if name in skipped:  # an analysis that does not apply says why instead of failing
            assert "Not applicable to this model: " + html.escape(skipped[name]) in body
        else:
            assert f"table <code>{name}</code>: {len(built.run.table(name))} rows" in body
    assert text.count('class="wb-figure"') == built.n_figures and f'name="wb-figures" content="{built.n_figures}"' in text
    section = sections_["first_key_mass"]
    assert "Test source, 2024" in section
    if kind == "bert":
        assert skipped["first_key_mass"] == CAUSAL_ONLY
        return
    # top heads: the ranking must match attention on key 0 read from an independent plain HF model
    oracle = tiny_models.hf_model(kind)  # same seed: same weights, never wrapped by a bridge
    model = built.model
    mass = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    for prompt in tiny_models.PROMPTS:
        ids, _ = model.to_tokens([prompt])
        with torch.no_grad():
            attentions = oracle(ids, output_attentions=True).attentions
        for layer, a in enumerate(attentions):  # (1, head, query, key)
            mass[layer] += a[0, :, :, 0].double().mean(-1) / len(tiny_models.PROMPTS)
    best = torch.argsort(mass.flatten(), descending=True)[:5]
    want = [f"L{int(i) // model.n_heads}H{int(i) % model.n_heads} ({mass.flatten()[i]:.4g})" for i in best]
    row = re.search(r"<tr><td>first_key_mass</td><td><a [^>]*>first_mass</a></td><td>highest first</td>(.*?)</tr>",
                    text).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == want
    heavy = int((mass > 0.5).sum())
    assert f"is_heavy: {heavy} of {model.n_layers * model.n_heads} heads" in section


def test_demo_report_default_path(demo_report):
    text = demo_report.path.read_text()
    check_self_contained(text)
    assert demo_report.path.stat().st_size < 15e6
    found = re.findall(r'<section id="analysis-(\w+)"', text)
    assert found == [a for a in demo_report.analyses if a not in sections.SUPPORT] and demo_report.model == "demo"
    assert set(demo_report.run.tables) | set(demo_report.run.manifest.get("skipped", {})) >= set(ANALYZERS)
    assert text.count('class="wb-figure"') == demo_report.n_figures > len(ANALYZERS)
    provenance = re.search(r'<section id="provenance".*?</section>', text, re.S).group(0)
    manifest = demo_report.run.manifest
    for fact in (manifest["prompts_hash"], manifest["versions"]["torch"], "LlamaForCausalLM"):
        assert fact in provenance


def _block(text: str, family: str) -> str:
    return re.search(rf'<div class="block" id="finding-{family}">(.*?)(?=<div class="block"|</section>)', text,
                     re.S).group(1)


def test_demo_findings_come_first_and_name_the_heads_of_the_tables(demo_report):
    text = demo_report.path.read_text()
    run = demo_report.run
    assert text.index('<section id="findings"') < text.index('<section id="ranked"') < text.index('id="analysis-')
    sinks = run.table("sink_scores").sort_values(["sink_score", "layer", "head"], ascending=[False, True, True])
    share = 100 * (sinks.sink_score > 0.3).mean()
    block = _block(text, "sinks")
    top = sinks.iloc[0]
    assert f"Sink^ε = {share:.0f}%" in block and f"L{top.layer}H{top['head']} ({top.sink_score:.2f})" in block
    retrieval = run.table("retrieval_heads").sort_values(["retrieval_score", "layer", "head"],
                                                         ascending=[False, True, True]).iloc[0]
    block = _block(text, "retrieval")
    assert f"Strongest: L{retrieval.layer}H{retrieval['head']}" in block and "20 prompts of set “passkey”" in block
    circuits = run.table("circuits")
    ioi = circuits[(circuits.task == "ioi") & (circuits.method == "activation_patching")]
    best = ioi.iloc[ioi.effect.abs().argmax()]
    block = _block(text, "circuits")
    assert f"ioi: a circuit of {int(ioi.in_circuit.sum())} heads" in block
    assert f"L{best.layer}H{best['head']} ({'+' if best.effect > 0 else ''}{best.effect:.2f})" in block
    types = _block(text, "head-types")
    assert "measured on seeded random token sequences repeated twice" in types and 'class="caveat"' in types
    assert "Most focused heads (lowest entropy" in types
    for family in ("sinks", "head-types", "importance", "retrieval", "circuits",
                   "saliency", "massive-activations"):
        block = _block(text, family)
        assert "Prompts:" in block and "details</a>" in block, family
    for name in ANALYZERS:  # every detailed section says which prompts it used
        if name not in sections.SUPPORT and name in run:
            body = re.search(f'<section id="analysis-{name}"[^>]*>(.*?)</section>', text, re.S).group(1)
            assert "Prompts:" in body, name


def test_demo_head_examples_equal_an_independent_capture(demo_report):
    from workbench.analyzers.examples import example_of

    run = demo_report.run
    examples = run.table("head_examples")
    prompts = run.table("prompts")
    ioi = prompts[prompts.set == "ioi"].prompt.iloc[0]
    model = wb.load_model("demo")
    ids = model.tokenizer(ioi, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the plain HF model, never wrapped: an independent oracle
        oracle = model.hf_model(input_ids=ids, output_attentions=True).attentions
    weights, positions, tokens, n = example_of(examples, "ioi", 2, 5)
    assert positions == list(range(n)) and tokens == model.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    np.testing.assert_allclose(weights, oracle[2][0, 5].numpy(), atol=1e-5)
    passkey = example_of(examples, "passkey", 2, 6)  # a long prompt keeps 32 positions: first, needle, last
    weights, positions, tokens, n = passkey
    assert len(positions) == 32 and n > 100 and positions[:2] == [0, 1] and positions[-8:] == list(range(n - 8, n))
    trial = prompts[prompts.set == "passkey"].prompt.iloc[0]
    needle = [r for r in wb.analyzers.retrieval.read_trials(None) if r["prompt"] == trial][0]["answer"]
    kept = "".join(t.lstrip("▁Ġ") for t in tokens)
    assert needle.replace(" ", "") in kept  # the retrieval head's last query reaches the needle, so it is kept
    assert set(prompts.set) >= {"run", "ioi", "colored_objects", "passkey"}
    section = re.search(r'<section id="prompts".*?</section>', demo_report.path.read_text(), re.S).group(0)
    assert "<b>ioi</b>: 16 prompts" in section and html.escape(ioi) in section


def test_causal_checks_are_read_by_ranking_name_and_a_ranking_that_does_not_beat_random_says_so(tmp_path):
    import pandas as pd

    from tests.dashboards.fixtures import make_run

    run = make_run(tmp_path / "run", ["sink_scores", "head_importance"])
    checks = pd.DataFrame([
        {"ranking": "sink_score", "k": 5, "top": 4.1, "bottom": 2.0, "random_median": 2.2, "random_lo": 2.0,
         "random_hi": 2.6, "metric": "held-out loss"},
        {"ranking": "sink_score", "k": 1, "top": 2.5, "bottom": 2.0, "random_median": 2.1, "random_lo": 2.0,
         "random_hi": 2.3, "metric": "held-out loss"},
        {"ranking": "head_importance.importance", "k": 5, "top": 2.3, "bottom": 2.0, "random_median": 2.2,
         "random_lo": 2.0, "random_hi": 2.6, "metric": "held-out loss"}])
    run.add_table("causal_checks", checks)
    text = render(run)[0]
    sinks = _block(text, "sinks")
    assert ("Causal check: top-5 ablated: held-out loss 4.1 vs bottom-5 2 and random 5-sets 2.2 [2, 2.6]." in sinks)
    importance = _block(text, "importance")
    assert "top-5 ablated: held-out loss 2.3" in importance and "does not beat random" in importance
    assert re.search(r'<p class="caveat">Most important heads.*?does not beat random', importance, re.S)


# -- CLI errors -----------------------------------------------------------------------------
# -- rendered in Chromium -------------------------------------------------------------------
@pytest.mark.browser
def test_demo_report_renders_every_figure_offline(demo_report, browser):  # noqa: F811
    assert rendered_figures(browser, demo_report.path.as_uri(), demo_report.n_figures) == demo_report.n_figures
    assert console_errors(browser) == []
    made = requests_made(browser, demo_report.path.as_uri())
    assert demo_report.path.as_uri() in made and all(u.startswith(("file:", "data:")) for u in made)


@pytest.mark.browser
def test_tiny_and_minilm_reports_render_offline(tiny_reports, minilm, browser, tmp_path):  # noqa: F811
    reports = [tiny_reports["llama"], tiny_reports["bert"],
               build(minilm, wb.load_prompts(model=minilm)[:2], tmp_path)]
    for built in reports:
        stored = [a for a in built.analyses if a in built.run]
        assert built.n_figures >= len(stored)  # at least one figure per computed analysis
        assert rendered_figures(browser, built.path.as_uri(), built.n_figures) == built.n_figures
        assert console_errors(browser) == []
        made = requests_made(browser, built.path.as_uri())
        assert built.path.as_uri() in made and all(u.startswith(("file:", "data:")) for u in made)  # nothing fetched
        with registry():
            assert render(built.run)[1] == built.n_figures
    text = browser.find_element("id", "analysis-first_key_mass").text  # the MiniLM page, still open
    assert "Not applicable to this model: " + CAUSAL_ONLY in text


@pytest.mark.browser
def test_report_paints_before_plotly_runs_draws_figures_as_they_scroll_and_keeps_the_nav(demo_report, browser):  # noqa: F811
    browser.get("about:blank")
    browser.get(demo_report.path.as_uri())
    assert wait_for(lambda: browser.execute_script("return !!window.wbDrawAll"), 60)
    fcp = browser.execute_script("return performance.getEntriesByName('first-contentful-paint')[0].startTime")
    assert fcp < browser.execute_script("return window.wbPlotlyAt")  # first paint came before plotly.js ran
    drawn = "return document.querySelectorAll('div.wb-figure[data-drawn]').length"
    first = wait_for(lambda: browser.execute_script(drawn), 30)
    assert 0 < first < demo_report.n_figures  # only the figures near the first screen
    findings = browser.find_element("id", "findings").text
    assert "Sink^ε" in findings and "retrieval heads" in findings and "ioi: a circuit of" in findings
    browser.execute_script("const f = document.querySelectorAll('div.wb-figure'); f[f.length - 1].scrollIntoView()")
    assert wait_for(lambda: browser.execute_script(drawn) > first, 30)  # drawn as they scroll into view
    assert browser.execute_script("return document.querySelector('nav').getBoundingClientRect().top") == 0  # sticky
    browser.execute_script("window.wbDrawAll()")
    assert wait_for(lambda: browser.execute_script(drawn) == demo_report.n_figures, 60)
    assert console_errors(browser) == []
