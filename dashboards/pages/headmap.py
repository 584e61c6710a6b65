"""Head map: UMAP of heads over pattern descriptors, and clusters."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, views

dash.register_page(__name__, path="/head-map", name="Head map", title="Head map · Attention Workbench", order=7)
KEYWORDS = ("pattern", "umap")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Head map"), dcc.Store(id={"type": "headmap-run", "index": 0}, data=run),
                     *views.analysis_page(data.served_root(), run, "headmap", "head map", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "headmap-graph", "index": ALL}, "clickData"),
          State({"type": "headmap-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
