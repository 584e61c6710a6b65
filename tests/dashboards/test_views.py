"""Figures, page bodies and callbacks as plain functions, from fixture frames and runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dash import html, no_update

from dashboards import data, shell, views
from tests.dashboards.conftest import page
from tests.dashboards.fixtures import causal_pattern, find_components, text_of, frames, in_callback, make_run
from workbench.analyzers import ANALYZERS
from workbench.errors import WorkbenchError
from workbench.figures import attention_pattern


# -- the pattern figure ----------------------------------------------------------------------------
def test_attention_pattern_short_is_exact_and_labelled():
    p = causal_pattern(7)
    tokens = ["<s>", "a", "b", "a", "b", "c", "a"]
    fig = attention_pattern(p, tokens, title="L0H1")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), p)
    assert list(fig.data[0].x) == [f"{i}: {t}" for i, t in enumerate(tokens)]  # unique even for repeated tokens
    assert fig.layout.title.text == "L0H1"


def test_attention_pattern_long_is_block_averaged_or_windowed_never_whole():
    n = 1000
    p = causal_pattern(n)
    tokens = [f"w{i % 90}" for i in range(n)]
    whole = attention_pattern(p, tokens)
    z = np.asarray(whole.data[0].z)
    assert z.shape == (250, 250)  # ceil(1000 / 256) = 4 → 250 blocks per axis, ≤ 256
    np.testing.assert_allclose(z[10, 3], p[40:44, 12:16].mean(), rtol=1e-6)  # block mean, independently
    assert whole.data[0].y[10] == "40–43: w40…" and "mean over 4×4 blocks" in whole.layout.title.text
    window = attention_pattern(p, tokens, start=900)  # clamped to the last full window
    np.testing.assert_array_equal(np.asarray(window.data[0].z), p[744:1000, 744:1000])
    assert window.data[0].x[0] == "744: w24" and "positions 744–999 of 1000" in window.layout.title.text
    with pytest.raises(WorkbenchError, match=r"needs a square \[query, key\] array .* got shape \(3, 4\) and 3 tokens"):
        attention_pattern(np.zeros((3, 4)), ["a", "b", "c"])


# -- clicks ----------------------------------------------------------------------------------------
def test_head_from_click_reads_customdata_lists_and_typed_arrays():
    assert views.head_from_click({"points": [{"x": 3, "y": 1, "customdata": [1, 3]}]}) == (1, 3)
    assert views.head_from_click({"points": [{"x": 3, "y": 1, "customdata": {"0": 1, "1": 3}}]}) == (1, 3)
    umap = {"points": [{"x": 0.2, "y": -1.0, "text": "L2H5", "customdata": {"0": 2.0, "1": 5.0, "2": 0.4}}]}
    assert views.head_from_click(umap) == (2, 5)
    # plotly leaves 2-D customdata of scatter points out of click events: the L{l}H{h} label names the head
    assert views.head_from_click({"points": [{"x": 0.7, "y": 0.1, "text": "L1H5", "curveNumber": 1}]}) == (1, 5)
    assert views.head_from_click({"points": [{"x": "L3H0", "y": 0.5}]}) == (3, 0)  # importance ranking bars
    for bad in (None, {}, {"points": []}, {"points": [{"x": 1}]}, {"points": [{"customdata": [-1, 2]}]},
                {"points": [{"x": 2, "text": "3: w3"}]}):
        assert views.head_from_click(bad) is None
    assert views.selection("full", {"points": [{"customdata": [0, 7]}]}) == {"run": "full", "layer": 0, "head": 7}


def test_a_click_on_a_ringed_retrieval_head_selects_it():
    f = frames()["retrieval_heads"]
    fig = ANALYZERS["retrieval_heads"].make_figures(f)[0]
    grid, rings = fig.data
    flagged = f[f.is_retrieval].iloc[0]
    # before the fix the rings took the click and plotly's event carried no head (typed customdata
    # is left out of scatter click events, and the rings had no label): now they take no click at
    # all, so the cell under them gets it, and a click they do get names the head by its label
    assert rings.hoverinfo == "skip"
    cell = {"points": [{"curveNumber": 0, "x": int(flagged["head"]), "y": int(flagged.layer),
                        "customdata": grid.customdata[int(flagged.layer)][int(flagged["head"])].tolist()}]}
    assert views.head_from_click(cell) == (int(flagged.layer), int(flagged["head"]))
    ring = {"points": [{"curveNumber": 1, "pointNumber": 0, "x": int(flagged["head"]), "y": int(flagged.layer),
                        "text": rings.text[0]}]}
    assert views.head_from_click(ring) == (int(flagged.layer), int(flagged["head"]))


def test_names_heads_separates_head_figures_from_token_and_position_figures():
    f = frames()
    kinds = {name: [views.names_heads(fig) for fig in ANALYZERS[name].make_figures(f[name])] for name in f}
    assert all(kinds["head_summary"]) and all(kinds["retrieval_heads"]) and all(kinds["circuits"])
    assert kinds["head_patterns"][0] and all(kinds["head_importance"])  # UMAP map, ranking bars and grids
    # token sinks carry customdata [layer, position]: a click there must not select "head = position"
    assert kinds["token_sinks"] == [False] and kinds["massive_activations"] == [False]
    assert kinds["niah"] == [False] and kinds["pruning_curve"] == [False]


# -- analysis pages --------------------------------------------------------------------------------
def _graphs(body) -> list:
    return find_components(body, kind="Graph")


SLUGS = ("sinks", "importance", "retrieval", "circuits", "saliency", "head-map")


@pytest.mark.parametrize("slug", SLUGS)
def test_analysis_pages_show_every_figure_of_their_registered_tables(request_ctx, runs_root, slug):
    body = views.analysis_page(runs_root, "full", slug)
    f = frames()
    names = views.tables_of(slug)
    expected = sum(len(ANALYZERS[t].make_figures(f[t])) for t in names)
    assert names and expected > 0 and len(_graphs(body)) == expected
    assert not [m for m in find_components(body, cls="wb-message") if "per-token bars" not in text_of(m)]
    page_body = page("analyses").layout(slug, run="full")
    assert len(_graphs(page_body)) == expected
    terms = find_components(body, cls="wb-term")  # the glossary as tooltips
    assert terms and all(t.title and "=" in t.title for t in terms)


def test_pages_are_the_registry_s_pages():
    import dash

    paths = {p["path"] for p in dash.page_registry.values()}
    assert {f"/{s}" for s in SLUGS} <= paths and {"/", "/head", "/layer", "/heads", "/compare"} <= paths
    assert views.tables_of("sinks") == ["sink_scores", "token_sinks", "secondary_sinks", "massive_activations"]


def test_analysis_page_messages_for_missing_skipped_damaged(runs_root):
    body = views.analysis_page(runs_root, "group/partial", "retrieval")
    text = text_of(body)
    assert "First-token" not in text and not _graphs(body)
    assert f"{views.title_of('retrieval_heads')} was skipped for this run's model: needs needle-in-a-haystack trials (fixture)" in text
    assert f"this run has no niah table; run `workbench analyze --model nowhere --out {runs_root / 'group' / 'partial'} --analysis niah`" in text
    sinks = text_of(views.analysis_page(runs_root, "broken-table", "sinks"))
    assert "table 'sink_scores' of run" in sinks and "is damaged or missing" in sinks
    for run_id, expected in (("damaged", "damaged manifest.json"), ("../root-outside/secret", "outside the served folder")):
        body = views.analysis_page(runs_root, run_id, "sinks")
        assert expected in text_of(body) and not _graphs(body)


def test_analysis_page_survives_a_failing_figure_function(tmp_path, monkeypatch):
    from workbench.analyzers import Analyzer

    def broken(frame):
        raise KeyError("umap_x")

    monkeypatch.setitem(ANALYZERS, "head_patterns", Analyzer("head_patterns", lambda m, p: None, "Head map",
                                                             figures=broken, page="head-map"))
    make_run(tmp_path / "r", ["head_patterns"])  # a run of its own: figures are cached per run and table
    text = text_of(views.analysis_page(tmp_path, "r", "head-map"))
    assert "could not draw table 'head_patterns': KeyError: 'umap_x'" in text


# -- overview --------------------------------------------------------------------------------------
def test_overview_choices_grid_and_headline(request_ctx, runs_root):
    overview = page("overview")
    run = data.open_run(runs_root, "full")
    values = [json.loads(o["value"]) for o in overview.grid_choices(run)]
    assert {"table": "circuits", "score": "effect", "where": {"task": "ioi", "method": "activation_patching"}} in values
    assert {"table": "saliency_alignment", "score": "spearman", "where": {}} in values
    assert not any(v["table"] in ("token_sinks", "niah", "pruning_curve") for v in values)  # not per head
    choice = json.dumps({"table": "circuits", "score": "effect", "where": {"task": "colored_objects",
                                                                          "method": "attribution_patching"}})
    fig = overview.grid_figure(runs_root, "full", choice)
    c = frames()["circuits"]
    part = c[(c.task == "colored_objects") & (c.method == "attribution_patching")]
    expected = part.pivot(index="layer", columns="head", values="effect").to_numpy()
    np.testing.assert_allclose(np.asarray(fig.data[0].z), expected)
    with pytest.raises(WorkbenchError, match="unknown grid choice"):
        overview.grid_figure(runs_root, "full", "nonsense")
    cards = text_of(overview.headline(run))
    sinks = frames()["sink_scores"]
    assert f"{int(sinks.is_sink.sum())} of 32 heads ({100 * sinks.is_sink.mean():.0f}%)" in cards
    assert "in circuit (ioi, attribution_patching)" in cards and "4 layers × 8 heads" in cards
    figure, error = overview.show_score(choice, "full")
    assert error is None and figure.layout.title.text.endswith("effect (colored_objects, attribution_patching)")
    assert overview.select_head({"points": [{"customdata": [3, 1]}]}, "full") == {"run": "full", "layer": 3, "head": 1}
    assert overview.select_head({"points": [{"x": 1}]}, "full") is no_update


# -- head page -------------------------------------------------------------------------------------
def test_head_scores_equal_the_tables_and_rank_by_direction(request_ctx, runs_root):
    head = page("head")
    rows = head.head_scores(data.open_run(runs_root, "full"), 2, 5)
    f = frames()
    by = {(r["table"], r["score"]): r for r in rows}
    summary = f["head_summary"].set_index(["layer", "head"])
    entropy = by[(views.title_of("head_summary"), "entropy")]
    assert entropy["value"] == pytest.approx(summary.loc[(2, 5), "entropy"])
    low_rank = int((summary["entropy"] < summary.loc[(2, 5), "entropy"]).sum()) + 1  # lowest entropy first
    assert entropy["rank"] == f"{low_rank} of 32 (lowest first)" and "pooled" in entropy["label"]
    assert entropy["tooltip"].startswith("entropy (pooled over query rows) = ")
    imp = f["head_importance"].set_index(["layer", "head"])["importance"]
    rank = int((imp > imp.loc[(2, 5)]).sum()) + 1
    assert by[(views.title_of("head_importance"), "importance")]["rank"] == f"{rank} of 32 (highest first)"
    c = f["circuits"]
    part = c[(c.task == "ioi") & (c.method == "activation_patching")].set_index(["layer", "head"])
    effect = by[(views.title_of("circuits") + " (ioi, activation_patching)", "effect")]
    assert effect["rank"].startswith(f"{int((part.effect.abs() > abs(part.effect.loc[(2, 5)])).sum()) + 1} of 32 (by |value|)")
    assert by[(views.title_of("circuits") + " (ioi, activation_patching)", "in_circuit")]["value"] is bool(part.in_circuit.loc[(2, 5)])
    assert head.head_shape(data.open_run(runs_root, "full")) == (4, 8)


def test_reconcile_selection_and_dropdowns():
    rec = page("head").reconcile
    sel = {"run": "full", "layer": 2, "head": 5}
    assert rec(True, sel, None, None, "full") == (2, 5, no_update)  # opening: the selection moves the dropdowns
    # nothing selected yet: the page shows L0 H0 and selects it, so the header never says "no head selected"
    assert rec(True, None, None, None, "full") == (0, 0, {"run": "full", "layer": 0, "head": 0})
    assert rec(True, sel, 1, 3, "full") == (1, 3, {"run": "full", "layer": 1, "head": 3})  # the address wins
    assert rec(True, sel, 2, 5, "full") == (2, 5, no_update)
    assert rec(False, sel, 3, 5, "full") == (no_update, no_update, {"run": "full", "layer": 3, "head": 5})
    assert rec(False, sel, 2, 5, "full") == (no_update, no_update, no_update)  # already selected


def test_draw_bounds_what_is_shipped_and_the_head_view_reads_rows_and_columns(request_ctx, monkeypatch):
    head = page("head")
    n = 600
    p = causal_pattern(n, seed=3)
    tokens = tuple(f"w{i % 90}" for i in range(n))
    monkeypatch.setattr(data, "cached_layer", lambda source, prompt, layer: (np.stack([p, p.T]), tokens))
    key = {"source": "demo", "prompt": "x", "layer": 0}
    fig, view, slider_max, disabled, options, value = head.draw(key, 0, 0, "whole", 0, None, "from", None, None, "full")
    assert np.asarray(fig.data[0].z).shape == (200, 200) and slider_max == n - 256 and disabled
    spans = find_components(view, cls="wb-token")
    assert len(spans) == 256 and "query 599" in text_of(view) and value == 599 and len(options) == n
    click = {"points": [{"x": "3: w3", "y": "300: w30"}]}
    fig, view, _, disabled, _, value = head.draw(key, 0, 0, "window", 288, click, "from", 599, "head-pattern", "full")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), p[288:544, 288:544])
    assert not disabled and value == 300 and "attention from query 300 'w30'" in text_of(view)
    spans = find_components(view, cls="wb-token")
    keys = sorted(int(s.title.split(":")[0].removeprefix("key ")) for s in spans)
    assert keys == list(range(172, 428))  # 256 keys centred on the query
    peak = p[300, 172:428].max()
    for s in spans:  # each key shaded by its weight relative to the largest shown
        k = int(s.title.split(":")[0].removeprefix("key "))
        assert float(s.style["backgroundColor"].split(",")[-1].rstrip(")")) == pytest.approx(p[300, k] / peak, abs=1e-3)
        assert s.children == tokens[k]
    # "to key": the column of the chosen key, over the queries
    _, view, _, _, _, value = head.draw(key, 0, 0, "whole", 0, click, "to", None, "head-pattern", "full")
    assert value == 3 and "attention to key 3 'w3' from each query" in text_of(view)
    spans = find_components(view, cls="wb-token")
    for s in spans[:20]:
        q = int(s.title.split(":")[0].removeprefix("query "))
        assert float(s.title.split(": ")[1]) == pytest.approx(p[q, 3], abs=1e-3)


def test_pattern_callbacks_compute_with_the_runs_own_model(request_ctx, tiny_dir):
    head = page("head")
    key, error = head.compute_pattern("w1 w2 w3", 1, "tiny")
    assert error is None and key == {"source": str(tiny_dir), "prompt": "w1 w2 w3", "layer": 1}
    out = in_callback(head.show_pattern, key, 3, "whole", 0, None, "from", None, 1, "tiny",
                      triggered=("head-key.data",))
    expected, _ = data.head_pattern(str(tiny_dir), "w1 w2 w3", 1, 3)
    np.testing.assert_array_equal(np.asarray(out[0].data[0].z), expected)
    key, error = head.compute_pattern(" ".join(["w1"] * 1100), 0, "tiny")
    assert key is None and text_of(error) == f"prompt 0 is 1101 tokens long; {tiny_dir.name} has a context of 1024 tokens"
    # the model comes from the run's manifest on the server; the browser only names a run
    assert "this run's model cannot be loaded on this machine" in text_of(head.compute_pattern("w1 w2", 0, "full")[1])
    assert "points outside the served folder" in text_of(head.compute_pattern("w1 w2", 0, "../root-outside/secret")[1])
    assert head.compute_pattern(None, 0, "tiny") == (no_update, no_update)
    options, value = head.add_prompt(1, " w3 w4 ", [{"label": "w1", "value": "w1"}])
    assert value == "w3 w4" and options[0] == {"label": "w3 w4", "value": "w3 w4"} and len(options) == 2


def test_a_typed_prompt_with_unknown_words_warns(request_ctx, tiny_dir):
    head = page("head")
    key, warning = head.compute_pattern("w1 cat sat w2 mat", 0, "tiny")  # the tiny vocabulary is w0..w89
    assert key is not None
    text = text_of(warning)
    assert "3 token(s) of this prompt are unknown" in text and "'cat', 'sat', 'mat'" in text
    assert "wb-warning" in warning.className
    assert head.compute_pattern("w1 w2", 0, "tiny")[1] is None  # no warning for known words


def test_saliency_bars_for_a_typed_prompt(request_ctx, tiny_dir):
    import workbench as wb

    from dashboards import saliency

    graphs, error = in_callback(saliency.show_bars, 1, None, "w4 w5 w6 w7", {"run": "tiny", "layer": 1, "head": 2},
                                ["tiny"], triggered=("saliency-compute.n_clicks",))
    assert error is None and len(graphs) == 2  # all heads, and the selected head
    frame = wb.token_attributions(wb.load_model(str(tiny_dir)), "w4 w5 w6 w7")  # computed again, directly
    one = frame[(frame.view == "head") & (frame.layer == 1) & (frame["head"] == 2)].sort_values("position")
    bars = graphs[1].figure.data
    np.testing.assert_allclose(bars[1].y, one.attention / one.attention.sum(), rtol=1e-5)
    np.testing.assert_allclose(bars[0].y, one.attribution / one.attribution.sum(), rtol=1e-3)
    graphs, error = in_callback(saliency.show_bars, 1, None, "w4", None, ["tiny"], triggered=("saliency-compute.n_clicks",))
    assert graphs == [] and "needs at least 2" in text_of(error)
    assert "per-token bars need the run's model" in text_of(page("analyses").layout("saliency", run="full"))


def test_the_head_page_shows_the_pattern_before_the_scores(request_ctx):
    layout = page("head").layout(run="tiny")
    order = [getattr(c, "id", None) for c in layout.children]
    # before the fix a 30-row score table came first and the pattern started ~1,150 px down
    assert order.index("head-error") < order.index("head-scores")
    graphs = [i for i, c in enumerate(layout.children) if type(c).__name__ == "Loading"]
    assert graphs and graphs[0] < order.index("head-scores") and order.index("head-tokens") < order.index("head-scores")


def test_analysis_pages_say_which_prompts_each_table_used(request_ctx, tmp_path):
    import pandas as pd

    run = make_run(tmp_path / "r", ["sink_scores", "circuits"])
    run.add_table("prompts", pd.DataFrame({"set": ["run", "ioi", "ioi"], "prompt_id": [0, 0, 1],
                                           "prompt": ["w1 w2", "a b c", "a b d"], "n_tokens": [3, 4, 4],
                                           "used_by": ["sink_scores", "circuits", "circuits"]}))
    assert views.prompts_note(run, "circuits").startswith("prompts: 2 of set 'ioi' (4–4 tokens)")
    assert views.prompts_note(run, "sink_scores").startswith("prompts: 1 of set 'run' (3–3 tokens)")
    body = views.analysis_page(tmp_path, "r", "circuits")
    assert "prompts: 2 of set 'ioi'" in text_of(find_components(body, cls="wb-prompts"))


def test_head_layout_without_a_loadable_model_says_so(request_ctx):
    layout = page("head").layout(run="full")
    assert "source 'nowhere' cannot be loaded on this machine" in text_of(layout)
    assert "damaged manifest.json" in text_of(page("head").layout(run="damaged"))


# -- shell -----------------------------------------------------------------------------------------
def test_shell_keeps_the_run_across_links():
    ids = [{"type": "app-nav", "page": "/"}, {"type": "app-nav", "page": "/head"}]
    assert shell.nav_hrefs("?run=group/partial", ids) == ["/?run=group/partial", "/head?run=group/partial"]
    assert shell.nav_hrefs("", ids) == ["/", "/head"]
    assert shell.sync_run("app-run", "?run=full", "tiny") == ("?run=tiny", no_update)
    assert shell.sync_run("app-run", "?run=full", "full") == (no_update, no_update)
    assert shell.sync_run(None, "?run=full", "tiny") == (no_update, "full")
    badge = shell.selected_badge({"run": "full", "layer": 1, "head": 6}, "?run=full")
    assert badge[0] == "selected: layer 1, head 6 " and badge[1].href == "/head?run=full&layer=1&head=6"
    assert shell.selected_badge(None, "") == "no head selected: click a cell of any grid"


def test_every_page_layout_renders_without_error_for_every_run(request_ctx):
    import dash

    for entry in dash.page_registry.values():
        layout = entry["layout"]
        for run_id in ("full", "group/partial", "damaged", "broken-table", "tiny", "../x", "/etc"):
            assert isinstance(layout(run=run_id), html.Div), entry["path"]
