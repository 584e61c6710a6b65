"""One retrieval set everywhere (Wu et al.'s 0.1) and its causal test on the demo: NIAH accuracy
with the set ablated, beside random sets of its size drawn from all heads, on held-out trials."""

from __future__ import annotations

import pandas as pd
import pytest

import workbench as wb
from workbench.analyzers import niah
from workbench.analyzers.causal import random_sets
from workbench.analyzers.retrieval import read_trials



def test_retrieval_set_is_the_wu_threshold_set_strongest_first():
    scores = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "retrieval_score": [0.05, 0.4, 0.11, 0.9],
                           "is_retrieval": [False, True, True, True]})
    chosen = niah.retrieval_set(scores)
    assert list(zip(chosen["layer"], chosen["head"])) == [(1, 1), (0, 1), (1, 0)]
    assert chosen.retrieval_score.tolist() == [0.9, 0.4, 0.11]  # each head's score, weak ones visibly weak
    with pytest.raises(wb.WorkbenchError, match="a retrieval_scores frame is needed"):
        niah.retrieval_set(scores.drop(columns="is_retrieval"))


def test_demo_niah_controls_ablate_the_labelled_set_and_random_sets_of_its_size():
    model = wb.load_model("demo")
    rows = read_trials(None)
    scored = [r for r in rows if r["context_length"] == 128][:6]
    held = [r for r in rows if r["context_length"] == 256][:4]
    scores = wb.retrieval_scores(model, scored)
    frame = niah.niah_controls(model, scored + held, scores, n_random=3, seed=0, scored=[r["prompt"] for r in scored])
    assert list(frame.columns) == ["condition", "context_length", "depth", "accuracy", "n_trials", "heads", "held_out"]
    chosen = niah.retrieval_set(scores)
    size = len(chosen)
    named = niah.condition_names(size, 3)
    assert named["ablated"] == f"retrieval set ablated ({size} heads, Wu et al. score > 0.1)"  # the set and threshold
    assert frame.condition.unique().tolist() == ["full", named["ablated"], *[f"random set {i} ({size} heads)"
                                                                             for i in (1, 2, 3)],
                                                 f"random sets ({size} heads, median of 3)"]
    assert frame.attrs["set_size"] == size and size > 0
    ablated = frame[frame.condition == named["ablated"]].heads.iloc[0].split()
    assert ablated == [f"L{l}H{h}" for l, h in zip(chosen["layer"], chosen["head"])]  # the labelled set, strongest first
    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    draws = random_sets(heads, size, 3, 0)
    for i, draw in enumerate(draws, 1):  # the random sets are the seeded draws, of the set's size
        assert frame[frame.condition == f"random set {i} ({size} heads)"].heads.iloc[0] == " ".join(f"L{l}H{h}" for l, h in draw)
    assert frame[frame.context_length == 128].held_out.eq(False).all()
    assert frame[frame.context_length == 256].held_out.all()
    summary = niah.niah_summary(frame)
    assert summary["full"] == 1.0  # the demo answers every passkey (data/README.md)
    assert summary["set_ablated"] < summary["full"]
    assert len(summary["random"]) == 3 and summary["random_median"] == sorted(summary["random"])[1]
    assert summary["set_drop_points"] == pytest.approx(100 * (summary["full"] - summary["set_ablated"]))


def test_registered_niah_ablates_the_retrieval_heads_set_on_held_out_trials_and_its_curve_shares_the_draws():
    """The one labelled set of the retrieval_heads table, on passkey trials of seed 1 (none of
    the scoring trials); the NIAH-over-k curve at k = the set's size meets the same random sets
    as the NIAH table, and the causal check of the retrieval ranking reads the curve's rows."""
    from workbench.analyzers import causal_checks
    from workbench.analyzers import retrieval as R

    model = wb.load_model("demo")
    scores = R.passkey_retrieval(model)
    frame = niah.registered_niah(model)
    held = niah.held_out_trials(model)
    scoring = {r["prompt"] for r in R._passkey_rows(R.DEMO_MAX_CONTEXT)}
    assert len(held) == niah.DEMO_HELD_OUT and not {r["prompt"] for r in held} & scoring
    assert {(r["context_length"], r["depth"]) for r in held} == {(c, d) for c, d in zip(frame.context_length, frame.depth)}
    chosen = niah.retrieval_set(scores)
    size = int(scores["is_retrieval"].sum())
    assert frame.attrs["set_size"] == size == len(chosen) and frame["held_out"].all()
    named = niah.condition_names(size, niah.N_RANDOM)
    assert frame[frame.condition == named["ablated"]].heads.iloc[0] == " ".join(
        f"L{l}H{h}" for l, h in zip(chosen["layer"], chosen["head"]))
    got = niah.niah_summary(frame)
    assert got["full"] == 1.0 and got["set_ablated"] == 0.0  # the demo answers every passkey; the set breaks it
    assert got["set_size"] == size
    curve = niah.registered_curve(model)
    assert curve["ranking"].eq("retrieval_heads.retrieval_score").all()
    assert curve["k"].tolist() == niah.curve_ks(32, size)
    at_size = curve[curve["is_set_size"]].iloc[0]
    assert at_size.top == got["set_ablated"] and at_size.random_median == got["random_median"]
    assert sorted(at_size.top_heads.split()) == sorted(f"L{l}H{h}" for l, h in zip(chosen["layer"], chosen["head"]))
    small = curve[curve["k"] == 3].iloc[0]  # three strongest heads: a causal ranking, unlike 3 random heads
    assert small.beats_random and small.top < small.random_lo
    rows, why = causal_checks._retrieval_check(model, 0)
    assert why is None and rows["k"].tolist() == [1, 3, 5]  # the causal checks' k (10% of 32 = 3)
    assert rows["top"].tolist() == curve[curve["k"].isin([1, 3, 5])]["top"].tolist()
    texts = [f.text for f in wb.findings.niah(frame, None)]
    assert "Wu et al. score > 0.1" in texts[0] and f"{size} heads" in texts[0]


def _controls(ablated: float, draws: list[float]) -> pd.DataFrame:
    named = niah.condition_names(2, len(draws))
    rows = [("full", 1.0, ""), (named["ablated"], ablated, "L0H1 L1H0")]
    rows += [(named["random"].format(i=i + 1), v, "L0H0 L1H1") for i, v in enumerate(draws)]
    return pd.DataFrame([{"condition": c, "context_length": 128, "depth": 0.5, "accuracy": a, "n_trials": 4,
                          "heads": h, "held_out": True} for c, a, h in rows])


def test_niah_finding_and_summary_name_the_set_and_say_when_it_does_not_beat_random():
    good = _controls(0.25, [1.0, 0.75, 1.0, 0.5, 1.0])
    got = niah.niah_summary(good)
    assert got["set_size"] == 2 and got["random_median"] == 1.0 and got["set_drop_points"] == 75.0
    text = wb.findings.niah(good, None)[0]
    assert "Wu et al. score > 0.1" in text.text and "2 heads" in text.text and not text.caveat
    assert "hurts more than every random set" in text.text
    bad = wb.findings.niah(_controls(0.5, [1.0, 0.25, 1.0]), None)[0]  # a random draw hurts more
    assert bad.caveat and "does NOT hurt more than random sets" in bad.text
    from workbench.findings import summaries

    numbers = summaries.niah(good)
    assert numbers["NIAH accuracy (retrieval set ablated)"] == 0.25 and numbers["retrieval set size (heads, Wu et al. > 0.1)"] == 2
