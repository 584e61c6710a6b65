"""One retrieval set everywhere (Wu et al.'s 0.1) and its causal test on the demo: NIAH accuracy
with the set ablated, beside random sets of its size drawn from all heads, on held-out trials."""

from __future__ import annotations

import pandas as pd
import pytest

import workbench as wb
from workbench.analyzers import niah
from workbench.analyzers.causal import random_sets
from workbench.analyzers.retrieval import read_trials
from workbench.models import data_dir

needs_demo = pytest.mark.skipif(not (data_dir() / "demo" / "config.json").exists(), reason="data/demo is not there yet")


def test_retrieval_set_is_the_wu_threshold_set_strongest_first():
    scores = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "retrieval_score": [0.05, 0.4, 0.11, 0.9],
                           "is_retrieval": [False, True, True, True]})
    chosen = niah.retrieval_set(scores)
    assert list(zip(chosen["layer"], chosen["head"])) == [(1, 1), (0, 1), (1, 0)]
    assert chosen.retrieval_score.tolist() == [0.9, 0.4, 0.11]  # each head's score, weak ones visibly weak
    with pytest.raises(wb.WorkbenchError, match="a retrieval_scores frame is needed"):
        niah.retrieval_set(scores.drop(columns="is_retrieval"))


@needs_demo
def test_demo_niah_controls_ablate_the_labelled_set_and_random_sets_of_its_size():
    model = wb.load_model("demo")
    rows = read_trials(None)
    scored = [r for r in rows if r["context_length"] == 128][:6]
    held = [r for r in rows if r["context_length"] == 256][:4]
    scores = wb.retrieval_scores(model, scored)
    frame = niah.niah_controls(model, scored + held, scores, n_random=3, seed=0, scored=[r["prompt"] for r in scored])
    assert list(frame.columns) == ["condition", "context_length", "depth", "accuracy", "n_trials", "heads", "held_out"]
    assert frame.condition.unique().tolist() == ["full", "retrieval set ablated", "random set 1", "random set 2",
                                                 "random set 3", "random sets (median)"]
    chosen = niah.retrieval_set(scores)
    size = len(chosen)
    assert frame.attrs["set_size"] == size and size > 0
    ablated = frame[frame.condition == "retrieval set ablated"].heads.iloc[0].split()
    assert ablated == [f"L{l}H{h}" for l, h in zip(chosen["layer"], chosen["head"])]  # the labelled set, strongest first
    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    draws = random_sets(heads, size, 3, 0)
    for i, draw in enumerate(draws, 1):  # the random sets are the seeded draws, of the set's size
        assert frame[frame.condition == f"random set {i}"].heads.iloc[0] == " ".join(f"L{l}H{h}" for l, h in draw)
    assert frame[frame.context_length == 128].held_out.eq(False).all()
    assert frame[frame.context_length == 256].held_out.all()
    summary = niah.niah_summary(frame)
    assert summary["full"] == 1.0  # the demo answers every passkey (data/README.md)
    assert summary["set_ablated"] < summary["full"]
    assert len(summary["random"]) == 3 and summary["random_median"] == sorted(summary["random"])[1]
    assert summary["set_drop_points"] == pytest.approx(100 * (summary["full"] - summary["set_ablated"]))
