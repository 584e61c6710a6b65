"""Capture benchmark: streaming statistics vs TransformerLens ``run_with_cache`` (and plain SDPA).

Every (path, N) case runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is
its own; the cases of one call run side by side on the same machine, and the printed ratios
compare them. Each case times ``--reps`` forwards after a warm-up and keeps the median and the
minimum (the machine is shared: the minimum is the least disturbed). Paths whose memory,
extrapolated quadratically from the last size, would pass the limit are not run and are
reported as such.

    python -m workbench.bench --sizes 512,1024,2048,4096,8192,16384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

from kernels.bench import git_commit, parse_sizes
from workbench.run import package_versions

PATHS = {
    "stream": "streaming capture as wb.capture_stats + wb.capture_columns run it: head statistics + column mass, frames (no N×N)",
    "stream_rows": "the same without column mass (wb.capture_stats alone)",
    "stream_compiled": "stream through the one-pass reference, torch.compile'd (WORKBENCH_COMPILE=1, backend='reference')",
    "run_with_cache": "TransformerLens bridge.run_with_cache: every activation, patterns included",
    "sdpa": "plain HF forward with SDPA attention: the floor, no capture at all",
}
DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384)

_CHILD = r"""
import json, os, resource, sys, time
path, n, source, seed, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
os.environ["HF_HUB_OFFLINE"] = "1"
if path == "stream_compiled":
    os.environ["WORKBENCH_COMPILE"] = "1"
import psutil, torch
import workbench as wb
from probes.streaming import stream_capture
torch.manual_seed(seed)
model = wb.load_model(source)
vocab = model.hf_model.config.vocab_size
ids = torch.randint(5, vocab, (1, n))
ids[0, 0] = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else ids[0, 0]
if path == "sdpa":
    model.hf_model.set_attn_implementation("sdpa")

def once(ids):
    with torch.no_grad():
        if path.startswith("stream"):  # what wb.capture_stats does for one equal-length batch
            columns = path != "stream_rows"
            cap = stream_capture(model, ids, column_mass=columns, backend="reference" if path == "stream_compiled" else "auto")
            cap.to_frame()
            if columns:
                cap.column_frame()
        elif path == "run_with_cache":
            _, cache = model.bridge.run_with_cache(ids)
            del cache
        elif path == "sdpa":
            model.hf_model(input_ids=ids)
        else:
            raise SystemExit(f"unknown path {path}")

once(ids[:, :16])  # warm-up: first-call overheads out of the timing
before = psutil.Process().memory_info().rss
times = []
for _ in range(reps):
    start = time.perf_counter()
    once(ids)
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
times.sort()
print(json.dumps({"seconds": times[len(times) // 2], "seconds_min": times[0], "peak_rss": peak, "rss_before": before}))
"""


def _run_case(path: str, n: int, source: str, seed: int, timeout: float, reps: int = 3) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, path, str(n), source, str(seed), str(reps)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"status": f"failed: {last[:120]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def bench_capture(source: str = "demo", sizes=DEFAULT_SIZES, paths=tuple(PATHS), *, mem_limit_gib: float = 20.0,
                  seed: int = 0, timeout: float = 900.0, reps: int = 3) -> pd.DataFrame:
    """Time and peak memory of each capture path at each sequence length, side by side.

    Args:
        source: model for `wb.load_model`; sizes: sequence lengths; paths: keys of `PATHS`.
        mem_limit_gib: paths predicted to need more are not run; reps: timed forwards per case.

    Returns:
        Long-format frame: ``path, N, seconds (median of reps), seconds_min, peak_rss_gib,
        delta_gib, status, source, device, machine, commit`` plus package versions;
        ``delta_gib`` is peak minus the resident memory just before the measured forwards.
    """
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"unknown capture path(s) {unknown}: expected some of {list(PATHS)}")
    rows, versions, commit = [], package_versions(), git_commit(".")
    history: dict[str, list[tuple[int, float]]] = {path: [] for path in paths}
    for n in sorted(sizes):  # paths interleaved at each N: a shared machine's load hits them alike
        for path in paths:
            predicted = _extrapolate(history[path], n)
            if predicted is not None and predicted > mem_limit_gib:
                result = {"status": f"not run: ~{predicted:.0f} GiB predicted > {mem_limit_gib:.0f} GiB"}
            else:
                result = _run_case(path, n, source, seed, timeout, reps)
            row = {"path": path, "N": n, "seconds": result.get("seconds"), "seconds_min": result.get("seconds_min"),
                   "peak_rss_gib": _gib(result.get("peak_rss")),
                   "delta_gib": _gib(result["peak_rss"] - result["rss_before"]) if "peak_rss" in result else None,
                   "status": result["status"], "source": source, "device": "cpu",
                   "machine": f"{platform.machine()} x{os.cpu_count()}", "commit": commit, **versions}
            rows.append(row)
            print(f"  {path:15s} N={n:<6d} {row['status']:8s} {row['seconds'] or float('nan'):.3f} s", file=sys.stderr,
                  flush=True)
            if result["status"] == "ok":
                history[path].append((n, row["peak_rss_gib"]))
    return pd.DataFrame(rows)


def _extrapolate(history: list[tuple[int, float]], n: int) -> float | None:
    """Peak memory at n from the last measurement, assuming the quadratic term dominates."""
    if not history:
        return None
    last_n, last_mem = history[-1]
    return last_mem * (n / last_n) ** 2


def _gib(value) -> float | None:
    return None if value is None else round(value / 2**30, 3)


def summarize(frame: pd.DataFrame, baseline: str = "run_with_cache", candidate: str = "stream",
              floor: str = "sdpa") -> pd.DataFrame:
    """One row per N: each path's seconds and memory added by the forward (delta GiB), and
    candidate/baseline ratios of both (``time_ratio``, ``memory_ratio``; the process's own
    baseline, weights and Python, is the same for every path and left out of the memory ratio),
    and candidate/floor (``over_sdpa``: the capture's cost over the plain forward)."""
    ok = frame[frame.status == "ok"]
    wide = ok.pivot(index="N", columns="path", values=["seconds", "delta_gib"])
    wide.columns = [f"{path}_{what}" for what, path in wide.columns]
    if {f"{candidate}_seconds", f"{baseline}_seconds"} <= set(wide.columns):
        wide["time_ratio"] = wide[f"{candidate}_seconds"] / wide[f"{baseline}_seconds"]
        wide["memory_ratio"] = wide[f"{candidate}_delta_gib"] / wide[f"{baseline}_delta_gib"]
    if {f"{candidate}_seconds", f"{floor}_seconds"} <= set(wide.columns):
        wide[f"over_{floor}"] = wide[f"{candidate}_seconds"] / wide[f"{floor}_seconds"]
        if "stream_rows_seconds" in wide.columns and candidate == "stream":
            wide[f"rows_over_{floor}"] = wide["stream_rows_seconds"] / wide[f"{floor}_seconds"]
    return wide.reset_index()


def largest_completed(frame: pd.DataFrame, mem_limit_gib: float = 20.0) -> dict[str, int | None]:
    """The largest N each path completed under the memory limit."""
    out = {}
    for path, group in frame.groupby("path"):
        ok = group[(group.status == "ok") & (group.peak_rss_gib <= mem_limit_gib)]
        out[path] = int(ok.N.max()) if len(ok) else None
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m workbench.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--mem-limit-gib", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per case (median and min kept)")
    ap.add_argument("--out", default="runs/bench/capture.parquet")
    args = ap.parse_args(argv)
    frame = bench_capture(args.model, parse_sizes(args.sizes), args.paths.split(","),
                          mem_limit_gib=args.mem_limit_gib, reps=max(1, args.reps))
    report(frame, args.out, args.mem_limit_gib)
    return frame


def report(frame: pd.DataFrame, out: str | Path, mem_limit_gib: float = 20.0) -> None:
    """Print the rows, the side-by-side ratios and the largest N per path; save Parquet."""
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(frame[["path", "N", "seconds", "seconds_min", "peak_rss_gib", "delta_gib", "status"]].to_string(index=False))
        print()
        print(summarize(frame).round(3).to_string(index=False))
    print(f"\nlargest N completed within {mem_limit_gib:g} GiB: {largest_completed(frame, mem_limit_gib)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"rows saved to {out}")


if __name__ == "__main__":
    main()
