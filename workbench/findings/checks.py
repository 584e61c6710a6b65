"""Findings, summaries and glossary entries of the ranking checks: global head importance, the
importance methods side by side, pruning curves under each ranking, the causal checks, and
DuoAttention's gates. Registered by `workbench.analyzers.importance`, `.rankings`,
`.causal_checks` and `.duo` (``Analyzer(findings=..., summary=..., glossary=...)``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.findings import TOP, Finding, fmt, heads_text, top_heads
from workbench.glossary import Term

_MICHEL = "Michel et al. 2019, Are Sixteen Heads Really Better than One?"
_XIAO = "Xiao et al. 2024, DuoAttention"
_WU = "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality"
METHOD_LABELS = {"gradient": "gradient", "ablation_zero": "ablation (zero)", "ablation_mean": "ablation (mean)",
                 "integrated_gradients": "integrated gradients"}

METHOD_TERMS = {
    "method": Term("method", "the importance method: gradient E|∂L/∂ξ|, Δloss with the head zeroed or replaced by "
                   "its mean over reference prompts, or −IG of the loss over ξ from 0 to 1", "name", "",
                   _MICHEL + "; Wang et al. 2022; Sundararajan et al. 2017", direction=None),
}
PRUNING_TERMS = {
    "ranking": Term("ranking", "the order heads are pruned in: a method's importance (least important first) or a "
                    "random order (the control)", "name", "", _MICHEL, direction=None),
}
CHECK_TERMS = {
    "ranking": Term("ranking", "the head ranking checked, as <table>.<score>", "name", "", "", direction=None),
    "k": Term("k", "heads ablated (zeroed) at once", "1 .. half the heads", "", "", direction=None),
    "top": Term("top", "the ranking's metric on held-out prompts with its top-k heads ablated", "metric units",
                "", "", direction=None),
    "bottom": Term("bottom", "the metric with the ranking's bottom-k heads ablated", "metric units", "", "",
                   direction=None),
    "random_median": Term("random_median", "median of the metric over 5 random k-sets ablated", "metric units",
                          "", "", direction=None),
    "random_lo": Term("random_lo", "lowest metric over the random k-sets", "metric units", "", "", direction=None),
    "random_hi": Term("random_hi", "highest metric over the random k-sets", "metric units", "", "", direction=None),
    "clean": Term("clean", "the metric with no head ablated", "metric units", "", "", direction=None),
    "n_random": Term("n_random", "random k-sets drawn per k", "count", "", "", direction=None),
    "higher_is_better": Term("higher_is_better", "the metric's direction: true for accuracy or logit difference, "
                             "false for a loss", "true/false", "", "", direction=None),
    "beats_random": Term("beats_random", "top-k is worse than the median random k-set and no random draw is worse",
                         "true/false", "", "", direction=None),
}
NIAH_TERMS = {
    "held_out": Term("held_out", "the cell's trials are held out from those that scored the retrieval heads",
                     "true/false", "", _WU, direction=None),
}
NIAH_CURVE_TERMS = {**CHECK_TERMS, "is_set_size": Term(
    "is_set_size", "k equals the size of the labelled retrieval set (Wu et al. score > 0.1)", "true/false", "", _WU,
    direction=None)}
DUO_TERMS = {
    "gate": Term("gate", "α of the KV head after DuoAttention's training: out = α·full + (1 − α)·streaming "
                 "(sink + recent window), trained by hidden-state distillation + λ·mean|α|", "[0, 1]",
                 "the head needs the whole context more", _XIAO),
    "kv_head": Term("kv_head", "index of the key/value head within its layer (its query heads share it)",
                    "0 .. n_kv_heads − 1", "", "", direction=None),
    "wu_retrieval": Term("wu_retrieval", "one of the KV head's query heads has Wu et al. retrieval score > 0.1",
                         "true/false", "", _WU, direction=None),
    "wu_max_score": Term("wu_max_score", "largest Wu et al. retrieval score among the KV head's query heads",
                         "[0, 1]", "", _WU),
}
DUO_TERMS["is_retrieval"] = Term("is_retrieval", "gate α ≥ 0.5 (DuoAttention's deployment threshold)", "true/false",
                                 "", _XIAO, direction=None, label="retrieval KV head (α ≥ 0.5)")
EFFECT_TERMS = {
    "accuracy_full": Term("accuracy_full", "NIAH accuracy (greedy exact match) with every KV head full", "[0, 1]",
                          "", _XIAO, direction=None),
    "accuracy_duo": Term("accuracy_duo", "NIAH accuracy with the retrieval KV heads full and the others streaming",
                         "[0, 1]", "", _XIAO, direction=None),
    "accuracy_streaming": Term("accuracy_streaming", "NIAH accuracy with every KV head streaming", "[0, 1]", "",
                               _XIAO, direction=None),
    "kv_full_bytes": Term("kv_full_bytes", "KV-cache bytes at the context length with every KV head full "
                          "(keys and values, 2 bytes each)", "bytes", "", _XIAO, direction=None),
    "kv_duo_bytes": Term("kv_duo_bytes", "KV-cache bytes with the non-retrieval KV heads keeping sink + recent "
                         "tokens", "bytes", "", _XIAO, direction=None),
    "kv_saved_fraction": Term("kv_saved_fraction", "1 − KV-cache bytes with the gates deployed / with every head "
                              "full, at the context length", "[0, 1)", "more memory saved", _XIAO, direction=None),
}


# -- findings -----------------------------------------------------------------------------
def importance(frame: pd.DataFrame, run) -> list[Finding]:
    """The default (global gradient) ranking's top heads."""
    top5 = top_heads(frame, "raw", k=5, direction="abs")
    best, layers = top5[:TOP], sorted({h.layer for h in top5})
    return [Finding(f"Most important heads (gradient E|∂L/∂ξ|, ranked over all heads; Michel et al. 2019): "
                    f"{heads_text(best)}. The top 5 lie in layer(s) {', '.join(map(str, layers))}.", best,
                    ranking="importance")]


def methods(frame: pd.DataFrame, run) -> list[Finding]:
    """Each method's top heads, and how the methods agree (Spearman ρ of |score|)."""
    from scipy.stats import spearmanr

    from workbench.analyzers.causal_checks import ranking_name

    out = []
    grids = {}
    for method, part in frame.groupby("method", sort=False):
        best = top_heads(part, "raw", direction="high")
        grids[method] = part.sort_values(["layer", "head"])["raw"].to_numpy(dtype=float)
        out.append(Finding(f"{METHOD_LABELS.get(method, method)}: top heads {heads_text(best)}.", best,
                           ranking=ranking_name(str(method))))
    names = list(grids)
    pairs = [(a, b, float(spearmanr(np.abs(grids[a]), np.abs(grids[b])).statistic))
             for i, a in enumerate(names) for b in names[i + 1:]]
    if pairs:
        low = min(p[2] for p in pairs)
        out.append(Finding("The methods agree with Spearman ρ (|scores|, all heads) "
                           + ", ".join(f"{METHOD_LABELS.get(a, a)}–{METHOD_LABELS.get(b, b)} {fmt(r)}" for a, b, r in pairs)
                           + ".", caveat=low < 0.3))
    return out


def _pruned_at(frame: pd.DataFrame, targets) -> dict[str, list]:
    """``{ranking: [row nearest each target fraction pruned]}`` of a pruning-curves frame (one
    ranking, "gradient", when it has no ``ranking`` column)."""
    frame = frame if "ranking" in frame.columns else frame.assign(ranking="gradient")
    return {name: [part.iloc[(part["fraction_pruned"] - t).abs().argmin()] for t in targets]
            for name, part in frame.groupby("ranking", sort=False)}


def pruning(frame: pd.DataFrame, run) -> list[Finding]:
    """Loss with 10% and 50% of the heads pruned under each ranking, against the random order."""
    parts = [f"{name} " + ", ".join(f"{100 * row.fraction_pruned:.0f}%: {fmt(row.loss)}" for row in rows)
             for name, rows in _pruned_at(frame, (0.1, 0.5)).items()]
    on = frame.attrs.get("measured_on", "")
    return [Finding(f"Loss as the least important heads go first (from {fmt(frame['loss'].iloc[0])} with no head "
                    f"pruned{'; on ' + on if on else ''}): " + "; ".join(parts) + ". A ranking whose curve stays "
                    "below the random one keeps the heads the model needs.")]


def causal_checks(frame: pd.DataFrame, run) -> list[Finding]:
    """One sentence per ranking at the k closest to 5 (plainly saying when it does not beat random)."""
    from workbench.analyzers.causal import summarize_k, verdicts

    out = []
    for _, part in frame.groupby("ranking", sort=False):
        row = summarize_k(part.reset_index(drop=True))
        text = verdicts(row)[0]
        out.append(Finding(text, caveat=not bool(row["beats_random"].iloc[0])))
    if frame.attrs.get("split"):
        out.append(Finding(f"Held-out prompts: {frame.attrs['split']}. Heads are zero-ablated in every check."))
    for name, why in (frame.attrs.get("skipped") or {}).items():
        out.append(Finding(f"Not checked: {name} ({why}).", caveat=True))
    return out


def duo_gates(frame: pd.DataFrame, run) -> list[Finding]:
    kv = frame[frame["is_retrieval"].astype(bool)]
    best = frame.sort_values("gate", ascending=False).head(3)
    text = (f"DuoAttention (Xiao et al. 2024) keeps {len(kv)} of {len(frame)} KV heads full (gate α ≥ "
            f"{fmt(frame.attrs.get('threshold', 0.5))}; sink {frame.attrs.get('sink')}, recent "
            f"{frame.attrs.get('recent')} tokens, trained {frame.attrs.get('steps')} steps on "
            f"{frame.attrs.get('n_train')} passkey trials of {frame.attrs.get('train_tokens')} tokens). Highest gates: "
            + ", ".join(f"L{int(r.layer)} KV{int(r.kv_head)} ({fmt(r.gate)})" for r in best.itertuples()) + ".")
    out = [Finding(text)]
    if "wu_retrieval" in frame.columns:
        out.append(Finding(f"Against Wu et al.'s retrieval heads mapped to KV heads ({frame.attrs.get('n_wu_kv')} KV "
                           f"heads hold one): Jaccard {fmt(frame.attrs.get('jaccard', float('nan')))}."))
    return out


def duo_effect(frame: pd.DataFrame, run) -> list[Finding]:
    parts = [f"{int(r.context_length)} tokens: {fmt(r.accuracy_full)} full, {fmt(r.accuracy_duo)} DuoAttention, "
             f"{fmt(r.accuracy_streaming)} all streaming, {100 * r.kv_saved_fraction:.0f}% of the KV cache saved"
             for r in frame.itertuples()]
    return [Finding("NIAH accuracy on held-out passkey trials with DuoAttention's gates deployed: " + "; ".join(parts) + ".")]


# -- summaries ----------------------------------------------------------------------------
def pruning_summary(frame: pd.DataFrame) -> dict[str, float]:
    return {f"loss with 50% of heads pruned ({name})": float(row["loss"])
            for name, (row,) in _pruned_at(frame, (0.5,)).items()}


def checks_summary(frame: pd.DataFrame) -> dict[str, float]:
    from workbench.analyzers.causal import summarize_k

    out = {}
    for name, part in frame.groupby("ranking", sort=False):
        row = summarize_k(part.reset_index(drop=True)).iloc[0]
        out[f"{name}: top-{int(row.k)} harm over random median"] = float(
            (row.random_median - row.top) if row.higher_is_better else (row.top - row.random_median))
    return out


def duo_summary(frame: pd.DataFrame) -> dict[str, float]:
    out = {"DuoAttention retrieval KV heads (% of KV heads)": 100 * float(frame["is_retrieval"].mean())}
    if "jaccard" in frame.attrs:
        out["DuoAttention vs Wu et al. Jaccard (KV heads)"] = float(frame.attrs["jaccard"])
    return out


__all__ = ["causal_checks", "checks_summary", "duo_effect", "duo_gates", "duo_summary", "importance", "methods",
           "pruning", "pruning_summary"]
