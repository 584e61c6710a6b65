"""Compare runs: two runs of the served folder side by side (two models, or two checkpoints):
model-level numbers, every shared score by relative layer depth, and per-head differences when
the models have the same shape. The same content as ``workbench report RUN_A RUN_B``."""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html

from dashboards import data, views
from workbench.errors import WorkbenchError
from workbench.figures import depth_profile, head_difference
from workbench.glossary import lookup
from workbench.report.compare import model_numbers, run_label, shape, shared_scores

dash.register_page(__name__, path="/compare", name="Compare runs", title="Compare · Attention Workbench", order=90)


def layout(run=None, other=None, **_):
    root = data.served_root()
    ids = data.run_ids(root)
    problems = []
    for given in (run, other):  # a run id from the address that is not a run here: say so, never swap silently
        if given is not None and given not in ids:
            try:
                data.open_run(root, given)
            except WorkbenchError as exc:
                problems.append(views.message(str(exc), "error"))
    first = run if run in ids else (ids[0] if ids else None)
    second = other if other in ids else next((i for i in ids if i != first), first)
    pick = [dcc.Dropdown(id=f"compare-{k}", options=ids, value=v, clearable=False, className="wb-run-choice")
            for k, v in (("a", first), ("b", second))]
    return html.Div([html.H2("Compare runs"), *problems, html.Div(["A ", pick[0], " B ", pick[1]], className="wb-row"),
                     dcc.Loading(html.Div(id="compare-body"), type="circle")])


def comparison(root, run_a: str, run_b: str) -> list:
    """The page body for two run ids: a numbers table and the figures."""
    try:
        runs = [data.open_run(root, r) for r in (run_a, run_b)]
    except WorkbenchError as exc:
        return [views.message(str(exc), "error")]
    labels = [run_label(runs[0], "A"), run_label(runs[1], "B")]
    rows = model_numbers(runs)
    table = html.Table([html.Thead(html.Tr([html.Th(h) for h in ("quantity", *labels)])),
                        html.Tbody([html.Tr([html.Td(c) for c in row]) for row in rows])],
                       className="wb-table", id="compare-numbers")
    same = shape(runs[0]) is not None and shape(runs[0]) == shape(runs[1])
    graphs = []
    for name, part, column, frames in shared_scores(runs):
        term = lookup(column, name)
        label = (term.label if term else column) + (f" [{part}]" if part else "")
        graphs.append(dcc.Graph(figure=depth_profile(dict(zip(labels, frames)), column, label=label,
                                                     title=f"{name}: {label}"), config=views.GRAPH_CONFIG))
        if same:
            graphs.append(dcc.Graph(figure=head_difference(frames[0], frames[1], column, label=label),
                                    config=views.GRAPH_CONFIG))
    note = ("per-head differences (B − A) follow each profile: the models have the same shape" if same else
            f"the models differ in shape ({shape(runs[0])} vs {shape(runs[1])}): heads are compared by relative depth")
    return [html.H3("Model-level numbers"), table, html.H3("Scores by relative depth"),
            html.Div(note, className="wb-caption"), *(graphs or [views.message("the runs share no per-head score")])]


@callback(Output("compare-body", "children"), Input("compare-a", "value"), Input("compare-b", "value"))
def show_comparison(run_a, run_b):
    if not run_a or not run_b:
        return views.message("pick two runs")
    return comparison(data.served_root(), run_a, run_b)
