"""Figures as pure functions of tidy frames, shared by the dashboard, the HTML report and notebooks.

Each function takes a frame (as an analysis returns it) and returns a ``plotly.graph_objects.Figure``;
none of them reads a model, a run or a file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.errors import WorkbenchError


def head_grid(frame: pd.DataFrame, score: str, *, title: str | None = None, colorscale: str = "Viridis") -> go.Figure:
    """Layer × head heatmap of one per-head score (rows: layers, columns: heads).

    Args:
        frame: one row per (layer, head) with columns ``layer, head, <score>``; several rows per
            head (e.g. per prompt) are averaged.
        score: the column to show.
    Returns:
        A heatmap whose cells carry ``customdata = [layer, head]`` for click-to-select.
    """
    for col in ("layer", "head", score):
        if col not in frame.columns:
            raise WorkbenchError(f"head_grid needs a column {col!r}; the frame has {list(frame.columns)}")
    grid = frame.groupby(["layer", "head"])[score].mean().unstack("head").sort_index()
    layers, heads = grid.index.to_numpy(), grid.columns.to_numpy()
    custom = np.stack(np.meshgrid(layers, heads, indexing="ij"), axis=-1)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(dtype=float), x=heads, y=layers, customdata=custom, colorscale=colorscale,
        colorbar={"title": score},
        hovertemplate="layer %{y} head %{x}<br>" + score + " %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or score, xaxis_title="head", yaxis_title="layer",
                      yaxis={"autorange": "reversed", "dtick": 1}, xaxis={"dtick": 1},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=120 + 28 * len(layers))
    return fig


def score_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric per-head score columns of a frame (everything but ids and counts)."""
    skip = {"layer", "head", "prompt_id", "position", "n_queries"}
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]


def default_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """One `head_grid` per numeric score of a per-head frame (the registry's default view)."""
    if not {"layer", "head"} <= set(frame.columns):
        return []
    return [head_grid(frame, score) for score in score_columns(frame)]
