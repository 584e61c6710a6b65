"""DuoAttention (`workbench.analyzers.duo`): the mixed attention against independent computations
(the model's own eager attention with a 4-D streaming mask), and the trained gates on a hand-set
Llama whose KV head 0 must stay full (its query heads average the whole context) while KV head 1
is a sink head that streaming attention reproduces exactly."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import workbench as wb
from tests import tiny_models
from workbench.analyzers import duo, duo_deploy
from workbench.heads import record_heads
from workbench.models import data_dir

BOS = tiny_models.VOCAB["<s>"]


def handmade_llama(seed: int = 0) -> LlamaForCausalLM:
    """One layer, 4 query heads in 2 KV groups (d_head 8), RoPE nearly off on the last dims.

    - KV head 0 (query heads 0, 1): zero query → uniform causal attention, the mean value of the
      whole prefix, written to the residual stream by a large W_O: streaming attention (sink +
      recent) sees only part of the prefix, so its output differs.
    - KV head 1 (query heads 2, 3): a constant query matching only <s>'s key (logit ~100): every
      query attends to position 0, which streaming attention keeps (sink), so it is unchanged.
    """
    cfg = LlamaConfig(vocab_size=len(tiny_models.VOCAB), hidden_size=32, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                      attention_bias=True, rope_theta=1e9, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=g))
        emb[:, 0] = 0.0
        emb[BOS] = 0.0
        emb[BOS, 0] = 6.0  # <s> alone has dimension 0
        attn = model.model.layers[0].self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            proj.bias.zero_()
        attn.q_proj.weight.zero_()  # every query constant (its bias)
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[8 + 7, 0] = 4.0  # KV head 1, last dim (RoPE frequency ~1e-7): <s> only
        attn.q_proj.bias[16 + 7] = 5.0      # query heads 2, 3 look for it
        attn.q_proj.bias[24 + 7] = 5.0
        attn.v_proj.weight.copy_(torch.randn(attn.v_proj.weight.shape, generator=g) / 32 ** 0.5)
        attn.o_proj.weight.copy_(torch.randn(attn.o_proj.weight.shape, generator=g))
        attn.o_proj.weight[:, 16:] *= 0.3  # the sink head writes a smaller constant (it would swamp the final norm)
        model.model.layers[0].mlp.down_proj.weight.zero_()
    model.set_attn_implementation("eager")
    return model.eval()


def _trials(n: int = 6, length: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [f"w{rng.randrange(5, 90)}" for _ in range(length)]
        out.append({"prompt": " ".join(words), "answer": " " + " ".join(words[1:3])})
    return out


@pytest.fixture(scope="module")
def handmade():
    hf = handmade_llama()
    oracle = copy.deepcopy(hf)
    return wb.load_model("duo-handmade", hf_model=hf, tokenizer=tiny_models.tokenizer("llama")), oracle


def test_the_sink_head_attends_to_the_first_token(handmade):
    model, _ = handmade
    patterns = wb.capture_patterns(model, [_trials(1)[0]["prompt"]])[0][0]  # (head, query, key)
    assert float(patterns[2:, 1:, 0].min()) > 0.99  # heads 2, 3: all on <s>
    n = patterns.shape[-1]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    torch.testing.assert_close(patterns[:2], uniform.expand(2, n, n), atol=1e-5, rtol=0)


def test_streaming_gates_equal_a_4d_streaming_mask_and_full_gates_equal_eager():
    hf = tiny_models.hf_model("llama")
    oracle = copy.deepcopy(hf)
    model = wb.load_model("tiny-llama", hf_model=hf, tokenizer=tiny_models.tokenizer("llama"))
    ids = torch.randint(7, 90, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = duo.streaming_mask(40, 3, 5)
    assert mask[39, :3].all() and mask[39, 35:].all() and not mask[39, 3:35].any() and not mask[3, 4:].any()
    with torch.no_grad():
        with duo.duo_gates(model, torch.zeros(2, 2), sink=3, recent=5):
            streaming = model.hf_model(input_ids=ids).logits
        with duo.duo_gates(model, torch.ones(2, 2), sink=3, recent=5):
            full = model.hf_model(input_ids=ids).logits
        additive = torch.where(mask, 0.0, float("-inf"))[None, None].expand(2, 1, 40, 40)
        expected = oracle(input_ids=ids, attention_mask=additive).logits
        eager = oracle(input_ids=ids).logits
    torch.testing.assert_close(streaming, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, eager, atol=1e-5, rtol=1e-5)
    assert (streaming - eager).abs().max() > 1e-3
    assert model.hf_model.config._attn_implementation == "eager"  # restored


def test_a_gate_mixes_the_outputs_of_its_own_kv_group(handmade):
    model, _ = handmade
    ids = torch.tensor([model.tokenizer(_trials(1)[0]["prompt"])["input_ids"]])
    runs = {}
    for name, gates in {"full": torch.ones(1, 2), "stream": torch.zeros(1, 2), "mix": torch.tensor([[0.3, 0.8]])}.items():
        with duo.duo_gates(model, gates, sink=2, recent=4):
            runs[name] = record_heads(model, ids)[0]  # (1, pos, head, d_head): layer 0's head outputs
    for heads, a in ((slice(0, 2), 0.3), (slice(2, 4), 0.8)):
        expected = a * runs["full"][:, :, heads] + (1 - a) * runs["stream"][:, :, heads]
        torch.testing.assert_close(runs["mix"][:, :, heads], expected, atol=1e-5, rtol=1e-5)
    assert (runs["full"][:, 10:, :2] - runs["stream"][:, 10:, :2]).abs().max() > 0.05  # uniform head: differs
    torch.testing.assert_close(runs["full"][:, :, 2:], runs["stream"][:, :, 2:], atol=1e-5, rtol=0)  # sink head: same


def test_the_kv_head_that_reads_the_whole_context_stays_full(handmade):
    model, oracle = handmade
    frame = duo.duo_attention(model, _trials(), steps=60, max_context=None, sink=2, recent=4, lr=0.05, seed=0)
    assert list(frame.columns) == ["layer", "kv_head", "gate", "is_retrieval"]
    gates = dict(zip(frame["kv_head"], frame["gate"]))
    assert gates[0] > 0.9 and frame.loc[frame.kv_head == 0, "is_retrieval"].item()
    assert gates[1] < 0.1 and not frame.loc[frame.kv_head == 1, "is_retrieval"].item()
    assert frame.attrs["sink"] == 2 and frame.attrs["recent"] == 4 and frame.attrs["n_train"] == 3  # holdout: half
    for name, p in model.hf_model.named_parameters():  # the weights were not trained
        torch.testing.assert_close(p, oracle.get_parameter(name), rtol=0, atol=0)
    kv = duo_deploy.kv_cache_bytes(model, frame, 1000, sink=2, recent=4)
    per_token = 2 * model.d_head * 2  # key + value, 2 bytes each
    assert kv["kv_full_bytes"] == 2 * 1000 * per_token and kv["kv_duo_bytes"] == (1000 + 6) * per_token
    effect = duo_deploy.duo_effect(model, frame, _trials())
    assert effect["n_trials"].sum() == 3  # the three held-out trials
    assert {"accuracy_full", "accuracy_duo", "accuracy_streaming", "kv_saved_fraction"} <= set(effect.columns)


def test_default_window_sizes_scale_with_the_shortest_context():
    assert duo.window_sizes(1000)[:2] == (64, 256) and duo.window_sizes(32000)[:2] == (64, 256)
    assert duo.window_sizes(128)[:2] == (8, 33)
    assert duo.window_sizes(256)[:2] == (16, 66)
    assert duo.window_sizes(128, sink=4, recent=10)[:2] == (4, 10)
    # the learning-rate schedule of DuoAttention's train.py: warm-up and decay over a fifth each, floor 0.1
    factors = [duo._lr_factor(s, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[19] == 1.0 and factors[50] == 1.0 and factors[99] == pytest.approx(0.1)


def test_wu_heads_map_to_kv_heads_and_jaccard():
    import pandas as pd

    class Shape:
        n_heads, n_kv_heads = 8, 2

    retrieval = pd.DataFrame({"layer": [0] * 8, "head": range(8), "retrieval_score": [0, 0, 0.5, 0, 0, 0, 0, 0.05],
                              "is_retrieval": [False, False, True, False, False, False, False, False]})
    mapped = duo.wu_kv_heads(Shape, retrieval)
    assert mapped["wu_retrieval"].tolist() == [True, False] and mapped["wu_heads"].tolist() == ["L0H2", ""]
    assert mapped["wu_max_score"].tolist() == [0.5, 0.05]
    assert duo.jaccard({(0, 1), (1, 1)}, {(1, 1)}) == 0.5 and duo.jaccard(set(), set()) == 1.0


def test_duo_bad_inputs(handmade):
    model, _ = handmade
    with pytest.raises(wb.WorkbenchError, match=r"gates must have shape \[n_layers, n_kv_heads\] = \[1, 2\]"):
        with duo.duo_gates(model, torch.ones(2, 2), sink=1, recent=1):
            pass
    with pytest.raises(wb.WorkbenchError, match="no passkey trial has between 500 and None tokens"):
        duo.duo_attention(model, _trials(), min_context=500, max_context=None)
    with pytest.raises(wb.WorkbenchError, match="steps must be a positive int; got 0"):
        duo.duo_attention(model, _trials(), steps=0)
    with pytest.raises(wb.WorkbenchError, match=r"threshold must be a number in \(0, 1\]; got 2"):
        duo.duo_attention(model, _trials(), threshold=2)
    bert = wb.load_model("tiny-bert", hf_model=tiny_models.hf_model("bert"), tokenizer=tiny_models.tokenizer("bert"))
    with pytest.raises(wb.WorkbenchError, match="causal LMs"):
        duo.duo_attention(bert, _trials())
    assert model.hf_model.config._attn_implementation == "eager"


@pytest.mark.skipif(not (data_dir() / "demo" / "config.json").exists(), reason="data/demo is not there yet")
@pytest.mark.slow
def test_demo_gates_keep_the_kv_head_of_the_known_retrieval_heads():
    """The demo's retrieval heads L2.H4–H7 share KV head 1 of layer 2 (data/README.md): its gate
    must stay full; the NIAH accuracy with the gates deployed must hold on held-out trials."""
    model = wb.load_model("demo")
    frame = duo_deploy.registered_gates(model)  # the registered run (shared with a demo report in this session)
    print(frame.to_string(), frame.attrs)
    assert frame.attrs["train_tokens"] == "512-512" and frame.attrs["steps"] == 60
    assert frame.set_index(["layer", "kv_head"]).loc[(2, 1), "gate"] >= 0.5
    assert frame.attrs["n_retrieval"] < len(frame)  # some KV heads can stream
    assert frame.set_index(["layer", "kv_head"]).loc[(2, 1), "wu_heads"] == "L2H4 L2H5 L2H6 L2H7"
    assert 0 < frame.attrs["jaccard"] < 1
    effect = duo_deploy.registered_effect(model)
    print(effect.to_string())
    held = effect[effect.context_length >= 512]
    assert (held["accuracy_duo"] >= held["accuracy_full"] - 0.2).all()
    assert (held["accuracy_streaming"] < held["accuracy_full"]).all()
