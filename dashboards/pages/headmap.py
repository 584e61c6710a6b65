"""Head map: UMAP of heads over pattern descriptors, and clusters."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, views

dash.register_page(__name__, path="/head-map", name="Head map", title="Head map · Attention Workbench", order=7)
KEYWORDS = ("pattern", "umap")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Head map"), dcc.Store(id="headmap-run", data=run),
                     *views.analysis_page(data.served_root(), run, "headmap", "head map", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "headmap-graph", "index": ALL}, "clickData"), State("headmap-run", "data"),
          prevent_initial_call=True)
def select_head(clicks, run_id):
    return views.selection(run_id, ctx.triggered[0]["value"] if ctx.triggered else None) or no_update
