"""Causal checks (`workbench.analyzers.causal`) on the hand-set GPT-2 whose only important head is
known: L0H0 is the one head that writes to the residual stream (every other head's W_O is zero),
so ablating a set changes the loss exactly when the set holds L0H0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests import tiny_models
from tests.handmade import PREV, handmade_gpt2, handmade_prompts
from workbench.analyzers import causal


@pytest.fixture(scope="module")
def handmade():
    model = wb.load_model("handmade", hf_model=handmade_gpt2(), tokenizer=tiny_models.tokenizer("gpt2"))
    oracle = handmade_gpt2()  # an independent copy: ablation by weight surgery
    return model, oracle


def _oracle_loss(model, oracle, prompts, ablate_prev: bool) -> float:
    """Mean next-token loss from the plain HF copy, L0H0's output projection rows zeroed if asked."""
    w = oracle.transformer.h[0].attn.c_proj.weight  # (d_model, d_model) Conv1D: rows are the heads' z dims
    saved = w.detach().clone()
    rows = slice(PREV * model.d_head, (PREV + 1) * model.d_head)
    try:
        with torch.no_grad():
            if ablate_prev:
                w[rows] = 0.0
            losses = []
            for p in prompts:
                ids = torch.tensor([model.tokenizer(p)["input_ids"]])
                logits = oracle(input_ids=ids).logits[0].double()
                losses.append(float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])))
    finally:
        with torch.no_grad():
            w.copy_(saved)
    return sum(losses) / len(losses)


def test_causal_check_finds_the_known_head_and_flags_a_ranking_that_does_not(handmade):
    model, oracle = handmade
    fit, held_out = handmade_prompts(3, seed=0), handmade_prompts(4, seed=1)
    assert not set(fit) & set(held_out)
    ranking = wb.head_importance(model, fit, method="ablation")  # made on other prompts than the check's
    evaluate = causal.loss_evaluator(model, held_out)
    table = causal.causal_check(ranking, evaluate, ranking="ablation", score="raw", metric="held-out loss",
                                higher_is_better=False, ks=(1, 2, 0.5), n_random=6, seed=3)
    assert list(table.columns[:8]) == list(causal.COLUMNS)
    assert table["k"].tolist() == [1, 2, 4]  # 0.5 of 8 heads = 4 = half, the largest allowed
    clean = _oracle_loss(model, oracle, held_out, ablate_prev=False)
    ablated = _oracle_loss(model, oracle, held_out, ablate_prev=True)
    assert ablated > clean + 0.05
    heads = causal.ranked_heads(ranking, "raw")
    assert heads[0] == (0, PREV)
    for row in table.itertuples():
        assert row.clean == pytest.approx(clean, abs=1e-5)
        assert row.top == pytest.approx(ablated, abs=1e-5)  # every top-k holds L0H0
        assert row.bottom == pytest.approx(clean, abs=1e-5)  # no bottom-k does
        draws = causal.random_sets(sorted(heads), row.k, 6, seed=3)  # drawn in (layer, head) order
        expected = [ablated if (0, PREV) in d else clean for d in draws]
        assert row.random_lo == pytest.approx(min(expected), abs=1e-5)
        assert row.random_hi == pytest.approx(max(expected), abs=1e-5)
        # top-k is as bad as the worst draw (it holds L0H0); it beats random if the median draw does not hold it
        assert row.beats_random == bool(np.median(expected) < ablated - 1e-9)
    assert table.loc[table.k == 1, "beats_random"].item()  # at k = 1 most draws miss L0H0

    # the same check of a ranking that puts the known head last: its top-k never hurts
    reversed_ranking = ranking.assign(raw=-ranking["raw"])
    bad = causal.causal_check(reversed_ranking, evaluate, ranking="reversed", score="raw", metric="held-out loss",
                              higher_is_better=False, ks=(1, 2), n_random=6, seed=3)
    assert (bad["top"] - clean).abs().max() < 1e-5 and (bad["bottom"] - ablated).abs().max() < 1e-5
    assert not bad["beats_random"].any()
    for row, other in zip(table.itertuples(), bad.itertuples()):  # one seed: both rankings meet the same draws
        assert (row.random_lo, row.random_median, row.random_hi) == (other.random_lo, other.random_median, other.random_hi)
    said = causal.verdicts(bad)
    assert len(said) == 2 and all("does NOT beat random" in s for s in said)
    assert "beats random" in causal.verdicts(table)[0] and "NOT" not in causal.verdicts(table)[0]


def test_cached_evaluator_ablates_each_set_once_and_changes_no_number(handmade):
    model, _ = handmade
    held_out = handmade_prompts(4, seed=1)
    ranking = wb.head_importance(model, handmade_prompts(3, seed=0), method="ablation")
    plain = causal.loss_evaluator(model, held_out)
    asked = []
    cached = causal.cached(lambda sets: asked.extend(map(frozenset, sets)) or plain(sets))
    kw = dict(score="raw", metric="held-out loss", higher_is_better=False, ks=(1, 2), n_random=4, seed=3)
    want = causal.causal_check(ranking, plain, ranking="ablation", **kw)
    first = causal.causal_check(ranking, cached, ranking="ablation", **kw)
    n_first = len(asked)
    again = causal.causal_check(ranking.assign(raw=-ranking["raw"]), cached, ranking="reversed", **kw)
    assert len(asked) == len(set(asked))  # no set is ablated twice
    own = {frozenset((int(h[1:].split("H")[0]), int(h.split("H")[1])) for h in names.split())
           for names in [*again["top_heads"], *again["bottom_heads"]]}
    assert 0 < len(asked) - n_first and set(asked[n_first:]) <= own  # only the new ranking's top/bottom sets are new
    cols = ["top", "bottom", "random_median", "random_lo", "random_hi", "clean"]
    np.testing.assert_allclose(first[cols].to_numpy(), want[cols].to_numpy(), rtol=0, atol=1e-6)
    assert (again["clean"] == first["clean"]).all() and (again["random_median"] == first["random_median"]).all()


def test_causal_check_ranks_signed_effects_by_magnitude(handmade):
    model, _ = handmade
    ranking = wb.head_importance(model, handmade_prompts(2), method="ablation")
    signed = ranking.assign(effect=-ranking["raw"])  # the known head has the most negative effect
    assert causal.ranked_heads(signed, "effect", by_magnitude=True)[0] == (0, PREV)
    assert causal.ranked_heads(signed, "effect")[-1] == (0, PREV)


def test_causal_check_bad_inputs(handmade):
    model, _ = handmade
    ranking = wb.head_importance(model, handmade_prompts(2), method="ablation")

    def evaluate(sets):
        return [0.0] * len(sets)

    kwargs = dict(ranking="r", metric="m", higher_is_better=False)
    with pytest.raises(wb.WorkbenchError, match=r"k = 5 is 5 heads: a causal check needs k <= half of the 8 heads"):
        causal.causal_check(ranking, evaluate, score="raw", ks=(5,), **kwargs)
    with pytest.raises(wb.WorkbenchError, match=r"lacks \['score_x'\]"):
        causal.causal_check(ranking, evaluate, score="score_x", **kwargs)
    with pytest.raises(wb.WorkbenchError, match="n_random must be a positive int; got 0"):
        causal.causal_check(ranking, evaluate, score="raw", n_random=0, **kwargs)
    with pytest.raises(wb.WorkbenchError, match="evaluate returned 1 value"):
        causal.causal_check(ranking, lambda sets: [0.0], score="raw", ks=(1,), **kwargs)
    with pytest.raises(wb.WorkbenchError, match="ks is empty"):
        causal.causal_check(ranking, evaluate, score="raw", ks=(), **kwargs)


def test_evaluators_equal_direct_forwards_with_the_heads_ablated():
    """The batched evaluators (many sets per forward, prefix reuse) against one plain HF forward
    per set under `wb.ablate` on a tiny Llama."""
    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    sets = [[], [(1, 2)], [(0, 1), (1, 3)]]
    from workbench.analyzers.patterns import repeated_token_probes

    probes = repeated_token_probes(model, n_probes=3, probe_len=6, seed=1)  # (3, 1 + 12): <s> then the span twice
    got = causal.induction_evaluator(model, n_probes=3, probe_len=6, seed=1)(sets)
    task = [{"prompt": "w1 w2 w3 w4", "answer": " w5", "corrupted_prompt": "w1 w2 w3 w6", "corrupted_answer": " w7"},
            {"prompt": "w8 w9 w10 w11", "answer": " w12", "corrupted_prompt": "w8 w9 w10 w13", "corrupted_answer": " w14"}]
    ld = causal.task_evaluator(model, task)(sets)
    trials = [{"prompt": "w20 w21 w22 w23 w24 w25", "answer": " w22 w23"}, {"prompt": "w30 w31 w32", "answer": " w31"}]
    niah = causal.niah_evaluator(model, trials)(sets)
    for heads, loss_v, ld_v, niah_v in zip(sets, got, ld, niah):
        with torch.no_grad(), wb.ablate(model, heads):
            logits = model.hf_model(input_ids=probes).logits.double()  # (3, 13, vocab)
            expected = torch.nn.functional.cross_entropy(logits[:, 7:12].transpose(1, 2), probes[:, 8:13]).item()
            diffs, hits = [], []
            for row in task:
                ids = torch.tensor([model.tokenizer(row["prompt"])["input_ids"]])
                last = model.hf_model(input_ids=ids).logits[0, -1]
                a, w = (model.tokenizer(row[k], add_special_tokens=False)["input_ids"][0] for k in ("answer", "corrupted_answer"))
                diffs.append(float(last[a] - last[w]))
            for row in trials:
                p = model.tokenizer(row["prompt"])["input_ids"]
                a = model.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
                out = model.hf_model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1].argmax(-1)
                hits.append(float(out.tolist() == a))
        assert loss_v == pytest.approx(expected, abs=1e-5)
        assert ld_v == pytest.approx(sum(diffs) / 2, abs=1e-5)
        assert niah_v == pytest.approx(sum(hits) / 2)
    assert got[0] != pytest.approx(got[1], abs=1e-6) and ld[0] != pytest.approx(ld[2], abs=1e-6)


def test_registered_causal_checks_cover_every_ranking_on_held_out_prompts():
    """On a tiny Llama with 9 prompts (cut in thirds: fit, held out, reference), every ranking
    that applies is checked; retrieval is skipped with the reason (no passkey trials)."""
    from workbench.analyzers import causal_checks as registered
    from workbench.analyzers.rankings import splits

    model = wb.load_model("tiny-llama", hf_model=tiny_models.hf_model("llama"), tokenizer=tiny_models.tokenizer("llama"))
    prompts = [" ".join(f"w{(7 * i + j) % 90}" for j in range(6 + i)) for i in range(9)]
    found = splits(model, prompts)
    assert found["fit"]["prompts"] == prompts[0::3] and found["held_out"]["prompts"] == prompts[1::3]
    table = registered.causal_checks(model, prompts)
    assert list(table.columns[:8]) == list(causal.COLUMNS)
    assert table["ranking"].unique().tolist() == [
        "head_importance.importance", "importance_methods.ablation_zero", "importance_methods.ablation_mean",
        "importance_methods.integrated_gradients", "sink_scores.sink_score", "head_patterns.induction"]
    assert table["k"].unique().tolist() == [1, 3]  # of 1, 3, 5 and 10% of 8 heads: those <= half (4)
    assert "retrieval_heads.retrieval_score" in table.attrs["skipped"] and "thirds" in table.attrs["split"]
    assert "no ioi suite" in table.attrs["skipped"]["circuits.effect"]  # word-level vocabulary: no task suites
    # the held-out loss of the clean model is the loss on the held-out third, not on the fit prompts
    held = causal.loss_evaluator(model, prompts[1::3])([[]])[0]
    assert table[table.ranking.str.contains("importance")]["clean"].eq(held).all()
