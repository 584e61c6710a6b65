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
    assert [list(c) for c in trace.customdata][:2] == [[0, 1], [1, 2]]  # lists: plotly keeps them in click events
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


def test_rankings_follow_the_scores_direction_and_keep_the_sign():
    frame = _heads([0.2, -0.9, 0.5, 0.0, -0.1, 0.3])
    (bars,) = figures.importance_ranking(frame, direction="abs").data
    assert list(bars.x) == ["L0H1", "L0H2", "L1H2", "L0H0", "L1H1", "L1H0"]  # by |value|
    np.testing.assert_allclose(bars.y[:2], [-0.9, 0.5])  # the sign is kept
    assert bars.marker.color[0] != bars.marker.color[1]  # and coloured
    (low,) = figures.importance_ranking(frame, direction="low").data
    assert list(low.x[:2]) == ["L0H1", "L1H1"]


def test_ringed_heads_leave_the_click_to_the_cell_under_them():
    frame = _heads([0.1, 0.9, 0.3, 0.0, 0.5, 0.7]).assign(flag=[False, True, False, False, False, True])
    fig = figures.ring_heads(figures.head_grid(frame, "importance"), frame[frame.flag], "flagged")
    grid, rings = fig.data
    assert rings.hoverinfo == "skip"  # the heatmap cell under a ring takes the hover and the click
    assert list(rings.text) == ["L0H1", "L1H2"] and [list(c) for c in rings.customdata] == [[0, 1], [1, 2]]
    assert grid.customdata[0][1].tolist() == [0, 1]


def test_example_pattern_labels_every_position_so_repeats_never_merge():
    tokens = ["<s>", "When", "David", "and", "David"]
    weights = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
    fig = figures.example_pattern(weights, [0, 1, 2, 3, 9], tokens, n_tokens=12, title="L0H1")
    (trace,) = fig.data
    assert list(trace.x) == ["0: <s>", "1: When", "2: David", "3: and", "9: David"]
    assert len(set(trace.x)) == 5 and np.asarray(trace.z).shape == (5, 5)
    assert "5 of 12 positions" in fig.layout.title.text
    full = figures.attention_pattern(weights, tokens)
    assert list(full.data[0].y) == ["0: <s>", "1: When", "2: David", "3: and", "4: David"]


def test_layer_thumbnails_one_heatmap_per_head_each_naming_its_head():
    rng = np.random.default_rng(0)
    p = rng.random((6, 5, 5))
    fig = figures.layer_thumbnails(p, ["a", "b", "a", "b", "c"], layer=3)
    assert [t.name for t in fig.data] == [f"L3H{h}" for h in range(6)]
    assert fig.data[4].customdata[2][1] == [3, 4]  # every cell of head 4's thumbnail names (3, 4)
    np.testing.assert_allclose(fig.data[4].z, p[4])
    long = figures.layer_thumbnails(rng.random((2, 100, 100)), [f"t{i}" for i in range(100)], layer=0, max_side=48)
    assert np.asarray(long.data[0].z).shape == (34, 34)  # ceil(100 / 48) = 3 → 34 blocks


def test_depth_profile_is_the_median_per_layer_on_relative_depth():
    a = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2] * 2, "s": [0.1, 0.2, 0.9, 0.5, 0.5, 0.6]})
    b = pd.DataFrame({"layer": [0, 1, 2, 3], "head": [0] * 4, "s": [1.0, 2.0, 3.0, 4.0]})
    fig = figures.depth_profile({"A": a, "B": b}, "s")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    np.testing.assert_allclose(lines[0].x, [0.0, 1.0])
    np.testing.assert_allclose(lines[0].y, [0.2, 0.5])
    np.testing.assert_allclose(lines[1].x, [0, 1 / 3, 2 / 3, 1])
    diff = figures.head_difference(a, a.assign(s=a.s * 2), "s")
    np.testing.assert_allclose(diff.data[0].z, [[0.1, 0.2, 0.9], [0.5, 0.5, 0.6]])
