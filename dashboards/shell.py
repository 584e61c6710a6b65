"""The frame around every page: header, nav, run picker, the app-wide selection and its badge.

The selection is a session ``dcc.Store`` (``app-selection``) holding ids only:
``{"run": run id, "layer": int, "head": int}``. Grids on any page write it; the Head page reads it.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from dashboards import data, views


def run_from_search(search: str | None) -> str | None:
    """The ``run`` parameter of a URL query string (``?run=demo``), or None."""
    values = parse_qs((search or "").lstrip("?")).get("run")
    return values[0] if values else None


def layout_factory(pages: list[tuple[str, str]]):
    """The app layout (a function, so the run list is read at each page load) for ``pages``
    given as (name, path) in nav order (from ``dash.page_registry``)."""

    def layout():
        root = data.served_root()
        ids = data.run_ids(root)
        options = [{"label": root.name if i == "." else i, "value": i} for i in ids]
        nav = [dcc.Link(name, href=path, id={"type": "app-nav", "page": path}, className="wb-nav-link")
               for name, path in pages]
        picker = dcc.Dropdown(id="app-run", options=options, value=ids[0] if ids else None, clearable=False,
                              className="wb-run-picker", style={"display": "none"} if ids == ["."] else {})
        return html.Div([
            dcc.Location(id="app-url", refresh="callback-nav"),
            dcc.Store(id="app-selection", storage_type="session"),
            html.Header([html.Span("Attention Workbench", className="wb-brand"),
                         html.Span(root.name if ids == ["."] else "", className="wb-run-name"), picker,
                         html.Nav(nav, className="wb-nav"), html.Span(id="app-selected", className="wb-selected")],
                        className="wb-header"),
            html.Div(id="app-error", role="alert"),  # what a failed callback says (dashboards.app.callback_error)
            html.Main(dash.page_container, className="wb-main"),
        ])

    return layout


def nav_hrefs(search: str | None, ids: list[dict]) -> list[str]:
    """Nav links that keep the current run: each page path plus ``?run=...``."""
    query = views.run_query(run_from_search(search))
    return [link["page"] + query for link in ids]


def sync_run(trigger: str | None, search: str | None, value: str | None):
    """Keep the run picker and the address in step: (new search, new picker value)."""
    in_url = run_from_search(search)
    if trigger == "app-run":
        return (views.run_query(value), no_update) if value and value != in_url else (no_update, no_update)
    return no_update, (in_url if in_url else no_update)


def selected_badge(selection: dict | None, search: str | None):
    """The header's note of the selected head, with a link that opens it on the Head page."""
    if not isinstance(selection, dict) or views.int_or_none(selection.get("layer")) is None:
        return "no head selected: click a cell of any grid"
    layer, head = selection["layer"], selection["head"]
    run_id = run_from_search(search) or selection.get("run")
    href = "/head" + views.run_query(run_id, layer=layer, head=head)
    return [f"selected: layer {layer}, head {head} ", dcc.Link("open", href=href, id="app-open-head")]


def register_callbacks(app: dash.Dash) -> None:
    """Bind the shell's callbacks to ``app`` (per app, so several apps can live in one process)."""
    app.callback(Output({"type": "app-nav", "page": ALL}, "href"), Input("app-url", "search"),
                 State({"type": "app-nav", "page": ALL}, "id"))(nav_hrefs)
    app.callback(Output("app-url", "search"), Output("app-run", "value"),
                 Input("app-url", "search"), Input("app-run", "value"))(
        lambda search, value: sync_run(ctx.triggered_id, search, value))
    app.callback(Output("app-selected", "children"), Input("app-selection", "data"),
                 Input("app-url", "search"))(selected_badge)
    app.callback(Output("app-error", "children"), Input("app-url", "pathname"), Input("app-url", "search"))(
        lambda *_: None)  # a new page or run clears the last error
