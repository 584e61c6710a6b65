"""Attention vs saliency, on demand: per-token bars of attribution vs attention for a chosen or
typed prompt, added to the registry-built Saliency page (`views.PAGE_EXTRAS`).

Integrated gradients on a typed prompt is slow, so it runs in a Dash background callback (the
app's `diskcache` manager); the result is kept in the app's disk cache.
"""

from __future__ import annotations

from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, views
from workbench.errors import WorkbenchError
from workbench.figures import attribution_bars


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


def on_demand(run_id, opened) -> list:
    source = data.model_source(opened)
    if source is None:
        return [views.message("per-token bars need the run's model, which cannot be loaded on this machine")]
    prompts = data.run_prompts(opened)
    return [html.H3("Per-token attribution vs attention"),
            dcc.Store(id={"type": "saliency-run", "index": 0}, data=run_id),
            dcc.Dropdown(id="saliency-prompt", options=[{"label": p[:80], "value": p} for p in prompts],
                         value=None, placeholder="choose a prompt of the run, or type one below"),
            html.Div([dcc.Textarea(id="saliency-text", placeholder="type a prompt", className="wb-textarea"),
                      html.Button("compute attributions", id="saliency-compute", n_clicks=0)], className="wb-row"),
            html.Div(id="saliency-error"), dcc.Loading(html.Div(id="saliency-bars"), type="circle")]


views.PAGE_EXTRAS["saliency"] = on_demand


@callback(Output("saliency-bars", "children"), Output("saliency-error", "children"),
          Input("saliency-compute", "n_clicks"), Input("saliency-prompt", "value"),
          State("saliency-text", "value"), State("app-selection", "data"),
          State({"type": "saliency-run", "index": ALL}, "data"), prevent_initial_call=True,
          background=True, interval=250)
def show_bars(_, chosen, text, selection, runs):
    prompt = (text or "").strip() if ctx.triggered_id == "saliency-compute" else chosen
    if not prompt or not runs:
        return no_update, None
    try:
        return token_bars(data.run_model_source(data.served_root(), runs[0]), prompt, selection), None
    except WorkbenchError as exc:
        return [], views.message(str(exc), "error")
