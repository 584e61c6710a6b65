"""Input checks shared by `head_stats` and `attention_stats`: one clear WorkbenchError each."""

from __future__ import annotations

import math

import torch

from kernels.errors import WorkbenchError

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise WorkbenchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise WorkbenchError(f"{name} must have 4 dims [batch, heads, seq, d_head], got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise WorkbenchError(f"{name}.dtype must be float16, bfloat16 or float32, got {t.dtype}")


def finite(name: str, t: torch.Tensor) -> None:
    """Refuse NaN or ±inf in q/k/v: their softmax is undefined, and a NaN row would otherwise
    pass for a fully masked one (entropy 0) while poisoning the column sums."""
    if t.numel() == 0 or bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return  # a finite sum has no NaN or inf term (one pass, no mask tensor); an overflow checks below
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise WorkbenchError(
            f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), the first at index {first} "
            f"= {t[first].item()}; head statistics need finite queries and keys"
        )


def _flag(name: str, v) -> bool:
    if isinstance(v, bool) or type(v).__name__ == "bool_":  # numpy booleans too
        return bool(v)
    raise WorkbenchError(f"{name} must be True or False, got {v!r}")


def validate(q, k, *, scale, sink_tokens, window, key_padding_mask, backend, backends, causal,
             column_mass, argmax, lse=None) -> float:
    """Check q/k and the options of a head statistics call; return the scale to use.

    Raises WorkbenchError naming the bad value and what is expected.
    """
    _tensor("q", q)
    _tensor("k", k)
    B, Hq, N, d = q.shape
    Bk, Hkv, M, dk = k.shape
    if q.dtype != k.dtype:
        raise WorkbenchError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise WorkbenchError(f"q and k must be on the same device, got q on {q.device} and k on {k.device}")
    if Bk != B:
        raise WorkbenchError(f"q and k must have the same batch size, got q batch {B} and k batch {Bk}")
    if dk != d:
        raise WorkbenchError(f"q and k must have the same head dim, got q d={d} and k d={dk}")
    if N < 1 or M < 1 or Hq < 1 or Hkv < 1 or B < 1 or d < 1:
        raise WorkbenchError(f"q and k must be non-empty, got q shape {tuple(q.shape)} and k shape {tuple(k.shape)}")
    if Hq % Hkv != 0:
        raise WorkbenchError(f"query heads Hq={Hq} must be a multiple of key heads Hkv={Hkv} (grouped-query attention)")
    _flag("causal", causal)
    _flag("column_mass", column_mass)
    _flag("argmax", argmax)
    if causal and N > M:
        raise WorkbenchError(f"causal attention needs at most as many queries as keys, got N={N} queries and M={M} keys")
    for name, v in (("sink_tokens", sink_tokens), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise WorkbenchError(f"{name} must be an int >= 0, got {v!r}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask).__name__
            raise WorkbenchError(f"key_padding_mask must be a bool tensor (True = real token), got {got}")
        if tuple(key_padding_mask.shape) != (B, M):
            raise WorkbenchError(
                f"key_padding_mask must have shape [batch, keys] = {(B, M)}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise WorkbenchError(f"key_padding_mask must be on q's device {q.device}, got {key_padding_mask.device}")
    if backend not in backends:
        raise WorkbenchError(f"backend must be one of {backends}, got {backend!r}")
    if lse is not None:
        if not isinstance(lse, torch.Tensor) or not lse.is_floating_point():
            got = lse.dtype if isinstance(lse, torch.Tensor) else type(lse).__name__
            raise WorkbenchError(f"lse must be a float tensor [batch, heads, queries] or None, got {got}")
        if tuple(lse.shape) != (B, Hq, N):
            raise WorkbenchError(f"lse must have shape [batch, heads, queries] = {(B, Hq, N)}, got {tuple(lse.shape)}")
        if lse.device != q.device:
            raise WorkbenchError(f"lse must be on q's device {q.device}, got {lse.device}")
        if bool(torch.isnan(lse).any() | (lse == float("inf")).any()):
            raise WorkbenchError("lse has NaN or +inf values: expected finite log-sum-exps, or -inf for rows with no key")
    finite("q", q)
    finite("k", k)
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise WorkbenchError(f"scale must be a finite number or None (1/sqrt(d)), got {scale!r}")
    return float(scale)
