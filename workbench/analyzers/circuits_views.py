"""What the report and dashboard show of the circuit tables beyond ``circuits``: figures, findings,
model-level summaries and glossary entries of ``circuit_faithfulness_curve`` and ``edge_circuits``
(registered in `circuits_tables`). Pure functions of the stored frames."""

from __future__ import annotations

import pandas as pd

from workbench.findings import Finding, fmt
from workbench.glossary import Term

_HANNA = "Hanna et al. 2024, Have Faith in Faithfulness"
_WANG = "Wang et al. 2022 (IOI: F(C)/F(M)); Conmy et al. 2023 (resample ablation)"

CURVE_TERMS = {
    "top": Term("top", "LD with only the top-k heads by |effect| kept (the rest resample-ablated: their output "
                "on each prompt's corrupted twin) / LD of the full model, on held-out prompts", "any real; 1 = as the full model",
                "the top-k heads alone keep more of the behaviour", _WANG + "; " + _HANNA,
                label="faithfulness of the top-k heads"),
    "random_median": Term("random_median", "median over random k-head sets of the same faithfulness", "any real",
                          "random sets keep more (the baseline the top-k set must beat)", _HANNA,
                          label="faithfulness of random k-sets (median)"),
    "random_lo": Term("random_lo", "smallest faithfulness among the random k-sets", "any real", "", _HANNA,
                      direction=None, label="random k-sets (lowest)"),
    "random_hi": Term("random_hi", "largest faithfulness among the random k-sets", "any real", "", _HANNA,
                      direction=None, label="random k-sets (highest)"),
    "ablated_top": Term("ablated_top", "LD with the top-k heads resample-ablated and every other head kept / LD of the "
                        "full model, on held-out prompts", "any real; 1 = no harm",
                        "removing the set hurts less (lower: the set matters)", _WANG, direction="low",
                        label="metric with the top-k ablated"),
    "ablated_random_median": Term("ablated_random_median", "median over random k-sets of the metric with the set "
                                  "ablated / the full model's", "any real", "removing random sets hurts less",
                                  _WANG, direction="low", label="metric with random k-sets ablated (median)"),
    "k": Term("k", "set size (heads)", "count", "", "", direction=None),
    "in_circuit": Term("in_circuit", "this k is the circuit's size: the smallest top-|effect| set reaching "
                       "faithfulness 0.8 on held-out prompts", "true/false", "", _HANNA, direction=None,
                       label="circuit size"),
}
EDGE_TERMS = {
    "score": Term("score", "(LD_clean − LD_edge corrupted) / (LD_clean − LD_corrupted), estimated by EAP-IG: "
                  "(a_u(corrupted) − a_u(clean)) · mean over 5 interpolation steps of ∂LD/∂x_v",
                  "any real; 1 = corrupting the edge alone removes the behaviour",
                  "the edge carries more of the behaviour (negative: it works against it)", _HANNA, direction="abs",
                  label="edge score"),
    "in_circuit": Term("in_circuit", "the edge is among the smallest top-|score| set whose faithfulness (every "
                       "other edge resample-ablated) reaches 0.8 on held-out prompts", "true/false", "", _HANNA,
                       direction=None, label="in edge circuit"),
    "faithfulness": Term("faithfulness", "LD with only the circuit's edges carrying clean values / LD of the full "
                         "model, on held-out prompts (the same on every row of a task)", "any real; 1 = as the full "
                         "model", "the edge circuit keeps more of the behaviour", _HANNA, direction=None,
                         label="edge circuit faithfulness"),
}


# -- faithfulness curve ---------------------------------------------------------------------------
def curve_figures(frame: pd.DataFrame) -> list:
    from workbench.figures.circuits import faithfulness_curve

    return [faithfulness_curve(part, title=f"{task}: faithfulness of the top-k heads vs random k-sets "
                               f"({part['method'].iloc[0].replace('_', ' ')} ranking)")
            for task, part in frame.groupby("task", sort=False)]


def curve_findings(frame: pd.DataFrame, run) -> list[Finding]:
    out = []
    for task, part in frame.groupby("task", sort=False):
        n_total = int(part["k"].max())
        chosen = part[part["in_circuit"].astype(bool)]
        if len(chosen):
            row = chosen.iloc[0]
            beats = row["top"] > row["random_hi"]
            hurt = (f"; with them ablated the task keeps {fmt(row['ablated_top'])} of its logit difference, with random "
                    f"sets ablated {fmt(row['ablated_random_median'])}") if "ablated_top" in part.columns else ""
            out.append(Finding(
                f"{task}: the top {int(row['k'])} heads by |effect| alone keep {fmt(row['top'])} of the logit difference "
                f"on held-out prompts (every other head resample-ablated from the corrupted twin); random "
                f"{int(row['k'])}-head sets keep {fmt(row['random_median'])} (range {fmt(row['random_lo'])} to "
                f"{fmt(row['random_hi'])}){hurt}.", example=task, caveat=not beats))
        else:
            half = part[part["k"] <= n_total // 2]
            best = half.loc[half["top"].idxmax()] if len(half) else part.iloc[0]
            out.append(Finding(
                f"{task}: no set of at most half the heads ({n_total // 2}) keeps 0.8 of the logit difference on "
                f"held-out prompts (best: the top {int(best['k'])} keep {fmt(best['top'])}, random sets of that size "
                f"{fmt(best['random_median'])}); the circuit is left empty rather than padded.", example=task,
                caveat=True))
    return out


def curve_summary(frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for task, part in frame.groupby("task", sort=False):
        chosen = part[part["in_circuit"].astype(bool)]
        out[f"{task} faithful circuit size (heads)"] = float(chosen["k"].iloc[0]) if len(chosen) else float("nan")
        if len(chosen):
            out[f"{task} circuit faithfulness (held out)"] = float(chosen["top"].iloc[0])
            out[f"{task} random same-size faithfulness (median)"] = float(chosen["random_median"].iloc[0])
    return out


# -- edge circuits --------------------------------------------------------------------------------
def edge_figures(frame: pd.DataFrame) -> list:
    from workbench.figures.circuits import edge_graph

    return [edge_graph(part.drop(columns="task"), title=f"{task}: edge circuit (EAP-IG)")
            for task, part in frame.groupby("task", sort=False)]


def edge_findings(frame: pd.DataFrame, run) -> list[Finding]:
    out = []
    for task, part in frame.groupby("task", sort=False):
        members = part[part["in_circuit"].astype(bool)]
        faith = part["faithfulness"].iloc[0]
        strongest = part.reindex(part["score"].abs().sort_values(ascending=False).index).head(3)
        edges = ", ".join(f"{r.upstream} → {r.downstream} ({fmt(r.score)})" for r in strongest.itertuples())
        if len(members):
            nodes = {n.split("<")[0] for n in pd.concat([members["upstream"], members["downstream"]])}
            out.append(Finding(f"{task}: an edge circuit of {len(members)} of {len(part)} edges ({len(nodes)} nodes) "
                               f"keeps {fmt(faith)} of the logit difference on held-out prompts (other edges "
                               f"resample-ablated; EAP-IG scores). Strongest edges: {edges}.", example=task))
        else:
            out.append(Finding(f"{task}: no set of at most half the {len(part)} edges reaches faithfulness 0.8 on "
                               f"held-out prompts; no edge circuit is marked. Strongest edges: {edges}.", example=task,
                               caveat=True))
    return out


def edge_summary(frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for task, part in frame.groupby("task", sort=False):
        out[f"{task} edge circuit size (edges)"] = float(part["in_circuit"].astype(bool).sum())
        out[f"{task} edge circuit faithfulness"] = float(part["faithfulness"].iloc[0])
    return out
