"""load_model: every source, the handle's shape facts, and one clear error per bad input."""

import time

import pytest
import torch

import workbench as wb
from tests import tiny_models


def test_in_memory_handles_know_their_shape(tiny):
    model, _ = tiny
    kind = model.name.removeprefix("tiny-")
    assert (model.n_layers, model.n_heads, model.d_head) == (2, 4, 8)
    assert model.n_kv_heads == (2 if kind == "llama" else 4)
    assert model.is_causal == (kind != "bert")
    assert model.source == "in-memory"
    ids, mask = model.to_tokens(["w1 w2 w3", "w4"])
    assert ids.shape == mask.shape and mask.sum(-1).tolist()[1] < mask.sum(-1).tolist()[0]
    tokens = model.to_str_tokens("w1 w2")
    assert tokens[0] in ("<s>", "[CLS]") and "w1" in tokens


def test_local_directory_round_trip(tmp_path):
    hf = tiny_models.hf_model("llama")
    hf.save_pretrained(tmp_path)
    tiny_models.tokenizer("llama").save_pretrained(tmp_path)
    model = wb.load_model(str(tmp_path))
    assert model.name == tmp_path.name and model.n_kv_heads == 2 and model.is_causal
    ids, _ = model.to_tokens("w1 w2 w3")
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_minilm_is_the_real_encoder(minilm):
    assert (minilm.n_layers, minilm.n_heads, minilm.d_head) == (6, 12, 32)
    assert not minilm.is_causal and minilm.architecture == "BertForMaskedLM"
    assert minilm.to_str_tokens("hello world") == ["[CLS]", "hello", "world", "[SEP]"]
    # pretrained, not random: the word embedding of "king" is closer to "queen" than to "banana"
    emb = minilm.hf_model.get_input_embeddings().weight
    ids = minilm.tokenizer.convert_tokens_to_ids(["king", "queen", "banana"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[ids[0]], emb[ids[1]], dim=0) > cos(emb[ids[0]], emb[ids[2]], dim=0) + 0.1


def test_hub_id_offline_fails_fast_with_advice():
    start = time.perf_counter()
    with pytest.raises(wb.WorkbenchError) as err:
        wb.load_model("someone/some-model")
    assert time.perf_counter() - start < 5
    assert "'someone/some-model'" in str(err.value) and "local directory" in str(err.value)


@pytest.mark.parametrize("source, message", [
    ("/no/such/dir", "model directory '/no/such/dir' does not exist"),
    ("", "model source must be a non-empty string"),
])
def test_bad_sources(source, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.load_model(source)


def test_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(wb.WorkbenchError, match="has no config.json: expected a Hugging Face model directory"):
        wb.load_model(str(tmp_path))


def test_in_memory_needs_a_tokenizer():
    with pytest.raises(wb.WorkbenchError, match="hf_model= needs tokenizer="):
        wb.load_model(hf_model=tiny_models.hf_model("gpt2"))


def test_bad_prompts(tiny):
    model, _ = tiny
    with pytest.raises(wb.WorkbenchError, match="prompts is empty"):
        wb.capture_patterns(model, [])
    with pytest.raises(wb.WorkbenchError, match="prompt 1 is empty"):
        model.to_tokens(["w1", "  "])
    too_long = " ".join(["w1"] * 80)
    with pytest.raises(wb.WorkbenchError, match=r"prompt 0 is 8\d tokens long; .* context of 64 tokens"):
        wb.capture_patterns(model, [too_long])
    with pytest.raises(wb.WorkbenchError, match=r"token ids must lie in \[0, 97\)"):
        model.to_tokens(torch.tensor([[1, 500]]))


# -- the caller's model is left as it was (issue 14) -----------------------------------------
def _snapshot(model):
    return ([(name, type(m)) for name, m in model.named_modules()],
            {n: (p, p.dtype, p.device, p.data_ptr()) for n, p in model.named_parameters()},
            model.config._attn_implementation, model.training)


@pytest.mark.parametrize("kind", tiny_models.KINDS)
@pytest.mark.parametrize("dtype", [None, "float64"])
def test_in_memory_model_is_left_unchanged(kind, dtype):
    hf = tiny_models.hf_model(kind)
    hf.train()  # a caller's model in training mode must stay in training mode
    ids = torch.tensor([[2, 10, 11, 12, 10, 11]])
    with torch.no_grad():
        hf.eval()
        before = hf(ids, output_attentions=True)
        hf.train()
    modules, params, attn, training = _snapshot(hf)
    handle = wb.load_model(f"tiny-{kind}", hf_model=hf, tokenizer=tiny_models.tokenizer(kind), dtype=dtype)
    now_modules, now_params, now_attn, now_training = _snapshot(hf)
    assert now_modules == modules and now_attn == attn and now_training == training
    for name, (p, dt, dev, ptr) in params.items():  # same Parameter objects, dtype, device, storage
        q, qdt, qdev, qptr = now_params[name]
        assert q is p and (qdt, qdev, qptr) == (dt, dev, ptr)
    hf.eval()
    with torch.no_grad():
        after = hf(ids, output_attentions=True)
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    assert len(after.attentions) == 2
    for a, b in zip(after.attentions, before.attentions):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the handle runs its own twins: the bridge's HF model and hf_model are not the caller's
    assert handle.hf_model is not hf and all(p is not q for p in handle.hf_model.parameters() for q in hf.parameters())
    if dtype is None:  # no copy where nothing changes: the twins read the caller's storage
        shared = {p.data_ptr() for p in hf.parameters()}
        assert {p.data_ptr() for p in handle.hf_model.parameters()} <= shared
    else:
        assert {p.dtype for p in handle.hf_model.parameters()} == {torch.float64}


@pytest.mark.parametrize("kind", tiny_models.KINDS)
def test_capture_equals_the_callers_eager_attention(kind):
    hf = tiny_models.hf_model(kind)
    handle = wb.load_model(f"tiny-{kind}", hf_model=hf, tokenizer=tiny_models.tokenizer(kind))
    ids, _ = handle.to_tokens(tiny_models.PROMPTS[2])
    patterns = wb.capture_patterns(handle, ids)
    with torch.no_grad():
        eager = hf(ids, output_attentions=True).attentions  # the caller's own model, after loading
        twin = handle.hf_model(ids, output_attentions=True).attentions
    assert len(eager) == handle.n_layers
    for layer, attention in enumerate(eager):
        torch.testing.assert_close(patterns[layer], attention, atol=1e-6, rtol=0)
        torch.testing.assert_close(twin[layer], attention, atol=0, rtol=0)


def test_two_handles_over_one_model_are_independent():
    hf = tiny_models.hf_model("llama")
    tok = tiny_models.tokenizer("llama")
    first = wb.load_model("a", hf_model=hf, tokenizer=tok)
    second = wb.load_model("b", hf_model=hf, tokenizer=tok)  # the old code rewired hf: this broke
    ids, _ = first.to_tokens("w1 w2 w3")
    with torch.no_grad():
        torch.testing.assert_close(first.bridge(ids), second.bridge(ids), atol=0, rtol=0)
        torch.testing.assert_close(second.bridge(ids), hf(ids).logits, atol=1e-5, rtol=0)
