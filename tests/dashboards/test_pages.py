"""The Layer, Heads side by side and Compare pages as plain functions: thumbnails equal the
model's patterns and a click opens the head, stored examples draw without a model, and two runs
of different models compare by relative depth."""

from __future__ import annotations

import numpy as np

from dashboards import data, views
from tests.dashboards.conftest import page
from tests.dashboards.fixtures import find_components, frames, text_of


def _graphs(body) -> list:
    return find_components(body, kind="Graph")


def test_layer_view_draws_every_head_and_a_click_opens_it(request_ctx, tiny_dir):
    layer = page("layer")
    key, error = layer.compute_layer("w1 w2 w3 w1 w2", 1, "tiny")
    assert error is None
    fig = layer.show_layer(key, "tiny")
    expected, _ = data.layer_patterns(str(tiny_dir), "w1 w2 w3 w1 w2", 1)
    assert [t.name for t in fig.data] == ["L1H0", "L1H1", "L1H2", "L1H3"]
    np.testing.assert_allclose(fig.data[2].z, expected[2])
    click = {"points": [{"curveNumber": 2, "x": "1: w1", "y": "3: w1", "customdata": [1, 2]}]}
    selection, href = layer.open_head(click, 1, "tiny")
    assert selection == {"run": "tiny", "layer": 1, "head": 2} and href == "/head?run=tiny&layer=1&head=2"
    dash_click = {"points": [{"curveNumber": 3, "x": "1: w1", "y": "3: w1", "z": 0.2}]}  # what Dash really sends
    assert layer.open_head(dash_click, 1, "tiny")[0] == {"run": "tiny", "layer": 1, "head": 3}
    assert views.names_heads(fig)


def test_stored_examples_draw_without_a_model(request_ctx, tmp_path, monkeypatch):
    import workbench as wb
    from tests import tiny_models

    model = wb.load_model("tiny-x", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    run = wb.analyze(model, ["w1 w2 w3 w4"], out=tmp_path / "stored", analyses=["prompts", "head_examples"],
                     progress=False)
    monkeypatch.setattr(data, "served_root", lambda: tmp_path)
    assert data.stored_examples(run) == ["prompt", "repeated"] and data.model_source(run) is None
    assert data.run_prompts(run)[0] == "w1 w2 w3 w4"  # from the run's prompts table
    fig = page("layer").show_layer({"example": "prompt", "layer": 0}, "stored")
    patterns = wb.capture_patterns(model, ["w1 w2 w3 w4"])  # {layer: (1, head, query, key)}, independently
    np.testing.assert_allclose(fig.data[1].z, patterns[0][0, 1].numpy(), atol=1e-6)
    out = page("head").draw({"example": "repeated", "layer": 1}, 1, 3, "whole", 0, None, "from", None, None, "stored")
    labels = list(out[0].data[0].x)
    assert labels[0] == "0: <s>" and len(labels) == len(set(labels)) == 25  # 12 random tokens twice, after <s>
    panels = page("heads").panels({"example": "prompt"}, ["L0H1", "L1H2", "bad"], "stored")
    assert len(panels) == 2
    np.testing.assert_allclose(panels[1].children.figure.data[0].z, patterns[1][0, 2].numpy(), atol=1e-6)


def test_compare_page_two_runs_of_different_models(request_ctx, runs_root):
    compare = page("compare")
    body = compare.comparison(runs_root, "full", "tiny")
    numbers = find_components(body, kind="Table")[0]
    text = text_of(numbers)
    assert "4 × 8" in text and "2 × 4" in text  # the fixture model and the tiny Llama
    sinks = frames()["sink_scores"]
    assert f"{100 * (sinks.sink_score > 0.3).mean():.4g}" in text  # Sink^ε of the full run, from its summary
    assert "differ in shape" in text_of(body)
    graphs = _graphs(body)
    assert graphs and all(g.figure.layout.xaxis.title.text.startswith("relative depth") for g in graphs)
    same = compare.comparison(runs_root, "full", "full")
    assert "same shape" in text_of(same) and len(_graphs(same)) > len(graphs)


