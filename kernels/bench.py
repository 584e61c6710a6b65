"""Benchmarks of kernels.head_stats: time and peak memory of each backend, side by side.

CUDA: Triton head_stats, two-pass (full, and rows only with column_mass=False) and one-pass
from a known lse (full and rows only), `attention_stats` (FlashAttention output + lse, then the
one-pass kernel) against the torch SDPA forward and the eager materialize-and-reduce oracle where
it fits, at B=1, H=32, Hkv=8, d=128, causal, bf16, N in {4k, 8k, 16k, 32k, 128k}.
CPU: the plain attention forward (SDPA, the floor), `attention_stats` on its "native" route
(the forward's flash attention, then the compiled one-pass loop: output and every statistic) and
on its "flash" route (aten calls only), the compiled loop alone from a known lse (one pass) and
without it (two passes), the chunked reference without lse (the shifted sums), the one-pass
reference from a known lse (eager, and torch.compile'd), and eager, at N=16384 x 4 heads; each
backend runs in a fresh `python -c` subprocess so its peak RSS (ru_maxrss) beyond the inputs can
be measured. One-pass rows get the lse as an input (the forward computes it anyway); it is not
timed. Statistics are those of a capture: column mass on, argmax off (column `argmax`).

Rows are long-format (one per backend and shape) with percentiles, ratios to the baseline
(SDPA on CUDA, eager on CPU; `format_table` also prints each row over SDPA), device, versions
and commit. `python -m kernels.bench` prints the table and writes Parquet; `workbench bench`
calls `bench_kernels`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
CUDA_SIZES = (4096, 8192, 16384, 32768, 131072)
CPU_SIZES = (16384,)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COLUMNS = [
    "backend", "N", "H", "Hkv", "d", "dtype", "causal", "column_mass", "argmax", "ms_p50", "ms_p10", "ms_p90",
    "tflops_equiv", "peak_mem_bytes", "time_ratio", "mem_ratio", "baseline", "status",
    "device", "torch_version", "triton_version", "commit",
]  # fmt: skip

#: CPU backends: name -> what runs (the child below dispatches on the name).
CPU_BACKENDS = ("sdpa", "native", "native_onepass", "native_twopass", "flash", "reference", "reference_onepass",
                "reference_onepass_compiled", "eager")

# Runs one CPU backend in a fresh interpreter; prints JSON {times_ms, peak_extra_bytes}.
_CPU_CHILD = r"""
import json, os, resource, sys, time
a = json.loads(sys.argv[1])
if a["backend"] == "reference_onepass_compiled":
    os.environ["WORKBENCH_COMPILE"] = "1"
import torch
import torch.nn.functional as F
from kernels import attention_stats, head_stats
g = torch.Generator().manual_seed(0)
dt = getattr(torch, a["dtype"])
q = torch.randn(1, a["H"], a["N"], a["d"], generator=g).to(dt)  # (B, H, N, d)
k = torch.randn(1, a["Hkv"], a["N"], a["d"], generator=g).to(dt)  # (B, Hkv, N, d)
v = torch.randn(1, a["Hkv"], a["N"], a["d"], generator=g).to(dt)  # (B, Hkv, N, d)
opts = dict(causal=a["causal"], column_mass=a["column_mass"], argmax=a["argmax"])
backend = a["backend"]
if "onepass" in backend:  # the lse a forward returns: an input, not timed
    lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, a["causal"])[1]
    fn = lambda: head_stats(q, k, lse=lse, backend=backend.split("_")[0], **opts)
elif backend == "native_twopass":
    fn = lambda: head_stats(q, k, backend="native", **opts)
elif backend == "sdpa":
    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=a["causal"], enable_gqa=a["Hkv"] != a["H"])
elif backend in ("native", "flash"):
    fn = lambda: attention_stats(q, k, v, backend=backend, **opts)
else:
    fn = lambda: head_stats(q, k, backend=backend, **opts)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
base = rss()
times = []
for _ in range(a["warmup"] + a["reps"]):
    t0 = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"times_ms": times[a["warmup"]:], "peak_extra_bytes": rss() - base}))
"""


def git_commit(scope: str = "kernels") -> str:
    """Short git commit of the repo, '+dirty' when ``scope`` has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", scope], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _mem_available() -> int:
    """Bytes the OS reports available (Linux MemAvailable); a large number elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _eager_bytes(H: int, N: int, M: int) -> int:
    """Rough peak of the eager oracle: two fp32 (H, N, M) tensors plus bool masks."""
    return int(H * N * M * 4 * 2.25)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"512,1024"`` -> (512, 1024); WorkbenchError for anything but positive integers."""
    from kernels.errors import WorkbenchError

    sizes = []
    for part in str(text).split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise WorkbenchError(f"--sizes must be comma-separated positive integers, got {text!r}") from None
        if n < 1:
            raise WorkbenchError(f"--sizes must be comma-separated positive integers, got {n} in {text!r}")
        sizes.append(n)
    return tuple(sizes)


def _row(backend, N, H, Hkv, d, dtype, causal, column_mass, times_ms=None, peak=None, status="ok", argmax=False):
    q = pd.Series(times_ms, dtype=float) if times_ms else None
    p50 = float(q.quantile(0.5)) if q is not None else float("nan")
    flops = 4.0 * N * N * d * H / (2.0 if causal else 1.0)  # equivalent: QK^T and PV of attention
    return {
        "backend": backend, "N": N, "H": H, "Hkv": Hkv, "d": d, "dtype": dtype, "causal": causal,
        "column_mass": column_mass, "argmax": argmax, "ms_p50": p50,
        "ms_p10": float(q.quantile(0.1)) if q is not None else float("nan"),
        "ms_p90": float(q.quantile(0.9)) if q is not None else float("nan"),
        "tflops_equiv": flops / (p50 * 1e-3) / 1e12 if q is not None else float("nan"),
        "peak_mem_bytes": peak if peak is not None else -1, "status": status,
    }  # fmt: skip


def _cpu_case(backend, N, H, Hkv, d, dtype, causal, reps, warmup):
    """One CPU backend in a fresh subprocess: times and peak RSS beyond the inputs."""
    if backend == "eager" and _eager_bytes(H, N, N) > 0.7 * _mem_available():
        need, have = _eager_bytes(H, N, N) / 2**30, _mem_available() / 2**30
        return _row(backend, N, H, Hkv, d, dtype, causal, True,
                    status=f"skipped: needs ~{need:.1f} GiB, {have:.1f} GiB available")
    args = dict(backend=backend, N=N, H=H, Hkv=Hkv, d=d, dtype=dtype, causal=causal, column_mass=True, argmax=False,
                reps=reps, warmup=warmup)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _CPU_CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return _row(backend, N, H, Hkv, d, dtype, causal, True, status=f"failed (rc {proc.returncode}): {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return _row(backend, N, H, Hkv, d, dtype, causal, True, out["times_ms"], out["peak_extra_bytes"])


def _cuda_case(backend, N, H, Hkv, d, dtype, causal, column_mass, device):
    """One CUDA backend in-process: triton.testing.do_bench percentiles, peak allocated bytes.

    backend: "sdpa", "eager", "triton" (two-pass), "triton_onepass" (lse given, not timed) or
    "attention_stats" (FlashAttention output and lse, then the one-pass kernel)."""
    import torch.nn.functional as F
    import triton.testing

    from kernels.head_stats import attention_stats, device_attention, head_stats

    dt = DTYPES[dtype]
    free = torch.cuda.mem_get_info(device)[0]
    if backend == "eager" and _eager_bytes(H, N, N) > 0.8 * free:
        return _row(backend, N, H, Hkv, d, dtype, causal, column_mass,
                    status=f"skipped: needs ~{_eager_bytes(H, N, N) / 2**30:.0f} GiB")
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, H, N, d, device=device, dtype=dt, generator=g)  # (B, H, N, d)
    k = torch.randn(1, Hkv, N, d, device=device, dtype=dt, generator=g)  # (B, Hkv, N, d)
    v = torch.randn_like(k)
    opts = dict(causal=causal, column_mass=column_mass, argmax=False)
    if backend == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hkv != H)  # noqa: E731
    elif backend == "attention_stats":
        fn = lambda: attention_stats(q, k, v, backend="triton", **opts)  # noqa: E731
    elif backend == "triton_onepass":
        lse = device_attention(q, k, v, causal=causal, scale=d**-0.5)[1]  # the forward's: an input
        fn = lambda: head_stats(q, k, lse=lse, backend="triton", **opts)  # noqa: E731
    else:
        fn = lambda: head_stats(q, k, backend=backend, **opts)  # noqa: E731
    try:
        fn()  # compile / warm up
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        p50, p10, p90 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.1, 0.9])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return _row(backend, N, H, Hkv, d, dtype, causal, column_mass, status="oom")
    row = _row(backend, N, H, Hkv, d, dtype, causal, column_mass, [p50], peak)
    row.update(ms_p10=p10, ms_p90=p90)
    return row


def _add_ratios(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """time_ratio and mem_ratio of each row against the baseline backend at the same shape."""
    key = ["N", "H", "Hkv", "d", "dtype", "causal"]
    df = df.copy()
    base = df.loc[df.backend == baseline, key + ["ms_p50", "peak_mem_bytes"]]
    merged = df.merge(base, on=key, how="left", suffixes=("", "_base"))  # keeps df's row order
    df["time_ratio"] = merged.ms_p50 / merged.ms_p50_base
    mem_base = merged.peak_mem_bytes_base.where(merged.peak_mem_bytes_base > 0)
    df["mem_ratio"] = merged.peak_mem_bytes.where(merged.peak_mem_bytes >= 0) / mem_base
    df["baseline"] = baseline
    return df


def bench_kernels(
    device: str | torch.device | None = None,
    sizes: tuple[int, ...] | None = None,
    *,
    heads: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    dtype: str | None = None,
    causal: bool = True,
    reps: int = 3,
    warmup: int = 1,
    backends: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Time and peak memory of head_stats backends against their baseline, one row each.

    Args:
        device: "cuda" (Triton two-pass and one-pass, full and rows-only, attention_stats, vs
            SDPA forward vs eager where it fits) or "cpu" (`CPU_BACKENDS`, each in a fresh
            subprocess); None picks CUDA if present.
        sizes: sequence lengths N (= M); defaults (4k, 8k, 16k, 32k, 128k) on CUDA, (16384,) on CPU.
        heads, kv_heads, head_dim, dtype: defaults 32, 8, 128, "bfloat16" on CUDA and
            4, 4, 64, "float32" on CPU.
        causal: causal attention (equivalent FLOPs halved).
        reps, warmup: CPU repetitions per backend (CUDA uses triton.testing.do_bench).
        backends: CPU only, a subset of `CPU_BACKENDS` (default all; "sdpa" is always run, as
            the floor every row is compared with).

    Returns:
        DataFrame with columns backend, N, H, Hkv, d, dtype, causal, column_mass, argmax, ms_p50,
        ms_p10, ms_p90, tflops_equiv (4·N²·d per head, halved for causal), peak_mem_bytes
        (CUDA: max allocated beyond inputs; CPU: peak RSS beyond inputs; -1 if not run),
        time_ratio and mem_ratio (to `baseline`: SDPA on CUDA, eager on CPU), baseline,
        status ("ok", "oom", "skipped: ...", "failed: ..."), device, torch_version,
        triton_version, commit.
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = dev.type == "cuda"
    sizes = tuple(sizes or (CUDA_SIZES if on_cuda else CPU_SIZES))
    H = heads or (32 if on_cuda else 4)
    Hkv = kv_heads or (8 if on_cuda else H)
    d = head_dim or (128 if on_cuda else 64)
    dtype = dtype or ("bfloat16" if on_cuda else "float32")
    rows = []
    for N in sizes:
        if on_cuda:
            for backend, column_mass in (("triton", True), ("triton", False), ("triton_onepass", True),
                                         ("triton_onepass", False), ("attention_stats", True), ("sdpa", False),
                                         ("eager", True)):
                rows.append(_cuda_case(backend, N, H, Hkv, d, dtype, causal, column_mass, dev))
        else:
            chosen = CPU_BACKENDS if backends is None else ("sdpa", *(b for b in backends if b != "sdpa"))
            for backend in chosen:
                if backend not in CPU_BACKENDS:
                    from kernels.errors import WorkbenchError

                    raise WorkbenchError(f"CPU backend {backend!r} is unknown: expected some of {CPU_BACKENDS}")
                rows.append(_cpu_case(backend, N, H, Hkv, d, dtype, causal, reps, warmup))
    df = _add_ratios(pd.DataFrame(rows), "sdpa" if on_cuda else "eager")
    cpu = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    df["device"] = torch.cuda.get_device_name(dev) if on_cuda else cpu
    df["torch_version"] = torch.__version__
    df["triton_version"] = _triton_version()
    df["commit"] = git_commit()
    return df[COLUMNS]


def format_table(df: pd.DataFrame) -> str:
    """A compact text table of the benchmark rows (times in ms, memory in MiB); `over_sdpa` is
    each row's time over the plain SDPA forward at the same shape (the cost of attention itself)."""
    sdpa = df[df.backend == "sdpa"].set_index("N").ms_p50
    show = df.assign(peak_mib=(df.peak_mem_bytes / 2**20).round(1), over_sdpa=df.ms_p50 / df.N.map(sdpa))
    cols = ["backend", "N", "H", "Hkv", "d", "dtype", "column_mass", "ms_p50", "ms_p10", "ms_p90",
            "tflops_equiv", "peak_mib", "time_ratio", "mem_ratio", "over_sdpa", "status"]  # fmt: skip
    return show[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """`python -m kernels.bench [--device cpu] [--sizes 16384] [--out FILE.parquet]`."""
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--sizes", default=None, help="comma-separated N, e.g. 4096,8192")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default=None, help=f"CPU: comma-separated subset of {','.join(CPU_BACKENDS)}")
    ap.add_argument("--out", default="bench_kernels.parquet", help="Parquet file for the rows")
    a = ap.parse_args(argv)
    sizes = parse_sizes(a.sizes) if a.sizes else None
    t0 = time.perf_counter()
    backends = tuple(a.backends.split(",")) if a.backends else None
    df = bench_kernels(a.device, sizes, heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, dtype=a.dtype,
                       reps=a.reps, backends=backends)
    first = df.iloc[0]
    print(f"{first.device} | torch {first.torch_version} | triton {first.triton_version} | commit {first.commit}")
    print(format_table(df))
    df.to_parquet(a.out, index=False)
    print(f"wrote {len(df)} rows to {a.out} in {time.perf_counter() - t0:.0f} s")
    return df


if __name__ == "__main__":
    main()
