"""Benchmark of `analyze`'s engines on the streaming statistics: prompts per second with the local
engine and with Ray Data at 1 and 2 actors, side by side in one run.

One local Ray (``--cpus`` logical CPUs, so two one-CPU actors still leave one for Ray Data's write
tasks) serves every Ray case. The cases run in turn each round (local, ray x1, ray x2, ...), so
load on the machine hits them alike; the ratios printed are per round, then their median.

Each Ray job pays a fixed start: actor processes import torch and load the model once each. The
script times a job over one batch too and reports the marginal rate, ``(N - batch) / (t_N -
t_batch)``, beside the end-to-end one: the marginal rate is what more prompts cost once actors
are up, the number that grows with a cluster's nodes.

    python -m workbench.benchmarks.ray_engine                  # demo, 192 prompts, 2 rounds
    python -m workbench.benchmarks.ray_engine --prompts 512 --rounds 3 --out runs/bench/ray.parquet
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

CASES = (("local", None), ("ray", 1), ("ray", 2))


def bench_prompts(n: int) -> list[str]:
    """``n`` demo prompts: the indirect-object and colored-objects suites, cycled."""
    from workbench.models import data_dir
    from workbench.prompts import read_jsonl

    suites = data_dir() / "suites"
    pool = [r["prompt"] for s in ("ioi", "colored_objects") for r in read_jsonl(suites / f"{s}.jsonl")]
    return [pool[i % len(pool)] for i in range(n)]


def _one(model, prompts, engine: str, actors: int | None, batch_size: int) -> float:
    """Seconds of one `analyze` of ``capture_stats`` into a fresh run directory."""
    import workbench as wb

    out = Path(tempfile.mkdtemp(prefix="workbench-bench-ray-"))
    try:
        options = {} if engine == "local" else dict(engine="ray", concurrency=actors, batch_size=batch_size)
        start = time.perf_counter()
        wb.analyze(model, prompts, out=out / "run", analyses=["capture_stats"], progress=False, **options)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run(*, source: str = "demo", n_prompts: int = 192, batch_size: int = 16, rounds: int = 2,
        cpus: int = 3) -> pd.DataFrame:
    """Time every case of `CASES` ``rounds`` times over the same prompts.

    Returns:
        Long-format rows ``round, engine, actors, prompts, seconds, prompts_per_s`` (one per case
        and size; size ``batch_size`` is the fixed-start probe of the Ray cases).
    """
    import ray
    import torch

    import workbench as wb

    model = wb.load_model(source)
    prompts = bench_prompts(n_prompts)
    ray.init(address="local", num_cpus=cpus, object_store_memory=128 * 2**20, include_dashboard=False,
             logging_level="ERROR")
    rows = []
    try:
        _one(model, prompts[:batch_size], "local", None, batch_size)  # warm-up: first-call overheads
        for r in range(rounds):
            for engine, actors in CASES:
                sizes = (n_prompts,) if engine == "local" else (batch_size, n_prompts)
                for n in sizes:
                    seconds = _one(model, prompts[:n], engine, actors, batch_size)
                    rows.append({"round": r, "engine": engine, "actors": actors or 0, "prompts": n,
                                 "seconds": seconds, "prompts_per_s": n / seconds})
                    print(f"round {r} {engine:<5} actors={actors or '-'} prompts={n:<4} {seconds:7.2f} s "
                          f"{n / seconds:7.1f} prompts/s", flush=True)
    finally:
        ray.shutdown()
    frame = pd.DataFrame(rows)
    frame.attrs.update(model=source, batch_size=batch_size, cpus=os.cpu_count(), ray_cpus=cpus,
                       torch_threads=torch.get_num_threads(), machine=platform.machine())
    return frame


def summary(frame: pd.DataFrame, n_prompts: int, batch_size: int) -> pd.DataFrame:
    """Per case: median end-to-end and marginal prompts/s, and the per-round ratio to local."""
    out = []
    local = frame[frame.engine == "local"].set_index("round").seconds
    for (engine, actors), case in frame.groupby(["engine", "actors"], sort=False):
        full = case[case.prompts == n_prompts].set_index("round").seconds
        row = {"engine": engine, "actors": actors, "prompts_per_s": statistics.median(n_prompts / full),
               "ratio_to_local": statistics.median(local[full.index] / full)}
        probe = case[case.prompts == batch_size].set_index("round").seconds
        if len(probe) and n_prompts > batch_size:
            marginal = (n_prompts - batch_size) / (full - probe[full.index])
            row["marginal_prompts_per_s"] = statistics.median(marginal)
            row["fixed_start_s"] = statistics.median(probe - batch_size / marginal)
        out.append(row)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=3, help="logical CPUs of the local Ray (actors + 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ray_engine.parquet"))
    args = parser.parse_args(argv)
    from workbench.checks import positive_int

    for name in ("prompts", "batch_size", "rounds", "cpus"):
        positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    frame = run(source=args.model, n_prompts=args.prompts, batch_size=args.batch_size, rounds=args.rounds,
                cpus=args.cpus)
    table = summary(frame, args.prompts, args.batch_size)
    print(f"\n{args.prompts} prompts of the {args.model} model, capture_stats, batches of {args.batch_size}; "
          f"{os.cpu_count()} CPU cores, torch threads {frame.attrs['torch_threads']} here, 1 per Ray actor")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out, index=False)
    print(f"rows saved to {args.out}")
    return frame


if __name__ == "__main__":
    main()
