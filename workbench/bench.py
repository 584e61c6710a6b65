"""Capture benchmark: streaming statistics vs TransformerLens ``run_with_cache`` (and plain SDPA).

Every (path, N) case runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is
its own; the cases of one call run side by side on the same machine, and the printed ratios
compare them. Paths whose memory, extrapolated quadratically from the last two sizes, would pass
the limit are not run and are reported as such.

    python -m workbench.bench --sizes 512,1024,2048,4096
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

from kernels.bench import git_commit
from workbench.run import package_versions

PATHS = {
    "stream": "wb.capture_columns: streaming head statistics + column mass (no N×N)",
    "run_with_cache": "TransformerLens bridge.run_with_cache: every activation, patterns included",
    "sdpa": "plain HF forward with SDPA attention: the floor, no capture at all",
}
DEFAULT_SIZES = (512, 1024, 2048, 4096)

_CHILD = r"""
import json, os, resource, sys, time
import psutil, torch
os.environ["HF_HUB_OFFLINE"] = "1"
import workbench as wb
path, n, source, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.manual_seed(seed)
model = wb.load_model(source)
vocab = model.hf_model.config.vocab_size
ids = torch.randint(5, vocab, (1, n))
ids[0, 0] = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else ids[0, 0]

def once(ids):
    with torch.no_grad():
        if path == "stream":
            wb.capture_columns(model, ids)
        elif path == "run_with_cache":
            _, cache = model.bridge.run_with_cache(ids)
            del cache
        elif path == "sdpa":
            model.hf_model.set_attn_implementation("sdpa")
            model.hf_model(input_ids=ids)
        else:
            raise SystemExit(f"unknown path {path}")

once(ids[:, :16])  # warm-up: first-call overheads out of the timing
before = psutil.Process().memory_info().rss
start = time.perf_counter()
once(ids)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_rss": peak, "rss_before": before}))
"""


def _run_case(path: str, n: int, source: str, seed: int, timeout: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, path, str(n), source, str(seed)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"status": f"failed: {last[:120]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def bench_capture(source: str = "demo", sizes=DEFAULT_SIZES, paths=tuple(PATHS), *, mem_limit_gib: float = 20.0,
                  seed: int = 0, timeout: float = 900.0) -> pd.DataFrame:
    """Time and peak memory of each capture path at each sequence length, side by side.

    Returns:
        Long-format frame: ``path, N, seconds, peak_rss_gib, delta_gib, status, source, device,
        machine, commit`` plus package versions; ``delta_gib`` is peak minus the resident
        memory just before the measured forward.
    """
    rows, versions, commit = [], package_versions(), git_commit(".")
    for path in paths:
        history: list[tuple[int, float]] = []
        for n in sorted(sizes):
            predicted = _extrapolate(history, n)
            if predicted is not None and predicted > mem_limit_gib:
                result = {"status": f"not run: ~{predicted:.0f} GiB predicted > {mem_limit_gib:.0f} GiB"}
            else:
                result = _run_case(path, n, source, seed, timeout)
            row = {"path": path, "N": n, "seconds": result.get("seconds"),
                   "peak_rss_gib": _gib(result.get("peak_rss")),
                   "delta_gib": _gib(result["peak_rss"] - result["rss_before"]) if "peak_rss" in result else None,
                   "status": result["status"], "source": source, "device": "cpu",
                   "machine": f"{platform.machine()} x{os.cpu_count()}", "commit": commit, **versions}
            rows.append(row)
            if result["status"] == "ok":
                history.append((n, row["peak_rss_gib"]))
    return pd.DataFrame(rows)


def _extrapolate(history: list[tuple[int, float]], n: int) -> float | None:
    """Peak memory at n from the last measurement, assuming the quadratic term dominates."""
    if not history:
        return None
    last_n, last_mem = history[-1]
    return last_mem * (n / last_n) ** 2


def _gib(value) -> float | None:
    return None if value is None else round(value / 2**30, 3)


def summarize(frame: pd.DataFrame, baseline: str = "run_with_cache", candidate: str = "stream") -> pd.DataFrame:
    """One row per N: each path's seconds and memory added by the forward (delta GiB), and
    candidate/baseline ratios of both (the process's own baseline, weights and Python, is the
    same for every path and left out of the memory ratio)."""
    ok = frame[frame.status == "ok"]
    wide = ok.pivot(index="N", columns="path", values=["seconds", "delta_gib"])
    wide.columns = [f"{path}_{what}" for what, path in wide.columns]
    if {f"{candidate}_seconds", f"{baseline}_seconds"} <= set(wide.columns):
        wide["time_ratio"] = wide[f"{candidate}_seconds"] / wide[f"{baseline}_seconds"]
        wide["memory_ratio"] = wide[f"{candidate}_delta_gib"] / wide[f"{baseline}_delta_gib"]
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
    ap.add_argument("--out", default="runs/bench/capture.parquet")
    args = ap.parse_args(argv)
    frame = bench_capture(args.model, [int(s) for s in args.sizes.split(",")], args.paths.split(","),
                          mem_limit_gib=args.mem_limit_gib)
    report(frame, args.out, args.mem_limit_gib)
    return frame


def report(frame: pd.DataFrame, out: str | Path, mem_limit_gib: float = 20.0) -> None:
    """Print the rows, the side-by-side ratios and the largest N per path; save Parquet."""
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(frame[["path", "N", "seconds", "peak_rss_gib", "delta_gib", "status"]].to_string(index=False))
        print()
        print(summarize(frame).round(3).to_string(index=False))
    print(f"\nlargest N completed within {mem_limit_gib:g} GiB: {largest_completed(frame, mem_limit_gib)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"rows saved to {out}")


if __name__ == "__main__":
    main()
