"""kernels.head_stats: the chunked reference against the eager oracle, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.head_stats import HeadStats, head_stats, reference
from workbench.errors import WorkbenchError

from .helpers import GRID, assert_defined, assert_stats_close, grid_id, make_inputs

@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_reference_matches_eager(case, monkeypatch):
    N, extra, d, (Hq, Hkv), causal, pad, sink, window = case
    B = 2 if pad else 1
    q, k, mask = make_inputs(B, Hq, Hkv, N, N + extra, d, pad=pad, seed=N + d)
    # odd chunk of 37 query rows, so chunk seams and the causal key cut are exercised
    monkeypatch.setattr(reference, "MAX_CHUNK_ELEMENTS", B * Hq * (N + extra) * 37)
    kw = dict(causal=causal, sink_tokens=sink, window=window, key_padding_mask=mask)
    got = head_stats(q, k, backend="reference", **kw)
    want = head_stats(q, k, backend="eager", **kw)
    assert_stats_close(got, want, atol=1e-5, rtol=1e-5, q=q, k=k, scale=1 / math.sqrt(d))
    assert got.lse.shape == (B, Hq, N) and got.col_mass.shape == (B, Hq, N + extra)


def test_default_chunking_and_auto_backend_on_cpu():
    q, k, mask = make_inputs(2, 4, 2, 300, 300, 32, pad=True)
    auto = head_stats(q, k, key_padding_mask=mask, window=8)  # on CPU: the compiled native loop
    native = head_stats(q, k, key_padding_mask=mask, window=8, backend="native")
    ref = head_stats(q, k, key_padding_mask=mask, window=8, backend="reference")
    for name, t in native.as_dict().items():
        assert torch.equal(getattr(auto, name), t), name
    assert_stats_close(auto, ref, atol=1e-5, rtol=1e-5, q=q, k=k, scale=32**-0.5)


def test_entropy_and_masses_by_hand():
    # one head, 2 queries, 3 keys, non-causal: p computed with math, not torch
    q = torch.tensor([[[[1.0, 0.0], [0.5, -1.0]]]])  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]]]])  # (1, 1, 3, 2)
    scale = 0.7
    for backend in ("reference", "eager"):
        st = head_stats(q, k, causal=False, scale=scale, sink_tokens=1, window=2, backend=backend)
        cols = [0.0, 0.0, 0.0]
        for t, qt in enumerate(q[0, 0].tolist()):
            s = [scale * sum(a * b for a, b in zip(qt, kj)) for kj in k[0, 0].tolist()]
            z = sum(math.exp(x) for x in s)
            p = [math.exp(x) / z for x in s]
            cols = [c + pj for c, pj in zip(cols, p)]
            assert st.entropy[0, 0, t].item() == pytest.approx(-sum(pj * math.log(pj) for pj in p), abs=1e-6)
            assert st.lse[0, 0, t].item() == pytest.approx(math.log(z), abs=1e-6)
            assert st.max_prob[0, 0, t].item() == pytest.approx(max(p), abs=1e-6)
            assert st.argmax[0, 0, t].item() == max(range(3), key=lambda j: s[j])
            assert st.sink_mass[0, 0, t].item() == pytest.approx(p[0], abs=1e-6)
            # query t sits at key position t + (M - N) = t + 1; window 2 -> keys t, t + 1
            assert st.local_mass[0, 0, t].item() == pytest.approx(p[t] + p[t + 1], abs=1e-6)
        assert st.col_mass[0, 0].tolist() == pytest.approx(cols, abs=1e-6)


@pytest.mark.parametrize("backend", ["native", "reference", "eager"])
def test_col_mass_sums_to_live_rows(backend):
    q, k, mask = make_inputs(2, 4, 2, 50, 50, 16, pad=True)
    st = head_stats(q, k, key_padding_mask=mask, backend=backend)
    live = torch.isfinite(st.lse).sum(-1).float()  # (B, Hq) query rows that see a key
    assert (live[1] < 50).all()  # left padding kills the first rows of batch 1
    torch.testing.assert_close(st.col_mass.sum(-1), live, atol=1e-4, rtol=0)
    assert (st.col_mass[~mask[:, None, :].expand_as(st.col_mass)] == 0).all()


@pytest.mark.parametrize("backend", ["native", "reference", "eager"])
def test_fully_masked_rows_are_defined(backend):
    q, k, _ = make_inputs(2, 2, 1, 6, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0] = False  # batch 0: no real key at all
    st = head_stats(q, k, key_padding_mask=mask, window=3, backend=backend)
    assert_defined(st)
    assert (st.lse[0] == float("-inf")).all() and (st.argmax[0] == -1).all()
    assert (st.col_mass[0] == 0).all() and torch.isfinite(st.lse[1]).all()


@pytest.mark.parametrize("backend", ["native", "reference", "eager"])
def test_single_query_single_key(backend):
    q, k, _ = make_inputs(1, 2, 1, 1, 1, 8)
    st = head_stats(q, k, window=1, backend=backend)
    assert_defined(st)
    assert torch.equal(st.max_prob, torch.ones(1, 2, 1)) and torch.equal(st.entropy, torch.zeros(1, 2, 1))
    assert torch.equal(st.sink_mass, torch.ones(1, 2, 1)) and torch.equal(st.local_mass, torch.ones(1, 2, 1))


def test_fp16_logits_near_overflow():
    # q·k ≈ 4.7e5 overflows fp16 (max 65504); scaled logits ≈ 6e4: fp32 accumulation keeps them
    g = torch.Generator().manual_seed(0)
    q = (86 + 0.05 * torch.randn(1, 2, 40, 64, generator=g)).half()
    k = (86 + 0.05 * torch.randn(1, 1, 40, 64, generator=g)).half()
    assert torch.isinf(q[0, 0, :1] @ k[0, 0, :1].T).all()  # an fp16 matmul would overflow
    want = head_stats(q.float(), k.float(), window=4, backend="eager")
    for backend in ("reference", "native"):
        got = head_stats(q, k, window=4, backend=backend)
        assert_defined(got)
        assert (got.lse > 5e4).all()
        torch.testing.assert_close(got.lse, want.lse, rtol=1e-6, atol=0)
        for name in ("entropy", "max_prob", "sink_mass", "local_mass", "col_mass"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=2e-2, rtol=0)


def test_column_mass_false_and_frames():
    q, k, _ = make_inputs(1, 2, 1, 5, 7, 8)
    st = head_stats(q, k, column_mass=False)
    assert st.col_mass is None and "col_mass" not in st.as_dict()
    with pytest.raises(WorkbenchError, match="column_mass=False"):
        st.col_frame()
    st = head_stats(q, k, sink_tokens=2, window=3)
    rows = st.to_frame()
    assert list(rows.columns) == ["batch", "head", "query", "lse", "entropy", "max_prob", "argmax", "sink_mass", "local_mass"]
    assert len(rows) == 2 * 5 and rows.loc[7, "entropy"] == pytest.approx(st.entropy[0, 1, 2].item())
    cols = st.col_frame()
    assert list(cols.columns) == ["batch", "head", "key", "col_mass"] and len(cols) == 2 * 7
    assert kernels.HeadStats is HeadStats and kernels.head_stats is head_stats


def test_scale_and_noncontiguous_inputs():
    q, k, _ = make_inputs(1, 4, 2, 30, 30, 16)
    qt, kt = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    a = head_stats(qt, kt, scale=0.3, backend="reference")
    b = head_stats(q, k, scale=0.3, backend="eager")
    assert_stats_close(a, b, atol=1e-5, rtol=1e-5, q=q, k=k, scale=0.3)


def _bad(**over):
    q, k, _ = make_inputs(1, 4, 2, 8, 8, 16)
    args = dict(q=q, k=k)
    args.update(over)
    q, k = args.pop("q"), args.pop("k")
    return lambda: head_stats(q, k, **args)


@pytest.mark.parametrize(
    "call, message",
    [
        (_bad(q=torch.zeros(4, 8, 16)), r"q must have 4 dims .* got shape \(4, 8, 16\)"),
        (_bad(k=torch.zeros(2, 2, 8, 16)), r"same batch size, got q batch 1 and k batch 2"),
        (_bad(k=torch.zeros(1, 2, 8, 32)), r"same head dim, got q d=16 and k d=32"),
        (_bad(k=torch.zeros(1, 3, 8, 16)), r"Hq=4 must be a multiple of key heads Hkv=3"),
        (_bad(k=torch.zeros(1, 2, 8, 16, dtype=torch.float16)), r"same dtype, got q torch.float32 and k torch.float16"),
        (_bad(q=torch.zeros(1, 4, 8, 16, dtype=torch.int64)), r"q.dtype must be float16, bfloat16 or float32, got torch.int64"),
        (_bad(k=torch.zeros(1, 2, 8, 16, device="meta")), r"same device, got q on cpu and k on meta"),
        (_bad(k=torch.zeros(1, 2, 4, 16)), r"at most as many queries as keys, got N=8 queries and M=4 keys"),
        (_bad(backend="cuda"), r"backend must be one of .* got 'cuda'"),
        (_bad(window=-1), r"window must be an int >= 0, got -1"),
        (_bad(sink_tokens=-2), r"sink_tokens must be an int >= 0, got -2"),
        (_bad(scale=float("nan")), r"scale must be a finite number or None"),
        (_bad(key_padding_mask=torch.ones(1, 7, dtype=torch.bool)), r"shape \[batch, keys\] = \(1, 8\), got \(1, 7\)"),
        (_bad(key_padding_mask=torch.ones(1, 8)), r"key_padding_mask must be a bool tensor .* got torch.float32"),
        (_bad(q="q"), r"q must be a torch.Tensor, got str"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(WorkbenchError, match=message):
        call()


def test_triton_without_cuda_or_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, _ = make_inputs(1, 1, 1, 4, 4, 16)
    with pytest.raises(WorkbenchError, match=r"q is on cpu; Triton needs a CUDA device, or TRITON_INTERPRET=1"):
        head_stats(q, k, backend="triton")
