"""Shared input builders and comparisons for the head_stats tests."""

from __future__ import annotations

import torch

from kernels.head_stats.stats import HeadStats

FLOAT_FIELDS = ("lse", "entropy", "max_prob", "sink_mass", "local_mass", "col_mass")

# Every value of every axis appears at least once; causal/padding/sink/window/decode are
# spread so that each N meets both causal modes and each head layout meets padding.
# (N, M - N, d, (Hq, Hkv), causal, pad, sink_tokens, window)
GRID = [
    (1, 0, 16, (1, 1), True, False, 1, 0),
    (1, 37, 64, (8, 1), True, True, 4, 16),  # one decode step over 38 keys
    (2, 0, 128, (4, 2), False, True, 1, 16),
    (2, 5, 16, (8, 1), True, False, 4, 0),
    (127, 0, 64, (1, 1), True, True, 4, 16),
    (127, 9, 128, (4, 2), False, False, 1, 0),
    (127, 0, 16, (8, 1), True, True, 1, 16),
    (128, 0, 16, (4, 2), True, True, 1, 16),
    (128, 128, 64, (8, 1), False, True, 4, 16),
    (128, 72, 128, (1, 1), True, False, 4, 0),
    (1000, 0, 128, (8, 1), True, True, 4, 16),
    (1000, 24, 16, (4, 2), False, False, 1, 0),
    (1000, 300, 64, (1, 1), True, False, 1, 16),  # prefill of 1000 after 300 cached keys
]


def grid_id(case):
    N, extra, d, (hq, hkv), causal, pad, sink, win = case
    return f"N{N}-M{N + extra}-d{d}-h{hq}x{hkv}-{'causal' if causal else 'full'}{'-pad' if pad else ''}-s{sink}-w{win}"


def make_inputs(B, Hq, Hkv, N, M, d, *, dtype=torch.float32, pad=False, seed=0, device="cpu"):
    """Seeded q (B, Hq, N, d), k (B, Hkv, M, d) and a key padding mask (B, M) or None.

    With pad=True, batch 0 is right-padded (last keys masked) and, when B > 1, batch 1 is
    left-padded, so causal queries at the start of batch 1 see only padding (dead rows).
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, Hkv, M, d, generator=g).to(device=device, dtype=dtype)
    mask = None
    if pad:
        mask = torch.ones(B, M, dtype=torch.bool)
        mask[0, M - max(1, M // 5):] = False
        if B > 1:
            mask[1, : max(1, M // 7)] = False
        if M == 1:
            mask[0, 0] = True  # keep one real key in batch 0
        mask = mask.to(device)
    return q, k, mask


def logits(q, k, scale):
    """(B, Hq, N, M) fp32 logits with GQA expanded (tests only)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale


def assert_stats_close(got: HeadStats, want: HeadStats, *, atol, rtol, q=None, k=None, scale=None):
    """Every float field to (atol, rtol); argmax equal, or pointing at equal logits (near-ties)."""
    for name in FLOAT_FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == torch.float32 and a.shape == b.shape, (name, a.dtype, a.shape, b.shape)
        assert not torch.isnan(a).any(), f"{name} has NaN"
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    if want.argmax is None or got.argmax is None:
        assert got.argmax is None and want.argmax is None, "argmax computed by one side only"
        return
    a, b = got.argmax.cpu(), want.argmax.cpu()
    assert a.dtype == torch.int64
    diff = a != b
    if diff.any():
        assert q is not None, f"argmax differs at {int(diff.sum())} rows"
        assert ((a >= 0) == (b >= 0)).all(), "argmax -1 (dead row) disagrees"
        s = logits(q.cpu(), k.cpu(), scale)
        sa = s.gather(-1, a.clamp_min(0)[..., None])[..., 0]
        sb = s.gather(-1, b.clamp_min(0)[..., None])[..., 0]
        torch.testing.assert_close(sa[diff], sb[diff], atol=1e-4, rtol=1e-5, msg="argmax not a near-tie")


def assert_defined(stats: HeadStats):
    """No NaN anywhere; lse may be -inf only where the row is dead, nothing is +inf."""
    for name, t in stats.as_dict().items():
        if t.is_floating_point():
            assert not torch.isnan(t).any(), f"{name} has NaN"
            if name != "lse":
                assert torch.isfinite(t).all(), f"{name} not finite"
    assert not (stats.lse == float("inf")).any()
    dead = stats.lse == float("-inf")
    if stats.argmax is not None:
        assert (stats.argmax[dead] == -1).all() and (stats.argmax[~dead] >= 0).all()
    assert (stats.entropy[dead] == 0).all() and (stats.max_prob[dead] == 0).all()
    assert (stats.sink_mass[dead] == 0).all() and (stats.local_mass[dead] == 0).all()
