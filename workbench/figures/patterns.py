"""Attention patterns: one head's pattern (bounded: block means or a window), a stored example's
pattern over chosen positions, and all heads of a layer as clickable thumbnails."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.figures._common import block_mean, position_labels

#: Most cells an attention-pattern heatmap carries along one axis (bertviz and CircuitsVis break
#: near 512 tokens; longer patterns are block-averaged or windowed, never shipped whole).
MAX_PATTERN_SIDE = 256


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
        A heatmap (rows: queries, columns: keys) whose axis labels are ``"<pos>: <token>"``, or
        ``"<first>–<last>: <token>…"`` for a block, so repeated tokens never merge and a click
        names its positions.
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
        z = block_mean(z, factor).astype(np.float32)
    labels = [f"{offset + i}: {tokens[offset + i]}" if factor == 1 else
              f"{i}–{min(i + factor, n) - 1}: {tokens[i]}…" for i in range(0, z.shape[0] * factor, factor)]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0,
                               colorbar={"title": "attention"},
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    note = f" (mean over {factor}×{factor} blocks)" if factor > 1 else (
        f" (positions {offset}–{offset + z.shape[0] - 1} of {n})" if z.shape[0] < n else "")
    fig.update_layout(title=(title or "attention pattern") + note, xaxis_title="key", yaxis_title="query",
                      yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"},
                      margin={"l": 90, "r": 20, "t": 50, "b": 90}, height=620)
    return fig


def example_pattern(weights, positions, tokens, *, title: str = "", n_tokens: int | None = None,
                    height: int = 300, colorbar: bool = False) -> go.Figure:
    """A small heatmap of a stored example (`workbench.analyzers.examples`): the attention between
    the kept positions of a prompt, labelled ``"<pos>: <token>"``.

    Args:
        weights: ``[kept, kept]`` attention of the kept queries on the kept keys (rows need not
            sum to 1 when positions were left out).
        positions, tokens: the kept positions and their tokens.
        n_tokens: the prompt's full length (said in the title when positions were left out).
    """
    z = np.asarray(weights, dtype=np.float32)
    if z.shape != (len(positions), len(positions)) or len(tokens) != len(positions):
        raise WorkbenchError(f"example_pattern needs [kept, kept] weights for {len(positions)} positions and "
                             f"tokens; got shape {z.shape} and {len(tokens)} tokens")
    labels = position_labels(positions, tokens)
    kept = "" if n_tokens is None or n_tokens == len(positions) else f" ({len(positions)} of {n_tokens} positions)"
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=max(float(z.max()), 1e-6),
                               showscale=colorbar,
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_layout(title={"text": title + kept, "font": {"size": 12}}, height=height,
                      xaxis={"type": "category", "tickfont": {"size": 8}, "tickangle": -60},
                      yaxis={"type": "category", "autorange": "reversed", "tickfont": {"size": 8}},
                      margin={"l": 70, "r": 10, "t": 30, "b": 70})
    return fig


def layer_thumbnails(patterns, tokens, layer: int, *, heads=None, positions=None, max_side: int = 48,
                     title: str | None = None) -> go.Figure:
    """All heads of one layer as small heatmaps in a grid, each click-selectable.

    Args:
        patterns: ``[head, query, key]`` attention of one prompt (long prompts are block-averaged
            to at most ``max_side`` cells per axis).
        tokens: one token string per position.
        heads: the head number of each pattern (default 0..n−1).
        positions: the prompt position of each token (default 0..n−1; a stored example keeps some).
    Returns:
        One heatmap trace per head (in subplot ``head``), named ``L{layer}H{head}``, whose cells
        carry ``customdata = [layer, head]``.
    """
    from plotly.subplots import make_subplots

    p = np.asarray(patterns, dtype=np.float32)
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] != len(tokens):
        raise WorkbenchError(f"layer_thumbnails needs [head, query, key] patterns with one token per position; "
                             f"got shape {p.shape} and {len(tokens)} tokens")
    heads = list(range(p.shape[0])) if heads is None else [int(h) for h in heads]
    n = p.shape[1]
    factor = max(1, -(-n // max_side))
    positions = list(range(n)) if positions is None else list(positions)
    labels = position_labels(positions, tokens) if factor == 1 else [
        f"{positions[i]}–{positions[min(i + factor, n) - 1]}: {tokens[i]}…" for i in range(0, n, factor)]
    cols = min(len(heads), 4 if len(heads) <= 8 else 6)
    rows = math.ceil(len(heads) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in heads],
                        horizontal_spacing=0.03, vertical_spacing=0.08 if rows > 1 else 0.1)
    for i, head in enumerate(heads):
        z = p[i] if factor == 1 else block_mean(p[i], factor).astype(np.float32)
        custom = np.broadcast_to(np.array([layer, head]), z.shape + (2,)).tolist()
        fig.add_trace(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                 name=f"L{layer}H{head}", customdata=custom,
                                 hovertemplate=f"head {head}<br>query %{{y}}<br>key %{{x}}<br>"
                                               "attention %{z:.3f}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, type="category")
    fig.update_yaxes(showticklabels=False, type="category", autorange="reversed")
    note = f" (mean over {factor}×{factor} blocks)" if factor > 1 else ""
    fig.update_layout(title=(title or f"layer {layer}: every head") + note + " · click a head to open it",
                      height=60 + rows * 210, margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig
