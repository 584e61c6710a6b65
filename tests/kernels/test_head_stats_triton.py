"""The fused Triton backend against the reference (interpreter on CPU, real kernels on CUDA).

conftest.py sets TRITON_INTERPRET=1 when there is no GPU. The interpreter is slow, so the CPU
grid uses small N (1, 17, 64, 130) and small d; bf16 needs a GPU (the interpreter computes
bf16 tl.dot wrongly).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from kernels.head_stats import head_stats  # noqa: E402
from kernels.head_stats.triton import head_stats_triton  # noqa: E402

from .helpers import assert_defined, assert_stats_close, make_inputs  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
bf16_needs_cuda = pytest.mark.skipif(
    not CUDA, reason="bf16 needs a CUDA GPU: the Triton interpreter computes bf16 tl.dot wrongly"
)
large_needs_cuda = pytest.mark.skipif(
    not CUDA, reason="GPU tile sizes at N=1000 are too slow for the Triton interpreter; runs on a CUDA GPU"
)

# (B, Hq, Hkv, N, M, d, causal, pad, sink_tokens, window)
GRID = [
    (1, 1, 1, 1, 1, 16, True, False, 1, 0),  # N = 1
    (1, 2, 1, 1, 40, 32, True, True, 4, 16),  # one decode step
    (2, 2, 1, 17, 17, 16, True, True, 1, 16),  # odd N, left padding -> dead rows
    (1, 4, 2, 64, 64, 32, False, False, 4, 0),  # GQA, full attention
    (2, 2, 2, 130, 130, 16, True, True, 4, 16),  # block tails
    (1, 2, 1, 17, 130, 24, True, False, 1, 16),  # decode-style alignment, d not a power of 2
    (1, 2, 1, 130, 130, 16, True, False, 4, 16),  # causal fast path (unmasked key blocks)
    (1, 1, 1, 130, 64, 16, False, True, 1, 16),  # non-causal N > M
]
TOL = {torch.float32: 1e-5, torch.float16: 1e-4}


def _id(c):
    B, Hq, Hkv, N, M, d, causal, pad, sink, win = c
    return f"B{B}-h{Hq}x{Hkv}-N{N}-M{M}-d{d}-{'causal' if causal else 'full'}{'-pad' if pad else ''}-s{sink}-w{win}"


def _compare(case, dtype, atol, onepass=False, **launch):
    """Triton against the two-pass reference; onepass: the one-pass kernel, fed the reference's lse."""
    B, Hq, Hkv, N, M, d, causal, pad, sink, window = case
    q, k, mask = make_inputs(B, Hq, Hkv, N, M, d, dtype=dtype, pad=pad, seed=N + M, device=DEVICE)
    kw = dict(causal=causal, sink_tokens=sink, window=window, key_padding_mask=mask)
    want = head_stats(q, k, backend="reference", **kw)
    if onepass:
        kw["lse"] = want.lse
    if launch:
        got = head_stats_triton(q, k, scale=1 / math.sqrt(d), column_mass=True, **kw, **launch)
    else:
        got = head_stats(q, k, backend="triton", **kw)
    assert_defined(got)
    assert_stats_close(got, want, atol=atol, rtol=atol, q=q, k=k, scale=1 / math.sqrt(d))
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_triton_matches_reference(case, dtype):
    _compare(case, dtype, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_triton_onepass_matches_reference(case, dtype):
    got = _compare(case, dtype, TOL[dtype], onepass=True)
    assert got.col_mass is not None and got.argmax is not None


@pytest.mark.parametrize("onepass", [False, True], ids=["two-pass", "one-pass"])
def test_triton_small_tiles(onepass):
    # 16×16 tiles: many key blocks per row, many query blocks per key block (atomic column adds)
    _compare((2, 4, 2, 50, 61, 16, True, True, 4, 16), torch.float32, 1e-5, onepass=onepass, block_m=16, block_n=16)


@pytest.mark.parametrize("onepass", [False, True], ids=["two-pass", "one-pass"])
def test_triton_unasked_statistics(onepass):
    q, k, mask = make_inputs(2, 4, 2, 33, 33, 16, pad=True, device=DEVICE)
    full = head_stats(q, k, key_padding_mask=mask, window=4, backend="reference")
    lean = head_stats(q, k, key_padding_mask=mask, window=4, backend="triton", argmax=False, column_mass=False,
                      lse=full.lse if onepass else None)
    assert lean.argmax is None and lean.col_mass is None
    for name in ("lse", "entropy", "max_prob", "sink_mass", "local_mass"):
        torch.testing.assert_close(getattr(lean, name), getattr(full, name), atol=1e-5, rtol=1e-5)


def test_attention_stats_triton_route():
    """out and lse from the device's attention, statistics from the one-pass kernel."""
    import torch.nn.functional as F

    from kernels import attention_stats

    q, k, _ = make_inputs(1, 4, 2, 70, 70, 16, device=DEVICE)
    v = torch.randn(1, 2, 70, 16, device=DEVICE)
    out, got = attention_stats(q, k, v, window=8, sink_tokens=2, backend="triton")
    want = head_stats(q, k, window=8, sink_tokens=2, backend="reference")
    assert_stats_close(got, want, atol=1e-5, rtol=1e-5, q=q, k=k, scale=0.25)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                               atol=1e-5, rtol=0)


def test_triton_refuses_nan_like_the_reference():
    from kernels import WorkbenchError

    q, k, _ = make_inputs(1, 2, 1, 8, 8, 16, device=DEVICE)
    q[0, 0, 2, 3] = float("nan")
    for backend in ("triton", "reference"):
        with pytest.raises(WorkbenchError, match=r"q has 1 non-finite value\(s\)"):
            head_stats(q, k, backend=backend)


def test_triton_rows_only_and_noncontiguous():
    q, k, mask = make_inputs(1, 4, 2, 40, 40, 16, device=DEVICE)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, d) view of (B, N, H, d)
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    got = head_stats(qt, kt, backend="triton", window=4, column_mass=False)
    want = head_stats(q, k, backend="reference", window=4, column_mass=False)
    assert got.col_mass is None
    assert_stats_close(got, want, atol=1e-5, rtol=1e-5, q=q, k=k, scale=0.25)


def test_triton_fully_masked_batch_and_col_mass_total():
    q, k, _ = make_inputs(2, 2, 1, 20, 20, 16, device=DEVICE)
    mask = torch.ones(2, 20, dtype=torch.bool, device=DEVICE)
    mask[0] = False
    mask[1, :3] = False
    st = head_stats(q, k, key_padding_mask=mask, window=5, backend="triton")
    assert_defined(st)
    assert (st.lse[0] == float("-inf")).all() and (st.col_mass[0] == 0).all()
    live = torch.isfinite(st.lse).sum(-1).float()  # rows 0..2 of batch 1 see only padding
    assert live[1].tolist() == [17.0, 17.0]
    torch.testing.assert_close(st.col_mass.sum(-1), live, atol=1e-4, rtol=0)


def test_triton_entropy_by_hand():
    q = torch.tensor([[[[1.0, 0.0], [0.5, -1.0]]]], device=DEVICE)  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]]]], device=DEVICE)  # (1, 1, 3, 2)
    st = head_stats(q, k, causal=False, scale=0.7, backend="triton")
    for t, qt in enumerate(q[0, 0].tolist()):
        s = [0.7 * sum(a * b for a, b in zip(qt, kj)) for kj in k[0, 0].tolist()]
        p = [math.exp(x) / sum(math.exp(y) for y in s) for x in s]
        assert st.entropy[0, 0, t].item() == pytest.approx(-sum(pj * math.log(pj) for pj in p), abs=1e-6)


def test_triton_fp16_near_overflow():
    g = torch.Generator().manual_seed(0)
    q = (86 + 0.05 * torch.randn(1, 2, 40, 64, generator=g)).half().to(DEVICE)
    k = (86 + 0.05 * torch.randn(1, 1, 40, 64, generator=g)).half().to(DEVICE)
    got = head_stats(q, k, window=4, backend="triton")
    want = head_stats(q, k, window=4, backend="reference")
    assert_defined(got)
    torch.testing.assert_close(got.lse, want.lse, rtol=1e-6, atol=0)
    for name in ("entropy", "max_prob", "sink_mass", "local_mass", "col_mass"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=2e-2, rtol=0)


def test_large_head_dim_falls_back_with_warning():
    q, k, _ = make_inputs(1, 1, 1, 3, 3, 320, device=DEVICE)
    with pytest.warns(UserWarning, match="d=320 > 256 .* falling back to the reference"):
        st = head_stats(q, k, backend="triton")
    assert st.lse.shape == (1, 1, 3)


@bf16_needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_triton_bf16_on_gpu(case):
    _compare(case, torch.bfloat16, 2e-3)
    _compare(case, torch.bfloat16, 2e-3, onepass=True)


@large_needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "case",
    [(1, 8, 2, 1000, 1000, 128, True, True, 4, 16), (2, 4, 1, 127, 1000, 64, True, False, 1, 16)],
    ids=["N1000-d128-gqa-pad", "N127-M1000-d64-decode"],
)
def test_triton_default_tiles_on_gpu(case, dtype):
    tol = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 2e-3}[dtype]
    _compare(case, dtype, tol)
    _compare(case, dtype, tol, onepass=True)


@pytest.mark.skipif(not CUDA, reason="FlashAttention / memory-efficient attention need a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_attention_stats_on_gpu(dtype):
    """lse from FlashAttention (fp16/bf16) or memory-efficient attention (fp32) feeds the one pass."""
    import torch.nn.functional as F

    from kernels import attention_stats

    q, k, _ = make_inputs(2, 8, 2, 1000, 1000, 128, dtype=dtype, device="cuda", seed=9)
    v = torch.randn(2, 2, 1000, 128, device="cuda", dtype=dtype)
    out, got = attention_stats(q, k, v, window=16, sink_tokens=4)
    want = head_stats(q, k, window=16, sink_tokens=4, backend="reference")
    tol = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 2e-3}[dtype]
    assert_stats_close(got, want, atol=tol, rtol=tol, q=q, k=k, scale=1 / math.sqrt(128))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out.float(), sdpa.float(), atol=10 * tol, rtol=0)
