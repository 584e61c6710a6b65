"""A head's scores across every table of a run, ranked by what each score means (glossary), with
the glossary definitions as tooltips (the Head page's score table)."""

from __future__ import annotations

import pandas as pd
from dash import html

from dashboards import data, views
from workbench.glossary import lookup

ORDER = {"high": "highest first", "low": "lowest first", "abs": "by |value|"}


def head_shape(run) -> tuple[int, int]:
    """(n_layers, n_heads) of the run's model, from the manifest or else from its tables."""
    model = run.manifest.get("model") or {}
    if model.get("n_layers") and model.get("n_heads"):
        return int(model["n_layers"]), int(model["n_heads"])
    layers = heads = 0
    for name in run.tables:
        frame = data.per_head(data.table(run, name))
        if frame is not None:
            layers, heads = max(layers, int(frame["layer"].max()) + 1), max(heads, int(frame["head"].max()) + 1)
    return layers, heads


def head_scores(run, layer: int, head: int) -> list[dict]:
    """Every score of head (layer, head) in every per-head table, with its rank among the heads.

    Returns:
        rows ``{table, score, column, label, tooltip, value, rank}``. Rank 1 is the most notable
        value in the score's direction (glossary: largest, smallest, or largest |value|), e.g.
        ``"3 of 32 (lowest first)"``; boolean flags (``is_sink``) give True/False and how many
        heads have the flag.
    """
    rows = []
    for name, where, part in data.head_parts(run):
        label = views.title_of(name) + (f" ({', '.join(where.values())})" if where else "")
        mine = part[(part["layer"] == layer) & (part["head"] == head)]  # this head's rows, selected once
        for flag in [c for c in part.columns if pd.api.types.is_bool_dtype(part[c])]:
            hits = mine[flag]
            if len(hits):
                rows.append({"table": label, "score": flag, "label": views.label_of(flag, name),
                             "tooltip": views.tooltip(flag, name), "value": bool(hits.any()),
                             "rank": f"{int(part.groupby(['layer', 'head'])[flag].max().sum())} heads"})
        names = views.scores_of(part)
        means = part.groupby(["layer", "head"])[names].mean()  # (head, score), one groupby per part
        if not names or (layer, head) not in means.index:
            continue
        values = means.loc[(layer, head)]
        for s in names:
            term = lookup(s, name)
            direction = term.direction if term else "high"
            if direction == "low":
                rank = int((means[s] < values[s]).sum()) + 1
            elif direction == "abs":
                rank = int((means[s].abs() > abs(values[s])).sum()) + 1
            else:
                rank = int((means[s] > values[s]).sum()) + 1
            order = f" ({ORDER[direction]})" if direction else ""
            rows.append({"table": label, "score": s, "label": views.label_of(s, name),
                         "tooltip": views.tooltip(s, name), "value": float(values[s]),
                         "rank": f"{rank} of {len(means)}{order}" if direction else "—"})
    return rows


def _fmt(value) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else f"{value:.4g}"


def scores_table(rows: list[dict]):
    if not rows:
        return views.message("no per-head table of this run has this head")
    header = html.Tr([html.Th(h) for h in ("analysis", "score", "value", "rank")])
    body = [html.Tr([html.Td(r["table"]), html.Td(html.Span(r["label"], title=r["tooltip"], className="wb-term")),
                     html.Td(_fmt(r["value"])), html.Td(r["rank"])]) for r in rows]
    return html.Table([html.Thead(header), html.Tbody(body)], className="wb-table", id="head-scores-table")
