"""The analysis pages, built from the registry: one page per `Analyzer.page` slug (``/sinks``,
``/retrieval``, ...; a new slug in the registry makes a new page), each showing the figures of its
tables (`dashboards.views.analysis_page`). A click on a head in any of them selects it."""

from __future__ import annotations

from functools import partial

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from dashboards import data, saliency, views  # noqa: F401  (saliency adds its page's per-token bars)
from workbench.analyzers import page_title, pages

#: Nav order of the built-in pages; pages of other slugs follow in registry order.
ORDER = ("sinks", "importance", "retrieval", "circuits", "saliency", "head-map")
FIRST = 10  # order of the first analysis page (Overview, Head, Layer and Heads come before)


def layout(slug: str, run=None, **_):
    run = data.run_or_default(data.served_root(), run)
    return html.Div([html.H2(page_title(slug)), dcc.Store(id={"type": "analysis-run", "page": slug}, data=run),
                     *views.analysis_page(data.served_root(), run, slug)])


def register_all() -> list[str]:
    """Register a page for every slug of the registry not registered yet (call after the app
    exists, so analyses registered late still get a page). Returns the slugs."""
    slugs = sorted(pages(), key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), list(pages()).index(s)))
    for i, slug in enumerate(slugs):
        module = f"{__name__}.{slug.replace('-', '_')}"
        if module not in dash.page_registry:
            dash.register_page(module, path=f"/{slug}", name=page_title(slug),
                               title=f"{page_title(slug)} · Attention Workbench", order=FIRST + i,
                               layout=partial(layout, slug))
    return slugs


@callback(Output("app-selection", "data", allow_duplicate=True),
          Input({"type": "analysis-graph", "page": ALL, "index": ALL}, "clickData"),
          State({"type": "analysis-run", "page": ALL}, "data"),
          prevent_initial_call=True)
def select_head(clicks, runs):
    # pattern-matching ids throughout: Dash also calls this when the page's graphs go away
    return views.click_selection(ctx.triggered, runs)
