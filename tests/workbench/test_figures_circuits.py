"""Circuit figures: the edge graph draws the circuit's strongest edges between layered nodes with
sign, strength and entry point visible; the faithfulness curve carries the table's numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.errors import WorkbenchError
from workbench.figures.circuits import edge_graph, faithfulness_curve


def edges_frame():
    rows = [("input", "a0.h1<v>", 0.9, True), ("a0.h1", "a1.h0<k>", 0.8, True), ("a1.h0", "logits", 0.7, True),
            ("a0.h0", "a1.h1<q>", -0.5, True), ("m0", "logits", 0.01, False), ("input", "m0", 0.02, False)]
    return pd.DataFrame(rows, columns=["upstream", "downstream", "score", "in_circuit"])


def test_edge_graph_draws_the_circuit_in_layers():
    fig = edge_graph(edges_frame())
    lines = [t for t in fig.data if t.mode == "lines" and t.x[0] is not None]
    assert len(lines) == 4  # the circuit's four edges, not the two outside it
    by_text = {t.text.split("<br>")[0]: t for t in lines}
    key = by_text["a0.h1 → a1.h0<k>"]
    assert key.line.dash == "dash" and key.line.color == "#4c78a8"
    assert (key.x[0], key.x[-1]) == (1.0, 3.0)  # attn 0 column -> attn 1 column
    assert by_text["a0.h0 → a1.h1<q>"].line.color == "#e45756"  # negative: opposes the behaviour
    assert by_text["input → a0.h1<v>"].line.width > by_text["a1.h0 → logits"].line.width
    nodes = next(t for t in fig.data if t.mode == "markers+text")
    assert list(nodes.text) == ["input", "a0.h0", "a0.h1", "a1.h0", "a1.h1", "logits"]
    assert "4 of 6 edges; circuit: 4 edges" in fig.layout.title.text
    assert len([t for t in edge_graph(edges_frame(), top=2).data if t.mode == "lines" and t.x[0] is not None]) == 2


def test_faithfulness_curve_shows_top_and_random_sets():
    curve = pd.DataFrame({"k": [4, 1, 2], "top": [0.9, 0.2, 0.5], "random_median": [0.1, 0.0, 0.05],
                          "random_lo": [0.0, -0.1, 0.0], "random_hi": [0.3, 0.1, 0.1]})
    fig = faithfulness_curve(curve)
    top = next(t for t in fig.data if t.name == "top-k by |effect|")
    assert list(top.x) == [1, 2, 4] and list(top.y) == [0.2, 0.5, 0.9]
    assert list(next(t for t in fig.data if t.name == "random k-sets (median)").y) == [0.0, 0.05, 0.1]
    with pytest.raises(WorkbenchError, match=r"random_hi"):
        faithfulness_curve(curve.drop(columns="random_hi"))
    with pytest.raises(WorkbenchError, match="unknown graph node 'a0.x1'"):
        edge_graph(pd.DataFrame({"upstream": ["a0.x1"], "downstream": ["logits"], "score": [1.0]}))
