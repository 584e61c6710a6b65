"""The registered circuit tables on the demo: the circuits table marks the faithful circuit, the
curve follows its ranking and marks its size, the edge circuits are faithful on held-out rows, and
their findings, summaries and figures come through the registry."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analyzers import ANALYZERS


@pytest.fixture(scope="module")
def tables():
    torch.set_num_threads(1)
    demo = wb.load_model("demo")
    return {name: ANALYZERS[name].fn(demo, None) for name in ("circuits", "circuit_faithfulness_curve", "edge_circuits")}


def test_curve_marks_the_circuit_size_and_beats_random_sets(tables):
    circuits, curve = tables["circuits"], tables["circuit_faithfulness_curve"]
    assert list(circuits.columns) == ["task", "method", "layer", "head", "effect", "in_circuit"]
    for task in ("ioi", "colored_objects"):
        size = int(circuits[(circuits.task == task) & (circuits.method == "activation_patching")].in_circuit.sum())
        part = curve[curve.task == task].set_index("k")
        assert 0 < size <= 16 and part.index[part["in_circuit"]].tolist() == [size]
        assert part.loc[size, "top"] >= 0.8 > part.loc[size, "random_hi"]
        assert part.loc[size, "ablated_top"] < part.loc[size, "ablated_random_median"]  # removing it hurts more
        assert part.loc[32, "top"] == pytest.approx(1.0, abs=1e-5)  # every head kept: the full model
    text = " ".join(f.text for f in ANALYZERS["circuit_faithfulness_curve"].make_findings(curve, None))
    assert "held-out prompts" in text and "random" in text
    overlap = ANALYZERS["circuits"].make_findings(circuits, None)[-1].text
    assert "Random sets of these sizes among the 32 heads would share" in overlap and "p = " in overlap
    assert len(ANALYZERS["circuit_faithfulness_curve"].make_figures(curve)) == 2


def test_edge_circuits_are_faithful_and_drawn_as_layered_graphs(tables):
    frame = tables["edge_circuits"]
    assert list(frame.columns) == ["task", "upstream", "downstream", "score", "in_circuit", "faithfulness"]
    for _, part in frame.groupby("task"):
        assert 0 < part["in_circuit"].sum() <= len(part) // 2 and part["faithfulness"].iloc[0] >= 0.8
        top = part.loc[part["score"].abs().idxmax()]
        assert bool(top["in_circuit"])  # the circuit is top-|score| edges
    summary = ANALYZERS["edge_circuits"].make_summary(frame)
    assert summary["ioi edge circuit faithfulness"] >= 0.8
    figs = ANALYZERS["edge_circuits"].make_figures(frame)
    assert len(figs) == 2 and "edge circuit" in figs[0].layout.title.text
