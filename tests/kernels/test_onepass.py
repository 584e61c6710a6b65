"""One-pass statistics from a known lse, and attention_stats: against the two-pass reference
and the eager oracle, over the odd-shape grid; lse taken from SDPA's own flash kernel; non-finite
inputs refused by every backend alike."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from kernels import WorkbenchError, attention_stats, head_stats
from kernels.head_stats import attention, bands, reference

from .helpers import GRID, assert_defined, assert_stats_close, grid_id, make_inputs

ROW_FIELDS = ("entropy", "max_prob", "sink_mass", "local_mass")
_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _case_inputs(case):
    N, extra, d, (Hq, Hkv), causal, pad, sink, window = case
    B = 2 if pad else 1
    q, k, mask = make_inputs(B, Hq, Hkv, N, N + extra, d, pad=pad, seed=N + d)
    return q, k, dict(causal=causal, sink_tokens=sink, window=window, key_padding_mask=mask)


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_onepass_reference_equals_two_pass_and_eager(case, monkeypatch):
    q, k, kw = _case_inputs(case)
    B, Hq, N, _ = q.shape
    # an odd chunk of 29 query rows: chunk seams and the causal key cut are exercised
    monkeypatch.setattr(reference, "ONEPASS_CHUNK_ELEMENTS", B * Hq * k.shape[2] * 29)
    monkeypatch.setattr(bands, "CHUNK_ELEMENTS", B * Hq * 2 * max(kw["window"], kw["sink_tokens"]) * 23)  # band seams
    eager = head_stats(q, k, backend="eager", **kw)
    two_pass = head_stats(q, k, backend="reference", **kw)
    one_pass = head_stats(q, k, backend="reference", lse=two_pass.lse, **kw)
    scale = 1 / math.sqrt(q.shape[-1])
    assert_stats_close(one_pass, two_pass, atol=1e-5, rtol=1e-5, q=q, k=k, scale=scale)
    assert_stats_close(one_pass, eager, atol=1e-5, rtol=1e-5, q=q, k=k, scale=scale)
    assert one_pass.lse is two_pass.lse  # the given lse is the result's
    native_one = head_stats(q, k, backend="native", lse=two_pass.lse, **kw)  # the compiled loop, from lse
    native_two = head_stats(q, k, backend="native", **kw)  # ... and with its own lse pass
    assert_stats_close(native_one, eager, atol=1e-5, rtol=1e-5, q=q, k=k, scale=scale)
    assert_stats_close(native_two, eager, atol=1e-5, rtol=1e-5, q=q, k=k, scale=scale)
    assert native_one.lse is two_pass.lse
    if kw["key_padding_mask"] is not None and B > 1 and kw["causal"] and k.shape[2] == N:
        assert (one_pass.lse[1, :, 0] == float("-inf")).all()  # left padding: dead rows are covered
        assert_defined(one_pass)


@pytest.mark.parametrize("case", GRID[:8], ids=[grid_id(c) for c in GRID[:8]])
def test_unasked_statistics_are_not_computed(case):
    q, k, kw = _case_inputs(case)
    full = head_stats(q, k, backend="reference", **kw)
    for lse in (None, full.lse):
        lean = head_stats(q, k, backend="reference", argmax=False, column_mass=False, lse=lse, **kw)
        assert lean.argmax is None and lean.col_mass is None
        assert set(lean.as_dict()) == {"lse", "entropy", "max_prob", "sink_mass", "local_mass"}
        for name in ("lse", *ROW_FIELDS):
            torch.testing.assert_close(getattr(lean, name), getattr(full, name), atol=1e-6, rtol=1e-6)
    eager = head_stats(q, k, backend="eager", argmax=False, **kw)
    assert eager.argmax is None and "argmax" not in eager.to_frame().columns


def test_lse_from_sdpa_itself():
    """The lse the CPU flash-attention kernel returns (the forward's own) drives the one pass."""
    q, k, _ = make_inputs(2, 8, 2, 300, 300, 16, seed=3)
    v = torch.randn(2, 2, 300, 16, generator=torch.Generator().manual_seed(4))
    out, lse = _cpu_flash(q, k, v, 0.0, True, scale=0.25)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                               atol=1e-6, rtol=0)
    want = head_stats(q, k, window=8, sink_tokens=2, backend="eager")
    for backend in ("reference", "native"):
        got = head_stats(q, k, lse=lse, window=8, sink_tokens=2, backend=backend)
        assert_stats_close(got, want, atol=2e-6, rtol=1e-5, q=q, k=k, scale=0.25)
        assert got.lse is lse


def test_onepass_fp16_near_overflow():
    g = torch.Generator().manual_seed(0)
    q = (86 + 0.05 * torch.randn(1, 2, 40, 64, generator=g)).half()
    k = (86 + 0.05 * torch.randn(1, 1, 40, 64, generator=g)).half()
    want = head_stats(q.float(), k.float(), window=4, backend="eager")
    for backend in ("reference", "native"):
        got = head_stats(q, k, window=4, backend=backend, lse=want.lse)
        assert_defined(got)
        for name in ("entropy", "max_prob", "sink_mass", "local_mass", "col_mass"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=2e-2, rtol=0)


@pytest.mark.parametrize("backend", ["native", "reference", "eager"])
def test_onepass_fully_masked_rows(backend):
    q, k, _ = make_inputs(2, 2, 1, 6, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0] = False  # batch 0: no real key at all
    mask[1, :2] = False  # batch 1: the first two causal rows see only padding
    lse = head_stats(q, k, key_padding_mask=mask, backend="eager").lse
    st = head_stats(q, k, key_padding_mask=mask, window=3, backend=backend, lse=lse)
    assert_defined(st)
    assert (st.lse[0] == float("-inf")).all() and (st.col_mass[0] == 0).all()
    assert (st.argmax[1, :, :2] == -1).all() and (st.argmax[1, :, 2:] >= 2).all()
    torch.testing.assert_close(st.col_mass[1].sum(-1), torch.full((2,), 4.0), atol=1e-5, rtol=0)


# (B, Hq, Hkv, N, M, d, dv, causal, sink_tokens, window): the shapes attention_stats takes
ATTENTION_GRID = [
    (1, 1, 1, 1, 1, 16, 16, True, 1, 0),  # N = 1
    (2, 8, 1, 1, 37, 32, 32, True, 4, 16),  # one decode step: a single query sees every key
    (1, 4, 2, 127, 127, 16, 16, True, 1, 16),  # GQA, odd N
    (2, 2, 2, 200, 200, 24, 40, True, 3, 5),  # d not a power of 2, dv != d
    (1, 8, 2, 64, 90, 16, 16, False, 1, 16),  # encoder-style: full attention, N != M
    (1, 2, 1, 1000, 1000, 64, 64, True, 1, 300),  # long window, several local bands
]


def _att_id(c):
    B, Hq, Hkv, N, M, d, dv, causal, sink, win = c
    return f"B{B}-h{Hq}x{Hkv}-N{N}-M{M}-d{d}-dv{dv}-{'causal' if causal else 'full'}-s{sink}-w{win}"


@pytest.mark.parametrize("backend", ["native", "flash", "reference"])
@pytest.mark.parametrize("case", ATTENTION_GRID, ids=[_att_id(c) for c in ATTENTION_GRID])
def test_attention_stats_equal_sdpa_and_eager(case, backend):
    B, Hq, Hkv, N, M, d, dv, causal, sink, window = case
    q, k, _ = make_inputs(B, Hq, Hkv, N, M, d, seed=N + M + d)
    v = torch.randn(B, Hkv, M, dv, generator=torch.Generator().manual_seed(1))
    kw = dict(causal=causal, sink_tokens=sink, window=window)
    out, got = attention_stats(q, k, v, backend=backend, **kw)
    want = head_stats(q, k, backend="eager", **kw)
    scale = 1 / math.sqrt(d)
    assert_stats_close(got, want, atol=5e-6, rtol=1e-5, q=q, k=k, scale=scale)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal and N > 1, enable_gqa=Hq != Hkv)
    assert out.shape == (B, Hq, N, dv) and out.dtype == v.dtype
    torch.testing.assert_close(out, sdpa, atol=2e-6, rtol=0)


def test_attention_stats_flash_lean_and_low_precision():
    q, k, _ = make_inputs(1, 4, 2, 50, 50, 16, dtype=torch.bfloat16, seed=7)
    v = torch.randn(1, 2, 50, 16).bfloat16()
    want = head_stats(q.float(), k.float(), window=4, backend="eager")
    for backend in ("auto", "flash"):  # auto on CPU: native
        out, st = attention_stats(q, k, v, window=4, column_mass=False, argmax=False, backend=backend)
        assert st.col_mass is None and st.argmax is None and out.dtype == torch.bfloat16
        for name in ("lse", *ROW_FIELDS):
            torch.testing.assert_close(getattr(st, name), getattr(want, name), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True), atol=1e-2, rtol=0)


def test_row_max_at_temperature_is_exact_to_fp32():
    # logits of several sizes and a near-tie 1e-4 apart: lse(βs)/β must give the max itself
    q, k, _ = make_inputs(1, 2, 2, 300, 300, 32, seed=11)
    k[:, :, 5] = k[:, :, 4] * (1 + 1e-4)
    out, st = attention_stats(q * 6, k, torch.zeros_like(k), backend="flash", window=2)
    want = head_stats(q * 6, k, window=2, backend="eager")
    torch.testing.assert_close(st.max_prob, want.max_prob, atol=1e-6, rtol=1e-6)
    assert math.log(300) / attention.BETA < 1e-6


def test_compiled_onepass_chunk_matches_eager(monkeypatch):
    """torch.compile of the one-pass chunk (WORKBENCH_COMPILE=1) gives the eager function's numbers."""
    monkeypatch.setattr(reference, "COMPILE", True)
    monkeypatch.setattr(reference, "_compiled", None)
    q, k, mask = make_inputs(2, 4, 2, 70, 80, 16, pad=True, seed=5)
    kw = dict(causal=True, window=6, sink_tokens=2, key_padding_mask=mask)
    lse = head_stats(q, k, backend="eager", **kw).lse
    got = head_stats(q, k, backend="reference", lse=lse, **kw)
    assert reference.COMPILE and reference._compiled is not None  # a fallback to eager would clear COMPILE
    monkeypatch.setattr(reference, "COMPILE", False)
    want = head_stats(q, k, backend="reference", lse=lse, **kw)
    assert_stats_close(got, want, atol=1e-6, rtol=1e-6, q=q, k=k, scale=0.25)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(reference, "COMPILE", True)
    monkeypatch.setattr(reference, "_compiled", broken)
    q, k, _ = make_inputs(1, 2, 1, 20, 20, 16)
    lse = head_stats(q, k, backend="eager").lse
    with pytest.warns(UserWarning, match="torch.compile of the one-pass chunk failed .*no C\\+\\+ compiler"):
        got = head_stats(q, k, backend="reference", lse=lse)
    assert reference.COMPILE is False
    assert_stats_close(got, head_stats(q, k, backend="eager"), atol=1e-5, rtol=1e-5, q=q, k=k, scale=0.25)


# -- bad input: every backend refuses it alike --------------------------------------------------
@pytest.mark.parametrize("backend", ["native", "reference", "eager"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_q_or_k_is_refused(backend, bad):
    q, k, _ = make_inputs(1, 2, 1, 8, 8, 16)
    q[0, 1, 3, 5] = bad
    with pytest.raises(WorkbenchError, match=r"q has 1 non-finite value\(s\) \(NaN or inf\), the first at index \(0, 1, 3, 5\)"):
        head_stats(q, k, backend=backend)
    q, k, _ = make_inputs(1, 2, 1, 8, 8, 16)
    k[0, 0, 2, 0] = bad
    with pytest.raises(WorkbenchError, match=r"k has 1 non-finite"):
        head_stats(q, k, backend=backend, lse=torch.zeros(1, 2, 8))
    v = torch.zeros(1, 1, 8, 16)
    v[0, 0, 0, 0] = bad
    with pytest.raises(WorkbenchError, match=r"v has 1 non-finite"):
        attention_stats(q.nan_to_num(), k.nan_to_num(posinf=0.0), v)


def test_kernel_errors_are_workbench_errors():
    assert WorkbenchError is wb.WorkbenchError  # one class, re-exported by workbench.errors
    q, k, _ = make_inputs(1, 2, 1, 8, 8, 16)
    with pytest.raises(wb.WorkbenchError):
        head_stats(q, k, window=-1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lse=torch.zeros(1, 2, 7)), r"lse must have shape \[batch, heads, queries\] = \(1, 2, 8\), got \(1, 2, 7\)"),
        (dict(lse=torch.zeros(1, 2, 8, dtype=torch.long)), r"lse must be a float tensor .* got torch.int64"),
        (dict(lse=torch.full((1, 2, 8), float("nan"))), r"lse has NaN or \+inf values"),
        (dict(argmax="yes"), r"argmax must be True or False, got 'yes'"),
        (dict(column_mass=None), r"column_mass must be True or False, got None"),
    ],
)
def test_bad_lse_and_flags(kwargs, message):
    q, k, _ = make_inputs(1, 2, 1, 8, 8, 16)
    with pytest.raises(WorkbenchError, match=message):
        head_stats(q, k, **kwargs)


def test_attention_stats_errors():
    q, k, _ = make_inputs(1, 2, 1, 8, 12, 16)
    v = torch.zeros(1, 1, 12, 16)
    with pytest.raises(WorkbenchError, match=r"causal=True needs N == M .* got N=8, M=12; for a KV-cache prefix use head_stats"):
        attention_stats(q, k, v)
    with pytest.raises(WorkbenchError, match=r"v must match k .* v \(1, 1, 11, 16\)"):
        attention_stats(q, k, v[:, :, :11], causal=False)
    with pytest.raises(WorkbenchError, match=r"backend must be one of \('auto', 'native', 'flash', 'reference', 'triton'\), got 'eager'"):
        attention_stats(q, k, v, causal=False, backend="eager")
    with pytest.raises(WorkbenchError, match=r"v must be a 4-dim tensor"):
        attention_stats(q, k, v[0], causal=False)
