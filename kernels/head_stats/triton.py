"""Fused Triton kernels for head statistics (imported lazily by kernels.head_stats).

Pass 1 (`_row_stats_kernel`), query-major: one program per (query block, batch·head) streams
the key blocks with an online softmax in base 2 and keeps, per row, the running max m, the
normalizer l = Σ 2^{s-m}, u = Σ 2^{s-m}(s-m), the sink and local sums and the argmax; all are
rescaled by 2^{m_old - m_new} when the max moves. Entropy = ln2 · (log2 l - u / l).
Pass 2 (`_col_mass_kernel`), key-major: one program per (key block, batch·head) owns its
column sums and loops over the query blocks that can see it, p = 2^{s - lse2} from pass 1's
lse: exact and deterministic, no atomics. Skipped when column_mass=False.
One pass (`_onepass_kernel`, triton_onepass.py) replaces both for callers that have each row's
lse already (the forward's own flash attention returns it); the two passes stay for callers
with no lse.

GQA lives in the grid: the program for query head h reads key head h // G. Causal programs
skip key (pass 1) / query (pass 2) blocks that are entirely masked. Logits accumulate in fp32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .stats import HeadStats
from .triton_env import INTERPRET, LN2, LOG2E
from .triton_onepass import _onepass_kernel


@triton.jit
def _row_block(
    q, k_ptrs, mask_ptrs, start_n, qpos, m_i, l_i, u_i, sink_i, local_i, arg_i,
    M, D, scale_log2, sink_tokens, window, local_lo, local_hi,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LOCAL: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, IEEE: tl.constexpr, WANT_ARG: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # one key block of pass 1; MASKED=False for blocks every row sees whole (no tails)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if MASKED:
        k = tl.load(k_ptrs, mask=(offs_n[:, None] < M) & (offs_d[None, :] < D), other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
    else:
        k = tl.load(k_ptrs, mask=offs_d[None, :] < D, other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * scale_log2  # (BLOCK_M, BLOCK_N) base-2 logits
    valid = offs_n[None, :] < M
    if MASKED:
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= qpos[:, None])
        if HAS_MASK:
            km = tl.load(mask_ptrs, mask=offs_n < M, other=0)
            valid = valid & (km[None, :] != 0)
        s = tl.where(valid, s, float("-inf"))

    # running argmax (strict > keeps the first index on ties)
    blk_max = tl.max(s, 1)
    if WANT_ARG:
        blk_arg = tl.argmax(s, 1, tie_break_left=True) + start_n
        arg_i = tl.where(blk_max > m_i, blk_arg, arg_i)

    # online softmax with a finite shift even when everything so far is masked
    m_new = tl.maximum(m_i, blk_max)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    delta = tl.where(m_i == float("-inf"), 0.0, m_i - m_safe)
    z = s - m_safe[:, None]
    e = tl.exp2(z)
    if MASKED:
        ez = e * tl.where(valid, z, 0.0)  # masked: e = 0 and z = -inf
    else:
        ez = e * z
    u_i = alpha * (u_i + l_i * delta) + tl.sum(ez, 1)
    l_i = alpha * l_i + tl.sum(e, 1)
    sink_i = sink_i * alpha
    local_i = local_i * alpha

    # sink and local sums only on blocks that overlap them
    if start_n < sink_tokens:
        sink_i += tl.sum(tl.where(offs_n[None, :] < sink_tokens, e, 0.0), 1)
    if HAS_LOCAL:
        if (start_n + BLOCK_N > local_lo) & (start_n <= local_hi):
            in_win = (offs_n[None, :] > qpos[:, None] - window) & (offs_n[None, :] <= qpos[:, None])
            local_i += tl.sum(tl.where(in_win, e, 0.0), 1)
    return m_new, l_i, u_i, sink_i, local_i, arg_i


@triton.jit
def _row_stats_kernel(
    Q, K, MASK, LSE2, ENT, MAXP, ARG, SINK, LOCAL,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mn,
    Hq, N, M, D, GROUP, scale_log2, sink_tokens, window,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LOCAL: tl.constexpr, EVEN_D: tl.constexpr,
    IEEE: tl.constexpr, WANT_ARG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP  # GQA: shared key head, never expanded
    offset = M - N  # query t sits at key position t + offset

    # step 1: load the query block once
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < N) & (offs_d[None, :] < D), other=0.0)
    qpos = offs_m + offset
    k_base = K + b * stride_kb + hk * stride_kh + offs_d[None, :] * stride_kd
    m_base = MASK + b * stride_mb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    u_i = tl.zeros([BLOCK_M], tl.float32)
    sink_i = tl.zeros([BLOCK_M], tl.float32)
    local_i = tl.zeros([BLOCK_M], tl.float32)
    arg_i = tl.full([BLOCK_M], -1, tl.int32)

    # step 2: key range; blocks before `full_hi` are seen whole by every row
    q_first = pid_m * BLOCK_M + offset
    q_last = pid_m * BLOCK_M + BLOCK_M - 1 + offset
    hi = M
    full_hi = (M // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(M, q_last + 1)
        full_hi = tl.minimum(full_hi, ((q_first + 1) // BLOCK_N) * BLOCK_N)
    if HAS_MASK:
        full_hi = 0
    local_lo = q_first - window + 1  # keys of any row's local window lie in [local_lo, q_last]

    # step 3: unmasked blocks, then the masked tail / diagonal
    for start_n in range(0, full_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn
        m_i, l_i, u_i, sink_i, local_i, arg_i = _row_block(
            q, k_ptrs, m_base + offs_n * stride_mn, start_n, qpos, m_i, l_i, u_i, sink_i, local_i,
            arg_i, M, D, scale_log2, sink_tokens, window, local_lo, q_last,
            CAUSAL, HAS_MASK, HAS_LOCAL, False, EVEN_D, IEEE, WANT_ARG, BLOCK_N, BLOCK_D,
        )
    for start_n in range(full_hi, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn
        m_i, l_i, u_i, sink_i, local_i, arg_i = _row_block(
            q, k_ptrs, m_base + offs_n * stride_mn, start_n, qpos, m_i, l_i, u_i, sink_i, local_i,
            arg_i, M, D, scale_log2, sink_tokens, window, local_lo, q_last,
            CAUSAL, HAS_MASK, HAS_LOCAL, True, EVEN_D, IEEE, WANT_ARG, BLOCK_N, BLOCK_D,
        )

    # step 4: finish the row statistics; dead rows (l = 0) get the documented values
    live = l_i > 0
    l_safe = tl.where(live, l_i, 1.0)
    log2_l = tl.log2(l_safe)
    lse2 = tl.where(live, m_i + log2_l, float("-inf"))
    ent = tl.where(live, tl.maximum(0.6931471805599453 * (log2_l - u_i / l_safe), 0.0), 0.0)
    maxp = tl.where(live, 1.0 / l_safe, 0.0)
    out = pid_bh * N + offs_m
    row_ok = offs_m < N
    tl.store(LSE2 + out, lse2, mask=row_ok)
    tl.store(ENT + out, ent, mask=row_ok)
    tl.store(MAXP + out, maxp, mask=row_ok)
    if WANT_ARG:
        tl.store(ARG + out, tl.where(live, arg_i, -1).to(tl.int64), mask=row_ok)
    tl.store(SINK + out, sink_i / l_safe, mask=row_ok)
    tl.store(LOCAL + out, local_i / l_safe, mask=row_ok)


@triton.jit
def _col_mass_kernel(
    Q, K, MASK, LSE2, COL,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mn,
    Hq, N, M, D, GROUP, scale_log2,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    offset = M - N

    # step 1: this program owns one key block of one head
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    k = tl.load(k_ptrs, mask=(offs_n[:, None] < M) & (offs_d[None, :] < D), other=0.0)
    key_ok = offs_n < M
    if HAS_MASK:
        km = tl.load(MASK + b * stride_mb + offs_n * stride_mn, mask=key_ok, other=0)
        key_ok = key_ok & (km != 0)
    acc = tl.zeros([BLOCK_N], tl.float32)

    # step 2: causal: only queries at positions >= the block's first key can see it
    lo = 0
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - offset, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    q_base = Q + b * stride_qb + h * stride_qh + offs_d[None, :] * stride_qd
    for start_m in range(lo, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        q = tl.load(q_base + offs_m[:, None] * stride_qn, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        lse2 = tl.load(LSE2 + pid_bh * N + offs_m, mask=row_ok, other=float("-inf"))
        if IEEE:
            s = tl.dot(k, tl.trans(q), input_precision="ieee")
        else:
            s = tl.dot(k, tl.trans(q))
        s = s * scale_log2  # (BLOCK_N, BLOCK_M) base-2 logits, transposed
        valid = key_ok[:, None] & (lse2[None, :] > float("-inf"))
        if CAUSAL:
            valid = valid & (offs_n[:, None] <= offs_m[None, :] + offset)
        p = tl.where(valid, tl.exp2(s - lse2[None, :]), 0.0)
        acc += tl.sum(p, 1)
    tl.store(COL + pid_bh * M + offs_n, acc, mask=offs_n < M)


def _blocks(d_block: int, interpret: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for pass 1; pass 2 swaps M and N."""
    if interpret:
        return 32, 32, 4, 1
    if d_block <= 64:
        return 128, 64, 4, 3
    if d_block <= 128:
        return 128, 64, 8, 3
    return 64, 32, 8, 2


def head_stats_triton(
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
    block_m: int | None = None,
    block_n: int | None = None,
) -> HeadStats:
    """Launch the kernels. q: (B, Hq, N, d), k: (B, Hkv, M, d); inputs validated upstream.

    With `lse` (B, Hq, N), natural log, as a forward's attention returns it: the one-pass kernel.
    Without: pass 1, then pass 2 when column_mass. Returns HeadStats as kernels.head_stats
    documents. block_m / block_n override the tile sizes (powers of two >= 16), for tests.
    """
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if interpret != INTERPRET:
        raise RuntimeError(
            f"TRITON_INTERPRET is {int(interpret)} now but was {int(INTERPRET)} when the head_stats "
            "kernels were defined; set it before the first Triton head_stats call"
        )
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    assert q.dim() == 4 and k.dim() == 4 and k.shape[0] == B and k.shape[3] == d
    assert Hq % Hkv == 0 and q.dtype == k.dtype and q.device == k.device
    assert not causal or N <= M
    assert lse is None or (tuple(lse.shape) == (B, Hq, N) and lse.device == q.device)
    assert q.is_cuda or interpret, "Triton needs CUDA tensors or TRITON_INTERPRET=1"
    if interpret and q.dtype == torch.bfloat16:
        q, k = q.float(), k.float()  # the interpreter computes bf16 tl.dot wrongly
    BLOCK_D = max(16, triton.next_power_of_2(d))
    assert BLOCK_D <= 256, f"head dim {d} too large for the Triton kernel"
    BLOCK_M, BLOCK_N, num_warps, num_stages = _blocks(BLOCK_D, interpret)
    BLOCK_M, BLOCK_N = block_m or BLOCK_M, block_n or BLOCK_N
    assert BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_M & (BLOCK_M - 1) == 0 and BLOCK_N & (BLOCK_N - 1) == 0

    dev = q.device
    if key_padding_mask is not None:
        mask = key_padding_mask.to(torch.uint8)  # (B, M)
    else:
        mask = torch.ones(1, 1, dtype=torch.uint8, device=dev)  # never read
    ent, maxp, sink, local = (torch.empty(B, Hq, N, device=dev, dtype=torch.float32) for _ in range(4))
    arg = torch.empty(B, Hq, N, device=dev, dtype=torch.int64) if argmax else ent  # ent: never written
    common = dict(
        CAUSAL=bool(causal),
        HAS_MASK=key_padding_mask is not None,
        EVEN_D=d == BLOCK_D,
        IEEE=q.dtype == torch.float32,
        BLOCK_D=BLOCK_D,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    strides = (*q.stride(), *k.stride(), mask.stride(0), mask.stride(1))
    scale_log2 = scale * LOG2E
    rows_grid = (triton.cdiv(N, BLOCK_M), B * Hq)

    if lse is not None:
        # one pass: rows and columns from the given lse
        lse2 = (lse.float() * LOG2E).contiguous()
        col = torch.zeros(B, Hq, M, device=dev, dtype=torch.float32) if column_mass else ent  # ent: never written
        _onepass_kernel[rows_grid](
            q, k, mask, lse2, ent, maxp, arg, sink, local, col, *strides,
            Hq, N, M, d, Hq // Hkv, scale_log2, sink_tokens, window,
            HAS_LOCAL=window > 0, WANT_ARG=argmax, WANT_COL=column_mass, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
            **common,
        )
        return HeadStats(lse=lse.float(), entropy=ent, max_prob=maxp, argmax=arg if argmax else None,
                         sink_mass=sink, local_mass=local, col_mass=col if column_mass else None)

    # pass 1: row statistics, query-major
    lse2 = torch.empty(B, Hq, N, device=dev, dtype=torch.float32)
    _row_stats_kernel[rows_grid](
        q, k, mask, lse2, ent, maxp, arg, sink, local, *strides,
        Hq, N, M, d, Hq // Hkv, scale_log2, sink_tokens, window,
        HAS_LOCAL=window > 0, WANT_ARG=argmax, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, **common,
    )

    # pass 2: column sums, key-major, from pass 1's lse
    col = None
    if column_mass:
        col = torch.empty(B, Hq, M, device=dev, dtype=torch.float32)
        grid = (triton.cdiv(M, BLOCK_N), B * Hq)
        _col_mass_kernel[grid](
            q, k, mask, lse2, col, *strides,
            Hq, N, M, d, Hq // Hkv, scale_log2,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, **common,
        )
    return HeadStats(
        lse=lse2 * LN2,
        entropy=ent,
        max_prob=maxp,
        argmax=arg if argmax else None,
        sink_mass=sink,
        local_mass=local,
        col_mass=col,
    )
