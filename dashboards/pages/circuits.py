"""Circuits: membership grid and overlap."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, views

dash.register_page(__name__, path="/circuits", name="Circuits", title="Circuits · Attention Workbench", order=5)
KEYWORDS = ("circuit",)


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Circuits"), dcc.Store(id={"type": "circuits-run", "index": 0}, data=run),
                     *views.analysis_page(data.served_root(), run, "circuits", "circuit", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "circuits-graph", "index": ALL}, "clickData"),
          State({"type": "circuits-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
