"""The one-pass Triton kernel: head statistics from each row's known lse (imported by triton.py).

Query-major like pass 1 (one program per query block and batch·head, GQA in the grid), but
p = 2^{s - lse2} is final at once, so no running normalizer is rescaled:
entropy = ln2 · Σ p (lse2 - s), max_prob = 2^{max s - lse2}, sink and local mass are partial sums
of p, and the column sums are added from the same tiles with fp32 atomics (one add per column
per query block; their order, so the last bits of col_mass, may vary between runs). Rows with
lse = -inf (no visible key) and rows past N add nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_env import INTERPRET  # noqa: F401  (makes tl's helpers interpretable first)


@triton.jit
def _onepass_block(
    q, k_ptrs, mask_ptrs, col_ptrs, start_n, qpos, lse2, live, best_i, ent_i, sink_i, local_i, arg_i,
    M, D, scale_log2, sink_tokens, window, local_lo, local_hi,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LOCAL: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, IEEE: tl.constexpr, WANT_ARG: tl.constexpr, WANT_COL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # one key block of the one-pass kernel; MASKED=False for blocks every row sees whole
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
    take = live[:, None] & (offs_n[None, :] < M)  # rows past N and dead rows add nothing
    if MASKED:
        valid = offs_n[None, :] < M
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= qpos[:, None])
        if HAS_MASK:
            km = tl.load(mask_ptrs, mask=offs_n < M, other=0)
            valid = valid & (km[None, :] != 0)
        s = tl.where(valid, s, float("-inf"))
        take = take & valid

    # row max and argmax: no exponentials (strict > keeps the first index on ties)
    blk_max = tl.max(s, 1)
    if WANT_ARG:
        blk_arg = tl.argmax(s, 1, tie_break_left=True) + start_n
        arg_i = tl.where(blk_max > best_i, blk_arg, arg_i)
    best_i = tl.maximum(best_i, blk_max)

    # probabilities are final at once: p = 2^(s - lse2)
    d2 = tl.where(take, lse2[:, None] - s, 0.0)  # -log2 p >= 0 where visible
    p = tl.where(take, tl.exp2(-d2), 0.0)
    ent_i += tl.sum(p * d2, 1)
    if start_n < sink_tokens:
        sink_i += tl.sum(tl.where(offs_n[None, :] < sink_tokens, p, 0.0), 1)
    if HAS_LOCAL:
        if (start_n + BLOCK_N > local_lo) & (start_n <= local_hi):
            in_win = (offs_n[None, :] > qpos[:, None] - window) & (offs_n[None, :] <= qpos[:, None])
            local_i += tl.sum(tl.where(in_win, p, 0.0), 1)
    if WANT_COL:
        tl.atomic_add(col_ptrs + offs_n, tl.sum(p, 0), mask=offs_n < M, sem="relaxed")
    return best_i, ent_i, sink_i, local_i, arg_i


@triton.jit
def _onepass_kernel(
    Q, K, MASK, LSE2, ENT, MAXP, ARG, SINK, LOCAL, COL,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mn,
    Hq, N, M, D, GROUP, scale_log2, sink_tokens, window,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LOCAL: tl.constexpr, EVEN_D: tl.constexpr,
    IEEE: tl.constexpr, WANT_ARG: tl.constexpr, WANT_COL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP  # GQA: shared key head, never expanded
    offset = M - N  # query t sits at key position t + offset

    # step 1: the query block and its known base-2 lse (rows past N count as dead)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    lse2 = tl.load(LSE2 + pid_bh * N + offs_m, mask=row_ok, other=float("-inf"))
    live = lse2 > float("-inf")
    lse2 = tl.where(live, lse2, 0.0)
    qpos = offs_m + offset
    k_base = K + b * stride_kb + hk * stride_kh + offs_d[None, :] * stride_kd
    m_base = MASK + b * stride_mb
    col_base = COL + pid_bh * M

    best_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    ent_i = tl.zeros([BLOCK_M], tl.float32)
    sink_i = tl.zeros([BLOCK_M], tl.float32)
    local_i = tl.zeros([BLOCK_M], tl.float32)
    arg_i = tl.full([BLOCK_M], -1, tl.int32)

    # step 2: key range, as in pass 1
    q_first = pid_m * BLOCK_M + offset
    q_last = pid_m * BLOCK_M + BLOCK_M - 1 + offset
    hi = M
    full_hi = (M // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(M, q_last + 1)
        full_hi = tl.minimum(full_hi, ((q_first + 1) // BLOCK_N) * BLOCK_N)
    if HAS_MASK:
        full_hi = 0
    local_lo = q_first - window + 1

    # step 3: unmasked blocks, then the masked tail / diagonal
    for start_n in range(0, full_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        best_i, ent_i, sink_i, local_i, arg_i = _onepass_block(
            q, k_base + offs_n[:, None] * stride_kn, m_base + offs_n * stride_mn, col_base, start_n, qpos,
            lse2, live, best_i, ent_i, sink_i, local_i, arg_i, M, D, scale_log2, sink_tokens, window,
            local_lo, q_last, CAUSAL, HAS_MASK, HAS_LOCAL, False, EVEN_D, IEEE, WANT_ARG, WANT_COL,
            BLOCK_N, BLOCK_D,
        )
    for start_n in range(full_hi, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        best_i, ent_i, sink_i, local_i, arg_i = _onepass_block(
            q, k_base + offs_n[:, None] * stride_kn, m_base + offs_n * stride_mn, col_base, start_n, qpos,
            lse2, live, best_i, ent_i, sink_i, local_i, arg_i, M, D, scale_log2, sink_tokens, window,
            local_lo, q_last, CAUSAL, HAS_MASK, HAS_LOCAL, True, EVEN_D, IEEE, WANT_ARG, WANT_COL,
            BLOCK_N, BLOCK_D,
        )

    # step 4: dead rows (no visible key) get the documented values
    out = pid_bh * N + offs_m
    tl.store(ENT + out, tl.where(live, tl.maximum(0.6931471805599453 * ent_i, 0.0), 0.0), mask=row_ok)
    tl.store(MAXP + out, tl.where(live, tl.exp2(best_i - lse2), 0.0), mask=row_ok)
    if WANT_ARG:
        tl.store(ARG + out, tl.where(live, arg_i, -1).to(tl.int64), mask=row_ok)
    tl.store(SINK + out, sink_i, mask=row_ok)
    tl.store(LOCAL + out, local_i, mask=row_ok)
