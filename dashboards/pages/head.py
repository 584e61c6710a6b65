"""Head: one head's scores across all tables, and its attention pattern on a chosen or typed prompt.

The head comes from the app-wide selection (a click on any grid) or from this page's dropdowns,
which write the selection back. Patterns are computed on demand with the run's model when this
machine can load it (plain callback with a loading spinner: no background-callback manager is
installed); patterns longer than `MAX_PATTERN_SIDE` tokens are block-averaged or windowed.
"""

from __future__ import annotations

import re

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, views
from workbench.errors import WorkbenchError
from workbench.figures import MAX_PATTERN_SIDE, attention_pattern

dash.register_page(__name__, path="/head", name="Head", title="Head · Attention Workbench", order=1)


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
        rows ``{table, score, value, rank}``; rank 1 is the largest value (``"3 of 32"``); boolean
        flags (``is_sink``) give True/False and how many heads have the flag.
    """
    rows = []
    for name in run.tables:
        try:
            frame = data.per_head(data.table(run, name))
        except WorkbenchError:
            continue
        for where, part in [] if frame is None else data.head_groups(frame):
            label = views.title_of(name) + (f" ({', '.join(where.values())})" if where else "")
            for flag in [c for c in part.columns if pd.api.types.is_bool_dtype(part[c])]:
                hits = part[(part["layer"] == layer) & (part["head"] == head)][flag]
                if len(hits):
                    rows.append({"table": label, "score": flag, "value": bool(hits.any()),
                                 "rank": f"{int(part.groupby(['layer', 'head'])[flag].max().sum())} heads"})
            scores = views.scores_of(part)
            means = part.groupby(["layer", "head"])[scores].mean()  # (head, score), one groupby per part
            if not scores or (layer, head) not in means.index:
                continue
            values = means.loc[(layer, head)]
            ranks = (means > values).sum() + 1
            rows += [{"table": label, "score": s, "value": float(values[s]), "rank": f"{int(ranks[s])} of {len(means)}"}
                     for s in scores]
    return rows


def _fmt(value) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else f"{value:.4g}"


def scores_table(rows: list[dict]):
    if not rows:
        return views.message("no per-head table of this run has this head")
    header = html.Tr([html.Th(h) for h in ("analysis", "score", "value", "rank")])
    body = [html.Tr([html.Td(r["table"]), html.Td(r["score"]), html.Td(_fmt(r["value"])), html.Td(r["rank"])])
            for r in rows]
    return html.Table([html.Thead(header), html.Tbody(body)], className="wb-table", id="head-scores-table")


def reconcile(opening: bool, selection, layer, head, run_id):
    """Keep the dropdowns and the app-wide selection in step: (layer value, head value, selection).

    ``opening``: the page has just opened (Dash then reports every input as triggered), else a
    dropdown changed. On opening, a layer/head in the address wins and is written to the selection, else the
    selection moves the dropdowns, else the page starts at layer 0, head 0. A dropdown change
    writes the selection.
    """
    sel = selection if isinstance(selection, dict) else {}
    sel_pair = (views.int_or_none(sel.get("layer")), views.int_or_none(sel.get("head")))
    if opening and (layer is None or head is None):
        if None not in sel_pair:
            return sel_pair[0], sel_pair[1], no_update
        return (0 if layer is None else layer), (0 if head is None else head), no_update
    if opening:  # values from the address: set them again, or Dash skips the callbacks that read them
        return layer, head, (no_update if (layer, head) == sel_pair else
                             {"run": run_id, "layer": data.head_index("layer", layer),
                              "head": data.head_index("head", head)})
    if layer is None or head is None or (layer, head) == sel_pair:
        return no_update, no_update, no_update
    return no_update, no_update, {"run": run_id, "layer": data.head_index("layer", layer),
                                  "head": data.head_index("head", head)}


def position_from_label(label) -> int | None:
    """The first position named by a pattern axis label (``"12 tok"`` or ``"12–14 tok…"``)."""
    match = re.match(r"\s*(\d+)", str(label))
    return int(match.group(1)) if match else None


def token_view(tokens, row: np.ndarray, query: int, max_tokens: int = MAX_PATTERN_SIDE):
    """The prompt as tokens shaded by the attention query ``query`` pays them (at most
    ``max_tokens`` around the query), like bertviz's token view but bounded."""
    n = len(tokens)
    lo = max(0, min(query - max_tokens // 2, n - max_tokens))
    hi = min(n, lo + max_tokens)
    peak = float(row[lo:hi].max()) or 1.0
    spans = [html.Span(tokens[k], title=f"key {k}: {row[k]:.3f}",
                       className="wb-token" + (" wb-query" if k == query else ""),
                       style={"backgroundColor": f"rgba(33,113,181,{row[k] / peak:.3f})"}) for k in range(lo, hi)]
    return [html.Div(f"attention from query {query} {tokens[query]!r} (keys {lo}–{hi - 1} of {n})",
                     className="wb-caption"), html.Div(spans, className="wb-tokens")]


def pattern_view(source, prompt, layer, head, view, start, click, trigger):
    """Figure, token view, slider max and slider disabled flag for one head on one prompt."""
    if not isinstance(prompt, str):
        raise WorkbenchError(f"the prompt must be text; got {type(prompt).__name__}")
    start = data.head_index("window start", start or 0)
    pattern, tokens = data.head_pattern(source, prompt, data.head_index("layer", layer), data.head_index("head", head))
    n = len(tokens)
    windowed = view == "window" and n > MAX_PATTERN_SIDE
    fig = attention_pattern(pattern, tokens, start=int(start or 0) if windowed else None,
                            title=f"layer {layer} head {head}")
    query = position_from_label(click["points"][0]["y"]) if trigger == "head-pattern" and click else None
    if query is None or query >= n:
        query = min(n - 1, int(start or 0) + MAX_PATTERN_SIDE - 1) if windowed else n - 1
    return fig, token_view(tokens, pattern[query], query), max(n - MAX_PATTERN_SIDE, 0), not windowed


def prompt_options(prompts) -> list[dict]:
    return [{"label": p if len(p) <= 80 else p[:77] + "...", "value": p} for p in prompts]


def layout(run=None, layer=None, head=None, **_):
    run = data.run_or_default(data.served_root(), run)
    try:
        opened = data.open_run(data.served_root(), run)
        n_layers, n_heads = head_shape(opened)
    except WorkbenchError as exc:
        return html.Div([html.H2("Head"), views.message(str(exc), "error")])
    source = data.model_source(opened)
    pick = html.Div([
        "layer ", dcc.Dropdown(id="head-layer", options=list(range(n_layers)), value=views.int_or_none(layer),
                               clearable=False, className="wb-small-dropdown"),
        " head ", dcc.Dropdown(id="head-head", options=list(range(n_heads)), value=views.int_or_none(head),
                               clearable=False, className="wb-small-dropdown"),
    ], className="wb-row")
    if source is None:
        model = (opened.manifest.get("model") or {}).get("source")
        pattern = views.message(f"attention patterns need the run's model, and its source {model!r} cannot be "
                                "loaded on this machine (expected demo, minilm or an existing directory); "
                                "the scores above come from the run")
    else:
        prompts = data.run_prompts(opened)
        pattern = html.Div([
            dcc.Dropdown(id="head-prompt", options=prompt_options(prompts), value=prompts[0] if prompts else None,
                         placeholder="choose a prompt of the run, or type one below"),
            html.Div([dcc.Textarea(id="head-text", placeholder="type a prompt", className="wb-textarea"),
                      html.Button("compute pattern", id="head-compute", n_clicks=0)], className="wb-row"),
            dcc.RadioItems(id="head-view", options=[{"label": " whole (block means when long)", "value": "whole"},
                                                    {"label": " window of 256 positions", "value": "window"}],
                           value="whole", inline=True),
            dcc.Slider(id="head-window", min=0, max=0, step=16, value=0, disabled=True, marks=None,
                       tooltip={"placement": "bottom"}),
            html.Div(id="head-error"),
            dcc.Loading(dcc.Graph(id="head-pattern", config=views.GRAPH_CONFIG, figure=views.placeholder(
                "choose a prompt of the run or type one and press compute")), type="circle"),
            html.Div(id="head-tokens"),
        ])
    return html.Div([html.H2("Head"), pick, html.H3("Scores"), html.Div(id="head-scores"),
                     html.H3("Attention pattern"), pattern,
                     dcc.Store(id="head-run", data=run)])


@callback(Output("head-layer", "value"), Output("head-head", "value"),
          Output("app-selection", "data", allow_duplicate=True),
          Input("head-run", "data"), Input("head-layer", "value"), Input("head-head", "value"),
          State("app-selection", "data"), prevent_initial_call="initial_duplicate")
def sync_head(run_id, layer, head, selection):
    # the selection is read (State) when the page opens: an Input outside the page would make
    # Dash report a missing component on every other page
    return reconcile("head-run" in ctx.triggered_prop_ids.values(), selection, layer, head, run_id)


@callback(Output("head-scores", "children"), Input("head-layer", "value"), Input("head-head", "value"),
          State("head-run", "data"))
def show_scores(layer, head, run_id):
    if layer is None or head is None:
        return no_update
    try:
        return scores_table(head_scores(data.open_run(data.served_root(), run_id), data.head_index("layer", layer),
                                        data.head_index("head", head)))
    except WorkbenchError as exc:
        return views.message(str(exc), "error")


@callback(Output("head-prompt", "options"), Output("head-prompt", "value"), Input("head-compute", "n_clicks"),
          State("head-text", "value"), State("head-prompt", "options"), prevent_initial_call=True)
def add_prompt(_, text, options):
    text = (text or "").strip()
    if not text:
        return no_update, no_update
    known = [o["value"] for o in options or []]
    return (options if text in known else [*prompt_options([text]), *(options or [])]), text


@callback(Output("head-pattern", "figure"), Output("head-tokens", "children"), Output("head-window", "max"),
          Output("head-window", "disabled"), Output("head-error", "children"),
          Input("head-prompt", "value"), Input("head-layer", "value"), Input("head-head", "value"),
          Input("head-view", "value"), Input("head-window", "value"), Input("head-pattern", "clickData"),
          State("head-run", "data"))
def show_pattern(prompt, layer, head, view, start, click, run_id):
    if not prompt or layer is None or head is None:
        return no_update, no_update, no_update, no_update, None
    try:
        source = data.run_model_source(data.served_root(), run_id)
        return (*pattern_view(source, prompt, layer, head, view, start, click, ctx.triggered_id), None)
    except WorkbenchError as exc:
        return views.placeholder("no pattern"), None, 0, True, views.message(str(exc), "error")
