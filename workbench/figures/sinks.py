"""Sink figures: the attention each token receives, massive activations, secondary sinks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.figures._common import empty, require


def token_sink_view(frame: pd.DataFrame, prompt_id: int | None = None, *, max_positions: int = 512,
                    title: str | None = None) -> go.Figure:
    """Layer × token heatmap of the attention each token receives (a `token_sinks` frame).

    Args:
        frame: ``prompt_id, layer, head, position, token, alpha``.
        prompt_id: which prompt (default: the first in the frame).
        max_positions: longer prompts are downsampled to this many bins, keeping each bin's
            largest α (a sink never disappears in the downsampling).
    Returns:
        A heatmap of α averaged over the heads of each layer; x: positions (token labels on hover),
        ``customdata = [layer, position]`` (the bin's first position when downsampled).
    """
    require(frame, ("prompt_id", "layer", "head", "position", "token", "alpha"), "token_sink_view")
    if frame.empty:
        return empty(title or "Token sinks", "no tokens")
    pid = int(frame["prompt_id"].iloc[0]) if prompt_id is None else int(prompt_id)
    one = frame[frame["prompt_id"] == pid]
    if one.empty:
        raise WorkbenchError(f"prompt_id {pid} is not in the frame; it has {sorted(frame['prompt_id'].unique())[:10]}")
    grid = one.groupby(["layer", "position"])["alpha"].mean().unstack("position").sort_index()  # (layer, pos)
    tokens = one.drop_duplicates("position").set_index("position")["token"].reindex(grid.columns).astype(str)
    z, positions = grid.to_numpy(dtype=float), grid.columns.to_numpy()
    labels = [f"{p}: {t}" for p, t in zip(positions, tokens)]
    if len(positions) > max_positions:  # downsample: max over bins
        edges = np.linspace(0, len(positions), max_positions + 1).astype(int)
        z = np.stack([z[:, a:b].max(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
        labels = [f"{positions[a]}–{positions[b - 1]}: max of bin" for a, b in zip(edges[:-1], edges[1:])]
        positions = positions[edges[:-1]]
    layers = grid.index.to_numpy()
    custom = np.stack(np.meshgrid(layers, positions, indexing="ij"), axis=-1)
    text = np.tile(np.array(labels, dtype=object), (len(layers), 1))
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=layers, customdata=custom, text=text, colorscale="Reds", colorbar={"title": "α"},
        hovertemplate="layer %{y}<br>%{text}<br>α (mean over heads) %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"Attention received per token (prompt {pid})", xaxis_title="position",
                      yaxis_title="layer", yaxis={"autorange": "reversed", "dtick": 1},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=140 + 28 * len(layers))
    return fig


def massive_activations_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """|value| of each massive activation by layer (log scale), hover: token, position, dim
    (a `massive_activations` frame); an annotated empty figure when there are none."""
    require(frame, ("prompt_id", "layer", "position", "token", "dim", "value", "ratio"), "massive_activations_figure")
    title = title or "Massive activations"
    if frame.empty:
        return empty(title, "no massive activations (|h| > 100 and > 1000× the median) in any layer")
    custom = frame[["prompt_id", "position", "dim", "ratio"]].to_numpy(dtype=float)
    fig = go.Figure(go.Scatter(
        x=frame["layer"].to_numpy(), y=frame["value"].abs().to_numpy(dtype=float), mode="markers",
        text=frame["token"].astype(str).to_numpy(), customdata=custom,
        marker={"color": frame["dim"].to_numpy(), "colorscale": "Turbo", "colorbar": {"title": "dim"}},
        hovertemplate="layer %{x} · prompt %{customdata[0]} position %{customdata[1]} (%{text})<br>"
                      "dim %{customdata[2]} |h| %{y:.1f} (%{customdata[3]:.0f}× median)<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="|h|", yaxis_type="log", xaxis={"dtick": 1},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=360)
    return fig


def secondary_sinks_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """How many secondary sinks last how many layers (a `secondary_sinks` frame), as bars;
    hover lists example tokens."""
    require(frame, ("n_layers", "token"), "secondary_sinks_figure")
    title = title or "Secondary sinks by lifetime"
    if frame.empty:
        return empty(title, "no token's hidden state lines up with the first token's (|cos| > 0.9)")
    groups = frame.groupby("n_layers")
    lifetimes = np.array(sorted(groups.groups))
    counts = np.array([len(groups.get_group(n)) for n in lifetimes])
    examples = [", ".join(groups.get_group(n)["token"].astype(str).value_counts().index[:5]) for n in lifetimes]
    fig = go.Figure(go.Bar(x=lifetimes, y=counts, text=examples, customdata=lifetimes,
                           hovertemplate="lasts %{x} layer(s): %{y} sink(s)<br>e.g. %{text}<extra></extra>",
                           textposition="none"))
    fig.update_layout(title=title, xaxis_title="layers the sink lasts", yaxis_title="count", xaxis={"dtick": 1},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=320)
    return fig
