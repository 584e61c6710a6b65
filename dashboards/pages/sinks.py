"""Attention sinks: first-token sink scores, sink tokens, massive activations."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, views

dash.register_page(__name__, path="/sinks", name="Sinks", title="Sinks · Attention Workbench", order=2)
KEYWORDS = ("sink", "massive")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Sinks"), dcc.Store(id={"type": "sinks-run", "index": 0}, data=run),
                     *views.analysis_page(data.served_root(), run, "sinks", "sink", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "sinks-graph", "index": ALL}, "clickData"),
          State({"type": "sinks-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
