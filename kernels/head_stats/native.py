"""The one-pass statistics as a compiled C loop (onepass.c), for CPU tensors: the "native" backend.

Every statistic from one sweep over the logits, as the Triton one-pass kernel does on GPU:
the logits of R query rows x KB keys exist only in a block on the stack. Without lse one more
sweep computes it first (online max and sum, as flash attention). The C source is
compiled at first use with the system's C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
into ``kernels/`` under `kernels.cache.cache_root` (``$WORKBENCH_CACHE``, as for the SmolLM2
weights), keyed by the source, the compiler and this CPU, and
loaded with ctypes. Heads run on ``torch.get_num_threads()`` threads: OpenMP ones, torch's own
libgomp (see OPENMP), where the compiler has OpenMP, else Python threads (ctypes releases the
GIL). Without a working compiler `library()` returns None
and callers use the aten route (attention.py) instead, after one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..cache import cache_root
from .stats import HeadStats

SOURCE = Path(__file__).with_name("onepass.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=gnu11")
#: Tried first: heads in parallel on OpenMP. The library's libgomp.so.1 resolves to the one torch
#: has already loaded (same soname), so torch's own warm workers run the heads; a spinning pool
#: of a second runtime would steal the cores from them.
OPENMP = ("-fopenmp",)
#: The kernel's query-row buffer holds head sizes up to this.
MAX_HEAD_DIM = 256
#: Logits per thread below which a call is not split (about 0.5 ms of work on one core).
THREAD_MIN_LOGITS = 1 << 19
_VL = 16  # vector lanes of onepass.c (VL): the padding after each key-mask row

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library or None, "why": why it is missing, "pool": threads


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """The CPU the library is compiled for (-march=native): model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    """The compiled library for this source, compiler and CPU: from the cache, else built (with
    OpenMP when the compiler has it, else without) and cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(FLAGS + OPENMP),
                                    _cpu_key()]).encode()).hexdigest()
    out = cache_root() / "kernels" / f"wb_onepass-{key[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # compile aside, then rename: concurrent builds are safe
        part = Path(tmp) / out.name
        errors = []
        for extra in (OPENMP, ()):
            done = subprocess.run([cc, *FLAGS, *extra, str(SOURCE), "-o", str(part), "-lm"], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0:
                break
            errors.append(done.stderr.strip()[-400:])
        else:
            raise RuntimeError(f"{cc} failed: {errors[-1]}")
        os.replace(part, out)
    return out


def _load(path: Path) -> dict:
    lib = ctypes.CDLL(str(path))
    i64, ptr, i32, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lse = lib.wb_lse  # q, kt, kmask, Hq, Hkv, N, M, d, causal, scale, heads [begin, end), lse, threads
    lse.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, f32, i64, i64, ptr, i32]
    onepass = lib.wb_onepass  # q, kt, kmask, lse, Hq, Hkv, N, M, d, causal, scale, sink, window, heads, outputs, threads
    onepass.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, f32, i64, i64, i64, i64,
                        ptr, ptr, ptr, ptr, ptr, ptr, i32]
    lse.restype = onepass.restype = None
    lib.wb_openmp.restype = i32
    return {"lse": lse, "onepass": onepass, "openmp": bool(lib.wb_openmp())}


def library() -> dict | None:
    """The compiled functions {"lse": wb_lse, "onepass": wb_onepass, "openmp": bool}, building
    them on first use; None if they cannot be built (the reason is `unavailable()`)."""
    with _lock:
        if "lib" not in _state:
            cc = _compiler()
            if cc is None:
                _state.update(lib=None, why="no C compiler found (set CC, or install gcc)")
            else:
                try:
                    _state.update(lib=_load(_build(cc)), why=None)
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    _state.update(lib=None, why=f"compiling {SOURCE.name} failed: {exc}")
            if _state["lib"] is None:
                warnings.warn(f"the compiled one-pass statistics are unavailable ({_state['why']}); "
                              "using the slower aten route", stacklevel=3)
        return _state["lib"]


def unavailable() -> str | None:
    """Why `library()` returned None, or None when it is available (builds it if needed)."""
    library()
    return _state["why"]


def _pool(n: int) -> ThreadPoolExecutor:
    """n worker threads, kept between calls (a new pool when torch's thread count changes)."""
    with _lock:
        size, pool = _state.get("pool", (0, None))
        if size != n:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="wb-onepass")
            _state["pool"] = (n, pool)
        return pool


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _over_heads(heads: int, logits: int, run, openmp: bool) -> None:
    """run(lo, hi, threads) over the flattened (batch, head) index: one call on OpenMP threads
    when the library has them, else contiguous ranges on Python threads (ctypes releases the GIL),
    the last on the calling thread. A call of fewer than THREAD_MIN_LOGITS logits per thread uses
    fewer threads (waking workers costs more than they save there)."""
    threads = max(1, min(torch.get_num_threads(), heads, -(-logits // THREAD_MIN_LOGITS)))
    if threads == 1 or openmp:
        run(0, heads, threads)
        return
    bounds = [heads * i // threads for i in range(threads + 1)]
    futures = [_pool(threads - 1).submit(run, lo, hi, 1) for lo, hi in zip(bounds[:-2], bounds[1:-1])]
    run(bounds[-2], bounds[-1], 1)
    for fut in futures:
        fut.result()


def head_stats_native(q, k, *, causal: bool, scale: float, sink_tokens: int, window: int,
                      key_padding_mask: torch.Tensor | None, column_mass: bool, argmax: bool = True,
                      lse: torch.Tensor | None = None) -> HeadStats:
    """Head statistics of CPU q (B, Hq, N, d), k (B, Hkv, M, d) in the compiled loop (inputs
    already validated by kernels.head_stats): one sweep from the given lse (B, Hq, N), or two
    (lse first, by the online max and sum of flash attention) without it."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the compiled one-pass statistics are unavailable: {_state['why']}")
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if d > MAX_HEAD_DIM:  # the loop's query-row buffer; kernels.head_stats routes these elsewhere
        raise RuntimeError(f"the native loop takes head dims up to {MAX_HEAD_DIM}, got d={d}")
    # a sink or window past M keys covers the same keys as M (query positions are < M), and int64 holds M
    sink_tokens, window = min(int(sink_tokens), M), min(int(window), M)
    qf = q.float().contiguous()
    kt = k.float().transpose(-1, -2).contiguous()  # (B, Hkv, d, M): a key block is a run of floats
    kmask = None
    if key_padding_mask is not None:  # bytes, each row padded by VL never-kept bytes for whole-vector loads
        kmask = torch.zeros(B, M + _VL, dtype=torch.uint8)
        kmask[:, :M] = key_padding_mask.to(torch.uint8)
    causal, scale = int(bool(causal)), float(scale)
    work = B * Hq * N * M // (2 if causal and N > 1 else 1)  # logits swept, about
    if lse is None:
        lse = lse_c = torch.empty(B, Hq, N)
        _over_heads(B * Hq, work, lambda lo, hi, n: lib["lse"](_ptr(qf), _ptr(kt), _ptr(kmask), Hq, Hkv, N, M, d,
                                                               causal, scale, lo, hi, _ptr(lse_c), n), lib["openmp"])
    else:  # the result keeps the caller's tensor (as the reference does); the loop reads a dense copy
        lse = lse.float()
        lse_c = lse.contiguous()
    entropy, max_prob, sink, local = (torch.empty(B, Hq, N) for _ in range(4))
    arg = torch.empty(B, Hq, N, dtype=torch.int64) if argmax else None
    col = torch.zeros(B, Hq, M) if column_mass else None
    _over_heads(B * Hq, work, lambda lo, hi, n: lib["onepass"](
        _ptr(qf), _ptr(kt), _ptr(kmask), _ptr(lse_c), Hq, Hkv, N, M, d, causal, scale, sink_tokens, window, lo, hi,
        _ptr(entropy), _ptr(max_prob), _ptr(arg), _ptr(sink), _ptr(local), _ptr(col), n), lib["openmp"])
    return HeadStats(lse=lse, entropy=entropy, max_prob=max_prob, argmax=arg, sink_mass=sink, local_mass=local,
                     col_mass=col)
