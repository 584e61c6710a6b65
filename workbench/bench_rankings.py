"""Benchmark of the costly head rankings, each as a multiple of one plain forward over the same prompts.

Every analysis is timed between plain forwards over its own prompts (``model.hf_model`` with
SDPA attention, no hooks, no gradients), and its ratio is its time over the median of those forwards,
so a loaded machine slows both sides alike. Wall-clock and process CPU time are both reported.
Targets (issue 16): ablation importance over H heads ≤ 0.6·H forwards; integrated gradients with
s steps ≤ 1.5·s forwards.

    python -m workbench.bench_rankings --model smollm2            # or a local HF directory
    python -m workbench.bench_rankings --model demo --cases ablation,ig_importance
    python -m workbench.bench_rankings --model smollm2 --threads 1   # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

#: case -> what it measures (the unit of its ratio).
CASES = {
    "ablation": "wb.head_importance(method='ablation'), zero-ablation of every head, prefix reuse (unit: H forwards)",
    "ablation_full": "the same without prefix reuse: every mask through the whole model (unit: H forwards)",
    "ablation_mean": "mean-ablation importance (means from other prompts; unit: H forwards)",
    "ig_importance": "wb.head_importance(method='integrated_gradients') with s steps (unit: s forwards)",
    "ig_saliency": "integrated-gradient token attributions (saliency) with s steps per prompt (unit: s forwards)",
    "duo_attention": "wb.duo_attention gate training (unit: seconds; a budget, no forward ratio)",
}


def _clock(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(fn: Callable[[], object] | list[Callable[[], object]], forward: Callable[[], object], *,
            repeats: int = 3) -> dict:
    """Time ``fn`` (or each of a list of parts of it, a plain forward timed after each part)
    between ``repeats`` plain forwards before and after; the forward's time is the median of all."""
    parts = fn if isinstance(fn, list) else [fn]
    forward()  # warm-up
    plain = [_clock(forward) for _ in range(repeats)]
    wall = cpu = 0.0
    for part in parts:
        w, c = _clock(part)
        wall, cpu = wall + w, cpu + c
        if len(parts) > 1:
            plain.append(_clock(forward))
    plain += [_clock(forward) for _ in range(repeats)]
    return {"seconds": wall, "cpu_seconds": cpu,
            "forward_seconds": statistics.median(w for w, _ in plain),
            "forward_cpu_seconds": statistics.median(c for _, c in plain)}


def _english(model, n: int, max_tokens: int | None = None):
    """The first ``n`` bundled English prompts (repeated if needed), as strings or truncated token ids."""
    from workbench.prompts import load_prompts

    prompts = load_prompts(None)
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    if max_tokens is None:
        return prompts
    return [model.tokenizer(p)["input_ids"][:max_tokens] for p in prompts]


def _plain_forward(model, prompts):
    """One plain forward over the prompts as a batch: no hooks, no gradients, SDPA attention
    (the faster of the model's implementations, and the one the analyses run with)."""
    from workbench.masked import sdpa

    ids, mask = model.to_tokens(prompts)

    def forward():
        with torch.no_grad(), sdpa(model):
            model.hf_model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask)

    return forward, tuple(ids.shape)


def run_case(model, case: str, *, n_steps: int, saliency_steps: int, duo_steps: int,
             duo_context: tuple[int | None, int | None] = (None, 256)) -> dict:
    import workbench as wb
    from workbench.analyzers import saliency

    heads = model.n_layers * model.n_heads
    if case.startswith("ablation"):
        prompts = _english(model, 2, 16)  # the setting: 2 prompts x 16 tokens
        forward, shape = _plain_forward(model, prompts)
        kwargs = {"reuse_prefix": case != "ablation_full"}
        if case == "ablation_mean":
            kwargs.update(ablation="mean", reference=_english(model, 8)[2:])
        result = measure(lambda: wb.head_importance(model, prompts, method="ablation", **kwargs), forward)
        unit, target = heads, 0.6
    elif case == "ig_importance":
        prompts = _english(model, 2, 16)
        forward, shape = _plain_forward(model, prompts)
        result = measure(lambda: wb.head_importance(model, prompts, method="integrated_gradients",
                                                    n_steps=n_steps), forward)
        unit, target = n_steps, 1.5
    elif case == "ig_saliency":
        prompts = _english(model, 8)  # the setting: 8 prompts of 13-19 tokens
        forward, shape = _plain_forward(model, prompts)

        def attribute(p):
            ids, _ = model.to_tokens([p])
            saliency._attribute(model, ids, "integrated_gradients", saliency_steps)

        result = measure([lambda p=p: attribute(p) for p in prompts], forward)  # one part a prompt
        unit, target = saliency_steps, 1.5
    elif case == "duo_attention":
        from workbench.analyzers import duo

        lo, hi = duo_context
        trials = duo._passkey_trials(model, None)
        lengths = [len(model.tokenizer(r["prompt"])["input_ids"]) for r in trials]
        chosen = duo.training_trials(lengths, lo, hi, True)
        forward, shape = _plain_forward(model, [trials[i]["prompt"] for i in chosen[:2]])
        result = measure(lambda: wb.duo_attention(model, steps=duo_steps, min_context=lo, max_context=hi), forward,
                         repeats=1)
        result["per_step_seconds"] = result["seconds"] / duo_steps
        unit, target = None, None
    else:
        raise SystemExit(f"unknown case {case!r}: expected one of {list(CASES)}")
    row = {"case": case, "what": CASES[case], "prompts_shape": str(shape), "unit": unit, **result}
    if unit:
        row["ratio"] = result["seconds"] / (unit * result["forward_seconds"])
        row["cpu_ratio"] = result["cpu_seconds"] / (unit * result["forward_cpu_seconds"])
        row["target"] = target
        row["meets_target"] = bool(row["ratio"] <= target)
    return row


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import workbench as wb
    from kernels.bench import git_commit

    ap = argparse.ArgumentParser(prog="python -m workbench.bench_rankings", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="model source (smollm2, demo, or a local HF directory)")
    ap.add_argument("--cases", default="ablation,ablation_full,ig_importance,ig_saliency")
    ap.add_argument("--steps", type=int, default=16, help="IG steps s for importance")
    ap.add_argument("--saliency-steps", type=int, default=32, help="IG steps s for saliency")
    ap.add_argument("--duo-steps", type=int, default=20, help="DuoAttention gate-training steps")
    ap.add_argument("--duo-context", default="0,256", help="DuoAttention training trials' token range lo,hi")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 gives steadier ratios on a shared machine")
    ap.add_argument("--out", default="runs/bench/rankings.parquet")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = wb.load_model(args.model)
    lo, hi = (int(x) for x in args.duo_context.split(","))
    commit = git_commit(".")
    rows = []
    for case in args.cases.split(","):
        row = run_case(model, case, n_steps=args.steps, saliency_steps=args.saliency_steps, duo_steps=args.duo_steps,
                       duo_context=(lo or None, hi))
        rows.append({**row, "model": args.model, "threads": torch.get_num_threads(), "commit": commit})
        print(_line(rows[-1]), flush=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"rows saved to {out}")
    return frame


def _line(row: dict) -> str:
    text = (f"{row['case']:>14}  {row['prompts_shape']:>9}  {row['seconds']:8.2f} s wall, {row['cpu_seconds']:8.2f} s cpu; "
            f"plain forward {row['forward_seconds']:.3f} s ({row['forward_cpu_seconds']:.3f} s cpu)")
    if row.get("per_step_seconds"):
        text += f"  -> {row['per_step_seconds']:.2f} s a step ({row['seconds']:.1f} s for the run)"
    if row.get("unit"):
        text += (f"  -> {row['ratio']:.3f} x {row['unit']} forwards (cpu {row['cpu_ratio']:.3f}); "
                 f"target <= {row['target']}: {'met' if row['meets_target'] else 'NOT met'}")
    return text


if __name__ == "__main__":
    main()
