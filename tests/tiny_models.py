"""Tiny seeded models built in memory (GPT-2, Llama with RoPE + GQA, BERT) with a word-level
tokenizer, shared by the test packages. Nothing here touches the network."""

from __future__ import annotations

import tempfile

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = [f"w{i}" for i in range(90)]
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
PROMPTS = ["w1 w2 w3 w4 w5 w6 w7", "w9 w8 w7", "w10 w11 w12 w13 w10 w11 w12 w13 w14"]


def tokenizer(kind: str):
    """A word-level tokenizer: BOS-prefixed for causal models, [CLS] ... [SEP] for BERT."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", VOCAB["<s>"])])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                       bos_token="<s>", eos_token="</s>")
    with tempfile.TemporaryDirectory() as tmp:  # round-trip, as a user's saved tokenizer would be
        fast.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def hf_model(kind: str, seed: int = 0):
    """A tiny seeded HF model with eager attention, in eval mode."""
    torch.manual_seed(seed)
    vocab = len(VOCAB)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = LlamaForCausalLM(cfg)
    elif kind == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)
        model = BertForMaskedLM(cfg)
    else:
        raise ValueError(kind)
    model.set_attn_implementation("eager")
    return model.eval()


KINDS = ("gpt2", "llama", "bert")
