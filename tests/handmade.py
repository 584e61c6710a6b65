"""A two-layer GPT-2 whose heads are known by construction, shared by the pattern, sink and
importance tests.

`handmade_gpt2` (shared by the pattern, sink and importance tests) is a two-layer GPT-2 whose q/k
weights are set by hand. Its residual stream holds three blocks, each mirrored by a negative
copy so that every position has mean 0 and the same norm (LayerNorm is then one fixed scale):
one-hot position (P), a random unit token vector × 8 (T), and the previous token's vector (S),
written by L0H0. MLPs and every other head's output are zero.

    layer 0: H0 previous token (q: position t → t−1, k: position)   H1 first-token sink
             H2 self                                                H3 t−2
    layer 1: H0 induction (q: token, k: previous token from S)      H1 self   H2 t−2   H3 t−3
"""

from __future__ import annotations

import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests import tiny_models

N_POS, D_TOK, D_MODEL, N_HEAD, D_HEAD = 64, 32, 256, 4, 64
P, PN, T, TN, S, SN = (slice(a, a + n) for a, n in ((0, 64), (64, 64), (128, 32), (160, 32), (192, 32), (224, 32)))
PREV, SINK, SELF, BACK2 = range(4)            # layer-0 heads
INDUCTION, SELF1, BACK2_1, BACK3 = range(4)   # layer-1 heads


def handmade_gpt2(*, sink_token: str | None = None, seed: int = 0):
    """The hand-set two-layer GPT-2 above. ``sink_token``: L0H1 attends to that word once it has
    appeared (a hidden sink), and to position 0 before."""
    cfg = GPT2Config(vocab_size=len(tiny_models.VOCAB), n_embd=D_MODEL, n_layer=2, n_head=N_HEAD, n_positions=N_POS,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0, layer_norm_epsilon=1e-9)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(len(tiny_models.VOCAB), D_TOK, generator=g)
    tok = 8 * tok / tok.norm(dim=-1, keepdim=True)  # (vocab, 32), norm 8
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight[:, T] = tok
        model.transformer.wte.weight[:, TN] = -tok
        model.transformer.wpe.weight[:, P] = 8 * torch.eye(N_POS)
        model.transformer.wpe.weight[:, PN] = -8 * torch.eye(N_POS)
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)

        def qk(layer, head, q_rows, k_rows, shift=0, gain=3.0):
            w = model.transformer.h[layer].attn.c_attn.weight  # (d_model, 3 d_model): qkv = x @ W
            q0, k0 = head * D_HEAD, D_MODEL + head * D_HEAD
            for i in range(q_rows.stop - q_rows.start):
                if 0 <= i - shift < D_HEAD:
                    w[q_rows.start + i, q0 + i - shift] = gain  # query of position/token i -> slot i - shift
            for j in range(k_rows.stop - k_rows.start):
                w[k_rows.start + j, k0 + j] = 1.0

        attn0 = model.transformer.h[0].attn
        qk(0, PREV, P, P, shift=1)
        qk(0, SELF, P, P)
        qk(0, BACK2, P, P, shift=2)
        if sink_token is None:  # constant query matching the key of position 0 only
            attn0.c_attn.bias[SINK * D_HEAD] = 20.0
            attn0.c_attn.weight[P.start, D_MODEL + SINK * D_HEAD] = 1.0
        else:  # constant query along one word's vector (logit 24 on that word), first token as fallback (14)
            attn0.c_attn.bias[SINK * D_HEAD:SINK * D_HEAD + D_TOK] = 3.0 * tok[tiny_models.VOCAB[sink_token]]
            for i in range(D_TOK):
                attn0.c_attn.weight[T.start + i, D_MODEL + SINK * D_HEAD + i] = 1.0
            attn0.c_attn.bias[SINK * D_HEAD + D_TOK] = 14.0
            attn0.c_attn.weight[P.start, D_MODEL + SINK * D_HEAD + D_TOK] = 1.0
        for i in range(D_TOK):  # L0H0 copies the attended token's vector into S (and -S)
            attn0.c_attn.weight[T.start + i, 2 * D_MODEL + PREV * D_HEAD + i] = 1.0
            attn0.c_proj.weight[PREV * D_HEAD + i, S.start + i] = 1.0
            attn0.c_proj.weight[PREV * D_HEAD + i, SN.start + i] = -1.0
        qk(1, INDUCTION, T, S, gain=4.0)
        qk(1, SELF1, P, P)
        qk(1, BACK2_1, P, P, shift=2)
        qk(1, BACK3, P, P, shift=3)
    model.set_attn_implementation("eager")
    return model.eval()


def handmade_prompts(n: int = 6, seed: int = 0, words: range = range(90)) -> list[str]:
    """Word prompts of 18–29 words (at most 30 tokens with BOS)."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.choice(words)}" for _ in range(rng.randrange(18, 30))) for _ in range(n)]
