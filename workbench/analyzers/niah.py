"""Needle-in-a-haystack accuracy with the retrieval set ablated, against random sets of its size.

One labelled set everywhere: the heads whose retrieval score exceeds Wu et al.'s 0.1 (Wu et al.
2024, "Retrieval Head Mechanistically Explains Long-Context Factuality"), each shown with its
score, so weak copiers are visible as weak. Its causal test (Wu et al.'s): NIAH accuracy with the
set zero-ablated, beside the accuracy with ``n_random`` random sets of the same size drawn from
all heads (the null: a ranking with no information), median of 5 by default, and as a curve over
k (the top-k heads by score against random k-sets). NIAH accuracy is greedy exact match of the
needle, teacher forced (`workbench.analyzers.causal.niah_hits`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench import checks
from workbench.analyzers.causal import causal_check, niah_evaluator, niah_hits, random_sets, ranked_heads
from workbench.analyzers.retrieval import THRESHOLD, read_trials
from workbench.errors import WorkbenchError

N_RANDOM = 5
SET_NAME = f"retrieval heads (Wu et al. score > {THRESHOLD})"


def retrieval_set(scores: pd.DataFrame) -> pd.DataFrame:
    """The labelled set of a `retrieval_scores` frame: its ``is_retrieval`` heads (score > 0.1,
    Wu et al.), strongest first, with ``layer, head, retrieval_score``."""
    missing = {"layer", "head", "retrieval_score", "is_retrieval"} - set(scores.columns)
    if missing:
        raise WorkbenchError(f"a retrieval_scores frame is needed (layer, head, retrieval_score, is_retrieval); "
                             f"it lacks {sorted(missing)}")
    chosen = scores[scores["is_retrieval"].astype(bool)]
    return chosen.sort_values(["retrieval_score", "layer", "head"], ascending=[False, True, True],
                              ignore_index=True)[["layer", "head", "retrieval_score"]]


def _heads(model) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(model.n_layers) for head in range(model.n_heads)]


def niah_controls(model, trials, scores: pd.DataFrame, *, n_random: int = N_RANDOM, seed: int = 0,
                  scored=()) -> pd.DataFrame:
    """NIAH accuracy per (context length, depth): full model, the retrieval set ablated, and
    ``n_random`` random sets of the same size ablated (and their median).

    Args:
        trials: passkey trials with ``prompt, answer, context_length, depth`` (ideally held out
            from those that scored the heads).
        scores: the `retrieval_scores` frame whose labelled set is ablated.
        scored: the prompts of the trials that scored the heads: their cells are marked
            ``held_out = False`` (a causal claim is read off the held-out cells).
    Returns:
        DataFrame ``condition, context_length, depth, accuracy, n_trials, heads, held_out``: condition
        ``"full"``, ``"retrieval set ablated"``, ``"random set 1"`` … ``"random set n"`` and
        ``"random sets (median)"``; ``heads`` lists the ablated heads. attrs: set_size,
        threshold, n_random.
    """
    n_random = checks.integer("n_random", n_random, low=1)
    rows = read_trials(trials, required=("prompt", "answer", "context_length", "depth"))
    chosen = [(int(r.layer), int(r.head)) for r in retrieval_set(scores).itertuples()]
    draws = random_sets(_heads(model), len(chosen), n_random, seed) if chosen else [[] for _ in range(n_random)]
    sets = [[], chosen, *draws]
    names = ["full", "retrieval set ablated", *[f"random set {i + 1}" for i in range(n_random)]]
    hits = niah_hits(model, rows, sets).numpy()  # (sets, trials)
    scored = {str(p) for p in scored}
    base = pd.DataFrame({"context_length": [int(r["context_length"]) for r in rows],
                         "depth": [float(r["depth"]) for r in rows],
                         "held_out": [str(r["prompt"]) not in scored for r in rows]})
    parts = []
    for name, heads, h in zip(names, sets, hits):
        grid = base.assign(hit=h).groupby(["context_length", "depth", "held_out"], as_index=False).agg(
            accuracy=("hit", "mean"), n_trials=("hit", "size"))
        parts.append(grid.assign(condition=name, heads=" ".join(f"L{l}H{hh}" for l, hh in heads)))
    frame = pd.concat(parts, ignore_index=True)
    randoms = frame[frame["condition"].str.startswith("random set ")]
    median = randoms.groupby(["context_length", "depth", "held_out"], as_index=False).agg(
        accuracy=("accuracy", "median"), n_trials=("n_trials", "first"))
    frame = pd.concat([frame, median.assign(condition="random sets (median)", heads="")], ignore_index=True)
    frame = frame[["condition", "context_length", "depth", "accuracy", "n_trials", "heads", "held_out"]]
    held = base["held_out"].to_numpy()
    frame.attrs.update(set_size=len(chosen), threshold=THRESHOLD, n_random=n_random, set_name=SET_NAME,
                       overall_held_out={name: float(h[held].mean()) if held.any() else float("nan")
                                         for name, h in zip(names, hits)})
    return frame


def niah_summary(controls: pd.DataFrame, *, held_out_only: bool = True) -> dict:
    """Overall accuracies of a `niah_controls` frame (weighted by trials; held-out cells only by
    default): full, set ablated, each random draw and their median; the set's drop and the
    median random drop, in points."""
    if held_out_only and "held_out" in controls.columns and controls["held_out"].any():
        controls = controls[controls["held_out"].astype(bool)]

    def overall(cond):
        part = controls[controls["condition"] == cond]
        return float((part["accuracy"] * part["n_trials"]).sum() / part["n_trials"].sum())

    randoms = sorted(c for c in controls["condition"].unique() if c.startswith("random set "))
    full, ablated = overall("full"), overall("retrieval set ablated")
    draws = [overall(c) for c in randoms]
    median = float(np.median(draws)) if draws else float("nan")
    return {"full": full, "set_ablated": ablated, "random": draws, "random_median": median,
            "set_drop_points": 100 * (full - ablated), "random_median_drop_points": 100 * (full - median)}


def niah_curve(model, trials, scores: pd.DataFrame, *, ks=None, n_random: int = N_RANDOM, seed: int = 0) -> pd.DataFrame:
    """NIAH accuracy as the top-k heads by retrieval score are ablated, against random k-sets:
    a `causal_check` table (ranking ``"retrieval score"``, metric NIAH accuracy) over ``ks``
    (default 1, 2, 4, … up to twice the labelled set, at most half the heads)."""
    n_heads = model.n_layers * model.n_heads
    if ks is None:
        size = max(1, len(retrieval_set(scores)))
        ks, k = [], 1
        while k <= min(2 * size, n_heads // 2):
            ks.append(k)
            k *= 2
        ks.append(min(size, n_heads // 2))
    table = causal_check(scores, niah_evaluator(model, trials), ranking="retrieval score", score="retrieval_score",
                         metric="NIAH accuracy", higher_is_better=True, ks=ks, n_random=n_random, seed=seed)
    table.attrs.update(set_size=len(retrieval_set(scores)), order=[f"L{l}H{h}" for l, h in
                                                                   ranked_heads(scores, "retrieval_score")[:10]])
    return table


# -- registered tables --------------------------------------------------------------------
def registered_scores(model) -> pd.DataFrame:
    """The run's one retrieval set: Wu et al.'s scores on the model's scoring passkey trials
    (`workbench.analyzers.causal_checks.passkey_split`), computed once per model."""
    from workbench.analyzers.causal_checks import passkey_split
    from workbench.analyzers.rankings import memo
    from workbench.analyzers.retrieval import retrieval_scores

    scored, _ = passkey_split(model)
    return memo(model, ("retrieval_scores", len(scored)), lambda: retrieval_scores(model, scored))


def registered_niah(model, prompts=None) -> pd.DataFrame:
    """NIAH accuracy over every passkey trial: full, the labelled set ablated, random sets of its
    size (`niah_controls`); the cells of the trials that scored the heads are marked."""
    from workbench.analyzers.causal_checks import passkey_split

    scored, held = passkey_split(model)
    return niah_controls(model, scored + held, registered_scores(model), scored=[r["prompt"] for r in scored])


def registered_curve(model, prompts=None) -> pd.DataFrame:
    """NIAH accuracy on the held-out passkey trials as the top-k heads by retrieval score are
    ablated, against random k-sets (`niah_curve`)."""
    from workbench.analyzers.causal_checks import passkey_split

    _, held = passkey_split(model)
    return niah_curve(model, held, registered_scores(model))
