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
