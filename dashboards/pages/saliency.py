"""Attention vs saliency: the run's correlation grids, and per-token bars for a chosen prompt.

The per-token bars (attribution vs attention, all heads and the selected head) are computed on
demand with the run's model when this machine can load it (Captum integrated gradients).
"""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, views
from workbench.errors import WorkbenchError
from workbench.figures import attribution_bars

dash.register_page(__name__, path="/saliency", name="Saliency", title="Saliency · Attention Workbench", order=6)
KEYWORDS = ("saliency", "attribution")


def token_bars(source: str, prompt: str, selection) -> list:
    """Graphs of per-token attribution vs attention: all-head mean, and the selected head if any."""
    frame = data.token_attributions(source, prompt)
    figs = [attribution_bars(frame, view="all_mean", title="attribution vs attention (mean of all heads)")]
    sel = selection if isinstance(selection, dict) else {}
    layer, head = views.int_or_none(sel.get("layer")), views.int_or_none(sel.get("head"))
    if layer is not None and head is not None:
        figs.append(attribution_bars(frame, view="head", layer=layer, head=head,
                                     title=f"attribution vs attention (layer {layer} head {head})"))
    return [dcc.Graph(figure=fig, config=views.GRAPH_CONFIG) for fig in figs]


def on_demand(opened) -> list:
    source = data.model_source(opened)
    if source is None:
        return [views.message("per-token bars need the run's model, which cannot be loaded on this machine")]
    prompts = data.run_prompts(opened)
    return [html.H3("Per-token attribution vs attention"),
            dcc.Dropdown(id="saliency-prompt", options=[{"label": p[:80], "value": p} for p in prompts],
                         value=None, placeholder="choose a prompt of the run, or type one below"),
            html.Div([dcc.Textarea(id="saliency-text", placeholder="type a prompt", className="wb-textarea"),
                      html.Button("compute attributions", id="saliency-compute", n_clicks=0)], className="wb-row"),
            html.Div(id="saliency-error"), dcc.Loading(html.Div(id="saliency-bars"), type="circle")]


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    body = views.analysis_page(data.served_root(), run, "saliency", "saliency", KEYWORDS)
    try:
        body += on_demand(data.open_run(data.served_root(), run))
    except WorkbenchError:
        pass  # analysis_page already says what is wrong with the run
    return html.Div([html.H2("Saliency"), dcc.Store(id={"type": "saliency-run", "index": 0}, data=run), *body])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "saliency-graph", "index": ALL}, "clickData"),
          State({"type": "saliency-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)


@callback(Output("saliency-bars", "children"), Output("saliency-error", "children"),
          Input("saliency-compute", "n_clicks"), Input("saliency-prompt", "value"),
          State("saliency-text", "value"), State("app-selection", "data"),
          State({"type": "saliency-run", "index": ALL}, "data"), prevent_initial_call=True)
def show_bars(_, chosen, text, selection, runs):
    prompt = (text or "").strip() if ctx.triggered_id == "saliency-compute" else chosen
    if not prompt or not runs:
        return no_update, None
    try:
        return token_bars(data.run_model_source(data.served_root(), runs[0]), prompt, selection), None
    except WorkbenchError as exc:
        return [], views.message(str(exc), "error")
