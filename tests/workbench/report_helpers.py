"""Shared by the report tests: a causal-only test analysis, a registry swap that is always
restored, building a run and its report, counting the figures a report must hold, and checking
that a page is self-contained and renders."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from plotly.offline import get_plotlyjs

import workbench as wb
from tests.browser import requests_made, wait_for
from workbench.analyzers import ANALYZERS, Analyzer
from workbench.cli import main
from workbench.glossary import Term
from workbench.report import sections

import pytest


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


def cli(capsys, *args):
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
