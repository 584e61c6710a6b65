"""The registered ranking checks: importance by every method, pruning curves under each, and the
prompt splits they need (rankings made on one set of prompts, checked on prompts held out).

Splits. A ranking is made on ``fit`` prompts and checked on ``held_out`` prompts of the same
kind that it never saw; mean ablation takes its means over a third, ``reference`` set. For the
demo they are the bundled suite rows (fit: the run's prompts, the first 8 ioi, 8
colored-objects and 4 passkey rows; held out: the next as many of each; reference: the ones
after), with their answers (the task loss). Other prompt sets are cut in thirds
(`thirds`).

Budget. Ablation importance costs about a quarter of H forwards (prefix reuse) and integrated
gradients s forward-backward passes; on a model of more than ``BIG_MODEL`` parameters the
registered rankings use the first prompts up to ``BUDGET_TOKENS`` tokens (at least two
prompts), and say so in the table's attrs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import pandas as pd

from workbench.analyzers import Analyzer, register
from workbench.analyzers import importance as imp
from workbench.analyzers.pruning import pruning_curves
from workbench.findings import checks as checks_findings

BIG_MODEL = 20_000_000     # parameters: above this the costly rankings run on a token budget
BUDGET_TOKENS = 128        # tokens of fit prompts for ablation / IG rankings on a big model (issue 16 used 2 x 16)
IG_STEPS = 16
METHOD_NAMES = {"gradient": "gradient", "ablation_zero": "ablation (zero)", "ablation_mean": "ablation (mean)",
                "integrated_gradients": "integrated gradients"}

_MEMO: "OrderedDict[tuple, object]" = OrderedDict()
MEMO_SIZE = 32


def _model_key(model) -> tuple:
    """What identifies a model's behaviour (`workbench.run.model_fingerprint`: the hashes of its
    config and weights), so two handles of the same weights share results."""
    from workbench.run import model_fingerprint

    found = model_fingerprint(model)
    if found is None:
        return ("object", id(model))
    return (found["source"], found["config_sha256"], found["weights_sha256"])


def memo(model, key: tuple, compute: Callable[[], object]):
    """``compute()`` once per (model weights, key) in this process: registered tables that share a
    costly piece (rankings, retrieval scores, DuoAttention gates) compute it once, also across
    handles of the same weights; the last `MEMO_SIZE` results are kept."""
    full = (*_model_key(model), *key)
    if full in _MEMO:
        _MEMO.move_to_end(full)
        return _MEMO[full]
    value = compute()
    _MEMO[full] = value
    while len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def _n_params(model) -> int:
    return sum(p.numel() for p in model.hf_model.parameters())


# -- splits -------------------------------------------------------------------------------
def demo_splits(prompts) -> dict | None:
    """``{fit, held_out, reference}`` for prompts taken from the bundled suites: each a dict with
    ``prompts`` and ``answers`` (held-out and reference rows are the suite rows after the run's, in
    the same proportions per suite). None if the prompts are not all suite prompts."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        return None
    suites = {}
    for path in sorted((data_dir() / "suites").glob("*.jsonl")):
        suites[path.stem] = read_jsonl(path, ("prompt", "answer"))
    where = {}
    for name, rows in suites.items():
        for i, row in enumerate(rows):
            where.setdefault(row["prompt"], (name, i))
    if not prompts or any(p not in where for p in prompts):
        return None
    used: dict[str, set[int]] = {}
    for p in prompts:
        name, i = where[p]
        used.setdefault(name, set()).add(i)
    held, ref = [], []
    for name, taken in used.items():
        rest = [r for i, r in enumerate(suites[name]) if i not in taken]
        held += rest[:len(taken)]
        ref += rest[len(taken):2 * len(taken)]
    fit_answers = [suites[where[p][0]][where[p][1]]["answer"] for p in prompts]
    return {"fit": {"prompts": list(prompts), "answers": fit_answers},
            "held_out": {"prompts": [r["prompt"] for r in held], "answers": [r["answer"] for r in held]},
            "reference": {"prompts": [r["prompt"] for r in ref], "answers": [r["answer"] for r in ref]},
            "source": "bundled suites: held-out and reference rows follow the run's rows in each suite"}


def thirds(prompts) -> dict | None:
    """Any prompt list of at least 6: fit = every third prompt from the first, held out = from
    the second, reference = from the third (no answers: next-token loss). None if fewer."""
    prompts = list(prompts)
    if len(prompts) < 6:
        return None
    return {"fit": {"prompts": prompts[0::3], "answers": None}, "held_out": {"prompts": prompts[1::3], "answers": None},
            "reference": {"prompts": prompts[2::3], "answers": None},
            "source": "the run's prompts in thirds: fit prompts[0::3], held out prompts[1::3], reference prompts[2::3]"}


def splits(model, prompts) -> dict | None:
    """The prompt splits for ``model`` (see the module docstring): the bundled suites' rows for
    suite prompts, else the run's prompts in thirds; None with fewer than 6 other prompts."""
    if model.is_causal:
        found = demo_splits(prompts)
        if found is not None:
            return found
    return thirds(prompts)


def _budget(model, prompts: list, answers):
    """The first prompts within `BUDGET_TOKENS` (at least two) on a big model, else all."""
    if _n_params(model) <= BIG_MODEL:
        return prompts, answers, False
    total, n = 0, 0
    for p in prompts:
        length = len(model.tokenizer(p)["input_ids"]) if isinstance(p, str) else len(p)
        if n >= 2 and total + length > BUDGET_TOKENS:
            break
        total, n = total + length, n + 1
    return prompts[:n], None if answers is None else answers[:n], n < len(prompts)


# -- importance by every method -----------------------------------------------------------
def importance_rankings(model, prompts) -> pd.DataFrame:
    """Every importance method's ranking on the fit prompts: long frame ``method, layer, head,
    importance, raw`` (global rankings; ``method`` names as in `METHOD_NAMES`)."""
    def compute():
        found = splits(model, prompts)
        fit_prompts = found["fit"]["prompts"] if found else list(prompts)
        answers = found["fit"]["answers"] if found else None
        frames = {"gradient": imp.head_importance(model, fit_prompts, answers=answers)}
        costly, costly_answers, trimmed = _budget(model, fit_prompts, answers)
        frames["ablation_zero"] = imp.head_importance(model, costly, "ablation", answers=costly_answers)
        if found:
            frames["ablation_mean"] = imp.head_importance(model, costly, "ablation", answers=costly_answers,
                                                          ablation="mean", reference=found["reference"]["prompts"])
        frames["integrated_gradients"] = imp.head_importance(model, costly, "integrated_gradients",
                                                             answers=costly_answers, n_steps=IG_STEPS)
        out = pd.concat([f.assign(method=m) for m, f in frames.items()], ignore_index=True)
        out = out[["method", "layer", "head", "importance", "raw"]]
        out.attrs.update(n_fit=len(fit_prompts), n_costly=len(costly), budget_trimmed=bool(trimmed),
                         budget_tokens=BUDGET_TOKENS if trimmed else None,
                         mean_reference=(found or {}).get("source", "none: mean ablation needs reference prompts"),
                         loss=imp._loss_name(model, answers), ig_steps=IG_STEPS)
        return out
    return memo(model, ("importance_rankings", tuple(map(str, prompts))), compute)


def method_frame(rankings: pd.DataFrame, method: str) -> pd.DataFrame:
    """One method's rows of `importance_rankings` as a `head_importance`-like frame."""
    return rankings[rankings["method"] == method].drop(columns="method").reset_index(drop=True)


def registered_pruning(model, prompts) -> pd.DataFrame:
    """Pruning curves under every method's ranking and a random order, measured on the held-out
    prompts (the fit prompts when none are known)."""
    rankings = importance_rankings(model, prompts)
    found = splits(model, prompts)
    on = found["held_out"] if found else {"prompts": list(prompts), "answers": None}
    frames = {METHOD_NAMES[m]: method_frame(rankings, m) for m in rankings["method"].unique()}
    curves = pruning_curves(model, on["prompts"], frames, answers=on["answers"])
    curves.attrs.update(measured_on="held-out prompts" if found else "the ranking's own prompts (no held-out set known)",
                        n_prompts=len(on["prompts"]), **rankings.attrs)
    return curves


def _methods_figures(frame):
    from workbench.figures import importance_ranking

    return [importance_ranking(method_frame(frame, m), "raw", top=20,
                               title=f"Top heads by {METHOD_NAMES.get(m, m)} importance (global)")
            for m in frame["method"].unique()]


def _pruning_figures(frame):
    from workbench.figures.checks import pruning_curves_figure

    return [pruning_curves_figure(frame)]


register(Analyzer("importance_methods", importance_rankings, "Head importance by every method (global rankings)",
                  mode="exact", applies=imp._skip_untrained_mlm, figures=_methods_figures, family="importance",
                  findings=checks_findings.methods, glossary=checks_findings.METHOD_TERMS,
                  params={"methods": list(METHOD_NAMES), "ig_steps": IG_STEPS, "budget_tokens": BUDGET_TOKENS,
                          "big_model_parameters": BIG_MODEL},
                  sources=("Michel et al. 2019 (gradient of the head mask)",
                           "Wang et al. 2022 (mean ablation over a reference distribution)",
                           "Sundararajan et al. 2017 (integrated gradients, Captum)")))
register(Analyzer("pruning_curve", registered_pruning, "Pruning curves under each importance ranking", mode="exact",
                  applies=imp._skip_untrained_mlm, figures=_pruning_figures, family="importance",
                  findings=checks_findings.pruning, summary=checks_findings.pruning_summary,
                  glossary=checks_findings.PRUNING_TERMS, params={"step": 0.1, "n_random": 1},
                  sources=("Michel et al. 2019, pruning heads in order of importance (10% of heads a step)",)))
