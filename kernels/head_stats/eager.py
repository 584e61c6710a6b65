"""Eager oracle: materialize the whole softmax and reduce it. For tests and benchmarks only.

Memory is O(B · Hq · N · M) (about two fp32 N×M tensors per head at peak); use the reference
or Triton backend for anything long.
"""

from __future__ import annotations

import torch

from .stats import HeadStats


def visible_keys(
    N: int, M: int, *, causal: bool, key_padding_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Which keys each query may attend to: bool (B or 1, 1, N, M), True = visible.

    Queries are aligned to the last N keys: query t sits at key position t + (M - N).
    """
    keys = torch.arange(M, device=device)
    valid = torch.ones(1, 1, N, M, dtype=torch.bool, device=device)
    if causal:
        qpos = torch.arange(N, device=device) + (M - N)
        valid = valid & (keys[None, :] <= qpos[:, None])  # (1, 1, N, M)
    if key_padding_mask is not None:
        valid = valid & key_padding_mask[:, None, None, :]  # (B, 1, N, M)
    return valid


def head_stats_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    sink_tokens: int,
    window: int,
    key_padding_mask: torch.Tensor | None,
    column_mass: bool,
    argmax: bool = True,
    lse: torch.Tensor | None = None,
) -> HeadStats:
    """Row and column statistics from the materialized softmax (inputs already validated).

    q: (B, Hq, N, d), k: (B, Hkv, M, d). Returns HeadStats; see kernels.head_stats. A given
    `lse` is not used: the oracle computes everything from the logits themselves.
    """
    B, Hq, N, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)  # (B, Hq, M, d): head h uses kv head h // G

    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, Hq, N, M)
    valid = visible_keys(N, M, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
    s.masked_fill_(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, Hq, N), -inf on fully masked rows
    live = torch.isfinite(lse)
    top = torch.where(live, s.argmax(dim=-1), -1) if argmax else None

    p = torch.softmax(s, dim=-1).nan_to_num_(0.0)  # fully masked rows: NaN -> 0
    del s
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    max_prob = p.amax(dim=-1)
    sink_mass = p[..., :sink_tokens].sum(dim=-1)

    keys = torch.arange(M, device=q.device)
    qpos = torch.arange(N, device=q.device) + (M - N)
    local = (keys[None, :] > qpos[:, None] - window) & (keys[None, :] <= qpos[:, None])  # (N, M)
    local_mass = (p * local).sum(dim=-1)
    col_mass = p.sum(dim=-2) if column_mass else None  # (B, Hq, M)
    return HeadStats(
        lse=lse,
        entropy=entropy,
        max_prob=max_prob,
        argmax=top,
        sink_mass=sink_mass,
        local_mass=local_mass,
        col_mass=col_mass,
    )
