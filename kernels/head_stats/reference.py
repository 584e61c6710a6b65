"""Chunked PyTorch reference for head statistics: the readable spec of the kernel contract.

Queries are processed in chunks of rows so that at most about MAX_CHUNK_ELEMENTS logits
(B · Hq · chunk · M) exist at once; memory is O(chunk · M) per call, never O(N · M). Each chunk
sees its whole key row, so its statistics are exact. Two ways through a chunk:

- without lse, the shifted sums of the Triton kernel's first pass (m = row max,
  l = Σ e^{s-m}, u = Σ e^{s-m}(s-m)):
      lse = m + log l    entropy = log l - u / l    max_prob = 1 / l
      sink_mass = Σ_{j < sink} e^{s-m} / l    col_mass[j] = Σ_t e^{s_tj - lse_t}
- with the row's lse given (from the forward's own attention), one pass, p = e^{s - lse}:
      entropy = Σ p (lse - s)    max_prob = e^{max s - lse}    col_mass = Σ_t p
  `onepass_chunk` is that pass over a chunk as one function; with WORKBENCH_COMPILE=1 it runs
  through `torch.compile` (fused loops over the logits), falling back to eager if compiling
  fails. Sink and local mass touch only their few keys (bands.py).

Runs on any device; GQA shares each key head across its query group without expanding K.
"""

from __future__ import annotations

import os
import warnings

import torch

from .bands import exp_clamped, group_rows, local_mass, sink_mass
from .stats import HeadStats

# Logits materialized per chunk (32 MiB in fp32); the working set is a few times this.
MAX_CHUNK_ELEMENTS = 1 << 23
# The one-pass chunk is smaller: its logits stay in cache between the matmul and the reductions.
ONEPASS_CHUNK_ELEMENTS = 1 << 19
#: torch.compile the one-pass chunk function (first call compiles: seconds; later calls are fused).
COMPILE = os.environ.get("WORKBENCH_COMPILE", "0") == "1"
_compiled = None


def _visible(qpos: torch.Tensor, hi: int, causal: bool, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """(B or 1, 1, c, hi) bool: which of keys [0, hi) each query (at key position qpos) sees."""
    keys = torch.arange(hi, device=qpos.device)
    valid = torch.ones(1, 1, qpos.numel(), hi, dtype=torch.bool, device=qpos.device)
    if causal:
        valid = valid & (keys[None, :] <= qpos[:, None])  # (1, 1, c, hi)
    if key_padding_mask is not None:
        valid = valid & key_padding_mask[:, None, None, :hi]  # (B, 1, c, hi)
    return valid


def _local(qpos: torch.Tensor, hi: int, window: int) -> torch.Tensor:
    """(c, hi) bool: keys (qpos - window, qpos], the query's local window."""
    keys = torch.arange(hi, device=qpos.device)
    return (keys[None, :] > qpos[:, None] - window) & (keys[None, :] <= qpos[:, None])


def onepass_chunk(qc, kf, lse_c, kmask, t0: int, offset: int, causal: bool, scale: float, want_col: bool,
                  want_arg: bool):
    """Row and column statistics of one chunk of c query rows from their known lse, in one pass.

    qc: (B, Hkv, G*c, d) fp32 queries, the G heads of a group stacked; kf: (B, Hkv, d, hi) fp32 keys
    (transposed); lse_c: (B, Hq, c) fp32; kmask: (B, hi) bool or None; query row i sits at key
    position t0 + i + offset. Returns entropy, max_prob, argmax (or None), each (B, Hq, c), and the
    chunk's column sums (B, Hq, hi) or None.
    """
    B = qc.shape[0]
    hi = kf.shape[-1]
    Hq, c = lse_c.shape[1], lse_c.shape[2]
    s = torch.matmul(qc, kf).view(B, Hq, c, hi) * scale  # (B, Hq, c, hi) logits
    qpos = torch.arange(c, device=qc.device) + (t0 + offset)
    valid = _visible(qpos, hi, causal, kmask)
    live = lse_c > float("-inf")  # (B, Hq, c); dead rows (no visible key) have lse = -inf
    lse_safe = torch.where(live, lse_c, 0.0)[..., None]
    keep = valid & live[..., None]
    z = torch.where(keep, s - lse_safe, 0.0)  # log p where visible
    p = torch.where(keep, exp_clamped(z), 0.0)
    entropy = torch.where(live, -(p * z).sum(-1), 0.0).clamp_min(0.0)
    s = torch.where(valid, s, float("-inf"))
    best = s.amax(-1)  # (B, Hq, c)
    max_prob = torch.where(live, torch.exp(best - lse_safe[..., 0]), 0.0)
    arg = torch.where(live, s.argmax(-1), -1) if want_arg else None
    col = p.sum(-2) if want_col else None  # (B, Hq, hi)
    return entropy, max_prob, arg, col


def _chunk_function():
    """`onepass_chunk`, compiled when COMPILE is set and compiling works; else eager."""
    global _compiled
    if not COMPILE:
        return onepass_chunk
    if _compiled is None:
        _compiled = torch.compile(onepass_chunk, dynamic=True)
    return _compiled


def _run_chunk(*args):
    global COMPILE
    fn = _chunk_function()
    if fn is onepass_chunk:
        return fn(*args)
    try:
        return fn(*args)
    except Exception as exc:  # compiler missing or failing: the eager function is the same math
        COMPILE = False
        warnings.warn(f"torch.compile of the one-pass chunk failed ({type(exc).__name__}: {exc}); "
                      "running it eagerly", stacklevel=3)
        return onepass_chunk(*args)


def _rows(B, Hq, N, dev, argmax: bool):
    row = {n: torch.empty(B, Hq, N, device=dev) for n in ("lse", "entropy", "max_prob", "sink", "local")}
    arg = torch.empty(B, Hq, N, dtype=torch.int64, device=dev) if argmax else None
    return row, arg


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
    argmax: bool = True,
    lse: torch.Tensor | None = None,
) -> HeadStats:
    """Exact head statistics by query chunks (inputs already validated by kernels.head_stats).

    q: (B, Hq, N, d), k: (B, Hkv, M, d), key_padding_mask: (B, M) bool or None, lse: (B, Hq, N)
    or None. With lse, one pass per chunk (`onepass_chunk`); without, the shifted sums.
    Returns HeadStats with rows (B, Hq, N), col_mass (B, Hq, M) or None, argmax or None.
    """
    if lse is not None:
        return _reference_onepass(q, k, lse.float(), causal=causal, scale=scale, sink_tokens=sink_tokens,
                                  window=window, key_padding_mask=key_padding_mask, column_mass=column_mass,
                                  argmax=argmax)
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    offset = M - N  # query t sits at key position t + offset
    dev = q.device
    kf = k.float().transpose(-1, -2)  # (B, Hkv, d, M)
    row, arg = _rows(B, Hq, N, dev, argmax)
    col = torch.zeros(B, Hq, M, device=dev) if column_mass else None
    chunk = max(1, MAX_CHUNK_ELEMENTS // (B * Hq * M))

    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        c = t1 - t0
        hi = min(M, t1 + offset) if causal else M  # keys any query of the chunk can see

        # step 1: scaled logits of the chunk, in fp32
        qc = group_rows(q, Hkv, t0, t1)  # (B, Hkv, G*c, d): group rows share K
        s = torch.matmul(qc, kf[..., :hi]).reshape(B, Hq, c, hi) * scale  # (B, Hq, c, hi)

        # step 2: mask keys the query may not see (causal, padding)
        qpos = torch.arange(t0, t1, device=dev) + offset  # (c,)
        valid = _visible(qpos, hi, causal, key_padding_mask)
        s = s.masked_fill(~valid, float("-inf"))

        # step 3: shifted exponentials; fully masked rows get m = 0 and e = 0 everywhere
        m = s.amax(dim=-1, keepdim=True)  # (B, Hq, c, 1)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        z = torch.where(valid, s - m, 0.0)
        e = torch.where(valid, exp_clamped(z), 0.0)
        l = e.sum(dim=-1)  # (B, Hq, c)
        u = (e * z).sum(dim=-1)
        live = l > 0
        l_safe = torch.where(live, l, torch.ones_like(l))

        # step 4: row statistics
        rows = slice(t0, t1)
        row["lse"][:, :, rows] = m.squeeze(-1) + torch.log(l)  # log 0 = -inf on dead rows
        ent = torch.log(l_safe) - u / l_safe
        row["entropy"][:, :, rows] = torch.where(live, ent.clamp_min(0.0), 0.0)
        row["max_prob"][:, :, rows] = torch.where(live, 1.0 / l_safe, 0.0)
        if arg is not None:
            arg[:, :, rows] = torch.where(live, s.argmax(dim=-1), -1)
        row["sink"][:, :, rows] = e[..., :sink_tokens].sum(dim=-1) / l_safe
        row["local"][:, :, rows] = (e * _local(qpos, hi, window)).sum(dim=-1) / l_safe

        # step 5: column mass from the exact row normalizer
        if col is not None:
            col[..., :hi] += (e / l_safe[..., None]).sum(dim=-2)  # (B, Hq, hi)

    return _result(row, arg, col)


def _reference_onepass(q, k, lse, *, causal, scale, sink_tokens, window, key_padding_mask, column_mass, argmax):
    """One pass over the logits per chunk, from the given lse (B, Hq, N); sink and local mass
    from their own few keys."""
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    offset = M - N
    kf = k.float().transpose(-1, -2)  # (B, Hkv, d, M)
    entropy, max_prob = torch.empty(B, Hq, N, device=q.device), torch.empty(B, Hq, N, device=q.device)
    arg = torch.empty(B, Hq, N, dtype=torch.int64, device=q.device) if argmax else None
    col = torch.zeros(B, Hq, M, device=q.device) if column_mass else None
    chunk = max(1, ONEPASS_CHUNK_ELEMENTS // (B * Hq * M))
    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        hi = min(M, t1 + offset) if causal else M  # keys any query of the chunk can see
        kmask = None if key_padding_mask is None else key_padding_mask[:, :hi]
        ent, maxp, a, part = _run_chunk(group_rows(q, Hkv, t0, t1), kf[..., :hi], lse[:, :, t0:t1], kmask, t0,
                                        offset, causal, scale, column_mass, argmax)  # rows (B, Hkv, G*c, d)
        entropy[:, :, t0:t1], max_prob[:, :, t0:t1] = ent, maxp
        if arg is not None:
            arg[:, :, t0:t1] = a
        if col is not None:
            col[..., :hi] += part
    return HeadStats(
        lse=lse, entropy=entropy, max_prob=max_prob, argmax=arg,
        sink_mass=sink_mass(q, k, lse, causal=causal, scale=scale, sink_tokens=sink_tokens,
                            key_padding_mask=key_padding_mask),
        local_mass=local_mass(q, k, lse, scale=scale, window=window, key_padding_mask=key_padding_mask),
        col_mass=col,
    )


def _result(row, arg, col) -> HeadStats:
    return HeadStats(lse=row["lse"], entropy=row["entropy"], max_prob=row["max_prob"], argmax=arg,
                     sink_mass=row["sink"], local_mass=row["local"], col_mass=col)
