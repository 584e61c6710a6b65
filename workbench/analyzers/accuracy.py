"""Task accuracy: how often the model answers each task suite right, so that no run hides a
suite the model mostly fails (retrieval scores average over correct trials only, Wu et al.
2024; a circuit of a task the model cannot do explains little)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.analyzers import Analyzer, register
from workbench.tasks import SUITES, analysis_suite, supports

COLUMNS = ["suite", "context_length", "n", "n_correct", "accuracy", "note"]


def task_accuracy(model, prompts=None) -> pd.DataFrame:
    """Greedy accuracy of the model on each suite the run's analyses use (`analysis_suite`;
    ``prompts`` is not used: the suites carry their own answers).

    Returns:
        DataFrame ``suite, context_length, n, n_correct, accuracy, note``: one row per suite
        (``context_length`` <NA>) and, for passkey, one per context length. A suite this
        tokenizer cannot spell has ``n`` 0, accuracy NaN and the reason in ``note``.
    """
    rows = []
    for name in SUITES:
        reason = supports(model, name)
        if reason:
            rows.append({"suite": name, "context_length": pd.NA, "n": 0, "n_correct": 0,
                         "accuracy": float("nan"), "note": reason})
            continue
        suite = analysis_suite(name, model)
        groups = [(pd.NA, suite)]
        if name == "passkey":
            lengths = sorted({int(r["context_length"]) for r in suite})
            groups += [(c, [r for r in suite if int(r["context_length"]) == c]) for c in lengths]
        for length, part in groups:
            hits = sum(bool(r["model_correct"]) for r in part)
            rows.append({"suite": name, "context_length": length, "n": len(part), "n_correct": hits,
                         "accuracy": hits / len(part), "note": ""})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["context_length"] = frame["context_length"].astype("Int64")
    return frame


def accuracy_bars(frame: pd.DataFrame) -> list[go.Figure]:
    """One bar per suite (and passkey context length), accuracy with n correct of n on hover."""
    label = [s if pd.isna(c) else f"{s} @ {int(c)}" for s, c in zip(frame["suite"], frame["context_length"])]
    fig = go.Figure(go.Bar(
        x=label, y=frame["accuracy"].fillna(0.0), customdata=frame[["n_correct", "n", "note"]].to_numpy(),
        text=[("n/a" if n == 0 else f"{a:.2f}") for a, n in zip(frame["accuracy"], frame["n"])],
        textposition="outside", hovertemplate="%{x}: %{customdata[0]} of %{customdata[1]} right"
                                              "<br>%{customdata[2]}<extra></extra>"))
    fig.update_layout(title="Greedy accuracy per task suite", yaxis={"range": [0, 1.1], "title": "accuracy"},
                      height=360, margin={"l": 60, "r": 20, "t": 60, "b": 80})
    return [fig]


def _applies(model) -> str | None:
    if not model.is_causal:
        return "task suites are scored by next-token prediction; this model is an encoder"
    return None


register(Analyzer(
    "task_accuracy", task_accuracy, "Task accuracy (the suites the causal sections use)", mode="exact",
    applies=_applies, figures=accuracy_bars,
    sources=("Wang et al. 2022, Interpretability in the Wild (IOI templates)",
             "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality (scores over correct trials)"),
))
