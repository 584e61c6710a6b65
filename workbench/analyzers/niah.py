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
from workbench.analyzers.causal import (
    N_RANDOM,
    causal_check,
    niah_hits,
    random_sets,
    ranked_heads,
)
from workbench.analyzers.retrieval import THRESHOLD, _overall, read_trials
from workbench.errors import WorkbenchError

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


def condition_names(size: int, n_random: int) -> dict[str, str]:
    """The condition labels of a `niah_controls` frame, each naming the set, its size and the
    threshold: ``full``, ``ablated`` (the labelled set), ``random`` (draw i: ``.format(i=...)``)
    and ``median``."""
    return {"full": "full",
            "ablated": f"retrieval set ablated ({size} heads, Wu et al. score > {THRESHOLD})",
            "random": f"random set {{i}} ({size} heads)",
            "median": f"random sets ({size} heads, median of {n_random})"}


def _hit_cache(model, rows: list[dict]) -> dict:
    """Per-trial NIAH hits already computed for these trials, keyed by the ablated head set: the
    NIAH table, the NIAH-over-k curve and the causal check of the retrieval ranking draw the same
    sets (seeded, in (layer, head) order) and share their forwards."""
    from workbench.analyzers.rankings import memo

    key = ("niah_hits", tuple((str(r["prompt"]), str(r["answer"])) for r in rows))
    return memo(model, key, dict)


def cached_hits(model, rows: list[dict], head_sets: list[list[tuple[int, int]]]) -> np.ndarray:
    """`niah_hits` of ``head_sets`` over ``rows`` (``[sets, trials]`` bool), each set computed
    once per model and trials in this process."""
    cache = _hit_cache(model, rows)
    keys = [frozenset(map(tuple, s)) for s in head_sets]
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    if todo:
        fresh = niah_hits(model, rows, [sorted(k) for k in todo]).numpy()
        cache.update(zip(todo, fresh))
    return np.stack([cache[k] for k in keys])


def cached_evaluator(model, trials):
    """`niah_evaluator` through `cached_hits`: NIAH accuracy per ablated set."""
    rows = read_trials(trials)
    return lambda head_sets: cached_hits(model, rows, head_sets).mean(1).tolist()


def niah_controls(model, trials, scores: pd.DataFrame, *, n_random: int = N_RANDOM, seed: int = 0,
                  scored=()) -> pd.DataFrame:
    """NIAH accuracy per (context length, depth): full model, the retrieval set ablated, and
    ``n_random`` random sets of the same size ablated (and their median).

    Args:
        trials: passkey trials with ``prompt, answer, context_length, depth`` (ideally held out
            from those that scored the heads).
        scores: the `retrieval_scores` frame whose labelled set is ablated.
        n_random: random sets of the set's size, drawn from all heads (`causal.random_sets`,
            seeded by ``(seed, size)``: the draws `causal_check` makes at k = size).
        scored: the prompts of the trials that scored the heads: their cells are marked
            ``held_out = False`` (a causal claim is read off the held-out cells).
    Returns:
        DataFrame ``condition, context_length, depth, accuracy, n_trials, heads, held_out``: the
        conditions of `condition_names` (e.g. ``"retrieval set ablated (15 heads, Wu et al.
        score > 0.1)"``, ``"random set 1 (15 heads)"``, ``"random sets (15 heads, median of
        5)"``); ``heads`` lists the ablated heads. With no labelled head only ``"full"``.
        attrs: set_size, threshold, n_random, set_name, conditions, overall_held_out.
    """
    n_random = checks.integer("n_random", n_random, low=1)
    rows = read_trials(trials, required=("prompt", "answer", "context_length", "depth"))
    chosen = [(int(r.layer), int(r.head)) for r in retrieval_set(scores).itertuples()]
    labels = condition_names(len(chosen), n_random)
    if chosen:
        draws = random_sets(_heads(model), len(chosen), n_random, seed)
        sets = [[], chosen, *draws]
        names = [labels["full"], labels["ablated"], *[labels["random"].format(i=i + 1) for i in range(n_random)]]
    else:
        sets, names = [[]], [labels["full"]]
    hits = cached_hits(model, rows, sets)  # (sets, trials)
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
    if chosen:
        randoms = frame[frame["condition"].isin(names[2:])]
        median = randoms.groupby(["context_length", "depth", "held_out"], as_index=False).agg(
            accuracy=("accuracy", "median"), n_trials=("n_trials", "first"))
        frame = pd.concat([frame, median.assign(condition=labels["median"], heads="")], ignore_index=True)
    frame = frame[["condition", "context_length", "depth", "accuracy", "n_trials", "heads", "held_out"]]
    held = base["held_out"].to_numpy()
    frame.attrs.update(set_size=len(chosen), threshold=THRESHOLD, n_random=n_random, set_name=SET_NAME,
                       conditions=labels,
                       overall_held_out={name: float(h[held].mean()) if held.any() else float("nan")
                                         for name, h in zip(names, hits)})
    return frame


def _kind(condition: str) -> str:
    """Which of `condition_names` a condition label is: full, ablated, random or median."""
    if condition == "full":
        return "full"
    if condition.startswith("retrieval set ablated"):
        return "ablated"
    if condition.startswith("random sets"):
        return "median"
    return "random" if condition.startswith("random set ") else "other"


def niah_summary(controls: pd.DataFrame, *, held_out_only: bool = True) -> dict:
    """Overall accuracies of a `niah_controls` frame (weighted by trials; held-out cells only by
    default): full, set ablated, the set's size, each random draw and their median; the set's
    drop and the median random drop, in points (NaN when the frame has no labelled set)."""
    if held_out_only and "held_out" in controls.columns and controls["held_out"].any():
        controls = controls[controls["held_out"].astype(bool)]

    def overall(cond):
        return _overall(controls[controls["condition"] == cond])

    conditions = list(dict.fromkeys(controls["condition"]))
    kinds = {c: _kind(c) for c in conditions}
    full = overall("full")
    ablated = next((overall(c) for c in conditions if kinds[c] == "ablated"), float("nan"))
    draws = [overall(c) for c in conditions if kinds[c] == "random"]
    median = float(np.median(draws)) if draws else float("nan")
    named = [c for c in conditions if kinds[c] == "ablated"]
    size = (len(str(controls.loc[controls["condition"] == named[0], "heads"].iloc[0]).split())
            if named and "heads" in controls.columns else controls.attrs.get("set_size", 0))
    return {"full": full, "set_ablated": ablated, "set_size": int(size), "random": draws, "random_median": median,
            "set_drop_points": 100 * (full - ablated), "random_median_drop_points": 100 * (full - median)}


def curve_ks(n_heads: int, size: int) -> list[int]:
    """The k of the registered NIAH curve: those of the causal checks (1, 3, 5, 10% of heads)
    and the labelled set's size, each at most half of the heads."""
    from workbench.analyzers.causal import DEFAULT_KS, fitting_ks, resolve_ks

    ks = resolve_ks(fitting_ks(DEFAULT_KS, n_heads), n_heads)
    if 0 < size <= n_heads // 2:
        ks.append(size)
    return sorted(set(ks))


def niah_curve(model, trials, scores: pd.DataFrame, *, ks=None, n_random: int = N_RANDOM, seed: int = 0) -> pd.DataFrame:
    """NIAH accuracy as the top-k heads by retrieval score are ablated, against random k-sets:
    a `causal_check` table (ranking ``"retrieval_heads.retrieval_score"``, metric NIAH accuracy)
    over ``ks`` (default `curve_ks`: 1, 3, 5, 10% of heads and the labelled set's size)."""
    n_heads = model.n_layers * model.n_heads
    size = len(retrieval_set(scores))
    ks = curve_ks(n_heads, size) if ks is None else ks
    table = causal_check(scores, cached_evaluator(model, trials), ranking="retrieval_heads.retrieval_score",
                         score="retrieval_score", metric="NIAH accuracy on held-out passkey trials",
                         higher_is_better=True, ks=ks, n_random=n_random, seed=seed)
    table["is_set_size"] = table["k"] == size
    table.attrs.update(set_size=size, threshold=THRESHOLD, set_name=SET_NAME,
                       order=" ".join(f"L{l}H{h}" for l, h in ranked_heads(scores, "retrieval_score")[:10]))
    return table


# -- registered tables --------------------------------------------------------------------
def registered_scores(model) -> pd.DataFrame:
    """The run's one retrieval set: the registered ``retrieval_heads`` table (Wu et al.'s scores
    on the model's scoring passkey trials, seed 0; `retrieval.passkey_retrieval`)."""
    from workbench.analyzers.retrieval import passkey_retrieval

    return passkey_retrieval(model)


DEMO_HELD_OUT = 20  # demo: one held-out trial per (context length, depth) cell, 128-1024 tokens


def held_out_trials(model) -> list[dict]:
    """Passkey trials held out from those that scored the heads: the suite of seed
    `retrieval.HELD_OUT_SEED` (for the demo, new rows from its own generators, the first
    `DEMO_HELD_OUT`: one per context length x depth cell)."""
    from workbench.analyzers.retrieval import HELD_OUT_SEED
    from workbench.tasks import analysis_suite

    rows = analysis_suite("passkey", model, seed=HELD_OUT_SEED)
    return rows[:DEMO_HELD_OUT] if model.source == "demo" else rows


def no_set_reason(scores: pd.DataFrame) -> str | None:
    """Why a scores frame gives no ranking to check (None if it does)."""
    if scores["retrieval_score"].isna().all():
        return (f"the model answered none of the {scores.attrs.get('n_trials', '?')} scoring passkey trials, so "
                "retrieval scores are undefined (Wu et al. average over correct trials)")
    return None


def registered_niah(model, prompts=None) -> pd.DataFrame:
    """The registered ``niah`` table: NIAH accuracy on the held-out passkey trials, full, with the
    labelled set of the ``retrieval_heads`` table ablated, and with 5 random sets of its size
    (`niah_controls`). ``prompts`` is not used: NIAH needs needle trials."""
    from workbench.analyzers.retrieval import HELD_OUT_SEED

    scores = registered_scores(model)
    held = held_out_trials(model)
    frame = niah_controls(model, held, scores)
    frame.attrs.update(trials=f"passkey suite, seed {HELD_OUT_SEED} (held out from the scoring trials, seed 0)",
                       n_held_out=len(held), note=no_set_reason(scores) or "")
    return frame


CURVE_COLUMNS = ("ranking", "k", "top", "bottom", "random_median", "random_lo", "random_hi", "metric", "clean",
                 "beats_random", "top_heads", "bottom_heads", "n_random", "higher_is_better", "is_set_size")


CURVE_TRIALS_BIG = 9  # held-out trials of the curve on a big model, all at the shortest passkey length


def curve_trials(model) -> tuple[list[dict], str]:
    """The held-out trials the NIAH curve (and the retrieval ranking's causal check) reads, and
    what they are: `held_out_trials` on a model up to `rankings.BIG_MODEL` parameters; on a
    bigger one `CURVE_TRIALS_BIG` trials of seed 1 at the shortest passkey length (the curve
    ablates 7 sets per k: on smollm2 the 3 lengths would cost ~4x the whole NIAH table)."""
    from workbench.analyzers.rankings import BIG_MODEL, _n_params
    from workbench.analyzers.retrieval import HELD_OUT_SEED
    from workbench.tasks import passkey_lengths, task_suite

    if model.source == "demo" or _n_params(model) <= BIG_MODEL:
        return held_out_trials(model), f"the NIAH table's held-out passkey trials (seed {HELD_OUT_SEED})"
    length = min(passkey_lengths(model))
    rows = task_suite("passkey", model, n=CURVE_TRIALS_BIG, seed=HELD_OUT_SEED, lengths=[length],
                      depths=(0.0, 0.5, 1.0))
    return rows, f"{len(rows)} held-out passkey trials of {length} tokens (seed {HELD_OUT_SEED}; a big model's budget)"


def registered_curve(model, prompts=None) -> pd.DataFrame:
    """The registered ``niah_curve`` table: NIAH accuracy on held-out passkey trials
    (`curve_trials`) with the top-k heads by retrieval score ablated, against the bottom-k and 5
    random k-sets, for `curve_ks` (`niah_curve`; computed once per model: the causal checks read
    its rows). Empty, with the reason in ``attrs["note"]``, when the scores are undefined."""
    from workbench.analyzers.rankings import memo

    def compute():
        scores = registered_scores(model)
        why = no_set_reason(scores)
        if why:
            empty = pd.DataFrame(columns=list(CURVE_COLUMNS))
            empty.attrs.update(note=why, set_size=0, threshold=THRESHOLD, set_name=SET_NAME)
            return empty
        trials, what = curve_trials(model)
        table = niah_curve(model, trials, scores)
        table.attrs.update(trials=what, n_trials=len(trials))
        return table

    return memo(model, ("registered_niah_curve",), compute)


def _curve_sets(model, prompts) -> dict[str, list[str]]:
    trials, what = curve_trials(model)
    return {what: [r["prompt"] for r in trials]}


def _niah_figures(frame):
    from workbench.figures import niah_heatmap
    from workbench.figures.checks import niah_controls_figure

    shown = [c for c in dict.fromkeys(frame["condition"]) if _kind(c) != "random"]  # the median, not each draw
    title = (f"NIAH accuracy on held-out trials: {SET_NAME}, {frame.attrs.get('set_size', '?')} heads, ablated "
             f"vs random sets of its size")
    return [niah_heatmap(frame[frame["condition"].isin(shown)], title=title), niah_controls_figure(frame)]


def _curve_figures(frame):
    from workbench.figures._common import empty
    from workbench.figures.checks import niah_curve_figure

    title = f"NIAH accuracy with the top-k heads by Wu et al. score ablated vs random k-sets (the set: {SET_NAME})"
    if frame.empty:
        return [empty(title, frame.attrs.get("note") or "no retrieval scores")]
    return [niah_curve_figure(frame, title=title)]


def _register() -> None:
    from workbench import findings
    from workbench.analyzers import Analyzer, register
    from workbench.analyzers import retrieval as R
    from workbench.findings import checks as checks_findings
    from workbench.findings import summaries

    wu = R._WU
    register(Analyzer("niah", registered_niah, "Needle-in-a-haystack accuracy, with and without the retrieval set",
                      mode="exact", applies=R._applies, figures=_niah_figures, sources=(wu,),
                      family="retrieval", findings=findings.niah, example="passkey", prompts=R._niah_sets,
                      summary=summaries.niah, glossary=checks_findings.NIAH_TERMS,
                      params={"trials": f"passkey suite, seed {R.HELD_OUT_SEED} (held out)", "set": SET_NAME,
                              "threshold": THRESHOLD, "draws": N_RANDOM, "seed": 0,
                              "retrieval_max_context": R.DEMO_MAX_CONTEXT}))
    register(Analyzer("niah_curve", registered_curve, "NIAH accuracy over k: top-k retrieval heads vs random k-sets",
                      mode="exact", applies=R._applies, figures=_curve_figures, sources=(wu,),
                      family="retrieval", findings=findings.niah_curve, example="passkey", prompts=_curve_sets,
                      summary=summaries.niah_curve, glossary=checks_findings.NIAH_CURVE_TERMS,
                      params={"trials": f"passkey suite, seed {R.HELD_OUT_SEED} (held out; big models: "
                                        f"{CURVE_TRIALS_BIG} trials at the shortest length)", "set": SET_NAME,
                              "ks": "1, 3, 5, 10% of heads and the set's size", "n_random": N_RANDOM, "seed": 0}))


_register()
