"""Chunked PyTorch reference for head statistics: the readable spec of the kernel contract.

Queries are processed in chunks of rows so that at most about MAX_CHUNK_ELEMENTS logits
(B · Hq · chunk · M) exist at once; memory is O(chunk · M) per call, never O(N · M). Each chunk
sees its whole key row, so its statistics are exact; the row statistics use the same
shifted sums as the Triton kernel (m = row max, l = Σ e^{s-m}, u = Σ e^{s-m}(s-m)):

    lse = m + log l    entropy = log l - u / l    max_prob = 1 / l
    sink_mass = Σ_{j < sink} e^{s-m} / l    col_mass[j] = Σ_t e^{s_tj - lse_t}

Runs on any device; GQA shares each key head across its query group without expanding K.
"""

from __future__ import annotations

import torch

from .stats import HeadStats

# Logits materialized per chunk (32 MiB in fp32); the working set is a few times this.
MAX_CHUNK_ELEMENTS = 1 << 23


def head_stats_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    sink_tokens: int,
    window: int,
    key_padding_mask: torch.Tensor | None,
    column_mass: bool,
) -> HeadStats:
    """Exact head statistics by query chunks (inputs already validated by kernels.head_stats).

    q: (B, Hq, N, d), k: (B, Hkv, M, d), key_padding_mask: (B, M) bool or None.
    Returns HeadStats with rows (B, Hq, N) and col_mass (B, Hq, M) or None.
    """
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = Hq // Hkv
    offset = M - N  # query t sits at key position t + offset
    dev = q.device
    kf = k.float().transpose(-1, -2)  # (B, Hkv, d, M)
    keys = torch.arange(M, device=dev)

    row = {n: torch.empty(B, Hq, N, device=dev) for n in ("lse", "entropy", "max_prob", "sink", "local")}
    argmax = torch.empty(B, Hq, N, dtype=torch.int64, device=dev)
    col = torch.zeros(B, Hq, M, device=dev) if column_mass else None
    chunk = max(1, MAX_CHUNK_ELEMENTS // (B * Hq * M))

    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        c = t1 - t0
        hi = min(M, t1 + offset) if causal else M  # keys any query of the chunk can see

        # step 1: scaled logits of the chunk, in fp32
        qc = q[:, :, t0:t1].float().reshape(B, Hkv, G * c, d)  # (B, Hkv, G*c, d): group rows share K
        s = torch.matmul(qc, kf[..., :hi]).reshape(B, Hq, c, hi) * scale  # (B, Hq, c, hi)

        # step 2: mask keys the query may not see (causal, padding)
        qpos = torch.arange(t0, t1, device=dev) + offset  # (c,)
        valid = torch.ones(1, 1, c, hi, dtype=torch.bool, device=dev)
        if causal:
            valid = valid & (keys[None, :hi] <= qpos[:, None])  # (1, 1, c, hi)
        if key_padding_mask is not None:
            valid = valid & key_padding_mask[:, None, None, :hi]  # (B, 1, c, hi)
        s = s.masked_fill(~valid, float("-inf"))

        # step 3: shifted exponentials; fully masked rows get m = 0 and e = 0 everywhere
        m = s.amax(dim=-1, keepdim=True)  # (B, Hq, c, 1)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        z = s - m
        e = torch.exp(z)
        l = e.sum(dim=-1)  # (B, Hq, c)
        u = (e * torch.where(valid, z, torch.zeros_like(z))).sum(dim=-1)
        live = l > 0
        l_safe = torch.where(live, l, torch.ones_like(l))

        # step 4: row statistics
        rows = slice(t0, t1)
        row["lse"][:, :, rows] = m.squeeze(-1) + torch.log(l)  # log 0 = -inf on dead rows
        ent = torch.log(l_safe) - u / l_safe
        row["entropy"][:, :, rows] = torch.where(live, ent.clamp_min(0.0), 0.0)
        row["max_prob"][:, :, rows] = torch.where(live, 1.0 / l_safe, 0.0)
        argmax[:, :, rows] = torch.where(live, s.argmax(dim=-1), -1)
        row["sink"][:, :, rows] = e[..., :sink_tokens].sum(dim=-1) / l_safe
        local = (keys[None, :hi] > qpos[:, None] - window) & (keys[None, :hi] <= qpos[:, None])  # (c, hi)
        row["local"][:, :, rows] = (e * local).sum(dim=-1) / l_safe

        # step 5: column mass from the exact row normalizer
        if col is not None:
            col[..., :hi] += (e / l_safe[..., None]).sum(dim=-2)  # (B, Hq, hi)

    return HeadStats(
        lse=row["lse"],
        entropy=row["entropy"],
        max_prob=row["max_prob"],
        argmax=argmax,
        sink_mass=row["sink"],
        local_mass=row["local"],
        col_mass=col,
    )
