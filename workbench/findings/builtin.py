"""Findings of the built-in analyses: ``fn(frame, run) -> list[Finding]``, one per table."""

from __future__ import annotations

import pandas as pd

from workbench import findings as F
from workbench.findings import Finding, NamedHead, fmt, heads_text, top_heads
from workbench.overlap import beats_random

SINK_EPS = 0.3            # Gu et al. 2024
HIDDEN_SINK_ALPHA = 0.1   # Yu et al. 2024 (ACT)
MIN_QUERIES = 10          # `hidden_sinks`' default: keys seen by fewer queries say nothing
RETRIEVAL = 0.1           # Wu et al. 2024
STRONG_RETRIEVAL = 0.5
WEAK_INDUCTION = 0.25     # about half of what an ideal induction head scores on the repeated probe


def _share(flags: pd.Series) -> str:
    return f"{int(flags.sum())} of {len(flags)} heads ({100 * flags.mean():.0f}%)"


def sinks(frame: pd.DataFrame, run) -> list[Finding]:
    eps = float(frame.attrs.get("eps", SINK_EPS))
    heads = F.per_head(frame, "sink_score")
    flags = heads["sink_score"] > eps
    best = top_heads(frame, "sink_score")
    if flags.any():
        text = (f"Sink^ε = {100 * flags.mean():.0f}%: {_share(flags)} put more than ε = {eps} of their attention on "
                f"the first token (α₀, Gu et al. 2024). Strongest: {heads_text(best)}.")
    else:
        text = f"No head is a sink head at ε = {eps} (Gu et al. 2024); the largest α₀ is {heads_text(best[:1])}."
    return [Finding(text, best, ranking="sink_score")]


def token_sinks(frame: pd.DataFrame, run) -> list[Finding]:
    lengths = frame.groupby("prompt_id")["position"].transform("max") + 1
    seen = lengths - frame["position"]
    hidden = frame[(frame["position"] >= 1) & (frame["alpha"] > HIDDEN_SINK_ALPHA) & (seen >= MIN_QUERIES)]
    n_prompts = frame["prompt_id"].nunique()
    if hidden.empty:
        return [Finding(f"No token past the first draws α > {HIDDEN_SINK_ALPHA} in any head (hidden sinks, Yu et al. "
                        f"2024) over the {n_prompts} prompts.")]
    tokens = hidden.drop_duplicates(["prompt_id", "position"])
    top = hidden.sort_values("alpha", ascending=False).iloc[0]
    head = NamedHead(int(top["layer"]), int(top["head"]), "alpha", float(top["alpha"]))
    return [Finding(f"{len(tokens)} tokens past the first are hidden sinks (α > {HIDDEN_SINK_ALPHA} in some head, seen "
                    f"by ≥ {MIN_QUERIES} queries; Yu et al. 2024) in {tokens['prompt_id'].nunique()} of {n_prompts} "
                    f"prompts; the strongest is {int(top.position)}: {top.token!r} of prompt {int(top.prompt_id)} "
                    f"in {head.label} (α = {fmt(top.alpha)}).", (head,))]


def secondary_sinks(frame: pd.DataFrame, run) -> list[Finding]:
    if frame.empty:
        return [Finding("No token's hidden state lines up with the first token's (|cos| > 0.9, Wong et al. 2025): "
                        "no secondary sinks.")]
    longest = frame.sort_values(["n_layers", "mean_cos"], ascending=False).iloc[0]
    return [Finding(f"{len(frame)} secondary sinks (hidden state |cos| > 0.9 with the first token's, Wong et al. "
                    f"2025); the longest-lived is {int(longest.position)}: {longest.token!r} of prompt "
                    f"{int(longest.prompt_id)}, layers {int(longest.start_layer)}–{int(longest.end_layer)}.")]


def massive(frame: pd.DataFrame, run) -> list[Finding]:
    if frame.empty:
        return [Finding("No hidden-state entry is massive (|h| > 100 and > 1000× the layer's median, Sun et al. "
                        "2024) in any layer.")]
    top = frame.iloc[frame["value"].abs().argmax()]
    layers = sorted(frame["layer"].unique())
    return [Finding(f"{len(frame)} massive activations in layers {layers[0]}–{layers[-1]}; the largest is "
                    f"|h| = {fmt(abs(top.value))} ({fmt(top.ratio)}× the median) at layer {int(top.layer)}, "
                    f"{int(top.position)}: {top.token!r}, dimension {int(top.dim)} (Sun et al. 2024).")]


def summary_heads(frame: pd.DataFrame, run) -> list[Finding]:
    focused = top_heads(frame, "entropy", table="head_summary")
    sharp = top_heads(frame, "max_prob", table="head_summary")
    return [Finding(f"Most focused heads (lowest entropy, pooled over query rows): {heads_text(focused)} nats; most "
                    f"confident (highest max attention): {heads_text(sharp)}.", focused)]


def head_types(frame: pd.DataFrame, run) -> list[Finding]:
    out = []
    counts = frame["pattern"].value_counts()
    total = len(frame)
    out.append(Finding("Pattern types (k-means clusters of the descriptors, named by the trait that stands out): "
                       + ", ".join(f"{name} {n} of {total}" for name, n in counts.items()) + "."))
    probe = "measured on seeded random token sequences repeated twice, not on the run's prompts"
    for score, kind in (("induction", "induction"), ("prev_token", "previous-token")):
        best = top_heads(frame, score, table="head_patterns")
        strong = best[0].value >= (WEAK_INDUCTION if score == "induction" else 0.5)
        named = frame[frame["pattern"].astype(str).str.startswith(kind)]
        note = ""
        if len(named):
            mean = float(named[score].mean())
            layers = sorted(set(int(x) for x in named["layer"]))
            note = f" The {len(named)} heads typed {kind!r} (layers {layers}) score {fmt(mean)} on average."
        caveat = not strong
        weak = (f" These are weak: an ideal {kind} head scores about {'0.5' if score == 'induction' else '1'} "
                "on this probe." if caveat else "")
        out.append(Finding(f"Top {kind} heads ({probe}): {heads_text(best)}.{note}{weak}", best, ranking=score,
                           example="repeated", caveat=caveat))
    return out


def retrieval(frame: pd.DataFrame, run) -> list[Finding]:
    heads = F.per_head(frame, "retrieval_score")
    flags = heads["retrieval_score"] > RETRIEVAL
    strong = int((heads["retrieval_score"] > STRONG_RETRIEVAL).sum())
    best = top_heads(frame, "retrieval_score")
    trials = frame.attrs.get("n_correct")
    on = f" over {trials} correctly answered needle trials" if trials else ""
    return [Finding(f"{_share(flags)} are retrieval heads (score > {RETRIEVAL}, Wu et al. 2024){on}: the one set the "
                    f"NIAH table, the NIAH curve, the causal checks and the DuoAttention comparison use. Of them {strong} "
                    f"copy more than half the needle (score > {STRONG_RETRIEVAL}); the weakest scores "
                    f"{fmt(float(heads.loc[flags, 'retrieval_score'].min())) if flags.any() else '—'}. "
                    f"Strongest: {heads_text(best)}.", best, ranking="retrieval_score", caveat=flags.mean() > 0.25)]


def niah(frame: pd.DataFrame, run) -> list[Finding]:
    """NIAH accuracy on held-out trials: full, the one labelled retrieval set ablated (which set,
    which threshold, its size), and random sets of its size (median and range), in plain words."""
    if "condition" not in frame.columns:
        return [Finding(f"Needle-in-a-haystack accuracy {fmt(frame['accuracy'].mean())} (mean over "
                        f"{len(frame)} context × depth cells).")]
    from workbench.analyzers.niah import SET_NAME, niah_summary

    got = niah_summary(frame)
    on = frame.attrs.get("trials") or "held-out passkey trials"
    size = got["set_size"]
    if not got["random"]:
        note = frame.attrs.get("note")
        return [Finding(f"Needle-in-a-haystack accuracy {fmt(got['full'])} on {on}; no head is in the retrieval set "
                        f"({SET_NAME}){': ' + note if note else ''}, so nothing was ablated.", caveat=True)]
    beats = beats_random(got["set_ablated"], got["random_median"], min(got["random"]), max(got["random"]), True)
    verdict = ("It hurts more than every random set." if beats else
               "It does NOT hurt more than random sets of its size: the set is not shown to be causal here.")
    return [Finding(f"Needle-in-a-haystack accuracy on {on}: {fmt(got['full'])} full; {fmt(got['set_ablated'])} with "
                    f"the retrieval set ablated ({SET_NAME}, the set the retrieval grid rings: {size} heads), a drop "
                    f"of {got['set_drop_points']:.0f} points; {fmt(got['random_median'])} with {size} random heads "
                    f"ablated (median of {len(got['random'])} draws, range {fmt(min(got['random']))}–"
                    f"{fmt(max(got['random']))}). {verdict}", caveat=not beats)]


def niah_curve(frame: pd.DataFrame, run) -> list[Finding]:
    """The NIAH-over-k curve: per k, top-k by retrieval score against random k-sets."""
    if frame.empty:
        return [Finding(f"No NIAH curve: {frame.attrs.get('note') or 'no retrieval scores'}.", caveat=True)]
    parts = [f"k={int(r.k)}{' (the set)' if getattr(r, 'is_set_size', False) else ''}: {fmt(r.top)} vs random "
             f"median {fmt(r.random_median)}{'' if r.beats_random else ' (does NOT beat random)'}"
             for r in frame.sort_values("k").itertuples()]
    lost = not frame["beats_random"].any()
    on = frame.attrs.get("trials") or "held-out passkey trials"
    return [Finding(f"NIAH accuracy with the top-k heads by retrieval score ablated (clean {fmt(frame['clean'].iloc[0])}, "
                    f"{on}): " + "; ".join(parts) + "."
                    + (" At no k does the ranking beat random." if lost else ""), caveat=lost)]


def circuits(frame: pd.DataFrame, run) -> list[Finding]:
    from workbench.overlap import chance

    methods = list(dict.fromkeys(frame["method"]))
    method = "activation_patching" if "activation_patching" in methods else methods[0]
    part = frame[frame["method"] == method]
    out, sets, n_total = [], {}, 0
    for task in dict.fromkeys(part["task"]):
        one = part[part["task"] == task]
        n_total = len(one)
        members = one[one["in_circuit"].astype(bool)]
        sets[task] = set(zip(members["layer"], members["head"]))
        best = top_heads(one, "effect", direction="abs")
        negative = int((one["effect"] < -0.1).sum())
        neg = f"; {negative} heads work against it (effect < −0.1)" if negative else ""
        size = (f"a circuit of {len(members)} heads (the smallest top-|effect| set keeping 0.8 of the logit "
                f"difference on held-out prompts with every other head resample-ablated from the prompt's "
                f"corrupted twin; {method.replace('_', ' ')})" if len(members) else
                f"no faithful circuit: no set of at most half the heads keeps 0.8 of the logit difference on "
                f"held-out prompts ({method.replace('_', ' ')}), so none is marked")
        out.append(Finding(f"{task}: {size}; largest effects {heads_text(best, signed=True)}{neg}.", best,
                           ranking=f"effect:{task}", example=task, caveat=not len(members)))
    names = list(sets)
    if len(names) >= 2 and sets[names[0]] and sets[names[1]]:
        a, b = sets[names[0]], sets[names[1]]
        shared = len(a & b)
        c = chance(n_total, len(a), len(b), shared)
        out.append(Finding(f"{names[0]} and {names[1]} share {shared} heads: Jaccard {fmt(shared / len(a | b))}, overlap "
                           f"coefficient {fmt(shared / min(len(a), len(b)))}, {fmt(shared / len(a))} of {names[0]}'s "
                           f"heads are in {names[1]}'s and {fmt(shared / len(b))} the other way (Merullo et al. 2024). "
                           f"Random sets of these sizes among the {n_total} heads would share {fmt(c['expected_shared'])} "
                           f"(Jaccard {fmt(c['chance_jaccard'])}; hypergeometric p = {fmt(c['p_value'], 3)} for "
                           f"sharing {shared} or more)."))
    return out


def saliency(frame: pd.DataFrame, run) -> list[Finding]:
    views = {v: frame[frame["view"] == v]["spearman"] for v in ("all_mean", "rollout")}
    agg = ", ".join(f"{'all-head mean' if v == 'all_mean' else 'rollout'} ρ = {fmt(s.iloc[0])}"
                    for v, s in views.items() if len(s))
    best = top_heads(frame, "spearman", direction="high")
    worst = top_heads(frame, "spearman", k=1, direction="low")
    n = int(frame["n_prompts"].iloc[0]) if "n_prompts" in frame.columns else None
    over = f" over {n} prompts" if n else ""
    return [Finding(f"Attention against integrated-gradients attributions (Spearman ρ per prompt, averaged{over}): "
                    f"{agg}; best-aligned heads {heads_text(best)}, least {heads_text(worst)} "
                    "(Jain & Wallace 2019: attention is not explanation).", best, ranking="spearman")]
