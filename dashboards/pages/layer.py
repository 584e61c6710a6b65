"""Layer: every head of one layer as a thumbnail of its attention pattern on one prompt; a click on
a thumbnail selects that head and opens it on the Head page.

Patterns of a chosen or typed prompt are computed with the run's model in a background callback
(the app's disk cache keeps them); a run's stored examples (``head_examples``) need no model.
Long prompts are block-averaged to at most 48 cells per axis.
"""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, scores, views
from workbench.errors import WorkbenchError
from workbench.figures import layer_thumbnails

dash.register_page(__name__, path="/layer", name="Layer", title="Layer · Attention Workbench", order=2)


def layout(run=None, layer=None, **_):
    run = data.run_or_default(data.served_root(), run)
    try:
        opened = data.open_run(data.served_root(), run)
        n_layers, _ = scores.head_shape(opened)
    except WorkbenchError as exc:
        return html.Div([html.H2("Layer"), views.message(str(exc), "error")])
    source = data.model_source(opened)
    examples = data.stored_examples(opened)
    prompts = data.run_prompts(opened) if source is not None else []
    layer = views.int_or_none(layer)
    choose = [dcc.Dropdown(id="layer-prompt", options=[{"label": p[:80], "value": p} for p in prompts],
                           value=prompts[0] if prompts else None, placeholder="a prompt of the run (computed with its model)",
                           style={} if source is not None else {"display": "none"}),
              html.Div([dcc.Input(id="layer-text", placeholder="or type a prompt", className="wb-textarea"),
                        html.Button("compute", id="layer-compute", n_clicks=0)], className="wb-row",
                       style={} if source is not None else {"display": "none"}),
              dcc.Dropdown(id="layer-example", options=[{"label": f"stored example: {e}", "value": e} for e in examples],
                           value=examples[0] if examples and source is None else None,
                           placeholder="or a stored example of the run (no model needed)",
                           style={} if examples else {"display": "none"})]
    if source is None and not examples:
        choose.append(views.message("this run's model cannot be loaded here and the run stores no examples "
                                    "(head_examples): no pattern to show"))
    return html.Div([
        html.H2("Layer"),
        html.Div(["layer ", dcc.Dropdown(id="layer-layer", options=list(range(n_layers)),
                                         value=0 if layer is None or layer >= n_layers else layer, clearable=False,
                                         className="wb-small-dropdown")], className="wb-row"),
        *choose, html.Div(id="layer-error"),
        dcc.Graph(id="layer-grid", config=views.GRAPH_CONFIG, figure=views.placeholder("choose a prompt or a stored example")),
        dcc.Store(id="layer-run", data=run), dcc.Store(id="layer-key"),
    ])


@callback(Output("layer-prompt", "options"), Output("layer-prompt", "value"), Input("layer-compute", "n_clicks"),
          State("layer-text", "value"), State("layer-prompt", "options"), prevent_initial_call=True)
def add_prompt(_, text, options):
    text = (text or "").strip()
    if not text:
        return no_update, no_update
    known = [o["value"] for o in options or []]
    return (options if text in known else [{"label": text[:80], "value": text}, *(options or [])]), text


@callback(Output("layer-key", "data"), Output("layer-error", "children"),
          Input("layer-prompt", "value"), Input("layer-layer", "value"), State("layer-run", "data"),
          background=True, interval=250)
def compute_layer(prompt, layer, run_id):
    if not prompt or layer is None:
        return no_update, no_update
    try:
        source = data.run_model_source(data.served_root(), run_id)
        data.layer_patterns(source, prompt, int(layer))
        return {"source": source, "prompt": prompt, "layer": int(layer)}, None
    except WorkbenchError as exc:
        return None, views.message(str(exc), "error")


@callback(Output("layer-key", "data", allow_duplicate=True), Input("layer-example", "value"),
          Input("layer-layer", "value"), State("layer-prompt", "value"), prevent_initial_call="initial_duplicate")
def choose_example(example, layer, prompt):
    if not example or layer is None or (prompt and ctx.triggered_id == "layer-layer"):
        return no_update
    return {"example": example, "layer": int(layer)}


def thumbnails(key, run_id):
    """The layer-thumbnails figure of a pattern key (see `dashboards.pages.head.pattern_of`)."""
    layer = int(key["layer"])
    if key.get("example") is not None:
        found = data.stored_layer(data.open_run(data.served_root(), run_id), key["example"], layer)
        if found is None:
            raise WorkbenchError(f"the run stores no example {key['example']!r} for layer {layer}")
        patterns, tokens, positions, n = found
        return layer_thumbnails(patterns, tokens, layer, positions=positions, title=f"layer {layer} on stored example “{key['example']}” "
                                f"({len(positions)} of {n} positions)")
    found = data.cached_layer(key["source"], key["prompt"], layer)
    if found is None:
        return views.placeholder("computing…")
    patterns, tokens = found
    return layer_thumbnails(patterns, tokens, layer)


@callback(Output("layer-grid", "figure"), Input("layer-key", "data"), State("layer-run", "data"))
def show_layer(key, run_id):
    if not key:
        return no_update
    try:
        return thumbnails(key, run_id)
    except WorkbenchError as exc:
        return views.placeholder(str(exc))


def clicked_head(click, layer) -> dict | None:
    """The head a click on the thumbnails names: the cell's customdata, else its trace number
    (one trace per head, in head order; Dash leaves a heatmap cell's customdata out of clickData)."""
    picked = views.head_from_click(click)
    if picked is not None:
        return {"layer": picked[0], "head": picked[1]}
    try:
        return {"layer": int(layer), "head": int(click["points"][0]["curveNumber"])}
    except (TypeError, KeyError, IndexError, ValueError):
        return None


@callback(Output("app-selection", "data", allow_duplicate=True), Output("app-url", "href", allow_duplicate=True),
          Input("layer-grid", "clickData"), State("layer-layer", "value"), State("layer-run", "data"),
          prevent_initial_call=True)
def open_head(click, layer, run_id):
    found = clicked_head(click, layer)
    if found is None:
        return no_update, no_update
    picked = {"run": run_id, **found}
    return picked, "/head" + views.run_query(run_id, layer=picked["layer"], head=picked["head"])
