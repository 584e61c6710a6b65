"""Layer × head grids of per-head scores, with flagged heads ringed (and still clickable)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures._common import head_labels, require

#: Columns that identify rows or count them, never scores.
ID_COLUMNS = frozenset({"layer", "head", "prompt_id", "position", "n_queries"})


def head_grid(frame: pd.DataFrame, score: str, *, title: str | None = None, colorscale: str = "Viridis",
              label: str | None = None) -> go.Figure:
    """Layer × head heatmap of one per-head score (rows: layers, columns: heads).

    Args:
        frame: one row per (layer, head) with columns ``layer, head, <score>``; several rows per
            head (e.g. per prompt) are averaged.
        score: the column to show.
        label: how the colour bar and hover name the score (default: the column name).
    Returns:
        A heatmap whose cells carry ``customdata = [layer, head]`` for click-to-select.
    """
    require(frame, ("layer", "head", score), "head_grid")
    label = label or score
    grid = frame.groupby(["layer", "head"])[score].mean().unstack("head").sort_index()
    layers, heads = grid.index.to_numpy(), grid.columns.to_numpy()
    custom = np.stack(np.meshgrid(layers, heads, indexing="ij"), axis=-1)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(dtype=float), x=heads, y=layers, customdata=custom, colorscale=colorscale,
        colorbar={"title": label},
        hovertemplate="layer %{y} head %{x}<br>" + label + " %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or label, xaxis_title="head", yaxis_title="layer",
                      yaxis={"autorange": "reversed", "dtick": 1}, xaxis={"dtick": 1},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=120 + 28 * len(layers))
    return fig


def ring_heads(fig: go.Figure, heads: pd.DataFrame, name: str, color: str = "red") -> go.Figure:
    """Ring the cells of ``heads`` (``layer, head``) on a `head_grid` figure.

    The rings take no hover or click of their own (``hoverinfo="skip"``): a click on a ringed
    cell reaches the heatmap cell under it, which names the head, so flagged heads select like
    any other. They also carry ``L{layer}H{head}`` labels and list customdata, in case a
    renderer hands the click to them.
    """
    fig.add_trace(go.Scatter(
        x=heads["head"].to_numpy(), y=heads["layer"].to_numpy(), mode="markers", name=name,
        text=head_labels(heads), customdata=heads[["layer", "head"]].astype(int).to_numpy().tolist(),
        hoverinfo="skip", marker={"symbol": "circle-open", "size": 18, "color": color, "line": {"width": 2}}))
    fig.update_layout(showlegend=False)
    return fig


def score_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric per-head score columns of a frame (everything but ids, counts and flags)."""
    return [c for c in frame.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]


def default_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """One `head_grid` per numeric score of a per-head frame (the registry's default view)."""
    if not {"layer", "head"} <= set(frame.columns):
        return []
    return [head_grid(frame, score) for score in score_columns(frame)]
