"""Figure functions on small hand-written frames: trace types, the data they show, customdata
for click-to-select, and clear errors for frames of the wrong kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench import figures
from workbench.errors import WorkbenchError


def _heads(values):
    """A per-head frame over 2 layers x 3 heads with one score."""
    return pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2], "importance": values})


def test_head_grid_cells_carry_layer_and_head():
    fig = figures.head_grid(_heads([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), "importance")
    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_allclose(trace.z, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    assert trace.customdata[1][2].tolist() == [1, 2]


def test_token_sink_view_averages_heads_per_layer():
    rows = []
    for layer in (0, 1):
        for head in (0, 1):
            for pos, tok in enumerate(["<s>", "a", "b"]):
                alpha = {0: 0.9, 1: 0.05, 2: 0.05}[pos] if head == 0 else 1 / 3
                rows.append((0, layer, head, pos, tok, alpha))
                rows.append((1, layer, head, pos, tok + "!", 0.0))  # another prompt, ignored
    frame = pd.DataFrame(rows, columns=["prompt_id", "layer", "head", "position", "token", "alpha"])
    fig = figures.token_sink_view(frame)
    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_allclose(trace.z[0], [(0.9 + 1 / 3) / 2, (0.05 + 1 / 3) / 2, (0.05 + 1 / 3) / 2])
    assert list(trace.x) == [0, 1, 2] and list(trace.y) == [0, 1]
    assert trace.customdata[1][2].tolist() == [1, 2]  # [layer, position]
    assert trace.text[0][0] == "0: <s>"
    assert figures.token_sink_view(frame, prompt_id=1).data[0].text[0][1] == "1: a!"
    with pytest.raises(WorkbenchError, match="prompt_id 7 is not in the frame"):
        figures.token_sink_view(frame, prompt_id=7)


def test_token_sink_view_downsamples_long_prompts_keeping_the_sink():
    n = 1000
    alpha = np.full(n, 0.001)
    alpha[637] = 0.8  # a hidden sink deep in the prompt
    frame = pd.DataFrame({"prompt_id": 0, "layer": 0, "head": 0, "position": np.arange(n),
                          "token": [f"t{i}" for i in range(n)], "alpha": alpha})
    (trace,) = figures.token_sink_view(frame, max_positions=100).data
    assert np.asarray(trace.z).shape == (1, 100)
    assert np.asarray(trace.z).max() == pytest.approx(0.8)
    assert trace.customdata[0][int(np.argmax(trace.z[0]))][1] == 630  # the bin's first position


def test_importance_ranking_sorts_heads_and_keeps_ids():
    fig = figures.importance_ranking(_heads([0.1, 0.9, 0.3, 0.0, 0.5, 0.7]))
    (trace,) = fig.data
    assert trace.type == "bar"
    assert list(trace.x) == ["L0H1", "L1H2", "L1H1", "L0H2", "L0H0", "L1H0"]
    np.testing.assert_allclose(trace.y, [0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    assert trace.customdata.tolist()[:2] == [[0, 1], [1, 2]]
    assert len(figures.importance_ranking(_heads([0.1] * 6), top=2).data[0].x) == 2
    with pytest.raises(WorkbenchError, match="importance_ranking needs column"):
        figures.importance_ranking(_heads([0.1] * 6), score="nope")


def test_pruning_curve_figure_has_loss_and_accuracy():
    frame = pd.DataFrame({"step": [0, 1, 2], "n_pruned": [0, 1, 2], "fraction_pruned": [0.0, 0.5, 1.0],
                          "loss": [2.0, 2.5, 6.0], "accuracy": [0.6, 0.4, 0.0], "pruned": ["", "L0H1", "L0H0"]})
    loss, accuracy = figures.pruning_curve_figure(frame).data
    assert loss.type == accuracy.type == "scatter"
    np.testing.assert_allclose(loss.x, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(loss.y, [2.0, 2.5, 6.0])
    np.testing.assert_allclose(accuracy.y, [0.6, 0.4, 0.0])
    assert accuracy.yaxis == "y2" and list(loss.text) == ["", "L0H1", "L0H0"]


def test_umap_scatter_one_trace_per_pattern_with_layer_head_customdata():
    frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "umap_x": [0.0, 1.0, 2.0, 3.0],
                          "umap_y": [1.0, 0.0, 1.0, 0.0], "pattern": ["sink", "local", "sink", "induction"],
                          "entropy": [0.1, 0.2, 0.3, 0.4], "induction": [0.0, 0.0, 0.0, 0.6]})
    fig = figures.umap_scatter(frame)
    assert [t.name for t in fig.data] == ["induction", "local", "sink"]
    assert all(t.type == "scatter" for t in fig.data)
    sink = fig.data[2]
    np.testing.assert_allclose(sink.x, [0.0, 2.0])
    assert sink.customdata[:, :2].tolist() == [[0, 0], [1, 0]]
    assert list(sink.text) == ["L0H0", "L1H0"]
    assert "induction" in fig.data[0].hovertemplate and fig.data[0].customdata[0, 3] == pytest.approx(0.6)


def test_massive_activations_figure_and_its_empty_case():
    frame = pd.DataFrame({"prompt_id": [0, 0], "layer": [1, 2], "position": [0, 0], "token": ["<s>", "<s>"],
                          "dim": [7, 7], "value": [-300.0, 250.0], "ratio": [2000.0, 1500.0]})
    (trace,) = figures.massive_activations_figure(frame).data
    assert trace.type == "scatter"
    np.testing.assert_allclose(trace.y, [300.0, 250.0])
    assert trace.customdata[0].tolist() == [0, 0, 7, 2000]
    empty = figures.massive_activations_figure(frame.iloc[:0])
    assert not empty.data and "no massive activations" in empty.layout.annotations[0].text


def test_secondary_sinks_figure_counts_by_lifetime():
    frame = pd.DataFrame({"prompt_id": [0, 0, 1], "position": [3, 5, 2], "token": [".", ",", "."],
                          "start_layer": [1, 2, 1], "end_layer": [2, 2, 2], "n_layers": [2, 1, 2],
                          "mean_cos": [0.95, 0.93, 0.97]})
    (trace,) = figures.secondary_sinks_figure(frame).data
    assert trace.type == "bar"
    assert list(trace.x) == [1, 2] and list(trace.y) == [1, 2]
    assert trace.text[1] == "."
    assert not figures.secondary_sinks_figure(frame.iloc[:0]).data


def test_registered_figures_draw_their_own_tables():
    """Every analysis of this issue hands its frame to figures that accept it."""
    import workbench as wb

    sinks = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "sink_score": [0.9, 0.1], "is_sink": [True, False]})
    sinks.attrs["eps"] = 0.3
    figs = wb.ANALYZERS["sink_scores"].make_figures(sinks)
    assert "50%" in figs[0].layout.title.text
    imp = _heads([0.1, 0.9, 0.3, 0.0, 0.5, 0.7]).assign(raw=0.0)
    assert [f.data[0].type for f in wb.ANALYZERS["head_importance"].make_figures(imp)] == ["bar", "bar", "heatmap"]
