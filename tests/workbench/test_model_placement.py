"""Models larger than one device (issue 18): Accelerate's device_map / max_memory /
offload_folder through load_model and the bridge. A model split across the CPU and a disk
offload folder must capture exactly what the unsplit model does."""

import pytest
import torch

import workbench as wb
from tests import tiny_models

PROMPTS = ["the cup is blue and the box is red", "a b c a b c a b c"]


@pytest.fixture(scope="module")
def demo():
    return wb.load_model("demo")


def _assert_same_capture(split, whole, prompts):
    a, b = wb.capture_patterns(whole, prompts), wb.capture_patterns(split, prompts)
    assert sorted(a) == sorted(b) == list(range(whole.n_layers))
    for layer in a:
        torch.testing.assert_close(b[layer], a[layer], atol=0, rtol=0)
    ids, mask = whole.to_tokens(prompts)
    with torch.no_grad():
        x = whole.hf_model(input_ids=ids, attention_mask=mask, output_attentions=True)
        y = split.hf_model(input_ids=ids.to(split.device), attention_mask=mask.to(split.device), output_attentions=True)
        torch.testing.assert_close(y.logits, x.logits, atol=0, rtol=0)
        for p, q in zip(x.attentions, y.attentions):
            torch.testing.assert_close(q, p, atol=0, rtol=0)
        torch.testing.assert_close(split.bridge(ids), whole.bridge(ids), atol=0, rtol=0)


def test_demo_split_across_cpu_and_disk_captures_like_the_whole(demo, tmp_path):
    folder = tmp_path / "offload"
    # ~1.7 MB of CPU for a 3 MB model: the embedding, lm_head and first layer stay, the rest goes to disk
    split = wb.load_model("demo", device_map="auto", max_memory={"cpu": 1_700_000}, offload_folder=folder)
    places = set(split.meta["device_map"].values())
    assert places == {"cpu", "disk"}, split.meta["device_map"]
    on_disk = [n for n, p in split.hf_model.named_parameters() if p.is_meta]
    assert on_disk and split.device == torch.device("cpu")
    assert (split.n_layers, split.n_heads, split.n_kv_heads) == (demo.n_layers, demo.n_heads, demo.n_kv_heads)
    _assert_same_capture(split, demo, PROMPTS)
    assert all(p.is_meta for n, p in split.hf_model.named_parameters() if n in on_disk)  # still offloaded after


def test_explicit_map_for_an_in_memory_model(tmp_path):
    hf = tiny_models.hf_model("llama")
    tok = tiny_models.tokenizer("llama")
    whole = wb.load_model("t", hf_model=hf, tokenizer=tok)
    device_map = {"model.embed_tokens": "cpu", "lm_head": "cpu", "model.rotary_emb": "cpu",
                  "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "disk"}
    split = wb.load_model("t", hf_model=hf, tokenizer=tok, device_map=device_map, offload_folder=tmp_path)
    assert split.meta["device_map"] == device_map
    assert any(p.is_meta for p in split.hf_model.parameters())
    assert not any(p.is_meta for p in hf.parameters())  # the caller's model stays whole
    _assert_same_capture(split, whole, tiny_models.PROMPTS)
    ids, _ = whole.to_tokens(tiny_models.PROMPTS[0])
    with torch.no_grad():
        assert len(hf(ids, output_attentions=True).attentions) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(device_map="everywhere"), r"unknown device_map 'everywhere': expected one of \['auto'"),
    (dict(device_map={}), r"device_map must be one of .* or a non-empty dict"),
    (dict(device_map={"model": "gpu"}), r"device_map\['model'\] 'gpu' is not a torch device"),
    (dict(device_map="auto", device="cpu"), r"device='cpu' and device_map= are exclusive"),
    (dict(max_memory={"cpu": "1GB"}), r"max_memory= needs device_map="),
    (dict(device_map="auto", max_memory={"cpu": "lots"}), r"max_memory\['cpu'\] must be a number of bytes"),
    (dict(device_map="auto", max_memory={"cpu": -1}), r"max_memory\['cpu'\] must be a number of bytes >= 0"),
])
def test_bad_placement(kwargs, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.load_model("demo", **kwargs)


def test_offload_folder_must_be_a_directory(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(wb.WorkbenchError, match=r"offload_folder .* is a file: expected a directory"):
        wb.load_model("demo", device_map="auto", offload_folder=file)


def test_in_memory_disk_offload_needs_a_folder():
    hf = tiny_models.hf_model("llama")
    with pytest.raises(wb.WorkbenchError, match=r"on 'disk': give offload_folder="):
        wb.load_model("t", hf_model=hf, tokenizer=tiny_models.tokenizer("llama"),
                      device_map={"": "disk"})
    with pytest.raises(wb.WorkbenchError, match=r"cannot place the model with device_map=\{'model.nothing'"):
        wb.load_model("t", hf_model=hf, tokenizer=tiny_models.tokenizer("llama"),
                      device_map={"model.nothing": "cpu"})
