"""Head importance: ranking and pruning curve."""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, views

dash.register_page(__name__, path="/importance", name="Importance", title="Importance · Attention Workbench", order=3)
KEYWORDS = ("importance", "pruning")


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2("Importance"), dcc.Store(id="importance-run", data=run),
                     *views.analysis_page(data.served_root(), run, "importance", "importance", KEYWORDS)])


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "importance-graph", "index": ALL}, "clickData"), State("importance-run", "data"),
          prevent_initial_call=True)
def select_head(clicks, run_id):
    return views.selection(run_id, ctx.triggered[0]["value"] if ctx.triggered else None) or no_update
