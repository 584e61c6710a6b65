"""Figures of circuits beyond the head grid: the edge circuit as a layered graph, and the
faithfulness curve. Pure functions ``figure(frame) -> go.Figure`` of the tables the circuit
analyses return; nothing here reads a model or a run.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.figures._common import require, top_vs_random

_NODE = re.compile(r"^(?:a(\d+)\.h(\d+)(?:<([qkv])>)?|m(\d+)|input|logits)$")
_DASH = {"q": "solid", "k": "dash", "v": "dot", None: "solid"}  # how an edge enters its reader
_ENTRY = {"q": -0.2, "k": 0.0, "v": 0.2, None: 0.0}  # where on the head's row it enters


def _place(name: str, n_layers: int, n_heads: int) -> tuple[float, float, str | None]:
    """(x, y, input kind) of a node: input | a0 heads | m0 | a1 heads | … | logits, left to right."""
    match = _NODE.match(name)
    if match is None:
        raise WorkbenchError(f"unknown graph node {name!r}: expected input, a{{L}}.h{{H}}[<q|k|v>], m{{L}} or logits")
    layer, head, kind, mlp = match.groups()
    middle = (n_heads - 1) / 2
    if name == "input":
        return 0.0, middle, None
    if name == "logits":
        return 2.0 * n_layers + 1, middle, None
    if mlp is not None:
        return 2.0 * int(mlp) + 2, middle, None
    return 2.0 * int(layer) + 1, float(head), kind


def edge_graph(frame: pd.DataFrame, *, top: int = 40, title: str | None = None) -> go.Figure:
    """The strongest edges as a layered graph: columns are ``input``, each layer's heads, its MLP,
    ``logits``; an edge's colour is its sign (blue carries the behaviour, red opposes it), its
    width |score|, and its dash the input it enters (solid q, dashed k, dotted v).

    Args:
        frame: an `edge_circuit` frame (``upstream, downstream, score``; ``in_circuit`` if present).
        top: how many edges to draw: the circuit's edges if it has at most this many, else the
            ``top`` largest |score| (of the circuit, when it has one).
    """
    require(frame, ("upstream", "downstream", "score"), "edge_graph")
    chosen = frame
    if "in_circuit" in frame.columns and frame["in_circuit"].any():
        chosen = frame[frame["in_circuit"].astype(bool)]
    chosen = chosen.reindex(chosen["score"].abs().sort_values(ascending=False).index).head(top)
    names = pd.concat([frame["upstream"], frame["downstream"]])
    layers = [int(m) for m in names.str.extract(r"^(?:a|m)(\d+)", expand=False).dropna()]
    heads = [int(h) for h in names.str.extract(r"\.h(\d+)", expand=False).dropna()]
    n_layers, n_heads = (max(layers) + 1 if layers else 0), (max(heads) + 1 if heads else 1)
    fig = go.Figure()
    biggest = float(chosen["score"].abs().max()) if len(chosen) else 1.0
    for (sign, _kind), part in chosen.groupby([np.sign(chosen["score"]) >= 0,
                                              chosen["downstream"].str.extract(r"<([qkv])>", expand=False)
                                              .fillna("-")]):
        for row in part.itertuples():
            x0, y0, _ = _place(row.upstream, n_layers, n_heads)
            x1, y1, into = _place(row.downstream, n_layers, n_heads)
            y1 += _ENTRY[into]  # q, k and v enter a head at three points, so they never overlap
            xs, ys = [x0, x1], [y0, y1]
            if abs(y1 - y0) < 0.5 and x1 - x0 > 1.5:  # along one row past other nodes: arc above them
                xs, ys = [x0, (x0 + x1) / 2, x1], [y0, y0 - 0.35 * (x1 - x0) / 2, y1]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", line_shape="spline", showlegend=False, hoverinfo="text",
                text=f"{row.upstream} → {row.downstream}<br>score {row.score:.3f}",
                line={"color": "#4c78a8" if sign else "#e45756", "dash": _DASH[into],
                      "width": 1 + 5 * abs(row.score) / (biggest or 1.0)}))
    nodes = sorted({n.split("<")[0] for n in pd.concat([chosen["upstream"], chosen["downstream"]])},
                   key=lambda n: _place(n, n_layers, n_heads)[:2])
    xy = [_place(n, n_layers, n_heads)[:2] for n in nodes]
    fig.add_trace(go.Scatter(
        x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=nodes, textposition="top center",
        marker={"size": 11, "color": ["#54a24b" if n.startswith("m") else "#333" for n in nodes]},
        customdata=nodes, hovertemplate="%{customdata}<extra></extra>", showlegend=False))
    for kind, dash in (("query", "solid"), ("key", "dash"), ("value", "dot")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"into {kind}",
                                 line={"color": "#888", "dash": dash}))
    ticks = [0.0] + [v for layer in range(n_layers) for v in (2.0 * layer + 1, 2.0 * layer + 2)] + [2.0 * n_layers + 1]
    labels = ["input"] + [t for layer in range(n_layers) for t in (f"attn {layer}", f"mlp {layer}")] + ["logits"]
    note = f"{len(chosen)} of {len(frame)} edges" + (
        "" if "in_circuit" not in frame.columns else f"; circuit: {int(frame['in_circuit'].sum())} edges")
    fig.update_layout(title={"text": f"{title or 'Edge circuit'}<br><sup>{note}</sup>"},
                      xaxis={"tickvals": ticks, "ticktext": labels, "showgrid": False},
                      yaxis={"title": "head", "autorange": "reversed", "dtick": 1, "showgrid": False},
                      height=260 + 22 * n_heads, margin={"l": 50, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def faithfulness_curve(frame: pd.DataFrame, *, title: str | None = None, target: float | None = 0.8) -> go.Figure:
    """Faithfulness of the top-k set against k, with random k-sets' median and range beside it.

    Args:
        frame: a curve table ``k, top, random_median, random_lo, random_hi`` (one row per k).
        target: a dashed line at the faithfulness a circuit must reach (None: no line).
    """
    fig = top_vs_random(frame, "faithfulness_curve", top_name="top-k by |effect|",
                        title=title or "Faithfulness of the top-k set vs random k-sets", y_title="faithfulness")
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="#e45756", annotation_text=f"target {target:g}")
    return fig
