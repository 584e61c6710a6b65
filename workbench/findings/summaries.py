"""Model-level numbers of the built-in analyses (``Analyzer.summary``): what run comparisons put
side by side. Each is ``fn(frame) -> {label: number}``; shares are percentages of all heads."""

from __future__ import annotations

import pandas as pd

from workbench.findings import per_head


def sinks(frame: pd.DataFrame) -> dict[str, float]:
    eps = float(frame.attrs.get("eps", 0.3))
    heads = per_head(frame, "sink_score")
    return {f"Sink^ε (% of heads with α₀ > {eps})": 100 * float((heads["sink_score"] > eps).mean()),
            "mean α₀ over heads": float(heads["sink_score"].mean())}


def massive(frame: pd.DataFrame) -> dict[str, float]:
    return {"massive activations": float(len(frame)),
            "largest |h|": float(frame["value"].abs().max()) if len(frame) else 0.0}


def head_types(frame: pd.DataFrame) -> dict[str, float]:
    shares = frame["pattern"].astype(str).str.replace(r" \d+$", "", regex=True).value_counts(normalize=True)
    out = {f"% heads typed {name}": 100 * float(v) for name, v in shares.sort_index().items()}
    out["best induction score"] = float(frame["induction"].max())
    out["best previous-token score"] = float(frame["prev_token"].max())
    return out


def retrieval(frame: pd.DataFrame) -> dict[str, float]:
    heads = per_head(frame, "retrieval_score")
    return {"retrieval heads (% of heads, score > 0.1)": 100 * float((heads["retrieval_score"] > 0.1).mean()),
            "best retrieval score": float(heads["retrieval_score"].max())}


def niah(frame: pd.DataFrame) -> dict[str, float]:
    if "condition" not in frame.columns:
        return {"NIAH accuracy": float(frame["accuracy"].mean())}
    from workbench.analyzers.niah import niah_summary

    got = niah_summary(frame)
    return {"NIAH accuracy (full)": got["full"], "NIAH accuracy (retrieval set ablated)": got["set_ablated"],
            "NIAH accuracy (random sets of its size, median)": got["random_median"],
            "retrieval set size (heads, Wu et al. > 0.1)": float(got["set_size"])}


def niah_curve(frame: pd.DataFrame) -> dict[str, float]:
    from workbench.analyzers.causal import summarize_k

    if frame.empty:
        return {}
    row = summarize_k(frame).iloc[0]  # the k closest to 5, as every causal check's summary
    return {f"NIAH accuracy, top-{int(row.k)} retrieval heads ablated": float(row["top"]),
            f"NIAH accuracy, {int(row.k)} random heads ablated (median)": float(row["random_median"])}


def circuits(frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for (task, method), part in frame.groupby(["task", "method"], sort=False):
        out[f"{task} circuit size ({method.replace('_', ' ')})"] = float(part["in_circuit"].astype(bool).sum())
    return out


def saliency(frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for view, label in (("all_mean", "all-head mean"), ("rollout", "rollout")):
        rows = frame[frame["view"] == view]
        if len(rows):
            out[f"attention–saliency Spearman ({label})"] = float(rows["spearman"].iloc[0])
    return out
