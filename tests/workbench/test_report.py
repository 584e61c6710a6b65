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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.offline import get_plotlyjs

import workbench as wb
from tests import tiny_models
from tests.browser import browser, console_errors, requests_made, wait_for  # noqa: F401  (fixture)
from workbench.analyzers import ANALYZERS, Analyzer
from workbench.cli import main
from workbench.glossary import Term
from workbench.report import page, render, report_model, sections
from workbench.report.figures import downsample_heatmaps

CAUSAL_ONLY = "needs a causal model: an encoder's first token is not a shared prefix"


def first_key_mass(model, prompts):
    """Test analysis: mean attention each query puts on key 0 (one prompt at a time, no padding)."""
    rows = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    for prompt in prompts:
        for layer, pattern in wb.capture_patterns(model, [prompt]).items():  # (1, head, query, key)
            rows[layer] += pattern[0, :, :, 0].double().mean(-1)
    rows /= len(prompts)
    layer, head = torch.meshgrid(torch.arange(model.n_layers), torch.arange(model.n_heads), indexing="ij")
    import pandas as pd

    return pd.DataFrame({"layer": layer.flatten().numpy(), "head": head.flatten().numpy(),
                         "first_mass": rows.flatten().numpy(), "is_heavy": (rows > 0.5).flatten().numpy()})


EXTRA = Analyzer("first_key_mass", first_key_mass, "First-key mass (test analysis)",
                 applies=lambda m: None if m.is_causal else CAUSAL_ONLY, sources=("Test source, 2024",),
                 glossary={"first_mass": Term("first_mass", "mean over queries of A[t, 0]", "[0, 1]",
                                              "more attention on key 0", "Test source, 2024"),
                           "is_heavy": Term("is_heavy", "first_mass > 0.5", "true/false", direction=None)})


@contextmanager
def registry(*names):
    """ANALYZERS restricted to ``names`` (all registered when none) plus the causal-only test
    analysis; the real registry is restored afterwards."""
    saved = dict(ANALYZERS)
    ANALYZERS.clear()
    ANALYZERS.update({n: a for n, a in saved.items() if not names or n in names})
    ANALYZERS[EXTRA.name] = EXTRA
    try:
        yield list(ANALYZERS)
    finally:
        ANALYZERS.clear()
        ANALYZERS.update(saved)


@dataclass
class Built:
    model: object
    run: wb.Run
    path: Path
    n_figures: int  # what the registered analyses' figure functions make of the stored tables
    analyses: list  # the registry the report was written with
    titles: dict


def build(model, prompts, folder: Path) -> Built:
    """Every registered analysis (plus the test one) into a run, and its report."""
    with registry() as names:
        run = wb.analyze(model, prompts, out=folder / "run", progress=False)
        path = wb.report(run, folder / "report.html", model=model, prompts=prompts, progress=False)
        return Built(model, run, path, expected_figures(run), names, {n: a.title for n, a in ANALYZERS.items()})


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


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def expected_figures(run) -> int:
    """Figures the report must hold: each registered analysis's figures of its stored, non-empty
    table, plus one pattern per head drawn in the findings (heads named there, at most
    `sections.CARDS` per family, when the run stores head examples)."""
    from workbench.analyzers import families

    figures = sum(len(a.make_figures(run.table(n))) for n, a in ANALYZERS.items()
                  if n in run and len(run.table(n)) and n not in sections.SUPPORT)
    if "head_examples" not in run:
        return figures
    for names in families().values():
        drawn = set()
        for name in [n for n in names if n in run]:
            for finding in ANALYZERS[name].make_findings(run.table(name), run):
                drawn |= {(h.layer, h.head, finding.example or ANALYZERS[name].example) for h in finding.heads}
        figures += min(len(drawn), sections.CARDS)
    return figures


def check_self_contained(text: str) -> None:
    bundle = get_plotlyjs()
    assert text.count(bundle) == 1  # plotly.js inlined exactly once ...
    rest = text.replace(bundle, "")
    assert "plotly.js v" not in rest and "Plotly, Inc." not in rest  # ... and no second (other) copy
    assert not re.search(r"<script[^>]*\bsrc\s*=", rest, re.I)  # no external script
    assert not re.search(r"<link[^>]*href=\"(?!data:|#)", rest)  # no stylesheet or icon fetched
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", rest) and "@import" not in rest


def rendered_figures(driver, url: str, expected: int) -> int:
    requests_made(driver)  # drain what the blank tab loaded
    driver.get(url)
    wait_for(lambda: driver.execute_script("return !!window.wbDrawAll"), timeout=60)
    driver.execute_script("window.wbDrawAll()")  # figures below the fold are drawn as they scroll into view
    count = "return document.querySelectorAll('.js-plotly-plot .main-svg').length ? " \
            "document.querySelectorAll('.js-plotly-plot').length : 0"
    wait_for(lambda: driver.execute_script(count) >= expected, timeout=60)
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('div.wb-figure.js-plotly-plot'))"
        ".filter(d => d.querySelector('svg.main-svg .cartesianlayer, svg.main-svg .heatmaplayer, "
        "svg.main-svg .plot')).length")


# -- pure parts -----------------------------------------------------------------------------
def test_downsampling_is_a_block_mean_and_leaves_head_grids_alone():
    z = np.arange(600 * 1000, dtype=float).reshape(600, 1000)
    fig, factor = downsample_heatmaps(go.Figure(go.Heatmap(z=z, x=list(range(1000)), y=list(range(600)))),
                                      max_side=100)
    small = np.asarray(fig.data[0].z)
    assert factor == 10 and small.shape == (100, 100)  # each axis reduced on its own: blocks of 6 x 10
    np.testing.assert_allclose(small, z.reshape(100, 6, 100, 10).mean(axis=(1, 3)))
    assert list(fig.data[0].x[:3]) == [0, 10, 20] and list(fig.data[0].y[:3]) == [0, 6, 12]
    assert "downsampled" in fig.layout.title.text
    ragged, _ = downsample_heatmaps(go.Figure(go.Heatmap(z=np.ones((5, 7)))), max_side=3)
    assert np.asarray(ragged.data[0].z).shape == (3, 3) and np.allclose(ragged.data[0].z, 1.0)
    grid = go.Figure(go.Heatmap(z=np.ones((12, 8)), customdata=np.zeros((12, 8, 2))))
    assert downsample_heatmaps(grid)[1] == 1 and grid.data[0].customdata is not None


def test_ranked_heads_follow_each_scores_meaning_per_task_and_skip_flags_counts_and_coordinates(tmp_path):
    import pandas as pd

    rows = []
    for task, sign in (("ioi", 1.0), ("colors", -1.0)):
        for layer in range(2):
            for head in range(3):
                rows.append({"task": task, "layer": layer, "head": head, "pattern": f"type{head}",
                             "effect": sign * (3 * layer + head) - 2.0, "cluster": head, "umap_x": float(head),
                             "in_circuit": sign * (3 * layer + head) > 3})
    circuits = pd.DataFrame(rows + [{"task": "ioi", "layer": -1, "head": -1, "pattern": "all", "effect": 99.0,
                                     "cluster": 0, "umap_x": 0.0, "in_circuit": True}])
    summary = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "entropy": [2.0, 0.5, 1.0, 3.0],
                            "max_prob": [0.2, 0.9, 0.5, 0.1], "n_queries": 10})
    run = wb.Run.create(tmp_path / "run", prompts=["x"])
    run.add_table("circuits", circuits)
    run.add_table("head_summary", summary)
    text = sections.ranked_section(sections.Tables(run))
    rows = {}
    for m in re.finditer(r"<tr><td>(.*?)</td>(.*?)</tr>", text):
        cells = re.findall(r"<td>(.*?)</td>", m.group(2))
        rows[m.group(1) + " " + re.sub(r"<[^>]+>", "", cells[0])] = cells[1:]
    # effect ranks by |value| with the sign shown; the layer -1 aggregate is left out
    ioi = next(v for k, v in rows.items() if k.startswith("circuits [ioi]"))
    assert ioi == ["largest |value| first", "L1H2 (+3)", "L0H0 (-2)", "L1H1 (+2)", "L0H1 (-1)", "L1H0 (+1)"]
    colors = next(v for k, v in rows.items() if k.startswith("circuits [colors]"))
    assert colors[:3] == ["largest |value| first", "L1H2 (-7)", "L1H1 (-6)"]
    entropy = next(v for k, v in rows.items() if "entropy" in k)  # focused heads first, not the most diffuse
    assert entropy[:3] == ["lowest first", "L0H1 (0.5)", "L1H0 (1)"]
    assert not any("cluster" in k or "umap" in k or "in circuit" in k or "n_queries" in k for k in rows)
    assert sections.flags(circuits) == "<p>in_circuit [ioi]: 2 of 6 heads; in_circuit [colors]: 0 of 6 heads</p>"
    assert sections.per_head_parts(circuits.assign(position=0)) == []  # token-level tables are not ranked


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
    assert needle.strip() in kept  # the retrieval head's last query reaches the needle, so it is kept
    assert set(prompts.set) >= {"run", "ioi", "colored_objects", "passkey"}
    section = re.search(r'<section id="prompts".*?</section>', demo_report.path.read_text(), re.S).group(0)
    assert f"<b>ioi</b>: 16 prompts" in section and html.escape(ioi) in section


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


def test_missing_analyses_are_computed_or_reported_as_missing(tmp_path):
    model = wb.load_model("tiny-gpt2", hf_model=tiny_models.hf_model("gpt2"), tokenizer=tiny_models.tokenizer("gpt2"))
    with registry("head_summary"):
        run = wb.analyze(model, tiny_models.PROMPTS, out=tmp_path / "run", analyses=["head_summary"], progress=False)
        with pytest.raises(wb.WorkbenchError, match="lacks analyses and its model .'tiny-gpt2'. was built in memory"):
            wb.report(run, tmp_path / "a.html")
        assert not (tmp_path / "a.html").exists()
        text = wb.report(run, tmp_path / "a.html", compute=False).read_text()
        assert "Not computed in this run" in re.search('id="analysis-first_key_mass".*?</section>', text, re.S).group(0)
        other = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"),
                              tokenizer=tiny_models.tokenizer("llama"))
        with pytest.raises(wb.WorkbenchError, match="was made with model 'tiny-gpt2', not 'tiny-llama'"):
            wb.report(run, tmp_path / "b.html", model=other, prompts=tiny_models.PROMPTS)
        with pytest.raises(wb.WorkbenchError, match="was made from other prompts than the prompts given"):
            wb.report(run, tmp_path / "b.html", model=model, prompts=["w1 w2"])
        wb.report(tmp_path / "run", tmp_path / "b.html", model=model, prompts=tiny_models.PROMPTS, progress=False)
    assert "first_key_mass" in wb.Run.open(tmp_path / "run")  # computed into the run


def test_a_failing_analysis_leaves_the_old_report_and_no_temp_file(tmp_path, monkeypatch):
    def broken(model, prompts):
        raise RuntimeError("boom in the middle of an analysis")

    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    with registry("head_summary"):
        ANALYZERS["broken"] = Analyzer("broken", broken, "Broken")
        run = wb.analyze(model, tiny_models.PROMPTS, out=tmp_path / "run", analyses=["head_summary"], progress=False)
        (tmp_path / "report.html").write_text("old report")
        with pytest.raises(RuntimeError, match="boom"):
            wb.report(run, tmp_path / "report.html", model=model, prompts=tiny_models.PROMPTS, progress=False)
    assert (tmp_path / "report.html").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run"]


# -- CLI errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["report", "{tmp}/no-run", "--out", "{tmp}/r.html"], "run directory '{tmp}/no-run' does not exist"),
    (["report", "--model", "nobody/nothing", "--out", "{tmp}/r.html"], "cannot load hub id 'nobody/nothing'"),
    (["report", "--model", "/no/such/model", "--out", "{tmp}/r.html"], "model directory '/no/such/model' does not exist"),
    (["report", "--out", "{tmp}"], "report output '{tmp}' is a directory: expected a file path such as "
                                   "'{tmp}/report.html'"),
    (["report", "--out", "{tmp}/file.txt/r.html"], "cannot write report '{tmp}/file.txt/r.html': "
                                                   "'{tmp}/file.txt' is not a directory"),
    (["report", "--out", "{tmp}/no/dir/r.html"], "cannot write report '{tmp}/no/dir/r.html': "
                                                 "directory '{tmp}/no/dir' does not exist"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a directory")
    code, out, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: " + message.format(tmp=tmp_path)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no report, no temp file, no runs/


def test_cli_reports_an_existing_run(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_models.hf_model("llama").save_pretrained(model_dir)
    tiny_models.tokenizer("llama").save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_models.PROMPTS) + "\n")
    code, _, _ = _cli(capsys, "analyze", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "run",
                      "--analysis", "head_summary")
    assert code == 0
    with registry("head_summary") as names:
        code, out, err = _cli(capsys, "report", tmp_path / "run", "--prompts", prompts, "--out", tmp_path / "r.html")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'r.html'} (")
    run = wb.Run.open(tmp_path / "run")
    assert run.tables == names  # the missing test analysis was computed, with the run's own model
    check_self_contained((tmp_path / "r.html").read_text())


def test_the_cached_run_is_reused_until_the_weights_change(tmp_path):
    model_dir = tmp_path / "model"
    tiny_models.hf_model("llama").save_pretrained(model_dir)
    tiny_models.tokenizer("llama").save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_models.PROMPTS) + "\n")
    with registry("head_summary"):
        report_model(str(model_dir), tmp_path / "a.html", prompts=prompts, runs=tmp_path / "runs", progress=False)
        (cached,) = (tmp_path / "runs").iterdir()
        assert cached.name == f"model-{wb.run.prompts_hash(tiny_models.PROMPTS)[:8]}"
        written = (cached / "head_summary.parquet").stat().st_mtime_ns
        report_model(str(model_dir), tmp_path / "b.html", prompts=prompts, runs=tmp_path / "runs", progress=False)
        assert (cached / "head_summary.parquet").stat().st_mtime_ns == written  # reused, not recomputed
        later = time.time() + 120
        os.utime(model_dir / "model.safetensors", (later, later))  # as if the model were retrained
        with pytest.raises(wb.WorkbenchError, match=f"the cached run '{cached}' was made before the weights"):
            report_model(str(model_dir), tmp_path / "c.html", prompts=prompts, runs=tmp_path / "runs")
    assert not (tmp_path / "c.html").exists()


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


def test_the_inner_bar_counts_forwards_and_leaves_no_hook(capsys):
    from workbench.progress import forward_bar

    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    ids, mask = model.to_tokens(tiny_models.PROMPTS[:1])
    with torch.no_grad():
        plain = model.hf_model(input_ids=ids).logits
        with forward_bar(model, "test", enable=True) as bar:
            counted = model.hf_model(input_ids=ids).logits
            model.bridge(ids)
            wb.capture_patterns(model, tiny_models.PROMPTS[:2])
    assert bar.n == 3  # one per forward, whichever entry point ran it
    assert torch.equal(plain, counted)  # the hook does not touch the inputs
    assert not model.hf_model._forward_pre_hooks and not model.bridge._forward_pre_hooks


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
    browser.execute_script("document.getElementById('provenance').scrollIntoView()")
    assert wait_for(lambda: browser.execute_script(drawn) > first, 30)  # drawn as they scroll into view
    assert browser.execute_script("return document.querySelector('nav').getBoundingClientRect().top") == 0  # sticky
    browser.execute_script("window.wbDrawAll()")
    assert wait_for(lambda: browser.execute_script(drawn) == demo_report.n_figures, 60)
    assert console_errors(browser) == []
