"""Attention vs saliency: the exposed vectors are what their definitions say (independent
autograd / forward oracles), the correlations are scipy's, IG is complete, rollout is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

import workbench as wb
from tests import tiny_models
from workbench.analyzers import saliency as S
from workbench.errors import WorkbenchError

PROMPT = "w1 w2 w3 w4 w5 w6 w7 w8"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def causal(request):
    return wb.load_model(f"tiny-{request.param}", hf_model=tiny_models.hf_model(request.param),
                         tokenizer=tiny_models.tokenizer(request.param))


def _target_of(model, embeds: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(model.hf_model(inputs_embeds=embeds).logits[0, -1, target])


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(6).expand(3, 4, 6, 6)  # (layer, head, q, k)
    torch.testing.assert_close(S.rollout(eye), torch.eye(6))


def test_rollout_equals_the_product_of_half_residual_matrices():
    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 5, 5)) * np.tril(np.ones((5, 5)))
    w /= w.sum(-1, keepdims=True)  # causal, row-stochastic heads
    a1, a2 = (0.5 * w[l].mean(0) + 0.5 * np.eye(5) for l in range(2))
    expected = a2 @ a1
    got = S.rollout(torch.tensor(w))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)


def test_correlations_equal_scipy_on_the_exposed_vectors(causal):
    prompts = [PROMPT, "w9 w8 w7 w6 w5 w4"]
    frames = [wb.token_attributions(causal, p, "input_x_gradient") for p in prompts]
    table = wb.saliency_alignment(causal, prompts, "input_x_gradient", topk=3)
    assert list(table.columns) == ["view", "layer", "head", "pearson", "spearman", "kendall", "topk_overlap", "n_prompts"]
    assert table["view"].value_counts().to_dict() == {"head": causal.n_layers * causal.n_heads,
                                                      "layer_mean": causal.n_layers, "all_mean": 1, "rollout": 1}
    for _, row in table.iterrows():
        per = []
        for f in frames:
            part = f[(f["view"] == row["view"]) & (f["layer"] == row["layer"]) & (f["head"] == row["head"])]
            x, y = part["attribution"].to_numpy(), part["attention"].to_numpy()
            top = lambda v: set(np.argsort(-v, kind="stable")[:3])  # noqa: E731
            per.append([pearsonr(x, y)[0], spearmanr(x, y)[0], kendalltau(x, y)[0], len(top(x) & top(y)) / 3])
        np.testing.assert_allclose(row[["pearson", "spearman", "kendall", "topk_overlap"]].to_numpy(float),
                                   np.mean(per, axis=0), atol=1e-9)


def test_attention_views_are_rows_of_the_captured_patterns(causal):
    frame = wb.token_attributions(causal, PROMPT, "saliency")
    patterns = wb.capture_patterns(causal, [PROMPT])
    last = frame.attrs["query_position"]
    keep = torch.tensor(frame[frame["view"] == "all_mean"]["position"].to_numpy())
    assert 0 not in keep and last == len(keep)  # BOS left out; the query is the last token
    stack = torch.stack([patterns[l][0, :, last] for l in range(causal.n_layers)])  # (layer, head, key)
    for l in range(causal.n_layers):
        for h in range(causal.n_heads):
            got = frame[(frame["view"] == "head") & (frame["layer"] == l) & (frame["head"] == h)]["attention"]
            np.testing.assert_allclose(got.to_numpy(), stack[l, h, keep].numpy(), atol=1e-6)
    np.testing.assert_allclose(frame[frame["view"] == "all_mean"]["attention"].to_numpy(),
                               stack.mean((0, 1))[keep].numpy(), atol=1e-6)


def test_integrated_gradients_is_complete(causal):
    frame = wb.token_attributions(causal, PROMPT, "integrated_gradients", n_steps=64)
    ids, _ = causal.to_tokens([PROMPT])
    embeds = causal.hf_model.get_input_embeddings()(ids)
    baseline = embeds.clone()
    baseline[0, 1:] = 0  # content tokens to zero, BOS kept
    gap = _target_of(causal, embeds, frame.attrs["target_id"]) - _target_of(causal, baseline, frame.attrs["target_id"])
    total = frame[frame["view"] == "rollout"]["attribution_signed"].sum()
    assert abs(frame.attrs["convergence_delta"]) < 1e-3 * max(1.0, abs(gap))
    assert total == pytest.approx(gap, abs=1e-3 * max(1.0, abs(gap)))


def test_feature_ablation_and_saliency_match_hand_computations(causal):
    ids, _ = causal.to_tokens([PROMPT])
    embeds = causal.hf_model.get_input_embeddings()(ids).detach()
    ablation = wb.token_attributions(causal, PROMPT, "feature_ablation")
    rows = ablation[ablation["view"] == "rollout"]
    target = ablation.attrs["target_id"]
    full = _target_of(causal, embeds, target)
    for pos, value in zip(rows["position"], rows["attribution_signed"]):
        cut = embeds.clone()
        cut[0, pos] = 0
        assert value == pytest.approx(full - _target_of(causal, cut, target), abs=1e-5)
    x = embeds.clone().requires_grad_()
    causal.hf_model(inputs_embeds=x).logits[0, -1, target].backward()
    sal = wb.token_attributions(causal, PROMPT, "saliency")
    sal = sal[sal["view"] == "rollout"]
    np.testing.assert_allclose(sal["attribution"].to_numpy(), x.grad[0, torch.tensor(sal["position"].to_numpy())].norm(dim=-1).numpy(), rtol=1e-5)


def test_encoder_uses_the_cls_row_and_a_documented_target(minilm):
    prompt = "The cat sat on the mat because it was tired."
    frame = wb.token_attributions(minilm, prompt, "integrated_gradients", n_steps=32)
    assert frame.attrs["query_position"] == 0 and "[CLS]" in frame.attrs["target"]
    assert not {"[CLS]", "[SEP]"} & set(frame["token"])
    patterns = wb.capture_patterns(minilm, [prompt])
    got = frame[(frame["view"] == "head") & (frame["layer"] == 3) & (frame["head"] == 5)]
    np.testing.assert_allclose(got["attention"].to_numpy(), patterns[3][0, 5, 0, torch.tensor(got["position"].to_numpy())].numpy(), atol=1e-6)
    assert abs(frame.attrs["convergence_delta"]) < 1e-2


def test_saliency_figures(causal):
    from workbench.figures import attribution_bars, correlation_grid

    table = wb.saliency_alignment(causal, [PROMPT], "saliency")
    fig = correlation_grid(table, "kendall")
    heads = table[table["view"] == "head"]
    assert np.asarray(fig.data[0].z, dtype=float)[1, 2] == pytest.approx(
        heads[(heads["layer"] == 1) & (heads["head"] == 2)]["kendall"].item())
    assert "rollout" in fig.layout.title.text
    bars = attribution_bars(wb.token_attributions(causal, PROMPT, "saliency"), view="layer_mean", layer=1)
    assert [sum(t.y) for t in bars.data] == pytest.approx([1.0, 1.0])


def test_bad_inputs_give_clear_errors(causal):
    with pytest.raises(WorkbenchError, match="unknown method 'lime'"):
        wb.saliency_alignment(causal, [PROMPT], "lime")
    with pytest.raises(WorkbenchError, match="unknown method 'shap'"):
        wb.token_attributions(causal, PROMPT, "shap")
    with pytest.raises(WorkbenchError, match="prompts is empty"):
        wb.saliency_alignment(causal, [])
    with pytest.raises(WorkbenchError, match="has 1 non-special token"):
        wb.token_attributions(causal, "w1")
    with pytest.raises(WorkbenchError, match="topk must be a positive int"):
        wb.saliency_alignment(causal, [PROMPT], topk=0)
    with pytest.raises(WorkbenchError, match="rollout needs patterns"):
        S.rollout(torch.ones(2, 3, 4))


# -- real models: numbers for the record ---------------------------------------------------
def _summary(table):
    agg = table[table["view"] != "head"].set_index(["view", "layer"])[["pearson", "spearman", "kendall", "topk_overlap"]]
    best = table[table["view"] == "head"].sort_values("spearman").iloc[-1]
    return agg.round(3).to_string() + f"\nbest head L{best['layer']}H{best['head']} spearman {best['spearman']:.3f}"


def test_minilm_alignment_is_the_mean_of_its_prompts(minilm):
    """On a real encoder: each metric is computed per prompt, then averaged (NaN-skipping), and
    every correlation is a correlation."""
    prompts = wb.load_prompts(model=minilm)[:2]
    table = wb.saliency_alignment(minilm, prompts, "integrated_gradients", n_steps=16)
    print("\nMiniLM, integrated gradients:\n" + _summary(table))
    each = [wb.saliency_alignment(minilm, [p], "integrated_gradients", n_steps=16) for p in prompts]
    metrics = ["pearson", "spearman", "kendall", "topk_overlap"]
    want = np.nanmean(np.stack([e[metrics].to_numpy(dtype=float) for e in each]), axis=0)
    np.testing.assert_allclose(table[metrics].to_numpy(dtype=float), want, atol=1e-6, equal_nan=True)
    assert (table["n_prompts"] == 2).all() and (np.abs(np.nan_to_num(want)) <= 1 + 1e-9).all()
    assert len(table[table["view"] == "head"]) == minilm.n_layers * minilm.n_heads


def test_demo_alignment_covers_every_view():
    """The registered table on the demo: a row per head, per layer, the all-head mean and rollout,
    each with finite correlations (the demo's prompts vary, so no attribution is constant)."""
    demo = wb.load_model("demo")
    table = S.registered_saliency(demo, wb.load_prompts(model=demo))
    print("\ndemo, integrated gradients:\n" + _summary(table))
    counts = table["view"].value_counts()
    assert counts["head"] == demo.n_layers * demo.n_heads and counts["layer_mean"] == demo.n_layers
    assert counts["all_mean"] == counts["rollout"] == 1
    values = table[["pearson", "spearman", "kendall", "topk_overlap"]].to_numpy()
    assert np.isfinite(values).all() and (np.abs(values) <= 1 + 1e-9).all()
