"""Sink and local mass from a known lse: only the few keys they cover, never a whole row.

sink_mass_t = Σ_{j < sink_tokens} p_tj and local_mass_t = Σ_{t' - window < j <= t'} p_tj (t' =
t + M - N, the query's key position) with p_tj = exp(s_tj - lse_t): O(N · (sink_tokens + window))
work, shared by the one-pass reference and the flash route. Masked keys (causal, padding) and
rows with lse = -inf (no visible key) add nothing.
"""

from __future__ import annotations

import torch

#: Logits materialized per chunk of the band pass.
CHUNK_ELEMENTS = 1 << 20


def exp_clamped(z: torch.Tensor) -> torch.Tensor:
    """e^z with z clamped to [-80, 80] first: torch.exp takes a slow path (about 1000x) for
    results that underflow or overflow fp32 (|z| > ~87), masked -inf logits included. Callers
    zero the entries they mask; a kept entry below e^-80 (1.8e-35) changes no fp32 sum."""
    return torch.exp(z.clamp(-80.0, 80.0))


def group_rows(q: torch.Tensor, Hkv: int, t0: int, t1: int) -> torch.Tensor:
    """Query rows [t0, t1) with the G heads that share a key head stacked: (B, Hkv, G*c, d)."""
    B, Hq, _, d = q.shape
    return q[:, :, t0:t1].float().reshape(B, Hkv, (Hq // Hkv) * (t1 - t0), d)


def _mass(q, kt, lse, key_padding_mask, t0, t1, lo, hi, keep, scale):
    """Σ_j exp(s_tj - lse_t) over keys [lo, hi) where keep (c, hi - lo) holds, rows [t0, t1)."""
    B, Hq = q.shape[:2]
    s = torch.matmul(group_rows(q, kt.shape[1], t0, t1), kt[..., lo:hi])  # (B, Hkv, G*c, w)
    lse_c = lse[:, :, t0:t1, None]  # (B, Hq, c, 1)
    p = exp_clamped(s.view(B, Hq, t1 - t0, hi - lo) * scale - lse_c).masked_fill_(~keep, 0.0)
    if key_padding_mask is not None:
        p.masked_fill_(~key_padding_mask[:, None, None, lo:hi], 0.0)
    dead = lse_c == float("-inf")
    if bool(dead.any()):  # rows with no visible key (padding only)
        p.masked_fill_(dead, 0.0)
    return p.sum(-1)


def sink_mass(q, k, lse, *, causal: bool, scale: float, sink_tokens: int,
              key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hq, N) attention on keys [0, sink_tokens). q: (B, Hq, N, d), k: (B, Hkv, M, d)."""
    B, Hq, N, _ = q.shape
    M = k.shape[2]
    S = min(sink_tokens, M)
    out = torch.zeros(B, Hq, N, device=q.device)
    if S == 0:
        return out
    kt = k.float().transpose(-1, -2)  # (B, Hkv, d, M)
    chunk = max(1, CHUNK_ELEMENTS // (B * Hq * S))
    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        qpos = torch.arange(t0, t1, device=q.device)[:, None] + (M - N)
        keys = torch.arange(S, device=q.device)[None, :]
        keep = keys <= qpos if causal else torch.ones(t1 - t0, S, dtype=torch.bool, device=q.device)
        out[:, :, t0:t1] = _mass(q, kt, lse, key_padding_mask, t0, t1, 0, S, keep, scale)
    return out


def local_mass(q, k, lse, *, scale: float, window: int,
               key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hq, N) attention on the keys (t' - window, t'], by bands of query rows."""
    B, Hq, N, _ = q.shape
    M = k.shape[2]
    out = torch.zeros(B, Hq, N, device=q.device)
    if window == 0:
        return out
    offset = M - N  # query t sits at key position t + offset
    kt = k.float().transpose(-1, -2)  # (B, Hkv, d, M)
    chunk = max(1, min(N, max(64, window), CHUNK_ELEMENTS // (B * Hq * 2 * window)))
    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        lo, hi = max(0, t0 + offset - window + 1), min(M, t1 + offset)  # keys any row's window holds
        qpos = torch.arange(t0, t1, device=q.device)[:, None] + offset
        keys = torch.arange(lo, hi, device=q.device)[None, :]
        keep = (keys > qpos - window) & (keys <= qpos)  # (c, w)
        out[:, :, t0:t1] = _mass(q, kt, lse, key_padding_mask, t0, t1, lo, hi, keep, scale)
    return out
