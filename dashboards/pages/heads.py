"""Heads side by side: the attention patterns of several chosen heads (any layers) on one prompt.

Patterns of a chosen or typed prompt are computed with the run's model in a background callback
(each layer once, kept in the app's disk cache); a run's stored examples need no model.
"""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from dashboards import data, scores, views
from workbench.errors import WorkbenchError
from workbench.figures import attention_pattern, example_pattern

dash.register_page(__name__, path="/heads", name="Heads side by side", title="Heads · Attention Workbench", order=3)


def parse_heads(values) -> list[tuple[int, int]]:
    """``["L2H5", ...]`` → ``[(2, 5), ...]`` (malformed values are left out)."""
    out = []
    for v in values or []:
        picked = views.head_from_click({"points": [{"x": v}]})
        if picked is not None:
            out.append(picked)
    return out


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    try:
        opened = data.open_run(data.served_root(), run)
        n_layers, n_heads = scores.head_shape(opened)
    except WorkbenchError as exc:
        return html.Div([html.H2("Heads side by side"), views.message(str(exc), "error")])
    source = data.model_source(opened)
    examples = data.stored_examples(opened)
    prompts = data.run_prompts(opened) if source is not None else []
    options = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
    return html.Div([
        html.H2("Heads side by side"),
        dcc.Dropdown(id="heads-pick", options=options, value=options[:2], multi=True, placeholder="heads to compare"),
        dcc.Dropdown(id="heads-prompt", options=[{"label": p[:80], "value": p} for p in prompts],
                     value=prompts[0] if prompts else None, placeholder="a prompt of the run (computed with its model)",
                     style={} if source is not None else {"display": "none"}),
        dcc.Dropdown(id="heads-example", options=[{"label": f"stored example: {e}", "value": e} for e in examples],
                     value=examples[0] if examples and source is None else None,
                     placeholder="or a stored example of the run (no model needed)",
                     style={} if examples else {"display": "none"}),
        html.Div(id="heads-error"),
        dcc.Loading(html.Div(id="heads-panels", className="wb-panels"), type="circle"),
        dcc.Store(id="heads-run", data=run), dcc.Store(id="heads-key"),
    ])


@callback(Output("heads-key", "data"), Output("heads-error", "children"),
          Input("heads-prompt", "value"), Input("heads-pick", "value"), State("heads-run", "data"),
          background=True, interval=250)
def compute_heads(prompt, picked, run_id):
    if not prompt:
        return no_update, no_update
    try:
        source = data.run_model_source(data.served_root(), run_id)
        for layer in sorted({l for l, _ in parse_heads(picked)}):
            data.layer_patterns(source, prompt, layer)
        return {"source": source, "prompt": prompt}, None
    except WorkbenchError as exc:
        return None, views.message(str(exc), "error")


@callback(Output("heads-key", "data", allow_duplicate=True), Input("heads-example", "value"),
          prevent_initial_call="initial_duplicate")
def choose_example(example):
    return {"example": example} if example else no_update


def panels(key, picked, run_id) -> list:
    out = []
    for layer, head in parse_heads(picked):
        title = f"layer {layer} head {head}"
        if key.get("example") is not None:
            found = data.stored_layer(data.open_run(data.served_root(), run_id), key["example"], layer)
            if found is None:
                continue
            patterns, tokens, positions, n = found
            fig = example_pattern(patterns[head], positions, tokens, n_tokens=n, title=title, height=380)
        else:
            found = data.cached_layer(key["source"], key["prompt"], layer)
            if found is None:
                continue
            fig = attention_pattern(found[0][head], found[1], title=title).update_layout(height=420)
        out.append(html.Div(dcc.Graph(figure=fig, config=views.GRAPH_CONFIG), className="wb-panel"))
    return out or [views.message("pick heads above")]


@callback(Output("heads-panels", "children"), Input("heads-key", "data"), Input("heads-pick", "value"),
          State("heads-run", "data"))
def show_heads(key, picked, run_id):
    if not key:
        return no_update
    try:
        return panels(key, picked, run_id)
    except WorkbenchError as exc:
        return [views.message(str(exc), "error")]
