"""Attention output and head statistics together, at about the cost of the attention itself.

The forward's own flash attention returns each row's log-sum-exp; with it every statistic is
one pass over the logits. Routes (inputs already validated by `kernels.attention_stats`), timed
by `python -m kernels.bench --device cpu` (N = 16384, 4 heads, d = 64, 2 threads; SDPA 467 ms):

- ``"native"`` (CPU, the default there; 1010 ms for out and every statistic): out and lse from
  the CPU flash kernel with the model's own values (the forward itself), then every statistic in
  ONE sweep of a compiled C loop given lse (native.py, onepass.c; 534 ms), column mass and argmax
  included when asked. `kernels.attention_stats` takes ``"flash"`` instead where no C compiler
  builds the loop or d > 256.
- ``"flash"`` (CPU, no compiler needed; 1990 ms): every statistic from identities over further
  calls of the CPU flash-attention kernel (`aten._scaled_dot_product_flash_attention_for_cpu`,
  which returns lse); no N×N tensor at any point:
    * out, lse and entropy from ONE call with values ``[v, k]`` (queries and keys zero-padded to
      the same width): H_t = lse_t - scale · q_t · Σ_j p_tj k_j;
    * max_prob = exp(m - lse) with the row max m = lse(β s) / β, one call at temperature β = 2^24
      (0 <= lse(βs)/β - m <= log(M)/β, below fp32 resolution of the logits);
    * sink and local mass from the logits of those few keys only, exp(s - lse) (bands.py);
    * col_mass (when asked) from the call with the roles swapped: keys ``[k·scale, 1]`` query
      queries ``[q, -lse]``, both sequences flipped so that ``is_causal`` keeps t >= j;
      col_j = exp(lse'_j);
    * argmax (when asked) from a chunked logits pass (no exponentials).
- ``"reference"`` / ``"triton"``: out and lse from the device's flash attention (CPU kernel
  above; on CUDA FlashAttention, or memory-efficient attention for fp32), then the one-pass
  statistics of `head_stats(..., lse=lse)` in that backend.

All routes need no padding mask, and causal attention with N == M (or N == 1, a single query
that sees every key): the flash kernels align `is_causal` top-left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bands import group_rows, local_mass, sink_mass
from .stats import HeadStats

#: Temperature of the row-max call: lse(βs)/β is within log(M)/β of max s (Boyd & Vandenberghe,
#: the log-sum-exp bound max s <= lse(s) <= max s + log M, applied to βs).
BETA = 2.0**24
#: Logits materialized per chunk by the argmax pass.
CHUNK_ELEMENTS = 1 << 20

_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def device_attention(q, k, v, *, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Hq, N, dv), lse (B, Hq, N) fp32, natural log) from the device's flash attention.

    GQA is passed through on CPU (the kernel maps head h to key head h // G) and expanded on CUDA.
    """
    if not q.is_cuda:
        d, dv = q.shape[-1], v.shape[-1]
        if d != dv:  # the CPU kernel wants one head size: zero columns change no logit, no output
            w = max(d, dv)
            q, k, v = (F.pad(t, (0, w - t.shape[-1])) for t in (q, k, v))
        out, lse = _cpu_flash(q, k, v, 0.0, causal, scale=scale)
        return out[..., :dv], lse
    G = q.shape[1] // k.shape[1]
    if G > 1:
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, Hq, M, d)
    if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1] <= 256:
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
            return out, lse.float()
        except RuntimeError:  # an architecture or shape FlashAttention does not take
            pass
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)[:2]
    return out, lse[..., : q.shape[2]].float()  # lse may be padded to a multiple of 32 rows


def _col_mass(q, k, lse, *, causal: bool, scale: float) -> torch.Tensor:
    """Attention each key receives, Σ_t exp(s_tj - lse_t), from one flash call with the roles
    swapped: (B, Hq, M). The extra dimension folds -lse into the dot product."""
    B, Hq, N, d = q.shape
    G = Hq // k.shape[1]
    kq = torch.cat([k.repeat_interleave(G, dim=1) * scale, k.new_ones(B, Hq, k.shape[2], 1)], -1)  # (B, Hq, M, d+1)
    qk = torch.cat([q, -lse[..., None]], -1)  # (B, Hq, N, d+1)
    if causal:  # key j is seen by queries t >= j: flipped, that is top-left is_causal
        kq, qk = kq.flip(2), qk.flip(2)
    _, lse_col = _cpu_flash(kq, qk, torch.zeros_like(qk), 0.0, causal, scale=1.0)  # (B, Hq, M)
    if causal:
        lse_col = lse_col.flip(2)
    return torch.exp(lse_col)  # lse_col <= log N: no overflow


def _argmax(q, k, *, causal: bool, scale: float) -> torch.Tensor:
    """Key index of each row's largest logit (first on ties), by chunks of rows: (B, Hq, N) int64."""
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    out = torch.empty(B, Hq, N, dtype=torch.int64)
    chunk = max(1, CHUNK_ELEMENTS // (B * Hq * M))
    kt = k.transpose(-1, -2)  # (B, Hkv, d, M)
    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        hi = t1 if causal else M
        s = torch.matmul(group_rows(q, Hkv, t0, t1), kt[..., :hi]).view(B, Hq, t1 - t0, hi)  # (B, Hq, c, hi)
        if causal:
            s = s.masked_fill_(torch.arange(hi)[None, :] > torch.arange(t0, t1)[:, None], float("-inf"))
        out[:, :, t0:t1] = s.argmax(-1)
    return out


def attention_stats_native(q, k, v, *, causal: bool, scale: float, sink_tokens: int, window: int,
                           column_mass: bool, argmax: bool) -> tuple[torch.Tensor, HeadStats]:
    """The compiled CPU route: the forward's flash attention for out and lse, then the one-pass
    statistics from lse (native.py); statistics in fp32, out in v's dtype."""
    from .native import head_stats_native

    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    out, lse = device_attention(q, k, v, causal=causal, scale=scale)
    stats = head_stats_native(q, k, lse=lse, causal=causal, scale=scale, sink_tokens=sink_tokens, window=window,
                              key_padding_mask=None, column_mass=column_mass, argmax=argmax)
    return out.to(dtype), stats


def attention_stats_flash(q, k, v, *, causal: bool, scale: float, sink_tokens: int, window: int,
                          column_mass: bool, argmax: bool) -> tuple[torch.Tensor, HeadStats]:
    """The CPU route: out and every statistic from CPU flash-attention calls (module docstring).
    ``causal`` comes from `kernels.attention_stats`, already False for a single query."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()  # statistics in fp32, as every backend
    B, Hq, N, d = q.shape
    dv = v.shape[-1]

    # step 1: the forward itself, with the keys riding along as extra values
    pad_q, pad_k = q.new_zeros(B, Hq, N, dv), k.new_zeros(*k.shape[:3], dv)
    out_vk, lse = _cpu_flash(torch.cat([q, pad_q], -1), torch.cat([k, pad_k], -1), torch.cat([v, k], -1),
                             0.0, causal, scale=scale)  # out_vk: (B, Hq, N, dv + d)
    out, mean_k = out_vk[..., :dv], out_vk[..., dv:]  # mean_k = Σ_j p_tj k_j
    entropy = (lse - scale * (q * mean_k).sum(-1)).clamp_min(0.0)

    # step 2: the row max, from lse at temperature β
    _, lse_beta = _cpu_flash(q, k, torch.zeros_like(k), 0.0, causal, scale=scale * BETA)
    max_prob = torch.exp(lse_beta / BETA - lse).clamp_max(1.0)  # >= 1/M: no underflow

    # step 3: the few keys of the sink and the local window
    sink = sink_mass(q, k, lse, causal=causal, scale=scale, sink_tokens=sink_tokens)
    local = local_mass(q, k, lse, scale=scale, window=window)
    stats = HeadStats(
        lse=lse, entropy=entropy, max_prob=max_prob,
        argmax=_argmax(q, k, causal=causal, scale=scale) if argmax else None,
        sink_mass=sink, local_mass=local,
        col_mass=_col_mass(q, k, lse, causal=causal, scale=scale) if column_mass else None,
    )  # fmt: skip
    return out.to(dtype), stats
