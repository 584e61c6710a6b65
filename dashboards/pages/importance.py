"""Head importance: ranking and pruning curve."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, views

dash.register_page(__name__, path="/importance", name="Importance", title="Importance · Attention Workbench", order=3)
KEYWORDS = ("importance", "pruning")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Importance"), dcc.Store(id={"type": "importance-run", "index": 0}, data=run),
                     *views.analysis_page(data.served_root(), run, "importance", "importance", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "importance-graph", "index": ALL}, "clickData"),
          State({"type": "importance-run", "index": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
