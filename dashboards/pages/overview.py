"""Overview: headline numbers of a run and a layer × head grid of any score, switchable."""

from __future__ import annotations

import json

import dash
import pandas as pd
from dash import Input, Output, State, callback, dcc, html, no_update

from dashboards import data, views
from workbench.errors import WorkbenchError
from workbench.figures import head_grid

dash.register_page(__name__, path="/", name="Overview", title="Overview · Attention Workbench", order=0)
SUPPORT = ("prompts", "head_examples")  # tables that feed other views, with no scores to grid


def grid_choices(run) -> list[dict]:
    """Dropdown options, one per score of every per-head table (and per task/method part of
    tables split that way); each value is JSON ``{"table", "score", "where"}``."""
    options = []
    for name in run.tables:
        if name in SUPPORT:
            continue
        try:
            frame = data.per_head(data.table(run, name))
        except WorkbenchError:
            continue
        for where, part in [] if frame is None else data.head_groups(frame):
            suffix = f" ({', '.join(where.values())})" if where else ""
            options += [{"label": f"{views.title_of(name)}: {views.label_of(score, name)}{suffix}",
                         "value": json.dumps({"table": name, "score": score, "where": where}, sort_keys=True)}
                        for score in views.scores_of(part)]
    return options


def grid_figure(root, run_id, value: str | None):
    """The layer × head grid of a `grid_choices` value (None for no value)."""
    if not value:
        return None
    try:
        choice = json.loads(value)
        name, score, where = choice["table"], choice["score"], dict(choice.get("where") or {})
    except (ValueError, KeyError, TypeError):
        raise WorkbenchError(f"unknown grid choice {value!r}") from None
    frame = data.per_head(data.table(data.open_run(root, run_id), name))
    for col, val in where.items():
        frame = None if frame is None or col not in frame.columns else frame[frame[col].astype(str) == val]
    if frame is None or frame.empty or score not in frame.columns:
        raise WorkbenchError(f"table {name!r} has no per-head score {score!r}{' for ' + str(where) if where else ''}")
    suffix = f" ({', '.join(where.values())})" if where else ""
    label = views.label_of(score, name)
    fig = head_grid(frame, score, title=f"{views.title_of(name)}: {label}{suffix}", label=label)
    return fig.update_layout(meta={"definition": views.tooltip(score, name)})


def headline(run) -> list:
    """Cards: model and shape, prompts, tables, and for each boolean per-head flag (``is_sink``,
    ``is_retrieval``, ``in_circuit`` per task) how many heads have it."""
    model = run.manifest.get("model") or {}
    cards = [("model", f"{model.get('name')} ({model.get('architecture')})"),
             ("heads", f"{model.get('n_layers')} layers × {model.get('n_heads')} heads"),
             ("prompts", str(run.manifest.get("n_prompts"))),
             ("tables", str(len(run.tables)))]
    for name in run.tables:
        if name in SUPPORT:
            continue
        try:
            frame = data.per_head(data.table(run, name))
        except WorkbenchError:
            continue
        for where, part in [] if frame is None else data.head_groups(frame):
            for col in [c for c in part.columns if pd.api.types.is_bool_dtype(part[c])]:
                flags = part.groupby(["layer", "head"])[col].max()
                label = col.removeprefix("is_").replace("_", " ") + (f" ({', '.join(where.values())})" if where else "")
                cards.append((label, f"{int(flags.sum())} of {len(flags)} heads ({100 * flags.mean():.0f}%)"))
    out = [html.Div([html.Div(v, className="wb-card-value"), html.Div(k, className="wb-card-label")],
                    className="wb-card") for k, v in cards]
    skipped = run.manifest.get("skipped") or {}
    notes = [views.message(f"skipped {n}: {why}") for n, why in skipped.items()]
    return [html.Div(out, className="wb-cards"), *notes]


def layout(run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    try:
        opened = data.open_run(data.served_root(), run)
    except WorkbenchError as exc:
        return html.Div([html.H2("Overview"), views.message(str(exc), "error")])
    options = grid_choices(opened)
    first = options[0]["value"] if options else None
    body = [dcc.Dropdown(id="overview-score", options=options, value=first, clearable=False),
            html.Div(id="overview-definition", className="wb-caption"),
            dcc.Graph(id="overview-grid", figure=grid_figure(data.served_root(), run, first) or {},
                      config=views.GRAPH_CONFIG)] if options else [
        views.message(f"this run has no per-head table; run `{views.analyze_hint(opened, [])}`")]
    return html.Div([html.H2("Overview"), *headline(opened), *body,
                     html.Div(id="overview-error"), dcc.Store(id="overview-run", data=run)])


@callback(Output("overview-grid", "figure"), Output("overview-error", "children"),
          Input("overview-score", "value"), State("overview-run", "data"), prevent_initial_call=True)
def show_score(value, run_id):
    try:
        return grid_figure(data.served_root(), run_id, value) or no_update, None
    except WorkbenchError as exc:
        return no_update, views.message(str(exc), "error")


@callback(Output("overview-definition", "children"), Input("overview-score", "value"))
def show_definition(value):
    """The glossary definition of the chosen score, under the dropdown."""
    try:
        choice = json.loads(value)
        return views.tooltip(choice["score"], choice["table"])
    except (TypeError, ValueError, KeyError):
        return None


@callback(Output("app-selection", "data", allow_duplicate=True), Input("overview-grid", "clickData"),
          State("overview-run", "data"), prevent_initial_call=True)
def select_head(click, run_id):
    return views.selection(run_id, click) or no_update
