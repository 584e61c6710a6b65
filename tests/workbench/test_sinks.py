"""Sink analyses against heads and hidden states built by hand, independent computations from
exact patterns, the demo model's training report, and the real MiniLM (Clark et al. 2019)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import workbench as wb
from tests import tiny_models
from tests.workbench.test_patterns import SINK, handmade_gpt2, handmade_prompts
from workbench.models import data_dir


@pytest.fixture(scope="module")
def handmade():
    return wb.load_model("handmade", hf_model=handmade_gpt2(), tokenizer=tiny_models.tokenizer("gpt2"))


def test_the_head_built_to_attend_to_the_first_token_is_the_only_sink_head(handmade):
    frame = wb.sink_scores(handmade, handmade_prompts())
    assert list(frame.columns) == ["layer", "head", "sink_score", "is_sink"]
    sinks = frame[frame.is_sink]
    assert list(zip(sinks["layer"], sinks["head"])) == [(0, SINK)]
    assert float(sinks.sink_score.iloc[0]) > 0.999
    assert frame[~frame.is_sink].sink_score.max() < 0.2
    assert wb.sink_share(frame) == pytest.approx(1 / 8) == frame.attrs["sink_share"]
    assert wb.sink_share(frame, eps=1e-3) == 1.0  # every head puts some mass on the first token


def _exact_alpha(model, prompt, causal_normalization=True):
    """Gu et al.'s α from the model's own eager attentions: {(layer, head): [alpha per key]}."""
    ids, _ = model.to_tokens(prompt)
    with torch.no_grad():
        attentions = model.hf_model(input_ids=ids, output_attentions=True).attentions
    n = ids.shape[1]
    seen = torch.arange(n, 0, -1) if (model.is_causal and causal_normalization) else torch.full((n,), n)
    return {(layer, head): (a[0, head].double().sum(0) / seen).numpy()
            for layer, a in enumerate(attentions) for head in range(a.shape[1])}


@pytest.mark.parametrize("causal_normalization", [True, False])
def test_token_sinks_equal_alpha_from_eager_attention(tiny, causal_normalization):
    model, _ = tiny
    frame = wb.token_sinks(model, tiny_models.PROMPTS, causal_normalization=causal_normalization)
    assert list(frame.columns) == ["prompt_id", "layer", "head", "position", "token", "alpha"]
    for pid, prompt in enumerate(tiny_models.PROMPTS):
        expected = _exact_alpha(model, prompt, causal_normalization)
        tokens = model.to_str_tokens(prompt)
        for (layer, head), group in frame[frame.prompt_id == pid].groupby(["layer", "head"]):
            np.testing.assert_allclose(group.alpha.to_numpy(), expected[layer, head], atol=1e-5)
            assert list(group.token) == tokens
    # α of the first token is the sink score (all queries see it)
    scores = wb.sink_scores(model, tiny_models.PROMPTS).set_index(["layer", "head"]).sink_score
    first = frame[frame.position == 0].groupby(["layer", "head"]).alpha.mean()
    np.testing.assert_allclose(first.loc[scores.index].to_numpy(), scores.to_numpy(), atol=1e-6)


def test_hidden_sink_on_a_later_token_is_found():
    model = wb.load_model("hidden", hf_model=handmade_gpt2(sink_token="w5"), tokenizer=tiny_models.tokenizer("gpt2"))
    words = [f"w{i}" for i in range(10, 40)]
    prompt = " ".join(words[:6] + ["w5"] + words[6:20])  # w5 at position 7 (after BOS)
    frame = wb.hidden_sinks(model, [prompt])
    assert list(frame.columns) == ["prompt_id", "layer", "head", "position", "token", "alpha"]
    top = frame.iloc[0]
    assert (top["layer"], top["head"], top["position"], top["token"]) == (0, SINK, 7, "w5")
    assert top.alpha > 0.99
    layer0 = frame[frame.layer == 0]  # the position heads put at most 1/(T-k) <= 0.1 on a key
    assert list(zip(layer0["head"], layer0["position"])) == [(SINK, 7)]
    assert (frame.position >= 1).all()
    # the first-token sink score of that head: only the 7 queries before w5 (of 22) stay on BOS
    scores = wb.sink_scores(model, [prompt]).set_index(["layer", "head"]).sink_score
    assert scores[0, SINK] == pytest.approx(7 / 22, abs=1e-3)


def _embedding_only_gpt2(seed=0):
    """GPT-2 with every weight zero but the token embeddings: hook_resid_post = wte[token] in every layer."""
    cfg = GPT2Config(vocab_size=len(tiny_models.VOCAB), n_embd=32, n_layer=3, n_head=4, n_positions=64,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        wte = 0.01 * torch.randn(len(tiny_models.VOCAB), 32, generator=g)
        wte[tiny_models.VOCAB["w7"]] = -3 * wte[tiny_models.VOCAB["<s>"]]  # |cos| = 1 with BOS
        wte[tiny_models.VOCAB["w9"], 3] = 500.0                             # one massive entry
        model.transformer.wte.weight.copy_(wte)
    model.set_attn_implementation("eager")
    return model.eval()


@pytest.fixture(scope="module")
def embedding_only():
    return wb.load_model("embedding-only", hf_model=_embedding_only_gpt2(), tokenizer=tiny_models.tokenizer("gpt2"))


def test_secondary_sinks_are_tokens_aligned_with_the_first(embedding_only):
    frame = wb.secondary_sinks(embedding_only, ["w1 w7 w2 w3", "w4 w5"])
    assert list(frame.columns) == ["prompt_id", "position", "token", "start_layer", "end_layer", "n_layers", "mean_cos"]
    assert frame[["prompt_id", "position", "token", "start_layer", "end_layer", "n_layers"]].values.tolist() == [
        [0, 2, "w7", 0, 2, 3]]
    assert frame.mean_cos.iloc[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("shifts, runs", [
    ({0: +1, 1: -1, 2: +1}, [[1, 1, 1]]),             # aligned in layer 1 only
    ({1: +1, 2: -1}, [[0, 0, 1], [2, 2, 1]]),         # two separate one-layer runs
    ({2: +1}, [[0, 1, 2]]),                           # lasts two layers
])
def test_secondary_sink_lifetime_is_the_run_of_layers(embedding_only, shifts, runs):
    from workbench.heads import hooks

    bos = embedding_only.hf_model.transformer.wte.weight[tiny_models.VOCAB["<s>"]].detach()
    away = torch.ones(32) - bos * (torch.ones(32) @ bos) / (bos @ bos)  # orthogonal to BOS
    away = 5.0 * away / away.norm()

    def shove(sign):  # move position 2 (w7) off the BOS direction; the residual carries it on
        def hook(resid, hook=None):
            resid = resid.clone()
            resid[:, 2, :] += sign * away
            return resid
        return hook

    with hooks(embedding_only, {f"blocks.{layer}.hook_resid_post": shove(sign) for layer, sign in shifts.items()}):
        frame = wb.secondary_sinks(embedding_only, ["w1 w7 w2"])
    assert sorted(frame[["start_layer", "end_layer", "n_layers"]].values.tolist()) == runs
    assert (frame.position == 2).all()


def test_massive_activations_find_the_planted_entry(embedding_only):
    frame = wb.massive_activations(embedding_only, ["w1 w9 w2 w3", "w4 w5"])
    assert list(frame.columns) == ["prompt_id", "layer", "position", "token", "dim", "value", "ratio"]
    assert sorted(frame.layer) == [0, 1, 2]
    assert set(map(tuple, frame[["prompt_id", "position", "token", "dim"]].values.tolist())) == {(0, 2, "w9", 3)}
    assert np.allclose(frame.value, 500.0) and (frame.ratio > 1000).all()
    assert wb.massive_activations(embedding_only, ["w1 w9 w2 w3"], abs_threshold=600).empty
    assert wb.massive_activations(embedding_only, ["w1 w9 w2 w3"], ratio_threshold=1e9).empty


@pytest.mark.parametrize("eps, message", [
    (0, r"eps must be a number in \(0, 1\]; got 0"), (-0.1, r"eps must be a number in \(0, 1\]; got -0.1"),
    (1.5, r"eps must be a number in \(0, 1\]; got 1.5"), ("0.3", r"eps must be a number in \(0, 1\]; got the string '0.3'"),
    (True, r"eps must be a number in \(0, 1\]; got the bool True"), (float("nan"), r"eps must be a number in \(0, 1\]; got nan"),
])
def test_sink_scores_rejects_eps_outside_unit_interval(handmade, eps, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.sink_scores(handmade, ["w1 w2"], eps=eps)


def test_sink_functions_reject_bad_inputs(handmade):
    for fn in (wb.sink_scores, wb.token_sinks, wb.hidden_sinks, wb.secondary_sinks, wb.massive_activations):
        with pytest.raises(wb.WorkbenchError, match="prompts is empty: expected at least one prompt"):
            fn(handmade, [])
    with pytest.raises(wb.WorkbenchError, match=r"abs_threshold must be a positive number; got -1"):
        wb.massive_activations(handmade, ["w1"], abs_threshold=-1)
    with pytest.raises(wb.WorkbenchError, match=r"cos_threshold must be a number in \(0, 1\); got 2"):
        wb.secondary_sinks(handmade, ["w1"], cos_threshold=2)
    with pytest.raises(wb.WorkbenchError, match="min_queries must be a positive int; got 0"):
        wb.hidden_sinks(handmade, ["w1"], min_queries=0)
    with pytest.raises(wb.WorkbenchError, match=r"threshold must be a number in \(0, 1\); got inf"):
        wb.hidden_sinks(handmade, ["w1"], threshold=float("inf"))
    with pytest.raises(wb.WorkbenchError, match="causal_normalization must be a bool; got 1"):
        wb.token_sinks(handmade, ["w1"], causal_normalization=1)
    with pytest.raises(wb.WorkbenchError, match="sink_share needs a sink_scores frame"):
        wb.sink_share(wb.token_sinks(handmade, ["w1"]))


# -- the demo model -----------------------------------------------------------------------------------
DEMO = data_dir() / "demo"
needs_demo = pytest.mark.skipif(not (DEMO / "config.json").exists() or not (DEMO / "training_report.json").exists(),
                                reason="data/demo is not there yet (workbench demo train)")


@needs_demo
@pytest.mark.slow
def test_demo_first_token_sink_share_matches_the_training_report():
    """The report measures α₀ on the first `prefix` tokens of 10 passkey prompts (≥ 128 tokens),
    leaving out query 0; α₀ here includes query 0 (Gu et al.), so α₀ = (1 + (prefix−1)·a)/prefix."""
    from workbench.prompts import read_jsonl

    report = json.loads((DEMO / "training_report.json").read_text())["sink"]
    prefix, threshold = report["prefix"], report["threshold"]
    model = wb.load_model("demo")
    rows = [r for r in read_jsonl(data_dir() / "suites" / "passkey.jsonl") if r["context_length"] >= 128][:10]
    ids = [model.tokenizer(r["prompt"])["input_ids"][:prefix] for r in rows]
    frame = wb.sink_scores(model, ids, eps=threshold)
    theirs = np.array(report["alpha0"])  # (layer, head), rounded to 3 decimals
    ours = frame.pivot(index="layer", columns="head", values="sink_score").to_numpy()
    np.testing.assert_allclose(ours, (1 + (prefix - 1) * theirs) / prefix, atol=1e-3)
    # the report's share counts heads past layer 0
    share = float((frame[frame.layer > 0].sink_score > threshold).mean())
    n = int((frame.layer > 0).sum())
    print(f"demo sink share past layer 0: {share:.3f} here, {report['share']:.3f} in the training report; "
          f"max alpha0 {ours.max():.3f}")
    assert abs(share - report["share"]) <= 1 / n + 1e-9, (share, report["share"])


# -- the real MiniLM ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_middle_layers_park_attention_on_cls_and_sep(minilm):
    """Clark et al. 2019 ("What Does BERT Look At?"): BERT heads park attention on [CLS]/[SEP]."""
    prompts = wb.load_prompts(model=minilm)
    frame = wb.token_sinks(minilm, prompts)
    middle = frame[frame.layer.isin([2, 3])]
    strongest = middle.loc[middle.groupby(["prompt_id", "layer", "head"]).alpha.idxmax()]
    share = strongest.token.isin(["[CLS]", "[SEP]"]).mean()
    assert share >= 0.9, strongest.token.value_counts()
    per_token = middle.groupby(["prompt_id", "position", "token"]).alpha.mean().reset_index()
    best = per_token.loc[per_token.groupby("prompt_id").alpha.idxmax()]
    assert set(best.token) <= {"[CLS]", "[SEP]"}
