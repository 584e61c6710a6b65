"""Figures of the ranking checks: pruning curves under several rankings, causal checks, DuoAttention.

Pure functions ``figure(frame) -> go.Figure`` shared by the report, the dashboard and notebooks
(STYLE.md), for the tables of `workbench.analyzers.importance.pruning_curves`,
`workbench.analyzers.causal.causal_check` and `workbench.analyzers.duo`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures._common import require, top_vs_random
from workbench.overlap import beats_random

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def pruning_curves_figure(frame: pd.DataFrame, *, metric: str = "loss", title: str | None = None) -> go.Figure:
    """Loss (or accuracy) against the fraction of heads pruned, one line per ranking; random
    orders dashed grey (a `pruning_curves` frame: ``ranking, fraction_pruned, loss, accuracy, pruned``).
    A frame without ``ranking`` is one curve."""
    require(frame, ("fraction_pruned", metric), "pruning_curves_figure")
    frame = frame if "ranking" in frame.columns else frame.assign(ranking="gradient")
    fig = go.Figure()
    colours = iter(_PALETTE * 4)
    for name, part in frame.groupby("ranking", sort=False):
        is_random = str(name).startswith("random")
        hover = part["pruned"].astype(str).to_numpy() if "pruned" in part.columns else None
        fig.add_trace(go.Scatter(
            x=part["fraction_pruned"].to_numpy(dtype=float), y=part[metric].to_numpy(dtype=float),
            mode="lines+markers", name=str(name), text=hover,
            line={"dash": "dash", "color": "#999999"} if is_random else {"color": next(colours)},
            hovertemplate=f"{name}<br>%{{x:.0%}} pruned<br>{metric} %{{y:.3f}}<br>%{{text}}<extra></extra>"))
    fig.update_layout(title=title or f"Pruning curves: {metric} as the least important heads go first, by ranking",
                      xaxis_title="fraction of heads pruned", yaxis_title=metric, xaxis={"tickformat": ".0%"},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=380, legend={"orientation": "h"})
    return fig


def _harm(frame: pd.DataFrame, column: str) -> np.ndarray:
    """How much worse than clean the metric is (positive = hurt), in the metric's own units."""
    sign = np.where(frame["higher_is_better"].astype(bool), -1.0, 1.0)
    return sign * (frame[column].to_numpy(dtype=float) - frame["clean"].to_numpy(dtype=float))


def complete_checks(frame: pd.DataFrame) -> pd.DataFrame:
    """A table with only the eight `causal.COLUMNS` made whole: the direction from the metric's
    name (accuracy and logit difference: higher is better), harm against 0 when no ``clean``,
    and ``beats_random`` by the rule of `causal.causal_check`."""
    out = frame.copy()
    if "higher_is_better" not in out.columns:
        out["higher_is_better"] = out["metric"].astype(str).str.contains("accuracy|logit", case=False)
    if "clean" not in out.columns:
        out["clean"] = 0.0
    if "beats_random" not in out.columns:
        out["beats_random"] = beats_random(out["top"], out["random_median"], out["random_lo"], out["random_hi"],
                                           out["higher_is_better"])
    return out


def causal_checks_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """A `causal_check` table as one figure: for every ranking and k, the harm of ablating its
    top-k (filled marker, red when it beats every random draw), its bottom-k (open marker) and
    random k-sets (median, bar from the lowest to the highest draw). Harm = how much worse than
    the clean model the ranking's own metric is, in that metric's units (stated on hover)."""
    require(frame, ("ranking", "k", "top", "bottom", "random_median", "random_lo", "random_hi", "metric"),
            "causal_checks_figure")
    frame = complete_checks(frame)
    labels = [f"{r} · k={k}" for r, k in zip(frame["ranking"], frame["k"])]
    top, bottom, median = _harm(frame, "top"), _harm(frame, "bottom"), _harm(frame, "random_median")
    ends = np.stack([_harm(frame, "random_lo"), _harm(frame, "random_hi")])
    low, high = ends.min(0), ends.max(0)
    beats = frame["beats_random"].astype(bool).to_numpy()
    hover = [f"{m}: top {t:.4g}, bottom {b:.4g}, random median {rm:.4g} ({lo:.4g}–{hi:.4g}), clean {c:.4g}"
             for m, t, b, rm, lo, hi, c in zip(frame["metric"], frame["top"], frame["bottom"], frame["random_median"],
                                               frame["random_lo"], frame["random_hi"], frame["clean"])]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=labels, y=median, mode="markers", name="random k-sets (median, min–max)",
                             marker={"color": "#999999", "symbol": "line-ew-open", "size": 14},
                             error_y={"type": "data", "symmetric": False, "array": high - median,
                                      "arrayminus": median - low, "color": "#999999"},
                             text=hover, hovertemplate="%{x}<br>%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=bottom, mode="markers", name="bottom-k ablated",
                             marker={"color": "#1f77b4", "symbol": "circle-open", "size": 9},
                             text=hover, hovertemplate="%{x}<br>%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=top, mode="markers", name="top-k ablated",
                             marker={"color": np.where(beats, "#d62728", "#444444"), "symbol": "diamond", "size": 11},
                             text=[h + ("; beats random" if b else "; does NOT beat random") for h, b in zip(hover, beats)],
                             hovertemplate="%{x}<br>%{text}<extra></extra>"))
    fig.update_layout(title=title or "Causal checks on held-out prompts: harm of ablating the top-k vs random k-sets "
                                     "(red: beats every random draw)",
                      yaxis_title="harm (metric worse than clean, in its own units)", xaxis_title="ranking · k",
                      margin={"l": 60, "r": 20, "t": 60, "b": 120}, height=440, legend={"orientation": "h"})
    fig.add_hline(y=0, line={"color": "#cccccc"})
    return fig


def duo_gates_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """DuoAttention gates as a layer × KV-head grid (a `duo_attention` frame); cells of KV heads
    that Wu et al.'s score flags (any of its query heads) are marked "W"."""
    require(frame, ("layer", "kv_head", "gate"), "duo_gates_figure")
    grid = frame.pivot(index="layer", columns="kv_head", values="gate").sort_index()
    text = np.full(grid.shape, "", dtype=object)
    if "wu_retrieval" in frame.columns:
        wu = frame.pivot(index="layer", columns="kv_head", values="wu_retrieval").reindex_like(grid)
        text = np.where(wu.fillna(False).to_numpy(dtype=bool), "W", "")
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(dtype=float), x=[f"KV{k}" for k in grid.columns], y=grid.index.to_numpy(), zmin=0, zmax=1,
        colorscale="Viridis", colorbar={"title": "α"}, text=text, texttemplate="%{text}",
        hovertemplate="layer %{y} %{x}<br>gate α %{z:.3f}<extra></extra>"))
    threshold = frame.attrs.get("threshold", 0.5)
    fig.update_layout(title=title or f"DuoAttention gates (retrieval KV head: α ≥ {threshold}; W: a Wu et al. "
                                     "retrieval head in the group)",
                      xaxis_title="KV head", yaxis_title="layer", yaxis={"autorange": "reversed", "dtick": 1},
                      margin={"l": 50, "r": 20, "t": 60, "b": 40}, height=160 + 22 * len(grid))
    return fig


def duo_effect_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """NIAH accuracy by context length with every KV head full, with the DuoAttention gates
    deployed, and with every head streaming; the KV-cache share saved on the right axis (a
    `duo_effect` frame)."""
    require(frame, ("context_length", "accuracy_full", "accuracy_duo", "accuracy_streaming", "kv_saved_fraction"),
            "duo_effect_figure")
    x = frame["context_length"].to_numpy()
    fig = go.Figure()
    for column, name, colour in (("accuracy_full", "all heads full", "#1f77b4"),
                                 ("accuracy_duo", "DuoAttention (retrieval KV heads full)", "#d62728"),
                                 ("accuracy_streaming", "all heads streaming", "#999999")):
        fig.add_trace(go.Scatter(x=x, y=frame[column].to_numpy(dtype=float), mode="lines+markers", name=name,
                                 line={"color": colour}, hovertemplate=f"{name}<br>%{{x}} tokens: %{{y:.2f}}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=frame["kv_saved_fraction"].to_numpy(dtype=float), name="KV cache saved",
                         yaxis="y2", opacity=0.25, marker={"color": "#2ca02c"},
                         hovertemplate="%{x} tokens: %{y:.0%} of the KV cache saved<extra></extra>"))
    fig.update_layout(title=title or "NIAH accuracy on held-out trials, and KV cache saved, with DuoAttention's gates",
                      xaxis_title="context length (tokens)", yaxis={"title": "accuracy", "range": [0, 1.05]},
                      yaxis2={"title": "KV cache saved", "overlaying": "y", "side": "right", "range": [0, 1],
                              "tickformat": ".0%"},
                      xaxis={"type": "log"}, margin={"l": 50, "r": 60, "t": 50, "b": 40}, height=380,
                      legend={"orientation": "h"})
    return fig


def niah_curve_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """NIAH accuracy as the top-k retrieval heads are ablated, against random k-sets (median and
    min–max): a frame ``k, top, random_median, random_lo, random_hi`` (`causal_check` rows of one
    ranking, or a NIAH curve)."""
    return top_vs_random(frame, "niah_curve_figure", top_name="top-k retrieval heads", median_name="random median",
                         title=title or "NIAH accuracy with the top-k retrieval heads ablated vs random k-sets",
                         x_title="heads ablated (k)", y_title="NIAH accuracy", y_range=[0, 1.05])


def niah_controls_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Overall NIAH accuracy on held-out trials per condition of a `niah_controls` frame: full,
    the retrieval set ablated, and each random set of its size (with their median)."""
    from workbench.analyzers.niah import _kind
    from workbench.analyzers.retrieval import _overall

    require(frame, ("condition", "accuracy", "n_trials"), "niah_controls_figure")
    part = frame[frame["held_out"].astype(bool)] if "held_out" in frame.columns and frame["held_out"].any() else frame
    rows = [(cond, _overall(g), str(g["heads"].iloc[0]) if "heads" in g.columns else "")
            for cond, g in part.groupby("condition", sort=False)]
    palette = {"full": "#1f77b4", "ablated": "#d62728", "median": "#555555"}
    colours = [palette.get(_kind(c), "#bbbbbb") for c, _, _ in rows]
    size = frame.attrs.get("set_size")
    fig = go.Figure(go.Bar(x=[c for c, _, _ in rows], y=[v for _, v, _ in rows], marker={"color": colours},
                           text=[f"{v:.2f}" for _, v, _ in rows], textposition="outside",
                           customdata=[h for _, _, h in rows],
                           hovertemplate="%{x}: accuracy %{y:.2f}<br>ablated: %{customdata}<extra></extra>"))
    fig.update_layout(title=title or (f"NIAH accuracy on held-out trials: the retrieval set (Wu et al. > 0.1"
                                      f"{', ' + str(size) + ' heads' if size is not None else ''}) ablated vs random "
                                      "sets of its size"),
                      yaxis={"title": "accuracy", "range": [0, 1.1]}, xaxis_title="heads ablated",
                      margin={"l": 50, "r": 20, "t": 60, "b": 80}, height=360)
    return fig
