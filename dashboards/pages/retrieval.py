"""Retrieval heads: score grid and needle-in-a-haystack accuracy."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, views

dash.register_page(__name__, path="/retrieval", name="Retrieval", title="Retrieval · Attention Workbench", order=4)
KEYWORDS = ("retrieval", "niah", "passkey")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Retrieval"), dcc.Store(id={"type": "retrieval-run", "index": 0}, data=run),
                     *views.analysis_page(data.served_root(), run, "retrieval", "retrieval", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "retrieval-graph", "index": ALL}, "clickData"),
          State({"type": "retrieval-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
