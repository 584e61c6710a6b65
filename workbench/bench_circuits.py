"""Edge-attribution benchmark: EAP-IG (per IG step count) and EAP beside one plain forward over
the same prompts, measured side by side in one process on one machine.

    python -m workbench.bench_circuits --model smollm2 --prompts 20 --steps 1,5,10

Each timing is the median of ``--repeats`` runs; the plain forward is the model's own HF forward
(no hooks, no grad) over the same token batches. Ratios, not seconds, are what carries over to
another machine. ``--out`` writes the rows as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from workbench.run import package_versions


def _task(model, prompts: int, task: str | None, seed: int):
    if task:
        from workbench.analyzers.circuits import read_task

        return read_task(task)[:prompts]
    from workbench.tasks import task_suite

    return task_suite("ioi", model, n=prompts, seed=seed)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="model source (wb.load_model)")
    parser.add_argument("--prompts", type=int, default=20, help="IOI prompts")
    parser.add_argument("--steps", default="5", help="comma-separated EAP-IG step counts")
    parser.add_argument("--task", default=None, help="a task JSONL instead of wb.task_suite('ioi')")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the rows as JSON lines here")
    args = parser.parse_args(argv)

    import workbench as wb
    from workbench.analyzers.circuits import encode_task
    from workbench.analyzers.circuits_edges import edge_scores

    model = wb.load_model(args.model)
    rows_task = _task(model, args.prompts, args.task, args.seed)
    groups = encode_task(model, rows_task)
    n = sum(len(g.clean) for g in groups)

    @torch.no_grad()
    def forward():
        for g in groups:
            model.hf_model(input_ids=g.clean, use_cache=False)

    forward()  # warm up allocations once for every path
    base = _median_time(forward, max(3, args.repeats))
    rows = [{"path": "forward", "steps": None, "seconds": base, "ratio": 1.0}]
    cases = [("eap", 1)] + [("eap_ig", int(s)) for s in args.steps.split(",")]
    for method, steps in cases:
        sec = _median_time(lambda method=method, steps=steps: edge_scores(model, rows_task, method, steps=steps),
                           args.repeats)
        rows.append({"path": method, "steps": steps if method == "eap_ig" else None, "seconds": sec,
                     "ratio": sec / base})
    meta = {"model": model.name, "prompts": n, "tokens": sum(g.clean.numel() for g in groups),
            "threads": torch.get_num_threads(), "device": str(model.device), "machine": platform.machine(),
            "versions": package_versions()}
    print(f"edge attribution on {model.name}: {n} IOI prompts, {meta['tokens']} tokens, "
          f"{meta['threads']} threads, {meta['device']}")
    print(f"{'path':<10}{'steps':>6}{'seconds':>10}{'x forward':>11}")
    for row in rows:
        print(f"{row['path']:<10}{row['steps'] or '':>6}{row['seconds']:>10.2f}{row['ratio']:>11.1f}")
    if args.out:
        with open(args.out, "w") as fh:
            for row in rows:
                fh.write(json.dumps({**row, **meta}) + "\n")
    return rows


if __name__ == "__main__":
    main()
