"""Heads ranked by a score, the pruning curve, and the UMAP head map."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.figures._common import head_labels, require


def importance_ranking(frame: pd.DataFrame, score: str = "importance", *, top: int | None = None,
                       direction: str = "high", title: str | None = None) -> go.Figure:
    """Heads sorted by a per-head score, as a bar chart.

    Args:
        direction: ``"high"`` (largest first), ``"low"`` (smallest first) or ``"abs"`` (largest
            |value| first, bars keep their sign and are coloured by it), as the score's glossary
            entry says (`workbench.glossary`).
        top: keep the first ``top`` heads.
    Returns:
        A bar trace with x = ``"L{layer}H{head}"``, y = the score (mean over repeated rows),
        ``customdata = [layer, head]`` for click-to-select.
    """
    require(frame, ("layer", "head", score), "importance_ranking")
    per_head = frame.groupby(["layer", "head"], as_index=False)[score].mean()
    key = per_head[score].abs() if direction == "abs" else per_head[score]
    per_head = per_head.assign(_key=key).sort_values(
        ["_key", "layer", "head"], ascending=[direction == "low", True, True], ignore_index=True)
    if top is not None:
        per_head = per_head.head(top)
    values = per_head[score].to_numpy(dtype=float)
    color = ({"color": ["#b2182b" if v < 0 else "#2166ac" for v in values]} if direction == "abs"
             else {"color": values, "colorscale": "Viridis"})
    order = {"high": "largest first", "low": "smallest first", "abs": "largest |value| first, sign kept"}[direction]
    fig = go.Figure(go.Bar(
        x=head_labels(per_head), y=values, customdata=per_head[["layer", "head"]].to_numpy().tolist(), marker=color,
        hovertemplate="layer %{customdata[0]} head %{customdata[1]}<br>" + score + " %{y:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"Heads ranked by {score} ({order})", xaxis_title="head", yaxis_title=score,
                      margin={"l": 50, "r": 20, "t": 50, "b": 60}, height=360)
    return fig


def pruning_curve_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Loss (left axis) and accuracy (right axis) against the fraction of heads pruned
    (a `pruning_curve` frame: ``fraction_pruned, loss, accuracy, n_pruned, pruned``)."""
    require(frame, ("fraction_pruned", "loss"), "pruning_curve_figure")
    x = frame["fraction_pruned"].to_numpy(dtype=float)
    hover = frame["pruned"].astype(str).to_numpy() if "pruned" in frame.columns else None
    fig = go.Figure(go.Scatter(x=x, y=frame["loss"].to_numpy(dtype=float), mode="lines+markers", name="loss",
                               text=hover, hovertemplate="%{x:.0%} pruned<br>loss %{y:.3f}<br>%{text}<extra></extra>"))
    if "accuracy" in frame.columns:
        fig.add_trace(go.Scatter(x=x, y=frame["accuracy"].to_numpy(dtype=float), mode="lines+markers",
                                 name="accuracy", yaxis="y2",
                                 hovertemplate="%{x:.0%} pruned<br>accuracy %{y:.3f}<extra></extra>"))
        fig.update_layout(yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1]})
    fig.update_layout(title=title or "Pruning curve (least important heads first)", xaxis_title="fraction of heads pruned",
                      yaxis_title="loss", xaxis={"tickformat": ".0%"}, margin={"l": 50, "r": 50, "t": 50, "b": 40},
                      height=360, legend={"orientation": "h"})
    return fig


def umap_scatter(frame: pd.DataFrame, *, color: str = "pattern", title: str | None = None) -> go.Figure:
    """The UMAP head map of a `head_patterns` frame: one point per head, one trace per pattern type.

    Returns:
        Scatter traces (one per value of ``color``) whose points carry
        ``customdata = [layer, head]`` and hover the head's descriptors.
    """
    require(frame, ("layer", "head", "umap_x", "umap_y", color), "umap_scatter")
    shown = [c for c in ("entropy", "max_prob", "sink_mass", "local_mass", "prev_token", "induction")
             if c in frame.columns]
    hover = "L%{customdata[0]}H%{customdata[1]}" + "".join(
        f"<br>{c} %{{customdata[{i + 2}]:.2f}}" for i, c in enumerate(shown)) + "<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    for value, group in frame.groupby(color, sort=True):
        fig.add_trace(go.Scatter(
            x=group["umap_x"].to_numpy(dtype=float), y=group["umap_y"].to_numpy(dtype=float), mode="markers+text",
            name=str(value), text=head_labels(group), textposition="top center",
            customdata=group[["layer", "head", *shown]].to_numpy(dtype=float), hovertemplate=hover,
            marker={"size": 11},
        ))
    fig.update_layout(title=title or "UMAP head map (pattern descriptors)", xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=480, legend={"title": color})
    return fig
