"""The registered ``causal_checks`` table: every head ranking of a run, checked causally.

For each ranking, `workbench.analyzers.causal.causal_check` ablates its top-k, its bottom-k and
5 random k-sets (k = 1, 3, 5 and 10% of the heads) on prompts held out from those that made the
ranking, with the ranking's own metric:

| ranking (``<table>.<score>``) | made on | metric (held out) |
|---|---|---|
| ``head_importance.importance`` (gradient) and ``importance_methods.{ablation_zero, ablation_mean, integrated_gradients}`` | fit prompts | loss on held-out prompts |
| ``sink_scores.sink_score`` (Gu et al.) | fit prompts | loss on held-out prompts |
| ``head_patterns.induction`` (TransformerLens detector) | repeated-token probes, seed 0 | loss on the repeated half of probes, seed 1 |
| ``retrieval_heads.retrieval_score`` (Wu et al.) | passkey suite, seed 0 | NIAH accuracy on the passkey suite of seed 1 (`niah.registered_curve`) |
| ``circuits.effect:<task>`` (``circuits`` table, each method) | the task's suite, seed 0 | the task's logit difference on its suite of seed 1 |

Heads are zero-ablated in every check, so the rankings are compared under one intervention. The
table says per (ranking, k) whether the ranking beats random (`causal.verdicts` words it).
"""  # noqa: E501  (the table above reads best one row a line)

from __future__ import annotations

import pandas as pd

from workbench.analyzers import Analyzer, causal, register
from workbench.analyzers import importance as imp
from workbench.analyzers.rankings import (
    _budget,
    importance_rankings,
    method_frame,
    splits,
)
from workbench.findings import checks as checks_findings

KS = causal.DEFAULT_KS
N_RANDOM = causal.N_RANDOM


def _ks(model) -> list[float]:
    return causal.fitting_ks(KS, model.n_layers * model.n_heads)


def ranking_name(method: str) -> str:
    """How ``causal_checks.ranking`` names an importance method's ranking (``<table>.<score>``):
    the gradient ranking is the run's ``head_importance`` table, the others ``importance_methods``."""
    return "head_importance.importance" if method == "gradient" else f"importance_methods.{method}"


def _loss_checks(model, prompts, found, seed: int) -> list[pd.DataFrame]:
    """Importance (every method) and sink-score rankings against held-out loss."""
    from workbench.analyzers.sinks import sink_scores

    held = found["held_out"]
    held_prompts, held_answers, _ = _budget(model, held["prompts"], held["answers"])
    evaluate = causal.cached(causal.loss_evaluator(model, held_prompts, answers=held_answers))  # shared sets: once
    metric = f"held-out {imp._loss_name(model, held_answers)}"
    out = []
    rankings = importance_rankings(model, prompts)
    for method in rankings["method"].unique():
        out.append(causal.causal_check(method_frame(rankings, method), evaluate, ranking=ranking_name(method),
                                       score="raw", metric=metric, higher_is_better=False, ks=_ks(model), n_random=N_RANDOM,
                                       seed=seed))
    sinks = sink_scores(model, found["fit"]["prompts"])
    out.append(causal.causal_check(sinks, evaluate, ranking="sink_scores.sink_score", score="sink_score", metric=metric,
                                   higher_is_better=False, ks=_ks(model), n_random=N_RANDOM, seed=seed))
    return out


def _induction_check(model, seed: int) -> pd.DataFrame:
    from workbench.analyzers.patterns import probe_scores

    scores = probe_scores(model)  # the probes head_patterns scores induction on (seed 0): one forward for both
    evaluate = causal.induction_evaluator(model, seed=1)
    return causal.causal_check(scores, evaluate, ranking="head_patterns.induction", score="induction",
                               metric="loss on the repeated half of held-out random-token probes",
                               higher_is_better=False, ks=_ks(model), n_random=N_RANDOM, seed=seed)


def _retrieval_check(model, seed: int) -> tuple[pd.DataFrame | None, str | None]:
    """The retrieval ranking's rows: the registered NIAH curve (`niah.registered_curve`: the
    ``retrieval_heads`` table's scores, held-out passkey trials of seed 1) at this table's k."""
    from workbench.analyzers import niah
    from workbench.analyzers.retrieval import _applies

    why = _applies(model)
    if why:
        return None, why
    if seed == 0:
        curve = niah.registered_curve(model)
        if curve.empty:
            return None, curve.attrs.get("note", "no retrieval scores")
        what = curve.attrs["trials"]
    else:
        scores = niah.registered_scores(model)
        why = niah.no_set_reason(scores)
        if why:
            return None, why
        trials, what = niah.curve_trials(model)
        curve = niah.niah_curve(model, trials, scores, ks=_ks(model), seed=seed)
    ks = causal.resolve_ks(_ks(model), model.n_layers * model.n_heads)
    rows = curve[curve["k"].isin(ks)].drop(columns="is_set_size").reset_index(drop=True)
    return rows.assign(metric=f"NIAH accuracy on {what}"), None


def circuit_ranking_name(task: str, method: str, main: str) -> str:
    """How ``causal_checks.ranking`` names a circuit effect ranking: ``circuits.effect:<task>`` for
    the method the circuits findings read (`main`), ``circuits.effect:<task> (<method>)`` else."""
    return f"circuits.effect:{task}" if method == main else f"circuits.effect:{task} ({method})"


def _circuit_checks(model, seed: int) -> tuple[list[pd.DataFrame], str | None]:
    """Each (task, method) effect ranking of the registered ``circuits`` table
    (`circuits_tables.task_circuits`, memoized per model weights, so in a run that has made that
    table this costs nothing more), ranked by signed effect (positive heads restore the clean
    logit difference), checked on the task's held-out rows (its suite of seed 1) by the task's
    mean logit difference with the heads zeroed."""
    from workbench.analyzers import circuits_tables as C
    from workbench.tasks import analysis_suite

    why = C._applies(model)
    if why:
        return [], why
    table = C.task_circuits(model)
    methods = list(dict.fromkeys(table["method"]))
    main = "activation_patching" if "activation_patching" in methods else methods[0]
    out = []
    for task in dict.fromkeys(table["task"]):
        evaluate = causal.cached(causal.task_evaluator(model, analysis_suite(task, model, seed=1)))
        for method in methods:
            part = table[(table["task"] == task) & (table["method"] == method)]
            out.append(causal.causal_check(part, evaluate, ranking=circuit_ranking_name(task, method, main),
                                           score="effect", metric=f"{task} logit difference on held-out rows (seed 1)",
                                           higher_is_better=True, ks=_ks(model), n_random=N_RANDOM, seed=seed))
    return out, None


def causal_checks(model, prompts, *, seed: int = 0) -> pd.DataFrame:
    """Every ranking's causal check (module docstring): columns ``ranking, k, top, bottom,
    random_median, random_lo, random_hi, metric`` then ``clean, beats_random, top_heads,
    bottom_heads, n_random, higher_is_better``. attrs: how the prompts were split, and the
    rankings that could not be checked with why."""
    found = splits(model, prompts)
    parts, skipped = [], {}
    if found is None:
        skipped["head_importance, importance_methods, sink_scores"] = ("fewer than 6 prompts: no held-out prompts "
                                                                        "to check on")
    else:
        parts += _loss_checks(model, prompts, found, seed)
    if model.is_causal:
        parts.append(_induction_check(model, seed))
        retrieval, why = _retrieval_check(model, seed)
        if retrieval is None:
            skipped["retrieval_heads.retrieval_score"] = why
        else:
            parts.append(retrieval)
        circuit_parts, why = _circuit_checks(model, seed)
        if why:
            skipped["circuits.effect"] = why
        parts += circuit_parts
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(causal.COLUMNS))
    table.attrs.update(split=(found or {}).get("source", "none"), skipped=skipped, seed=seed, ks=str(KS),
                       n_random=N_RANDOM, ablation="zero")
    return table


def _figures(frame):
    from workbench.figures.checks import causal_checks_figure

    return [causal_checks_figure(frame)]


register(Analyzer("causal_checks", causal_checks, "Causal checks of every head ranking (held-out prompts)",
                  mode="exact", applies=imp._skip_untrained_mlm, figures=_figures, family="causal checks", page="causal-checks",
                  findings=checks_findings.causal_checks, summary=checks_findings.checks_summary,
                  glossary=checks_findings.CHECK_TERMS,
                  params={"ks": [str(k) for k in KS], "n_random": N_RANDOM, "ablation": "zero"},
                  sources=("Michel et al. 2019; Wu et al. 2024; Gu et al. 2024; Olsson et al. 2022 (induction heads)",
                           "top-k vs bottom-k vs 5 random k-sets, held-out prompts (issue 16)")))
