"""Per-head attention statistics without materializing the N×N attention matrix.

`head_stats` validates its inputs and dispatches to one of three backends:
`reference` (chunked PyTorch, reference.py), `triton` (fused kernel, triton.py) and
`eager` (materialized softmax, eager.py; a test oracle only).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings

import torch

from workbench.errors import WorkbenchError

from .eager import head_stats_eager
from .reference import head_stats_reference
from .stats import HeadStats

__all__ = ["head_stats", "HeadStats", "BACKENDS"]

BACKENDS = ("auto", "reference", "triton", "eager")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 256


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_unavailable(q: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on q's device at all, or None if it can."""
    if not _triton_installed():
        return "triton is not installed"
    if not (q.is_cuda or (q.device.type == "cpu" and _interpret())):
        return f"q is on {q.device}; Triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors"
    return None


def _validate(q, k, scale, sink_tokens, window, key_padding_mask, backend, causal) -> float:
    """Raise WorkbenchError naming the bad value; return the scale to use."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise WorkbenchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise WorkbenchError(
                f"{name} must have 4 dims [batch, heads, seq, d_head], got shape {tuple(t.shape)}"
            )
        if t.dtype not in DTYPES:
            raise WorkbenchError(f"{name}.dtype must be float16, bfloat16 or float32, got {t.dtype}")
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
        raise WorkbenchError(
            f"q and k must be non-empty, got q shape {tuple(q.shape)} and k shape {tuple(k.shape)}"
        )
    if Hq % Hkv != 0:
        raise WorkbenchError(
            f"query heads Hq={Hq} must be a multiple of key heads Hkv={Hkv} (grouped-query attention)"
        )
    if causal and N > M:
        raise WorkbenchError(
            f"causal attention needs at most as many queries as keys, got N={N} queries and M={M} keys"
        )
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
            raise WorkbenchError(
                f"key_padding_mask must be on q's device {q.device}, got {key_padding_mask.device}"
            )
    if backend not in BACKENDS:
        raise WorkbenchError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise WorkbenchError(f"scale must be a finite number or None (1/sqrt(d)), got {scale!r}")
    return float(scale)


def head_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    sink_tokens: int = 1,
    window: int = 0,
    key_padding_mask: torch.Tensor | None = None,
    column_mass: bool = True,
    backend: str = "auto",
) -> HeadStats:
    """Attention statistics of every head, computed without the N×N attention matrix.

    Args:
        q: (B, Hq, N, d) queries as the model uses them (after RoPE), float16/bfloat16/float32.
        k: (B, Hkv, M, d) keys, same dtype and device; Hq a multiple of Hkv (GQA: query head
            h reads key head h // (Hq / Hkv)); K is never expanded.
        causal: queries are aligned to the last N keys: query t sees keys j <= t + (M - N).
        scale: logit scale, default 1/sqrt(d).
        sink_tokens: sink_mass is the attention on keys [0, sink_tokens) (Xiao et al.,
            StreamingLLM, use the first few tokens; Gu et al. the first one).
        window: local_mass is the attention on keys (t + M - N - window, t + M - N], the
            last `window` keys up to and including the query's own position; 0 gives zeros.
        key_padding_mask: (B, M) bool, True = real token; masked keys get zero probability.
        column_mass: also compute col_mass (the key-major second pass); False skips it.
        backend: "auto" (Triton on CUDA, else reference), "reference", "triton", "eager".
            Shapes the Triton kernel does not support (d > 256) fall back to the reference
            with a warning.

    Returns:
        HeadStats: lse, entropy (nats), max_prob, sink_mass, local_mass as float32
        (B, Hq, N), argmax int64 (B, Hq, N), col_mass float32 (B, Hq, M) or None.
        Fully masked rows: lse -inf, entropy 0, max_prob 0, argmax -1, masses 0.
    """
    scale = _validate(q, k, scale, sink_tokens, window, key_padding_mask, backend, causal)
    opts = dict(
        causal=bool(causal),
        scale=scale,
        sink_tokens=sink_tokens,
        window=window,
        key_padding_mask=key_padding_mask,
        column_mass=bool(column_mass),
    )
    if backend == "auto":
        backend = "triton" if q.is_cuda and _triton_installed() else "reference"
    if backend == "eager":
        return head_stats_eager(q, k, **opts)
    if backend == "triton":
        why = _triton_unavailable(q)
        if why is not None:
            raise WorkbenchError(f"backend='triton' cannot run: {why}")
        if q.shape[-1] > TRITON_MAX_HEAD_DIM:
            warnings.warn(
                f"head dim d={q.shape[-1]} > {TRITON_MAX_HEAD_DIM} is not supported by the Triton "
                "kernel; falling back to the reference backend",
                stacklevel=2,
            )
        else:
            from .triton import head_stats_triton

            return head_stats_triton(q, k, **opts)
    return head_stats_reference(q, k, **opts)
