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

#: Most cells an attention-pattern heatmap carries along one axis (bertviz and CircuitsVis break
#: near 512 tokens; longer patterns are block-averaged or windowed, never shipped whole).
MAX_PATTERN_SIDE = 256


def _block_mean(z: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor × factor`` blocks; ragged edge blocks average what they hold."""
    n_rows, n_cols = z.shape
    ny, nx = -(-n_rows // factor), -(-n_cols // factor)
    padded = np.full((ny * factor, nx * factor), np.nan)
    padded[:n_rows, :n_cols] = z
    return np.nanmean(padded.reshape(ny, factor, nx, factor), axis=(1, 3))  # (ny, nx)


def attention_pattern(pattern, tokens, *, start: int | None = None, max_side: int = MAX_PATTERN_SIDE,
                      title: str | None = None) -> go.Figure:
    """Heatmap of one head's attention pattern, never more than ``max_side`` cells per axis.

    Args:
        pattern: array ``[query, key]`` of attention probabilities (``hook_pattern[b, h]``).
        tokens: the token strings, one per position.
        start: None shows the whole pattern, block-averaged (mean over ``f × f`` blocks) when it
            is longer than ``max_side``; an int shows queries and keys ``[start, start + max_side)``
            at full resolution.
    Returns:
        A heatmap (rows: queries, columns: keys) whose axis labels are ``"<pos> <token>"``, or
        ``"<first>–<last> <token>…"`` for a block, so a click names its positions.
    """
    z = np.asarray(pattern, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] != z.shape[1] or z.shape[0] != len(tokens):
        raise WorkbenchError(f"attention_pattern needs a square [query, key] array with one token per "
                             f"position; got shape {z.shape} and {len(tokens)} tokens")
    n, factor, offset = z.shape[0], 1, 0
    if start is not None:
        offset = int(min(max(start, 0), max(n - max_side, 0)))
        z = z[offset:offset + max_side, offset:offset + max_side]
    elif n > max_side:
        factor = -(-n // max_side)
        z = _block_mean(z, factor).astype(np.float32)
    labels = [f"{offset + i} {tokens[offset + i]}" if factor == 1 else
              f"{i}–{min(i + factor, n) - 1} {tokens[i]}…" for i in range(0, z.shape[0] * factor, factor)]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0,
                               colorbar={"title": "attention"},
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    note = f" (mean over {factor}×{factor} blocks)" if factor > 1 else (
        f" (positions {offset}–{offset + z.shape[0] - 1} of {n})" if z.shape[0] < n else "")
    fig.update_layout(title=(title or "attention pattern") + note, xaxis_title="key", yaxis_title="query",
                      yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"},
                      margin={"l": 90, "r": 20, "t": 50, "b": 90}, height=620)
    return fig

