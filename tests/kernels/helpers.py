"""Shared input builders and comparisons for the head_stats tests."""

from __future__ import annotations

import torch

from kernels.head_stats.stats import HeadStats

FLOAT_FIELDS = ("lse", "entropy", "max_prob", "sink_mass", "local_mass", "col_mass")


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
    assert (stats.argmax[dead] == -1).all() and (stats.argmax[~dead] >= 0).all()
    assert (stats.entropy[dead] == 0).all() and (stats.max_prob[dead] == 0).all()
    assert (stats.sink_mass[dead] == 0).all() and (stats.local_mass[dead] == 0).all()
