"""Head: one head's attention pattern first, its head view (attention from a chosen query token, or
to a chosen key token, over the prompt's text), then its scores in every table of the run.

The head comes from the app-wide selection (a click on any grid) or from this page's dropdowns,
which write the selection back. Patterns of a chosen or typed prompt are computed with the run's
model, when this machine can load it, in a Dash background callback (the whole layer at once,
kept in the app's disk cache); a run with a ``head_examples`` table also shows its stored
examples without any model. Patterns longer than `MAX_PATTERN_SIDE` tokens are block-averaged or
windowed; the head view shows at most that many tokens around the chosen one.
"""

from __future__ import annotations

import re

import dash
import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards import data, scores, views
from workbench.errors import WorkbenchError
from workbench.figures import MAX_PATTERN_SIDE, attention_pattern, example_pattern

dash.register_page(__name__, path="/head", name="Head", title="Head · Attention Workbench", order=1)
head_shape = scores.head_shape
head_scores = scores.head_scores


def reconcile(opening: bool, selection, layer, head, run_id):
    """Keep the dropdowns and the app-wide selection in step: (layer value, head value, selection).

    ``opening``: the page has just opened (Dash then reports every input as triggered), else a
    dropdown changed. On opening, a layer/head in the address wins and is written to the
    selection, else the selection moves the dropdowns, else the page starts at layer 0, head 0
    and selects it (so the header never says "no head selected" while a head is shown). A
    dropdown change writes the selection.
    """
    sel = selection if isinstance(selection, dict) else {}
    sel_pair = (views.int_or_none(sel.get("layer")), views.int_or_none(sel.get("head")))

    def chosen(layer, head) -> dict:  # the selection to write (WorkbenchError for a forged index)
        return {"run": run_id, "layer": data.head_index("layer", layer), "head": data.head_index("head", head)}

    if opening and (layer is None or head is None):
        if None not in sel_pair:
            return sel_pair[0], sel_pair[1], no_update
        layer, head = (0 if layer is None else layer), (0 if head is None else head)
        return layer, head, chosen(layer, head)
    if opening:  # values from the address: set them again, or Dash skips the callbacks that read them
        return layer, head, (no_update if (layer, head) == sel_pair else chosen(layer, head))
    if layer is None or head is None or (layer, head) == sel_pair:
        return no_update, no_update, no_update
    return no_update, no_update, chosen(layer, head)


def position_from_label(label) -> int | None:
    """The first position named by a pattern axis label (``"12: tok"`` or ``"12–14: tok…"``)."""
    match = re.match(r"\s*(\d+)", str(label))
    return int(match.group(1)) if match else None


def head_view(tokens, positions, pattern: np.ndarray, mode: str, index: int, max_tokens: int = MAX_PATTERN_SIDE):
    """The prompt as tokens shaded by attention, as bertviz's head view does, bounded to
    ``max_tokens`` tokens around the chosen one.

    Args:
        tokens, positions: the shown tokens and their positions in the prompt.
        pattern: ``[query, key]`` over those tokens.
        mode: ``"from"``: the attention query ``index`` (an index into ``tokens``) pays each key;
            ``"to"``: the attention each query pays key ``index``.
    """
    n = len(tokens)
    values = pattern[index] if mode == "from" else pattern[:, index]
    lo = max(0, min(index - max_tokens // 2, n - max_tokens))
    hi = min(n, lo + max_tokens)
    peak = float(values[lo:hi].max()) or 1.0
    role = "key" if mode == "from" else "query"
    spans = [html.Span(tokens[k], title=f"{role} {positions[k]}: {values[k]:.3f}",
                       className="wb-token" + (" wb-query" if k == index else ""),
                       style={"backgroundColor": f"rgba(33,113,181,{values[k] / peak:.3f})"}) for k in range(lo, hi)]
    what = (f"attention from query {positions[index]} {tokens[index]!r}" if mode == "from"
            else f"attention to key {positions[index]} {tokens[index]!r} from each query")
    return [html.Div(f"{what} ({role}s {positions[lo]}–{positions[hi - 1]} of {len(tokens)} shown)",
                     className="wb-caption", id="head-view-caption"),
            html.Div(spans, className="wb-tokens", id="head-view-tokens")]


def pattern_of(key: dict, head: int, run_id: str):
    """``(pattern [query, key], tokens, positions, n_tokens)`` for a pattern key (``{"source",
    "prompt", "layer"}`` computed on demand, or ``{"example", "layer"}`` stored in the run), or None."""
    if key.get("example") is not None:
        found = data.stored_layer(data.open_run(data.served_root(), run_id), key["example"],
                                  data.head_index("layer", key["layer"]))
        if found is None or not 0 <= head < found[0].shape[0]:
            return None
        patterns, tokens, positions, n = found
        return patterns[head], tokens, positions, n
    found = data.cached_layer(key["source"], key["prompt"], int(key["layer"]))
    if found is None or not 0 <= head < found[0].shape[0]:
        return None
    patterns, tokens = found
    return patterns[head], tokens, list(range(len(tokens))), len(tokens)


def draw(key, layer, head, view, start, click, mode, position, trigger, run_id):
    """Figure, head view, slider max, slider disabled, position options and value."""
    found = pattern_of(key, data.head_index("head", head), run_id)
    if found is None:
        return (views.placeholder("computing the pattern…"), None, 0, True, [], None)
    pattern, tokens, positions, n = found
    stored = key.get("example") is not None
    windowed = view == "window" and n > MAX_PATTERN_SIDE and not stored
    title = f"layer {layer} head {head}" + (f" · stored example “{key['example']}”" if stored else "")
    if stored:
        fig = example_pattern(pattern, positions, tokens, n_tokens=n, title=title, height=560, colorbar=True)
    else:
        fig = attention_pattern(pattern, tokens, start=int(start or 0) if windowed else None, title=title)
    index = positions.index(position) if position in positions else None
    if trigger == "head-pattern" and click:
        point = click["points"][0]
        picked = position_from_label(point["y"] if mode == "from" else point["x"])
        index = positions.index(picked) if picked in positions else index
    if index is None:
        index = len(positions) - 1 if mode == "from" else 0
    options = [{"label": f"{p}: {t}", "value": p} for p, t in zip(positions, tokens)]
    return (fig, head_view(tokens, positions, pattern, mode, index), max(n - MAX_PATTERN_SIDE, 0), not windowed,
            options, positions[index])


def prompt_options(prompts) -> list[dict]:
    return [{"label": p if len(p) <= 80 else p[:77] + "...", "value": p} for p in prompts]


def layout(run=None, layer=None, head=None, **_):
    run = data.run_or_default(data.served_root(), run)
    try:
        opened = data.open_run(data.served_root(), run)
        n_layers, n_heads = head_shape(opened)
    except WorkbenchError as exc:
        return html.Div([html.H2("Head"), views.message(str(exc), "error")])
    source = data.model_source(opened)
    examples = data.stored_examples(opened)
    pick = html.Div([
        "layer ", dcc.Dropdown(id="head-layer", options=list(range(n_layers)), value=views.int_or_none(layer),
                               clearable=False, className="wb-small-dropdown"),
        " head ", dcc.Dropdown(id="head-head", options=list(range(n_heads)), value=views.int_or_none(head),
                               clearable=False, className="wb-small-dropdown"),
        dcc.Link("all heads of this layer", id="head-layer-link", href="/layer" + views.run_query(run)),
    ], className="wb-row")
    inputs = []
    if source is not None:
        prompts = data.run_prompts(opened)
        inputs += [dcc.Dropdown(id="head-prompt", options=prompt_options(prompts), value=prompts[0] if prompts else None,
                                placeholder="choose a prompt of the run, or type one below"),
                   html.Div([dcc.Textarea(id="head-text", placeholder="type a prompt", className="wb-textarea"),
                             html.Button("compute pattern", id="head-compute", n_clicks=0)], className="wb-row")]
    else:
        model = (opened.manifest.get("model") or {}).get("source")
        inputs.append(views.message(f"patterns of new prompts need the run's model, and its source {model!r} cannot be "
                                    "loaded on this machine (expected demo, minilm or an existing directory)"
                                    + ("; the run's stored examples are shown instead" if examples else "")))
        hidden = {"display": "none"}
        inputs += [html.Div([dcc.Dropdown(id="head-prompt", options=[], value=None), dcc.Textarea(id="head-text"),
                             html.Button(id="head-compute", n_clicks=0)], style=hidden)]
    inputs.append(dcc.Dropdown(id="head-example", options=[{"label": f"stored example: {e}", "value": e}
                                                           for e in examples],
                               value=examples[0] if examples and source is None else None,
                               placeholder="or a stored example of the run (no model needed)",
                               style={} if examples else {"display": "none"}))
    body = [html.H2("Head"), pick, html.H3("Attention pattern"), *inputs,
            html.Div(id="head-error"),
            dcc.RadioItems(id="head-view", options=[{"label": " whole (block means when long)", "value": "whole"},
                                                    {"label": " window of 256 positions", "value": "window"}],
                           value="whole", inline=True),
            dcc.Slider(id="head-window", min=0, max=0, step=16, value=0, disabled=True, marks=None,
                       tooltip={"placement": "bottom"}),
            dcc.Loading(dcc.Graph(id="head-pattern", config=views.GRAPH_CONFIG, figure=views.placeholder(
                "choose a prompt of the run or type one and press compute")), type="circle"),
            html.H3("Head view"),
            html.Div([dcc.RadioItems(id="head-mode", options=[{"label": " attention from query", "value": "from"},
                                                             {"label": " attention to key", "value": "to"}],
                                     value="from", inline=True),
                      dcc.Dropdown(id="head-position", options=[], value=None, clearable=False,
                                   placeholder="token", className="wb-position-dropdown")], className="wb-row"),
            html.Div("click a row (query) or column (key) of the pattern, or pick a token", className="wb-caption"),
            html.Div(id="head-tokens"),
            html.H3("Scores"), html.Div(id="head-scores"),
            dcc.Store(id="head-run", data=run), dcc.Store(id="head-key")]
    return html.Div(body)


@callback(Output("head-layer", "value"), Output("head-head", "value"),
          Output("app-selection", "data", allow_duplicate=True),
          Input("head-run", "data"), Input("head-layer", "value"), Input("head-head", "value"),
          State("app-selection", "data"), prevent_initial_call="initial_duplicate")
def sync_head(run_id, layer, head, selection):
    # the selection is read (State) when the page opens: an Input outside the page would make
    # Dash report a missing component on every other page
    return reconcile("head-run" in ctx.triggered_prop_ids.values(), selection, layer, head, run_id)


@callback(Output("head-scores", "children"), Output("head-layer-link", "href"),
          Input("head-layer", "value"), Input("head-head", "value"), State("head-run", "data"))
def show_scores(layer, head, run_id):
    if layer is None or head is None:
        return no_update, no_update
    link = "/layer" + views.run_query(run_id, layer=layer)
    try:
        return scores.scores_table(head_scores(data.open_run(data.served_root(), run_id), data.head_index("layer", layer),
                                               data.head_index("head", head))), link
    except WorkbenchError as exc:
        return views.message(str(exc), "error"), link


@callback(Output("head-prompt", "options"), Output("head-prompt", "value"), Input("head-compute", "n_clicks"),
          State("head-text", "value"), State("head-prompt", "options"), prevent_initial_call=True)
def add_prompt(_, text, options):
    text = (text or "").strip()
    if not text:
        return no_update, no_update
    known = [o["value"] for o in options or []]
    return (options if text in known else [*prompt_options([text]), *(options or [])]), text


def unk_warning(source: str, prompt: str):
    count, words = data.unknown_words(source, prompt)
    if not count:
        return None
    shown = ", ".join(repr(w) for w in words[:8]) + (" …" if len(words) > 8 else "")
    return views.message(f"{count} token(s) of this prompt are unknown to the model's vocabulary and became "
                         f"<unk>: {shown}. The pattern shows those positions as <unk>.", "warning")


def compute_key(prompt, layer, run_id):
    """The pattern key for a prompt of the run's model, computing the layer if needed: (key, message)."""
    if not prompt or layer is None:
        return no_update, no_update
    try:
        source = data.run_model_source(data.served_root(), run_id)
        data.layer_patterns(source, prompt, int(layer))
        return {"source": source, "prompt": prompt, "layer": int(layer)}, unk_warning(source, prompt)
    except WorkbenchError as exc:
        return None, views.message(str(exc), "error")


@callback(Output("head-key", "data"), Output("head-error", "children"),
          Input("head-prompt", "value"), Input("head-layer", "value"), State("head-run", "data"),
          background=True, interval=250)
def compute_pattern(prompt, layer, run_id):
    return compute_key(prompt, layer, run_id)


@callback(Output("head-key", "data", allow_duplicate=True), Output("head-error", "children", allow_duplicate=True),
          Input("head-example", "value"), Input("head-layer", "value"), State("head-prompt", "value"),
          prevent_initial_call="initial_duplicate")
def choose_example(example, layer, prompt):
    if not example or layer is None or (prompt and ctx.triggered_id == "head-layer"):
        return no_update, no_update
    return {"example": example, "layer": int(layer)}, None


@callback(Output("head-pattern", "figure"), Output("head-tokens", "children"), Output("head-window", "max"),
          Output("head-window", "disabled"), Output("head-position", "options"), Output("head-position", "value"),
          Input("head-key", "data"), Input("head-head", "value"), Input("head-view", "value"),
          Input("head-window", "value"), Input("head-pattern", "clickData"), Input("head-mode", "value"),
          Input("head-position", "value"), State("head-layer", "value"), State("head-run", "data"))
def show_pattern(key, head, view, start, click, mode, position, layer, run_id):
    if not key or head is None:
        return (no_update,) * 6
    if key.get("layer") != layer and layer is not None:
        return (no_update,) * 6  # the layer changed; its patterns are on their way
    try:
        return draw(key, key["layer"], head, view, start, click, mode, position, ctx.triggered_id, run_id)
    except WorkbenchError as exc:
        return views.placeholder(str(exc)), None, 0, True, [], None
