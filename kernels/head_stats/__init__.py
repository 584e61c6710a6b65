"""Per-head attention statistics without materializing the N×N attention matrix.

`head_stats` validates its inputs and dispatches to one of four backends:
`native` (a compiled C loop for CPU tensors, native.py and onepass.c), `reference` (chunked
PyTorch, reference.py: the readable spec), `triton` (fused kernels, triton.py and
triton_onepass.py) and `eager` (materialized softmax, eager.py; a test oracle only). Given each
row's lse (from the forward's own attention) the native, reference and Triton backends make one
pass.
`attention_stats` runs the attention and the statistics together (attention.py).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from kernels.errors import WorkbenchError

from .attention import attention_stats_flash, attention_stats_native, device_attention
from .eager import head_stats_eager
from .reference import head_stats_reference
from .stats import HeadStats
from .validate import finite, validate

__all__ = ["head_stats", "attention_stats", "auto_backend", "HeadStats", "BACKENDS", "ATTENTION_BACKENDS"]

BACKENDS = ("auto", "native", "reference", "triton", "eager")
ATTENTION_BACKENDS = ("auto", "native", "flash", "reference", "triton")
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
    argmax: bool = True,
    lse: torch.Tensor | None = None,
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
        column_mass: also compute col_mass; False skips that work (the Triton two-pass path
            skips its whole second pass). Sink scores and mean attended distance need it.
        argmax: also compute argmax; False skips it. Retrieval scores need it.
        lse: (B, Hq, N) each row's log-sum-exp (natural log) if the caller has it already,
            e.g. from the forward's flash attention; -inf marks rows with no visible key. The
            native, reference and Triton backends then make a single pass (p = exp(s - lse));
            the result's lse is this tensor. The eager oracle ignores it. Probabilities are not
            renormalized: an lse off by δ scales each of them by e^-δ (fp32 logits of size |s|
            carry about |s| · 6e-8 of rounding, so at |s| ~ 500 expect ~1e-4).
        backend: "auto" (Triton on CUDA; on CPU "native" where a C compiler builds it and
            d <= 256, else reference), "native", "reference", "triton", "eager".
            Shapes the Triton kernel does not support (d > 256) fall back to the reference
            with a warning.

    Returns:
        HeadStats: lse, entropy (nats), max_prob, sink_mass, local_mass as float32
        (B, Hq, N), argmax int64 (B, Hq, N) or None, col_mass float32 (B, Hq, M) or None.
        Fully masked rows: lse -inf, entropy 0, max_prob 0, argmax -1, masses 0.

    Raises:
        WorkbenchError: bad shapes, dtypes, devices or options, and non-finite values in q or k
            (NaN logits have no softmax; they are refused rather than reported as dead rows).
    """
    scale = validate(q, k, scale=scale, sink_tokens=sink_tokens, window=window, key_padding_mask=key_padding_mask,
                     backend=backend, backends=BACKENDS, causal=causal, column_mass=column_mass, argmax=argmax,
                     lse=lse)
    opts = dict(
        causal=bool(causal),
        scale=scale,
        sink_tokens=sink_tokens,
        window=window,
        key_padding_mask=key_padding_mask,
        column_mass=bool(column_mass),
        argmax=bool(argmax),
        lse=lse,
    )
    if backend == "auto":
        backend = auto_backend(q.device, q.shape[-1])
    if backend == "native":
        why = _native_unavailable(q.device, q.shape[-1])
        if why is not None:
            raise WorkbenchError(f"backend='native' cannot run: {why}")
        from .native import head_stats_native

        return head_stats_native(q, k, **opts)
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


def _native_unavailable(device: torch.device | str, head_dim: int) -> str | None:
    """Why the compiled native loop cannot take these tensors, or None if it can (builds it on
    first use)."""
    from .native import MAX_HEAD_DIM, unavailable

    if torch.device(device).type != "cpu":
        return f"q is on {device}; the native backend runs on CPU tensors (use 'triton' or 'reference')"
    if head_dim > MAX_HEAD_DIM:
        return f"head dim d={head_dim} > {MAX_HEAD_DIM}"
    return unavailable()


def auto_backend(device: torch.device | str, head_dim: int, *, attention: bool = False) -> str:
    """The backend ``"auto"`` picks for tensors on ``device`` with head size ``head_dim``: on CUDA
    "triton" (when installed, else "reference"); on the CPU "native" where the compiled loop
    builds and takes ``head_dim``, else "flash" for `attention_stats` (``attention=True``, no
    compiler needed) or "reference" for `head_stats`."""
    if torch.device(device).type == "cuda":
        return "triton" if _triton_installed() else "reference"
    if _native_unavailable(device, head_dim) is None:
        return "native"
    return "flash" if attention else "reference"


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    sink_tokens: int = 1,
    window: int = 0,
    column_mass: bool = True,
    argmax: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, HeadStats]:
    """The attention output and every head's statistics, at about the cost of attention itself.

    The output is what ``F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
    enable_gqa=True)`` returns; the statistics equal `head_stats(q, k, ...)`'s. No N×N tensor is
    formed. Routes (kernels/head_stats/attention.py): "native" (CPU) runs the CPU flash-attention
    kernel for out and lse, then every statistic in one sweep of a compiled C loop; "flash" (CPU)
    takes every statistic from identities over further CPU flash-attention calls (no compiler
    needed); "reference" and "triton" take out and lse from the device's flash attention and make
    the one-pass statistics in that `head_stats` backend.

    Args:
        q: (B, Hq, N, d); k: (B, Hkv, M, d); v: (B, Hkv, M, dv); one dtype, one device.
        causal: causal attention; then N must equal M, or N = 1 (a single query sees every key).
            For padding or a KV-cache prefix use `head_stats` beside your own attention.
        scale, sink_tokens, window, column_mass, argmax: as for `head_stats`.
        backend: "auto" ("triton" on CUDA; on CPU "native", or "flash" where no C compiler
            can build it or d > 256), "native", "flash", "reference", "triton".

    Returns:
        (out (B, Hq, N, dv) in v's dtype, HeadStats).

    Raises:
        WorkbenchError: bad inputs as for `head_stats`, v not matching k, causal with N != M.
    """
    scale = validate(q, k, scale=scale, sink_tokens=sink_tokens, window=window, key_padding_mask=None,
                     backend=backend, backends=ATTENTION_BACKENDS, causal=causal, column_mass=column_mass,
                     argmax=argmax)
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise WorkbenchError(f"v must be a 4-dim tensor [batch, kv_heads, keys, d_v], got {got}")
    if v.shape[:3] != k.shape[:3] or v.dtype != k.dtype or v.device != k.device:
        raise WorkbenchError(
            f"v must match k in batch, heads, keys, dtype and device: k {tuple(k.shape)} {k.dtype} on {k.device}, "
            f"v {tuple(v.shape)} {v.dtype} on {v.device}"
        )
    finite("v", v)
    if q.device.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"attention_stats runs on CPU or CUDA tensors, got {q.device}; use head_stats there")
    N, M = q.shape[2], k.shape[2]
    if causal and N not in (1, M):
        raise WorkbenchError(
            f"attention_stats with causal=True needs N == M queries and keys (or N = 1), got N={N}, M={M}; "
            "for a KV-cache prefix use head_stats beside your own attention"
        )
    causal = bool(causal) and N > 1  # one query sees every key
    opts = dict(scale=scale, sink_tokens=sink_tokens, window=window, column_mass=bool(column_mass), argmax=bool(argmax))
    if backend == "auto":
        backend = auto_backend(q.device, q.shape[-1], attention=True)
    if backend in ("native", "flash") and q.is_cuda:
        raise WorkbenchError(f"backend={backend!r} runs on the CPU flash-attention kernel; on CUDA use 'triton' or 'reference'")
    if backend == "native":
        why = _native_unavailable(q.device, q.shape[-1])
        if why is not None:
            raise WorkbenchError(f"backend='native' cannot run: {why}; backend='flash' needs no compiler")
        return attention_stats_native(q, k, v, causal=causal, **opts)
    if backend == "flash":
        return attention_stats_flash(q, k, v, causal=causal, **opts)
    out, lse = device_attention(q, k, v, causal=causal, scale=scale)
    stats = head_stats(q, k, causal=causal, key_padding_mask=None, lse=lse, backend=backend, **opts)
    return out, stats
