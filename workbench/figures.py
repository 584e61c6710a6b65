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


# -- sinks, importance, patterns (issue 5) ------------------------------------------------------------
def _head_labels(frame: pd.DataFrame) -> list[str]:
    return [f"L{int(l)}H{int(h)}" for l, h in zip(frame["layer"], frame["head"])]


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=200)
    return fig


def _require(frame: pd.DataFrame, columns, who: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(f"{who} needs column(s) {missing}; the frame has {list(frame.columns)}")


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
    _require(frame, ("prompt_id", "layer", "head", "position", "token", "alpha"), "token_sink_view")
    if frame.empty:
        return _empty(title or "Token sinks", "no tokens")
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


def importance_ranking(frame: pd.DataFrame, score: str = "importance", *, top: int | None = None,
                       title: str | None = None) -> go.Figure:
    """Heads sorted by a per-head score, most important first, as a bar chart.

    Returns:
        A bar trace with x = ``"L{layer}H{head}"``, y = the score (mean over repeated rows),
        ``customdata = [layer, head]`` for click-to-select.
    """
    _require(frame, ("layer", "head", score), "importance_ranking")
    per_head = frame.groupby(["layer", "head"], as_index=False)[score].mean()
    per_head = per_head.sort_values([score, "layer", "head"], ascending=[False, True, True], ignore_index=True)
    if top is not None:
        per_head = per_head.head(top)
    fig = go.Figure(go.Bar(
        x=_head_labels(per_head), y=per_head[score].to_numpy(dtype=float),
        customdata=per_head[["layer", "head"]].to_numpy(), marker={"color": per_head[score], "colorscale": "Viridis"},
        hovertemplate="layer %{customdata[0]} head %{customdata[1]}<br>" + score + " %{y:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"Heads ranked by {score}", xaxis_title="head", yaxis_title=score,
                      margin={"l": 50, "r": 20, "t": 50, "b": 60}, height=360)
    return fig


def pruning_curve_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Loss (left axis) and accuracy (right axis) against the fraction of heads pruned
    (a `pruning_curve` frame: ``fraction_pruned, loss, accuracy, n_pruned, pruned``)."""
    _require(frame, ("fraction_pruned", "loss"), "pruning_curve_figure")
    x = frame["fraction_pruned"].to_numpy(dtype=float)
    hover = frame["pruned"].astype(str).to_numpy() if "pruned" in frame.columns else None
    fig = go.Figure(go.Scatter(x=x, y=frame["loss"].to_numpy(dtype=float), mode="lines+markers", name="loss",
                               text=hover, hovertemplate="%{x:.0%} pruned<br>loss %{y:.3f}<br>%{text}<extra></extra>"))
    if "accuracy" in frame.columns:
        fig.add_trace(go.Scatter(x=x, y=frame["accuracy"].to_numpy(dtype=float), mode="lines+markers",
                                 name="accuracy", yaxis="y2",
                                 hovertemplate="%{x:.0%} pruned<br>accuracy %{y:.3f}<extra></extra>"))
        fig.update_layout(yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1]})
    fig.update_layout(title=title or "Pruning curve (least important heads first)", xaxis_title="fraction of heads pruned",
                      yaxis_title="loss", xaxis={"tickformat": ".0%"}, margin={"l": 50, "r": 50, "t": 50, "b": 40},
                      height=360, legend={"orientation": "h"})
    return fig


def umap_scatter(frame: pd.DataFrame, *, color: str = "pattern", title: str | None = None) -> go.Figure:
    """The UMAP head map of a `head_patterns` frame: one point per head, one trace per pattern type.

    Returns:
        Scatter traces (one per value of ``color``) whose points carry
        ``customdata = [layer, head]`` and hover the head's descriptors.
    """
    _require(frame, ("layer", "head", "umap_x", "umap_y", color), "umap_scatter")
    shown = [c for c in ("entropy", "max_prob", "sink_mass", "local_mass", "prev_token", "induction")
             if c in frame.columns]
    hover = "L%{customdata[0]}H%{customdata[1]}" + "".join(
        f"<br>{c} %{{customdata[{i + 2}]:.2f}}" for i, c in enumerate(shown)) + "<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    for value, group in frame.groupby(color, sort=True):
        fig.add_trace(go.Scatter(
            x=group["umap_x"].to_numpy(dtype=float), y=group["umap_y"].to_numpy(dtype=float), mode="markers+text",
            name=str(value), text=_head_labels(group), textposition="top center",
            customdata=group[["layer", "head", *shown]].to_numpy(dtype=float), hovertemplate=hover,
            marker={"size": 11},
        ))
    fig.update_layout(title=title or "UMAP head map (pattern descriptors)", xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40}, height=480, legend={"title": color})
    return fig


def massive_activations_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """|value| of each massive activation by layer (log scale), hover: token, position, dim
    (a `massive_activations` frame); an annotated empty figure when there are none."""
    _require(frame, ("prompt_id", "layer", "position", "token", "dim", "value", "ratio"), "massive_activations_figure")
    title = title or "Massive activations"
    if frame.empty:
        return _empty(title, "no massive activations (|h| > 100 and > 1000× the median) in any layer")
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
    _require(frame, ("n_layers", "token"), "secondary_sinks_figure")
    title = title or "Secondary sinks by lifetime"
    if frame.empty:
        return _empty(title, "no token's hidden state lines up with the first token's (|cos| > 0.9)")
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


# -- retrieval, circuits, saliency (issue 6) ----------------------------------------------------------
def _need_columns(frame: pd.DataFrame, columns, who: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkbenchError(f"{who} needs column(s) {missing}; the frame has {list(frame.columns)}")


def _placeholder(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, height=200)
    return fig
def retrieval_grid(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Layer × head grid of retrieval scores (a `retrieval_scores` frame), retrieval heads ringed.

    Returns:
        A heatmap on [0, 1] (``customdata = [layer, head]``) plus a marker on every head with
        ``is_retrieval`` (Wu et al.: score > 0.1).
    """
    _need_columns(frame, ("layer", "head", "retrieval_score"), "retrieval_grid")
    fig = head_grid(frame, "retrieval_score", title=title or "Retrieval score (Wu et al. 2024)", colorscale="Blues")
    fig.data[0].update(zmin=0, zmax=1)
    if "is_retrieval" in frame.columns:
        hits = frame[frame["is_retrieval"].astype(bool)]
        fig.add_trace(go.Scatter(
            x=hits["head"], y=hits["layer"], mode="markers", name="retrieval head",
            customdata=hits[["layer", "head"]].to_numpy(), marker={"symbol": "circle-open", "size": 18, "color": "red"},
            hovertemplate="layer %{y} head %{x}: retrieval head<extra></extra>"))
        fig.update_layout(showlegend=False)
    return fig


def niah_heatmap(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Needle-in-a-haystack accuracy, context length × needle depth (a `niah_grid` frame); one
    panel per ``condition`` when the frame has that column (e.g. full vs heads ablated)."""
    from plotly.subplots import make_subplots

    _need_columns(frame, ("context_length", "depth", "accuracy"), "niah_heatmap")
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
        _need_columns(frame, ("layer", "head", "in_circuit"), "circuit_membership")
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
    _need_columns(frame, ("task", "method", "layer", "head", "effect", "in_circuit"), "circuit_figures")
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
    _need_columns(frame, ("view", "layer", "head", metric), "correlation_grid")
    heads = frame[frame["view"] == "head"]
    if heads.empty:
        return _placeholder(title or f"Attention vs saliency: {metric}", "no per-head rows")
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
    _need_columns(frame, ("position", "token", "attribution", "view", "layer", "head", "attention"), "attribution_bars")
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
