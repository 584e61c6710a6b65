"""HTML reports: one self-contained file (plotly.js once, nothing fetched), a section per
registered analysis, top heads that match an independent computation, downsampled heatmaps,
rendering in headless Chromium from file://, and one-line CLI errors that leave no file behind."""

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
from workbench.report import page, render, report_model
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
                 applies=lambda m: None if m.is_causal else CAUSAL_ONLY, sources=("Test source, 2024",))


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
    """Figures the report must hold: each registered analysis's figures of its stored, non-empty table."""
    return sum(len(a.make_figures(run.table(n))) for n, a in ANALYZERS.items()
               if n in run and len(run.table(n)))


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


def test_top_heads_rank_real_scores_per_task_and_skip_flags_counts_and_coordinates():
    import pandas as pd

    rows = []
    for task, sign in (("ioi", 1.0), ("colors", -1.0)):
        for layer in range(2):
            for head in range(3):
                rows.append({"task": task, "layer": layer, "head": head, "pattern": f"type{head}",
                             "effect": sign * (3 * layer + head), "cluster": head, "umap_x": float(head),
                             "in_circuit": sign * (3 * layer + head) > 3})
    frame = pd.DataFrame(rows + [{"task": "ioi", "layer": -1, "head": -1, "pattern": "all", "effect": 99.0,
                                  "cluster": 0, "umap_x": 0.0, "in_circuit": True}])
    got = page.top_heads("circuits", frame, k=3)
    assert got == [["circuits [ioi]", "effect", "L1.H2 (5)", "L1.H1 (4)", "L1.H0 (3)"],  # layer -1 aggregate left out
                   ["circuits [colors]", "effect", "L0.H0 (0)", "L0.H1 (-1)", "L0.H2 (-2)"]]
    assert page.flags(frame) == "<p>in_circuit [ioi]: 2 of 6 heads; in_circuit [colors]: 0 of 6 heads</p>"
    assert page.top_heads("tokens", frame.assign(position=0)) == []  # token-level tables are not ranked


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_tiny_report_sections_top_heads_and_skips(tiny_reports, kind):
    built = tiny_reports[kind]
    text = built.path.read_text()
    check_self_contained(text)
    sections = dict(re.findall(r'<section id="analysis-(\w+)"[^>]*>(.*?)</section>', text, re.S))
    assert list(sections) == built.analyses  # one section per registered analysis, in registry order
    skipped = built.run.manifest.get("skipped", {})
    for name, body in sections.items():
        assert body.startswith(f"<h2>{html.escape(built.titles[name])}</h2>")
        if name in skipped:  # an analysis that does not apply says why instead of failing
            assert "Not applicable to this model: " + html.escape(skipped[name]) in body
        else:
            assert f"table <code>{name}</code>: {len(built.run.table(name))} rows" in body
    assert text.count('class="wb-figure"') == built.n_figures and f'name="wb-figures" content="{built.n_figures}"' in text
    section = sections["first_key_mass"]
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
    want = [f"L{int(i) // model.n_heads}.H{int(i) % model.n_heads} ({mass.flatten()[i]:.4g})" for i in best]
    row = re.search(r"<tr><td>first_key_mass</td><td>first_mass</td>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == want
    heavy = int((mass > 0.5).sum())
    assert f"is_heavy: {heavy} of {model.n_layers * model.n_heads} heads" in section


def test_demo_report_default_path(demo_report):
    text = demo_report.path.read_text()
    check_self_contained(text)
    assert demo_report.path.stat().st_size < 15e6
    sections = re.findall(r'<section id="analysis-(\w+)"', text)
    assert sections == demo_report.analyses and demo_report.model == "demo"
    assert set(demo_report.run.tables) | set(demo_report.run.manifest.get("skipped", {})) >= set(ANALYZERS)
    assert text.count('class="wb-figure"') == demo_report.n_figures > len(ANALYZERS)
    provenance = re.search(r'<section id="provenance".*?</section>', text, re.S).group(0)
    manifest = demo_report.run.manifest
    for fact in (manifest["prompts_hash"], manifest["versions"]["torch"], "LlamaForCausalLM"):
        assert fact in provenance


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
