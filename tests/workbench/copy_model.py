"""A hand-built two-layer GPT-2 with a known induction (copy) head, for retrieval and circuit tests.

Residual layout (one-hot slots): current token | position | previous token | output.
- L0H0, previous-token head: query position p matches key position p − 1; copies the key's
  token into the previous-token slot.
- L0H1: all weights zero (uniform attention, zero output).
- L1H0, induction head: the current token matches a key whose previous-token slot holds it,
  i.e. the position right after an earlier occurrence; copies that key's token into the output
  slot, which the unembedding reads. This is the head that retrieves.
- L1H1: a previous-token pattern whose output is never used (attends, copies nothing).
MLPs are zero; LayerNorms are plain (weight 1, bias 0) and act the same at every position
because every residual holds the same number of one-hot entries.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests import tiny_models

V = len(tiny_models.VOCAB)
P = 64
TOK, POS, PREV, OUT = 0, V, V + P, 2 * V + P
D_MODEL = 360  # >= 3V + P, divisible by 2 heads
D_HEAD = D_MODEL // 2
INDUCTION = (1, 0)
PREVIOUS = (0, 0)


def copy_model(scale: float = 30.0) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=V, n_embd=D_MODEL, n_layer=2, n_head=2, n_positions=P, tie_word_embeddings=False,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        t = model.transformer
        for ln in [t.ln_f, *(b.ln_1 for b in t.h), *(b.ln_2 for b in t.h)]:
            ln.weight.fill_(1.0)
        t.wte.weight[:, TOK:TOK + V] = torch.eye(V)
        t.wpe.weight[:, POS:POS + P] = torch.eye(P)

        def head(block, h, q_from, k_from, n, shift, v_to=None):
            w = block.attn.c_attn.weight  # (d_model, 3 d_model), used as x @ w: [q | k | v]
            o = h * D_HEAD
            for i in range(n):  # query slot i matches key slot i - shift
                w[q_from + i, o + i] = scale
                if i + shift < D_HEAD:
                    w[k_from + i, D_MODEL + o + i + shift] = scale
            if v_to is not None:  # value: the key's token; output into slot v_to
                w[TOK:TOK + V, 2 * D_MODEL + o:2 * D_MODEL + o + V] = torch.eye(V)
                block.attn.c_proj.weight[o:o + V, v_to:v_to + V] = 0.08 * torch.eye(V)

        head(t.h[0], 0, POS, POS, P, 1, v_to=PREV)   # previous-token head
        head(t.h[1], 0, TOK, PREV, V, 0, v_to=OUT)   # induction head
        head(t.h[1], 1, POS, POS, P, 1)              # attends to t-1, writes nothing
        model.lm_head.weight[:, OUT:OUT + V] = torch.eye(V)
    model.set_attn_implementation("eager")
    return model.eval()


def load(scale: float = 30.0):
    """The copy model as a `ModelHandle` (word-level tokenizer with BOS).

    ``scale`` multiplies the query and key weights. At 30 both heads' attention is saturated;
    at 1 the induction head's logit for its match is about 11 (still sharp: it puts > 0.99 on
    the match), so gradients along a path from a corrupted input are not all zero.
    """
    import workbench as wb

    return wb.load_model("copy-model", hf_model=copy_model(scale), tokenizer=tiny_models.tokenizer("gpt2"))


def key_task(n: int = 12, seed: int = 0) -> list[dict]:
    """``f a X g … a → X``; corrupted: ``f c X g … a`` (the cue before X replaced).

    In the corrupted prompt the previous-token head writes ``c`` at X's position, so the induction
    head's key there no longer matches the final ``a``: the behaviour flows input → L0H0's value
    → L0H0's output → L1H0's key → L1H0's output → logits. ``corrupted_answer`` is ``c``, which the
    corrupted run ranks level with X (uniform attention).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        w = rng.permutation(np.arange(10, 90))
        cue, other, x, fill = w[0], w[1], w[2], list(w[3:3 + int(rng.integers(2, 5))])
        head, tail = fill[:1], fill[1:]
        clean, corrupt = head + [cue, x] + tail + [cue], head + [other, x] + tail + [cue]
        rows.append({"prompt": " ".join(f"w{t}" for t in clean), "answer": f" w{x}",
                     "corrupted_prompt": " ".join(f"w{t}" for t in corrupt), "corrupted_answer": f" w{other}"})
    return rows
