"""Loading refuses what it cannot trust: every failure is one clear WorkbenchError, no
pickle is read, missing or unexpected weights are never filled in silently, and token ids are
never truncated."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import workbench as wb
from tests import tiny_models


@pytest.fixture
def llama_dir(tmp_path):
    """A complete tiny Llama directory (safetensors weights, config, tokenizer)."""
    path = tmp_path / "tiny-llama"
    tiny_models.hf_model("llama").save_pretrained(path)
    tiny_models.tokenizer("llama").save_pretrained(path)
    return path


def _edit_weights(path, edit):
    weights = load_file(path / "model.safetensors")
    edit(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def test_complete_directory_loads(llama_dir):
    model = wb.load_model(str(llama_dir))
    assert model.n_layers == 2 and model.meta["path"] == str(llama_dir)


def test_corrupted_config(llama_dir):
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(wb.WorkbenchError, match=r"config.json is not valid JSON"):
        wb.load_model(str(llama_dir))


@pytest.mark.parametrize("model_type, message", [
    ("no-such-arch", r"model type 'no-such-arch' in .* is not known to transformers"),
    ("t5", r"model type 't5' .* has no causal LM class"),
])
def test_model_type_that_cannot_be_loaded(llama_dir, model_type, message):
    config = json.loads((llama_dir / "config.json").read_text())
    config["model_type"] = model_type
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.load_model(str(llama_dir))


@pytest.mark.parametrize("keep", [0.5, 20])
def test_truncated_weights(llama_dir, keep):
    blob = (llama_dir / "model.safetensors").read_bytes()
    cut = int(len(blob) * keep) if keep < 1 else keep
    (llama_dir / "model.safetensors").write_bytes(blob[:cut])
    with pytest.raises(wb.WorkbenchError, match=r"the weights in .* are damaged .*truncated download"):
        wb.load_model(str(llama_dir))


def test_no_weights(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(wb.WorkbenchError, match=r"has no weights: expected model.safetensors"):
        wb.load_model(str(llama_dir))


def test_missing_weights_are_refused_not_randomised(llama_dir):
    _edit_weights(llama_dir, lambda w: w.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(wb.WorkbenchError, match=r"1 missing weight\(s\) \(would be random\): "
                                                r"model.layers.0.mlp.up_proj.weight"):
        wb.load_model(str(llama_dir))


def test_unexpected_weights_are_refused(llama_dir):
    _edit_weights(llama_dir, lambda w: w.update({f"extra.{i}.weight": torch.zeros(2) for i in range(7)}))
    with pytest.raises(wb.WorkbenchError, match=r"7 unexpected weight\(s\) \(unused\): extra.0.weight, .*"
                                                r"\(7 in all\)"):
        wb.load_model(str(llama_dir))


def test_mis_shaped_weights_are_refused(llama_dir):
    _edit_weights(llama_dir, lambda w: w.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}))
    with pytest.raises(wb.WorkbenchError, match=r"1 mis-shaped weight\(s\) .*model.layers.0.mlp.up_proj.weight"):
        wb.load_model(str(llama_dir))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "last.ckpt"])
def test_pickle_checkpoints_are_never_loaded(llama_dir, name, monkeypatch):
    weights = load_file(llama_dir / "model.safetensors")
    (llama_dir / "model.safetensors").unlink()
    torch.save(weights, llama_dir / name)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(wb.WorkbenchError) as err:
        wb.load_model(str(llama_dir))
    message = str(err.value)
    assert f"{llama_dir / name} is a pickle checkpoint" in message
    assert "save_pretrained" in message and "use_safetensors=False" in message
    assert unpickled == []


def test_pickle_beside_safetensors_is_ignored(llama_dir, monkeypatch):
    torch.save({"x": torch.zeros(1)}, llama_dir / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    assert wb.load_model(str(llama_dir)).n_layers == 2


def test_no_tokenizer(llama_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (llama_dir / name).unlink(missing_ok=True)
    with pytest.raises(wb.WorkbenchError, match=r"has no usable tokenizer .*expected tokenizer.json"):
        wb.load_model(str(llama_dir))


@pytest.mark.parametrize("device, message", [
    ("gpu", r"device 'gpu' is not a torch device: expected 'cpu', 'cuda'"),
    ("meta", r"device 'meta' holds no data"),
    (3.5, r"device must be a string like 'cpu'"),
])
def test_bad_device(device, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.load_model("demo", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA on a machine without it")
def test_unavailable_device():
    with pytest.raises(wb.WorkbenchError, match=r"device 'cuda:0' is not available: this torch .* sees no cuda"):
        wb.load_model("demo", device="cuda:0")


@pytest.mark.parametrize("dtype, expected", [
    ("float16", torch.float16), ("bf16", torch.bfloat16), ("torch.float64", torch.float64),
    (torch.float16, torch.float16), ("auto", torch.float32), (None, torch.float32),
])
def test_dtype_names_are_accepted(dtype, expected):
    hf = tiny_models.hf_model("llama")
    model = wb.load_model("t", hf_model=hf, tokenizer=tiny_models.tokenizer("llama"), dtype=dtype)
    assert {p.dtype for p in model.hf_model.parameters()} == {expected}
    assert {p.dtype for p in hf.parameters()} == {torch.float32}
    ids, _ = model.to_tokens("w1 w2")
    with torch.no_grad():
        assert model.bridge(ids).dtype == expected


def test_dtype_string_on_a_directory(llama_dir):
    model = wb.load_model(str(llama_dir), dtype="float16")
    assert {p.dtype for p in model.hf_model.parameters()} == {torch.float16}


@pytest.mark.parametrize("dtype, message", [
    ("float8", r"unknown dtype 'float8': expected a torch.dtype or one of"),
    (torch.int8, r"dtype torch.int8 is not a floating-point dtype"),
    (16, r"unknown dtype 16"),
])
def test_bad_dtype(dtype, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        wb.load_model("demo", dtype=dtype)


def test_bad_in_memory_inputs():
    with pytest.raises(wb.WorkbenchError, match=r"hf_model must be a transformers model .* got str"):
        wb.load_model(hf_model="gpt2", tokenizer=tiny_models.tokenizer("gpt2"))
    with pytest.raises(wb.WorkbenchError, match=r"tokenizer= must be a transformers tokenizer .* got dict"):
        wb.load_model(hf_model=tiny_models.hf_model("gpt2"), tokenizer={})


# -- token ids ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return wb.load_model("demo")


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([[2.0, 5.7]]), r"token ids must be integers; got a tensor of torch.float32 \(never truncated\)"),
    (np.array([[2.0, 5.0]]), r"token ids must be integers; got a numpy array of float64"),
    ([[2, 5.0]], r"token id at prompt 0, position 1 must be an int; got 5.0 \(float; never truncated\)"),
    ([[2, True]], r"token id at prompt 0, position 1 must be an int; got True"),
    (torch.tensor([[True, False]]), r"got a tensor of torch.bool"),
    (["w1", [2, 5]], r"prompts mixes text and token ids"),
    ([[2, 5], []], r"a token-id prompt is empty"),
])
def test_float_token_ids_are_refused(demo, ids, message):
    with pytest.raises(wb.WorkbenchError, match=message):
        demo.to_tokens(ids)


def test_numpy_integer_token_ids_are_accepted(demo):
    expected, _ = demo.to_tokens(torch.tensor([[2, 5, 7]]))
    for ids in (np.array([[2, 5, 7]], dtype=np.int32), [[np.int64(2), np.int16(5), 7]], [np.array([2, 5, 7])]):
        got, mask = demo.to_tokens(ids)
        assert got.dtype == torch.long and torch.equal(got, expected) and bool(mask.all())
    assert demo.check_layer(np.int64(1)) == 1 and demo.check_head(np.int32(0)) == 0
    with pytest.raises(wb.WorkbenchError, match=r"layer must be an int; got 1.5"):
        demo.check_layer(1.5)


# -- MiniLM: the one expected gap, handled explicitly ------------------------------------------
def test_minilm_untrained_head_is_the_only_gap_and_is_seeded(minilm):
    again = wb.load_model("minilm")
    state = torch.random.get_rng_state()
    third = wb.load_model("minilm")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    for name, p in minilm.hf_model.named_parameters():  # a fixed seed: the MLM head is the same each load
        assert torch.equal(p, dict(again.hf_model.named_parameters())[name]), name
        assert torch.equal(p, dict(third.hf_model.named_parameters())[name]), name
