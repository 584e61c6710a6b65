"""Benchmark of the shared descriptive capture against one eager forward with all attentions.

Every path runs over the same prompts in the same padded batches, side by side, ``--rounds``
times in turn (eager, capture, capture + tables, ...), so load on the machine hits them alike;
the printed ratios are per round (path seconds / eager seconds of that round), then their median.
Wall seconds and the process's CPU seconds (``time.process_time``, all its threads) are both
kept: on a machine shared with other jobs the CPU-time ratio is the steadier one.

Paths:
- ``eager``: the plain HF model with ``output_attentions=True`` (the baseline).
- ``bridge``: the TransformerLens bridge's forward with no hook attached (what the exact capture
  runs under its hooks: the part of its cost that is not the reductions).
- ``describe``: `wb.describe`, the shared capture itself.
- ``descriptive``: the capture plus every descriptive table read from it (head summary, sink
  scores, token / hidden / secondary sinks, massive activations, head_patterns' descriptors),
  without head_patterns' detector probes and UMAP.
- ``head_patterns_extra``: head_patterns' own work on top of the capture: its forward over the
  synthetic repeated-token probes, UMAP and k-means (reported apart: not a capture).

    python -m workbench.benchmarks.describe --model demo
    python -m workbench.benchmarks.describe --model smollm2 --prompts 20 --max-len 128
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

PATHS = ("eager", "bridge", "describe", "descriptive", "head_patterns_extra")


def bench_prompts(model, n: int = 20, max_len: int = 128, *, min_len: int = 16) -> list[list[int]]:
    """``n`` token-id prompts of lengths spread evenly over [min_len, max_len], cut from the
    bundled English prompts repeated (deterministic; the same for every run)."""
    from workbench.models import data_dir

    lines = (data_dir() / "prompts" / "english.txt").read_text(encoding="utf-8").splitlines()
    text = " ".join(line for line in lines if line.strip())
    ids = model.tokenizer(" ".join([text] * (1 + max_len // 8)))["input_ids"]
    lengths = [min_len + (max_len - min_len) * i // max(n - 1, 1) for i in range(n)]
    starts = [(37 * i) % 64 for i in range(n)]  # different openings
    return [ids[s:s + length] for s, length in zip(starts, lengths)]


def _descriptive_tables(model, prompts, desc) -> None:
    import workbench as wb

    wb.head_summary(model, prompts, capture=desc)
    wb.sink_scores(model, prompts, capture=desc)
    wb.token_sinks(model, prompts, capture=desc)
    wb.hidden_sinks(model, prompts, capture=desc)
    wb.secondary_sinks(model, prompts, capture=desc)
    wb.massive_activations(model, prompts, capture=desc)
    desc.row_means().mean(0)  # head_patterns' descriptors (the rest of it is timed apart)


def bench_describe(source: str = "demo", *, n_prompts: int = 20, max_len: int = 128, rounds: int = 3,
                   batch_size: int = 8) -> pd.DataFrame:
    """Seconds of each path per round, side by side.

    Returns:
        Long-format frame ``path, round, seconds, cpu_seconds, ratio_to_eager,
        cpu_ratio_to_eager, source, n_prompts, max_len,
        tokens, batch_size, capture_mode, device, machine, commit`` plus package versions.
    """
    import workbench as wb
    from kernels.bench import git_commit
    from workbench.capture import padded_batches, run_bridge
    from workbench.checks import positive_int
    from workbench.run import package_versions

    rounds, n_prompts, max_len = (positive_int(k, v) for k, v in
                                  (("rounds", rounds), ("n_prompts", n_prompts), ("max_len", max_len)))
    model = wb.load_model(source)
    prompts = bench_prompts(model, n_prompts, max_len)
    ids, mask = model.to_tokens(prompts)

    def eager():
        with torch.no_grad():
            for rows, width in padded_batches(mask, batch_size):  # the batches describe runs
                model.hf_model(input_ids=ids[rows, :width], attention_mask=mask[rows, :width], output_attentions=True)

    def bridge():
        with torch.no_grad():
            for rows, width in padded_batches(mask, batch_size):
                run_bridge(model, ids[rows, :width], mask[rows, :width], return_type=None)

    state = {}

    def capture():
        state["desc"] = wb.describe(model, prompts, batch_size=batch_size)

    def descriptive():
        desc = wb.describe(model, prompts, batch_size=batch_size)
        _descriptive_tables(model, prompts, desc)

    def patterns_extra():
        wb.head_patterns(model, prompts, capture=state["desc"])

    eager(), capture()  # warm-up: first-call overheads (imports, numba's UMAP compile) out of the timing
    wb.head_patterns(model, prompts, capture=state["desc"])
    rows, versions, commit = [], package_versions(), git_commit("workbench")
    for r in range(rounds):
        times = {}
        for path, fn in zip(PATHS, (eager, bridge, capture, descriptive, patterns_extra)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[path] = (time.perf_counter() - wall, time.process_time() - cpu)
        for path, (wall, cpu) in times.items():
            rows.append({"path": path, "round": r, "seconds": wall, "cpu_seconds": cpu,
                         "ratio_to_eager": wall / times["eager"][0], "cpu_ratio_to_eager": cpu / times["eager"][1]})
    frame = pd.DataFrame(rows)
    frame = frame.assign(source=source, n_prompts=len(prompts), max_len=int(mask.sum(-1).max()),
                         tokens=int(mask.sum()), batch_size=batch_size, capture_mode=state["desc"].mode,
                         device=str(model.device), machine=f"{platform.machine()} x{os.cpu_count()}",
                         commit=commit, **versions)
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per path: median wall and CPU seconds, the median per-round ratios to eager (wall and
    CPU), and the wall ratio's min and max over rounds."""
    out = frame.groupby("path", sort=False).agg(
        seconds=("seconds", "median"), cpu_seconds=("cpu_seconds", "median"), ratio=("ratio_to_eager", "median"),
        ratio_min=("ratio_to_eager", "min"), ratio_max=("ratio_to_eager", "max"),
        cpu_ratio=("cpu_ratio_to_eager", "median"))
    return out.reindex([p for p in PATHS if p in out.index]).reset_index()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m workbench.benchmarks.describe", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="runs/bench/describe.parquet")
    args = ap.parse_args(argv)
    frame = bench_describe(args.model, n_prompts=args.prompts, max_len=args.max_len, rounds=args.rounds,
                           batch_size=args.batch_size)
    first = frame.iloc[0]
    print(f"{first.source}: {first.n_prompts} prompts, up to {first.max_len} tokens ({first.tokens} in all), "
          f"batch {first.batch_size}, capture mode {first.capture_mode}, {first.machine}, commit {first.commit}")
    table = summarize(frame)
    print(table.round(3).to_string(index=False))
    ratios = table.set_index("path").loc["descriptive", ["ratio", "cpu_ratio"]]
    print(f"shared descriptive capture, all of it together: {ratios['ratio']:.2f}x (wall), {ratios['cpu_ratio']:.2f}x "
          f"(CPU) one eager forward with all attentions (target <= 3x: "
          f"{'met' if max(ratios) <= 3 else 'NOT met'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"rows saved to {out}")
    return frame


if __name__ == "__main__":
    main()
