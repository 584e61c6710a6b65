"""Task figures: retrieval grid and needle-in-a-haystack accuracy, circuits and their overlap,
attention-vs-saliency correlations and per-token bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.figures._common import empty, require
from workbench.figures.grids import head_grid, ring_heads


def retrieval_grid(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Layer × head grid of retrieval scores (a `retrieval_scores` frame), retrieval heads ringed.

    Returns:
        A heatmap on [0, 1] (``customdata = [layer, head]``) plus a ring on every head with
        ``is_retrieval`` (Wu et al.: score > 0.1); a click on a ring selects the head under it.
    """
    require(frame, ("layer", "head", "retrieval_score"), "retrieval_grid")
    fig = head_grid(frame, "retrieval_score", title=title or "Retrieval score (Wu et al. 2024)", colorscale="Blues")
    fig.data[0].update(zmin=0, zmax=1)
    if "is_retrieval" in frame.columns:
        ring_heads(fig, frame[frame["is_retrieval"].astype(bool)], "retrieval head")
    return fig


def niah_heatmap(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Needle-in-a-haystack accuracy, context length × needle depth (a `niah_grid` frame); one
    panel per ``condition`` when the frame has that column (e.g. full vs heads ablated)."""
    from plotly.subplots import make_subplots

    require(frame, ("context_length", "depth", "accuracy"), "niah_heatmap")
    conditions = list(dict.fromkeys(frame["condition"])) if "condition" in frame.columns else [None]
    fig = make_subplots(rows=1, cols=len(conditions), subplot_titles=[c or "" for c in conditions],
                        shared_yaxes=True, horizontal_spacing=0.06)
    for i, cond in enumerate(conditions, 1):
        part = frame if cond is None else frame[frame["condition"] == cond]
        grid = part.groupby(["context_length", "depth"])["accuracy"].mean().unstack("depth").sort_index()
        fig.add_trace(go.Heatmap(
            z=grid.to_numpy(dtype=float), x=[f"{d:.2f}" for d in grid.columns], y=[str(c) for c in grid.index],
            zmin=0, zmax=1, colorscale="RdYlGn", showscale=i == 1, colorbar={"title": "accuracy"},
            texttemplate="%{z:.2f}", hovertemplate="context %{y}<br>depth %{x}<br>accuracy %{z:.2f}<extra></extra>",
        ), row=1, col=i)
        fig.update_xaxes(title_text="needle depth", type="category", row=1, col=i)
    fig.update_yaxes(title_text="context length", type="category", row=1, col=1)
    fig.update_layout(title=title or "Needle-in-a-haystack accuracy", height=360,
                      margin={"l": 70, "r": 20, "t": 70, "b": 50})
    return fig


def circuit_membership(circuit_a: pd.DataFrame, circuit_b: pd.DataFrame, *, names=("A", "B"),
                       title: str | None = None) -> go.Figure:
    """Layer × head grid of two circuits: in neither, A only, B only, or both, with the four
    overlap numbers of `circuit_overlap` (Merullo et al.) in the title.

    Args:
        circuit_a, circuit_b: `circuit` frames (all heads, ``layer, head, in_circuit``).
        names: labels of the two circuits.
    """
    from workbench.analyzers.circuits import circuit_overlap

    for frame in (circuit_a, circuit_b):
        require(frame, ("layer", "head", "in_circuit"), "circuit_membership")
    both = circuit_a[["layer", "head", "in_circuit"]].merge(
        circuit_b[["layer", "head", "in_circuit"]], on=["layer", "head"], suffixes=("_a", "_b"))
    both["kind"] = both["in_circuit_a"].astype(int) + 2 * both["in_circuit_b"].astype(int)  # 0 none 1 A 2 B 3 both
    grid = both.pivot(index="layer", columns="head", values="kind").sort_index()
    labels = np.array(["neither", f"{names[0]} only", f"{names[1]} only", "both"], dtype=object)
    layers, heads = grid.index.to_numpy(), grid.columns.to_numpy()
    colors = ["#f0f0f0", "#4c78a8", "#f58518", "#54a24b"]
    scale = [[v, colors[int(i)]] for i in range(4) for v in (i / 4, (i + 1) / 4)]
    z = grid.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=heads, y=layers, zmin=-0.5, zmax=3.5, colorscale=scale, text=labels[z.astype(int)],
        customdata=np.stack(np.meshgrid(layers, heads, indexing="ij"), axis=-1),
        colorbar={"tickvals": [0, 1, 2, 3], "ticktext": list(labels)},
        hovertemplate="layer %{y} head %{x}<br>%{text}<extra></extra>"))
    ov = None
    if both["in_circuit_a"].any() and both["in_circuit_b"].any():
        ov = circuit_overlap(circuit_a, circuit_b)
    note = ("an empty circuit: no overlap" if ov is None else
            f"Jaccard {ov['jaccard']:.2f} · overlap coef. {ov['overlap_coefficient']:.2f} · "
            f"{names[0]} in {names[1]} {ov['share_a_in_b']:.2f} · {names[1]} in {names[0]} {ov['share_b_in_a']:.2f}")
    fig.update_layout(title={"text": f"{title or f'Circuits: {names[0]} vs {names[1]}'}<br><sup>{note}</sup>"},
                      xaxis_title="head", yaxis_title="layer", yaxis={"autorange": "reversed", "dtick": 1},
                      xaxis={"dtick": 1}, margin={"l": 50, "r": 20, "t": 70, "b": 40}, height=150 + 28 * len(layers))
    return fig


def circuit_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Figures of the registered circuits table (``task, method, layer, head, effect, in_circuit``):
    per method, the membership grid of the first two tasks; per (task, method), the effect grid."""
    require(frame, ("task", "method", "layer", "head", "effect", "in_circuit"), "circuit_figures")
    figs = []
    tasks = list(dict.fromkeys(frame["task"]))
    for method in dict.fromkeys(frame["method"]):
        part = frame[frame["method"] == method]
        if len(tasks) >= 2:
            a, b = (part[part["task"] == t] for t in tasks[:2])
            figs.append(circuit_membership(a, b, names=tuple(tasks[:2]), title=f"Circuits by {method}"))
        for task in tasks:
            one = part[part["task"] == task]
            fig = head_grid(one, "effect", title=f"{task}: effect on logit difference ({method})", colorscale="RdBu")
            fig.data[0].update(zmid=0)
            figs.append(fig)
    return figs


def correlation_grid(frame: pd.DataFrame, metric: str = "spearman", *, title: str | None = None) -> go.Figure:
    """Layer × head grid of one attention-vs-saliency correlation (a `saliency_alignment` frame,
    view ``head``), on [-1, 1]; the layer-mean, all-head-mean and rollout values in the subtitle."""
    require(frame, ("view", "layer", "head", metric), "correlation_grid")
    heads = frame[frame["view"] == "head"]
    if heads.empty:
        return empty(title or f"Attention vs saliency: {metric}", "no per-head rows")
    fig = head_grid(heads, metric, title=title or f"Attention vs saliency: {metric}", colorscale="RdBu")
    fig.data[0].update(zmin=-1, zmax=1, zmid=0)
    parts = []
    for view, label in (("layer_mean", "layer means"), ("all_mean", "all heads"), ("rollout", "rollout")):
        rows = frame[frame["view"] == view]
        if not rows.empty:
            parts.append(f"{label} " + ", ".join(f"{v:.2f}" for v in rows[metric]))
    fig.update_layout(title={"text": f"{fig.layout.title.text}<br><sup>{' · '.join(parts)}</sup>"},
                      margin={"l": 50, "r": 20, "t": 70, "b": 40})
    return fig


def attribution_bars(frame: pd.DataFrame, *, view: str = "all_mean", layer: int = -1, head: int = -1,
                     title: str | None = None) -> go.Figure:
    """Per-token bars of attribution vs attention (a `token_attributions` frame), each scaled to
    sum to 1 over the shown tokens so the two are comparable.

    Args:
        view, layer, head: which attention vector (``"head"`` with a layer and head, ``"layer_mean"``
            with a layer, ``"all_mean"`` or ``"rollout"``).
    """
    require(frame, ("position", "token", "attribution", "view", "layer", "head", "attention"), "attribution_bars")
    part = frame[(frame["view"] == view) & (frame["layer"] == layer) & (frame["head"] == head)].sort_values("position")
    if part.empty:
        raise WorkbenchError(f"no attention vector for view={view!r}, layer={layer}, head={head} in the frame")
    labels = [f"{p} {t}" for p, t in zip(part["position"], part["token"])]

    def share(col):
        v = part[col].to_numpy(dtype=float)
        return v / v.sum() if v.sum() > 0 else v

    fig = go.Figure([go.Bar(x=labels, y=share("attribution"), name="attribution"),
                     go.Bar(x=labels, y=share("attention"), name=f"attention ({view})")])
    fig.update_layout(title=title or "Attribution vs attention per token", barmode="group",
                      xaxis={"type": "category"}, yaxis_title="share of the total",
                      margin={"l": 50, "r": 20, "t": 50, "b": 90}, height=360)
    return fig
