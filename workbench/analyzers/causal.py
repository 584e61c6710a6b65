"""Causal checks of head rankings: does ablating a ranking's top-k hurt more than random k heads?

A ranking (importance, retrieval score, circuit effect, sink score, induction score, …) claims
that some heads matter more than others. `causal_check` tests that claim with the ranking's own
metric on prompts held out from those that made it: the metric with the top-k heads ablated,
with the bottom-k ablated, and with ``n_random`` random k-sets ablated (their median and the
lowest and highest draw), for a few k. The random sets are drawn once per k (seeded) and shared
by every ranking checked with the same seed, so rankings are compared on the same draws.

A ranking *beats random* at k when its top-k is worse for the metric than the median random
draw and no random draw is worse than it (ties allowed: an accuracy cannot fall below 0). With 5
draws of a continuous metric, a ranking with no information does so with probability 1/6.

    >>> evaluate = loss_evaluator(model, held_out_prompts)
    >>> table = causal_check(importance_frame, evaluate, ranking="importance (gradient)", score="raw")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench import checks
from workbench.errors import WorkbenchError
from workbench.overlap import beats_random

Head = tuple[int, int]
#: ``evaluate(head_sets) -> metric of each set ablated`` (an empty set: the clean model).
Evaluate = Callable[[list[list[Head]]], list[float]]
COLUMNS = ("ranking", "k", "top", "bottom", "random_median", "random_lo", "random_hi", "metric")
#: k as counts and fractions of all heads (issue 16: 1, 3, 5 and 10% of heads).
DEFAULT_KS = (1, 3, 5, 0.1)
N_RANDOM = 5


def _count(k, n_heads: int):
    """A k as a count: a float in (0, 1) is a fraction of ``n_heads`` (rounded, at least 1)."""
    return max(1, round(k * n_heads)) if isinstance(k, float) and 0 < k < 1 else k


def resolve_ks(ks: Sequence[float], n_heads: int) -> list[int]:
    """Counts from ``ks`` (ints are counts, floats in (0, 1) fractions of ``n_heads``, rounded,
    at least 1), deduplicated and sorted, each at most half of the heads."""
    out = []
    for k in ks:
        count = checks.integer("k", _count(k, n_heads), low=1)
        if count > n_heads // 2:
            raise WorkbenchError(f"k = {k!r} is {count} heads: a causal check needs k <= half of the {n_heads} heads "
                                 "(top-k and bottom-k must not overlap)")
        out.append(count)
    if not out:
        raise WorkbenchError("ks is empty: expected at least one k (a count or a fraction of the heads)")
    return sorted(set(out))


def fitting_ks(ks: Sequence[float], n_heads: int) -> list[float]:
    """The ``ks`` that are at most half of ``n_heads`` (a small model cannot have 5 heads in
    both its top and its bottom of 8)."""
    return [k for k in ks if _count(k, n_heads) <= n_heads // 2]


def ranked_heads(frame: pd.DataFrame, score: str, *, by_magnitude: bool = False) -> list[Head]:
    """Heads of a per-head frame ordered most important first by ``score`` (|score| with
    ``by_magnitude``), ties broken by layer then head."""
    missing = {"layer", "head", score} - set(frame.columns)
    if missing:
        raise WorkbenchError(f"a ranking frame needs columns layer, head and {score!r}; it lacks {sorted(missing)}")
    per_head = frame.groupby(["layer", "head"], as_index=False)[score].mean()
    key = per_head[score].abs() if by_magnitude else per_head[score]
    if key.isna().any():
        raise WorkbenchError(f"score {score!r} has NaN for {int(key.isna().sum())} head(s); a ranking needs a value per head")
    per_head = per_head.assign(_key=-key.to_numpy(dtype=float))
    per_head = per_head.sort_values(["_key", "layer", "head"], kind="stable")
    return [(int(l), int(h)) for l, h in zip(per_head["layer"], per_head["head"])]


def random_sets(heads: Sequence[Head], k: int, n: int, seed: int) -> list[list[Head]]:
    """``n`` random k-sets of ``heads`` (without replacement within a set), seeded by (seed, k)."""
    rng = np.random.default_rng([seed, k])
    return [sorted(heads[i] for i in rng.choice(len(heads), size=k, replace=False)) for _ in range(n)]


def causal_check(frame: pd.DataFrame, evaluate: Evaluate, *, ranking: str, score: str, metric: str,
                 higher_is_better: bool, ks: Sequence[float] = DEFAULT_KS, n_random: int = N_RANDOM,
                 by_magnitude: bool = False, seed: int = 0, heads: Sequence[Head] | None = None) -> pd.DataFrame:
    """Check one head ranking causally: top-k vs bottom-k vs random k-sets, ablated.

    Args:
        frame: one row per head with ``layer, head`` and the ranking's ``score`` (higher = more
            important; ``by_magnitude`` ranks by |score|, for signed effects).
        evaluate: ``evaluate(head_sets) -> [metric with that set ablated]``, on prompts held out
            from those that made the ranking (`loss_evaluator`, `niah_evaluator`, ...). Called
            once with every set of every k (and the empty set: the clean metric).
        ranking: the ranking's name in the table (``"importance (gradient)"``).
        score: the column to rank by.
        metric: the metric's name (``"held-out loss (nats)"``).
        higher_is_better: the metric's direction (accuracy: True; loss: False).
        ks: counts, or fractions of all heads (default 1, 3, 5 and 10% of heads).
        n_random: random k-sets per k (≥ 5 by default; median and extremes reported).
        heads: the heads a random set is drawn from (default: every head of the frame); drawn
            in (layer, head) order, so the draws do not depend on the ranking.
    Returns:
        DataFrame ``ranking, k, top, bottom, random_median, random_lo, random_hi, metric`` and
        ``clean, beats_random, top_heads, bottom_heads, n_random, higher_is_better``: one row
        per k. ``random_lo`` / ``random_hi`` are the lowest and highest metric over the draws;
        ``beats_random``: top-k is worse than the median draw and at least as bad as the worst
        (≤ random_lo when higher is better, ≥ random_hi otherwise).
    """
    n_random = checks.integer("n_random", n_random, low=1)
    order = ranked_heads(frame, score, by_magnitude=by_magnitude)
    # the pool in (layer, head) order, not the ranking's: every ranking checked with one seed
    # meets the same random k-sets
    pool = sorted(order) if heads is None else sorted((int(l), int(h)) for l, h in heads)
    counts = resolve_ks(ks, len(order))
    sets: list[list[Head]] = [[]]
    layout = []
    for k in counts:
        top, bottom = sorted(order[:k]), sorted(order[-k:])
        draws = random_sets(pool, k, n_random, seed)
        layout.append((k, top, bottom, len(sets)))
        sets += [top, bottom, *draws]
    values = [float(v) for v in evaluate(sets)]
    if len(values) != len(sets):
        raise WorkbenchError(f"evaluate returned {len(values)} value(s) for {len(sets)} head sets")
    clean = values[0]
    rows = []
    for k, top, bottom, at in layout:
        top_v, bottom_v = values[at], values[at + 1]
        rand = np.array(values[at + 2:at + 2 + n_random])
        lo, hi = float(rand.min()), float(rand.max())
        median = float(np.median(rand))
        beats = beats_random(top_v, median, lo, hi, higher_is_better)
        rows.append({"ranking": ranking, "k": k, "top": top_v, "bottom": bottom_v,
                     "random_median": median, "random_lo": lo, "random_hi": hi, "metric": metric,
                     "clean": clean, "beats_random": bool(beats),
                     "top_heads": " ".join(f"L{l}H{h}" for l, h in top),
                     "bottom_heads": " ".join(f"L{l}H{h}" for l, h in bottom),
                     "n_random": n_random, "higher_is_better": bool(higher_is_better)})
    table = pd.DataFrame(rows)
    table.attrs.update(seed=seed, score=score, by_magnitude=by_magnitude)
    return table


def verdicts(table: pd.DataFrame) -> list[str]:
    """One plain sentence per (ranking, k): whether ablating its top-k hurt more than every
    random k-set, with the numbers (for the report and the dashboard)."""
    out = []
    for r in table.itertuples():
        worse = "lower" if r.higher_is_better else "higher"
        if r.beats_random:
            out.append(f"{r.ranking}, k={r.k}: beats random. Ablating its top {r.k} gives {r.metric} {r.top:.4g}, "
                       f"{worse} than the median of {r.n_random} random {r.k}-sets and no draw worse "
                       f"(median {r.random_median:.4g}, "
                       f"range {r.random_lo:.4g}–{r.random_hi:.4g}; clean {r.clean:.4g}; bottom {r.k}: {r.bottom:.4g}).")
        else:
            out.append(f"{r.ranking}, k={r.k}: does NOT beat random. Ablating its top {r.k} gives {r.metric} "
                       f"{r.top:.4g}; {r.n_random} random {r.k}-sets give median {r.random_median:.4g} ("
                       f"range {r.random_lo:.4g}–{r.random_hi:.4g}; clean {r.clean:.4g}; bottom {r.k}: {r.bottom:.4g}).")
    return out


# -- evaluators ---------------------------------------------------------------------------
def _masks(model, head_sets: list[list[Head]]) -> torch.Tensor:
    from workbench.heads import mask_without

    return torch.stack([mask_without(model, s) for s in head_sets])  # (sets, layer, head)


def loss_evaluator(model, prompts, *, answers=None, means: torch.Tensor | None = None,
                   batch_size: int = 8) -> Evaluate:
    """``evaluate(head_sets)``: mean loss over ``prompts`` with each set zero-ablated (or
    mean-ablated with ``means``, `workbench.heads.head_means` over a reference distribution), the
    loss of `head_importance` (answers: task loss). All sets run in batched forwards."""
    from workbench.analyzers import importance as imp

    batches = imp._batches(model, prompts, batch_size, 0, answers)
    n_prompts = sum(b.ids.shape[0] for b in batches)

    def evaluate(head_sets):
        with torch.no_grad():
            loss = imp._masked_totals(model, batches, _masks(model, head_sets), means)[0]
        return (loss / n_prompts).tolist()

    return evaluate


def niah_hits(model, trials, head_sets: list[list[Head]], *, batch_size: int = 4) -> torch.Tensor:
    """Greedy exact match of every trial's answer (teacher forced) with each set zero-ablated:
    ``[sets, trials]`` bool. All sets of a batch of equal-length trials share forwards (SDPA
    attention, so long haystacks form no N×N weights)."""
    from workbench.analyzers.retrieval import encode_trials, read_trials, trial_batches
    from workbench.masked import masked_forward, sdpa

    encoded = encode_trials(model, read_trials(trials))
    masks = _masks(model, head_sets)
    hits = torch.zeros(len(head_sets), len(encoded), dtype=torch.bool)
    with torch.no_grad(), sdpa(model):
        for batch in trial_batches(model, encoded, batch_size):
            p, a = batch.prompt_len, batch.answer_len
            answer = batch.ids[:, p:]  # (batch, a)

            def reduce(logits, answer=answer):  # (copies * batch, a, vocab) -> (copies * batch,)
                return (logits.argmax(-1) == answer.repeat(logits.shape[0] // answer.shape[0], 1)).all(-1)

            hits[:, batch.rows] = masked_forward(model, batch.ids, None, masks, reduce,
                                                 window=(p - 1, p + a - 1)).cpu()
    return hits


def niah_evaluator(model, trials, *, batch_size: int = 4) -> Evaluate:
    """``evaluate(head_sets)``: needle-in-a-haystack accuracy (greedy exact match of the answer,
    teacher forced) over ``trials`` with each set zero-ablated (Wu et al.'s causal test)."""
    from workbench.analyzers.retrieval import encode_trials, read_trials

    rows = read_trials(trials)
    encode_trials(model, rows)  # validate now, not at the first call

    def evaluate(head_sets):
        return niah_hits(model, rows, head_sets, batch_size=batch_size).double().mean(1).tolist()

    return evaluate


def task_evaluator(model, task, *, metric: str = "logit_diff") -> Evaluate:
    """``evaluate(head_sets)``: a circuit task's metric on its clean prompts with each set
    zero-ablated: the mean logit difference (answer − corrupted answer, first tokens, final
    position; Wang et al. 2022) or ``"accuracy"`` (top next token = the answer's first token)."""
    from workbench.analyzers.circuits import encode_task, logit_diff
    from workbench.masked import masked_forward

    checks.choice("task metric", metric, ("logit_diff", "accuracy"))
    groups = encode_task(model, task)
    n = sum(len(g.clean) for g in groups)

    def evaluate(head_sets):
        masks = _masks(model, head_sets)
        total = torch.zeros(len(head_sets), dtype=torch.float64)
        for g in groups:
            pos = g.clean.shape[1]

            def reduce(logits, g=g):  # (copies * batch, 1, vocab) -> (copies * batch,)
                last = logits[:, -1].double()
                if metric == "accuracy":
                    return (last.argmax(-1) == g.answer.repeat(len(last) // len(g.answer))).double()
                return logit_diff(last, g)

            with torch.no_grad():
                out = masked_forward(model, g.clean, None, masks, reduce, window=(pos - 1, pos))  # (sets, batch)
            total += out.sum(1).cpu()
        return (total / n).tolist()

    return evaluate


def induction_evaluator(model, *, n_probes: int = 8, probe_len: int = 24, seed: int = 1) -> Evaluate:
    """``evaluate(head_sets)``: next-token loss on the repeated half of random token sequences
    (the TransformerLens induction probe, `patterns.repeated_token_probes`, drawn with a seed
    other than the one that scored the heads), each set zero-ablated."""
    from workbench.analyzers.patterns import _special_frame, repeated_token_probes
    from workbench.masked import masked_forward

    probes = repeated_token_probes(model, n_probes=n_probes, probe_len=probe_len, seed=seed).to(model.device)
    prefix, suffix = _special_frame(model)
    length = (probes.shape[1] - len(prefix) - len(suffix)) // 2  # the probe length actually used
    start = len(prefix) + length  # the repeat's first token (not predictable: it follows the first copy)
    lo, hi = start, start + length - 1  # logits at these positions predict repeat tokens 2..length
    targets = probes[:, lo + 1:hi + 1]  # (batch, length - 1)

    def evaluate(head_sets):
        masks = _masks(model, head_sets)

        def reduce(logits):  # (copies * batch, window, vocab) -> (copies * batch,)
            labels = targets.repeat(logits.shape[0] // targets.shape[0], 1)
            return torch.nn.functional.cross_entropy(logits.double().transpose(1, 2), labels, reduction="none").mean(-1)

        with torch.no_grad():
            out = masked_forward(model, probes, None, masks, reduce, window=(lo, hi))  # (sets, batch)
        return out.mean(1).tolist()

    return evaluate


def cached(evaluate: Evaluate) -> Evaluate:
    """``evaluate`` remembering each head set's value: several rankings checked with one seed on
    one evaluator meet the same clean set and random k-sets (drawn in (layer, head) order), and
    each is ablated once (`workbench.analyzers.niah.cached_hits` does this for NIAH trials)."""
    seen: dict[frozenset, float] = {}

    def run(head_sets):
        keys = [frozenset(map(tuple, s)) for s in head_sets]
        todo = list(dict.fromkeys(k for k in keys if k not in seen))
        if todo:
            values = [float(v) for v in evaluate([sorted(k) for k in todo])]
            if len(values) != len(todo):
                raise WorkbenchError(f"evaluate returned {len(values)} value(s) for {len(todo)} head sets")
            seen.update(zip(todo, values))
        return [seen[k] for k in keys]

    return run


def summarize_k(table: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """The rows of one k (default: the k closest to 5) for a compact view."""
    if table.empty:
        return table
    ks = sorted(table["k"].unique())
    k = min(ks, key=lambda v: (abs(v - 5), v)) if k is None else k
    return table[table["k"] == k].reset_index(drop=True)


__all__ = [
    "COLUMNS",
    "DEFAULT_KS",
    "cached",
    "causal_check",
    "induction_evaluator",
    "loss_evaluator",
    "niah_evaluator",
    "random_sets",
    "ranked_heads",
    "resolve_ks",
    "summarize_k",
    "task_evaluator",
    "verdicts",
]
