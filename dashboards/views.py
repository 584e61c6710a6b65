"""Building blocks shared by the pages: messages, the figures of a run's tables, head clicks.

Everything here is a plain function of (root, run id, ...) or of a frame, so tests call them
without a server. Pages are thin: a layout that calls these, and callbacks that call these.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from dash import dcc, html, no_update

from dashboards import data
from workbench.analyzers import ANALYZERS, pages
from workbench.errors import WorkbenchError
from workbench.figures import score_columns
from workbench.glossary import lookup

#: Extra content of a page, after its tables' figures: ``{page slug: fn(run id, opened run) -> [components]}``
#: (the saliency page's per-token bars on a typed prompt).
PAGE_EXTRAS: dict = {}

GRAPH_CONFIG = {"displaylogo": False, "responsive": True}


def message(text: str, kind: str = "note") -> html.Div:
    """A boxed message in the page (``kind``: note or error), never a stack trace."""
    return html.Div(text, className=f"wb-message wb-{kind}")


def placeholder(text: str):
    """An empty figure that says what to do instead of showing bare axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=160,
                             margin={"l": 20, "r": 20, "t": 20, "b": 20})


def tables_of(slug: str) -> list[str]:
    """The registered analyses shown on dashboard page ``slug`` (`Analyzer.page`)."""
    return pages().get(slug, [])


def label_of(column: str, table: str | None = None) -> str:
    """The glossary label of a column (the column name when the glossary lacks it)."""
    term = lookup(column, table)
    return term.label if term else column


def tooltip(column: str, table: str | None = None) -> str:
    """The glossary definition of a column as one paragraph (for ``title=`` tooltips)."""
    term = lookup(column, table)
    return term.tooltip() if term else f"{column}: not in the glossary"


def title_of(name: str) -> str:
    analyzer = ANALYZERS.get(name)
    return analyzer.title if analyzer else name.replace("_", " ")


#: Numeric columns that describe a head but are not scores to rank or grid.
NOT_SCORES = frozenset({"cluster", "n_prompts", "n_trials", "n_queries", "umap_x", "umap_y"})


def scores_of(frame) -> list[str]:
    """The score columns of a per-head frame (`workbench.figures.score_columns` without counts,
    cluster ids and UMAP coordinates)."""
    return [c for c in score_columns(frame) if c not in NOT_SCORES]




def analyze_hint(run, names) -> str:
    source = (run.manifest.get("model") or {}).get("source") or "demo"
    only = "".join(f" --analysis {n}" for n in names)
    return f"workbench analyze --model {source} --out {run.path}{only}"


_HEAD_LABEL = re.compile(r"^L\d+H\d+$")


def names_heads(fig) -> bool:
    """Whether a figure's points are heads with ``customdata = [layer, head, ...]``: a layer × head
    grid (axes titled head and layer, as `head_grid` makes), or traces whose x or text labels are
    ``L{layer}H{head}`` (importance ranking, UMAP head map). Other figures with customdata (token
    sinks: layer, position) must not select a head when clicked."""
    axes = (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text)
    if axes == ("head", "layer"):
        return True
    for trace in fig.data:
        if isinstance(getattr(trace, "name", None), str) and _HEAD_LABEL.match(trace.name) \
                and getattr(trace, "customdata", None) is not None:
            return True  # layer thumbnails: one heatmap per head, named L{layer}H{head}
        labels = getattr(trace, "text", None) if isinstance(getattr(trace, "text", None), (list, tuple)) else None
        for values in (labels, getattr(trace, "x", None)):
            if values is not None and len(values) and getattr(trace, "customdata", None) is not None \
                    and all(isinstance(v, str) and _HEAD_LABEL.match(v) for v in values):
                return True
    return False


def head_from_click(click) -> tuple[int, int] | None:
    """(layer, head) named by a click on a figure that `names_heads`: the point's ``customdata``
    (layer, head, ...), else its ``L{layer}H{head}`` text or x label (plotly leaves 2-D typed
    customdata of scatter points out of the click event), or None."""
    try:
        point = click["points"][0]
    except (TypeError, KeyError, IndexError):
        return None
    try:
        custom = point["customdata"]
        if isinstance(custom, dict):  # a typed array (numpy customdata) arrives as {"0": .., "1": ..}
            custom = [custom[str(i)] for i in range(len(custom))]
        layer, head = int(custom[0]), int(custom[1])
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        labels = [v for v in (point.get("text"), point.get("x")) if isinstance(v, str) and _HEAD_LABEL.match(v)]
        label = labels[0] if labels else None
        if label is None:
            return None
        layer, head = map(int, label[1:].split("H"))
    return (layer, head) if layer >= 0 and head >= 0 else None


def selection(run_id: str | None, click) -> dict | None:
    """The app-wide selection (ids only) for a click, or None when the click names no head."""
    head = head_from_click(click)
    return None if head is None else {"run": run_id, "layer": head[0], "head": head[1]}


def click_selection(triggered, runs):
    """The selection for a page's pattern-matched graph clicks (``ctx.triggered``) and run store
    values (``runs``, empty once the page is gone), or ``no_update``."""
    click = triggered[0].get("value") if triggered else None
    found = selection(runs[0] if runs else None, click) if runs else None
    return found or no_update


def run_query(run_id: str | None, **extra) -> str:
    """The query string that keeps a run (and e.g. layer/head) across links."""
    parts = [f"run={quote(run_id)}"] if run_id else []
    parts += [f"{k}={quote(str(v))}" for k, v in extra.items() if v is not None]
    return "?" + "&".join(parts) if parts else ""


def prompts_note(run, name: str) -> str | None:
    """Which prompts table ``name`` was made from ("prompts: 16 of set 'ioi' (15 tokens), ..."),
    from the run's ``prompts`` table; None when the run stores no prompt texts."""
    from workbench.report.sections import prompt_sets

    if "prompts" not in run:
        return None
    try:
        stored = data.table(run, "prompts")
    except WorkbenchError:
        return None
    parts = [f"{n} of set {set_name!r} ({low}–{high} tokens)" for set_name, n, low, high in prompt_sets(stored, name)]
    return ("prompts: " + "; ".join(parts) + " (listed in the report's Prompts section and the Head page's prompt "
            "list)") if parts else None


def analysis_page(root, run_id: str | None, slug: str) -> list:
    """The body of an analysis page: every figure of every table the registry puts on page
    ``slug`` (`Analyzer.page`), the glossary of their columns as tooltips, and a clear message for
    each such analysis the run lacks or skipped.

    Figures of heads get ids ``{"type": "analysis-graph", "page": slug, "index": ...}`` (a click
    selects the head), other figures ``{"type": "analysis-figure", ...}``.
    """
    try:
        run = data.open_run(root, run_id)
    except WorkbenchError as exc:
        return [message(str(exc), "error")]
    names = tables_of(slug)
    skipped = run.manifest.get("skipped") or {}
    out = []
    for name in names:
        if name not in run:
            if name in skipped:
                out.append(message(f"{title_of(name)} was skipped for this run's model: {skipped[name]}"))
            else:
                out.append(message(f"this run has no {name} table; run `{analyze_hint(run, [name])}`"))
            continue
        out.append(html.H3(title_of(name)))
        try:
            frame = data.table(run, name)
            figures = data.figures(run, name)
        except WorkbenchError as exc:
            out.append(message(str(exc), "error"))
            continue
        except Exception as exc:  # noqa: BLE001 - a figure function's bug must not become a stack trace
            out.append(message(f"could not draw table {name!r}: {type(exc).__name__}: {exc}", "error"))
            continue
        note = prompts_note(run, name)
        if note:
            out.append(html.Div(note, className="wb-caption wb-prompts"))
        terms = [html.Span(label_of(c, name), title=tooltip(c, name), className="wb-term")
                 for c in frame.columns if lookup(c, name) is not None]
        if terms:
            out.append(html.Div(["columns (hover for definitions): ", *sum(([t, " · "] for t in terms), [])[:-1]],
                                className="wb-caption"))
        if not figures:
            out.append(message(f"table {name!r} has no figures; {len(frame)} rows, columns {list(frame.columns)}"))
        for i, fig in enumerate(figures):  # only figures of heads get the id that selects a head
            kind = "analysis-graph" if names_heads(fig) else "analysis-figure"
            out.append(dcc.Graph(id={"type": kind, "page": slug, "index": f"{name}-{i}"}, figure=fig,
                                 config=GRAPH_CONFIG))
    if not names:
        out.append(message(f"no registered analysis has a page {slug!r}"))
    extra = PAGE_EXTRAS.get(slug)
    if extra is not None:
        out += extra(data.run_or_default(root, run_id), run)
    return out


def int_or_none(value) -> int | None:
    """An int from a URL parameter or dropdown value, or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and re.fullmatch(r"\d{1,6}", value) else None
