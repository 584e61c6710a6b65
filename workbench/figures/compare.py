"""Figures that put two runs side by side: score profiles over relative depth, per-head differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures._common import require
from workbench.figures.grids import head_grid

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756")


def depth_profile(frames: dict[str, pd.DataFrame], score: str, *, label: str | None = None,
                  title: str | None = None) -> go.Figure:
    """A per-head score against relative depth (layer / (layers − 1)), one line per run: the
    median over each layer's heads, with a band from its 25th to its 75th percentile.

    Relative depth lets models of different depth share one axis (layer 2 of 4 and layer 15 of
    30 sit near 0.5).

    Args:
        frames: ``{run label: per-head frame with layer, head, <score>}``.
    Returns:
        For each run, a band trace (filled, no hover) and a line trace whose points carry
        ``customdata = [layer]``.
    """
    fig = go.Figure()
    label = label or score
    for i, (name, frame) in enumerate(frames.items()):
        require(frame, ("layer", "head", score), "depth_profile")
        per_head = frame.groupby(["layer", "head"])[score].mean().reset_index()
        stats = per_head.groupby("layer")[score].quantile([0.25, 0.5, 0.75]).unstack()  # (layer, q)
        layers = stats.index.to_numpy()
        depth = layers / max(int(layers.max()), 1)
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(
            x=np.concatenate([depth, depth[::-1]]), y=np.concatenate([stats[0.75], stats[0.25][::-1]]),
            mode="lines", fill="toself", fillcolor=color, opacity=0.2, line={"width": 0}, hoverinfo="skip",
            showlegend=False, name=f"{name} 25–75%"))
        fig.add_trace(go.Scatter(
            x=depth, y=stats[0.5].to_numpy(), mode="lines+markers", name=name, line={"color": color},
            customdata=layers.reshape(-1, 1).tolist(),
            hovertemplate=f"{name}<br>layer %{{customdata[0]}} (depth %{{x:.2f}})<br>median {label} %{{y:.3f}}"
                          "<extra></extra>"))
    fig.update_layout(title=title or f"{label} by relative depth (median, 25–75% band)",
                      xaxis_title="relative depth (layer / (layers − 1))", yaxis_title=label,
                      xaxis={"range": [-0.02, 1.02]}, margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=320,
                      legend={"orientation": "h"})
    return fig


def head_difference(a: pd.DataFrame, b: pd.DataFrame, score: str, *, names=("A", "B"),
                    label: str | None = None) -> go.Figure:
    """Layer × head grid of ``b − a`` for one score of two runs over models of the same shape
    (e.g. two checkpoints); cells carry ``customdata = [layer, head]``."""
    for frame in (a, b):
        require(frame, ("layer", "head", score), "head_difference")
    ma = a.groupby(["layer", "head"])[score].mean()
    mb = b.groupby(["layer", "head"])[score].mean()
    diff = (mb - ma).dropna().rename("difference").reset_index()
    label = label or score
    fig = head_grid(diff, "difference", colorscale="RdBu", label=f"Δ {label}",
                    title=f"{label}: {names[1]} − {names[0]} per head")
    peak = float(np.nanmax(np.abs(diff["difference"]))) if len(diff) else 1.0
    fig.data[0].update(zmid=0, zmin=-peak, zmax=peak)
    return fig
