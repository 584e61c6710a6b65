"""Helpers every figure module shares: column checks, an annotated empty figure, head labels,
NaN-aware block means (for downsampling long patterns)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.errors import WorkbenchError


def require(frame: pd.DataFrame, columns, who: str) -> None:
    """Raise WorkbenchError naming the columns ``who`` needs and the frame lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(f"{who} needs column(s) {missing}; the frame has {list(frame.columns)}")


def top_vs_random(frame: pd.DataFrame, who: str, *, top_name: str, title: str, y_title: str, x_title: str = "k",
                  median_name: str = "random k-sets (median)", y_range=None) -> go.Figure:
    """A ranking's top-k curve against random k-sets: their median and min–max band, k ascending.

    Args:
        frame: one row per k: ``k, top, random_median, random_lo, random_hi`` (a causal check,
            the NIAH curve, a circuit's faithfulness curve).
        who: the figure function, named in the error when a column is missing.
        top_name, median_name: legend names of the top-k and median lines.
        y_range: the y-axis range (None: fitted to the data).
    """
    require(frame, ("k", "top", "random_median", "random_lo", "random_hi"), who)
    frame = frame.sort_values("k")
    k = frame["k"].to_numpy()
    fig = go.Figure([
        go.Scatter(x=k, y=frame["random_hi"].to_numpy(float), mode="lines", line={"width": 0}, showlegend=False,
                   hoverinfo="skip"),
        go.Scatter(x=k, y=frame["random_lo"].to_numpy(float), mode="lines", line={"width": 0}, fill="tonexty",
                   fillcolor="rgba(150,150,150,0.3)", name="random k-sets (min–max)", hoverinfo="skip"),
        go.Scatter(x=k, y=frame["random_median"].to_numpy(float), mode="lines+markers", name=median_name,
                   line={"color": "#999999", "dash": "dash"}),
        go.Scatter(x=k, y=frame["top"].to_numpy(float), mode="lines+markers", name=top_name, line={"color": "#d62728"}),
    ])
    fig.update_layout(title=title, xaxis_title=x_title, yaxis={"title": y_title, "range": y_range}, height=360,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h"})
    return fig

def empty(title: str, note: str) -> go.Figure:
    """A figure with no data that says why (instead of bare axes)."""
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=200)
    return fig


def head_labels(frame: pd.DataFrame) -> list[str]:
    """``"L{layer}H{head}"`` per row (the label `dashboards.views.head_from_click` reads)."""
    return [f"L{int(l)}H{int(h)}" for l, h in zip(frame["layer"], frame["head"])]


def block_mean(z: np.ndarray, fy: int, fx: int | None = None) -> np.ndarray:
    """Mean over ``fy × fx`` blocks (``fx`` defaults to ``fy``), NaN-aware: ragged edge blocks
    average what they hold, and a block of NaN stays NaN."""
    fx = fy if fx is None else fx
    rows, cols = z.shape
    ny, nx = -(-rows // fy), -(-cols // fx)
    padded = np.full((ny * fy, nx * fx), np.nan)
    padded[:rows, :cols] = z
    blocks = padded.reshape(ny, fy, nx, fx)  # (ny, fy, nx, fx)
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)  # (ny, nx)


def position_labels(positions, tokens) -> list[str]:
    """Tick labels ``"3: David"``: the position keeps repeated tokens apart on a category axis."""
    return [f"{int(p)}: {t}" for p, t in zip(positions, tokens)]
