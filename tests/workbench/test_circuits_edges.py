"""Edge circuits on the hand-built copy model: EAP-IG finds the previous-token head's output
feeding the induction head's key and ranks edges like exact edge patching; the selected circuit
is faithful on held-out prompts and beats random edge sets; the faithfulness search and the edge
overlap do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from tests.workbench import copy_model
from workbench.analyzers import circuits_edges as E
from workbench.analyzers.circuits_edge_eval import (
    Evaluator,
    edge_faithfulness,
    edge_mask,
)
from workbench.analyzers.circuits_faithful import grid, smallest_faithful
from workbench.errors import WorkbenchError

CHAIN = [("input", "a0.h0<v>"), ("a0.h0", "a1.h0<k>"), ("a1.h0", "logits")]


@pytest.fixture(scope="module")
def copier():
    # scale 1: at the default 30 the induction head's logit for its match is ~900 and stays
    # saturated along the whole path from the corrupted input (the gradient is ~0 at every
    # step), which no 5-step integral can see; at 1 it is ~11, still > 0.99 on the match.
    return copy_model.load(scale=1.0)


@pytest.fixture(scope="module")
def scores(copier):
    task = copy_model.key_task()
    return {method: E.edge_scores(copier, task, method) for method in E.METHODS}


def test_eap_ig_finds_the_previous_token_head_feeding_the_induction_key(scores):
    ig = scores["eap_ig"]
    into = ig[ig["downstream"].str.startswith("a1.h0<")]
    top = into.loc[into["score"].abs().idxmax()]
    assert (top["upstream"], top["downstream"]) == ("a0.h0", "a1.h0<k>")
    exact = scores["activation_patching"].set_index(["upstream", "downstream"])["score"]
    # exact patching: each edge of the chain alone carries most of the behaviour, nothing else does
    assert all(exact[e] > 0.8 for e in CHAIN)
    assert exact.drop(CHAIN).abs().max() < 0.01


def _live_rank_agreement(exact, other, floor=1e-6):
    """Spearman over the edges either method scores above numerical noise (the others are
    structurally dead in this model: zero MLPs, heads that write nothing; both give them 0)."""
    a, b = exact["score"].to_numpy(), other["score"].to_numpy()
    live = (np.abs(a) > floor) | (np.abs(b) > floor)
    return spearmanr(np.where(np.abs(a) > floor, a, 0)[live], np.where(np.abs(b) > floor, b, 0)[live])[0], live.sum()


def test_eap_ig_ranks_edges_like_exact_patching_and_eap_does_not(scores):
    exact = scores["activation_patching"]
    rho_ig, n_ig = _live_rank_agreement(exact, scores["eap_ig"])
    rho_eap, _ = _live_rank_agreement(exact, scores["eap"])
    print(f"\nSpearman vs exact edge patching over live edges: EAP-IG {rho_ig:.3f} ({n_ig} edges), EAP {rho_eap:.3f}")
    assert rho_ig >= 0.8
    assert rho_eap < rho_ig
    # EAP's one gradient at the clean run is taken where the induction head is saturated: it
    # misses the key edge that exact patching and EAP-IG both find (Hanna et al.'s point)
    eap = scores["eap"].set_index(["upstream", "downstream"])["score"]
    assert abs(eap[("a0.h0", "a1.h0<k>")]) < 0.05


def test_exact_scores_agree_with_the_circuit_evaluator(copier, scores):
    """Two code paths: stacked single-edge patches vs every edge kept but one (resample)."""
    task = copy_model.key_task()
    ev = Evaluator(copier, task)
    g = ev.g
    exact = scores["activation_patching"]
    full, empty = ev.metric(g.valid()), ev.metric(np.zeros_like(g.valid()))
    assert full == pytest.approx(exact.attrs["ld_clean"], rel=1e-6)
    assert empty == pytest.approx(exact.attrs["ld_corrupted"], abs=1e-5)  # nothing kept = the corrupted run
    gap = full - empty
    for row in exact.iloc[[0, 4, 18, 20, 42]].itertuples():
        mask = g.valid() & ~edge_mask(g, [(row.upstream, row.downstream)])
        assert (full - ev.metric(mask)) / gap == pytest.approx(row.score, abs=1e-5)


def test_the_default_edge_circuit_is_faithful_on_held_out_prompts(copier):
    frame = E.edge_circuit(copier, copy_model.key_task(seed=0))
    assert list(frame.columns) == ["upstream", "downstream", "score", "in_circuit"]
    chosen = set(zip(frame.loc[frame["in_circuit"], "upstream"], frame.loc[frame["in_circuit"], "downstream"]))
    assert chosen == set(CHAIN)
    assert frame.attrs["reached"] and frame.attrs["faithfulness"] >= 0.8 and frame.attrs["n_edges"] == 3
    assert frame.attrs["searched"][2] < 0.8 <= frame.attrs["searched"][3]  # smallest: 2 edges do not suffice
    held_out = copy_model.key_task(seed=1)
    kept = edge_faithfulness(copier, held_out, frame)
    rng = np.random.default_rng(0)
    random = [edge_faithfulness(copier, held_out, frame.assign(in_circuit=np.isin(
        np.arange(len(frame)), rng.choice(len(frame), 3, replace=False))))["faithfulness"] for _ in range(5)]
    print(f"\ncopy model edge circuit on held-out prompts: faithfulness {kept['faithfulness']:.3f}; "
          f"5 random 3-edge sets: median {np.median(random):.3f}")
    assert kept["faithfulness"] >= 0.8 and kept["ablation"] == "resample"
    assert np.median(random) < 0.2


def test_edge_overlap_reports_edges_and_nodes_next_to_chance(copier, scores):
    a = scores["eap_ig"].assign(in_circuit=False)
    a.loc[a.index[:3], "in_circuit"] = True  # three edges out of input
    b = scores["eap_ig"].assign(in_circuit=False)
    b.loc[b.index[1:5], "in_circuit"] = True
    res = E.edge_overlap(a, b)
    assert res["edges"]["n_shared"] == 2 and res["edges"]["n_total"] == len(a) == 46
    assert res["edges"]["expected_shared"] == pytest.approx(3 * 4 / 46)
    # nodes: a touches input, a0.h0, a0.h1; b touches input, a0.h0, a0.h1 — out of 8 components
    assert res["nodes"]["n_a"] == 3 and res["nodes"]["n_shared"] == 3 and res["nodes"]["n_total"] == 8
    with pytest.raises(WorkbenchError, match="edge circuit b is empty"):
        E.edge_overlap(a, b.assign(in_circuit=False))


def test_faithfulness_search_finds_the_smallest_size():
    f = {1: 0.1, 2: 0.9, 3: 0.5, 4: 0.95}  # not monotone: 2 already reaches 0.8
    assert smallest_faithful(lambda k: f.get(k, 1.0), 10, 0.8) == (2, {1: 0.1, 2: 0.9})
    k, tried = smallest_faithful(lambda k: k / 700, 1000, 0.8)
    assert k == 560 and len(tried) < 100  # past 64 sizes: the grid, then bisection
    assert smallest_faithful(lambda k: 0.5, 20, 0.8) == (None, {k: 0.5 for k in range(1, 21)})
    assert grid(5) == [1, 2, 3, 4, 5] and grid(1000)[-1] == 1000 and len(grid(100_000)) < 120
    # the coarse search of big graphs: sizes 1, 2, 4, ..., bisected until the bracket is within 25%
    k, tried = smallest_faithful(lambda k: k / 700, 100_000, 0.8, exhaustive=1, growth=2.0, rtol=0.25)
    assert 560 <= k <= 560 / 0.75 and len(tried) < 16 and tried[k] >= 0.8
    assert grid(64, 1, 2.0) == [1, 2, 4, 8, 16, 32, 64]


def test_bad_inputs_give_clear_errors(copier, minilm):
    task = copy_model.key_task(2)
    with pytest.raises(WorkbenchError, match="method"):
        E.edge_circuit(copier, task, "acdc")
    with pytest.raises(WorkbenchError, match="steps"):
        E.edge_scores(copier, task, steps=0)
    with pytest.raises(WorkbenchError, match="ablation"):
        edge_faithfulness(copier, task, CHAIN, ablation="optimal")
    with pytest.raises(WorkbenchError, match="no edge a1.h0 -> a0.h0<q>"):
        edge_faithfulness(copier, task, [("a1.h0", "a0.h0<q>")])
    with pytest.raises(WorkbenchError, match="node names"):
        edge_faithfulness(copier, task, [("a9.h0", "logits")])
    with pytest.raises(WorkbenchError, match="is an encoder"):
        E.edge_scores(minilm, task)


def test_curve_puts_random_sets_of_each_size_beside_the_top_set():
    from workbench.analyzers.circuits_faithful import curve

    ranking = list("abcdefgh")
    value = {c: v for c, v in zip(ranking, [0.5, 0.3, 0.1, 0.05, 0.05, 0, 0, 0])}
    table = curve(lambda items: sum(value[i] for i in items), ranking, [1, 2, 4], draws=200, seed=0)
    assert list(table.columns) == ["k", "top", "random_median", "random_lo", "random_hi"]
    assert table["top"].tolist() == pytest.approx([0.5, 0.8, 0.95])
    # a random k-set's expected value is k/8 of the total (1.0); its range covers both extremes
    assert table.loc[table["k"] == 4, "random_median"].item() == pytest.approx(0.5, abs=0.1)
    assert table.loc[table["k"] == 1, "random_lo"].item() == 0 and table.loc[table["k"] == 1, "random_hi"].item() == 0.5
